"""Every SQL statement of the fleet-wide accrual gate, one row in ``accrual_gate``.

A 429 from the accrual system pauses every worker replica: the pause, the
learned rate limit and the shared call-slot schedule live in that row, so
replicas on different hosts agree on them by the database's clock. Every
statement here is a single autocommit round trip; replicas hear of a new
pause or an operator's reset through PAUSE_CHANNEL.
"""

import math
from dataclasses import dataclass
from datetime import datetime

from db.executor import Executor

# A worker that got a 429 notifies "<seconds left> <rate per minute or empty>
# <rate seconds left>"; an operator's reset notifies RESET_PAYLOAD.
PAUSE_CHANNEL = "gophermart_accrual_pause"


@dataclass(frozen=True, slots=True)
class GateState:
    """The fleet-wide gate as seen by the database at one moment."""

    pause_left: float  # seconds until calls may resume; 0 when not paused
    rate_per_minute: int | None  # the learned limit while it holds; None: unpaced
    rate_left: float = 0.0  # seconds until the learned limit is forgotten


# A 429 pauses the fleet for $1 seconds (already clamped to the floor and the
# ceiling by the caller), never shortening a running pause. A 429 that comes
# back within 10 s (or one pause length, if longer) after the last pause ended
# is a repeat: the pause doubles (up to the ceiling, $4 seconds) and a strike
# is counted. A 429 during a pause was in flight when it began and changes
# nothing but the end. A rate in the answer ($2) is believed for $5 seconds, then forgotten.
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


# GateState's columns, read from the row as of now(); the claim reads them too.
STATE_COLUMNS = """
CASE WHEN paused_until > now()
     THEN extract(epoch FROM paused_until - now())::float8 ELSE 0 END AS pause_left,
CASE WHEN rate_until > now() THEN rate_per_minute END AS rate_per_minute,
CASE WHEN rate_until > now() AND rate_per_minute IS NOT NULL
     THEN extract(epoch FROM rate_until - now())::float8 ELSE 0 END AS rate_left
"""

_READ_GATE = f"SELECT {STATE_COLUMNS} FROM accrual_gate"


async def read_gate(db: Executor) -> GateState:
    """The gate as it stands (a worker's start learns a running pause or limit)."""
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


_GATE_REPORT = f"""
SELECT {STATE_COLUMNS},
       CASE WHEN isfinite(paused_from) THEN paused_from END AS paused_from,
       CASE WHEN isfinite(paused_until) THEN paused_until END AS paused_until,
       strikes, last_429_at
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
