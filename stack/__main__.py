"""``gophermart``: the API server and one accrual worker, supervised together.

Children are separate processes (``python -m api``, ``python -m worker``)
that read their settings from the environment this command fills in, so the
whole system is one executable for a harness: start it, wait for the port,
send SIGINT. A child that dies takes the others down with it: a half-running
system is worse than a stopped one.

Nothing outlives the runner: SIGINT, SIGTERM and SIGHUP (the terminal closed)
stop every child in order, and on Linux each child is started with a
parent-death signal (``prctl(PR_SET_PDEATHSIG)``), so even a ``kill -9`` of the
runner stops them (the API and worker get SIGTERM, PostgreSQL SIGINT: a fast
shutdown). A second runner on the same ``--data-dir``, a PostgreSQL left
running there, or a port already taken is reported in one line before
anything starts.
"""

import asyncio
import contextlib
import ctypes
import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import asyncpg
import structlog

from shared import logs
from shared.localpg import LocalPostgres, LocalPostgresError, PostgresNotFound, port_is_free
from shared.pg import DATABASE_DOWN
from shared.private_files import UnsafeFile, kept_secret
from shared.settings import StackSettings, load, split_host_port, to_environ, with_scheme

log = structlog.get_logger("gophermart")
STOP_TIMEOUT = 10.0
DATABASE_START_TIMEOUT = 60.0
_PR_SET_PDEATHSIG = 1


class StackError(RuntimeError):
    """Why the stack cannot start, in one line for the person who ran it."""


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    stop_signal: int = signal.SIGTERM


def lifeline(stop_signal: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` making the child receive ``stop_signal`` when we die (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # loaded before fork: the child only calls it
    parent = os.getpid()

    def set_parent_death_signal() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, stop_signal, 0, 0, 0)
        if os.getppid() != parent:  # we died before the signal was armed
            os._exit(1)

    return set_parent_death_signal


def _spawn(name: str, module: str, env: dict[str, str], *args: str) -> Child:
    # Own session: a terminal's Ctrl-C reaches us alone and we stop the
    # children in order, instead of every process racing its own shutdown.
    process = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        env=env,
        start_new_session=True,
        preexec_fn=lifeline(signal.SIGTERM),
    )
    log.info("started", process=name, child_pid=process.pid)
    return Child(name, process)


def _stop(children: Sequence[Child]) -> int:
    """Signal every child, wait, SIGKILL stragglers; the worst exit code."""
    for child in children:
        if child.process.poll() is None:
            child.process.send_signal(child.stop_signal)
    deadline = time.monotonic() + STOP_TIMEOUT
    worst = 0
    for child in children:
        try:
            code = child.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("did not stop in time; killing", process=child.name)
            child.process.kill()
            code = child.process.wait()
        if code not in (0, -child.stop_signal):
            worst = worst or code
    return worst


@contextlib.contextmanager
def _data_dir_lock(data_dir: Path) -> Iterator[None]:
    """One runner per data directory; the kernel drops the lock when we die, however."""
    path = data_dir / "gophermart.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise StackError(
                f"another gophermart (pid {holder}) is already running with "
                f"{data_dir}; stop it first (Ctrl-C or kill {holder})"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def _require_free(port: int, host: str, setting: str) -> None:
    if not port_is_free(port, host):
        raise StackError(
            f"port {port} ({setting}) is already in use: another gophermart or "
            f"another program listens there; stop it or set {setting}"
        )


async def _ensure_database(
    server: LocalPostgres, process: subprocess.Popen[bytes], name: str
) -> None:
    """Wait until the new server accepts connections, then create ``name`` if missing."""
    deadline = time.monotonic() + DATABASE_START_TIMEOUT
    while True:
        if process.poll() is not None:
            raise StackError(
                f"PostgreSQL exited at start (code {process.returncode}): "
                f"{_last_line(server.root / 'server.log')}"
            )
        try:
            conn = await asyncpg.connect(server.dsn, timeout=2)
            break
        except DATABASE_DOWN:
            if time.monotonic() > deadline:
                raise StackError(
                    f"PostgreSQL did not accept connections within "
                    f"{DATABASE_START_TIMEOUT:g} s; see "
                    f"{server.root / 'server.log'}"
                ) from None
            await asyncio.sleep(0.1)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def _last_line(path: Path) -> str:
    with contextlib.suppress(OSError):
        lines = path.read_text(errors="replace").strip().splitlines()
        if lines:
            return lines[-1]
    return f"see {path}"


def _data_dir(settings: StackSettings) -> Path:
    """--data-dir, created private, refused when another user owns it."""
    data_dir = Path(settings.data_dir).resolve()
    as_root = os.geteuid() == 0
    # Created private. As root the server runs as another user, which must pass
    # through; what lies inside is private one by one (the cluster's directory,
    # the password file, the lock), so an existing directory keeps its mode.
    data_dir.mkdir(mode=0o711 if as_root else 0o700, parents=True, exist_ok=True)
    info = data_dir.stat()
    if info.st_uid != os.geteuid():
        raise StackError(
            f"{data_dir} belongs to another user (uid {info.st_uid}): a cluster "
            "and a password there cannot be trusted; choose another --data-dir"
        )
    if as_root and not info.st_mode & 0o001:
        data_dir.chmod(info.st_mode & 0o7777 | 0o001)
    return data_dir


def _local_server(settings: StackSettings, data_dir: Path) -> LocalPostgres:
    """The cluster under --data-dir, once sure nothing else runs it (lock held)."""
    server = LocalPostgres(
        data_dir / "postgres", settings.local_pg_port, password_file=data_dir / "postgres.password"
    )
    pid = server.running_pid()
    if pid is not None:
        raise StackError(
            f"a PostgreSQL server (pid {pid}) is still running on {server.datadir}, "
            f"started by something other than a live gophermart; stop it (pg_ctl -D "
            f"{server.datadir} stop, as its user) and start again"
        )
    server.forget_stale_pid_file()  # left by a server that died with its machine
    _require_free(server.port, "127.0.0.1", "GOPHERMART_LOCAL_PG_PORT")
    return server


@contextlib.contextmanager
def _local_postgres(server: LocalPostgres) -> Iterator[tuple[str, Child]]:
    """The cluster, run as our child until the block ends: (DSN, child)."""
    log.warning(
        "DATABASE_URI is not set: starting a local PostgreSQL",
        data_dir=str(server.root),
        port=server.port,
        password_file=str(server.password_file),
    )
    server.prepare()
    child = Child("postgres", server.spawn(lifeline(signal.SIGINT)), signal.SIGINT)
    log.info("started", process=child.name, child_pid=child.process.pid)
    try:
        asyncio.run(_ensure_database(server, child.process, "gophermart"))
        yield server.dsn_for("gophermart"), child
    finally:
        _stop([child])


def _serve(settings: StackSettings, stop: threading.Event) -> int:
    with contextlib.ExitStack() as resources:
        env = {**os.environ, **to_environ(settings)}
        local = settings.database_uri is None
        data_dir = _data_dir(settings) if local else None
        # Everything that could stand in the way is checked before anything starts:
        # another runner on this data dir first (its ports would be taken too).
        if data_dir is not None:
            resources.enter_context(_data_dir_lock(data_dir))
        api_host, api_port = split_host_port(settings.run_address)
        _require_free(api_port, api_host, "RUN_ADDRESS")
        sim_host, sim_port = split_host_port(settings.simulator_address, 8081)
        if settings.accrual_system_address is None:
            _require_free(sim_port, sim_host, "GOPHERMART_SIMULATOR_ADDRESS")
        if settings.health_address:
            health_host, health_port = split_host_port(settings.health_address, 9100)
            _require_free(health_port, health_host, "WORKER_HEALTH_ADDRESS")
        server = _local_server(settings, data_dir) if data_dir is not None else None

        database: list[Child] = []
        if data_dir is not None and server is not None:
            if settings.session_secret is None:
                # All local: kept next to the database it belongs to, so a restart
                # logs nobody out. (With DATABASE_URI the API makes a random one per
                # run, as gophermart-api does.)
                secret_file = data_dir / "session.secret"
                env["SESSION_SECRET"] = kept_secret(secret_file)
                log.info(
                    "SESSION_SECRET is not set: using the one kept in a file", file=str(secret_file)
                )
            env["DATABASE_URI"], postgres = resources.enter_context(_local_postgres(server))
            database.append(postgres)
        children: list[Child] = []
        failed: Child | None = None
        try:
            if settings.accrual_system_address is None:
                log.warning(
                    "ACCRUAL_SYSTEM_ADDRESS is not set: starting the bundled simulator",
                    address=settings.simulator_address,
                )
                sim_env = {**env, "RUN_ADDRESS": settings.simulator_address}
                children.append(_spawn("accrual-sim", "accrual_sim", sim_env, "--seed-demo"))
                env["ACCRUAL_SYSTEM_ADDRESS"] = with_scheme(settings.simulator_address)
            children.append(_spawn("api", "api", env))
            children.append(_spawn("worker", "worker", env))
            while not stop.wait(0.2):
                failed = next(
                    (c for c in [*children, *database] if c.process.poll() is not None), None
                )
                if failed:
                    log.error(
                        "a process exited; stopping the rest",
                        process=failed.name,
                        code=failed.process.returncode,
                    )
                    break
        finally:
            # The API and the worker first, PostgreSQL (the ExitStack) after them.
            code = _stop(children)
        return 1 if failed else code


def main(argv: Sequence[str] | None = None) -> None:
    settings = load(StackSettings, argv, prog="gophermart")
    logs.configure(settings.log_level, settings.log_format)
    stop = threading.Event()

    def on_signal(signum: int, _: FrameType | None) -> None:
        log.info("stopping", signal=signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)
    try:
        code = _serve(settings, stop)
    except (StackError, LocalPostgresError, PostgresNotFound, UnsafeFile) as exc:
        sys.exit(f"gophermart: {exc}")
    sys.exit(code)


if __name__ == "__main__":
    main()
