"""``gophermart``: the API server and one accrual worker, supervised together.

Children are separate processes (``python -m api``, ``python -m worker``)
that read their settings from the environment this command fills in, so the
whole system is one executable for a harness: start it, wait for the port,
send SIGINT. A child that dies takes the others down with it: a half-running
system is worse than a stopped one.
"""

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType

import asyncpg
import structlog

from shared import logs
from shared.localpg import LocalPostgres
from shared.settings import StackSettings, load, to_environ, with_scheme

log = structlog.get_logger("gophermart")
STOP_TIMEOUT = 10.0


def _spawn(name: str, module: str, env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    # Own session: a terminal's Ctrl-C reaches us alone and we stop the
    # children in order, instead of every process racing its own shutdown.
    process = subprocess.Popen([sys.executable, "-m", module, *args], env=env,
                               start_new_session=True)
    log.info("started", process=name, pid=process.pid)
    return process


def _stop(processes: dict[str, subprocess.Popen[bytes]]) -> int:
    """SIGTERM every child, wait, SIGKILL stragglers; the worst exit code."""
    for process in processes.values():
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    worst = 0
    for name, process in processes.items():
        try:
            code = process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("did not stop in time; killing", process=name)
            process.kill()
            code = process.wait()
        if code not in (0, -signal.SIGTERM):
            worst = worst or code
    return worst


async def _ensure_database(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


@contextlib.contextmanager
def _local_postgres(settings: StackSettings) -> Iterator[str]:
    server = LocalPostgres(Path(settings.data_dir) / "postgres", settings.local_pg_port)
    log.warning("DATABASE_URI is not set: starting a local PostgreSQL",
                data_dir=str(server.root), port=server.port)
    server.start()
    try:
        asyncio.run(_ensure_database(server.dsn, "gophermart"))
        yield server.dsn_for("gophermart")
    finally:
        server.stop()


def main(argv: Sequence[str] | None = None) -> None:
    settings = load(StackSettings, argv, prog="gophermart")
    logs.configure(settings.log_level, settings.log_format)
    stop = threading.Event()

    def on_signal(signum: int, _: FrameType | None) -> None:
        log.info("stopping", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    with contextlib.ExitStack() as resources:
        env = {**os.environ, **to_environ(settings)}
        processes: dict[str, subprocess.Popen[bytes]] = {}
        if settings.database_uri is None:
            env["DATABASE_URI"] = resources.enter_context(_local_postgres(settings))
        if settings.accrual_system_address is None:
            log.warning("ACCRUAL_SYSTEM_ADDRESS is not set: starting the bundled simulator",
                        address=settings.simulator_address)
            sim_env = {**env, "RUN_ADDRESS": settings.simulator_address}
            processes["accrual-sim"] = _spawn("accrual-sim", "accrual_sim", sim_env,
                                              "--seed-demo")
            env["ACCRUAL_SYSTEM_ADDRESS"] = with_scheme(settings.simulator_address)
        processes["api"] = _spawn("api", "api", env)
        processes["worker"] = _spawn("worker", "worker", env)

        failed = None
        while not stop.wait(0.2):
            failed = next((name for name, p in processes.items() if p.poll() is not None), None)
            if failed:
                log.error("a process exited; stopping the rest", process=failed,
                          code=processes[failed].returncode)
                break
        code = _stop(processes)
    sys.exit(1 if failed else code)


if __name__ == "__main__":
    main()
