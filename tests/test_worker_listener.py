"""The LISTEN connection: a dropped one is replaced, and nothing sleeps meanwhile."""

import asyncio

import asyncpg

from db import gate as db_gate
from db.gate import GateState
from shared.localpg import LocalPostgres
from tests.helpers import add_order, eventually, make_user, status_of
from tests.worker_harness import FakeAccrual, json_reply, running_worker
from worker.listener import Listener

KILL_LISTENER = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'LISTEN%'"


async def test_a_terminated_listen_connection_is_replaced_and_orders_still_flow(
    pool: asyncpg.Pool, database_uri: str, aiohttp_server: object
) -> None:
    fake = FakeAccrual(reply=lambda n: json_reply("PROCESSED", "2", n))
    server = await aiohttp_server(fake.app())  # type: ignore[operator]
    user = await make_user(pool)
    # A long poll: only a live LISTEN connection can make this prompt.
    async with running_worker(
        pool, database_uri, str(server.make_url("")), poll_interval=30.0
    ) as harness:
        await asyncio.sleep(0.2)  # idle: the claim loop waits for a notification
        assert (
            await pool.fetchval(KILL_LISTENER.replace("pg_terminate_backend(pid)", "count(*)")) == 1
        )
        await pool.execute(KILL_LISTENER)

        async def reconnected() -> bool:
            return harness.listener.connects >= 2 and harness.listener.connected.is_set()

        await eventually(reconnected, within=3)
        await asyncio.sleep(0.2)  # let the reconnect's catch-up claim find nothing
        await add_order(pool, user, "79927398713")

        async def processed() -> bool:
            return await status_of(pool, "79927398713") == "PROCESSED"

        await eventually(processed, within=1.0)


async def test_orders_uploaded_while_not_listening_are_found_on_reconnect(
    pool: asyncpg.Pool, database_uri: str, aiohttp_server: object
) -> None:
    fake = FakeAccrual(reply=lambda n: json_reply("INVALID", None, n))
    server = await aiohttp_server(fake.app())  # type: ignore[operator]
    user = await make_user(pool)
    async with running_worker(
        pool, database_uri, str(server.make_url("")), poll_interval=30.0
    ) as harness:
        await asyncio.sleep(0.2)
        # Kill the listener and insert before it can come back.
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(KILL_LISTENER)
            await conn.execute(
                "INSERT INTO orders (number, user_id) VALUES ($1, $2)", "12345678903", user
            )

        async def invalid() -> bool:
            return await status_of(pool, "12345678903") == "INVALID"

        await eventually(invalid, within=2)
        assert harness.listener.connects >= 2


async def test_the_listener_keeps_trying_while_the_database_is_unreachable(
    pg_server: LocalPostgres,
) -> None:
    woken = asyncio.Event()
    listener = Listener(
        pg_server.dsn_for("no_such_database"),
        on_new_order=woken.set,
        on_pause=lambda state: None,
        max_backoff=0.1,
    )
    task = asyncio.create_task(listener.run())
    await asyncio.sleep(0.5)
    assert not task.done() and listener.connects == 0 and not woken.is_set()
    listener.stop()
    await asyncio.wait_for(task, 2)


async def test_a_pause_recorded_while_not_listening_is_learned_on_connect(
    pool: asyncpg.Pool, database_uri: str
) -> None:
    # Its NOTIFY went out before this process listened (a replica starting, or
    # reconnecting after a lost connection): the connect itself must tell of it.
    await db_gate.record_pause(pool, seconds=30, rate_per_minute=600)
    heard: list[GateState] = []
    listener = Listener(database_uri, on_new_order=lambda: None, on_pause=heard.append)
    task = asyncio.create_task(listener.run())
    try:
        await asyncio.wait_for(listener.connected.wait(), 5)
    finally:
        listener.stop()
        await asyncio.wait_for(task, 5)
    assert len(heard) == 1
    assert 20 < heard[0].pause_left <= 30 and heard[0].rate_per_minute == 600
