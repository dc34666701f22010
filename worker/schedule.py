"""When to ask the accrual system again about an order that is not final yet."""

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
