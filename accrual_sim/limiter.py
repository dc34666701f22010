"""A fixed-window rate limit that announces pauses the way the real system does.

A window opens with the first request after the previous one closed and admits
``limit`` requests. Every later request in it gets 429 with ``Retry-After`` =
the seconds left until the window closes (rounded up, at least 1). The first
429 announces a pause lasting until the window closes; requests that still
arrive during it are counted, separately for those within ``grace`` of the
announcement, which the client had already sent when it was told to stop.
"""

import math

import structlog

from accrual_sim.stats import Stats

log = structlog.get_logger("accrual_sim.limiter")


class RateLimiter:
    def __init__(self, limit: int, window: float, grace: float, stats: Stats) -> None:
        self.limit = limit
        self.window = window
        self.grace = grace
        self.stats = stats
        # The rate a client may keep up indefinitely; at least 1 so the message
        # never tells a client to stop altogether.
        self.per_minute = max(1, math.floor(limit * 60 / window))
        self.message = f"No more than {self.per_minute} requests per minute allowed".encode()
        self.reset()

    def reset(self) -> None:
        self._window_end = -math.inf
        self._count = 0
        self._paused_at: float | None = None

    @property
    def pause_until(self) -> float | None:
        """When the announced pause ends (monotonic), or None when none is running."""
        return self._window_end if self._paused_at is not None else None

    def admit(self, now: float) -> int | None:
        """None when the request may proceed, else the Retry-After seconds."""
        if now >= self._window_end:
            self._window_end = now + self.window
            self._count = 0
            self._paused_at = None
        self._count += 1
        if self._count <= self.limit:
            return None
        if self._paused_at is None:
            self._paused_at = now
            self.stats.pauses += 1
            log.info(
                "pause announced",
                limit=self.limit,
                window=self.window,
                seconds=round(self._window_end - now, 3),
            )
        elif now - self._paused_at <= self.grace:
            self.stats.in_flight_at_pause += 1
            self.stats.latest_in_flight = max(self.stats.latest_in_flight, now - self._paused_at)
        else:
            late = now - self._paused_at
            self.stats.requests_during_pause += 1
            if late > self.stats.latest_during_pause:
                self.stats.latest_during_pause = late
                self.stats.pause_with_latest = self.stats.pauses
            log.warning("request during a pause", pause=self.stats.pauses, after=round(late, 3))
        return max(1, math.ceil(self._window_end - now))
