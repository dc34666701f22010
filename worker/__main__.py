"""``gophermart-worker``: the accrual worker process (run as many replicas as you like)."""

import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence

import aiohttp
import asyncpg
import structlog

from db import queue
from db.migrate import migrate
from shared.logs import configure
from shared.pg import create_pool
from shared.settings import WorkerSettings, load, with_scheme
from worker.accrual_client import AccrualClient, create_session
from worker.gate import Gate
from worker.listener import Listener
from worker.loop import LoopConfig, Worker
from worker.schedule import Backoff
from worker.stats import WorkerStats

log = structlog.get_logger("worker")

_STARTUP_PATIENCE = 30.0  # seconds to wait for the database at start


def loop_config(settings: WorkerSettings) -> LoopConfig:
    return LoopConfig(
        concurrency=max(settings.worker_concurrency, 1),
        batch_size=max(settings.worker_batch_size, 1),
        lease=settings.worker_lease,
        poll_interval=settings.worker_poll_interval,
        stop_timeout=settings.worker_stop_timeout,
        backoff=Backoff(first=settings.worker_backoff_first, cap=settings.worker_backoff_max),
    )


async def _migrate(dsn: str, stopping: asyncio.Event) -> bool:
    """Apply migrations, waiting a while for a database that is still starting."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + _STARTUP_PATIENCE
    while True:
        try:
            await migrate(dsn)
            return True
        except (OSError, asyncpg.CannotConnectNowError) as exc:
            if loop.time() > give_up:
                raise
            log.warning("database not reachable yet", error=repr(exc))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), 1.0)
        if stopping.is_set():
            return False


async def serve(settings: WorkerSettings, stopping: asyncio.Event | None = None) -> WorkerStats:
    """Run until SIGINT/SIGTERM (or ``stopping`` is set); return the counters."""
    assert settings.database_uri and settings.accrual_system_address
    loop = asyncio.get_running_loop()
    stopping = stopping or asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    stats = WorkerStats()
    try:
        if not await _migrate(settings.database_uri, stopping):
            return stats
        pool = await create_pool(settings.database_uri, min_size=settings.db_pool_min,
                                 max_size=settings.db_pool_max,
                                 connect_timeout=settings.db_timeout)
        session = create_session(concurrency=settings.worker_concurrency,
                                 timeout=settings.accrual_timeout)
        try:
            await _run(settings, pool, session, stats, stopping)
        finally:
            await session.close()
            try:
                await asyncio.wait_for(pool.close(), 2.0)
            except TimeoutError:
                pool.terminate()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return stats


async def _run(settings: WorkerSettings, pool: queue.Executor,
               session: aiohttp.ClientSession, stats: WorkerStats,
               stopping: asyncio.Event) -> None:
    assert settings.database_uri and settings.accrual_system_address
    gate = Gate(pool, stats, share=settings.accrual_rate_share)
    client = AccrualClient(session, with_scheme(settings.accrual_system_address), gate, stats,
                           retries=settings.accrual_retries)
    worker = Worker(pool, client, gate, stats, loop_config(settings))
    listener = Listener(settings.database_uri, on_new_order=worker.wake, on_pause=gate.note,
                        timeout=settings.db_timeout)
    listening = asyncio.create_task(listener.run(), name="listener")

    async def stop_when_asked() -> None:
        await stopping.wait()
        log.info("stopping")
        worker.stop()
        listener.stop()

    stopper = asyncio.create_task(stop_when_asked(), name="stopper")
    log.info("worker started", accrual=with_scheme(settings.accrual_system_address),
             concurrency=settings.worker_concurrency, batch_size=settings.worker_batch_size)
    try:
        await worker.run()
    finally:
        stopper.cancel()
        listener.stop()
        try:
            await asyncio.wait_for(listening, 2.0)
        except TimeoutError:
            log.warning("listener did not stop in time")
    log.info("worker stopped", stats=stats)


def main(argv: Sequence[str] | None = None) -> int:
    settings = load(WorkerSettings, argv, prog="gophermart-worker")
    configure(settings.log_level, settings.log_format)
    missing = [name for name, value in (("DATABASE_URI (-d)", settings.database_uri),
                                        ("ACCRUAL_SYSTEM_ADDRESS (-r)",
                                         settings.accrual_system_address)) if not value]
    if missing:
        raise SystemExit(f"gophermart-worker: {' and '.join(missing)} must be set")
    try:
        import uvloop
    except ImportError:  # not on every platform: the standard loop works too
        runner = asyncio.Runner()
    else:
        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    with runner:
        runner.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
