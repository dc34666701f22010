"""Users: registration and the credentials login checks against."""

import asyncpg

_REGISTER = """
WITH new_user AS (
    INSERT INTO users (login, password_hash) VALUES ($1, $2)
    ON CONFLICT (login) DO NOTHING
    RETURNING id
), new_balance AS (
    INSERT INTO balances (user_id) SELECT id FROM new_user
)
SELECT id FROM new_user
"""

# The session generation is read with the hash it belongs to: a login that
# verified a password being changed at that moment gets a token the change
# has already ended.
_CREDENTIALS = "SELECT id, password_hash, session_generation FROM users WHERE login = $1"


async def register(pool: asyncpg.Pool, login: str, password_hash: str) -> int | None:
    """Create the user and their zero balance; None when the login is taken."""
    user_id: int | None = await pool.fetchval(_REGISTER, login, password_hash)
    return user_id


async def credentials(pool: asyncpg.Pool, login: str) -> tuple[int, str, int] | None:
    """(user id, password hash, session generation) for a login, or None."""
    row = await pool.fetchrow(_CREDENTIALS, login)
    return None if row is None else (row["id"], row["password_hash"], row["session_generation"])
