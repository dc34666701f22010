"""When to ask the accrual system again about an order that is not final yet."""

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """``first * factor ** (attempts - 1)`` seconds, capped at ``cap``.

    The first re-checks come within a second (an order usually moves from
    REGISTERED to PROCESSED in seconds and clients give up after 20 s); an
    order the accrual system never learns of settles at one ask per ``cap``.
    """

    first: float = 0.5
    factor: float = 1.5
    cap: float = 60.0

    def delay(self, attempts: int) -> float:
        exponent = min(max(attempts - 1, 0), 64)  # no overflow on ancient orders
        return min(self.cap, self.first * self.factor ** exponent)
