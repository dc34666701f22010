"""FairPool's deadline and per-customer shares, on a real PostgreSQL; Stalls' loop watch."""

import asyncio
import contextvars
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from shared.pg import SHARE_KEY, FairPool, PoolBusy, create_pool
from shared.stalls import Stalls


@pytest.fixture
async def small_pool(database_uri: str) -> AsyncIterator[tuple[FairPool, list[float]]]:
    waits: list[float] = []
    pool = await create_pool(
        database_uri, min_size=0, max_size=4, acquire_timeout=0.2, share=2, on_wait=waits.append
    )
    assert isinstance(pool, FairPool)
    try:
        yield pool, waits
    finally:
        await pool.close()


async def as_customer(key: int | None, work: Callable[[], Awaitable[Any]]) -> Any:
    """Run ``work`` in a task whose queries count against ``key``'s share."""
    context = contextvars.copy_context()
    context.run(SHARE_KEY.set, key)
    return await asyncio.get_running_loop().create_task(work(), context=context)


async def test_one_customer_holds_at_most_its_share_and_others_still_get_connections(
    small_pool: tuple[FairPool, list[float]],
) -> None:
    pool, waits = small_pool
    async with AsyncExitStack() as held:

        async def take() -> asyncpg.Connection:
            return await held.enter_async_context(pool.acquire())  # type: ignore[arg-type]

        for _ in range(2):
            await as_customer(1, take)
        with pytest.raises(PoolBusy) as refused:
            await as_customer(1, lambda: pool.fetchval("SELECT 1"))
        assert refused.value.scope == "customer"
        # The rest of the pool is free for another customer and for keyless work.
        assert await as_customer(2, lambda: pool.fetchval("SELECT 2")) == 2
        assert await pool.fetchval("SELECT 3") == 3
        for _ in range(2):
            await as_customer(2, take)
        # Every connection is held now: anyone's wait ends at the deadline.
        with pytest.raises(PoolBusy) as busy:
            await as_customer(3, lambda: pool.fetchval("SELECT 1"))
        assert busy.value.scope == "pool"
        with pytest.raises(PoolBusy):
            await pool.fetchval("SELECT 1")
        assert not isinstance(busy.value, TimeoutError | OSError)  # never "database down"
    # Released: the customer's share is whole again and no entry is left behind.
    assert (
        await asyncio.gather(*(as_customer(1, lambda: pool.fetchval("SELECT 1")) for _ in range(6)))
        == [1] * 6
    )
    assert pool._shares == {} and pool._held == {}
    assert len(waits) >= 10 and max(waits) >= 0.2  # every wait was reported, timeouts too


async def test_a_cancelled_waiter_gives_its_place_back(
    small_pool: tuple[FairPool, list[float]],
) -> None:
    pool, _ = small_pool
    async with pool.acquire(), pool.acquire(), pool.acquire(), pool.acquire():
        waiter = asyncio.create_task(as_customer(1, lambda: pool.fetchval("SELECT 1")))
        await asyncio.sleep(0.05)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
    assert pool._shares == {}
    assert await asyncio.gather(*(pool.fetchval("SELECT 1") for _ in range(8))) == [1] * 8


async def test_a_stalled_loop_is_exported_and_logged(captured_logs: Any) -> None:
    registry = CollectorRegistry()
    stalls = Stalls(registry, threshold=0.1)
    watching = asyncio.create_task(stalls.watch_loop())
    await asyncio.sleep(0.15)
    time.sleep(0.4)  # the loop is blocked: no timer can run
    await asyncio.sleep(0.15)
    watching.cancel()
    over = registry.get_sample_value("gophermart_event_loop_lag_seconds_bucket", {"le": "0.25"})
    total = registry.get_sample_value("gophermart_event_loop_lag_seconds_count")
    assert total is not None and over is not None and total - over >= 1  # one sample > 0.25 s
    assert '"event":"event loop stalled"' in captured_logs.read_text()
