"""Several API processes on one port: SO_REUSEPORT children under a small supervisor.

Each child is an ordinary single-process API server (``python -m api``) that
binds the same address with ``SO_REUSEPORT``; the kernel spreads incoming
connections over the children's listening sockets, so no process accepts for
the others and there is no thundering herd on one shared socket. A port that
accepts connections is a port with a child ready behind it (a child binds
only after its start-up), which is what the harnesses and probes wait for.

The supervisor holds no listener of its own: it reserves the port (bound, not
listening, so it never receives connections), splits the connection budget,
starts the children, restarts one that dies, and stops them all on SIGINT or
SIGTERM. Children watch a pipe whose write end only the supervisor holds: when
the supervisor is gone, even by SIGKILL, the pipe reads EOF and each child
stops gracefully by itself.

Budgets are totals for the whole API: ``DB_POOL_MAX``/``DB_POOL_MIN`` and
``HASH_CONCURRENCY`` are divided among the children (at least one connection
and one hashing thread each), so PostgreSQL sees the same number of API
connections whatever the number of processes. Each child writes snapshots of
its metrics into a directory they share (shared/metrics_share.py), so a scrape
that reaches any child reports the whole API.
"""

import asyncio
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import structlog

from db.migrate import SchemaTooNew, migrate_when_ready
from shared.metrics_share import METRICS_DIR_ENV
from shared.settings import ApiSettings, split_host_port, to_environ

log = structlog.get_logger("api.supervisor")

# The read end of the supervisor's pipe, inherited by each child; set only in children.
PARENT_PIPE_ENV = "GOPHERMART_API_PARENT_FD"

STOP_TIMEOUT = 10.0  # a child's graceful stop (aiohttp's shutdown_timeout is 5 s)
RESTART_DELAY = 0.5
# More exits than this within the window means something is wrong beyond one
# process (a bad setting, the database refusing us): stop everything and fail.
RESTART_LIMIT = 5
RESTART_WINDOW = 60.0


def usable_cpus(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may use: its affinity, within a cgroup v2 CPU quota if any.

    ``os.cpu_count()`` is the machine's count: in a container limited to 2 CPUs
    on a 64-core node it would start 64 processes.
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()
        if quota != "max":
            cpus = min(cpus, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass  # no cgroup v2 quota visible: the affinity is the limit
    return max(1, cpus)


def process_count(settings: ApiSettings) -> int:
    """How many API processes to run: 0 means one per CPU, within the pool budget."""
    if settings.api_processes < 0:
        raise SystemExit("API_PROCESSES must be 0 (one per CPU) or more")
    if settings.api_processes == 0:
        return max(1, min(usable_cpus(), settings.db_pool_max))
    if settings.api_processes > settings.db_pool_max:
        raise SystemExit(
            f"API_PROCESSES={settings.api_processes} exceeds DB_POOL_MAX="
            f"{settings.db_pool_max}: every process needs at least one connection "
            "(DB_POOL_MAX is the total for the whole API)"
        )
    return settings.api_processes


def shares(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` near-equal whole shares (the first get the rest)."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def child_budgets(settings: ApiSettings, processes: int) -> list[dict[str, str]]:
    """Each child's pool and hashing settings, so the totals stay as configured."""
    hashes = settings.hash_concurrency or max(1, usable_cpus() - 1)
    budgets = []
    for pool_max, pool_min, hash_share in zip(
        shares(settings.db_pool_max, processes),
        shares(settings.db_pool_min, processes),
        shares(hashes, processes),
        strict=True,
    ):
        budgets.append(
            {
                "DB_POOL_MAX": str(pool_max),
                "DB_POOL_MIN": str(min(pool_min, pool_max)),
                "HASH_CONCURRENCY": str(max(1, hash_share)),
            }
        )
    return budgets


def reserve_port(host: str, port: int) -> socket.socket:
    """A bound, never-listening SO_REUSEPORT socket: fixes port 0 to one number for
    every child and keeps the port ours while children restart."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise SystemExit(f"gophermart-api: cannot bind {host}:{port}: {exc}") from exc
    return sock


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass
class _Child:
    slot: int
    process: subprocess.Popen[bytes]


class Supervisor:
    def __init__(self, settings: ApiSettings, processes: int) -> None:
        self.settings = settings
        self.processes = processes
        self.stopping = threading.Event()
        self._exits: deque[float] = deque()

    def _spawn(self, slot: int, env: dict[str, str], pipe: int) -> _Child:
        process = subprocess.Popen(
            [sys.executable, "-m", "api"], env=env, pass_fds=(pipe,), start_new_session=True
        )  # our signals alone reach it
        log.info("api process started", process=f"api-{slot}", child_pid=process.pid)
        return _Child(slot, process)

    def _too_many_exits(self) -> bool:
        now = time.monotonic()
        self._exits.append(now)
        while self._exits and self._exits[0] < now - RESTART_WINDOW:
            self._exits.popleft()
        return len(self._exits) > RESTART_LIMIT

    def run(self) -> int:
        host, port = split_host_port(self.settings.run_address)
        reservation = reserve_port(host, port)
        port = reservation.getsockname()[1]
        metrics_dir = tempfile.mkdtemp(prefix="gophermart-api-metrics-")
        read_end, write_end = os.pipe()
        secret = {}
        if not self.settings.session_secret:
            # One random secret for all: each child making its own would refuse
            # the tokens its siblings hand out.
            log.warning(
                "SESSION_SECRET is not set: using a random secret; every login "
                "ends when the API stops and other replicas will not accept its "
                "tokens"
            )
            secret["SESSION_SECRET"] = secrets.token_urlsafe(32)
        base = {
            **os.environ,
            **to_environ(self.settings),
            **secret,
            "API_PROCESSES": "1",
            "RUN_ADDRESS": _address(host, port),
            PARENT_PIPE_ENV: str(read_end),
            METRICS_DIR_ENV: metrics_dir,
        }
        envs = [base | budget for budget in child_budgets(self.settings, self.processes)]
        log.info(
            "starting",
            address=_address(host, port),
            processes=self.processes,
            db_pool_max=self.settings.db_pool_max,
        )
        children: list[_Child] = []
        failed = False
        try:
            children = [self._spawn(slot, env, read_end) for slot, env in enumerate(envs)]
            while not self.stopping.wait(0.2):
                for i, child in enumerate(children):
                    code = child.process.poll()
                    if code is None or self.stopping.is_set():
                        continue
                    log.error(
                        "an API process exited",
                        process=f"api-{child.slot}",
                        child_pid=child.process.pid,
                        code=code,
                    )
                    if self._too_many_exits():
                        log.error(
                            "API processes keep exiting; stopping them all",
                            limit=RESTART_LIMIT,
                            window_s=RESTART_WINDOW,
                        )
                        failed = True
                        self.stopping.set()
                        break
                    time.sleep(RESTART_DELAY)
                    children[i] = self._spawn(child.slot, envs[child.slot], read_end)
            code = stop_all([c.process for c in children])
        finally:
            for child in children:  # only after a failure above: stop_all reaped the rest
                if child.process.poll() is None:
                    child.process.kill()
                    child.process.wait()
            os.close(write_end)
            os.close(read_end)
            reservation.close()
            shutil.rmtree(metrics_dir, ignore_errors=True)
        return 1 if failed else code


def stop_all(processes: list[subprocess.Popen[bytes]], timeout: float = STOP_TIMEOUT) -> int:
    """SIGTERM every child, wait, SIGKILL stragglers; the worst exit code."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    worst = 0
    for process in processes:
        try:
            code = process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("did not stop in time; killing", child_pid=process.pid)
            process.kill()
            code = process.wait()
        if code not in (0, -signal.SIGTERM):
            worst = worst or code
    return worst


def supervise(settings: ApiSettings, processes: int) -> int:
    """Run ``processes`` API children until SIGINT/SIGTERM; the exit status.

    Migrations run here first, once: a schema newer than this build stops the
    API before any child starts (instead of children failing one by one), and
    the children find nothing left to apply.
    """
    assert settings.database_uri is not None
    try:
        asyncio.run(migrate_when_ready(settings.database_uri))
    except SchemaTooNew as exc:
        log.error("refusing to start", reason=str(exc))
        raise SystemExit(f"gophermart-api: {exc}") from exc
    supervisor = Supervisor(settings, processes)

    def on_signal(signum: int, _: FrameType | None) -> None:
        log.info("stopping", signal=signal.Signals(signum).name)
        supervisor.stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    return supervisor.run()


def watch_parent(stop: Callable[[], None]) -> Callable[[], None] | None:
    """In a child: call ``stop`` once the supervisor is gone; returns an unwatch.

    None when this process is not a supervised child.
    """
    fd_text = os.environ.get(PARENT_PIPE_ENV)
    if not fd_text:
        return None
    fd = int(fd_text)
    loop = asyncio.get_running_loop()

    def readable() -> None:  # only EOF ever arrives: nobody writes to the pipe
        loop.remove_reader(fd)
        log.warning("the supervisor is gone; stopping")
        stop()

    loop.add_reader(fd, readable)

    def unwatch() -> None:
        loop.remove_reader(fd)

    return unwatch
