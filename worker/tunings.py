"""The worker's timing and sizing constants, named, each with the reason for its value.

These are not settings: operators have no reason to change them, and tests
that must make time pass faster pass their own ``Tunings``. Everything an
operator may tune (concurrency, batch, lease, poll interval, the gate's
policy) is a setting and lives in ``LoopConfig`` and ``GatePolicy``.
"""

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Tunings:
    # -- claiming -----------------------------------------------------------
    # Paced, a process holds at most this many seconds of call slots' worth of
    # orders: an order claimed now is asked within about this long, so a fresh
    # order never waits behind a long local backlog (the fair claim decides).
    paced_buffer: float = 1.0
    # ... and never more than this share of the lease: every order it holds
    # gets a slot well before its lease ends and another replica takes it.
    paced_lease_share: float = 0.25
    # A failed claim is retried after first * 2**failures seconds (capped by
    # claim_retry_max and the poll interval): quick after a blip, no hammering.
    claim_retry_first: float = 0.1
    claim_retry_max: float = 5.0
    # The least sleep before an order the claim said falls due: a due time of
    # "now" (or just past) must not turn the claim loop into a busy loop.
    due_min_wait: float = 0.005
    # Woken this long after the soonest order put back falls due, so that the
    # claim (on the database's clock) finds it due rather than just not yet.
    due_slack: float = 0.005

    # -- asking -------------------------------------------------------------
    # A call must be answered within this share of the lease after the claim,
    # leaving the other half to write the answer back before the lease ends.
    ask_lease_share: float = 0.5

    # -- writing back -------------------------------------------------------
    # At most this many answers per statement: one statement stays short (its
    # locks and its unnest arrays), however far the writer fell behind.
    write_batch_max: int = 1000
    # An answer waits at most this long for others to share its statement
    # while the writer is idle (0: written at once; while a statement is
    # running, answers gather anyway). Answers are also written as soon as
    # write_batch_max of them wait, and every one on the way out.
    write_wait: float = 0.0
    # A batch is tried this many times (a lost connection, a deadlock) before
    # its orders are left to come back when their leases end.
    write_tries: int = 3
    # ... waiting write_retry_step * try seconds between tries.
    write_retry_step: float = 0.05
    # The database's reason kept with an answer set aside (orders.problem):
    # enough for the constraint's name and message, not an unbounded text.
    problem_max_chars: int = 500

    # -- the gate -----------------------------------------------------------
    # A reserved call slot used this late (or one interval, if shorter) would
    # bunch calls together: let it go and reserve afresh.
    stale_slot: float = 0.25
    # Reserve at most about this many seconds of slots per round trip: few
    # round trips, and few slots lost when the limit or a pause changes.
    reserve_horizon: float = 1.0
    # A pause heard again (from a claim, a notification and our own 429) ends
    # within this many seconds of the one known: the same pause, not news.
    same_pause: float = 0.05
    # A 429 asking for a pause that the running one covers to within this
    # (or a quarter of the pause, if less) is not written to the gate again.
    covered_pause: float = 0.5
    # The least wait told to a call whose slot lies past its deadline, so its
    # order is put back for later, never for "now" again.
    slot_min_wait: float = 0.001
