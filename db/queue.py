"""Every SQL statement the accrual worker runs: the order queue and the accrual gate.

The queue state lives on the order row. Claiming pushes ``next_attempt_at``
forward by the lease, so an order whose worker died becomes due again by
itself; each statement here is a single autocommit round trip and no
transaction is ever held while the accrual system is being asked.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
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
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)

FINAL_STATUSES = frozenset({"INVALID", "PROCESSED"})


@dataclass(frozen=True, slots=True)
class ClaimedOrder:
    id: int
    number: str
    attempts: int
    status: str
    age: float = 0.0  # seconds since upload: long-unknown orders are asked ever more rarely


@dataclass(frozen=True, slots=True)
class GateState:
    """The fleet-wide gate as seen by the database at one moment."""

    pause_left: float  # seconds until calls may resume; 0 when not paused
    rate_per_minute: int | None  # the learned limit while it holds; None: unpaced
    rate_left: float = 0.0  # seconds until the learned limit is forgotten


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
_PROMOTE_AFTER = "5 seconds"
_CLAIM = f"""
WITH RECURSIVE gate AS (
    SELECT CASE WHEN paused_until > now()
                THEN extract(epoch FROM paused_until - now())::float8 ELSE 0 END AS pause_left,
           CASE WHEN rate_until > now() THEN rate_per_minute END AS rate_per_minute,
           CASE WHEN rate_until > now() AND rate_per_minute IS NOT NULL
                THEN extract(epoch FROM rate_until - now())::float8 ELSE 0 END AS rate_left
    FROM accrual_gate
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
), candidates AS (
    SELECT c.id, c.ctid, w.lane, c.next_attempt_at,
           row_number() OVER (PARTITION BY w.lane, w.user_id ORDER BY c.next_attempt_at) AS turn,
           count(*) OVER (PARTITION BY w.lane, w.user_id) AS backlog
    FROM walk w CROSS JOIN LATERAL (
        SELECT o.id, o.ctid, o.next_attempt_at FROM orders o
        WHERE {_DUE} AND o.lane = w.lane AND o.user_id = w.user_id
        ORDER BY o.next_attempt_at
        LIMIT (SELECT ceil(3.0 * $1 / n) FROM users_found)) c
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
      AND NOT EXISTS (SELECT 1 FROM accrual_gate WHERE paused_until > now())
    ORDER BY o.next_attempt_at
    LIMIT (SELECT $1 - count(*) FROM locked)
    FOR UPDATE OF o SKIP LOCKED
), claimed AS (
    UPDATE orders o
    SET next_attempt_at = now() + $2::float8 * interval '1 second',
        attempts = attempts + 1
    WHERE o.ctid = ANY(ARRAY(SELECT ctid FROM locked UNION ALL SELECT ctid FROM more))
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


# A 429 pauses the fleet for $1 seconds (already clamped to the floor and the
# ceiling by the caller), never shortening a running pause. A 429 that comes
# back within 10 s (or one pause length, if longer) after the last pause ended
# is a repeat: the pause doubles (up to the ceiling, $4 seconds) and a strike
# is counted. A
# 429 during a pause was in flight when it began and changes nothing but the
# end. A rate in the answer ($2) is believed for $5 seconds, then forgotten.
_RECORD_PAUSE = """
WITH cur AS (
    SELECT paused_until AS old_until,
           paused_until > now() AS pausing,
           CASE WHEN isfinite(paused_from) AND isfinite(paused_until)
                THEN now() < paused_until + greatest(paused_until - paused_from,
                                                     interval '10 seconds')
                ELSE false END AS repeat,
           CASE WHEN isfinite(paused_from) AND isfinite(paused_until)
                THEN extract(epoch FROM paused_until - paused_from)::float8
                ELSE 0 END AS last_pause
    FROM accrual_gate FOR UPDATE
), nxt AS (
    SELECT c.pausing, c.repeat, CASE
            WHEN c.pausing THEN greatest(c.old_until, now() + $1::float8 * interval '1 second')
            WHEN c.repeat THEN now() + least($4::float8, greatest($1::float8, 2 * c.last_pause))
                                       * interval '1 second'
            ELSE now() + $1::float8 * interval '1 second' END AS until
    FROM cur c
), g AS (
    UPDATE accrual_gate a
    SET paused_from = CASE WHEN n.pausing THEN a.paused_from ELSE now() END,
        paused_until = n.until,
        strikes = CASE WHEN n.pausing THEN a.strikes WHEN n.repeat THEN a.strikes + 1 ELSE 1 END,
        rate_per_minute = coalesce($2::int, a.rate_per_minute),
        -- A limit runs from the end of the pause, not from the 429: a pause
        -- longer than the limit's life must not end in an unpaced burst.
        rate_until = CASE WHEN $2::int IS NOT NULL THEN n.until + $5::float8 * interval '1 second'
                          WHEN a.rate_until > now() THEN greatest(a.rate_until, n.until)
                          ELSE a.rate_until END,
        last_429_at = now()
    FROM nxt n
    RETURNING a.paused_until, a.rate_per_minute, a.rate_until
), s AS (
    SELECT greatest(extract(epoch FROM paused_until - now())::float8, 0) AS pause_left,
           CASE WHEN rate_until > now() THEN rate_per_minute END AS rate_per_minute,
           CASE WHEN rate_until > now() AND rate_per_minute IS NOT NULL
                THEN extract(epoch FROM rate_until - now())::float8 ELSE 0 END AS rate_left
    FROM g
)
SELECT pause_left, rate_per_minute, rate_left,
       pg_notify($3, pause_left::text || ' ' || coalesce(rate_per_minute::text, '')
                     || ' ' || rate_left::text)
FROM s
"""


async def record_pause(
    db: Executor,
    *,
    seconds: float,
    rate_per_minute: int | None,
    ceiling: float = 600.0,
    rate_ttl: float = 600.0,
) -> GateState:
    """Pause the whole fleet (never shortening a longer pause) and tell every replica.

    ``seconds`` is the pause the answer asked for, already clamped; a repeat
    429 doubles the last pause up to ``ceiling``; a rate lasts ``rate_ttl``
    past the pause's end.
    """
    row = await db.fetchrow(
        _RECORD_PAUSE, seconds, rate_per_minute, PAUSE_CHANNEL, max(ceiling, seconds), rate_ttl
    )
    assert row is not None  # accrual_gate always holds its one row
    return GateState(max(row["pause_left"], 0.0), row["rate_per_minute"], row["rate_left"])


# The PAUSE_CHANNEL payload that says "the gate was reset by an operator".
RESET_PAYLOAD = "reset"


def parse_pause_payload(payload: str) -> GateState | None:
    """The PAUSE_CHANNEL payload ``"<seconds> <rate or empty> <rate seconds left>"``.

    None if unreadable (and for RESET_PAYLOAD, which the listener handles).
    """
    seconds, _, rest = payload.partition(" ")
    rate, _, rate_left = rest.partition(" ")
    try:
        pause = float(seconds)
        left = float(rate_left) if rate_left.strip() else 0.0
        if not (math.isfinite(pause) and math.isfinite(left)):
            return None
        return GateState(max(pause, 0.0), int(rate) if rate.strip() else None, max(left, 0.0))
    except ValueError:
        return None


_READ_GATE = """
SELECT CASE WHEN paused_until > now()
            THEN extract(epoch FROM paused_until - now())::float8 ELSE 0 END AS pause_left,
       CASE WHEN rate_until > now() THEN rate_per_minute END AS rate_per_minute,
       CASE WHEN rate_until > now() AND rate_per_minute IS NOT NULL
                THEN extract(epoch FROM rate_until - now())::float8 ELSE 0 END AS rate_left
FROM accrual_gate
"""


async def read_gate(db: Executor) -> GateState:
    row = await db.fetchrow(_READ_GATE)
    assert row is not None
    return GateState(row["pause_left"], row["rate_per_minute"], row["rate_left"])


@dataclass(frozen=True, slots=True)
class GateReport:
    """Everything the gate row says, for operators (``gophermart-admin gate show``)."""

    pause_left: float
    paused_from: datetime | None
    paused_until: datetime | None
    strikes: int
    rate_per_minute: int | None  # the learned limit while it holds
    rate_left: float  # seconds until the learned limit is forgotten
    last_429_at: datetime | None


_GATE_REPORT = """
SELECT CASE WHEN paused_until > now()
            THEN extract(epoch FROM paused_until - now())::float8 ELSE 0 END AS pause_left,
       CASE WHEN isfinite(paused_from) THEN paused_from END AS paused_from,
       CASE WHEN isfinite(paused_until) THEN paused_until END AS paused_until,
       strikes,
       CASE WHEN rate_until > now() THEN rate_per_minute END AS rate_per_minute,
       CASE WHEN rate_until > now() AND rate_per_minute IS NOT NULL
                THEN extract(epoch FROM rate_until - now())::float8 ELSE 0 END AS rate_left,
       last_429_at
FROM accrual_gate
"""


async def gate_report(db: Executor) -> GateReport:
    row = await db.fetchrow(_GATE_REPORT)
    assert row is not None
    return GateReport(**dict(row))


# Lift the pause, forget the learned rate and the strikes, free the slot
# schedule, make the orders put back until the pause's end due now, and tell
# every replica at once.
_RESET_GATE = """
WITH g AS (
    UPDATE accrual_gate a
    SET paused_until = '-infinity', paused_from = '-infinity', strikes = 0,
        rate_per_minute = NULL, rate_until = '-infinity', next_slot = '-infinity'
    FROM (SELECT paused_until FROM accrual_gate) old
    RETURNING old.paused_until AS old_until
), released AS (
    UPDATE orders SET next_attempt_at = now()
    WHERE status IN ('NEW', 'PROCESSING') AND next_attempt_at > now()
      AND next_attempt_at <= (SELECT old_until FROM g) + interval '1 second'
    RETURNING 1
)
SELECT (SELECT count(*) FROM released) AS released, pg_notify($1, $2) FROM g
"""


async def reset_gate(db: Executor) -> int:
    """Reset the gate; the number of orders that were waiting for the pause to end."""
    released: int = await db.fetchval(_RESET_GATE, PAUSE_CHANNEL, RESET_PAYLOAD)
    return released


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


async def problem_orders(db: Executor, limit: int = 100) -> list[asyncpg.Record]:
    return await db.fetch(_PROBLEMS, limit)


# Slots never start before the pause ends; the answer is relative to the
# database's clock, so hosts whose clocks differ still share one schedule.
# The schedule never runs more than 64 slots of the current interval ahead:
# slots reserved under a tiny limit (one a minute, say) that has since been
# forgotten or replaced must not hold back the calls of the faster one.
_RESERVE_SLOTS = """
WITH g AS (
    UPDATE accrual_gate
    SET next_slot = greatest(least(next_slot, now() + 64 * $2::float8 * interval '1 second'),
                             paused_until, now())
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
