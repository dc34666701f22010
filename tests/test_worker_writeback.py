"""The write-back (worker/writeback.py) against a real PostgreSQL: when it writes, and what."""

from collections.abc import Sequence
from decimal import Decimal

import asyncpg

from db import queue
from shared.money import MAX_AMOUNT
from tests.helpers import eventually, make_user
from worker.stats import WorkerStats
from worker.tunings import Tunings
from worker.writeback import Answered, WriteBack

# Long enough that nothing in these tests is written because time passed,
# unless the test says so.
NEVER = 3600.0


class Batches:
    """Every batch the write-back reports done, and the rows each one changed."""

    def __init__(self) -> None:
        self.done: list[tuple[list[int], list[str]]] = []

    def __call__(self, batch: Sequence[Answered], applied: list[queue.Applied]) -> None:
        self.done.append(([r.id for _, r in batch], [row.number for row in applied]))

    @property
    def sizes(self) -> list[int]:
        return [len(ids) for ids, _ in self.done]


async def claimed(pool: asyncpg.Pool, count: int, login: str = "alice") -> list[queue.ClaimedOrder]:
    user = await make_user(pool, login)
    await pool.execute(
        "INSERT INTO orders (number, user_id) SELECT $1 || g, $2 FROM generate_series(1, $3) g",
        login,
        user,
        count,
    )
    result = await queue.claim(pool, limit=count, lease=30)
    assert len(result.orders) == count
    return sorted(result.orders, key=lambda o: o.id)


def processed(order: queue.ClaimedOrder, accrual: str = "1.50") -> queue.Result:
    return queue.Result(order.id, order.attempts, "PROCESSED", Decimal(accrual), 0.0)


async def processed_count(pool: asyncpg.Pool) -> int:
    count: int = await pool.fetchval("SELECT count(*) FROM orders WHERE status = 'PROCESSED'")
    return count


async def until_processed(pool: asyncpg.Pool, count: int) -> None:
    async def done() -> bool:
        return await processed_count(pool) == count

    await eventually(done, within=5)


async def test_answers_wait_for_a_full_batch_which_is_written_in_one_statement(
    pool: asyncpg.Pool,
) -> None:
    orders = await claimed(pool, 5)
    batches = Batches()
    tunings = Tunings(write_wait=NEVER, write_batch_max=3)
    async with WriteBack(pool, WorkerStats(), on_written=batches, tunings=tunings) as answers:
        for order in orders[:2]:
            answers.add(order, processed(order))
        assert answers.waiting == 2
        answers.add(orders[2], processed(orders[2]))
        await until_processed(pool, 3)
        assert batches.sizes == [3]
        answers.add(orders[3], processed(orders[3]))
        assert answers.waiting == 1
    assert batches.sizes == [3, 1]


async def test_an_answer_alone_is_written_once_it_has_waited_its_time(pool: asyncpg.Pool) -> None:
    [order] = await claimed(pool, 1)
    batches = Batches()
    tunings = Tunings(write_wait=0.05, write_batch_max=100)
    async with WriteBack(pool, WorkerStats(), on_written=batches, tunings=tunings) as answers:
        answers.add(order, processed(order))
        await until_processed(pool, 1)
        assert batches.done == [([order.id], [order.number])]


async def test_every_answer_still_waiting_is_written_on_the_way_out(pool: asyncpg.Pool) -> None:
    orders = await claimed(pool, 4)
    batches = Batches()
    tunings = Tunings(write_wait=NEVER, write_batch_max=100)
    async with WriteBack(pool, WorkerStats(), on_written=batches, tunings=tunings) as answers:
        for order in orders:
            answers.add(order, processed(order))
        assert await processed_count(pool) == 0
    assert await processed_count(pool) == 4
    assert batches.sizes == [4]
    assert await pool.fetchval("SELECT current FROM balances") == Decimal("6.00")


async def test_one_unappliable_answer_is_set_aside_and_the_rest_of_its_batch_written(
    pool: asyncpg.Pool,
) -> None:
    rich = await claimed(pool, 2, "rich")
    others = await claimed(pool, 5, "other")
    stats = WorkerStats()
    batches = Batches()
    tunings = Tunings(write_wait=NEVER)
    async with WriteBack(pool, stats, on_written=batches, tunings=tunings) as answers:
        # Two maximal accruals overflow the rich user's balance: one cannot be applied.
        for order in rich:
            answers.add(order, processed(order, str(MAX_AMOUNT)))
        for order in others:
            answers.add(order, processed(order, "1.00"))
    rows = await pool.fetch("SELECT number, status, problem FROM orders WHERE status = 'NEW'")
    assert len(rows) == 1 and rows[0]["number"] in ("rich1", "rich2")
    assert rows[0]["problem"].startswith("22003")
    assert stats.set_aside_count == 1
    balances = await pool.fetch(
        "SELECT u.login, b.current FROM balances b JOIN users u ON u.id = b.user_id"
        " ORDER BY u.login"
    )
    assert [tuple(b) for b in balances] == [("other", Decimal("5.00")), ("rich", MAX_AMOUNT)]
    # One batch, reported once, with every order in it and the six it changed.
    [(ids, changed)] = batches.done
    assert sorted(ids) == sorted(o.id for o in rich + others) and len(changed) == 6
