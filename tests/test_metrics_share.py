"""Metrics of several processes summed from their snapshots (shared/metrics_share.py)."""

import subprocess
import sys
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from shared.metrics import new_registry
from shared.metrics_share import SharedMetrics, exported


def _process(directory: Path, name: str, requests: int, seconds: float) -> SharedMetrics:
    registry = new_registry()
    Counter("gophermart_requests", "r", ("route",), registry=registry).labels("/a").inc(requests)
    Histogram("gophermart_latency", "l", registry=registry, buckets=(1.0, 2.0)).observe(seconds)
    Gauge("gophermart_in_use", "u", registry=registry).set(2)
    return SharedMetrics(registry, directory, name)


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for metric in registry.collect()
        for s in metric.samples
    }


def test_a_scrape_sums_every_process_snapshot(tmp_path: Path) -> None:
    first = _process(tmp_path, "1", requests=3, seconds=0.5)
    second = _process(tmp_path, "2", requests=4, seconds=1.5)
    second.snapshot()
    samples = _samples(exported(CollectorRegistry(), first))  # the first answers the scrape
    assert samples[("gophermart_requests_total", (("route", "/a"),))] == 7
    assert samples[("gophermart_latency_bucket", (("le", "1.0"),))] == 1
    assert samples[("gophermart_latency_bucket", (("le", "2.0"),))] == 2
    assert samples[("gophermart_latency_count", ())] == 2
    assert samples[("gophermart_latency_sum", ())] == 2.0
    assert samples[("gophermart_in_use", ())] == 4
    # Per-process series are not summed into nonsense: they are left out.
    assert not any(name.startswith(("process_", "python_gc_")) for name, _ in samples)
    assert not any(name.endswith("_created") for name, _ in samples)


def test_counts_of_a_process_that_exited_are_kept_and_its_gauges_dropped(tmp_path: Path) -> None:
    exited = subprocess.Popen([sys.executable, "-c", ""])
    exited.wait()  # a pid that no longer runs
    gone = _process(tmp_path, str(exited.pid), requests=5, seconds=0.1)
    gone.snapshot()
    alive = _process(tmp_path, "alive", requests=1, seconds=0.1)
    samples = _samples(exported(CollectorRegistry(), alive))
    assert samples[("gophermart_requests_total", (("route", "/a"),))] == 6
    assert samples[("gophermart_in_use", ())] == 2  # the exited process's 2 are gone


def test_a_single_process_serves_its_own_registry() -> None:
    own = new_registry()
    assert exported(own, None) is own
