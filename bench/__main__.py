"""``python -m bench [--smoke] [--only GROUP,...]``: run the figures, print one markdown table.

The full run also rewrites the generated part of bench/RESULTS.md; the smoke
run (a few seconds per figure, so the harness cannot rot) writes
bench/out/smoke.md instead, and a run of some groups only (``--only anchor``,
to compare one change with its baseline quickly) bench/out/only.md. Exit
status 1 when any figure could not be trusted (an unexpected status, a
socket error, orders left unprocessed); a missed target is reported, not fatal."""

import argparse
import asyncio
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from bench import anchor, fairness_bench, http_bench, overload_bench, pgbench, worker_bench, wrk
from bench.context import Ctx
from bench.plan import FULL, SMOKE, Plan
from bench.report import Row, publish
from bench.stack import Stack
from shared.logs import configure
from shared.settings import ApiSettings

HERE = Path(__file__).parent
RSS_LIMIT_MB = 100.0


def _memory_rows(ctx: Ctx) -> list[Row]:
    rows = []
    for role, what in (("api", "API"), ("worker", "worker")):
        mib = ctx.peak_rss.get(role)
        if mib is None:
            continue
        mb = mib * 1024 * 1024 / 1e6
        rows.append(
            Row(
                f"peak RSS of one {what} process under the load above (VmHWM)",
                f"{mb:.0f} MB",
                target=f"≤ {RSS_LIMIT_MB:.0f} MB",
                passed=mb <= RSS_LIMIT_MB,
            )
        )
    return rows


def _machine(stack: Stack, wrk_bin: str) -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.machine(),
    )
    pg = subprocess.run(
        [str(stack.pg.bindir / "postgres"), "--version"], capture_output=True, text=True
    ).stdout.strip()
    wrk_version = subprocess.run(
        [wrk_bin, "-v"], capture_output=True, text=True
    ).stdout.splitlines()[0:1]
    return (
        f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, {pg}, "
        f"{' '.join(wrk_version).split(' Copyright')[0]}"
    )


# The figures by group, in the order of a full run; "worker-throughput" is the
# first two rows of "worker" alone (a full run does not repeat them).
GROUPS: dict[str, Callable[[Ctx], Awaitable[list[Row]]]] = {
    "http": http_bench.run,
    "overload": overload_bench.run,
    "worker": worker_bench.run,
    "worker-throughput": worker_bench.run_throughput,
    "fairness": fairness_bench.run,
    "anchor": anchor.run,
}
EVERY = ("http", "overload", "worker", "fairness", "anchor")


async def _run(ctx: Ctx, groups: Sequence[str]) -> list[Row]:
    rows = []
    for group in groups:
        rows += await GROUPS[group](ctx)
    return rows + _memory_rows(ctx)


def _groups(text: str) -> list[str]:
    groups = [g.strip() for g in text.split(",") if g.strip()]
    unknown = sorted(set(groups) - GROUPS.keys())
    if unknown or not groups:
        raise argparse.ArgumentTypeError(
            f"unknown group(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(GROUPS)}"
        )
    return groups


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds through the cleanup below


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="every figure for a few seconds (checks the harness, not speed)",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help="markdown file to write (default bench/RESULTS.md, "
        "or bench/out/smoke.md with --smoke, bench/out/only.md with --only)",
    )
    parser.add_argument(
        "--only",
        type=_groups,
        default=None,
        metavar="GROUP,...",
        help=f"run these groups of figures only ({', '.join(GROUPS)}); "
        "writes bench/out/only.md unless --results says otherwise",
    )
    args = parser.parse_args(argv)
    plan: Plan = SMOKE if args.smoke else FULL
    partial = args.smoke or args.only is not None
    results = args.results or (
        HERE / "out" / ("smoke.md" if args.smoke else "only.md") if partial else HERE / "RESULTS.md"
    )
    signal.signal(signal.SIGTERM, _on_sigterm)
    configure("warning", "console")  # migrations run in this process too

    wrk_bin = wrk.ensure_wrk()
    started = time.monotonic()
    stack = Stack(HERE / "out" / "logs")
    try:
        stack.start_postgres()
        work = stack.tmp / "work"
        work.mkdir()
        ctx = Ctx(stack, plan, wrk_bin, pgbench.pgbench_binary(stack.pg.bindir), work)
        machine = _machine(stack, wrk_bin)
        rows = asyncio.run(_run(ctx, args.only or EVERY))
    finally:
        stack.close()
    elapsed = time.monotonic() - started

    command = "make bench-smoke" if args.smoke else "make bench"
    flags = (" --smoke" if args.smoke else "") + (
        f" --only {','.join(args.only)}" if args.only else ""
    )
    how = f"`python -m bench{flags}`"
    if not args.only:
        how = f"`{command}` ({how})"
    header = (
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC with {how}, {plan.name} plan, "
        f"{elapsed:.0f} s.\n\n"
        f"Machine: {machine}. Load generators (wrk -t1 -c{plan.connections}, pgbench -j1 "
        f"-c{ApiSettings.db_pool_max} = the API's pool) share these cores with the servers "
        "and PostgreSQL; PostgreSQL runs with fsync, synchronous_commit and "
        "full_page_writes off (`LocalPostgres(fast=True)`)."
    )
    return publish(header, rows, results, whole_file=partial)


if __name__ == "__main__":
    sys.exit(main())
