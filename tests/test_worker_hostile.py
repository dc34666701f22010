"""The worker against a hostile accrual system (tests/hostile_accrual.py) and a real PostgreSQL.

Every answer that is too big, compressed into a bomb, about another order,
out of range, redirecting or simply wrong is refused, counted and asked
again later; slow answers time out; 429s cannot make the fleet spin or stop
for ever; one answer that cannot be applied never holds back its batch.
"""

import asyncio
import gzip
import json
import os
import subprocess
import sys
import tracemalloc
import zlib
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email.utils import format_datetime

import aiohttp
import asyncpg
import pytest
import structlog
from aiohttp.test_utils import TestServer

from shared.money import MAX_AMOUNT
from tests.helpers import add_order, eventually, make_user
from tests.hostile_accrual import BOMB_BYTES, HostileAccrual
from tests.worker_harness import running_worker
from worker.accrual_client import (
    AccrualClient,
    MalformedAnswer,
    RateLimited,
    create_session,
    decode_body,
    read_capped,
)
from worker.gate import Gate, GatePolicy
from worker.repeats import Repeats
from worker.schedule import Backoff
from worker.stats import WorkerStats

LOG = structlog.get_logger("test")
FAST = Backoff(first=0.1, factor=1.5, cap=0.5)

# Each refused 200-or-other answer and the reason it is counted under.
REFUSED = {
    "huge": "too_large",
    "huge_chunked": "too_large",
    "gzip_bomb": "too_large",
    "deflate_bomb": "too_large",
    "nested_gzip": "encoding",
    "brotli": "encoding",
    "redirect": "status",
    "redirect_external": "status",
    "teapot": "status",
    "lie_order": "order",
    "bad_json": "json",
    "deep": "json",
    "wrong_shape": "shape",
    "accrual_string": "shape",
    "unknown_status": "shape",
    "accrual_negative": "accrual",
    "accrual_huge": "accrual",
}


async def serve(aiohttp_server: object, hostile: HostileAccrual) -> TestServer:
    server: TestServer = await aiohttp_server(hostile.app())  # type: ignore[operator]
    return server


def number(i: int) -> str:
    return f"{7_000_000 + i}"


# -- bounded reading and decoding ----------------------------------------------


@pytest.mark.parametrize("kind", ["gzip", "deflate"])
def test_a_compression_bomb_is_refused_without_inflating_it(kind: str) -> None:
    zeros = b" " * BOMB_BYTES
    bomb = gzip.compress(zeros, 9) if kind == "gzip" else zlib.compress(zeros, 9)
    assert len(bomb) < 65536  # small on the wire: only the decompressed cap can catch it
    tracemalloc.start()
    try:
        with pytest.raises(MalformedAnswer) as refused:
            decode_body(bomb, kind, 65536)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert refused.value.reason == "too_large"
    assert peak < 1_000_000  # never more than the cap (and zlib's window) in memory


def test_decoding_accepts_one_layer_of_gzip_or_deflate_and_nothing_else() -> None:
    body = b'{"order": "1", "status": "INVALID"}'
    assert decode_body(gzip.compress(body), "gzip", 1024) == body
    assert decode_body(zlib.compress(body), "deflate", 1024) == body
    raw_deflate = zlib.compressobj(wbits=-15)
    assert decode_body(raw_deflate.compress(body) + raw_deflate.flush(), "deflate", 1024) == body
    assert decode_body(body, "identity", 1024) == body
    for encoding, data in (
        ("gzip, gzip", gzip.compress(gzip.compress(body))),
        ("br", b"\x8b\x02"),
        ("gzip", b"not gzip"),
        ("gzip", gzip.compress(body)[:-12]),
        ("gzip", gzip.compress(body) + b"trailing"),
        ("gzip", gzip.compress(body) + gzip.compress(b"{}")),
    ):
        with pytest.raises(MalformedAnswer) as refused:
            decode_body(data, encoding, 1024)
        assert refused.value.reason == "encoding", encoding


async def test_a_huge_body_is_refused_while_reading(aiohttp_server: object) -> None:
    hostile = HostileAccrual(script={"1": "huge_chunked", "2": "huge"})
    server = await serve(aiohttp_server, hostile)
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        for order in ("1", "2"):
            tracemalloc.start()
            try:
                async with session.get(server.make_url(f"/api/orders/{order}")) as resp:
                    with pytest.raises(MalformedAnswer) as refused:
                        await read_capped(resp, 65536)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert refused.value.reason == "too_large"
            if order == "1":  # (the other's 5 MB body is built by the server, in this process)
                assert peak < 2_000_000  # 6.5 MB were streamed


# -- the worker against every malformed answer ---------------------------------


async def test_every_malformed_answer_is_refused_counted_and_asked_again_never_credited(
    pool: asyncpg.Pool, database_uri: str, aiohttp_server: object
) -> None:
    script = {number(i): behaviour for i, behaviour in enumerate(REFUSED)}
    good = number(100)
    hostile = HostileAccrual(script={**script, good: "processed:12.5"})
    server = await serve(aiohttp_server, hostile)
    user = await make_user(pool)
    async with running_worker(
        pool, database_uri, str(server.make_url("")), backoff=FAST, concurrency=32
    ) as harness:
        for order in [*script, good]:
            await add_order(pool, user, order)

        async def each_asked_twice() -> bool:
            return all(hostile.asked[n] >= 2 for n in script)

        await eventually(each_asked_twice, within=30)
    rows = {
        r["number"]: r
        for r in await pool.fetch("SELECT number, status, accrual, attempts FROM orders")
    }
    assert rows[good]["status"] == "PROCESSED" and rows[good]["accrual"] == Decimal("12.50")
    for order, behaviour in script.items():
        assert (rows[order]["status"], rows[order]["accrual"]) == ("NEW", None), behaviour
        assert rows[order]["attempts"] >= 2, behaviour  # asked again, with backoff
    ledger = await pool.fetch("SELECT order_number, amount FROM ledger")
    assert [(r["order_number"], r["amount"]) for r in ledger] == [(good, Decimal("12.50"))]
    assert await pool.fetchval("SELECT current FROM balances") == Decimal("12.50")
    assert hostile.trap_hits == 0  # a redirect is never followed
    for reason in set(REFUSED.values()):
        expected = sum(1 for r in REFUSED.values() if r == reason) * 2
        assert harness.stats.malformed(reason) >= expected, reason


async def test_the_same_garbage_about_one_order_is_counted_always_but_logged_sparingly(
    pool: asyncpg.Pool, aiohttp_server: object
) -> None:
    hostile = HostileAccrual(script={"1": "bad_json", "2": "teapot", "3": "lie_order"})
    server = await serve(aiohttp_server, hostile)
    stats = WorkerStats()
    session = create_session(concurrency=2, timeout=2.0)
    asks = {"1": 20, "2": 5, "3": 1}
    try:
        client = AccrualClient(session, str(server.make_url("")), Gate(pool, stats), stats)
        with structlog.testing.capture_logs() as logs:
            # A logger first used here (the suite caches loggers on first use).
            log = structlog.get_logger("garbage")
            for order, times in asks.items():
                for _ in range(times):
                    await client.ask(order, deadline=1e18, log=log.bind(order=order))
    finally:
        await session.close()
    # Every answer is counted...
    assert (stats.malformed("json"), stats.malformed("status"), stats.malformed("order")) == (
        20,
        5,
        1,
    )
    # ...but one order's same complaint is logged at its 1st, 2nd, 4th, 8th, … time only.
    lines = [line for line in logs if line["event"] == "malformed accrual answer"]
    logged = [(line["order"], line["reason"], line["occurrences"]) for line in lines]
    assert logged == [
        *(("1", "json", n) for n in (1, 2, 4, 8, 16)),
        ("2", "status", 1),
        ("2", "status", 2),
        ("2", "status", 4),
        ("3", "order", 1),
    ]


async def test_an_order_failing_at_every_ask_logs_its_retries_sparingly(
    pool: asyncpg.Pool, aiohttp_server: object
) -> None:
    hostile = HostileAccrual(script={"1": "error500"})
    server = await serve(aiohttp_server, hostile)
    stats = WorkerStats()
    session = create_session(concurrency=2, timeout=2.0)
    try:
        client = AccrualClient(
            session, str(server.make_url("")), Gate(pool, stats), stats, retry_wait_max=0.01
        )
        with structlog.testing.capture_logs() as logs:
            # A logger first used here (the suite caches loggers on first use).
            log = structlog.get_logger("retries").bind(order="1")
            for _ in range(5):  # 5 asks of 4 calls each: 15 retries
                await client.ask("1", deadline=1e18, log=log)
    finally:
        await session.close()
    assert hostile.asked["1"] == 20
    retrying = [line for line in logs if line["event"] == "accrual call failed, retrying"]
    retries = [line["occurrences"] for line in retrying]
    assert retries == [1, 2, 4, 8]


def test_repeats_forget_the_oldest_key_beyond_their_bound() -> None:
    repeats = Repeats(max_keys=2)
    assert [repeats.note("a"), repeats.note("a"), repeats.note("a")] == [1, 2, None]
    assert repeats.note("b") == 1 and repeats.note("c") == 1  # "a" is forgotten
    assert repeats.note("a") == 1
    assert repeats.note("c") == 2


async def test_slow_dripping_and_oversized_header_answers_time_out_and_stall_nobody(
    pool: asyncpg.Pool, database_uri: str, aiohttp_server: object
) -> None:
    hostile = HostileAccrual(
        script={number(1): "drip", number(2): "slow", number(3): "huge_header"}
    )
    for i in range(10, 30):
        hostile.script[number(i)] = "processed:1"
    server = await serve(aiohttp_server, hostile)
    user = await make_user(pool)
    async with running_worker(
        pool,
        database_uri,
        str(server.make_url("")),
        backoff=FAST,
        http_timeout=0.5,
        retries=2,
        concurrency=8,
    ) as harness:
        for order in hostile.script:
            await add_order(pool, user, order)

        async def good_ones_done() -> bool:
            return (
                await pool.fetchval("SELECT count(*) FROM orders WHERE status = 'PROCESSED'") == 20
            )

        await eventually(good_ones_done, within=20)

        async def hostile_ones_failed() -> bool:
            return harness.stats.calls("error") >= 6

        await eventually(hostile_ones_failed, within=20)
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM orders WHERE status = 'NEW' AND number = ANY($1::text[])",
            [number(1), number(2), number(3)],
        )
        == 3
    )


# -- the gate ------------------------------------------------------------------

PAST = format_datetime(datetime.now(UTC) - timedelta(hours=1), usegmt=True)


@pytest.mark.parametrize(
    ("header", "pause"),
    [
        ("0", 1.0),
        ("-5", 1.0),
        (PAST, 1.0),
        ("0.0001", 1.0),
        ("99999999999", 30.0),
        ("1e400", 30.0),
        ("soon", 30.0),
        ("none", 30.0),
        ("5", 5.0),
    ],
)
async def test_retry_after_is_clamped_between_the_floor_and_the_ceiling(
    pool: asyncpg.Pool, aiohttp_server: object, header: str, pause: float
) -> None:
    hostile = HostileAccrual(script={"1": f"429:{header}"})
    server = await serve(aiohttp_server, hostile)
    stats = WorkerStats()
    gate = Gate(pool, stats, policy=GatePolicy(pause_min=1.0, pause_max=30.0))
    session = create_session(concurrency=2, timeout=2.0)
    try:
        client = AccrualClient(session, str(server.make_url("")), gate, stats)
        answer = await client.ask("1", deadline=1e18, log=LOG)
    finally:
        await session.close()
    assert isinstance(answer, RateLimited) and answer.retry_after == pause
    stored = await pool.fetchval(
        "SELECT extract(epoch FROM paused_until - paused_from)::float8 FROM accrual_gate"
    )
    assert stored == pytest.approx(pause, abs=0.01)
    assert 0 < gate.pause_left() <= pause


async def test_429s_that_keep_coming_double_the_pause_up_to_the_ceiling(
    pool: asyncpg.Pool, database_uri: str, aiohttp_server: object
) -> None:
    hostile = HostileAccrual(script={number(1): "429:0"})
    server = await serve(aiohttp_server, hostile)
    user = await make_user(pool)
    policy = GatePolicy(pause_min=0.1, pause_max=0.8)
    pauses: list[float] = []
    async with running_worker(
        pool, database_uri, str(server.make_url("")), policy=policy, backoff=FAST, concurrency=1
    ):
        await add_order(pool, user, number(1))

        async def at_the_ceiling() -> bool:
            length = await pool.fetchval(
                "SELECT CASE WHEN isfinite(paused_from) THEN"
                " extract(epoch FROM paused_until - paused_from)::float8 END FROM accrual_gate"
            )
            if length is not None and length > 0 and (not pauses or length != pauses[-1]):
                pauses.append(length)
            return length == pytest.approx(0.8, abs=0.01)

        await eventually(at_the_ceiling, within=10, every=0.01)
    strikes = await pool.fetchval("SELECT strikes FROM accrual_gate")
    assert strikes >= 4  # 0.1, 0.2, 0.4, 0.8: each 429 right after a pause doubled it
    assert pauses == sorted(pauses)  # never shorter
    # No spin: one request per pause, not hundreds (the order is handed back each time).
    assert sum(hostile.asked.values()) <= strikes + 1
    assert await pool.fetchval("SELECT attempts FROM orders") == 0  # a 429 is no failure


async def test_a_tiny_announced_limit_is_forgotten_and_the_fleet_regains_full_speed(
    pool: asyncpg.Pool, database_uri: str, aiohttp_server: object
) -> None:
    hostile = HostileAccrual(script={number(0): "429:0|1"})  # "1 request per minute"
    server = await serve(aiohttp_server, hostile)
    user = await make_user(pool)
    policy = GatePolicy(pause_min=0.1, rate_ttl=1.0)
    async with running_worker(
        pool, database_uri, str(server.make_url("")), policy=policy, backoff=FAST
    ) as harness:
        await add_order(pool, user, number(0))

        async def limited() -> bool:
            return harness.gate.rate_per_minute == 1

        await eventually(limited, within=5)
        hostile.script.update({number(i): "processed:1" for i in range(0, 20)})
        await pool.execute(
            "INSERT INTO orders (number, user_id) SELECT unnest($1::text[]), $2",
            [number(i) for i in range(1, 20)],
            user,
        )

        async def all_done() -> bool:
            return (
                await pool.fetchval("SELECT count(*) FROM orders WHERE status = 'PROCESSED'") == 20
            )

        # At one request per minute this would take 20 minutes.
        await eventually(all_done, within=15)
        assert harness.gate.rate_per_minute is None and harness.gate.interval() is None
    assert await pool.fetchval("SELECT rate_until < now() FROM accrual_gate")


def admin(dsn: str, *args: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", "worker.admin", *args],
        env={**os.environ, "DATABASE_URI": dsn},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    result: dict[str, object] = json.loads(done.stdout)
    return result


async def test_operators_see_and_reset_the_gate_and_every_worker_resumes_at_once(
    pool: asyncpg.Pool, database_uri: str, aiohttp_server: object
) -> None:
    hostile = HostileAccrual(script={number(0): "429:99999999|3"})
    server = await serve(aiohttp_server, hostile)
    user = await make_user(pool)
    base = str(server.make_url(""))
    async with (
        running_worker(pool, database_uri, base, backoff=FAST) as a,
        running_worker(pool, database_uri, base, backoff=FAST) as b,
    ):
        await add_order(pool, user, number(0))

        async def both_paused() -> bool:
            return a.gate.pause_left() > 0 and b.gate.pause_left() > 0

        await eventually(both_paused, within=5)
        shown = await asyncio.to_thread(admin, database_uri, "gate", "show")
        gate = shown["gate"]
        assert isinstance(gate, dict)
        assert 590 < gate["pause_left"] <= 600  # the ceiling, not 99999999 s
        assert gate["rate_per_minute"] == 3 and gate["strikes"] == 1
        hostile.script[number(0)] = "processed:2"
        reset = await asyncio.to_thread(admin, database_uri, "gate", "reset")
        assert reset["released_orders"] == 1  # the order put back until the pause's end
        assert reset["gate"] == {
            **gate,
            "pause_left": 0,
            "paused_from": None,
            "paused_until": None,
            "strikes": 0,
            "rate_per_minute": None,
            "rate_left": 0,
        }

        async def resumed() -> bool:
            return (
                a.gate.pause_left() == b.gate.pause_left() == 0
                and a.gate.rate_per_minute is None
                and b.gate.rate_per_minute is None
            )

        await eventually(resumed, within=5)
        hostile.script[number(1)] = "processed:3"
        await add_order(pool, user, number(1))

        async def processed() -> bool:
            return (
                await pool.fetchval("SELECT count(*) FROM orders WHERE status = 'PROCESSED'") == 2
            )

        await eventually(processed, within=10)


# -- write-back isolation ------------------------------------------------------


async def test_an_answer_that_would_overflow_a_balance_is_set_aside_and_the_batch_goes_on(
    pool: asyncpg.Pool, database_uri: str, aiohttp_server: object
) -> None:
    rich, other = await make_user(pool, "rich"), await make_user(pool, "other")
    biggest = str(MAX_AMOUNT)
    hostile = HostileAccrual(
        script={number(0): f"processed:{biggest}", number(1): f"processed:{biggest}"}
    )
    hostile.script.update({number(i): "processed:1.5" for i in range(2, 40)})
    server = await serve(aiohttp_server, hostile)
    await add_order(pool, rich, number(0))
    await add_order(pool, rich, number(1))
    await pool.execute(
        "INSERT INTO orders (number, user_id) SELECT unnest($1::text[]), $2",
        [number(i) for i in range(2, 40)],
        other,
    )
    async with running_worker(
        pool, database_uri, str(server.make_url("")), backoff=FAST, concurrency=64, batch_size=64
    ) as harness:

        async def settled() -> bool:
            return (
                await pool.fetchval("SELECT count(*) FROM orders WHERE status = 'PROCESSED'") == 39
            )

        await eventually(settled, within=15)
        assert harness.stats.set_aside_count >= 1
    balances = dict(
        await pool.fetch(
            "SELECT u.login, b.current FROM balances b JOIN users u ON u.id = b.user_id"
        )
    )
    assert balances == {"rich": MAX_AMOUNT, "other": Decimal("57.00")}
    aside = await pool.fetchrow(
        "SELECT number, status, problem FROM orders WHERE problem IS NOT NULL"
    )
    assert aside is not None and aside["status"] == "NEW"
    assert aside["number"] in (number(0), number(1)) and "22003" in aside["problem"]
    assert await pool.fetchval("SELECT count(*) FROM ledger WHERE user_id = $1", rich) == 1
    listed = await asyncio.to_thread(admin, database_uri, "orders", "problems")
    assert [o["number"] for o in listed["orders"]] == [aside["number"]]  # type: ignore[index]
