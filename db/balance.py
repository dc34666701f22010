"""Balance and withdrawals: the guarded debit and what the user reads."""

import enum
from dataclasses import dataclass
from decimal import Decimal

import asyncpg

from db.pages import Listing, boundary_statement, json_keys, page_statement

# One statement, so one atomic unit: the debit happens only when the balance
# covers it (the row lock serialises concurrent debits, CHECK is the
# backstop), and the ledger entry's UNIQUE (kind, order_number) aborts the
# whole statement, debit included, when the order number was already paid.
#
# The advisory lock on the number (held to commit, as by db/orders.py's upload)
# serialises a withdrawal with an upload of the same number, so migration
# 0006's owner check sees the other's committed row.
_WITHDRAW = """
WITH guard AS (
    SELECT pg_advisory_xact_lock(hashtextextended('order:' || $2, 0))
), debit AS (
    UPDATE balances SET current = current - $3, withdrawn = withdrawn + $3
    WHERE user_id = $1 AND current >= $3 AND EXISTS (SELECT FROM guard)
    RETURNING user_id
)
INSERT INTO ledger (user_id, kind, order_number, amount)
SELECT user_id, 'withdrawal', $2, $3 FROM debit
RETURNING id
"""

# The kind is a parameter: a literal 'withdrawal' would let a generic plan
# made while there were no withdrawals walk all of ledger_withdrawals_by_user
# (predicate kind = 'withdrawal') instead of looking the number up.
_EXISTING = """
SELECT user_id, amount FROM ledger WHERE kind = $2 AND order_number = $1
"""

_BALANCE = "SELECT current, withdrawn FROM balances WHERE user_id = $1"

_WITHDRAWAL_ROWS = "kind = 'withdrawal' AND "


@dataclass(frozen=True, slots=True)
class WithdrawalNames:
    """The JSON name of each field of a listed withdrawal: the API's words (api/balance.py)."""

    order_number: str
    amount: str
    created_at: str


def withdrawals(names: WithdrawalNames) -> Listing:
    """A user's withdrawals, each written by PostgreSQL as a JSON object under ``names``.

    Money and time are written as in ``db.orders.listing``.
    """
    k = json_keys(names)
    item = f"""'{{{k["order_number"]}' || to_json(order_number)::text
    || ',{k["amount"]}' || trim_scale(amount)::text
    || ',{k["created_at"]}'
    || rtrim(to_json(date_trunc('second', created_at AT TIME ZONE 'UTC'))::text, '"')
    || '+00:00"}}'"""
    return Listing(
        page=page_statement(table="ledger", time="created_at", where=_WITHDRAWAL_ROWS, item=item),
        boundary=boundary_statement(table="ledger", time="created_at", where=_WITHDRAWAL_ROWS),
    )


# Raised by migration 0006's trigger: the number belongs to another customer's order.
OWNER_GUARD = "order_number_owner"


class Withdrawal(enum.Enum):
    DONE = "done"
    INSUFFICIENT = "not enough points"
    CONFLICT = "order already paid with points"
    NOT_YOURS = "order number uploaded by another customer"


async def withdraw(pool: asyncpg.Pool, user_id: int, order: str, amount: Decimal) -> Withdrawal:
    """Spend points on an order; a repeat of the same user, order and sum is a no-op."""
    try:
        if await pool.fetchval(_WITHDRAW, user_id, order, amount) is not None:
            return Withdrawal.DONE
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name == OWNER_GUARD:
            return Withdrawal.NOT_YOURS
    existing = await pool.fetchrow(_EXISTING, order, "withdrawal")
    if existing is None:
        return Withdrawal.INSUFFICIENT
    if existing["user_id"] == user_id and existing["amount"] == amount:
        return Withdrawal.DONE
    return Withdrawal.CONFLICT


@dataclass(frozen=True, slots=True)
class Balance:
    current: Decimal  # points the user may spend
    withdrawn: Decimal  # points spent so far


async def balance(pool: asyncpg.Pool, user_id: int) -> Balance:
    row = await pool.fetchrow(_BALANCE, user_id)
    if row is None:
        return Balance(Decimal(0), Decimal(0))
    return Balance(row["current"], row["withdrawn"])
