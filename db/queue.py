"""Every SQL statement the accrual worker runs: the order queue and the accrual gate.

The queue state lives on the order row. Claiming pushes ``next_attempt_at``
forward by the lease, so an order whose worker died becomes due again by
itself; each statement here is a single autocommit round trip and no
transaction is ever held while the accrual system is being asked.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

import asyncpg

# Channels: the API's insert trigger notifies NEW_ORDER_CHANNEL; a worker that
# got a 429 notifies PAUSE_CHANNEL with "<seconds left> <rate per minute or empty>".
NEW_ORDER_CHANNEL = "gophermart_new_order"
PAUSE_CHANNEL = "gophermart_accrual_pause"

# Every function takes the pool or one connection (tests pass either).
Executor = asyncpg.Connection | asyncpg.Pool

# What a lost connection, a restart or a timeout raises: worth trying again later.
# InternalClientError: asyncpg losing track of a connection killed mid-operation
# (seen during a fast shutdown); it derives from Exception alone.
DB_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError,
    TimeoutError)

FINAL_STATUSES = frozenset({"INVALID", "PROCESSED"})


@dataclass(frozen=True, slots=True)
class ClaimedOrder:
    id: int
    number: str
    attempts: int
    status: str


@dataclass(frozen=True, slots=True)
class GateState:
    """The fleet-wide gate as seen by the database at one moment."""

    pause_left: float  # seconds until calls may resume; 0 when not paused
    rate_per_minute: int | None


@dataclass(frozen=True, slots=True)
class ClaimResult:
    orders: list[ClaimedOrder]
    gate: GateState
    # Seconds until the next not-yet-due order becomes due (None: queue empty).
    next_due_in: float | None


_CLAIM = """
WITH gate AS (
    SELECT CASE WHEN paused_until > now()
                THEN extract(epoch FROM paused_until - now())::float8 ELSE 0 END AS pause_left,
           rate_per_minute
    FROM accrual_gate
), claimed AS (
    UPDATE orders
    SET next_attempt_at = now() + $2::float8 * interval '1 second',
        attempts = attempts + 1
    WHERE ctid = ANY(ARRAY(
        SELECT ctid FROM orders
        WHERE status IN ('NEW', 'PROCESSING') AND next_attempt_at <= now()
          AND NOT EXISTS (SELECT 1 FROM accrual_gate WHERE paused_until > now())
        ORDER BY next_attempt_at
        LIMIT $1
        FOR UPDATE SKIP LOCKED))
    RETURNING id, number, attempts, status
)
SELECT c.id, c.number, c.attempts, c.status, g.pause_left, g.rate_per_minute,
       extract(epoch FROM (
           SELECT next_attempt_at FROM orders
           WHERE status IN ('NEW', 'PROCESSING') AND next_attempt_at > now()
           ORDER BY next_attempt_at LIMIT 1) - now())::float8 AS next_due_in
FROM gate g LEFT JOIN claimed c ON true
"""


async def claim(db: Executor, *, limit: int, lease: float) -> ClaimResult:
    """Lease up to ``limit`` due, non-final orders (none while the gate is paused).

    One round trip also reports the gate and when the next order falls due,
    so a replica that missed a notification still learns of a pause.
    """
    rows = await db.fetch(_CLAIM, limit, lease)
    first = rows[0]
    orders = [ClaimedOrder(r["id"], r["number"], r["attempts"], r["status"])
              for r in rows if r["id"] is not None]
    return ClaimResult(
        orders=orders,
        gate=GateState(first["pause_left"], first["rate_per_minute"]),
        next_due_in=first["next_due_in"],
    )


@dataclass(frozen=True, slots=True)
class Result:
    """What to write back for one claimed order.

    ``status`` None keeps the current status (a failed or paused call);
    ``accrual`` is set for PROCESSED only; ``delay`` is when to ask again;
    ``refund_attempt`` gives the claim's attempt back (a 429 is no failure).
    """

    id: int
    attempts: int  # the attempt count the claim returned: our fencing token
    status: str | None
    accrual: Decimal | None
    delay: float
    refund_attempt: bool = False


@dataclass(frozen=True, slots=True)
class Applied:
    id: int
    number: str
    status: str
    accrual: Decimal | None


# One statement per batch: status, ledger entry and balance together.
# - Only non-final orders change, so re-applying an answer changes nothing.
# - A non-final answer applies only while the claim's attempt count still
#   matches (our lease was not taken over); a final answer is the truth and
#   applies whoever asked.
# - The ledger's UNIQUE (kind, order_number) is the backstop for exactly-once.
# - Balances are upserted in user_id order so concurrent batches cannot deadlock.
_APPLY = """
WITH input AS (
    SELECT * FROM unnest($1::bigint[], $2::int[], $3::text[], $4::numeric[],
                         $5::float8[], $6::bool[])
        AS t(id, attempts, status, accrual, delay, refund)
), upd AS (
    UPDATE orders o
    SET status = coalesce(i.status, o.status),
        accrual = CASE WHEN i.status = 'PROCESSED' THEN i.accrual ELSE o.accrual END,
        next_attempt_at = now() + i.delay * interval '1 second',
        attempts = CASE WHEN i.refund THEN greatest(o.attempts - 1, 0) ELSE o.attempts END
    FROM input i
    WHERE o.id = i.id
      AND o.id = ANY($1::bigint[])
      AND o.status NOT IN ('PROCESSED', 'INVALID')
      AND (i.status IN ('PROCESSED', 'INVALID') OR o.attempts = i.attempts)
    RETURNING o.id, o.number, o.user_id, o.status, o.accrual
), led AS (
    INSERT INTO ledger (user_id, kind, order_number, amount)
    SELECT user_id, 'accrual', number, accrual FROM upd WHERE status = 'PROCESSED'
    ON CONFLICT (kind, order_number) DO NOTHING
    RETURNING user_id, amount
), bal AS (
    INSERT INTO balances AS b (user_id, current)
    SELECT user_id, sum(amount) FROM led GROUP BY user_id ORDER BY user_id
    ON CONFLICT (user_id) DO UPDATE SET current = b.current + excluded.current
    RETURNING b.user_id
)
SELECT id, number, status, accrual FROM upd
"""


async def apply_results(db: Executor, results: Sequence[Result]) -> list[Applied]:
    """Write a batch of answers back in one statement; return the rows changed."""
    if not results:
        return []
    ordered = sorted(results, key=lambda r: r.id)  # a stable lock order
    rows = await db.fetch(
        _APPLY,
        [r.id for r in ordered],
        [r.attempts for r in ordered],
        [r.status for r in ordered],
        [r.accrual for r in ordered],
        [r.delay for r in ordered],
        [r.refund_attempt for r in ordered],
    )
    return [Applied(r["id"], r["number"], r["status"], r["accrual"]) for r in rows]


_RECORD_PAUSE = """
WITH g AS (
    UPDATE accrual_gate
    SET paused_until = greatest(paused_until, now() + $1::float8 * interval '1 second'),
        rate_per_minute = coalesce($2::int, rate_per_minute)
    RETURNING paused_until, rate_per_minute
), s AS (
    SELECT extract(epoch FROM paused_until - now())::float8 AS pause_left, rate_per_minute
    FROM g
)
SELECT pause_left, rate_per_minute,
       pg_notify($3, pause_left::text || ' ' || coalesce(rate_per_minute::text, ''))
FROM s
"""


async def record_pause(db: Executor, *, seconds: float, rate_per_minute: int | None) -> GateState:
    """Pause the whole fleet (never shortening a longer pause) and tell every replica."""
    row = await db.fetchrow(_RECORD_PAUSE, seconds, rate_per_minute, PAUSE_CHANNEL)
    assert row is not None  # accrual_gate always holds its one row
    return GateState(max(row["pause_left"], 0.0), row["rate_per_minute"])


def parse_pause_payload(payload: str) -> GateState | None:
    """The PAUSE_CHANNEL payload ``"<seconds> <rate or empty>"``; None if unreadable."""
    seconds, _, rate = payload.partition(" ")
    try:
        return GateState(max(float(seconds), 0.0), int(rate) if rate.strip() else None)
    except ValueError:
        return None


_READ_GATE = """
SELECT CASE WHEN paused_until > now()
            THEN extract(epoch FROM paused_until - now())::float8 ELSE 0 END AS pause_left,
       rate_per_minute
FROM accrual_gate
"""


async def read_gate(db: Executor) -> GateState:
    row = await db.fetchrow(_READ_GATE)
    assert row is not None
    return GateState(row["pause_left"], row["rate_per_minute"])


# Slots never start before the pause ends; the answer is relative to the
# database's clock, so hosts whose clocks differ still share one schedule.
_RESERVE_SLOTS = """
WITH g AS (
    UPDATE accrual_gate
    SET next_slot = greatest(next_slot, paused_until, now())
                    + $1::int * $2::float8 * interval '1 second'
    RETURNING next_slot
)
SELECT extract(epoch FROM next_slot - now())::float8 - $1::int * $2::float8 AS first_in FROM g
"""


async def reserve_slots(db: Executor, *, count: int, interval: float) -> float:
    """Reserve ``count`` consecutive call slots ``interval`` seconds apart, fleet-wide.

    Returns the seconds from now until the first slot; slot i starts
    ``i * interval`` later.
    """
    value = await db.fetchval(_RESERVE_SLOTS, count, interval)
    return float(value)


async def listen_ping(conn: asyncpg.Connection) -> None:
    """A liveness probe for the listening connection that keeps it listening.

    LISTEN on a channel already listened to is a no-op; using it as the probe
    keeps the connection's last statement a LISTEN for anyone inspecting it.
    """
    await conn.execute(f"LISTEN {NEW_ORDER_CHANNEL}")
