"""Fairness: another customer's order while one customer floods the queue.

The simulator admits 10 requests per second (``--rate-limit 10 --rate-window
1``) and knows the customer's orders; 2 workers. In the flooded run one user
holds thousands of orders the accrual system does not know (inserted at once,
all fresh and due), which alone ask for far more than 10 requests/s; another
user uploads known orders through the API on a fixed schedule. Latency = the
order's accrual ledger entry ``created_at`` - its ``uploaded_at`` (the
database's clock). The baseline is the same schedule on a fresh database
without the flood, in the same run.
"""

import asyncio
import time
from typing import Any

import aiohttp
import asyncpg

from bench import seed
from bench.context import Ctx
from bench.ordernums import numbers
from bench.procs import Proc
from bench.report import Row, ms
from bench.stack import url
from bench.worker_bench import quantile, seed_file, wait_listening

LIMIT_PER_SECOND = 10
_LATENCIES = """
SELECT extract(epoch FROM l.created_at - o.uploaded_at)::float8 AS seconds
FROM gophermart.orders o
JOIN gophermart.ledger l ON l.kind = 'accrual' AND l.order_number = o.number
WHERE o.number = ANY($1::text[])
"""


async def run(ctx: Ctx) -> list[Row]:
    plan = ctx.plan
    quiet = list(numbers("61", plan.fair_orders))
    flooded = list(numbers("62", plan.fair_orders))
    sim = ctx.stack.simulator(
        "sim-fair",
        "--delay",
        "0",
        "--rate-limit",
        str(LIMIT_PER_SECOND),
        "--rate-window",
        "1",
        "--seed-file",
        str(seed_file(ctx.work_dir / "seed-fair.json", quiet, flooded)),
    )
    try:
        base = _Outcome([], None)
        if plan.fair_baseline:  # (the smoke run skips it: the same code without the flood)
            base, _ = await _scenario(ctx, sim, "bench_fair_quiet", quiet, flood=0)
        loaded, stats = await _scenario(
            ctx, sim, "bench_fair_flood", flooded, flood=plan.fair_flood
        )
    finally:
        ctx.stack.stop(sim)
    problems = [p for p in (base.problem, loaded.problem) if p]
    p50, p99 = quantile(loaded.latencies, 0.5), quantile(loaded.latencies, 0.99)
    b50, b99 = quantile(base.latencies, 0.5), quantile(base.latencies, 0.99)
    return [
        Row(
            f"fairness: another user's known order upload -> PROCESSED while one user holds "
            f"{plan.fair_flood:,} unknown orders (accrual limited to {LIMIT_PER_SECOND} req/s, "
            f"2 workers, {len(flooded)} uploads at {plan.fair_rate:g}/s)",
            f"p50 {ms(p50 * 1000)}, p99 {ms(p99 * 1000)}; the simulator answered "
            f"{stats.get('answered', 0) / max(stats.get('seconds', 1), 1e-9):.1f} req/s "
            f"and refused {stats.get('too_many_requests', 0)}",
            baseline=f"no flood: p50 {ms(b50 * 1000)}, p99 {ms(b99 * 1000)}"
            if base.latencies
            else "—",
            ratio=f"p99 {p99 / b99:.1f}x" if base.latencies and b99 else "—",
            target="p99 ≤ 5 s",
            passed=p99 <= 5.0,
            problem="; ".join(problems) or None,
        )
    ]


class _Outcome:
    def __init__(self, latencies: list[float], problem: str | None) -> None:
        self.latencies = latencies
        self.problem = problem


async def _scenario(
    ctx: Ctx, sim: Proc, name: str, batch: list[str], flood: int
) -> tuple[_Outcome, dict[str, Any]]:
    plan = ctx.plan
    dsn = await ctx.stack.database(name)
    api = ctx.stack.api(f"api-{name}", dsn)
    workers = [ctx.stack.worker(f"worker-{name}-{i}", dsn, url(sim)) for i in range(2)]
    await wait_listening(dsn, 2)
    [user] = await seed.register(url(api), [f"{name}-customer"])
    statuses: list[int] = []
    async with aiohttp.ClientSession() as session:
        async with session.post(url(sim) + "/api/stats/reset") as resp:
            resp.raise_for_status()
        started = time.monotonic()
        if flood:
            conn = await asyncpg.connect(dsn)
            try:
                flooder = await seed.make_user(conn, f"{name}-flooder")
                await seed.add_orders(conn, flooder, list(numbers("63", flood)))
            finally:
                await conn.close()
            await asyncio.sleep(2.0)  # the flood is being asked about: the limit is reached

        loop = asyncio.get_running_loop()
        start = loop.time()
        tasks = []

        async def upload(number: str) -> None:
            async with session.post(
                url(api) + "/api/user/orders",
                data=number,
                headers={"Content-Type": "text/plain", "Authorization": user.token},
            ) as resp:
                statuses.append(resp.status)

        for i, number in enumerate(batch):  # a fixed schedule, not a closed loop
            await asyncio.sleep(max(0.0, start + i / plan.fair_rate - loop.time()))
            tasks.append(asyncio.create_task(upload(number)))
        await asyncio.gather(*tasks)
        conn = await asyncpg.connect(dsn)
        try:
            deadline = time.monotonic() + 60
            latencies: list[float] = []
            while time.monotonic() < deadline:
                latencies = [r["seconds"] for r in await conn.fetch(_LATENCIES, batch)]
                if len(latencies) == len(batch):
                    break
                await asyncio.sleep(0.2)
        finally:
            await conn.close()
        async with session.get(url(sim) + "/api/stats") as resp:
            stats: dict[str, Any] = await resp.json()
        by_status = stats.get("by_status", {})
        stats["answered"] = by_status.get("200", 0) + by_status.get("204", 0)
        stats["seconds"] = time.monotonic() - started
    for proc in workers:
        ctx.note_rss("worker", proc.peak_rss_mib())
        ctx.stack.stop(proc)
    ctx.stack.stop(api)
    problems = []
    if any(s != 202 for s in statuses):
        problems.append(f"uploads answered {sorted(set(statuses))}")
    if len(latencies) != len(batch):
        problems.append(f"{len(latencies)} of {len(batch)} orders PROCESSED ({name})")
    return _Outcome(latencies, "; ".join(problems) or None), stats
