"""Test harness: one throwaway PostgreSQL per run, one fresh database per test.

The server is started by the suite itself (shared.localpg) in a temp dir and
stopped at the end, also when tests fail. Migrations run once into a template
database; each test gets ``CREATE DATABASE … TEMPLATE``, which is a file copy
and takes a few milliseconds.
"""

import asyncio
import itertools
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from db.migrate import migrate
from shared.localpg import LocalPostgres
from shared.pg import create_pool

TEMPLATE = "gophermart_template"
_counter = itertools.count()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[LocalPostgres]:
    root = Path(tempfile.mkdtemp(prefix="gophermart-test-pg-"))
    server = LocalPostgres(root, fast=True)
    try:
        server.start()
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def template_dsn(pg_server: LocalPostgres) -> str:
    async def build() -> None:
        conn = await asyncpg.connect(pg_server.dsn)
        try:
            await conn.execute(f"CREATE DATABASE {TEMPLATE}")
        finally:
            await conn.close()
        await migrate(pg_server.dsn_for(TEMPLATE))

    asyncio.run(build())
    return pg_server.dsn_for(TEMPLATE)


@pytest.fixture
async def database_uri(pg_server: LocalPostgres, template_dsn: str) -> AsyncIterator[str]:
    """A freshly migrated database of this test's own."""
    name = f"test_{next(_counter)}"
    conn = await asyncpg.connect(pg_server.dsn)
    try:
        await conn.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
    finally:
        await conn.close()
    yield pg_server.dsn_for(name)
    conn = await asyncpg.connect(pg_server.dsn)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await conn.close()


@pytest.fixture
async def pool(database_uri: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_uri, min_size=1, max_size=10)
    try:
        yield pool
    finally:
        await pool.close()
