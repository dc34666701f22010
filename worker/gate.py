"""The fleet-wide accrual gate: a 429 pauses every replica, then all pace under N/min.

The truth lives in PostgreSQL (``accrual_gate``); each process keeps an
in-memory copy of the pause that every call checks before sending, refreshed
by the pause notification, by every claim, and by its own 429s.
Pacing reserves call slots from the shared ``next_slot`` a few at a time, so
the whole fleet shares one schedule; without a known limit nothing is paced
and no round trip is spent on it.

Nothing the accrual system says can stop the fleet for ever or make it spin:
``Retry-After`` is clamped to a floor and a ceiling (a 429 without a usable
one pauses for the default), a 429 right after a pause doubles the next
one, and a learned limit is forgotten ``rate_ttl`` seconds after the 429
that announced it, so the fleet returns to full speed by itself.
"""

import asyncio
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from db import gate as db_gate
from db.executor import Executor
from worker.stats import WorkerStats
from worker.tunings import Tunings

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class GatePolicy:
    """How much of what a 429 says is believed (all settings; docs/worker.md, the gate)."""

    pause_min: float = 1.0  # Retry-After floor: "retry after 0" must not spin
    pause_max: float = 600.0  # Retry-After ceiling, also for doubled pauses
    rate_ttl: float = 600.0  # seconds a learned rate limit holds
    share: float = 0.97  # of the learned limit the fleet paces itself to

    def clamp(self, seconds: float) -> float:
        if not math.isfinite(seconds):
            return self.pause_max
        return min(max(seconds, self.pause_min), max(self.pause_max, self.pause_min))


class Gate:
    def __init__(
        self,
        db: Executor,
        stats: WorkerStats,
        *,
        policy: GatePolicy | None = None,
        tunings: Tunings | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._db = db
        self._stats = stats
        self.policy = policy or GatePolicy()
        self._tunings = tunings or Tunings()
        self._share = self.policy.share
        self._clock = clock or asyncio.get_running_loop().time
        self._paused_until = 0.0
        self._rate: int | None = None
        self._rate_until = 0.0
        self._slots: deque[float] = deque()
        self._lock = asyncio.Lock()
        self._waiters = 0

    def pause_left(self) -> float:
        return max(self._paused_until - self._clock(), 0.0)

    @property
    def rate_per_minute(self) -> int | None:
        self._expire_rate()
        return self._rate

    def interval(self) -> float | None:
        """Seconds between two calls fleet-wide, or None when nothing is paced."""
        self._expire_rate()
        if self._rate is None:
            return None
        return 60.0 / (self._rate * self._share)

    def _expire_rate(self) -> None:
        if self._rate is not None and self._clock() >= self._rate_until:
            log.info("accrual rate limit forgotten", rate_per_minute=self._rate)
            self._rate = None
            self._slots.clear()
            self._stats.gate(self.pause_left(), None)

    def note(self, state: db_gate.GateState) -> None:
        """Learn the gate's state (from a claim, a notification or our own 429).

        A pause only ever grows here (a claim that started before a 429 must
        not lift it); a learned rate is dropped only once its own time is up.
        """
        now = self._clock()
        if state.pause_left > 0:
            until = now + state.pause_left
            if until > self._paused_until + self._tunings.same_pause:
                self._paused_until = until
                # Slots reserved before the pause may fall inside it.
                self._slots.clear()
                log.warning(
                    "accrual calls paused",
                    seconds=round(state.pause_left, 3),
                    rate_per_minute=state.rate_per_minute,
                )
        if state.rate_per_minute is not None:
            self._rate_until = now + (state.rate_left or self.policy.rate_ttl)
            if state.rate_per_minute != self._rate:
                self._rate = state.rate_per_minute
                self._slots.clear()
                log.info(
                    "accrual calls paced",
                    rate_per_minute=self._rate,
                    interval=round(self.interval() or 0, 4),
                    for_seconds=round(self._rate_until - now, 1),
                )
        self._expire_rate()
        self._stats.gate(self.pause_left(), self._rate)

    def forget(self) -> None:
        """An operator reset the gate: no pause, no learned limit, from now on."""
        self._paused_until = 0.0
        self._rate = None
        self._rate_until = 0.0
        self._slots.clear()
        log.warning("accrual gate reset by an operator")
        self._stats.gate(0.0, None)

    async def record_429(self, retry_after: float, rate: int | None) -> None:
        """Pause the whole fleet; skip the write when a known pause already covers it.

        ``retry_after`` is what the answer said (parsed); it is clamped here.
        """
        seconds = self.policy.clamp(retry_after)
        self._expire_rate()
        pause = self.pause_left()
        covered = (
            pause > 0
            and pause >= seconds - min(self._tunings.covered_pause, seconds / 4)
            and (rate is None or rate == self._rate)
        )
        # Stop our own calls at once; a 429 without a rate keeps the one we know.
        # As in PostgreSQL, a limit holds until rate_ttl after the pause's end.
        self.note(
            db_gate.GateState(
                seconds,
                rate if rate is not None else self._rate,
                max(self._rate_until - self._clock(), seconds)
                if rate is None
                else seconds + self.policy.rate_ttl,
            )
        )
        if covered:
            return
        self._stats.paused()
        self.note(
            await db_gate.record_pause(
                self._db,
                seconds=seconds,
                rate_per_minute=rate,
                ceiling=self.policy.pause_max,
                rate_ttl=self.policy.rate_ttl,
            )
        )

    async def wait_slot(self, deadline: float) -> float:
        """Wait for this process's next paced call slot.

        Returns 0 once the call may go, or the seconds until the next slot
        when that is later than ``deadline`` (the slot stays for a later call
        and the caller puts its order back for then).
        """
        interval = self.interval()
        if interval is None:
            return 0.0
        tunings = self._tunings
        self._waiters += 1
        try:
            async with self._lock:
                now = self._clock()
                while self._slots and self._slots[0] < now - min(tunings.stale_slot, interval):
                    self._slots.popleft()
                if not self._slots:
                    most = max(1, math.ceil(tunings.reserve_horizon / interval))
                    count = min(self._waiters, most)
                    first_in = await db_gate.reserve_slots(self._db, count=count, interval=interval)
                    base = self._clock() + first_in
                    self._slots.extend(base + i * interval for i in range(count))
                slot = self._slots[0]
                if slot > deadline:
                    # Not before the slot, unless the limit will be forgotten first.
                    return max(min(slot, self._rate_until) - now, tunings.slot_min_wait)
                self._slots.popleft()
        finally:
            self._waiters -= 1
        delay = slot - self._clock()
        if delay > 0:
            await asyncio.sleep(delay)
        return 0.0
