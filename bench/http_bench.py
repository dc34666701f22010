"""HTTP figures: each endpoint under wrk, against aiohttp's and PostgreSQL's ceilings."""

from dataclasses import dataclass
from decimal import Decimal

import asyncpg

from api import orders as api_orders
from bench import pgbench, seed, under_load, wrk
from bench.context import Ctx
from bench.ordernums import numbers
from bench.procs import Proc
from bench.report import Row, ms, pct, rate
from bench.stack import url
from bench.under_load import Traffic, UnderLoad
from db import balance, orders, users
from db.pages import PAGE_ROWS, START
from shared.localpg import free_port
from shared.settings import ApiSettings

CREDENTIALS_SQL = users._CREDENTIALS
# How much slower a probe's p99 may get beside a login storm or a registration flood.
MAX_SLOWDOWN = 3.0


def first_page(sql: str) -> str:
    """A page statement reading from the start of the list, as a list request does."""
    return sql.replace("$2", f"'{START.at.isoformat()}'::timestamptz").replace("$3", str(START.id))


@dataclass(frozen=True, slots=True)
class Endpoint:
    figure: str
    method_path: str
    script: str
    expected: int
    sql: str
    target_vs_hello: float | None = None  # fraction of hello-world rps
    target_vs_pgbench: float | None = None  # fraction of pgbench tps


ENDPOINTS = (
    Endpoint(
        "GET /api/user/balance",
        "/api/user/balance",
        "get_token",
        200,
        balance._BALANCE,
        target_vs_hello=0.25,
    ),
    Endpoint(
        "GET /api/user/orders (100 orders)",
        "/api/user/orders",
        "get_token",
        200,
        first_page(api_orders.LISTING.page),
    ),
    Endpoint(
        "POST /api/user/orders (fresh numbers)",
        "/api/user/orders",
        "upload",
        202,
        orders._UPLOAD,
        target_vs_pgbench=0.50,
    ),
    Endpoint(
        "POST /api/user/balance/withdraw (0.01)",
        "/api/user/balance/withdraw",
        "withdraw",
        200,
        balance._WITHDRAW,
    ),
    Endpoint("POST /api/user/login", "/api/user/login", "login", 200, CREDENTIALS_SQL),
)


def _figure(result: wrk.WrkResult) -> str:
    return f"{rate(result.rps, 'req/s')}, p50 {ms(result.p50_ms)}, p99 {ms(result.p99_ms)}"


async def run(ctx: Ctx) -> list[Row]:
    plan, stack, work = ctx.plan, ctx.stack, ctx.work_dir
    dsn = await stack.database("bench_http")
    api = stack.api("api-http", dsn)
    base = url(api)
    users = await seed.register(base, [str(seed.LOGIN_BASE + i + 1) for i in range(plan.users)])
    [lister] = await seed.register(base, ["list-user"])
    conn = await asyncpg.connect(dsn)
    try:
        users = await seed.with_ids(conn, users)
        [lister] = await seed.with_ids(conn, [lister])
        await seed.add_orders(
            conn, lister.id, list(numbers("31", plan.list_orders)), processed_every=3
        )
        await seed.fund(conn, [u.id for u in users], Decimal(10**12))
    finally:
        await conn.close()
    ids = sorted(u.id for u in users)
    if ids != list(range(ids[0], ids[0] + len(ids))):
        raise RuntimeError("bench users did not get consecutive ids")

    tokens = seed.write_lines(work / "tokens.txt", [u.token for u in users])
    lister_token = seed.write_lines(work / "lister.txt", [lister.token])
    creds = seed.write_lines(work / "creds.txt", [f"{u.login} {u.password}" for u in users])
    uid = f"random({ids[0]}, {ids[-1]})"
    draws: dict[str, dict[int, str]] = {
        "/api/user/balance": {1: uid},
        "/api/user/orders": {1: str(lister.id), 4: str(PAGE_ROWS)},
        "upload": {1: "random(1000000000000000, 1999999999999999)", 2: uid},
        "withdraw": {1: uid, 2: "random(1000000000000000, 1999999999999999)", 3: "0.01"},
        "login": {1: f"random({seed.LOGIN_BASE + 1}, {seed.LOGIN_BASE + plan.users})"},
    }
    script_args = {
        "/api/user/balance": (str(tokens),),
        "/api/user/orders": (str(lister_token),),
        "upload": (str(tokens), "71"),
        "withdraw": (str(tokens), "72"),
        "login": (str(creds),),
    }

    hello = await _hello(ctx)
    rows = [
        Row(
            "aiohttp hello world (uvloop, no access log): the framework's ceiling",
            _figure(hello),
            problem=hello.problem,
        )
    ]
    pool_size = ApiSettings.db_pool_max
    for ep in ENDPOINTS:
        key = ep.method_path if ep.script == "get_token" else ep.script
        result = await wrk.run(
            ctx.wrk,
            base + ep.method_path,
            wrk.script(ep.script, work),
            seconds=plan.wrk_seconds,
            connections=plan.connections,
            expected=ep.expected,
            args=script_args[key],
        )
        script = pgbench.write_script(work / f"{ep.script}-{len(rows)}.sql", ep.sql, draws[key])
        db = await pgbench.run(
            ctx.pgbench, dsn, script, clients=pool_size, seconds=plan.pgbench_seconds
        )
        rows.append(_endpoint_row(ep, result, hello, db, pool_size))
    rows.append(await _login_storm(ctx, base, tokens, creds))
    rows.append(await _registration_flood(ctx, base, creds))
    ctx.note_rss("api", api.peak_rss_mib())
    stack.stop(api)
    return rows


def _endpoint_row(
    ep: Endpoint,
    result: wrk.WrkResult,
    hello: wrk.WrkResult,
    db: pgbench.PgbenchResult,
    pool_size: int,
) -> Row:
    of_hello, of_db = result.rps / hello.rps, result.rps / db.tps
    targets, passed = [], []
    if ep.target_vs_hello is not None:
        targets.append(f"≥ {ep.target_vs_hello:.0%} of hello")
        passed.append(of_hello >= ep.target_vs_hello)
    if ep.target_vs_pgbench is not None:
        targets.append(f"≥ {ep.target_vs_pgbench:.0%} of pgbench")
        passed.append(of_db >= ep.target_vs_pgbench)
    return Row(
        ep.figure,
        _figure(result),
        baseline=f"hello {rate(hello.rps, 'req/s')}; pgbench same SQL "
        f"{rate(db.tps, 'tps')} ({pool_size} clients)",
        ratio=f"{pct(result.rps, hello.rps)} of hello; {pct(result.rps, db.tps)} of pgbench",
        target="; ".join(targets) or "—",
        passed=all(passed) if passed else None,
        problem=result.problem,
    )


async def _hello(ctx: Ctx) -> wrk.WrkResult:
    port = free_port()
    hello = ctx.stack.start(
        Proc.python("hello", "bench.hello", ctx.stack.log_dir, args=(str(port),), port=port)
    )
    try:
        return await wrk.run(
            ctx.wrk,
            url(hello) + "/",
            wrk.script("hello", ctx.work_dir),
            seconds=ctx.plan.wrk_seconds,
            connections=ctx.plan.connections,
            expected=200,
        )
    finally:
        ctx.stack.stop(hello)


async def _login_storm(ctx: Ctx, base: str, tokens: object, creds: object) -> Row:
    """Balance p99 while clients log in non-stop, against its p99 without them."""
    plan, work = ctx.plan, ctx.work_dir
    balance = Traffic(
        "/api/user/balance",
        wrk.script("get_token", work),
        plan.storm_probe_connections,
        (str(tokens),),
    )
    logins = Traffic(
        "/api/user/login", wrk.script("login", work), plan.storm_connections, (str(creds),)
    )
    storm = await under_load.measure(ctx, base, balance, logins)
    loud = storm.loud
    return _slowdown_row(
        f"GET /api/user/balance p99 during a login storm ({plan.storm_connections} clients "
        f"logging in, {plan.storm_probe_connections} reading)",
        f"p99 {ms(loud.p99_ms)} ({rate(loud.rps, 'req/s')}; logins "
        f"{rate(storm.load.rps, 'req/s')})",
        storm,
        storm.load.problem,
    )


# Registration answers a flood may get besides 200: the hashing queue's
# registration share is full (503), by design.
_FLOOD_REFUSALS = {503}


async def _registration_flood(ctx: Ctx, base: str, creds: object) -> Row:
    """Login p99 while clients register non-stop, against its p99 without them.

    Registrations hash as much as logins do; the hashing queue serves logins
    first and lets registrations wait only in a small share of it, refusing
    the rest at once, so the flood must not make logins wait behind it.
    """
    plan, work = ctx.plan, ctx.work_dir
    logins = Traffic(
        "/api/user/login",
        wrk.script("login", work),
        plan.storm_probe_connections,
        (str(creds),),
    )
    registrations = Traffic(
        "/api/user/register", wrk.script("register", work), plan.storm_connections, ("", "9")
    )
    flood = await under_load.measure(ctx, base, logins, registrations)
    loud, registered = flood.loud, flood.load
    refused = sum(n for code, n in registered.statuses.items() if code in _FLOOD_REFUSALS)
    done = registered.statuses.get(200, 0)
    return _slowdown_row(
        f"POST /api/user/login p99 during a registration flood ({plan.storm_connections} "
        f"clients registering, {plan.storm_probe_connections} logging in)",
        f"p99 {ms(loud.p99_ms)} ({rate(loud.rps, 'req/s')}; registrations "
        f"{done / registered.seconds:.0f}/s done, {refused / registered.seconds:.0f}/s "
        f"refused 503)",
        flood,
        registered.problem_besides(_FLOOD_REFUSALS),
    )


def _slowdown_row(figure: str, measured: str, run: UnderLoad, of_load: str | None) -> Row:
    return Row(
        figure,
        measured,
        baseline=run.baseline,
        ratio=run.ratio,
        target=f"≤ {MAX_SLOWDOWN:.0f}x quiet p99",
        passed=run.slowdown <= MAX_SLOWDOWN,
        problem=run.problem(of_load),
    )
