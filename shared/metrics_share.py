"""One scrape for several API processes: each process's metrics, summed from snapshots.

Under the API's supervisor every process keeps its metrics in its own memory
(plain prometheus-client values: an update costs a microsecond or two, where
prometheus-client's multiprocess mode, which writes every update to a shared
file, measured 13 µs more per request) and writes a snapshot of its
``gophermart_*`` families to ``<dir>/<pid>.json``: every ``FLUSH_INTERVAL``
seconds, when it stops, and just before it answers a scrape. A scrape that
reaches any process reads every snapshot and sums the samples that share a
name and labels: counters and histograms of the whole API, which never go
backwards when another process answers the next scrape, and which keep the
counts of a process that exited. Gauges are summed over the processes still
running (an exited process's open streams are not open any more). Another
process's values are at most ``FLUSH_INTERVAL`` seconds old (a process killed
outright loses its last interval). Per-process series (``process_*``,
``python_gc_*``) are not shared: they would describe only the process that
answered.
"""

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, PlatformCollector
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

# Set by the supervisor for its children: the directory the snapshots share.
METRICS_DIR_ENV = "GOPHERMART_METRICS_DIR"
FLUSH_INTERVAL = 1.0
SHARED_PREFIX = "gophermart_"


class SharedMetrics(Collector):
    """Writes this process's snapshot; collects the sum of every snapshot in ``directory``."""

    def __init__(self, own: CollectorRegistry, directory: Path, name: str | None = None) -> None:
        self._own = own
        self._directory = directory
        self._path = directory / f"{name or os.getpid()}.json"

    def snapshot(self) -> None:
        families = [
            {
                "name": metric.name,
                "type": metric.type,
                "help": metric.documentation,
                "samples": [[s.name, s.labels, s.value] for s in metric.samples],
            }
            for metric in self._own.collect()
            if metric.name.startswith(SHARED_PREFIX)
        ]
        partial = self._path.with_suffix(".partial")
        partial.write_bytes(orjson.dumps(families))
        os.replace(partial, self._path)  # readers see the old snapshot or the new one

    def collect(self) -> Iterator[Metric]:
        self.snapshot()
        merged: dict[
            str, tuple[str, str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]
        ] = {}
        for path in sorted(self._directory.glob("*.json")):
            try:
                families: list[dict[str, Any]] = orjson.loads(path.read_bytes())
            except (OSError, orjson.JSONDecodeError):
                continue  # a process that never finished its first snapshot
            running = path == self._path or _running(path.stem)
            for family in families:
                if family["type"] == "gauge" and not running:
                    continue
                _, _, samples = merged.setdefault(
                    family["name"], (family["type"], family["help"], {})
                )
                for sample_name, labels, value in family["samples"]:
                    if sample_name.endswith("_created"):
                        continue  # a time, not a count: no sum of it means anything
                    key = (sample_name, tuple(sorted(labels.items())))
                    samples[key] = samples.get(key, 0.0) + value
        for name, (kind, help_text, samples) in merged.items():
            metric = Metric(name, help_text, kind)
            for (sample_name, labels), value in samples.items():
                metric.add_sample(sample_name, dict(labels), value)
            yield metric

    async def flushing(self) -> AsyncIterator[None]:
        """For ``cleanup_ctx``: a snapshot every interval while serving, one at the end."""

        async def loop() -> None:
            while True:
                await asyncio.sleep(FLUSH_INTERVAL)
                self.snapshot()

        task = asyncio.create_task(loop(), name="metrics-snapshots")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        self.snapshot()


def _running(name: str) -> bool:
    """Whether the process a snapshot is named after still runs (same pid namespace)."""
    try:
        os.kill(int(name), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return True


def shared(own: CollectorRegistry) -> SharedMetrics | None:
    """The sharing collector when this process is one of several, else None."""
    directory = os.environ.get(METRICS_DIR_ENV)
    return SharedMetrics(own, Path(directory)) if directory else None


def exported(own: CollectorRegistry, sharing: SharedMetrics | None) -> CollectorRegistry:
    """What /metrics serves: ``own``, or the sum over the processes (plus python_info)."""
    if sharing is None:
        return own
    registry = CollectorRegistry()
    registry.register(sharing)
    PlatformCollector(registry=registry)
    return registry
