"""One customer's huge lists against everyone else: balance p99 and the API's memory.

A customer with ``plan.hoard_orders`` orders keeps ``plan.hoard_connections``
list requests in flight (wrk: each connection asks again as soon as it has an
answer, a 200 streamed in full or a 429 refusal); meanwhile other customers
read their balance. The balance p99 is set against the same probe on the same
API process with nobody listing, and the API's peak RSS (VmHWM) is read at the
end: the process is fresh, so it is this scenario's peak.
"""

from pathlib import Path

import asyncpg

from bench import seed, under_load, wrk
from bench.context import Ctx
from bench.ordernums import numbers
from bench.procs import peak_rss_mib
from bench.report import Row, ms, rate
from bench.stack import url
from bench.under_load import Traffic
from shared.pg import SCHEMA

BALANCE_P99_MS = 100.0
RSS_LIMIT_MB = 150.0


def api_processes(pid: int) -> list[int]:
    """The processes serving the API: the supervisor's children, or ``pid`` itself."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(child) for child in children] or [pid]


async def run(ctx: Ctx) -> list[Row]:
    plan, stack, work = ctx.plan, ctx.stack, ctx.work_dir
    dsn = await stack.database("bench_overload")
    api = stack.api("api-overload", dsn)
    base = url(api)
    readers = await seed.register(
        base, [f"reader-{i}" for i in range(plan.storm_probe_connections)]
    )
    [hoarder] = await seed.register(base, ["hoarder"])
    conn = await asyncpg.connect(dsn, server_settings={"search_path": SCHEMA})
    try:
        [hoarder] = await seed.with_ids(conn, [hoarder])
        await seed.add_orders(
            conn, hoarder.id, list(numbers("41", plan.hoard_orders)), processed_every=3
        )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    tokens = seed.write_lines(work / "readers.txt", [u.token for u in readers])
    hoarder_token = seed.write_lines(work / "hoarder.txt", [hoarder.token])
    probe = wrk.script("get_token", work)
    balance = Traffic("/api/user/balance", probe, plan.storm_probe_connections, (str(tokens),))
    lists = Traffic("/api/user/orders", probe, plan.hoard_connections, (str(hoarder_token),))
    hoard = await under_load.measure(ctx, base, balance, lists)
    rss = [peak_rss_mib(pid) * 1024 * 1024 / 1e6 for pid in api_processes(api.pid)]
    stack.stop(api)

    loud, listed = hoard.loud, hoard.load
    full = listed.statuses.get(200, 0) / listed.seconds
    refused = listed.statuses.get(429, 0) / listed.seconds
    figure = (
        f"GET /api/user/balance p99 while one customer keeps {plan.hoard_connections} "
        f"GET /api/user/orders of {plan.hoard_orders:,} orders in flight "
        f"({plan.storm_probe_connections} other customers reading)"
    )
    return [
        Row(
            figure,
            f"p99 {ms(loud.p99_ms)} ({rate(loud.rps, 'req/s')}); lists: "
            f"{rate(full, 'full/s')}, {rate(refused, 'refused/s')} (429)",
            baseline=hoard.baseline,
            ratio=hoard.ratio,
            target=f"< {BALANCE_P99_MS:.0f} ms",
            passed=loud.p99_ms < BALANCE_P99_MS,
            # 429 is the hoarder's expected answer beyond LIST_CONCURRENCY; nothing else is.
            problem=hoard.problem(listed.problem_besides({429})),
        ),
        Row(
            f"peak RSS of each API process in the scenario above (VmHWM; {len(rss)} processes)",
            " / ".join(f"{mb:.0f} MB" for mb in rss),
            target=f"< {RSS_LIMIT_MB:.0f} MB each",
            passed=max(rss) < RSS_LIMIT_MB,
        ),
    ]
