"""Counters the tests and benchmarks read over ``GET /api/stats``.

Plain ints bumped on the event loop: no locks needed, nothing on the hot path
heavier than an attribute increment.
"""

from dataclasses import dataclass, field, fields
from typing import Any


@dataclass(slots=True)
class Stats:
    requests: int = 0  # GET /api/orders/{number} calls received
    too_many_requests: int = 0  # 429 answers sent
    pauses: int = 0  # distinct pauses announced (the first 429 of a window)
    requests_during_pause: int = 0  # arrived after a pause was announced, past the grace
    in_flight_at_pause: int = 0  # arrived within the grace: already sent when told to stop
    # The latest of the requests during a pause: seconds after its pause was
    # announced, and which pause (1 = the first) it was.
    latest_during_pause: float = 0.0
    latest_in_flight: float = 0.0  # the same for the latest request within the grace
    pause_with_latest: int = 0
    injected_500s: int = 0
    injected_latencies: int = 0
    orders_registered: int = 0
    rules_registered: int = 0
    by_status: dict[int, int] = field(default_factory=dict)

    def answered(self, status: int) -> None:
        self.by_status[status] = self.by_status.get(status, 0) + 1

    def reset(self) -> None:
        for counter in fields(self):
            if counter.name != "by_status":
                setattr(self, counter.name, 0)
        self.by_status.clear()

    def as_json(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            counter.name: getattr(self, counter.name)
            for counter in fields(self)
            if counter.name != "by_status"
        }
        result["by_status"] = {str(code): n for code, n in sorted(self.by_status.items())}
        return result
