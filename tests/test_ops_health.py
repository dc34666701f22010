"""Liveness and readiness: /healthz and /readyz on the API and in shared.ops."""

import asyncio
from typing import Any

import asyncpg
from aiohttp import web
from aiohttp.test_utils import TestClient

from api.state import POOL
from db.migrate import available, schema_problem
from shared.metrics import new_registry
from shared.ops import ReadyCheck, database_ready, ops_app, ops_routes


async def test_healthz_answers_ok(client: TestClient) -> None:
    response = await client.get("/healthz")
    assert response.status == 200
    assert await response.json() == {"status": "ok"}


async def test_readyz_is_ready_with_a_migrated_database(client: TestClient) -> None:
    response = await client.get("/readyz")
    assert response.status == 200
    assert await response.json() == {"status": "ready"}


async def test_readyz_is_503_with_a_pending_migration(
    client: TestClient, pool: asyncpg.Pool
) -> None:
    latest = available()[-1]
    await pool.execute("DELETE FROM schema_migrations WHERE version = $1", latest.version)
    response = await client.get("/readyz")
    assert response.status == 503
    # The public port says not ready, not why (the reason is logged).
    assert await response.json() == {"status": "unavailable"}
    assert latest.name not in await response.text()


async def test_readyz_is_503_once_a_newer_build_migrates_the_database(
    client: TestClient, pool: asyncpg.Pool
) -> None:
    assert (await client.get("/readyz")).status == 200
    await pool.execute(
        "INSERT INTO schema_migrations (version, name) VALUES (9999, '9999_next.sql')"
    )
    response = await client.get("/readyz")
    assert response.status == 503
    assert await response.json() == {"status": "unavailable"}  # the public port: no reason
    error = await database_ready(pool, schema_problem)
    assert error is not None and error.startswith(
        "the database schema is newer than this build: it holds 9999_next.sql"
    ), error


async def test_readyz_is_503_when_the_database_is_unreachable(client: TestClient) -> None:
    await client.app[POOL].close()
    response = await client.get("/readyz")
    assert response.status == 503
    assert await response.json() == {"status": "unavailable"}
    # Liveness does not depend on the database: the process itself is fine.
    assert (await client.get("/healthz")).status == 200


async def test_database_ready_reports_none_when_ready_and_a_reason_when_not(
    pool: asyncpg.Pool, database_uri: str
) -> None:
    assert await database_ready(pool, schema_problem) is None
    closed = await asyncpg.create_pool(database_uri, min_size=1, max_size=1)
    await closed.close()
    reason = await database_ready(closed, schema_problem)
    assert reason is not None and reason.startswith("database unavailable: InterfaceError")


async def ops_client(
    aiohttp_client: Any, ready: ReadyCheck, ready_timeout: float = 2.0
) -> TestClient:
    """What the worker serves: the ops routes alone, on an application of their own."""
    app = web.Application()
    app.add_routes(ops_routes(ready=ready, registry=new_registry(), ready_timeout=ready_timeout))
    client: TestClient = await aiohttp_client(app)
    return client


async def test_stand_alone_ops_app_serves_all_three_routes(aiohttp_client: Any) -> None:
    async def ready() -> str | None:
        return None

    client: TestClient = await aiohttp_client(ops_app(ready=ready, registry=new_registry()))
    assert await (await client.get("/healthz")).json() == {"status": "ok"}
    assert await (await client.get("/readyz")).json() == {"status": "ready"}
    metrics = await client.get("/metrics")
    assert metrics.status == 200
    assert "python_info" in await metrics.text()


async def test_a_readiness_check_that_hangs_is_cut_short(aiohttp_client: Any) -> None:
    never = asyncio.Event()

    async def ready() -> str | None:
        await never.wait()
        return None

    client = await ops_client(aiohttp_client, ready, ready_timeout=0.05)
    response = await client.get("/readyz")
    assert response.status == 503
    assert (await response.json())["error"] == "readiness check timed out after 0.05 s"


async def test_a_readiness_check_that_raises_is_reported_not_raised(aiohttp_client: Any) -> None:
    async def ready() -> str | None:
        raise RuntimeError("boom")

    client = await ops_client(aiohttp_client, ready)
    response = await client.get("/readyz")
    assert response.status == 503
    assert (await response.json())["error"] == "readiness check failed: RuntimeError: boom"


async def test_a_failing_check_reason_is_passed_through(aiohttp_client: Any) -> None:
    async def ready() -> str | None:
        return "accrual listener reconnecting"

    client = await ops_client(aiohttp_client, ready)
    response = await client.get("/readyz")
    assert response.status == 503
    assert await response.json() == {
        "status": "unavailable",
        "error": "accrual listener reconnecting",
    }
