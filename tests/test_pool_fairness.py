"""The connection pool serves waiters first come, first served."""

import asyncio
import itertools

import asyncpg

from shared.pg import create_pool


async def _grant_order(pool: asyncpg.Pool, tasks: int = 30, rounds: int = 20) -> list[int]:
    """Many tasks hammering a small pool; the arrival numbers in the order served."""
    arrivals = itertools.count()
    served: list[int] = []

    async def client() -> None:
        for _ in range(rounds):
            ticket = next(arrivals)  # taken with no await before acquire()
            async with pool.acquire() as conn:
                served.append(ticket)
                await conn.fetchval("SELECT 1")

    await asyncio.gather(*(client() for _ in range(tasks)))
    return served


async def test_waiters_are_served_in_arrival_order(database_uri: str) -> None:
    pool = await create_pool(database_uri, min_size=2, max_size=2)
    try:
        served = await _grant_order(pool)
    finally:
        await pool.close()
    assert len(served) == 600
    assert served == sorted(served)


async def test_asyncpg_pool_alone_lets_late_comers_overtake(database_uri: str) -> None:
    """Why FairPool exists, and proof the check above can fail: the plain pool is unfair.

    Should asyncpg's pool become fair, this fails and FairPool can go.
    """

    async def no_reset(_: asyncpg.Connection) -> None:
        return None

    # Whether late-comers overtake depends on scheduling that settles per pool, so a
    # pool now and then serves in order by chance; a fair pool never serves out of order.
    orders = []
    for _ in range(8):
        pool = await asyncpg.create_pool(database_uri, min_size=2, max_size=2, reset=no_reset)
        try:
            served = await _grant_order(pool)
        finally:
            await pool.close()
        orders.append(served == sorted(served))
        if not orders[-1]:
            break
    assert not all(orders), f"{len(orders)} pools, every one served in arrival order"
