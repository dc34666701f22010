"""Exponential suppression of a repeated log line.

A hostile accrual system can answer the same garbage about the same order at
every retry, for days: one warning per answer would let it write the
worker's log. ``Repeats`` counts occurrences per key and lets the 1st, 2nd,
4th, 8th, … through, so one key costs a logarithmic number of lines; the
metrics still count every occurrence.
"""

from collections import OrderedDict
from collections.abc import Hashable

# Keys remembered per process; the least recently seen is forgotten first
# (it then logs once more if it comes back).
MAX_KEYS = 10_000


class Repeats:
    def __init__(self, max_keys: int = MAX_KEYS) -> None:
        self._seen: OrderedDict[Hashable, int] = OrderedDict()
        self._max = max_keys

    def note(self, key: Hashable) -> int | None:
        """Count one occurrence; the count when it is worth a line (a power of two), else None."""
        count = self._seen.pop(key, 0) + 1
        self._seen[key] = count
        if len(self._seen) > self._max:
            self._seen.popitem(last=False)
        return count if count & (count - 1) == 0 else None
