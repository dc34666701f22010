"""The worker's SQL (db/queue.py, db/gate.py) on a real PostgreSQL: claims, answers, the gate."""

import asyncio
from decimal import Decimal

import asyncpg

from db import gate as db_gate
from db import queue
from tests.helpers import add_order, make_user, order_row

NUMBERS = [
    f"{n}"
    for n in (
        "79927398713",
        "4561261212345467",
        "12345678903",
        "9278923470",
        "346436439",
        "2377225624",
        "49927398716",
        "1234567812345670",
    )
]


def result(
    order: queue.ClaimedOrder,
    status: str | None,
    accrual: str | None = None,
    delay: float = 0.0,
    refund: bool = False,
) -> queue.Result:
    return queue.Result(
        order.id,
        order.attempts,
        status,
        Decimal(accrual) if accrual is not None else None,
        delay,
        refund,
    )


async def test_claim_leases_due_orders_and_counts_the_attempt(pool: asyncpg.Pool) -> None:
    user = await make_user(pool)
    await add_order(pool, user, NUMBERS[0])
    claimed = await queue.claim(pool, limit=10, lease=30)
    assert [(o.number, o.attempts, o.status) for o in claimed.orders] == [(NUMBERS[0], 1, "NEW")]
    row = await order_row(pool, NUMBERS[0])
    assert 29 < row["due_in"] <= 30
    again = await queue.claim(pool, limit=10, lease=30)
    assert again.orders == []
    assert again.next_due_in is not None and 29 < again.next_due_in <= 30


async def test_claim_skips_final_and_future_orders(pool: asyncpg.Pool) -> None:
    user = await make_user(pool)
    for number in NUMBERS[:4]:
        await add_order(pool, user, number)
    await pool.execute("UPDATE orders SET status = 'INVALID' WHERE number = $1", NUMBERS[0])
    await pool.execute(
        "UPDATE orders SET status = 'PROCESSED', accrual = 1 WHERE number = $1", NUMBERS[1]
    )
    await pool.execute(
        "UPDATE orders SET next_attempt_at = now() + interval '1 hour' WHERE number = $1",
        NUMBERS[2],
    )
    claimed = await queue.claim(pool, limit=10, lease=30)
    assert [o.number for o in claimed.orders] == [NUMBERS[3]]


async def test_concurrent_claimers_never_get_the_same_order(pool: asyncpg.Pool) -> None:
    user = await make_user(pool)
    for i in range(200):
        await add_order(pool, user, f"{i:05d}")
    results = await asyncio.gather(*(queue.claim(pool, limit=7, lease=30) for _ in range(40)))
    ids = [o.id for r in results for o in r.orders]
    assert len(ids) == len(set(ids)) == 200


async def test_skip_locked_passes_over_an_order_another_claimer_holds(pool: asyncpg.Pool) -> None:
    user = await make_user(pool)
    first = await add_order(pool, user, NUMBERS[0])
    await add_order(pool, user, NUMBERS[1])
    async with pool.acquire() as holder, holder.transaction():
        await holder.execute("SELECT 1 FROM orders WHERE id = $1 FOR UPDATE", first)
        claimed = await asyncio.wait_for(queue.claim(pool, limit=10, lease=30), 2)
    assert [o.number for o in claimed.orders] == [NUMBERS[1]]


async def test_an_abandoned_order_is_claimed_again_after_its_lease(pool: asyncpg.Pool) -> None:
    user = await make_user(pool)
    await add_order(pool, user, NUMBERS[0])
    first = await queue.claim(pool, limit=10, lease=0.3)
    assert len(first.orders) == 1
    assert (await queue.claim(pool, limit=10, lease=0.3)).orders == []
    await asyncio.sleep(0.4)  # the claimer "died": nobody writes back
    second = await queue.claim(pool, limit=10, lease=30)
    assert [(o.number, o.attempts) for o in second.orders] == [(NUMBERS[0], 2)]


async def test_processed_is_credited_once_with_status_ledger_and_balance(
    pool: asyncpg.Pool,
) -> None:
    user = await make_user(pool)
    await add_order(pool, user, NUMBERS[0])
    (order,) = (await queue.claim(pool, limit=1, lease=30)).orders
    applied = await queue.apply_results(pool, [result(order, "PROCESSED", "729.98")])
    assert [(a.number, a.status, a.accrual) for a in applied] == [
        (NUMBERS[0], "PROCESSED", Decimal("729.98"))
    ]
    # The same answer again (a second worker, a retried batch) changes nothing.
    assert await queue.apply_results(pool, [result(order, "PROCESSED", "729.98")]) == []
    assert await pool.fetchval("SELECT current FROM balances WHERE user_id = $1", user) == Decimal(
        "729.98"
    )
    ledger = await pool.fetch("SELECT kind, order_number, amount FROM ledger")
    assert [tuple(r) for r in ledger] == [("accrual", NUMBERS[0], Decimal("729.98"))]


async def test_concurrent_applies_of_one_answer_credit_once(pool: asyncpg.Pool) -> None:
    user = await make_user(pool)
    await add_order(pool, user, NUMBERS[0])
    (order,) = (await queue.claim(pool, limit=1, lease=30)).orders
    outcomes = await asyncio.gather(
        *(queue.apply_results(pool, [result(order, "PROCESSED", "10")]) for _ in range(10))
    )
    assert sum(len(o) for o in outcomes) == 1
    assert await pool.fetchval("SELECT current FROM balances") == Decimal("10.00")
    assert await pool.fetchval("SELECT count(*) FROM ledger") == 1


async def test_a_final_order_is_never_changed_again(pool: asyncpg.Pool) -> None:
    user = await make_user(pool)
    await add_order(pool, user, NUMBERS[0])
    await add_order(pool, user, NUMBERS[1])
    orders = (await queue.claim(pool, limit=2, lease=30)).orders
    by_number = {o.number: o for o in orders}
    await queue.apply_results(
        pool,
        [result(by_number[NUMBERS[0]], "INVALID"), result(by_number[NUMBERS[1]], "PROCESSED", "5")],
    )
    late = [
        result(by_number[NUMBERS[0]], "PROCESSED", "100"),
        result(by_number[NUMBERS[1]], "PROCESSING", delay=1),
        result(by_number[NUMBERS[1]], None, delay=1, refund=True),
    ]
    for item in late:
        assert await queue.apply_results(pool, [item]) == []
    rows = await pool.fetch("SELECT number, status, accrual FROM orders ORDER BY number")
    assert {r["number"]: (r["status"], r["accrual"]) for r in rows} == {
        NUMBERS[0]: ("INVALID", None),
        NUMBERS[1]: ("PROCESSED", Decimal("5.00")),
    }
    assert await pool.fetchval("SELECT current FROM balances") == Decimal("5.00")


async def test_a_batch_credits_each_user_the_sum_of_their_orders(pool: asyncpg.Pool) -> None:
    alice, bob = await make_user(pool, "alice"), await make_user(pool, "bob")
    for i, number in enumerate(NUMBERS[:6]):
        await add_order(pool, alice if i % 2 else bob, number)
    orders = (await queue.claim(pool, limit=10, lease=30)).orders
    applied = await queue.apply_results(
        pool, [result(o, "PROCESSED", f"{i}.25") for i, o in enumerate(orders)]
    )
    assert len(applied) == 6
    balances = dict(
        await pool.fetch(
            "SELECT u.login, b.current FROM balances b JOIN users u ON u.id = b.user_id"
        )
    )
    ledger = dict(
        await pool.fetch(
            "SELECT u.login, sum(l.amount) FROM ledger l"
            " JOIN users u ON u.id = l.user_id GROUP BY u.login"
        )
    )
    assert balances == ledger
    assert sum(balances.values()) == Decimal("16.50")


async def test_zero_accrual_is_processed_and_recorded(pool: asyncpg.Pool) -> None:
    user = await make_user(pool)
    await add_order(pool, user, NUMBERS[0])
    (order,) = (await queue.claim(pool, limit=1, lease=30)).orders
    await queue.apply_results(pool, [result(order, "PROCESSED", "0")])
    assert tuple(await pool.fetchrow("SELECT status, accrual FROM orders")) == (
        "PROCESSED",
        Decimal("0.00"),
    )
    assert await pool.fetchval("SELECT current FROM balances") == Decimal("0.00")


async def test_non_final_answers_reschedule_and_a_refund_gives_the_attempt_back(
    pool: asyncpg.Pool,
) -> None:
    user = await make_user(pool)
    await add_order(pool, user, NUMBERS[0])
    await add_order(pool, user, NUMBERS[1])
    a, b = (await queue.claim(pool, limit=2, lease=30)).orders
    await queue.apply_results(
        pool, [result(a, "PROCESSING", delay=0.75), result(b, None, delay=5, refund=True)]
    )
    row_a = await order_row(pool, a.number)
    row_b = await order_row(pool, b.number)
    assert (row_a["status"], row_a["attempts"]) == ("PROCESSING", 1)
    assert 0.5 < row_a["due_in"] <= 0.75
    assert (row_b["status"], row_b["attempts"]) == ("NEW", 0)
    assert 4.5 < row_b["due_in"] <= 5


async def test_a_stale_non_final_answer_does_not_override_a_newer_lease(pool: asyncpg.Pool) -> None:
    user = await make_user(pool)
    await add_order(pool, user, NUMBERS[0])
    (stale,) = (await queue.claim(pool, limit=1, lease=0.01)).orders
    await asyncio.sleep(0.05)
    (fresh,) = (await queue.claim(pool, limit=1, lease=30)).orders
    assert await queue.apply_results(pool, [result(stale, "PROCESSING", delay=0)]) == []
    assert (await order_row(pool, NUMBERS[0]))["due_in"] > 29
    # A final answer is the truth whoever asked: it applies.
    assert len(await queue.apply_results(pool, [result(stale, "INVALID")])) == 1
    assert fresh.attempts == 2


async def test_nothing_is_claimed_while_the_gate_is_paused(pool: asyncpg.Pool) -> None:
    user = await make_user(pool)
    await add_order(pool, user, NUMBERS[0])
    state = await db_gate.record_pause(pool, seconds=0.5, rate_per_minute=120)
    assert 0.4 < state.pause_left <= 0.5 and state.rate_per_minute == 120
    read = await db_gate.read_gate(pool)  # what a starting worker learns
    assert 0 < read.pause_left <= state.pause_left and read.rate_per_minute == 120
    paused = await queue.claim(pool, limit=10, lease=30)
    assert paused.orders == []
    assert 0 < paused.gate.pause_left <= 0.5 and paused.gate.rate_per_minute == 120
    await asyncio.sleep(0.55)
    assert len((await queue.claim(pool, limit=10, lease=30)).orders) == 1


async def test_neither_claim_path_hands_out_an_order_during_a_pause(pool: asyncpg.Pool) -> None:
    # One user's orders take the claim's fast path, two users' the turn-by-turn ranking.
    first, second = await make_user(pool, "first"), await make_user(pool, "second")
    await add_order(pool, first, NUMBERS[0])
    await db_gate.record_pause(pool, seconds=30, rate_per_minute=None)
    assert (await queue.claim(pool, limit=10, lease=30)).orders == []
    await add_order(pool, second, NUMBERS[1])
    assert (await queue.claim(pool, limit=10, lease=30)).orders == []
    await db_gate.reset_gate(pool)
    assert len((await queue.claim(pool, limit=10, lease=30)).orders) == 2


async def test_a_pause_is_never_shortened_and_is_notified(
    pool: asyncpg.Pool, database_uri: str
) -> None:
    listener = await asyncpg.connect(database_uri)
    heard: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener(db_gate.PAUSE_CHANNEL, lambda *args: heard.put_nowait(args[3]))
    try:
        await db_gate.record_pause(pool, seconds=10, rate_per_minute=None)
        shorter = await db_gate.record_pause(pool, seconds=1, rate_per_minute=50)
        assert shorter.pause_left > 9 and shorter.rate_per_minute == 50
        first = db_gate.parse_pause_payload(await asyncio.wait_for(heard.get(), 2))
        second = db_gate.parse_pause_payload(await asyncio.wait_for(heard.get(), 2))
    finally:
        await listener.close()
    assert first is not None and first.rate_per_minute is None and first.pause_left > 9
    assert second is not None and second.rate_per_minute == 50 and second.pause_left > 9


async def test_an_announced_limit_outlives_the_pause_it_came_with(pool: asyncpg.Pool) -> None:
    # A pause of 20 s and a limit believed for 5 s: the limit must still hold
    # when the pause ends, or the fleet leaves the pause in an unpaced burst.
    state = await db_gate.record_pause(pool, seconds=20, rate_per_minute=1, rate_ttl=5)
    assert 19 < state.pause_left <= 20
    assert 24 < state.rate_left <= 25
    # A later 429 without a limit extends a limit still in force to its own pause's end.
    await pool.execute("UPDATE accrual_gate SET rate_until = now() + interval '1 second'")
    state = await db_gate.record_pause(pool, seconds=30, rate_per_minute=None)
    assert state.rate_per_minute == 1 and state.rate_left >= state.pause_left > 29


async def test_slots_are_shared_across_reservations_and_start_after_a_pause(
    pool: asyncpg.Pool,
) -> None:
    first = await db_gate.reserve_slots(pool, count=3, interval=0.5)
    second = await db_gate.reserve_slots(pool, count=2, interval=0.5)
    assert -0.05 < first <= 0.01
    assert 1.4 < second - first < 1.6  # right after the three slots reserved before
    await db_gate.record_pause(pool, seconds=10, rate_per_minute=60)
    assert 9.5 < await db_gate.reserve_slots(pool, count=1, interval=0.5) <= 10
