"""Schema migrations: applied once, safe when many replicas start together."""

import asyncio

import asyncpg

from db.migrate import available, migrate, pending
from shared.localpg import LocalPostgres


async def _fresh_database(pg_server: LocalPostgres, name: str) -> str:
    conn = await asyncpg.connect(pg_server.dsn)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    return pg_server.dsn_for(name)


async def test_concurrent_migrators_apply_each_file_once(pg_server: LocalPostgres) -> None:
    dsn = await _fresh_database(pg_server, "migrate_race")
    results = await asyncio.gather(*(migrate(dsn) for _ in range(6)))
    applied = [name for result in results for name in result]
    assert sorted(applied) == sorted(m.name for m in available())
    conn = await asyncpg.connect(dsn)
    try:
        assert await pending(conn) == []
        versions = await conn.fetch("SELECT version FROM gophermart.schema_migrations")
        assert len(versions) == len(available())
    finally:
        await conn.close()


async def test_migrating_again_changes_nothing(database_uri: str) -> None:
    assert await migrate(database_uri) == []


async def test_all_objects_live_in_the_gophermart_schema(database_uri: str) -> None:
    conn = await asyncpg.connect(database_uri)
    try:
        outside = await conn.fetch(
            "SELECT table_schema, table_name FROM information_schema.tables"
            " WHERE table_schema NOT IN ('gophermart', 'pg_catalog', 'information_schema')")
        assert outside == []
        tables = {r["table_name"] for r in await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'gophermart'")}
        assert {"users", "balances", "orders", "ledger", "accrual_gate"} <= tables
    finally:
        await conn.close()
