"""Session revocation: the per-user generation and the logged-out session ids.

Every statement that ends a session announces the user's id on
``SESSIONS_CHANNEL`` in the same transaction, so every API process drops what
it cached for that user as soon as the change commits.
"""

import asyncpg

SESSIONS_CHANNEL = "gophermart_sessions"

# Old rows purged per logout: the table stays as small as the set of
# logged-out tokens that have not expired yet, without a sweeper process.
_PURGE_BATCH = 100

_CURRENT = """
SELECT session_generation = $2
       AND NOT EXISTS (SELECT 1 FROM revoked_sessions WHERE session_id = $3)
FROM users WHERE id = $1
"""

_REVOKE = f"""
WITH revoked AS (
    INSERT INTO revoked_sessions (session_id, user_id, expires_at)
    VALUES ($1, $2, to_timestamp($3))
    ON CONFLICT (session_id) DO NOTHING
), purged AS (
    DELETE FROM revoked_sessions WHERE session_id IN (
        SELECT session_id FROM revoked_sessions WHERE expires_at < now()
        LIMIT {_PURGE_BATCH})
)
SELECT pg_notify('{SESSIONS_CHANNEL}', $2::text)
"""

_PASSWORD_HASH = """
SELECT password_hash FROM users
WHERE id = $1 AND session_generation = $2
  AND NOT EXISTS (SELECT 1 FROM revoked_sessions WHERE session_id = $3)
"""

# Compare-and-set on the generation the caller's token carries: of two
# concurrent changes only the first commits; the second finds its token ended.
_CHANGE_PASSWORD = f"""
WITH changed AS (
    UPDATE users SET password_hash = $4, session_generation = session_generation + 1
    WHERE id = $1 AND session_generation = $2
      AND NOT EXISTS (SELECT 1 FROM revoked_sessions WHERE session_id = $3)
    RETURNING session_generation
)
SELECT session_generation, pg_notify('{SESSIONS_CHANNEL}', $1::text) FROM changed
"""


async def is_current(pool: asyncpg.Pool, user_id: int, generation: int, session_id: bytes) -> bool:
    """True while the user exists, has not changed password since, and kept this session."""
    current: bool | None = await pool.fetchval(_CURRENT, user_id, generation, session_id)
    return bool(current)


async def revoke(pool: asyncpg.Pool, user_id: int, session_id: bytes, expires_at: int) -> None:
    """End one session (logout); ``expires_at`` is when its token would expire anyway."""
    await pool.execute(_REVOKE, session_id, user_id, expires_at)


async def password_hash(
    pool: asyncpg.Pool, user_id: int, generation: int, session_id: bytes
) -> str | None:
    """The user's password hash, or None when the calling session has ended meanwhile."""
    found: str | None = await pool.fetchval(_PASSWORD_HASH, user_id, generation, session_id)
    return found


async def change_password(
    pool: asyncpg.Pool, user_id: int, generation: int, session_id: bytes, new_hash: str
) -> int | None:
    """Store the new hash and end every session; the new generation, or None if ended."""
    new_generation: int | None = await pool.fetchval(
        _CHANGE_PASSWORD, user_id, generation, session_id, new_hash
    )
    return new_generation
