"""A private PostgreSQL server in a directory: for tests and for ``make run``.

Finds the server binaries (PATH, ``pg_config --bindir``, /usr/lib/postgresql),
runs ``initdb`` once, starts the server on 127.0.0.1 with its socket inside the
data directory, and stops it again. ``initdb`` refuses to run as root, so as
root the server runs as the ``postgres`` (or ``nobody``) user, which is given
ownership of the data directory only: nothing outside it changes.
"""

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

# Durability off: for throwaway test clusters only.
FAST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


class PostgresNotFound(RuntimeError):
    pass


def find_bindir() -> Path:
    """The directory holding initdb, pg_ctl and postgres."""
    candidates: list[Path] = []
    env_dir = os.environ.get("PG_BINDIR")
    if env_dir:
        candidates.append(Path(env_dir))
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).parent)
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            out = subprocess.run([pg_config, "--bindir"], check=True,
                                 capture_output=True, text=True).stdout.strip()
            candidates.append(Path(out))
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    versions.sort(key=lambda p: int(p.split("/")[-2]) if p.split("/")[-2].isdigit() else 0,
                  reverse=True)
    candidates.extend(Path(p) for p in versions)
    for directory in candidates:
        if (directory / "initdb").exists() and (directory / "pg_ctl").exists():
            return directory
    raise PostgresNotFound(
        "PostgreSQL server binaries not found: install them (Debian: apt-get install "
        "postgresql) or set PG_BINDIR")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class LocalPostgres:
    """One PostgreSQL cluster living in ``datadir``."""

    def __init__(self, datadir: Path, port: int | None = None, *, fast: bool = False) -> None:
        self.root = Path(datadir).resolve()
        self.datadir = self.root / "pgdata"
        self.port = port or free_port()
        self.fast = fast
        self.bindir = find_bindir()
        self._run_as: str | None = None
        if os.geteuid() == 0:
            self._run_as = "postgres" if _user_exists("postgres") else "nobody"

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def dsn_for(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _cmd(self, *args: str) -> list[str]:
        if self._run_as:
            return ["runuser", "-u", self._run_as, "--", *args]
        return list(args)

    def _give_away(self, path: Path) -> None:
        if self._run_as:
            user = pwd.getpwnam(self._run_as)
            os.chown(path, user.pw_uid, user.pw_gid)

    def start(self) -> str:
        """initdb when needed, start, wait until it accepts connections; return the DSN."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._give_away(self.root)
        if not (self.datadir / "PG_VERSION").exists():
            subprocess.run(
                self._cmd(str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", "postgres",
                          "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync"),
                check=True, capture_output=True)
        options = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.root),
            "max_connections": "300",
            **(FAST_SETTINGS if self.fast else {}),
        }
        opt_text = " ".join(f"-c {key}={value}" for key, value in options.items())
        subprocess.run(
            self._cmd(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-l",
                      str(self.root / "server.log"), "-o", opt_text, "-w", "-t", "60", "start"),
            check=True, capture_output=True)
        self._wait_ready()
        return self.dsn

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=1):
                return
            time.sleep(0.05)
        raise RuntimeError(f"PostgreSQL did not start; see {self.root / 'server.log'}")

    def stop(self, mode: str = "fast") -> None:
        if not (self.datadir / "postmaster.pid").exists():
            return
        subprocess.run(
            self._cmd(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", mode,
                      "-w", "-t", "60", "stop"),
            check=False, capture_output=True)



def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@contextlib.contextmanager
def throwaway(prefix: str = "gophermart-pg-") -> Iterator[LocalPostgres]:
    """A fast, durability-free cluster in a new temp dir, removed afterwards (tests)."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    server = LocalPostgres(root, fast=True)
    try:
        server.start()
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)
