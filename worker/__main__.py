"""``gophermart-worker``: the accrual worker process (run as many replicas as you like)."""

import asyncio
import signal
import sys
from collections.abc import Sequence

import aiohttp
import asyncpg
import structlog
from aiohttp import web

from db.executor import Executor
from db.migrate import SchemaTooNew, migrate_when_ready, schema_problem
from shared.logs import configure
from shared.ops import database_ready, ops_app, start_ops_server
from shared.pg import create_pool
from shared.runner import run
from shared.settings import WorkerSettings, load, require, with_scheme
from shared.stalls import Stalls
from worker.accrual_client import AccrualClient, create_session
from worker.gate import Gate, GatePolicy
from worker.listener import Listener
from worker.loop import LoopConfig, Worker
from worker.schedule import Backoff
from worker.stats import WorkerStats

log = structlog.get_logger("worker")


def loop_config(settings: WorkerSettings) -> LoopConfig:
    return LoopConfig(
        concurrency=max(settings.worker_concurrency, 1),
        batch_size=max(settings.worker_batch_size, 1),
        lease=settings.worker_lease,
        poll_interval=settings.worker_poll_interval,
        stop_timeout=settings.worker_stop_timeout,
        backoff=Backoff(
            first=settings.worker_backoff_first,
            cap=settings.worker_backoff_max,
            recheck_max=settings.worker_recheck_max,
        ),
    )


# "Retry-After: 0" must never make the fleet spin, whatever the settings say.
PAUSE_FLOOR = 0.1


def settings_problems(settings: WorkerSettings) -> list[str]:
    """Settings that would turn the gate against us: refused at start."""
    problems = []
    if not 0 < settings.accrual_rate_share <= 1:
        problems.append("ACCRUAL_RATE_SHARE must be above 0 and at most 1")
    if settings.accrual_pause_min < PAUSE_FLOOR:
        problems.append(f"ACCRUAL_PAUSE_MIN must be at least {PAUSE_FLOOR} s")
    if settings.accrual_pause_max < settings.accrual_pause_min:
        problems.append("ACCRUAL_PAUSE_MAX must not be below ACCRUAL_PAUSE_MIN")
    if settings.accrual_rate_ttl < 1:
        problems.append("ACCRUAL_RATE_TTL must be at least 1 s")
    return problems


def gate_policy(settings: WorkerSettings) -> GatePolicy:
    return GatePolicy(
        pause_min=max(settings.accrual_pause_min, PAUSE_FLOOR),
        pause_max=max(settings.accrual_pause_max, settings.accrual_pause_min),
        rate_ttl=max(settings.accrual_rate_ttl, 1.0),
        share=settings.accrual_rate_share,
    )


async def serve(settings: WorkerSettings, stopping: asyncio.Event | None = None) -> WorkerStats:
    """Run until SIGINT/SIGTERM (or ``stopping`` is set); return the counters."""
    assert settings.database_uri and settings.accrual_system_address
    loop = asyncio.get_running_loop()
    stopping = stopping or asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    stats = WorkerStats()
    try:
        if not await migrate_when_ready(settings.database_uri, stopping):
            return stats
        stalls = Stalls(stats.registry, settings.stall_log_threshold)
        # DB_POOL_MAX in all: one connection is the gate's own (below).
        work_max = max(settings.db_pool_max - 1, 1)
        pool = await create_pool(
            settings.database_uri,
            min_size=min(settings.db_pool_min, work_max),
            max_size=work_max,
            connect_timeout=settings.db_timeout,
            on_wait=stalls.pool_waited,
        )
        # The gate's own connection: a 429 must reach the other replicas (and a
        # paced call its slot) without queueing behind this process's claims and writes.
        gate_pool = await create_pool(
            settings.database_uri, min_size=1, max_size=1, connect_timeout=settings.db_timeout
        )
        session = create_session(
            concurrency=settings.worker_concurrency, timeout=settings.accrual_timeout
        )
        ops = await _start_ops(settings, pool, stats)
        watching = asyncio.create_task(stalls.watch_loop(), name="loop-lag")
        try:
            await _run(settings, pool, gate_pool, session, stats, stopping)
        finally:
            watching.cancel()
            if ops is not None:
                await ops.cleanup()
            await session.close()
            for closing in (pool, gate_pool):
                try:
                    await asyncio.wait_for(closing.close(), 2.0)
                except TimeoutError:
                    closing.terminate()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return stats


async def _start_ops(
    settings: WorkerSettings, pool: asyncpg.Pool, stats: WorkerStats
) -> web.AppRunner | None:
    """/healthz, /readyz and /metrics on WORKER_HEALTH_ADDRESS, when it is set."""
    if not settings.health_address:
        return None
    app = ops_app(ready=lambda: database_ready(pool, schema_problem), registry=stats.registry)
    runner = await start_ops_server(app, settings.health_address)
    log.info("ops endpoints listening", address=settings.health_address)
    return runner


async def _run(
    settings: WorkerSettings,
    pool: Executor,
    gate_pool: Executor,
    session: aiohttp.ClientSession,
    stats: WorkerStats,
    stopping: asyncio.Event,
) -> None:
    assert settings.database_uri and settings.accrual_system_address
    gate = Gate(gate_pool, stats, policy=gate_policy(settings))
    client = AccrualClient(
        session,
        with_scheme(settings.accrual_system_address),
        gate,
        stats,
        retries=settings.accrual_retries,
        max_answer_bytes=settings.accrual_max_answer_bytes,
    )
    worker = Worker(pool, client, gate, stats, loop_config(settings))

    def reset() -> None:  # an operator reset the gate: resume at once
        gate.forget()
        worker.wake()

    listener = Listener(
        settings.database_uri,
        on_new_order=worker.wake,
        on_pause=gate.note,
        on_reset=reset,
        timeout=settings.db_timeout,
    )
    listening = asyncio.create_task(listener.run(), name="listener")

    async def stop_when_asked() -> None:
        await stopping.wait()
        log.info("stopping")
        worker.stop()
        listener.stop()

    stopper = asyncio.create_task(stop_when_asked(), name="stopper")
    log.info(
        "worker started",
        accrual=with_scheme(settings.accrual_system_address),
        concurrency=settings.worker_concurrency,
        batch_size=settings.worker_batch_size,
    )
    try:
        await worker.run()
    finally:
        stopper.cancel()
        listener.stop()
        try:
            await asyncio.wait_for(listening, 2.0)
        except TimeoutError:
            log.warning("listener did not stop in time")
    log.info("worker stopped", **stats.summary())


def main(argv: Sequence[str] | None = None) -> int:
    settings = load(WorkerSettings, argv, prog="gophermart-worker")
    configure(settings.log_level, settings.log_format)
    require(settings, "database_uri", "accrual_system_address", prog="gophermart-worker")
    if problems := settings_problems(settings):
        raise SystemExit(f"gophermart-worker: {'; '.join(problems)}")
    try:
        run(serve(settings))
    except SchemaTooNew as exc:
        log.error("refusing to start", reason=str(exc))
        raise SystemExit(f"gophermart-worker: {exc}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
