"""The fair queue: one customer's thousands of waiting orders cannot hold back another's.

Against a real PostgreSQL: the claim serves fresh orders before orders asked
many times, goes round-robin over users, and the running worker, paced at
10 requests/s, asks about a newcomer's order within a few calls however many
unknown orders another user holds.
"""

import asyncpg

from db import queue
from tests.helpers import add_order, eventually, make_user
from tests.hostile_accrual import HostileAccrual
from tests.worker_harness import running_worker
from worker.schedule import Backoff


async def flood(
    pool: asyncpg.Pool, user: int, count: int, *, attempts: int = 0, prefix: str = "9"
) -> None:
    """``count`` due orders for ``user``, uploaded an hour ago, asked ``attempts`` times."""
    await pool.execute(
        "INSERT INTO orders (number, user_id, attempts, uploaded_at, next_attempt_at)"
        " SELECT $3 || lpad(i::text, 8, '0'), $1, $2, now() - interval '1 hour',"
        "        now() - interval '1 minute' + i * interval '1 ms'"
        " FROM generate_series(1, $4) i",
        user,
        attempts,
        prefix,
        count,
    )


async def test_a_fresh_order_is_claimed_before_thousands_asked_many_times(
    pool: asyncpg.Pool,
) -> None:
    flooder, newcomer = await make_user(pool, "flooder"), await make_user(pool, "newcomer")
    await flood(pool, flooder, 3000, attempts=20)
    await add_order(pool, newcomer, "12345678903")
    (first,) = (await queue.claim(pool, limit=1, lease=30)).orders
    assert first.number == "12345678903"


async def test_a_stream_of_fresh_orders_cannot_starve_a_long_unknown_order(
    pool: asyncpg.Pool,
) -> None:
    flooder, owner = await make_user(pool, "flooder"), await make_user(pool, "owner")
    await flood(pool, flooder, 2000)  # fresh, and more keep coming
    await add_order(pool, owner, "12345678903")
    # Asked nine times already, due again just now: fresh orders go first...
    await pool.execute(
        "UPDATE orders SET attempts = 9, next_attempt_at = now() WHERE number = '12345678903'"
    )
    (first,) = (await queue.claim(pool, limit=1, lease=30)).orders
    assert first.number != "12345678903"
    # ...but once it has waited its due turn a while, it is next, flood or not.
    await pool.execute(
        "UPDATE orders SET next_attempt_at = now() - interval '6 seconds'"
        " WHERE number = '12345678903'"
    )
    (first,) = (await queue.claim(pool, limit=1, lease=30)).orders
    assert first.number == "12345678903"


async def test_one_users_fresh_flood_gets_one_turn_per_other_user(pool: asyncpg.Pool) -> None:
    flooder = await make_user(pool, "flooder")
    others = [await make_user(pool, f"user-{i}") for i in range(5)]
    await flood(pool, flooder, 2000)  # fresh, due, and older than anyone else's
    for i, user in enumerate(others):
        await add_order(pool, user, f"5{i:010d}")
    claimed = (await queue.claim(pool, limit=6, lease=30)).orders
    # Every user's first order, the flooder's included, before anyone's second.
    assert sorted(o.number for o in claimed if not o.number.startswith("9")) == [
        f"5{i:010d}" for i in range(5)
    ]
    assert sum(1 for o in claimed if o.number.startswith("9")) == 1


async def test_two_users_with_many_due_orders_share_each_claim_evenly(pool: asyncpg.Pool) -> None:
    a, b = await make_user(pool, "a"), await make_user(pool, "b")
    await flood(pool, a, 1000, prefix="1")
    await flood(pool, b, 1000, prefix="2")
    for _ in range(5):
        claimed = (await queue.claim(pool, limit=10, lease=30)).orders
        assert sorted(o.number[0] for o in claimed) == ["1"] * 5 + ["2"] * 5


async def test_a_lone_users_claim_takes_their_longest_due_first_past_orders_held_elsewhere(
    pool: asyncpg.Pool,
) -> None:
    user = await make_user(pool)
    await flood(pool, user, 500)  # the only user with due orders: one lane, one user
    due = [
        r["id"] for r in await pool.fetch("SELECT id FROM orders ORDER BY next_attempt_at LIMIT 20")
    ]
    async with pool.acquire() as holder, holder.transaction():
        await holder.fetch("SELECT 1 FROM orders WHERE id = ANY($1) FOR UPDATE", due[:3])
        claimed = (await queue.claim(pool, limit=5, lease=30)).orders
    assert sorted(o.id for o in claimed) == sorted(due[3:8])
    claimed = (await queue.claim(pool, limit=5, lease=30)).orders
    assert sorted(o.id for o in claimed) == sorted(due[:3] + due[8:10])


async def test_every_due_order_is_claimed_in_the_end(pool: asyncpg.Pool) -> None:
    users = [await make_user(pool, f"u{i}") for i in range(30)]
    for i, user in enumerate(users):
        await flood(pool, user, 10 + i, attempts=i % 12, prefix=f"{i + 10}")
    total = sum(10 + i for i in range(30))
    seen: set[int] = set()
    for _ in range(100):
        claimed = (await queue.claim(pool, limit=16, lease=300)).orders
        if not claimed:
            break
        seen.update(o.id for o in claimed)
    assert len(seen) == total


async def test_paced_at_10_per_second_a_newcomer_is_asked_within_a_few_calls_of_a_flood(
    pool: asyncpg.Pool, database_uri: str, aiohttp_server: object
) -> None:
    """The issue's scenario: 10 requests/s and one user's 2,000 unknown orders."""
    hostile = HostileAccrual()  # 204 for everything: the flood is never known
    known = "79927398713"
    hostile.script[known] = "processed:7"
    server = await aiohttp_server(hostile.app())  # type: ignore[operator]
    flooder, newcomer = await make_user(pool, "flooder"), await make_user(pool, "newcomer")
    await flood(pool, flooder, 1000)  # fresh
    await flood(pool, flooder, 1000, attempts=9, prefix="8")  # long unknown
    # The fleet has learned a limit of 600 requests per minute (10 per second).
    await pool.execute(
        "UPDATE accrual_gate SET rate_per_minute = 600, rate_until = now() + interval '1 hour'"
    )
    async with running_worker(
        pool, database_uri, str(server.make_url("")), backoff=Backoff(first=0.5, cap=60)
    ) as harness:

        async def busy() -> bool:
            return sum(hostile.asked.values()) >= 20

        await eventually(busy, within=15)
        assert harness.gate.rate_per_minute == 600
        before = len(hostile.sequence)
        await add_order(pool, newcomer, known)

        async def processed() -> bool:
            return (
                await pool.fetchval("SELECT status FROM orders WHERE number = $1", known)
                == "PROCESSED"
            )

        await eventually(processed, within=15)
    # At most the process's paced buffer (one second of slots) and a claim's
    # worth went first: the newcomer's order took its turn at once. (Counted to
    # its own call, not to when the test saw it PROCESSED: calls made while its
    # answer was written back and polled for are no part of its wait.)
    calls_before_it = hostile.sequence.index(known, before) - before
    assert calls_before_it <= 15, calls_before_it
    assert hostile.asked[known] == 1
