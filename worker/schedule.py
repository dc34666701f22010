"""When to ask the accrual system again about an order that is not final yet."""

import asyncio
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """``first * factor ** (attempts - 1)`` seconds, capped at ``cap``; then by age.

    The first re-checks come within a second (an order usually moves from
    REGISTERED to PROCESSED in seconds and clients give up after 20 s); an
    order still unknown settles at one ask per ``cap``. Once it has waited
    long enough, the interval is a tenth of its age (an order unknown for an
    hour is asked every 6 minutes), up to ``recheck_max``: an order the
    accrual system never learns of stays NEW and is asked once per
    ``recheck_max`` for as long as it exists.
    """

    first: float = 0.5
    factor: float = 1.5
    cap: float = 60.0
    recheck_max: float = 3600.0
    age_share: float = 0.1

    def delay(self, attempts: int, age: float = 0.0) -> float:
        exponent = min(max(attempts - 1, 0), 64)  # no overflow on ancient orders
        early = min(self.cap, self.first * self.factor**exponent)
        return min(max(early, age * self.age_share), max(self.recheck_max, self.cap))


class Alarm:
    """Calls ``ring`` at the earliest time it was set for, with one timer at a time."""

    def __init__(self, ring: Callable[[], None]) -> None:
        self._ring = ring
        self._timer: asyncio.TimerHandle | None = None

    def set_at(self, when: float) -> None:
        """Ring at ``when`` (loop time), unless already set to ring before then."""
        loop = asyncio.get_running_loop()
        timer = self._timer
        if timer is not None and not timer.cancelled() and loop.time() < timer.when() <= when:
            return
        self.cancel()
        self._timer = loop.call_at(when, self._ring)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
