"""Orders as the API sees them: upload and list."""

import enum
from typing import Any

import asyncpg

_UPLOAD = """
WITH inserted AS (
    INSERT INTO orders (number, user_id) VALUES ($1, $2)
    ON CONFLICT (number) DO NOTHING
    RETURNING user_id
)
SELECT user_id, true AS created FROM inserted
UNION ALL
SELECT user_id, false FROM orders WHERE number = $1
"""

_LIST = """
SELECT number, status, accrual, uploaded_at
FROM orders WHERE user_id = $1
ORDER BY uploaded_at DESC, id DESC
"""


class Upload(enum.Enum):
    CREATED = "created"
    ALREADY_YOURS = "already yours"
    TAKEN = "taken by another user"


async def upload(pool: asyncpg.Pool, number: str, user_id: int) -> Upload:
    """Claim an order number for a user; the unique index decides races.

    The statement's snapshot cannot see a row a concurrent transaction
    committed while ON CONFLICT waited for it, so an empty answer means
    "look again".
    """
    for _ in range(3):
        row = await pool.fetchrow(_UPLOAD, number, user_id)
        if row is not None:
            if row["created"]:
                return Upload.CREATED
            return Upload.ALREADY_YOURS if row["user_id"] == user_id else Upload.TAKEN
    raise RuntimeError(f"order {number} neither inserted nor found")


async def list_for_user(pool: asyncpg.Pool, user_id: int) -> list[dict[str, Any]]:
    """The user's orders, newest upload first, in the API's JSON shape."""
    result = []
    for row in await pool.fetch(_LIST, user_id):
        item: dict[str, Any] = {"number": row["number"], "status": row["status"]}
        if row["status"] == "PROCESSED":
            item["accrual"] = row["accrual"]
        item["uploaded_at"] = row["uploaded_at"]
        result.append(item)
    return result


async def count_by_status(pool: asyncpg.Pool) -> dict[str, int]:
    """How many orders are in each status (for metrics; a full scan)."""
    rows = await pool.fetch("SELECT status, count(*) AS n FROM orders GROUP BY status")
    return {row["status"]: row["n"] for row in rows}
