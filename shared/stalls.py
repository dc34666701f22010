"""Stalls made visible: event-loop lag and waits for a pooled connection.

Both processes export them (``gophermart_event_loop_lag_seconds``,
``gophermart_db_pool_wait_seconds``) and log a warning when one passes
``STALL_LOG_THRESHOLD``. Under overload every request may wait long, so the
warnings are rate-limited: at most one a second, carrying how many such
events it stands for.
"""

import asyncio
import time

import structlog
from prometheus_client import CollectorRegistry, Histogram

log = structlog.get_logger(__name__)

# Seconds: from a busy loop's iteration to a stall of the kind a big synchronous
# answer causes.
STALL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# How often the loop is sampled; a stall is seen however long it is.
LAG_INTERVAL = 0.1


class _Warnings:
    """At most one warning a second per kind; ``count`` says how many it covers."""

    def __init__(self, event: str, every: float = 1.0) -> None:
        self._event = event
        self._every = every
        self._last = float("-inf")
        self._held = 0

    def note(self, seconds: float) -> None:
        self._held += 1
        now = time.monotonic()
        if now - self._last >= self._every:
            log.warning(self._event, ms=round(seconds * 1000, 1), count=self._held)
            self._last, self._held = now, 0


class Stalls:
    """The two stall metrics of one process, on its registry."""

    def __init__(self, registry: CollectorRegistry, threshold: float) -> None:
        self.threshold = threshold
        self.loop_lag = Histogram(
            "gophermart_event_loop_lag_seconds",
            f"How late the event loop ran a timer due every {LAG_INTERVAL:g} s: the time "
            "every request on it waited, whatever its handler measured.",
            buckets=STALL_BUCKETS,
            registry=registry,
        )
        self.pool_wait = Histogram(
            "gophermart_db_pool_wait_seconds",
            "Time from asking for a pooled PostgreSQL connection to getting one (or giving up).",
            buckets=STALL_BUCKETS,
            registry=registry,
        )
        self._slow_loop = _Warnings("event loop stalled")
        self._slow_pool = _Warnings("slow to get a database connection")

    def pool_waited(self, seconds: float) -> None:
        self.pool_wait.observe(seconds)
        if seconds > self.threshold:
            self._slow_pool.note(seconds)

    async def watch_loop(self) -> None:
        """Sample the loop's lag until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + LAG_INTERVAL
            await asyncio.sleep(LAG_INTERVAL)
            lag = max(loop.time() - due, 0.0)
            self.loop_lag.observe(lag)
            if lag > self.threshold:
                self._slow_loop.note(lag)
