"""Users: registration and the credentials login checks against."""

from dataclasses import dataclass, field

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


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a login is checked against, and the session generation a token gets."""

    user_id: int
    password_hash: str = field(repr=False)  # no hash in a log line or a traceback
    session_generation: int


async def credentials(pool: asyncpg.Pool, login: str) -> Credentials | None:
    """The credentials of a login, or None when there is no such user."""
    row = await pool.fetchrow(_CREDENTIALS, login)
    if row is None:
        return None
    return Credentials(row["id"], row["password_hash"], row["session_generation"])
