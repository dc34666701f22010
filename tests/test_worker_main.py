"""The worker process's entry points: settings, start-up migrations, a clean stop."""

import asyncio

import aiohttp
import asyncpg
import pytest

from shared.localpg import LocalPostgres
from shared.settings import WorkerSettings, load
from tests.helpers import add_order, eventually, make_user
from tests.worker_harness import FakeAccrual, json_reply
from worker.__main__ import main, serve


@pytest.mark.parametrize(
    ("argv", "missing"),
    [
        ([], "DATABASE_URI (-d) and ACCRUAL_SYSTEM_ADDRESS (-r) must be set"),
        (["-d", "postgresql://x/y"], "ACCRUAL_SYSTEM_ADDRESS (-r) must be set"),
        (["-r", "localhost:8081"], "DATABASE_URI (-d) must be set"),
    ],
)
def test_missing_settings_fail_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], missing: str
) -> None:
    monkeypatch.delenv("DATABASE_URI", raising=False)
    monkeypatch.delenv("ACCRUAL_SYSTEM_ADDRESS", raising=False)
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert str(exited.value) == f"gophermart-worker: {missing}"


@pytest.mark.parametrize(
    ("flags", "problem"),
    [
        (["--accrual-rate-share", "0"], "ACCRUAL_RATE_SHARE must be above 0 and at most 1"),
        (["--accrual-rate-share", "1.5"], "ACCRUAL_RATE_SHARE must be above 0 and at most 1"),
        (["--accrual-pause-min", "0"], "ACCRUAL_PAUSE_MIN must be at least 0.1 s"),
        (
            ["--accrual-pause-min", "5", "--accrual-pause-max", "1"],
            "ACCRUAL_PAUSE_MAX must not be below ACCRUAL_PAUSE_MIN",
        ),
        (["--accrual-rate-ttl", "0"], "ACCRUAL_RATE_TTL must be at least 1 s"),
    ],
)
def test_gate_settings_that_would_spin_or_divide_by_zero_are_refused(
    monkeypatch: pytest.MonkeyPatch, flags: list[str], problem: str
) -> None:
    for name in (
        "ACCRUAL_RATE_SHARE",
        "ACCRUAL_PAUSE_MIN",
        "ACCRUAL_PAUSE_MAX",
        "ACCRUAL_RATE_TTL",
    ):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit) as exited:
        main(["-d", "postgresql://x/y", "-r", "localhost:8081", *flags])
    assert str(exited.value) == f"gophermart-worker: {problem}"


async def test_serve_migrates_an_empty_database_processes_orders_and_stops(
    pg_server: LocalPostgres, aiohttp_server: object
) -> None:
    admin = await asyncpg.connect(pg_server.dsn)
    await admin.execute("CREATE DATABASE worker_main_empty")
    await admin.close()
    dsn = pg_server.dsn_for("worker_main_empty")
    fake = FakeAccrual(reply=lambda n: json_reply("PROCESSED", "7", n))
    server = await aiohttp_server(fake.app())  # type: ignore[operator]
    # The address without a scheme, with a trailing slash, as docs/accrual.md allows.
    settings = load(WorkerSettings, ["-d", dsn, "-r", f"127.0.0.1:{server.port}/"], environ={})
    stopping = asyncio.Event()
    running = asyncio.create_task(serve(settings, stopping))
    try:

        async def migrated() -> bool:
            conn = await asyncpg.connect(dsn)
            try:
                return bool(
                    await conn.fetchval("SELECT to_regclass('gophermart.accrual_gate') IS NOT NULL")
                )
            finally:
                await conn.close()

        await eventually(migrated, within=10)
        pool = await asyncpg.create_pool(dsn, server_settings={"search_path": "gophermart"})
        try:
            await add_order(pool, await make_user(pool), "79927398713")

            async def processed() -> bool:
                return await pool.fetchval("SELECT status FROM orders") == "PROCESSED"

            await eventually(processed, within=3)
        finally:
            await pool.close()
    finally:
        stopping.set()
        stats = await asyncio.wait_for(running, 5)
    assert stats.applied_count("PROCESSED") == 1
    admin = await asyncpg.connect(pg_server.dsn)
    await admin.execute("DROP DATABASE worker_main_empty WITH (FORCE)")
    await admin.close()


async def test_worker_serves_health_readiness_and_metrics_when_asked(
    database_uri: str, aiohttp_server: object, unused_tcp_port: int
) -> None:
    fake = FakeAccrual(reply=lambda n: json_reply("PROCESSED", "7", n))
    server = await aiohttp_server(fake.app())  # type: ignore[operator]
    settings = load(
        WorkerSettings,
        [],
        environ={
            "DATABASE_URI": database_uri,
            "ACCRUAL_SYSTEM_ADDRESS": str(server.make_url("")),
            "WORKER_HEALTH_ADDRESS": f"127.0.0.1:{unused_tcp_port}",
        },
    )
    stopping = asyncio.Event()
    running = asyncio.create_task(serve(settings, stopping))
    base = f"http://127.0.0.1:{unused_tcp_port}"
    try:
        pool = await asyncpg.create_pool(
            database_uri, server_settings={"search_path": "gophermart"}
        )
        try:
            await add_order(pool, await make_user(pool), "79927398713")

            async def processed() -> bool:
                return await pool.fetchval("SELECT status FROM orders") == "PROCESSED"

            await eventually(processed, within=5)
        finally:
            await pool.close()
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/healthz") as response:
                assert response.status == 200
            async with http.get(f"{base}/readyz") as response:
                assert (response.status, await response.json()) == (200, {"status": "ready"})
            async with http.get(f"{base}/metrics") as response:
                text = await response.text()
        assert 'gophermart_accrual_requests_total{outcome="200"} 1.0' in text
        assert 'gophermart_worker_orders_applied_total{status="PROCESSED"} 1.0' in text
    finally:
        stopping.set()
        await asyncio.wait_for(running, 5)
