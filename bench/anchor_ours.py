"""Our claim -> ask -> apply loop with a zero-latency in-process accrual stub.

``python -m bench.anchor_ours DSN JOBS BATCH``: inserts JOBS NEW orders, runs
``worker.loop.Worker`` until every one is PROCESSED (ledger and balance
written, as in production) and prints ``ANCHOR {"jobs": n, "seconds": s}``.
Seconds are on the database's clock: from just before the loop starts to the
start of the statement that wrote the last ledger entry (as for pgqueuer).
"""

import asyncio
import json
import sys
import time
from decimal import Decimal
from typing import cast

import asyncpg
import structlog
import uvloop

from shared.logs import configure
from shared.pg import create_pool
from shared.statuses import OrderStatus
from worker.accrual_client import AccrualClient, Answer, Status
from worker.gate import Gate
from worker.loop import LoopConfig, Worker
from worker.stats import WorkerStats

ANSWER = Status(OrderStatus.PROCESSED, Decimal("1.00"))
_DONE = "SELECT count(*) FROM ledger WHERE kind = 'accrual'"
_RESULT = """SELECT count(*), extract(epoch FROM max(created_at) - $1)::float8
             FROM ledger WHERE kind = 'accrual'"""


class StubClient:
    """Answers PROCESSED at once, without a network round trip."""

    async def ask(
        self, number: str, *, deadline: float, log: structlog.typing.FilteringBoundLogger
    ) -> Answer:
        return ANSWER


async def main(dsn: str, jobs: int, batch: int) -> None:
    conn = await asyncpg.connect(dsn, server_settings={"search_path": "gophermart"})
    try:
        user = await conn.fetchval(
            "INSERT INTO users (login, password_hash) VALUES ('anchor', 'x') RETURNING id"
        )
        await conn.execute("INSERT INTO balances (user_id) VALUES ($1)", user)
        await conn.execute(
            "INSERT INTO orders (number, user_id)"
            " SELECT 'a' || g, $1 FROM generate_series(1, $2) g",
            user,
            jobs,
        )
        pool = await create_pool(dsn)
        stats = WorkerStats()
        worker = Worker(
            pool,
            cast(AccrualClient, StubClient()),
            Gate(pool, stats),
            stats,
            LoopConfig(batch_size=batch),
        )
        started = await conn.fetchval("SELECT clock_timestamp()")
        running = asyncio.create_task(worker.run())
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if await conn.fetchval(_DONE) >= jobs:
                break
            await asyncio.sleep(0.05)
        worker.stop()
        await running
        await pool.close()
        row = await conn.fetchrow(_RESULT, started)
        assert row is not None
    finally:
        await conn.close()
    print("ANCHOR " + json.dumps({"jobs": row[0], "seconds": row[1]}))


if __name__ == "__main__":
    configure("warning", "json")
    uvloop.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
