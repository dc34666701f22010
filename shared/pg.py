"""The PostgreSQL connection pool both processes use."""

import asyncio
import time
from collections.abc import Callable
from contextvars import ContextVar
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


# The database is down, restarting or out of reach: a lost or refused connection,
# a network timeout, the server shutting down. Nothing the request did; the API
# answers 503 and start-up waits. InternalClientError: asyncpg losing track of a
# connection killed mid-operation (seen during a fast shutdown); it derives from
# Exception alone.
DATABASE_DOWN: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.InternalClientError,
)

# Worth retrying later: the database down (above) or any error PostgreSQL
# reports (a deadlock, a serialization failure, a statement or lock timeout).
# What background loops, listeners and probes catch, log and try again. A
# constraint or data error is a PostgresError too and fails again on the same
# data: a caller that retries the same data sets those apart
# (worker.writeback.unappliable).
WORTH_RETRYING: tuple[type[BaseException], ...] = (*DATABASE_DOWN, asyncpg.PostgresError)


class PoolBusy(Exception):
    """No connection came free before the acquire deadline: overload, not an outage.

    ``scope`` is ``"customer"`` when the wait was for the share of the pool
    the current customer may hold, ``"pool"`` when every connection was busy.
    """

    def __init__(self, scope: str, waited: float) -> None:
        super().__init__(f"no {scope} connection free after {waited:.2f} s")
        self.scope = scope
        self.waited = waited


# What a task on a FairPool tries again later: the above, or no connection free
# before its deadline (overload, not a fault).
WORTH_RETRYING_OR_BUSY: tuple[type[BaseException], ...] = (*WORTH_RETRYING, PoolBusy)


# Whose work the current task does (the API binds the customer of the request):
# connections are shared out per key, so no one key can hold the whole pool.
SHARE_KEY: ContextVar[int | None] = ContextVar("pool_share_key", default=None)


class _Share:
    """The connections one key may hold at once, and how many tasks use the entry."""

    __slots__ = ("turns", "users")

    def __init__(self, size: int) -> None:
        self.turns = asyncio.Semaphore(size)
        self.users = 0


class FairPool(asyncpg.Pool):
    """An asyncpg pool that is fair, keeps deadlines and reports its waits.

    **First come, first served.** asyncpg queues idle connections in an
    ``asyncio.Queue``, which is not fair: a released connection goes to
    whichever task asks next, and a woken waiter that finds it taken queues
    again at the back. With the pool exhausted (more requests in flight than
    connections) some requests starve: ``make bench`` showed p50 3 ms but p99
    over 500 ms. A FIFO semaphore in front of the pool (``asyncio.Semaphore``
    wakes waiters in order) restores first come, first served.

    **A share per customer.** With ``share`` set, the tasks of one
    ``SHARE_KEY`` hold at most that many connections at once and queue for
    their own share first, so one customer's requests stuck on a locked row
    (or a flood of them) leave the rest of the pool to everyone else.

    **A deadline.** Waiting for a connection ends after ``acquire_timeout``
    seconds (when the caller gives none) with ``PoolBusy``, which the API
    answers with a prompt 503/429 rather than a request that hangs.

    ``on_wait`` is told how long every wait took.
    """

    def __init__(
        self,
        *args: Any,
        acquire_timeout: float | None = None,
        share: int | None = None,
        on_wait: Callable[[float], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._turns = asyncio.Semaphore(kwargs["max_size"])
        self._acquire_timeout = acquire_timeout
        self._share_size = share if share is not None and share < kwargs["max_size"] else None
        self._shares: dict[int, _Share] = {}
        self._held: dict[int, int] = {}  # id(connection proxy) -> share key
        self._on_wait = on_wait

    # The overrides keep asyncpg's signatures, ``timeout`` parameters included.
    async def _acquire(self, timeout: float | None) -> Any:  # noqa: ASYNC109
        key = SHARE_KEY.get() if self._share_size is not None else None
        share = self._enter(key) if key is not None else None
        started = time.perf_counter()
        scope = "customer"
        try:
            async with asyncio.timeout(timeout if timeout is not None else self._acquire_timeout):
                if share is not None:
                    await share.turns.acquire()
                scope = "pool"
                try:
                    await self._turns.acquire()
                except BaseException:
                    if share is not None:
                        share.turns.release()
                    raise
        except TimeoutError:
            self._leave(key, share)
            waited = time.perf_counter() - started
            self._waited(waited)
            raise PoolBusy(scope, waited) from None
        except BaseException:
            self._leave(key, share)
            raise
        self._waited(time.perf_counter() - started)
        try:
            connection = await super()._acquire(timeout)  # type: ignore[misc]
        except BaseException:
            self._turns.release()
            if share is not None:
                share.turns.release()
            self._leave(key, share)
            raise
        if key is not None:
            self._held[id(connection)] = key
        return connection

    async def release(self, connection: Any, *, timeout: float | None = None) -> None:  # noqa: ASYNC109
        held = getattr(connection, "_con", None) is not None  # not released already
        key = self._held.pop(id(connection), None) if held else None
        try:
            await super().release(connection, timeout=timeout)
        finally:
            if held:
                self._turns.release()
                if key is not None:
                    share = self._shares[key]
                    share.turns.release()
                    self._leave(key, share)

    def _enter(self, key: int) -> _Share:
        share = self._shares.get(key)
        if share is None:
            assert self._share_size is not None
            share = self._shares[key] = _Share(self._share_size)
        share.users += 1
        return share

    def _leave(self, key: int | None, share: _Share | None) -> None:
        """Forget a key's entry once no task uses it (the map stays as small as the load)."""
        if key is None or share is None:
            return
        share.users -= 1
        if share.users == 0:
            del self._shares[key]

    def _waited(self, seconds: float) -> None:
        if self._on_wait is not None:
            self._on_wait(seconds)


async def create_pool(
    dsn: str,
    *,
    min_size: int = 2,
    max_size: int = 10,
    connect_timeout: float = 5.0,
    acquire_timeout: float | None = None,
    share: int | None = None,
    statement_timeout: float | None = None,
    on_wait: Callable[[float], None] | None = None,
) -> asyncpg.Pool:
    """A fair pool whose connections resolve names in Gophermart's own schema.

    ``command_timeout`` bounds every query so that a stalled database turns
    into a prompt error rather than a hanging request; ``acquire_timeout``
    bounds the wait for a connection (see ``FairPool``). ``statement_timeout``
    (shorter than ``connect_timeout``) makes PostgreSQL itself end a statement,
    waits for row locks included, so that a locked row or a saturated database
    is told apart from an unreachable one.
    """
    settings = dict(SERVER_SETTINGS)
    if statement_timeout is not None:
        settings["statement_timeout"] = f"{max(round(statement_timeout * 1000), 1)}ms"
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
        server_settings=settings,
        acquire_timeout=acquire_timeout,
        share=share,
        on_wait=on_wait,
    )
    await pool
    return pool
