"""The PostgreSQL connection pool both processes use."""

from typing import Any

import asyncpg

SCHEMA = "gophermart"


async def _keep_session(_: asyncpg.Connection) -> None:
    """Release a connection without asyncpg's default reset round trip.

    The default runs ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
    RESET ALL`` on every release: a second round trip for each one-statement
    request. Nothing that borrows from these pools leaves session state behind
    (migrations and LISTEN use connections of their own), and asyncpg still
    rolls back a transaction left open and drops listeners before calling this.
    """


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 10,
                      connect_timeout: float = 5.0, **kwargs: Any) -> asyncpg.Pool:
    """A pool whose connections resolve names in Gophermart's own schema.

    ``command_timeout`` bounds every query so that a stalled database turns
    into a prompt error rather than a hanging request.
    """
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        timeout=connect_timeout,
        command_timeout=connect_timeout,
        server_settings={"search_path": SCHEMA, "application_name": "gophermart"},
        reset=_keep_session,
        **kwargs,
    )
    assert pool is not None
    return pool
