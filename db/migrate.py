"""Schema migrations: numbered SQL files under db/migrations, applied in order.

A build refuses a database that holds a migration it does not ship (a newer
build migrated it): ``migrate`` raises ``SchemaTooNew`` before changing
anything, so a process never starts writing through a schema it does not
know, and ``schema_problem`` lets ``/readyz`` report one that appears later.

The runner holds a PostgreSQL advisory lock for the whole run, so several
replicas starting at the same moment apply each file exactly once: the
first takes the lock and migrates, the others wait and then find nothing
left to do. Each file runs in its own transaction together with its row in
``schema_migrations``, so a failed file leaves no half-applied schema.
"""

import asyncio
import contextlib
import re
from dataclasses import dataclass
from importlib import resources

import asyncpg
import structlog

from shared.pg import DATABASE_DOWN, SCHEMA

log = structlog.get_logger(__name__)

# Any constant unique to Gophermart: the advisory lock key space is per database.
_LOCK_KEY = 0x60F3E4A7
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


class SchemaTooNew(RuntimeError):
    """The database holds migrations this build does not know."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def available() -> list[Migration]:
    """Every migration file shipped with the package, in version order."""
    found = []
    for entry in resources.files("db").joinpath("migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration versions: {versions}")
    return found


async def applied_versions(conn: asyncpg.Connection) -> set[int]:
    exists = await conn.fetchval(
        "SELECT to_regclass($1) IS NOT NULL", f"{SCHEMA}.schema_migrations"
    )
    if not exists:
        return set()
    rows = await conn.fetch(f"SELECT version FROM {SCHEMA}.schema_migrations")
    return {row["version"] for row in rows}


async def pending(conn: asyncpg.Connection) -> list[Migration]:
    done = await applied_versions(conn)
    return [m for m in available() if m.version not in done]


async def unknown(conn: asyncpg.Connection) -> list[str]:
    """Names of applied migrations this build does not ship, in version order."""
    known = {m.version for m in available()}
    exists = await conn.fetchval(
        "SELECT to_regclass($1) IS NOT NULL", f"{SCHEMA}.schema_migrations"
    )
    if not exists:
        return []
    rows = await conn.fetch(
        f"SELECT version, name FROM {SCHEMA}.schema_migrations ORDER BY version"
    )
    return [row["name"] for row in rows if row["version"] not in known]


def too_new_message(names: list[str]) -> str:
    latest = available()[-1].name if available() else "none"
    return (
        f"the database schema is newer than this build: it holds {', '.join(names)}, "
        f"which this build does not know (its latest is {latest}); run the newer build"
    )


async def schema_problem(conn: asyncpg.Connection) -> str | None:
    """Why this build cannot use the schema (too new, or migrations pending), or None."""
    names = await unknown(conn)
    if names:
        return too_new_message(names)
    missing = await pending(conn)
    if missing:
        return "pending migrations: " + ", ".join(m.name for m in missing)
    return None


async def migrate(dsn: str) -> list[str]:
    """Apply what is missing; return the names of the files applied."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
        try:
            await conn.execute(
                f"CREATE SCHEMA IF NOT EXISTS {SCHEMA};"
                f"CREATE TABLE IF NOT EXISTS {SCHEMA}.schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            names = await unknown(conn)
            if names:
                raise SchemaTooNew(too_new_message(names))
            applied = []
            for migration in await pending(conn):
                async with conn.transaction():
                    await conn.execute(f"SET LOCAL search_path TO {SCHEMA}")
                    await conn.execute(migration.sql)
                    await conn.execute(
                        f"INSERT INTO {SCHEMA}.schema_migrations (version, name) VALUES ($1, $2)",
                        migration.version,
                        migration.name,
                    )
                log.info("migration applied", migration=migration.name)
                applied.append(migration.name)
            return applied
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    finally:
        await conn.close()


async def migrate_when_ready(
    dsn: str, stopping: asyncio.Event | None = None, patience: float = 30.0
) -> bool:
    """Migrate, waiting up to ``patience`` seconds for a database still starting.

    Returns False when ``stopping`` is set first (a stop during start-up).
    """
    stopping = stopping or asyncio.Event()
    loop = asyncio.get_running_loop()
    give_up = loop.time() + patience
    while True:
        try:
            await migrate(dsn)
            return True
        except DATABASE_DOWN as exc:
            if loop.time() > give_up:
                raise
            log.warning("database not reachable yet", error=repr(exc))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), 1.0)
        if stopping.is_set():
            return False
