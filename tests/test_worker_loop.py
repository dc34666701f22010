"""The claim -> ask -> apply loop against a fake accrual system and a real PostgreSQL."""

import asyncio
import itertools
from decimal import Decimal

import asyncpg
from aiohttp import web

from tests.helpers import add_order, eventually, make_user, order_row, status_of
from tests.worker_harness import FakeAccrual, json_reply, running_worker
from worker.schedule import Backoff

PROCESSED, INVALID, PROCESSING, REGISTERED, UNKNOWN = (
    "79927398713",
    "12345678903",
    "9278923470",
    "346436439",
    "2377225624",
)


async def test_answers_are_mapped_as_docs_accrual_md_says(
    pool: asyncpg.Pool, database_uri: str, aiohttp_server: object
) -> None:
    replies = {
        PROCESSED: lambda n: json_reply("PROCESSED", "729.975", n),
        INVALID: lambda n: json_reply("INVALID", None, n),
        PROCESSING: lambda n: json_reply("PROCESSING", None, n),
        REGISTERED: lambda n: json_reply("REGISTERED", None, n),
        UNKNOWN: lambda n: web.Response(status=204),
    }
    fake = FakeAccrual(reply=lambda n: replies[n](n))
    server = await aiohttp_server(fake.app())  # type: ignore[operator]
    user = await make_user(pool)
    async with running_worker(pool, database_uri, str(server.make_url(""))):
        for number in replies:
            await add_order(pool, user, number)

        async def settled() -> bool:
            # Non-final orders are asked again soon; final ones never.
            return all(fake.asked(n) >= 2 for n in (PROCESSING, REGISTERED, UNKNOWN))

        await eventually(settled, within=3)
    statuses = {n: await status_of(pool, n) for n in replies}
    assert statuses == {
        PROCESSED: "PROCESSED",
        INVALID: "INVALID",
        PROCESSING: "PROCESSING",
        REGISTERED: "NEW",
        UNKNOWN: "NEW",
    }
    assert fake.asked(PROCESSED) == 1 and fake.asked(INVALID) == 1
    assert (await order_row(pool, PROCESSED))["accrual"] == Decimal("729.98")
    assert await pool.fetchval("SELECT current FROM balances") == Decimal("729.98")
    assert await pool.fetchval("SELECT count(*) FROM ledger") == 1


def test_backoff_starts_within_a_second_and_grows_to_a_cap() -> None:
    backoff = Backoff(first=0.5, factor=1.5, cap=60)
    delays = [backoff.delay(n) for n in range(1, 30)]
    assert delays[0] == 0.5 and delays[1] == 0.75
    assert all(a <= b for a, b in itertools.pairwise(delays))
    assert delays[-1] == 60
    assert backoff.delay(10**9) == 60


async def test_an_unknown_order_stays_new_and_is_asked_at_growing_intervals(
    pool: asyncpg.Pool, database_uri: str, aiohttp_server: object
) -> None:
    fake = FakeAccrual()  # 204 for everything
    server = await aiohttp_server(fake.app())  # type: ignore[operator]
    user = await make_user(pool)
    async with running_worker(pool, database_uri, str(server.make_url("")), poll_interval=5.0):
        await add_order(pool, user, UNKNOWN)

        async def asked_four_times() -> bool:
            return fake.asked(UNKNOWN) >= 4

        await eventually(asked_four_times, within=5)
    times = [t for t, _ in fake.requests]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # 0.5, 0.75, 1.125 s: the first re-check within a second, then slower,
    # woken by the next due time rather than the 5 s poll.
    assert 0.45 < gaps[0] < 0.8
    assert 0.7 < gaps[1] < 1.05
    assert 1.05 < gaps[2] < 1.45
    row = await order_row(pool, UNKNOWN)
    assert row["status"] == "NEW" and row["attempts"] >= 4


async def test_a_malformed_answer_is_retried_later_never_final(
    pool: asyncpg.Pool, database_uri: str, aiohttp_server: object
) -> None:
    bodies = iter([b"{oops", b'{"status": "DONE"}', b'{"status": "PROCESSED", "accrual": -5}'])

    def reply(number: str) -> web.Response:
        body = next(bodies, None)
        if body is None:
            return json_reply("PROCESSED", "10", number)
        return web.Response(body=body, content_type="application/json")

    fake = FakeAccrual(reply=reply)
    server = await aiohttp_server(fake.app())  # type: ignore[operator]
    user = await make_user(pool)
    async with running_worker(pool, database_uri, str(server.make_url(""))) as harness:
        await add_order(pool, user, PROCESSED)

        async def processed() -> bool:
            return await status_of(pool, PROCESSED) == "PROCESSED"

        await eventually(processed, within=6)
    assert fake.asked(PROCESSED) == 4
    assert harness.stats.malformed_answers == 3
    assert await pool.fetchval("SELECT current FROM balances") == Decimal("10.00")


async def test_a_500_is_retried_and_the_order_then_processed(
    pool: asyncpg.Pool, database_uri: str, aiohttp_server: object
) -> None:
    replies = iter([web.Response(status=500), web.Response(status=502)])
    fake = FakeAccrual(reply=lambda n: next(replies, None) or json_reply("PROCESSED", "1.5", n))
    server = await aiohttp_server(fake.app())  # type: ignore[operator]
    user = await make_user(pool)
    async with running_worker(pool, database_uri, str(server.make_url(""))):
        await add_order(pool, user, PROCESSED)

        async def processed() -> bool:
            return await status_of(pool, PROCESSED) == "PROCESSED"

        await eventually(processed, within=3)
    assert fake.asked(PROCESSED) == 3
    assert (await order_row(pool, PROCESSED))["attempts"] == 1  # retried within one attempt


async def test_when_retries_run_out_the_order_is_rescheduled_not_final(
    pool: asyncpg.Pool, database_uri: str, aiohttp_server: object
) -> None:
    fake = FakeAccrual(reply=lambda n: web.Response(status=500))
    server = await aiohttp_server(fake.app())  # type: ignore[operator]
    user = await make_user(pool)
    async with running_worker(pool, database_uri, str(server.make_url("")), retries=2):
        await add_order(pool, user, PROCESSED)

        async def two_attempts() -> bool:
            return (await order_row(pool, PROCESSED))["attempts"] >= 2

        await eventually(two_attempts, within=3)
    assert await status_of(pool, PROCESSED) == "NEW"


async def test_an_uploaded_order_is_processed_within_a_second_without_polling(
    pool: asyncpg.Pool, database_uri: str, aiohttp_server: object
) -> None:
    fake = FakeAccrual(reply=lambda n: json_reply("PROCESSED", "5", n))
    server = await aiohttp_server(fake.app())  # type: ignore[operator]
    user = await make_user(pool)
    async with running_worker(pool, database_uri, str(server.make_url("")), poll_interval=30.0):
        await asyncio.sleep(0.2)  # the worker is idle, waiting for a notification
        await add_order(pool, user, PROCESSED)

        async def processed() -> bool:
            return await status_of(pool, PROCESSED) == "PROCESSED"

        await eventually(processed, within=1.0)


async def test_a_full_batch_is_followed_by_another_claim_at_once(
    pool: asyncpg.Pool, database_uri: str, aiohttp_server: object
) -> None:
    fake = FakeAccrual(reply=lambda n: json_reply("PROCESSED", "1", n))
    server = await aiohttp_server(fake.app())  # type: ignore[operator]
    user = await make_user(pool)
    async with running_worker(
        pool,
        database_uri,
        str(server.make_url("")),
        poll_interval=30.0,
        batch_size=5,
        concurrency=4,
    ):
        await pool.execute(
            "INSERT INTO orders (number, user_id)"
            " SELECT 'n' || i, $1 FROM generate_series(1, 60) i",
            user,
        )

        async def all_processed() -> bool:
            return (
                await pool.fetchval("SELECT count(*) FROM orders WHERE status = 'PROCESSED'") == 60
            )

        await eventually(all_processed, within=5)
    assert await pool.fetchval("SELECT current FROM balances") == Decimal("60.00")


async def test_without_notifications_the_poll_still_finds_new_orders(
    pool: asyncpg.Pool, database_uri: str, aiohttp_server: object
) -> None:
    fake = FakeAccrual(reply=lambda n: json_reply("INVALID", None, n))
    server = await aiohttp_server(fake.app())  # type: ignore[operator]
    user = await make_user(pool)
    async with running_worker(
        pool, database_uri, str(server.make_url("")), listen=False, poll_interval=0.2
    ):
        await asyncio.sleep(0.3)
        await add_order(pool, user, INVALID)

        async def invalid() -> bool:
            return await status_of(pool, INVALID) == "INVALID"

        await eventually(invalid, within=2)


async def test_stop_waits_briefly_then_abandons_and_gives_orders_back(
    pool: asyncpg.Pool, database_uri: str, aiohttp_server: object
) -> None:
    hanging = asyncio.Event()

    async def hang(number: str) -> web.StreamResponse:
        hanging.set()
        await asyncio.sleep(30)
        return web.Response(status=204)

    fake = FakeAccrual(reply=hang)
    server = await aiohttp_server(fake.app())  # type: ignore[operator]
    user = await make_user(pool)
    loop = asyncio.get_running_loop()
    async with running_worker(
        pool, database_uri, str(server.make_url("")), stop_timeout=0.3
    ) as harness:
        await add_order(pool, user, UNKNOWN)
        await asyncio.wait_for(hanging.wait(), 3)
        started = loop.time()
        harness.worker.stop()
        await asyncio.wait_for(harness.tasks[0], 3)
        assert loop.time() - started < 2
    row = await order_row(pool, UNKNOWN)
    # Given back at once, its attempt not counted: another replica may take it now.
    assert (row["status"], row["attempts"]) == ("NEW", 0)
    assert row["due_in"] <= 0


async def test_stop_lets_a_call_in_flight_finish_and_writes_its_answer(
    pool: asyncpg.Pool, database_uri: str, aiohttp_server: object
) -> None:
    asked = asyncio.Event()

    async def slow(number: str) -> web.StreamResponse:
        asked.set()
        await asyncio.sleep(0.3)
        return json_reply("PROCESSED", "3", number)

    fake = FakeAccrual(reply=slow)
    server = await aiohttp_server(fake.app())  # type: ignore[operator]
    user = await make_user(pool)
    async with running_worker(
        pool, database_uri, str(server.make_url("")), stop_timeout=2.0
    ) as harness:
        await add_order(pool, user, PROCESSED)
        await asyncio.wait_for(asked.wait(), 3)
        harness.worker.stop()
        await asyncio.wait_for(harness.tasks[0], 3)
    assert await status_of(pool, PROCESSED) == "PROCESSED"
