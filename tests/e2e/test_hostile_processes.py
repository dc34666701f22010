"""Real worker processes behind a hostile accrual front: bombs cannot blow up their memory.

The simulator, the API, two workers and tests/hostile_accrual.py in front of
the simulator run as real processes. Compression bombs, huge, deeply nested
and dripping answers are asked about again and again; the workers keep their
memory, keep running, credit nothing for them, and still process the orders
the simulator answers honestly.
"""

import signal
from pathlib import Path

import asyncpg
import pytest

from shared.luhn import with_check_digit
from tests.helpers import eventually
from tests.system import SystemFactory

pytestmark = pytest.mark.e2e

HOSTILE = (
    "gzip_bomb",
    "deflate_bomb",
    "huge",
    "huge_chunked",
    "deep",
    "drip",
    "lie_order",
    "redirect",
    "huge_header",
)
# A worker peaks near 55 MB here; one inflated bomb alone would add 50 MB.
PEAK_RSS_LIMIT_MB = 90


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


async def test_hostile_answers_leave_worker_processes_small_alive_and_honest(
    start_system: SystemFactory, pool: asyncpg.Pool
) -> None:
    system = await start_system(
        hostile_front=True,
        workers=2,
        worker_env={
            "WORKER_BACKOFF_FIRST": "0.1",
            "WORKER_BACKOFF_MAX": "0.3",
            "ACCRUAL_TIMEOUT": "1",
            "ACCRUAL_RETRIES": "1",
        },
    )
    await system.sim_rule("Bork", "10", "%")
    token = await system.register("hostile-victim")
    hostile = {f"{4_000_000_000 + i}": behaviour for i, behaviour in enumerate(HOSTILE)}
    honest = [with_check_digit(f"{500_000_000 + i}") for i in range(10)]
    await system.hostile_script(hostile)
    for number in honest:
        assert await system.sim_order(number, [("Чайник Bork", "100")]) == 202
    user = await pool.fetchval("SELECT id FROM users WHERE login = 'hostile-victim'")
    await pool.execute(
        "INSERT INTO orders (number, user_id) SELECT unnest($1::text[]), $2",
        [*hostile, *honest],
        user,
    )

    async def each_hostile_asked_five_times() -> bool:
        asked = (await system.hostile_requests())["asked"]
        return all(asked.get(number, 0) >= 5 for number in hostile)

    await eventually(
        each_hostile_asked_five_times,
        within=90,
        what="hostile orders re-asked",
        context=system.logs_tail,
    )

    async def honest_processed() -> bool:
        return await pool.fetchval(
            "SELECT count(*) FROM orders WHERE status = 'PROCESSED' AND number = ANY($1::text[])",
            honest,
        ) == len(honest)

    await eventually(honest_processed, within=30, what="honest orders processed")
    for worker in system.workers:
        assert worker.running, worker.log()[-2000:]
        assert worker.process is not None
        assert peak_rss_mb(worker.process.pid) < PEAK_RSS_LIMIT_MB, worker.name
    rows = await pool.fetch(
        "SELECT status, accrual FROM orders WHERE number = ANY($1::text[])", list(hostile)
    )
    assert {(r["status"], r["accrual"]) for r in rows} == {("NEW", None)}
    assert await pool.fetchval("SELECT count(*) FROM ledger") == len(honest)
    assert await system.get(token, "/api/user/balance") == (200, {"current": 100, "withdrawn": 0})
    assert (await system.hostile_requests())["trap_hits"] == 0
    for worker in system.workers:
        assert worker.stop(signal.SIGTERM) == 0
