"""Throttle counters in PostgreSQL, shared by every API process and replica.

The functions and the table are in migrations 0006, 0016 and 0017; each call here is one
statement, so concurrent attempts are counted one after another on the row
of their key and no check-then-act gap exists between processes.
"""

from datetime import timedelta

import asyncpg

_RESERVE_LOGIN = "SELECT reserve_login_attempt_counted($1, $2, $3, $4, $5, $6)"

# Success forgets the pair's failures and gives back the login-wide and the
# address's hits; an attempt that was never verified gives back all three. The
# function takes the rows in the order reserving does (migration 0017).
_REFUND_LOGIN = "SELECT refund_login_attempt($1, $2, $3)"

# The failures (and attempts in progress) in their windows of the pair ($1, $2)
# and of the address $2 on any logins. A read: it leaves nothing behind.
_STANDING = """
SELECT coalesce(max(hits) FILTER (WHERE key = 'pair:' || $2 || ' ' || $1), 0),
       coalesce(max(hits) FILTER (WHERE key = 'address:' || $2), 0)
FROM throttle
WHERE key IN ('address:' || $2, 'pair:' || $2 || ' ' || $1) AND window_end > clock_timestamp()
"""

_HIT = """
INSERT INTO throttle AS r (key, hits, window_end) VALUES ($1, 1, clock_timestamp() + $2)
ON CONFLICT (key) DO UPDATE SET
    hits = CASE WHEN r.window_end <= clock_timestamp() THEN 1 ELSE r.hits + 1 END,
    window_end = CASE WHEN r.window_end <= clock_timestamp() THEN clock_timestamp() + $2
                      ELSE r.window_end END
RETURNING hits, extract(epoch FROM window_end - clock_timestamp())::float8
"""

_SWEEP = """
DELETE FROM throttle WHERE window_end < clock_timestamp() AND next_at < clock_timestamp()
"""


async def reserve_login(
    pool: asyncpg.Pool,
    login: str,
    address: str,
    *,
    pair_limit: int,
    login_limit: int,
    free_failures: int,
    window: float,
) -> float | None:
    """None when the attempt may go ahead (and is now counted), else seconds to wait."""
    wait: float | None = await pool.fetchval(
        _RESERVE_LOGIN,
        login,
        address,
        pair_limit,
        login_limit,
        free_failures,
        timedelta(seconds=window),
    )
    return wait


async def login_standing(pool: asyncpg.Pool, login: str, address: str) -> tuple[int, int]:
    """(failures of the pair, failures of the address on any logins), in their windows."""
    row = await pool.fetchrow(_STANDING, login, address)
    assert row is not None
    return int(row[0]), int(row[1])


async def refund_login(pool: asyncpg.Pool, login: str, address: str, *, succeeded: bool) -> None:
    await pool.execute(_REFUND_LOGIN, login, address, succeeded)


async def hit(pool: asyncpg.Pool, key: str, limit: int, window: float) -> float | None:
    """Count one hit on ``key``; None within ``limit`` per window, else seconds to wait.

    A refused hit is still counted: hammering a closed window does not open it sooner,
    but it cannot push the end of the window either.
    """
    row = await pool.fetchrow(_HIT, key, timedelta(seconds=window))
    assert row is not None
    hits, remaining = row
    return None if hits <= limit else max(float(remaining), 0.0)


async def sweep(pool: asyncpg.Pool) -> int:
    """Delete rows that no longer hold anyone back; how many."""
    status = await pool.execute(_SWEEP)
    return int(status.split()[-1])
