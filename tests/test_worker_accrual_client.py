"""Answer parsing and the HTTP client: exact decimals, retries, 429 handling."""

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email.utils import format_datetime

import aiohttp
import asyncpg
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.worker_harness import FakeAccrual, json_reply
from worker.accrual_client import (
    AccrualClient,
    Deferred,
    Failed,
    MalformedAnswer,
    NotKnown,
    RateLimited,
    Status,
    create_session,
    parse_order_answer,
    parse_rate,
    parse_retry_after,
)
from worker.gate import Gate
from worker.stats import WorkerStats

LOG = structlog.get_logger("test")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"order": "1", "status": "REGISTERED"}', Status("NEW")),
        (b'{"order": "1", "status": "PROCESSING"}', Status("PROCESSING")),
        (b'{"order": "1", "status": "INVALID"}', Status("INVALID")),
        (
            b'{"order": "1", "status": "PROCESSED", "accrual": 500}',
            Status("PROCESSED", Decimal(500)),
        ),
        (
            b'{"order": "1", "status": "PROCESSED", "accrual": 729.975}',
            Status("PROCESSED", Decimal("729.98")),
        ),
        (
            b'{"order": "1", "status": "PROCESSED", "accrual": 0.005}',
            Status("PROCESSED", Decimal("0.01")),
        ),
        (
            b'{"order": "1", "status": "PROCESSED", "accrual": 27.244999}',
            Status("PROCESSED", Decimal("27.24")),
        ),
        (b'{"order": "1", "status": "PROCESSED"}', Status("PROCESSED", Decimal(0))),
        (
            b'{"order": "1", "status": "PROCESSED", "accrual": null}',
            Status("PROCESSED", Decimal(0)),
        ),
    ],
)
def test_answers_map_to_our_statuses_with_exact_half_up_accruals(
    body: bytes, expected: Status
) -> None:
    answer = parse_order_answer(body, "1")
    assert answer == expected
    assert answer.accrual is None or answer.accrual.as_tuple().exponent in (0, -2)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[]",
        b'"PROCESSED"',
        b'{"order": "1"}',
        b'{"order": "1", "status": "DONE"}',
        b'{"order": "1", "status": null}',
        b'{"order": "1", "status": "PROCESSED", "accrual": -1}',
        b'{"order": "1", "status": "PROCESSED", "accrual": "500"}',
        b'{"order": "1", "status": "PROCESSED", "accrual": true}',
        b'{"order": "1", "status": "PROCESSED", "accrual": 1e300}',
        b'{"order": "1", "status": "PROCESSED", "accrual": NaN}',
    ],
)
def test_malformed_answers_are_refused(body: bytes) -> None:
    with pytest.raises(MalformedAnswer):
        parse_order_answer(body, "1")


def test_retry_after_reads_seconds_and_http_dates_and_defaults_to_60() -> None:
    now = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("30") == 30
    assert parse_retry_after(" 2 ") == 2
    assert (
        parse_retry_after(format_datetime(now + timedelta(seconds=45), usegmt=True), now=now) == 45
    )
    assert parse_retry_after("Wed, 01 May 2024 11:59:00 GMT", now=now) == 0  # already past
    assert parse_retry_after(None) == 60
    assert parse_retry_after("") == 60
    assert parse_retry_after("soon") == 60
    assert parse_retry_after("nan") == 60
    assert parse_retry_after("-5") == 0
    # A year past datetime's range raises OverflowError inside the date parser.
    assert parse_retry_after("Mon, 01 Jan 99999999999 00:00:00 GMT") == 60


def test_rate_is_read_from_the_429_body() -> None:
    assert parse_rate("No more than 100 requests per minute allowed") == 100
    assert parse_rate("no more than 7 requests per minute allowed\n") == 7
    assert parse_rate("slow down") is None
    assert parse_rate("No more than 0 requests per minute allowed") is None
    assert parse_rate("No more than 0000000001 requests per minute allowed") == 1
    assert parse_rate("No more than 1234567890 requests per minute allowed") == 999_999_999


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    session = create_session(concurrency=4, timeout=1.0)
    yield session
    await session.close()


async def start(aiohttp_server: object, fake: FakeAccrual) -> TestServer:
    server: TestServer = await aiohttp_server(fake.app())  # type: ignore[operator]
    return server


def client_for(
    pool: asyncpg.Pool,
    session: aiohttp.ClientSession,
    base: str,
    stats: WorkerStats,
    retries: int = 4,
) -> AccrualClient:
    return AccrualClient(
        session, base, Gate(pool, stats), stats, retries=retries, retry_wait_max=0.05
    )


async def test_5xx_is_retried_until_an_answer_comes(
    pool: asyncpg.Pool, session: aiohttp.ClientSession, aiohttp_server: object
) -> None:
    replies = iter(
        [
            web.Response(status=500),
            web.Response(status=503),
            json_reply("PROCESSED", "12.5", "79927398713"),
        ]
    )
    fake = FakeAccrual(reply=lambda number: next(replies))
    server = await start(aiohttp_server, fake)
    stats = WorkerStats()
    client = client_for(pool, session, str(server.make_url("")), stats)
    answer = await client.ask("79927398713", deadline=1e18, log=LOG)
    assert answer == Status("PROCESSED", Decimal("12.50"))
    assert fake.asked("79927398713") == 3
    assert (stats.calls("5xx"), stats.calls("200")) == (2, 1)


async def test_retries_are_bounded_and_end_in_a_transient_failure(
    pool: asyncpg.Pool, session: aiohttp.ClientSession, aiohttp_server: object
) -> None:
    fake = FakeAccrual(reply=lambda number: web.Response(status=500))
    server = await start(aiohttp_server, fake)
    stats = WorkerStats()
    answer = await client_for(pool, session, str(server.make_url("")), stats, retries=3).ask(
        "1", deadline=1e18, log=LOG
    )
    assert isinstance(answer, Failed)
    assert fake.asked("1") == 3


async def test_network_errors_are_retried_then_reported(
    pool: asyncpg.Pool, session: aiohttp.ClientSession, unused_tcp_port: int
) -> None:
    stats = WorkerStats()
    client = client_for(pool, session, f"http://127.0.0.1:{unused_tcp_port}", stats, retries=2)
    answer = await client.ask("1", deadline=1e18, log=LOG)
    assert isinstance(answer, Failed)
    assert stats.calls("error") == 2


async def test_204_means_not_known_yet(
    pool: asyncpg.Pool, session: aiohttp.ClientSession, aiohttp_server: object
) -> None:
    fake = FakeAccrual()
    server = await start(aiohttp_server, fake)
    answer = await client_for(pool, session, str(server.make_url("")), WorkerStats()).ask(
        "1", deadline=1e18, log=LOG
    )
    assert answer == NotKnown()


async def test_429_pauses_the_fleet_and_no_call_goes_out_during_the_pause(
    pool: asyncpg.Pool, session: aiohttp.ClientSession, aiohttp_server: object
) -> None:
    fake = FakeAccrual(
        reply=lambda number: web.Response(
            status=429,
            headers={"Retry-After": "30"},
            text="No more than 100 requests per minute allowed",
        )
    )
    server = await start(aiohttp_server, fake)
    stats = WorkerStats()
    client = client_for(pool, session, str(server.make_url("")), stats)
    assert await client.ask("1", deadline=1e18, log=LOG) == RateLimited(30, 100)
    gate = await pool.fetchrow(
        "SELECT paused_until - now() AS left, rate_per_minute FROM accrual_gate"
    )
    assert timedelta(seconds=29) < gate["left"] <= timedelta(seconds=30)
    assert gate["rate_per_minute"] == 100
    again = await client.ask("2", deadline=1e18, log=LOG)
    assert isinstance(again, Deferred) and 29 < again.delay <= 30
    assert len(fake.requests) == 1
    assert stats.calls("429") == 1 and stats.rate_per_minute == 100


async def test_429_with_an_http_date_pauses_until_that_date(
    pool: asyncpg.Pool, session: aiohttp.ClientSession, aiohttp_server: object
) -> None:
    until = datetime.now(UTC) + timedelta(seconds=20)
    fake = FakeAccrual(
        reply=lambda number: web.Response(
            status=429, headers={"Retry-After": format_datetime(until, usegmt=True)}
        )
    )
    server = await start(aiohttp_server, fake)
    answer = await client_for(pool, session, str(server.make_url("")), WorkerStats()).ask(
        "1", deadline=1e18, log=LOG
    )
    assert isinstance(answer, RateLimited) and 18 < answer.retry_after <= 20
    assert answer.rate_per_minute is None
    left = await pool.fetchval(
        "SELECT extract(epoch FROM paused_until - now())::float8 FROM accrual_gate"
    )
    assert 18 < left <= 20


async def test_429_without_retry_after_pauses_60_seconds(
    pool: asyncpg.Pool, session: aiohttp.ClientSession, aiohttp_server: object
) -> None:
    fake = FakeAccrual(reply=lambda number: web.Response(status=429, text="busy"))
    server = await start(aiohttp_server, fake)
    answer = await client_for(pool, session, str(server.make_url("")), WorkerStats()).ask(
        "1", deadline=1e18, log=LOG
    )
    assert answer == RateLimited(60, None)
    left = await pool.fetchval(
        "SELECT extract(epoch FROM paused_until - now())::float8 FROM accrual_gate"
    )
    assert 59 < left <= 60


async def test_a_timeout_is_a_transient_error(pool: asyncpg.Pool, aiohttp_server: object) -> None:
    async def slow(number: str) -> web.StreamResponse:
        await asyncio.sleep(1)
        return web.Response(status=204)

    fake = FakeAccrual(reply=slow)
    server = await start(aiohttp_server, fake)
    session = create_session(concurrency=2, timeout=0.1)
    try:
        stats = WorkerStats()
        answer = await client_for(pool, session, str(server.make_url("")), stats, retries=2).ask(
            "1", deadline=1e18, log=LOG
        )
    finally:
        await session.close()
    assert isinstance(answer, Failed)
    assert stats.calls("error") == 2
