"""pgqueuer processing no-op jobs: the queue anchor (runs in its own virtualenv).

``python anchor_pgq.py DSN JOBS BATCH``: installs pgqueuer's schema, enqueues
JOBS jobs, drains them with a no-op entrypoint and prints
``ANCHOR {"jobs": n, "seconds": s}``. Imports nothing of ours. Seconds are on
the database's clock: from just before the manager starts to the start of the
statement that logged the last job done (as for our loop).
"""

import json
import sys
from datetime import timedelta

import asyncpg
import uvloop
from pgqueuer import AsyncpgDriver, Queries, QueueManager  # type: ignore[import-not-found]
from pgqueuer.models import Job  # type: ignore[import-not-found]
from pgqueuer.types import QueueExecutionMode  # type: ignore[import-not-found]

_ENQUEUE_CHUNK = 1000
_RESULT = """SELECT count(*), extract(epoch FROM max(created) - $1)::float8
             FROM pgqueuer_log WHERE status = 'successful'"""


async def main(dsn: str, jobs: int, batch: int) -> None:
    conn = await asyncpg.connect(dsn)
    queries = Queries(AsyncpgDriver(conn))
    await queries.install()
    for start in range(0, jobs, _ENQUEUE_CHUNK):
        count = min(_ENQUEUE_CHUNK, jobs - start)
        await queries.enqueue(["noop"] * count, [None] * count, [0] * count)
    manager = QueueManager(queries)

    @manager.entrypoint("noop")  # type: ignore[untyped-decorator]
    async def noop(job: Job) -> None:
        pass

    started = await conn.fetchval("SELECT clock_timestamp()")
    await manager.run(
        batch_size=batch, mode=QueueExecutionMode.drain, dequeue_timeout=timedelta(seconds=0.1)
    )
    row = await conn.fetchrow(_RESULT, started)
    assert row is not None
    await conn.close()
    print("ANCHOR " + json.dumps({"jobs": row[0], "seconds": row[1]}))


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
