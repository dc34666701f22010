"""``python -m bench.scale [--smoke]``: every figure on an empty database and on a large shop.

Two databases on one private PostgreSQL: ``empty`` (migrated, nothing else) and
``large`` (1 M customers, 10 M orders, mostly final, 10 M ledger entries;
``bench/scale_seed.py``). Both then get the same benchmark users, a customer
with 100 orders and one with 100,000, and the same measurements in the same
order: the migration check every process runs at start, the API's and a
worker's start, each endpoint under wrk (after an unmeasured warm-up run), the
metrics scrape, and the worker's
claim -> ask -> apply loop. Per figure the table puts the large database next
to the empty one; full scans of ``orders``, ``ledger`` and ``users`` during the
measurements are counted from ``pg_stat_user_tables``.
"""

import argparse
import asyncio
import os
import signal
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from types import FrameType

import aiohttp
import asyncpg

from bench import seed, wrk
from bench.context import Ctx
from bench.ordernums import numbers
from bench.plan import SMOKE, Plan
from bench.procs import Proc
from bench.report import Row, ms, publish, rate
from bench.scale_seed import WHALE_ID, Size
from bench.scale_seed import seed as seed_shop
from bench.stack import Stack, url
from bench.worker_bench import seed_file, wait_listening
from db.migrate import migrate
from shared.localpg import LocalPostgres
from shared.logs import configure
from shared.pg import SERVER_SETTINGS

HERE = Path(__file__).parent
RSS_LIMIT_MB = 100.0
P99_GROWTH = 1.5  # the large database's p99 at most this times the empty one's
WORKER_KEEP = 0.8  # the worker loop keeps at least this share of its orders/s
GUARDED = ("orders", "ledger", "users")


@dataclass(frozen=True, slots=True)
class ScalePlan:
    name: str
    size: Size
    wrk_seconds: float
    connections: int
    worker_orders: int
    list_orders: int = 100
    warmup_seconds: float = 2  # an unmeasured wrk run before each figure (cold caches)


FULL = ScalePlan(
    "full",
    Size(customers=1_000_000, orders=10_000_000, ledger=10_000_000, whale_orders=100_000),
    wrk_seconds=8,
    connections=32,
    worker_orders=5_000,
)
SMOKE_SCALE = ScalePlan(
    "smoke",
    Size(customers=2_000, orders=20_000, ledger=20_000, whale_orders=5_000, chunks=2),
    wrk_seconds=1,
    connections=8,
    worker_orders=500,
    warmup_seconds=1,
)


class ScalePostgres(LocalPostgres):
    """The benchmark's PostgreSQL, with room for a large shop (shared buffers, WAL)."""

    def options(self) -> dict[str, str]:
        return {
            **super().options(),
            "shared_buffers": "1GB",
            "max_wal_size": "8GB",
            "checkpoint_timeout": "30min",
            "maintenance_work_mem": "256MB",
        }


@dataclass(frozen=True, slots=True)
class Http:
    figure: str
    path: str
    script: str
    expected: int
    args: tuple[str, ...]
    connections: int | None = None  # default: the plan's


@dataclass
class Measured:
    """One database's figures, by figure name."""

    http: dict[str, wrk.WrkResult]
    seconds: dict[str, float]
    worker_rate: float
    worker_problem: str | None
    scans: dict[str, int]
    rss_mb: float


def say(text: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {text}", file=sys.stderr, flush=True)


async def _scans(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        # Statistics reach the view when a backend reports them (at most ~1 s late).
        await asyncio.sleep(1.5)
        rows = await conn.fetch(
            "SELECT relname, seq_scan FROM pg_stat_user_tables WHERE schemaname = 'gophermart'"
            " AND relname = ANY($1)",
            list(GUARDED),
        )
    finally:
        await conn.close()
    return {r["relname"]: r["seq_scan"] for r in rows}


async def _timed(work: Callable[[], Awaitable[object]], times: int = 3) -> float:
    """The median wall time of ``times`` runs."""
    spent = []
    for _ in range(times):
        started = time.monotonic()
        await work()
        spent.append(time.monotonic() - started)
    return statistics.median(spent)


def _tree_rss_mb(proc: Proc) -> float:
    """Peak RSS of the largest process among ``proc`` and its children (API processes)."""
    pids = [proc.pid] + [
        int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    ]
    return max(_peak(pid) for pid in pids)


def _peak(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e6
    return 0.0


async def _login(base: str, login: str, password: str) -> str:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{base}/api/user/login", json={"login": login, "password": password}) as resp,
    ):
        if resp.status != 200:
            raise RuntimeError(f"login {login}: {resp.status} {await resp.text()}")
        return resp.headers["Authorization"]


async def _setup_users(base: str, dsn: str, plan: ScalePlan, work: Path) -> dict[str, Path]:
    """Benchmark users (registered through the API), funded; the lister and the whale."""
    users = await seed.register(base, [f"bench-{i}" for i in range(32)])
    lister, whale = await seed.register(base, ["bench-lister", "bench-whale"])
    conn = await asyncpg.connect(dsn, server_settings=SERVER_SETTINGS)
    try:
        users = await seed.with_ids(conn, users)
        lister, whale = await seed.with_ids(conn, [lister, whale])
        await seed.add_orders(
            conn, lister.id, list(numbers("31", plan.list_orders)), processed_every=3
        )
        # The large database's whale is its user 1, with its seeded orders: it gets the
        # registered whale's password and logs in. The empty one's registered whale
        # gets as many orders, so that both answer the same request.
        whale_login = whale.login
        if await conn.fetchval("SELECT count(*) FROM orders WHERE user_id = $1", WHALE_ID):
            whale_login = await conn.fetchval(
                "UPDATE users SET password_hash = (SELECT password_hash FROM users"
                " WHERE id = $2) WHERE id = $1 RETURNING login",
                WHALE_ID,
                whale.id,
            )
        else:
            await seed.add_orders(
                conn, whale.id, list(numbers("32", plan.size.whale_orders)), processed_every=2
            )
        await seed.fund(conn, [u.id for u in users], Decimal(10**12))
    finally:
        await conn.close()
    whale_token = await _login(base, whale_login, whale.password)
    return {
        "tokens": seed.write_lines(work / "tokens.txt", [u.token for u in users]),
        "lister": seed.write_lines(work / "lister.txt", [lister.token]),
        "whale": seed.write_lines(work / "whale.txt", [whale_token]),
        "creds": seed.write_lines(work / "creds.txt", [f"{u.login} {u.password}" for u in users]),
    }


def _endpoints(files: dict[str, Path], plan: ScalePlan) -> list[Http]:
    tokens, lister, whale = str(files["tokens"]), str(files["lister"]), str(files["whale"])
    return [
        Http("GET /api/user/balance", "/api/user/balance", "get_token", 200, (tokens,)),
        Http(
            f"GET /api/user/orders ({plan.list_orders} orders)",
            "/api/user/orders",
            "get_token",
            200,
            (lister,),
        ),
        Http(
            f"GET /api/user/orders?limit=1000 (customer with "
            f"{plan.size.whale_orders:,} orders: first page)",
            "/api/user/orders?limit=1000",
            "get_token",
            200,
            (whale,),
        ),
        # Lists longer than a page stream at most 2 at a time per customer.
        Http(
            f"GET /api/user/orders (customer with {plan.size.whale_orders:,} orders: "
            "the whole default answer, 2 connections)",
            "/api/user/orders",
            "get_token",
            200,
            (whale,),
            connections=2,
        ),
        Http(
            "POST /api/user/orders (fresh numbers)",
            "/api/user/orders",
            "upload",
            202,
            (tokens, "71"),
        ),
        Http(
            "POST /api/user/balance/withdraw (0.01)",
            "/api/user/balance/withdraw",
            "withdraw",
            200,
            (tokens, "72"),
        ),
        Http("GET /api/user/withdrawals", "/api/user/withdrawals", "get_token", 200, (tokens,)),
        Http("POST /api/user/login", "/api/user/login", "login", 200, (str(files["creds"]),)),
        Http("GET /metrics (scrape)", "/metrics", "get_token", 200, (tokens,), connections=1),
    ]


async def _drained(conn: asyncpg.Connection, user: int, patience: float) -> None:
    """Until none of ``user``'s orders is waiting (or ``patience`` runs out)."""
    deadline = time.monotonic() + patience
    left = "SELECT count(*) FROM orders WHERE user_id = $1 AND status IN ('NEW', 'PROCESSING')"
    while await conn.fetchval(left, user) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)


async def _worker_loop(ctx: Ctx, dsn: str, label: str, count: int) -> tuple[float, str | None]:
    """Orders/s of one worker draining ``count`` fresh orders (simulator --delay 0)."""
    batch = list(numbers("45" if label == "empty" else "46", count))
    sim = ctx.stack.simulator(
        f"sim-{label}",
        "--delay",
        "0",
        "--seed-file",
        str(seed_file(ctx.work_dir / f"seed-{label}.json", batch)),
    )
    worker = ctx.stack.worker(f"worker-{label}", dsn, url(sim))
    await wait_listening(dsn, 1)
    conn = await asyncpg.connect(dsn, server_settings=SERVER_SETTINGS)
    try:
        user = await seed.make_user(conn, f"worker-user-{label}")
        await seed.add_orders(conn, user, batch)
        await _drained(conn, user, patience=max(120.0, count / 10))
        done = await conn.fetchrow(
            """SELECT count(*) FILTER (WHERE o.status = 'PROCESSED') AS processed,
                      extract(epoch FROM max(l.created_at) - min(o.uploaded_at))::float8 AS s
               FROM orders o LEFT JOIN ledger l
                 ON l.kind = 'accrual' AND l.order_number = o.number
               WHERE o.user_id = $1""",
            user,
        )
        assert done is not None
    finally:
        await conn.close()
    ctx.stack.stop(worker)
    ctx.stack.stop(sim)
    problem = (
        None
        if done["processed"] == count
        else f"only {done['processed']} of {count} orders PROCESSED"
    )
    return (done["processed"] / done["s"] if done["s"] else 0.0), problem


async def _start_seconds(ctx: Ctx, dsn: str, label: str) -> tuple[float, float]:
    """Seconds until a fresh API accepts connections, and until a fresh worker listens."""
    started = time.monotonic()
    api = ctx.stack.api(f"api-start-{label}", dsn)  # returns once the port accepts
    api_seconds = time.monotonic() - started
    ctx.stack.stop(api)
    started = time.monotonic()
    worker = ctx.stack.worker(f"worker-start-{label}", dsn, "http://127.0.0.1:9")
    await wait_listening(dsn, 1)
    worker_seconds = time.monotonic() - started
    ctx.stack.stop(worker)
    return api_seconds, worker_seconds


async def measure(ctx: Ctx, plan: ScalePlan, dsn: str, label: str) -> Measured:
    seconds = {"migration check at start": await _timed(lambda: migrate(dsn))}
    (
        seconds["API start (spawn -> port accepts)"],
        seconds["worker start (spawn -> listening)"],
    ) = await _start_seconds(ctx, dsn, label)
    api = ctx.stack.api(f"api-{label}", dsn)
    work = ctx.work_dir / label
    work.mkdir()
    files = await _setup_users(url(api), dsn, plan, work)
    before = await _scans(dsn)
    http = {}
    for ep in _endpoints(files, plan):
        say(f"{label}: {ep.figure}")
        # Warm the caches, then measure; the warm-up's order numbers have a prefix of
        # their own, so the measured run's uploads and withdrawals are all new.
        warmup = (*ep.args[:1], ep.args[1] + "9") if len(ep.args) > 1 else ep.args
        for length, args in ((plan.warmup_seconds, warmup), (plan.wrk_seconds, ep.args)):
            http[ep.figure] = await wrk.run(
                ctx.wrk,
                url(api) + ep.path,
                wrk.script(ep.script, ctx.work_dir),
                seconds=length,
                connections=ep.connections or plan.connections,
                expected=ep.expected,
                args=args,
            )
    rss = _tree_rss_mb(api)
    ctx.stack.stop(api)
    say(f"{label}: worker loop")
    worker_rate, worker_problem = await _worker_loop(ctx, dsn, label, plan.worker_orders)
    after = await _scans(dsn)
    scans = {name: after.get(name, 0) - before.get(name, 0) for name in GUARDED}
    return Measured(http, seconds, worker_rate, worker_problem, scans, rss)


def _http_figure(result: wrk.WrkResult) -> str:
    return f"{rate(result.rps, 'req/s')}, p50 {ms(result.p50_ms)}, p99 {ms(result.p99_ms)}"


def rows(empty: Measured, large: Measured, seeded: dict[str, float], plan: ScalePlan) -> list[Row]:
    out = [
        Row(
            f"seeding {plan.size.customers:,} customers, {plan.size.orders:,} orders, "
            f"{plan.size.ledger:,} ledger entries (set-based SQL, 2 connections)",
            f"{seeded['total']:.0f} s",
            baseline="; ".join(f"{k} {v:.0f} s" for k, v in seeded.items() if k != "total"),
        )
    ]
    for name in empty.seconds:
        out.append(
            Row(
                name,
                f"{large.seconds[name] * 1000:.0f} ms",
                baseline=f"empty {empty.seconds[name] * 1000:.0f} ms",
                ratio=f"{large.seconds[name] / empty.seconds[name]:.2f}x",
            )
        )
    for name, small in empty.http.items():
        big = large.http[name]
        growth = big.p99_ms / small.p99_ms if small.p99_ms else float("inf")
        out.append(
            Row(
                name,
                _http_figure(big),
                baseline=f"empty: {_http_figure(small)}",
                ratio=f"p99 {growth:.2f}x; req/s {big.rps / small.rps:.2f}x"
                if small.rps
                else "n/a",
                target=f"p99 ≤ {P99_GROWTH}x empty",
                passed=growth <= P99_GROWTH,
                problem=big.problem or small.problem,
            )
        )
    keep = large.worker_rate / empty.worker_rate if empty.worker_rate else 0.0
    out.append(
        Row(
            f"worker claim -> ask -> apply loop, 1 process ({plan.worker_orders:,} "
            "fresh orders, simulator --delay 0)",
            rate(large.worker_rate, "orders/s"),
            baseline=f"empty {rate(empty.worker_rate, 'orders/s')}",
            ratio=f"{keep:.2f}x",
            target=f"≥ {WORKER_KEEP:.0%} of empty",
            passed=keep >= WORKER_KEEP,
            problem=large.worker_problem or empty.worker_problem,
        )
    )
    for label, measured in (("large", large), ("empty", empty)):
        total = sum(measured.scans.values())
        out.append(
            Row(
                f"full scans of {', '.join(GUARDED)} during the measurements ({label})",
                ", ".join(f"{k} {v}" for k, v in measured.scans.items()),
                target="0",
                passed=total == 0,
            )
        )
    out.append(
        Row(
            "peak RSS of one API process (large database, after the load above)",
            f"{large.rss_mb:.0f} MB",
            baseline=f"empty {empty.rss_mb:.0f} MB",
            target=f"≤ {RSS_LIMIT_MB:.0f} MB",
            passed=large.rss_mb <= RSS_LIMIT_MB,
        )
    )
    return out


async def _run(stack: Stack, plan: ScalePlan, wrk_bin: str, work: Path) -> list[Row]:
    bench_plan: Plan = SMOKE  # only for Ctx; this benchmark reads its own plan
    ctx = Ctx(stack, bench_plan, wrk_bin, "", work)
    empty_dsn = await stack.database("scale_empty")
    large_dsn = await stack.database("scale_large")
    say(f"seeding the large database ({plan.size})")
    seeded = await seed_shop(large_dsn, plan.size, say)
    say("measuring the empty database")
    empty = await measure(ctx, plan, empty_dsn, "empty")
    say("measuring the large database")
    large = await measure(ctx, plan, large_dsn, "large")
    return rows(empty, large, seeded, plan)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scale", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--smoke", action="store_true", help="a small shop and 1 s per figure (checks the harness)"
    )
    args = parser.parse_args(argv)
    plan = SMOKE_SCALE if args.smoke else FULL
    signal.signal(signal.SIGTERM, _on_sigterm)
    configure("warning", "console")
    wrk_bin = wrk.ensure_wrk()
    started = time.monotonic()
    stack = Stack(HERE / "out" / "scale-logs")
    stack.pg = ScalePostgres(stack.tmp / "pg", fast=True)
    try:
        stack.start_postgres()
        work = stack.tmp / "work"
        work.mkdir()
        table_rows = asyncio.run(_run(stack, plan, wrk_bin, work))
    finally:
        stack.close()
    header = (
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC with `make bench-scale"
        f"{' -- --smoke' if args.smoke else ''}`, {plan.name} plan, "
        f"{time.monotonic() - started:.0f} s, {os.cpu_count()} CPUs shared by wrk, the API "
        f"processes, PostgreSQL (shared_buffers 1GB, fsync off) and other sessions' work."
    )
    return publish(
        header,
        table_rows,
        HERE / "out" / "scale-smoke.md" if args.smoke else HERE / "RESULTS.md",
        whole_file=args.smoke,
        begin="<!-- bench-scale:begin -->",
        end="<!-- bench-scale:end -->",
    )


if __name__ == "__main__":
    sys.exit(main())
