"""Orders as the API sees them: upload and list."""

import enum
from dataclasses import dataclass

import asyncpg

from db.balance import OWNER_GUARD
from db.pages import Listing, boundary_statement, json_keys, page_statement

# The advisory lock on the number (held to commit, as by _WITHDRAW) serialises
# an upload with a withdrawal on the same number, so migration 0006's owner
# check sees the other's committed row.
_UPLOAD = """
WITH guard AS (
    SELECT pg_advisory_xact_lock(hashtextextended('order:' || $1, 0))
), inserted AS (
    INSERT INTO orders (number, user_id) SELECT $1, $2 FROM guard
    ON CONFLICT (number) DO NOTHING
    RETURNING user_id
)
SELECT user_id, true AS created FROM inserted
UNION ALL
SELECT user_id, false FROM orders WHERE number = $1
"""


@dataclass(frozen=True, slots=True)
class OrderNames:
    """The JSON name of each field of a listed order: the API's words (api/orders.py)."""

    number: str
    status: str
    accrual: str
    uploaded_at: str


def listing(names: OrderNames) -> Listing:
    """A user's orders, each written by PostgreSQL as a JSON object under ``names``.

    Accrual only on PROCESSED orders, money as an exact number without
    trailing zeros, the time in UTC to the second. No "HH:MI" format:
    pgbench, which runs these statements too, reads ":MI" as a variable.
    """
    k = json_keys(names)
    item = f"""'{{{k["number"]}' || to_json(number)::text || ',{k["status"]}"' || status || '"'
    || CASE WHEN status = 'PROCESSED' THEN ',{k["accrual"]}' || trim_scale(accrual)::text
       ELSE '' END
    || ',{k["uploaded_at"]}'
    || rtrim(to_json(date_trunc('second', uploaded_at AT TIME ZONE 'UTC'))::text, '"')
    || '+00:00"}}'"""
    return Listing(
        page=page_statement(table="orders", time="uploaded_at", where="", item=item),
        boundary=boundary_statement(table="orders", time="uploaded_at", where=""),
    )


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
        try:
            row = await pool.fetchrow(_UPLOAD, number, user_id)
        except asyncpg.UniqueViolationError as exc:
            # Migration 0006's trigger: another customer paid with points on this number.
            if exc.constraint_name == OWNER_GUARD:
                return Upload.TAKEN
            raise
        if row is not None:
            if row["created"]:
                return Upload.CREATED
            return Upload.ALREADY_YOURS if row["user_id"] == user_id else Upload.TAKEN
    raise RuntimeError(f"order {number} neither inserted nor found")


# Final statuses come from the counters the triggers of migration 0005 keep;
# the rest is the backlog, counted through the queue's partial index.
_COUNT_BY_STATUS = """
SELECT status, count(*) AS n FROM orders WHERE status IN ('NEW', 'PROCESSING') GROUP BY status
UNION ALL
SELECT status, n FROM order_status_counts
"""


async def count_by_status(pool: asyncpg.Pool) -> dict[str, int]:
    """How many orders are in each status (for metrics), without reading every order."""
    rows = await pool.fetch(_COUNT_BY_STATUS)
    return {row["status"]: row["n"] for row in rows}
