"""The PostgreSQL connection pool both processes use."""

from typing import Any

import asyncpg

SCHEMA = "gophermart"


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
        **kwargs,
    )
    assert pool is not None
    return pool
