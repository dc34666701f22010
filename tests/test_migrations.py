"""Schema migrations: applied once, safe when many replicas start together."""

import asyncio

import asyncpg
import pytest

from db.migrate import SchemaTooNew, available, migrate, pending
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
            " WHERE table_schema NOT IN ('gophermart', 'pg_catalog', 'information_schema')"
        )
        assert outside == []
        tables = {
            r["table_name"]
            for r in await conn.fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'gophermart'"
            )
        }
        assert {"users", "balances", "orders", "ledger", "accrual_gate"} <= tables
    finally:
        await conn.close()


async def test_a_database_a_newer_build_migrated_is_refused_before_any_change(
    database_uri: str,
) -> None:
    conn = await asyncpg.connect(database_uri)
    try:
        latest = available()[-1]
        # A newer build applied 9999; this one also lacks its own latest file.
        await conn.execute(
            "DELETE FROM gophermart.schema_migrations WHERE version = $1", latest.version
        )
        await conn.execute(
            "INSERT INTO gophermart.schema_migrations (version, name)"
            " VALUES (9999, '9999_next.sql')"
        )
        with pytest.raises(
            SchemaTooNew,
            match=r"newer than this build: it holds "
            r"9999_next\.sql",
        ):
            await migrate(database_uri)
        assert [m.name for m in await pending(conn)] == [latest.name]  # nothing applied
    finally:
        await conn.close()
