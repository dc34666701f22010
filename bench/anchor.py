"""Queue anchor: our claim -> ask -> apply loop against pgqueuer's no-op rate, same database.

pgqueuer is not a project dependency: it is installed into its own
virtualenv under bench/out/ the first time the benchmark needs it.
"""

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import asyncpg

from bench.context import Ctx
from bench.report import Row, rate

PGQUEUER = "pgqueuer==1.6.0"
VENV = Path(__file__).parent / "out" / "pgq-venv"
_STAMP = VENV / f".installed-{PGQUEUER}"


def pgq_python() -> Path:
    """The pgqueuer virtualenv's python, created on first use."""
    python = VENV / "bin" / "python"
    if not _STAMP.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                PGQUEUER,
                "asyncpg",
                "uvloop",
            ],
            check=True,
        )
        _STAMP.touch()
    return python


async def _anchor(
    python: str, script: list[str], dsn: str, jobs: int, batch: int
) -> tuple[int, float]:
    proc = await asyncio.create_subprocess_exec(
        python,
        *script,
        dsn,
        str(jobs),
        str(batch),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    line = next((ln for ln in text.splitlines() if ln.startswith("ANCHOR ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"anchor {script} failed ({proc.returncode}): {text[-800:]}")
    data = json.loads(line.removeprefix("ANCHOR "))
    return int(data["jobs"]), float(data["seconds"])


async def run(ctx: Ctx) -> list[Row]:
    plan = ctx.plan
    jobs, batch = plan.anchor_jobs, plan.batch_size
    python = await asyncio.to_thread(pgq_python)
    conn = await asyncpg.connect(ctx.stack.pg.dsn)
    try:
        await conn.execute("CREATE DATABASE bench_pgqueuer")
    finally:
        await conn.close()
    pgq_done, pgq_seconds = await _anchor(
        str(python),
        [str(Path(__file__).parent / "anchor_pgq.py")],
        ctx.stack.pg.dsn_for("bench_pgqueuer"),
        jobs,
        batch,
    )
    ours_dsn = await ctx.stack.database("bench_anchor")
    ours_done, ours_seconds = await _anchor(
        sys.executable, ["-m", "bench.anchor_ours"], ours_dsn, jobs, batch
    )
    pgq_rate, ours_rate = pgq_done / pgq_seconds, ours_done / ours_seconds
    problems = [
        f"{name} finished {done} of {jobs} jobs"
        for name, done in (("pgqueuer", pgq_done), ("ours", ours_done))
        if done != jobs
    ]
    ratio = ours_rate / pgq_rate
    return [
        Row(
            f"queue anchor: our claim -> ask -> apply loop, zero-latency stub, 1 process "
            f"({jobs:,} orders, batch {batch})",
            rate(ours_rate, "orders/s"),
            baseline=f"pgqueuer {PGQUEUER.split('==')[1]} no-op jobs {rate(pgq_rate, 'jobs/s')} "
            f"(1 process, batch {batch})",
            ratio=f"{ratio:.2f}x pgqueuer",
            target="≥ 1.0x pgqueuer",
            passed=ratio >= 1.0,
            problem="; ".join(problems) or None,
        )
    ]
