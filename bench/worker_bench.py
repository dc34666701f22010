"""Worker figures: throughput, upload -> PROCESSED latency, and rate-limit utilisation.

Every figure has its own database; the simulator answers PROCESSED at once
(``--delay 0``) for orders it was seeded with. Times come from the database:
an order's ``uploaded_at`` and its accrual ledger entry's ``created_at`` are
both the start of the single statement that wrote them.
"""

import asyncio
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from bench import seed
from bench.context import Ctx
from bench.ordernums import numbers
from bench.procs import Proc
from bench.report import Row, ms, pct, rate
from bench.stack import url

RULE = {"match": "Bork", "reward": 10, "reward_type": "%"}
GOODS = [{"description": "Чайник Bork", "price": 7000}]

_LEFT = "SELECT count(*) FROM gophermart.orders WHERE status IN ('NEW', 'PROCESSING')"
_DONE = """
SELECT count(*) FILTER (WHERE o.status = 'PROCESSED') AS processed,
       extract(epoch FROM max(l.created_at) - min(o.uploaded_at))::float8 AS seconds
FROM gophermart.orders o
LEFT JOIN gophermart.ledger l ON l.kind = 'accrual' AND l.order_number = o.number
"""
_LATENCIES = """
SELECT extract(epoch FROM l.created_at - o.uploaded_at)::float8 AS seconds
FROM gophermart.orders o
JOIN gophermart.ledger l ON l.kind = 'accrual' AND l.order_number = o.number
"""


def seed_file(path: Path, *batches: Sequence[str]) -> Path:
    orders = [{"order": n, "goods": GOODS} for batch in batches for n in batch]
    path.write_text(json.dumps({"goods": [RULE], "orders": orders}, ensure_ascii=False))
    return path


async def wait_listening(dsn: str, count: int, patience: float = 30.0) -> None:
    """Until ``count`` workers listen for new orders on this database."""
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + patience
        while (
            await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND application_name = 'gophermart-worker-listen'"
            )
            < count
        ):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{count} workers not listening after {patience} s")
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


async def wait_final(conn: asyncpg.Connection, patience: float) -> bool:
    deadline = time.monotonic() + patience
    while await conn.fetchval(_LEFT):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _start_workers(ctx: Ctx, name: str, dsn: str, sim: Proc, count: int) -> list[Proc]:
    return [ctx.stack.worker(f"{name}-{i}", dsn, url(sim)) for i in range(count)]


def _stop(ctx: Ctx, procs: list[Proc], role: str) -> None:
    for proc in procs:
        ctx.note_rss(role, proc.peak_rss_mib())
        ctx.stack.stop(proc)


async def run(ctx: Ctx) -> list[Row]:
    plan = ctx.plan
    batches = {
        1: list(numbers("41", plan.worker_orders)),
        2: list(numbers("42", plan.worker_orders)),
    }
    light = list(numbers("43", int(plan.latency_rate * plan.latency_seconds)))
    sim = ctx.stack.simulator(
        "sim",
        "--delay",
        "0",
        "--seed-file",
        str(seed_file(ctx.work_dir / "seed.json", *batches.values(), light)),
    )
    rows = [await _throughput(ctx, sim, procs, batches[procs]) for procs in (1, 2)]
    rows.append(await _latency(ctx, sim, light))
    ctx.stack.stop(sim)
    rows.extend(await _rate_limit(ctx))
    return rows


async def run_throughput(ctx: Ctx) -> list[Row]:
    """The throughput figures alone (``python -m bench --only worker-throughput``)."""
    batches = {
        1: list(numbers("41", ctx.plan.worker_orders)),
        2: list(numbers("42", ctx.plan.worker_orders)),
    }
    sim = ctx.stack.simulator(
        "sim-throughput",
        "--delay",
        "0",
        "--seed-file",
        str(seed_file(ctx.work_dir / "seed-throughput.json", *batches.values())),
    )
    rows = [await _throughput(ctx, sim, procs, batches[procs]) for procs in (1, 2)]
    ctx.stack.stop(sim)
    return rows


async def _throughput(ctx: Ctx, sim: Proc, procs: int, batch: list[str]) -> Row:
    dsn = await ctx.stack.database(f"bench_worker_{procs}")
    workers = _start_workers(ctx, f"worker-x{procs}", dsn, sim, procs)
    await wait_listening(dsn, procs)
    conn = await asyncpg.connect(dsn)
    try:
        user = await seed.make_user(conn, "worker-user")
        await seed.add_orders(conn, user, batch)
        finished = await wait_final(conn, patience=max(60.0, len(batch) / 100))
        done = await conn.fetchrow(_DONE)
        assert done is not None
    finally:
        await conn.close()
    _stop(ctx, workers, "worker")
    per_second = done["processed"] / done["seconds"] if done["seconds"] else 0.0
    problem = None
    if not finished or done["processed"] != len(batch):
        problem = f"only {done['processed']} of {len(batch)} orders PROCESSED"
    target = "≥ 1,000 orders/s" if procs == 2 else "—"
    return Row(
        f"worker throughput, {procs} process{'es' if procs > 1 else ''} "
        f"({len(batch):,} orders NEW -> PROCESSED, simulator --delay 0)",
        f"{rate(per_second, 'orders/s')} ({done['seconds']:.2f} s)",
        target=target,
        passed=per_second >= 1000 if procs == 2 else None,
        problem=problem,
    )


async def _latency(ctx: Ctx, sim: Proc, batch: list[str]) -> Row:
    plan = ctx.plan
    dsn = await ctx.stack.database("bench_latency")
    api = ctx.stack.api("api-latency", dsn)
    workers = _start_workers(ctx, "worker-latency", dsn, sim, 2)
    await wait_listening(dsn, 2)
    [user] = await seed.register(url(api), ["latency-user"])
    loop = asyncio.get_running_loop()
    statuses: list[int] = []
    async with aiohttp.ClientSession(headers={"Authorization": user.token}) as session:

        async def upload(number: str) -> None:
            async with session.post(
                url(api) + "/api/user/orders", data=number, headers={"Content-Type": "text/plain"}
            ) as resp:
                statuses.append(resp.status)

        start = loop.time()
        tasks = []
        for i, number in enumerate(batch):  # open loop: a fixed schedule, not a closed one
            await asyncio.sleep(max(0.0, start + i / plan.latency_rate - loop.time()))
            tasks.append(asyncio.create_task(upload(number)))
        await asyncio.gather(*tasks)
    conn = await asyncpg.connect(dsn)
    try:
        finished = await wait_final(conn, patience=20.0)
        latencies = [r["seconds"] * 1000 for r in await conn.fetch(_LATENCIES)]
    finally:
        await conn.close()
    ctx.note_rss("api", api.peak_rss_mib())
    ctx.stack.stop(api)
    _stop(ctx, workers, "worker")
    p50, p99 = quantile(latencies, 0.50), quantile(latencies, 0.99)
    problems = []
    if any(s != 202 for s in statuses):
        problems.append(f"uploads answered {sorted(set(statuses))}")
    if not finished or len(latencies) != len(batch):
        problems.append(f"{len(latencies)} of {len(batch)} orders PROCESSED")
    return Row(
        f"upload (API) -> PROCESSED latency at {plan.latency_rate:.0f} uploads/s for "
        f"{plan.latency_seconds:.0f} s (2 workers)",
        f"p50 {ms(p50)}, p99 {ms(p99)}, max {ms(max(latencies, default=0))}",
        target="p50 ≤ 50 ms, p99 ≤ 250 ms",
        passed=p50 <= 50 and p99 <= 250,
        problem="; ".join(problems) or None,
    )


async def _rate_limit(ctx: Ctx) -> list[Row]:
    plan = ctx.plan
    allowed_rate = plan.rate_limit / plan.rate_window
    batch = list(numbers("44", int(allowed_rate * plan.rate_seconds * 2) + plan.rate_limit * 2))
    sim = ctx.stack.simulator(
        "sim-limited",
        "--delay",
        "0",
        "--rate-limit",
        str(plan.rate_limit),
        "--rate-window",
        str(plan.rate_window),
        "--seed-file",
        str(seed_file(ctx.work_dir / "seed-limited.json", batch)),
    )
    dsn = await ctx.stack.database("bench_rate_limit")
    workers = _start_workers(ctx, "worker-limited", dsn, sim, 2)
    await wait_listening(dsn, 2)
    async with aiohttp.ClientSession() as session:
        async with session.post(url(sim) + "/api/stats/reset") as resp:
            resp.raise_for_status()
        conn = await asyncpg.connect(dsn)
        try:
            user = await seed.make_user(conn, "limited-user")
            started = time.monotonic()
            await seed.add_orders(conn, user, batch)
        finally:
            await conn.close()
        await asyncio.sleep(plan.rate_seconds)
        async with session.get(url(sim) + "/api/stats") as resp:
            stats: dict[str, Any] = await resp.json()
        elapsed = time.monotonic() - started
    _stop(ctx, workers, "worker")
    ctx.stack.stop(sim)
    admitted = stats["by_status"].get("200", 0) + stats["by_status"].get("204", 0)
    share = admitted / (allowed_rate * elapsed)
    pauses, refused = stats["pauses"], stats["too_many_requests"]
    in_flight, during = stats["in_flight_at_pause"], stats["requests_during_pause"]
    limit = f"{plan.rate_limit} per {plan.rate_window:g} s"
    return [
        Row(
            f"accrual rate-limit utilisation ({limit}, 2 workers, {plan.rate_seconds:g} s, "
            "limit unknown at start)",
            f"{rate(admitted / elapsed, 'req/s')} answered",
            baseline=f"allowed {rate(allowed_rate, 'req/s')}",
            ratio=f"{pct(admitted, allowed_rate * elapsed)} of allowed",
            target="≥ 95 % of allowed",
            passed=share >= 0.95,
        ),
        # Requests already on the wire when the first 429 came back cannot be recalled:
        # the target counts the ones sent after it (none may be) plus the announcing one.
        Row(
            f"429s and calls during an announced pause ({limit}, 2 workers)",
            f"{refused} x 429 over {pauses} pause(s): {in_flight} were already in flight "
            f"when the pause began; {during} requests during a pause",
            ratio=f"{(refused - in_flight) / pauses if pauses else 0:.1f} 429s per pause "
            "not counting those in flight",
            target="≤ 1 429 per pause (besides those in flight); 0 during a pause",
            passed=refused - in_flight <= pauses and during == 0,
        ),
    ]
