"""Prometheus registries: one per application, never the library's global one.

Every process (and every app a test creates) gets its own CollectorRegistry,
so creating many apps in one process never registers a metric twice, and
tests read exact values.
"""

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

# Seconds: from a cached query (~1 ms) to a slow argon2 hash or accrual answer.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def new_registry() -> CollectorRegistry:
    """A registry with the standard process, platform and GC collectors."""
    # ``*_created`` series double the series count and no dashboard reads them.
    disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped upstream
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry
