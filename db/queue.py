"""Every SQL statement of the order queue the accrual worker runs (the gate's: db/gate.py).

The queue state lives on the order row. Claiming pushes ``next_attempt_at``
forward by the lease, so an order whose worker died becomes due again by
itself; each statement here is a single autocommit round trip and no
transaction is ever held while the accrual system is being asked.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

import asyncpg

from db.executor import Executor
from db.gate import STATE_COLUMNS, GateState

# The API's insert trigger notifies this channel of every new order.
NEW_ORDER_CHANNEL = "gophermart_new_order"


@dataclass(frozen=True, slots=True)
class ClaimedOrder:
    id: int
    number: str
    attempts: int
    status: str
    age: float = 0.0  # seconds since upload: long-unknown orders are asked ever more rarely


@dataclass(frozen=True, slots=True)
class ClaimResult:
    orders: list[ClaimedOrder]
    gate: GateState
    # Seconds until the next not-yet-due order becomes due (None: queue empty).
    next_due_in: float | None


# Rows still in the queue, and those due now.
_PENDING = "o.status IN ('NEW', 'PROCESSING')"
_DUE = f"{_PENDING} AND o.next_attempt_at <= now()"

# The fair claim. Two lanes: fresh orders (asked fewer than 8 times) before
# any order asked more often. In each lane, walk the users that have due
# orders one index descent at a time (orders_queue is (lane, user_id,
# next_attempt_at)), from a random user round to the same one, at most $1
# users; take a few due orders of each, and rank them turn by turn: every
# user's first order, then every user's second... Within a turn the user with
# fewer due orders goes first (ties by lot), so a claim of one order, the
# usual size when calls are paced, goes to the light user rather than to
# whoever has waited longest: one user's thousands of due orders cost the
# others nothing but their own turn. The work per claim is bounded by $1
# users and 3 x $1 rows whatever the queue holds. The final SELECT locks with
# SKIP LOCKED in that order, so concurrent claimers split the candidates.
# Fresh first must not mean the rest never: one user uploading fresh orders
# without end would keep another user's long-unknown order waiting for ever.
# A long-unknown order that has been due for _PROMOTE_AFTER ranks with the
# fresh ones (where it usually wins its turn: its owner has fewer due).
# When the walk finds one user in one lane (one customer's bulk upload, the
# queue's heaviest moment), nobody else has a due order and the turn-by-turn
# ranking is that user's orders by due time: one range scan of orders_queue
# locks them ("alone") and the ranking and the fallback are skipped.
_PROMOTE_AFTER = "5 seconds"
_CLAIM = f"""
WITH RECURSIVE gate AS (
    SELECT {STATE_COLUMNS} FROM accrual_gate
), start AS (
    SELECT coalesce(floor(random() * (u.top + 1)), 0)::bigint AS id
    FROM (SELECT max(id) AS top FROM users) u
    WHERE NOT EXISTS (SELECT 1 FROM accrual_gate WHERE paused_until > now())
), walk(lane, user_id, wrapped, n) AS (
    SELECT l.lane, f.user_id, f.user_id < s.id, 1
    FROM start s, (VALUES (0::smallint), (1::smallint)) l(lane),
    LATERAL (SELECT coalesce(
        (SELECT o.user_id FROM orders o
         WHERE {_DUE} AND o.lane = l.lane AND o.user_id >= s.id
         ORDER BY o.user_id LIMIT 1),
        (SELECT o.user_id FROM orders o
         WHERE {_DUE} AND o.lane = l.lane AND o.user_id < s.id
         ORDER BY o.user_id LIMIT 1)) AS user_id) f
    WHERE f.user_id IS NOT NULL
    UNION ALL
    SELECT w.lane, f.user_id, w.wrapped OR f.user_id < w.user_id, w.n + 1
    FROM walk w, start s,
    LATERAL (SELECT coalesce(
        (SELECT o.user_id FROM orders o
         WHERE {_DUE} AND o.lane = w.lane AND o.user_id > w.user_id
           AND (NOT w.wrapped OR o.user_id < s.id)
         ORDER BY o.user_id LIMIT 1),
        CASE WHEN NOT w.wrapped THEN
            (SELECT o.user_id FROM orders o
             WHERE {_DUE} AND o.lane = w.lane AND o.user_id < s.id
             ORDER BY o.user_id LIMIT 1) END) AS user_id) f
    WHERE f.user_id IS NOT NULL AND w.n < greatest($1, 32)
), users_found AS (
    SELECT count(*) AS n FROM walk
), alone AS (
    SELECT c.ctid FROM walk w CROSS JOIN LATERAL (
        SELECT o.ctid FROM orders o
        WHERE {_DUE} AND o.lane = w.lane AND o.user_id = w.user_id
        ORDER BY o.next_attempt_at
        LIMIT $1
        FOR UPDATE OF o SKIP LOCKED) c
    WHERE (SELECT n FROM users_found) = 1
), candidates AS (
    SELECT c.id, c.ctid, w.lane, c.next_attempt_at,
           row_number() OVER (PARTITION BY w.lane, w.user_id ORDER BY c.next_attempt_at) AS turn,
           count(*) OVER (PARTITION BY w.lane, w.user_id) AS backlog
    FROM walk w CROSS JOIN LATERAL (
        SELECT o.id, o.ctid, o.next_attempt_at FROM orders o
        WHERE {_DUE} AND o.lane = w.lane AND o.user_id = w.user_id
        ORDER BY o.next_attempt_at
        LIMIT (SELECT ceil(3.0 * $1 / n) FROM users_found)) c
    WHERE (SELECT n FROM users_found) > 1
), picked AS (
    SELECT ARRAY(SELECT ctid FROM candidates
                 ORDER BY CASE WHEN lane = 0
                                 OR next_attempt_at < now() - interval '{_PROMOTE_AFTER}'
                               THEN 0 ELSE 1 END,
                          turn, backlog, random() LIMIT 3 * $1) AS ctids
), locked AS (
    SELECT o.ctid FROM orders o
    WHERE o.ctid = ANY(ARRAY(SELECT unnest(ctids) FROM picked)) AND {_DUE}
    ORDER BY array_position((SELECT ctids FROM picked), o.ctid)
    LIMIT $1
    FOR UPDATE OF o SKIP LOCKED
), more AS (
    -- Claimers running at the same moment see the same candidates; whoever
    -- finds them taken fills the batch first come, first served instead.
    SELECT o.ctid FROM orders o
    WHERE {_DUE} AND o.ctid <> ALL(ARRAY(SELECT ctid FROM locked))
      AND (SELECT n FROM users_found) > 1
    ORDER BY o.next_attempt_at
    LIMIT (SELECT $1 - count(*) FROM locked)
    FOR UPDATE OF o SKIP LOCKED
), claimed AS (
    UPDATE orders o
    SET next_attempt_at = now() + $2::float8 * interval '1 second',
        attempts = attempts + 1
    WHERE o.ctid = ANY(ARRAY(SELECT ctid FROM alone
                             UNION ALL SELECT ctid FROM locked
                             UNION ALL SELECT ctid FROM more))
    RETURNING o.id, o.number, o.attempts, o.status,
              extract(epoch FROM now() - o.uploaded_at)::float8 AS age
)
SELECT c.id, c.number, c.attempts, c.status, c.age, g.pause_left, g.rate_per_minute, g.rate_left,
       extract(epoch FROM (
           SELECT next_attempt_at FROM orders o
           WHERE {_PENDING} AND o.next_attempt_at > now()
           ORDER BY next_attempt_at LIMIT 1) - now())::float8 AS next_due_in
FROM gate g LEFT JOIN claimed c ON true
"""


async def claim(db: Executor, *, limit: int, lease: float) -> ClaimResult:
    """Lease up to ``limit`` due, non-final orders, fairly (none while the gate is paused).

    One round trip also reports the gate and when the next order falls due,
    so a replica that missed a notification still learns of a pause.
    """
    rows = await db.fetch(_CLAIM, max(limit, 1), lease)
    first = rows[0]
    orders = [
        ClaimedOrder(r["id"], r["number"], r["attempts"], r["status"], r["age"])
        for r in rows
        if r["id"] is not None
    ]
    return ClaimResult(
        orders=orders,
        gate=GateState(first["pause_left"], first["rate_per_minute"], first["rate_left"]),
        next_due_in=first["next_due_in"],
    )


@dataclass(frozen=True, slots=True)
class Result:
    """What to write back for one claimed order.

    ``status`` None keeps the current status (a failed or paused call);
    ``accrual`` is set for PROCESSED only; ``delay`` is when to ask again;
    ``refund_attempt`` gives the claim's attempt back (a 429 is no failure);
    ``problem`` records why an answer was set aside (None clears it).
    """

    id: int
    attempts: int  # the attempt count the claim returned: our fencing token
    status: str | None
    accrual: Decimal | None
    delay: float
    refund_attempt: bool = False
    problem: str | None = None


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
                         $5::float8[], $6::bool[], $7::text[])
        AS t(id, attempts, status, accrual, delay, refund, problem)
), upd AS (
    UPDATE orders o
    SET status = coalesce(i.status, o.status),
        accrual = CASE WHEN i.status = 'PROCESSED' THEN i.accrual ELSE o.accrual END,
        next_attempt_at = now() + i.delay * interval '1 second',
        attempts = CASE WHEN i.refund THEN greatest(o.attempts - 1, 0) ELSE o.attempts END,
        problem = i.problem
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
        [r.problem for r in ordered],
    )
    return [Applied(r["id"], r["number"], r["status"], r["accrual"]) for r in rows]


# Orders set aside because their answer could not be applied, for operators.
_PROBLEMS = """
SELECT o.number, (SELECT login FROM users WHERE id = o.user_id) AS login, o.status,
       o.attempts, o.problem,
       greatest(extract(epoch FROM o.next_attempt_at - now())::float8, 0) AS due_in
FROM orders o
WHERE o.problem IS NOT NULL AND o.status IN ('NEW', 'PROCESSING')
ORDER BY o.id
LIMIT $1
"""


@dataclass(frozen=True, slots=True)
class ProblemOrder:
    """An order whose answer could not be applied, as operators see it."""

    number: str
    login: str
    status: str
    attempts: int
    problem: str  # why its answer was set aside
    due_in: float  # seconds until it is asked again


async def problem_orders(db: Executor, limit: int = 100) -> list[ProblemOrder]:
    rows = await db.fetch(_PROBLEMS, limit)
    return [ProblemOrder(**dict(r)) for r in rows]


async def listen_ping(conn: asyncpg.Connection) -> None:
    """A liveness probe for the listening connection that keeps it listening.

    LISTEN on a channel already listened to is a no-op; using it as the probe
    keeps the connection's last statement a LISTEN for anyone inspecting it.
    """
    await conn.execute(f"LISTEN {NEW_ORDER_CHANNEL}")
