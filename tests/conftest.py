"""Test harness: one throwaway PostgreSQL per run, one fresh database per test.

The server is started by the suite itself (shared.localpg) in a temp dir and
stopped at the end, also when tests fail. Migrations run once into a template
database; each test gets ``CREATE DATABASE … TEMPLATE``, which is a file copy
and takes a few milliseconds.
"""

import asyncio
import itertools
import logging
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import asyncpg
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient

from api.app import create_app
from db.migrate import migrate
from shared import logs
from shared.localpg import LocalPostgres, throwaway
from shared.pg import create_pool
from shared.settings import ApiSettings
from tests.documented import is_api, watch_answers
from tests.helpers import SECRET

TEMPLATE = "gophermart_template"
_counter = itertools.count()


# Passwords and secrets the suite uses: none may ever reach a log line.
NEVER_LOGGED = (
    "secret-pass",
    "stolen-pass",
    "plain-text-password",
    "password1",
    "test-session-secret",
    "e2e-secret",
    "$argon2id$",
)


@pytest.fixture(scope="session", autouse=True)
def captured_logs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every in-process log line of the run, as JSON, checked for secrets at the end."""
    path = tmp_path_factory.mktemp("logs") / "suite.jsonl"
    with path.open("w") as stream:
        logs.configure("debug", "json", stream=stream)
        yield path
    text = path.read_text()
    leaked = [secret for secret in NEVER_LOGGED if secret in text]
    assert not leaked, f"secrets in the logs: {leaked}"


@pytest.fixture(autouse=True)
def logging_restored() -> Iterator[None]:
    """Undoes whatever a test does to the logging set-up, so that no test sees another's.

    A test may call ``shared.logs.configure`` (its own stream, format or level) or
    bind context; afterwards structlog's configuration, the root logger's handlers
    of our own (pytest's capture handlers come and go by themselves) and its level
    are the suite's again, and the bound context is empty. Without this, a test
    running after one that reconfigured logging would log nowhere the suite looks,
    and a secret logged there would escape ``captured_logs``'s check.
    """
    config = structlog.get_config()
    config["processors"] = list(config["processors"])
    root = logging.getLogger()
    ours, level = [h for h in root.handlers if _ours(h)], root.level
    yield
    structlog.contextvars.clear_contextvars()
    structlog.configure(**config)
    root.handlers[:] = [h for h in root.handlers if not _ours(h)] + ours
    root.setLevel(level)


def _ours(handler: logging.Handler) -> bool:
    """A handler ``shared.logs.configure`` installed (not one of pytest's)."""
    return isinstance(handler.formatter, structlog.stdlib.ProcessorFormatter)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[LocalPostgres]:
    with throwaway("gophermart-test-pg-") as server:
        yield server


@pytest.fixture
def own_server() -> Iterator[LocalPostgres]:
    """A server of this test's own, which it may stop and start without disturbing others."""
    with throwaway("gophermart-own-pg-") as server:
        yield server


@pytest.fixture
def log_dir() -> Iterator[Path]:
    """A directory for the logs of processes a test starts."""
    # A test's PostgreSQL may still be writing its files (a data dir inside) for a
    # moment after the test: a clean-up that loses that race is no failure.
    with tempfile.TemporaryDirectory(
        prefix="gophermart-logs-", ignore_cleanup_errors=True
    ) as directory:
        # Traversable, so that a PostgreSQL started inside as another user can reach it.
        Path(directory).chmod(0o755)
        yield Path(directory)


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


# --- the API server, in-process --------------------------------------------


@pytest.fixture
def api_settings(database_uri: str) -> ApiSettings:
    return ApiSettings(
        database_uri=database_uri,
        session_secret=SECRET,
        login_max_failures=0,
        register_max_per_address=0,
    )


@pytest.fixture
async def aiohttp_client(aiohttp_client: Any) -> AsyncIterator[Any]:
    """pytest-aiohttp's, with every API app's answers checked against the document."""
    found: list[str] = []

    async def start(app: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(app, web.Application) and is_api(app):
            watch_answers(app, found)
        return await aiohttp_client(app, *args, **kwargs)

    yield start
    assert found == [], "answers the OpenAPI document (api/openapi.yaml) does not declare"


@pytest.fixture
async def client(api_settings: ApiSettings, aiohttp_client: Any) -> TestClient:
    app = create_app(api_settings)
    return cast(TestClient, await aiohttp_client(app))
