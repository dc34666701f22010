"""The PostgreSQL connection pool both processes use."""

import asyncio
from typing import Any

import asyncpg

SCHEMA = "gophermart"

# Session settings of every pooled connection.
#
# enable_seqscan = off: every statement these pools run finds its rows through
# an index (tests/test_plans.py checks each one, generic and custom plans, on
# empty and large tables). A sequential scan is only ever the cheaper plan
# while a table is tiny, and a generic plan chosen then stays cached on the
# connection after the table has grown: one such upload plan read all of
# ``orders`` on every call. With the setting off the planner takes the index
# at every size; it still scans when no index applies, which the test catches.
#
# jit = off: a plan that must still scan (the one-row accrual_gate) then costs
# over jit_above_cost, and compiling it took 600 ms per claim. No statement here
# runs long enough for JIT to pay off.
SERVER_SETTINGS = {
    "search_path": SCHEMA,
    "application_name": "gophermart",
    "enable_seqscan": "off",
    "jit": "off",
}


async def _keep_session(_: asyncpg.Connection) -> None:
    """Release a connection without asyncpg's default reset round trip.

    The default runs ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
    RESET ALL`` on every release: a second round trip for each one-statement
    request. Nothing that borrows from these pools leaves session state behind
    (migrations and LISTEN use connections of their own), and asyncpg still
    rolls back a transaction left open and drops listeners before calling this.
    """


class FairPool(asyncpg.Pool):
    """An asyncpg pool that hands out connections in the order they were asked for.

    asyncpg queues idle connections in an ``asyncio.Queue``, which is not fair:
    a released connection goes to whichever task asks next, and a woken
    waiter that finds it taken queues again at the back. With the pool
    exhausted (more requests in flight than connections) some requests
    starve: ``make bench`` showed p50 3 ms but p99 over 500 ms. A FIFO
    semaphore in front of the pool (``asyncio.Semaphore`` wakes waiters in
    order) restores first come, first served.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._turns = asyncio.Semaphore(kwargs["max_size"])

    # The overrides keep asyncpg's signatures, ``timeout`` parameters included.
    async def _acquire(self, timeout: float | None) -> Any:  # noqa: ASYNC109
        async with asyncio.timeout(timeout):
            await self._turns.acquire()
        try:
            return await super()._acquire(timeout)  # type: ignore[misc]
        except BaseException:
            self._turns.release()
            raise

    async def release(self, connection: Any, *,
                      timeout: float | None = None) -> None:  # noqa: ASYNC109
        held = getattr(connection, "_con", None) is not None  # not released already
        try:
            await super().release(connection, timeout=timeout)
        finally:
            if held:
                self._turns.release()


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 10,
                      connect_timeout: float = 5.0) -> asyncpg.Pool:
    """A fair pool whose connections resolve names in Gophermart's own schema.

    ``command_timeout`` bounds every query so that a stalled database turns
    into a prompt error rather than a hanging request.
    """
    pool = FairPool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        max_queries=50_000,
        max_inactive_connection_lifetime=300.0,
        reset=_keep_session,
        loop=None,
        connection_class=asyncpg.Connection,
        record_class=asyncpg.Record,
        timeout=connect_timeout,
        command_timeout=connect_timeout,
        server_settings=SERVER_SETTINGS,
    )
    await pool
    return pool
