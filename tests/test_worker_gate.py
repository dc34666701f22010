"""The fleet-wide 429 pause and the pacing after it, with two worker instances."""

import asyncio
import itertools

import asyncpg
from aiohttp import web

from tests.helpers import add_order, eventually, make_user
from tests.worker_harness import FakeAccrual, json_reply
from tests.worker_harness import running_worker as worker

NUMBERS = [f"{i:04d}" for i in range(1, 41)]


async def test_a_pause_recorded_by_one_worker_stops_the_other(
    pool: asyncpg.Pool, database_uri: str, aiohttp_server: object
) -> None:
    first = itertools.count()

    def reply(number: str) -> web.Response:
        if next(first) == 0:
            return web.Response(
                status=429,
                headers={"Retry-After": "2"},
                text="No more than 6000 requests per minute allowed",
            )
        return json_reply("PROCESSED", "1", number)

    fake = FakeAccrual(reply=reply)
    server = await aiohttp_server(fake.app())  # type: ignore[operator]
    base = str(server.make_url(""))
    user = await make_user(pool)
    loop = asyncio.get_running_loop()
    async with worker(pool, database_uri, base) as a, worker(pool, database_uri, base) as b:
        await add_order(pool, user, NUMBERS[0])

        async def both_paused() -> bool:
            return a.gate.pause_left() > 0 and b.gate.pause_left() > 0

        # The one that did not get the 429 learns of it by notification, at once.
        await eventually(both_paused, within=1)
        limited_at = fake.requests[0][0]
        for number in NUMBERS[1:20]:
            await add_order(pool, user, number)
        await asyncio.sleep(1.0)
        assert len(fake.requests) == 1  # nobody called during the pause

        async def all_processed() -> bool:
            return (
                await pool.fetchval("SELECT count(*) FROM orders WHERE status = 'PROCESSED'") == 20
            )

        await eventually(all_processed, within=5)
    resumed_at = fake.requests[1][0]
    assert resumed_at - limited_at >= 1.9
    assert loop.time() - limited_at < 10
    # A 429 is no failure: the order's attempt was given back.
    assert await pool.fetchval("SELECT attempts FROM orders WHERE number = $1", NUMBERS[0]) == 1
    assert a.stats.calls("429") + b.stats.calls("429") == 1


async def test_after_a_429_the_fleet_paces_itself_under_the_announced_rate(
    pool: asyncpg.Pool, database_uri: str, aiohttp_server: object
) -> None:
    rate = 300  # per minute: one call every 0.206 s at 97 %
    calls = itertools.count()

    def reply(number: str) -> web.Response:
        if next(calls) == 0:
            return web.Response(
                status=429,
                headers={"Retry-After": "0"},
                text=f"No more than {rate} requests per minute allowed",
            )
        return json_reply("PROCESSED", "1", number)

    fake = FakeAccrual(reply=reply)
    server = await aiohttp_server(fake.app())  # type: ignore[operator]
    base = str(server.make_url(""))
    user = await make_user(pool)
    async with worker(pool, database_uri, base) as a, worker(pool, database_uri, base) as b:
        await add_order(pool, user, NUMBERS[0])

        async def limited() -> bool:
            # Both replicas know the limit (orders claimed before a replica
            # hears of the 429 are in flight already: that race is not paced).
            return a.gate.rate_per_minute == b.gate.rate_per_minute == rate

        await eventually(limited, within=2)
        await pool.execute(
            "INSERT INTO orders (number, user_id) SELECT unnest($1::text[]), $2",
            NUMBERS[1:12],
            user,
        )

        async def all_processed() -> bool:
            return (
                await pool.fetchval("SELECT count(*) FROM orders WHERE status = 'PROCESSED'") == 12
            )

        await eventually(all_processed, within=10)
    assert a.gate.rate_per_minute == b.gate.rate_per_minute == rate
    times = [t for t, _ in fake.requests[1:]]
    assert len(times) == 12
    interval = 60 / (rate * 0.97)
    gaps = [y - x for x, y in itertools.pairwise(times)]
    # Both replicas draw from one schedule: calls never bunch up.
    assert min(gaps) > interval * 0.8
    assert times[-1] - times[0] > interval * 10


async def test_no_limit_known_means_no_pacing(
    pool: asyncpg.Pool, database_uri: str, aiohttp_server: object
) -> None:
    fake = FakeAccrual(reply=lambda n: json_reply("PROCESSED", "1", n))
    server = await aiohttp_server(fake.app())  # type: ignore[operator]
    user = await make_user(pool)
    async with worker(pool, database_uri, str(server.make_url(""))) as harness:
        await pool.execute(
            "INSERT INTO orders (number, user_id) SELECT unnest($1::text[]), $2", NUMBERS, user
        )

        async def all_processed() -> bool:
            return await pool.fetchval(
                "SELECT count(*) FROM orders WHERE status = 'PROCESSED'"
            ) == len(NUMBERS)

        await eventually(all_processed, within=3)
    assert harness.gate.interval() is None
    assert await pool.fetchval("SELECT next_slot = '-infinity' FROM accrual_gate")


async def test_a_paused_worker_gives_claimed_orders_back_for_after_the_pause(
    pool: asyncpg.Pool, database_uri: str, aiohttp_server: object
) -> None:
    fake = FakeAccrual(
        reply=lambda n: web.Response(
            status=429, headers={"Retry-After": "30"}, text="No more than 10 requests per minute"
        )
    )
    server = await aiohttp_server(fake.app())  # type: ignore[operator]
    user = await make_user(pool)
    async with worker(pool, database_uri, str(server.make_url("")), concurrency=1):
        await pool.execute(
            "INSERT INTO orders (number, user_id) SELECT unnest($1::text[]), $2", NUMBERS[:5], user
        )

        async def all_back() -> bool:
            return (
                await pool.fetchval(
                    "SELECT count(*) FROM orders WHERE attempts = 0"
                    " AND next_attempt_at > now() + interval '25 seconds'"
                )
                == 5
            )

        await eventually(all_back, within=3)
    assert len(fake.requests) == 1
