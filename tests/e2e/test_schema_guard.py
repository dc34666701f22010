"""An older build refuses, as a real process, a database a newer build migrated."""

from pathlib import Path

import asyncpg
import pytest

from tests.processes import Service, free_port

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("module", ["api", "worker"])
async def test_process_refuses_to_start_on_a_newer_schema_with_one_clear_line(
    module: str, database_uri: str, log_dir: Path
) -> None:
    conn = await asyncpg.connect(database_uri)
    try:
        await conn.execute(
            "INSERT INTO gophermart.schema_migrations (version, name)"
            " VALUES (9999, '9999_next.sql')"
        )
        orders_before = await conn.fetchval("SELECT count(*) FROM gophermart.orders")
    finally:
        await conn.close()
    service = Service(
        module,
        module,
        {
            "DATABASE_URI": database_uri,
            "RUN_ADDRESS": f"127.0.0.1:{free_port()}",
            "ACCRUAL_SYSTEM_ADDRESS": f"127.0.0.1:{free_port()}",
        },
        log_dir,
    ).start()
    assert service.process is not None
    code = service.process.wait(30)
    assert code == 1
    text = service.log()
    assert "Traceback" not in text, text
    last = text.strip().splitlines()[-1]
    assert last.startswith(
        f"gophermart-{module}: the database schema is newer than this build: it holds 9999_next.sql"
    ), text
    conn = await asyncpg.connect(database_uri)
    try:
        assert await conn.fetchval("SELECT count(*) FROM gophermart.orders") == orders_before
    finally:
        await conn.close()
