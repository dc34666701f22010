"""Login throttling: too many failures for one login or one client address.

Failures are counted per key over a sliding window in this process's
memory; each API replica throttles on its own (documented in the README).
"""

import time
from collections import defaultdict, deque

# Above this many tracked keys, expired ones are swept out, so a stream of
# made-up logins cannot grow the table without bound; the next sweep waits
# until the table doubles, so sweeping stays amortised O(1) per failure.
SWEEP_ABOVE = 10_000


class LoginThrottle:
    def __init__(self, max_failures: int, window: float) -> None:
        self.max_failures = max_failures
        self.window = window
        self._failures: defaultdict[str, deque[float]] = defaultdict(deque)
        self._sweep_at = SWEEP_ABOVE

    def __len__(self) -> int:
        return len(self._failures)

    def _recent(self, key: str, now: float) -> deque[float]:
        stamps = self._failures[key]
        while stamps and stamps[0] <= now - self.window:
            stamps.popleft()
        if not stamps:
            del self._failures[key]
        return stamps

    def retry_after(self, *keys: str) -> int | None:
        """Seconds until the first key may try again, or None when none is throttled."""
        if self.max_failures <= 0:
            return None
        now = time.monotonic()
        waits = []
        for key in keys:
            stamps = self._recent(key, now)
            if len(stamps) >= self.max_failures:
                waits.append(stamps[-self.max_failures] + self.window - now)
        return max(1, int(max(waits)) + 1) if waits else None

    def failed(self, *keys: str) -> None:
        if self.max_failures <= 0:
            return
        now = time.monotonic()
        if len(self._failures) > self._sweep_at:
            for key in list(self._failures):
                self._recent(key, now)
            self._sweep_at = max(SWEEP_ABOVE, 2 * len(self._failures))
        for key in keys:
            stamps = self._failures[key]
            stamps.append(now)
            while len(stamps) > self.max_failures:
                stamps.popleft()

    def succeeded(self, login_key: str) -> None:
        self._failures.pop(login_key, None)
