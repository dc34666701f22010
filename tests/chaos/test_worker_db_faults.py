"""The claim loop under database trouble: it survives every kind, and recovers at once."""

import asyncio
from typing import Any

import asyncpg

from tests.helpers import add_order, eventually, make_user, status_of
from tests.worker_harness import FakeAccrual, json_reply, running_worker


class Glitchy:
    """The pool, except that ``fetch`` (claims and applies) fails while ``down``."""

    def __init__(self, pool: asyncpg.Pool, error: Exception) -> None:
        self.pool = pool
        self.error = error
        self.down = True
        self.failed = 0

    async def fetch(self, *args: Any, **kwargs: Any) -> list[asyncpg.Record]:
        if self.down:
            self.failed += 1
            raise self.error
        return await self.pool.fetch(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pool, name)


async def _processed_app(aiohttp_server: Any) -> str:
    fake = FakeAccrual(reply=lambda n: json_reply("PROCESSED", "5", n))
    server = await aiohttp_server(fake.app())
    return str(server.make_url(""))


async def test_a_connection_asyncpg_lost_track_of_does_not_kill_the_worker(
    pool: asyncpg.Pool, database_uri: str, aiohttp_server: Any
) -> None:
    # What asyncpg raised in a real worker when PostgreSQL shut down mid-claim
    # (tests/chaos/test_database_outage.py); it is no PostgresError/InterfaceError.
    glitchy = Glitchy(
        pool,
        asyncpg.InternalClientError(
            "cannot switch to state 15; another operation (2) is in progress"
        ),
    )
    base = await _processed_app(aiohttp_server)
    user = await make_user(pool)
    await add_order(pool, user, "79927398713")
    async with running_worker(
        glitchy,
        database_uri,
        base,  # type: ignore[arg-type]
        poll_interval=0.1,
    ) as harness:

        async def failed() -> bool:
            return glitchy.failed >= 1

        await eventually(failed, within=3)
        await asyncio.sleep(0.5)  # several more claims fail meanwhile
        run = harness.tasks[0]
        assert not run.done(), f"the worker died: {run.exception()!r}"
        glitchy.down = False

        async def processed() -> bool:
            return await status_of(pool, "79927398713") == "PROCESSED"

        await eventually(processed, within=3)


async def test_after_the_database_returns_a_notification_ends_the_claim_backoff(
    pool: asyncpg.Pool, database_uri: str, aiohttp_server: Any
) -> None:
    glitchy = Glitchy(pool, ConnectionRefusedError(111, "Connection refused"))
    base = await _processed_app(aiohttp_server)
    user = await make_user(pool)
    await add_order(pool, user, "12345678903")  # due: the claim loop keeps trying
    # A 30 s polling fallback: only the notification can make the next claim prompt.
    async with running_worker(
        glitchy,
        database_uri,
        base,  # type: ignore[arg-type]
        poll_interval=30.0,
    ):
        await asyncio.sleep(3.2)  # failed claims have backed off to 3.2 s by now
        assert glitchy.failed >= 4
        glitchy.down = False
        await add_order(pool, user, "79927398713")  # the insert trigger NOTIFYs

        async def processed() -> bool:
            return await status_of(pool, "79927398713") == "PROCESSED"

        await eventually(processed, within=1.0)
