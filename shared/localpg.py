"""A private PostgreSQL server in a directory: for tests and for ``make run``.

Finds the server binaries (PATH, ``pg_config --bindir``, /usr/lib/postgresql),
runs ``initdb`` once, starts the server on 127.0.0.1 with its socket inside the
data directory, and stops it again. ``initdb`` refuses to run as root, so as
root the server runs as the ``postgres`` (or ``nobody``) user, which is given
ownership of the data directory only: nothing outside it changes.

Every connection, over TCP or the socket, must prove the ``postgres`` role's
password (SCRAM-SHA-256): another OS user of the machine can reach
127.0.0.1 but not the password. The password is random; with a
``password_file`` it is generated once and kept there (mode 0600), otherwise
it lives only in this object (throwaway clusters of the suite and benchmarks).
A cluster initialised with ``trust`` by an earlier version is converted in
place before it first starts (single-user mode: nothing listens meanwhile).
"""

import contextlib
import glob
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

from shared.private_files import read_private, write_private

# Durability off: for throwaway test clusters only.
FAST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


class PostgresNotFound(RuntimeError):
    pass


class LocalPostgresError(RuntimeError):
    """The local cluster cannot be used as it is; the message says why and what to do."""


_TRUST_LINE = re.compile(r"^(\s*(?:local|host\S*)\s.*\s)trust(\s*)$", re.MULTILINE)


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
            out = subprocess.run(
                [pg_config, "--bindir"], check=True, capture_output=True, text=True
            ).stdout.strip()
            candidates.append(Path(out))
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    versions.sort(
        key=lambda p: int(p.split("/")[-2]) if p.split("/")[-2].isdigit() else 0, reverse=True
    )
    candidates.extend(Path(p) for p in versions)
    for directory in candidates:
        if (directory / "initdb").exists() and (directory / "pg_ctl").exists():
            return directory
    raise PostgresNotFound(
        "PostgreSQL server binaries not found: install them (Debian: apt-get install "
        "postgresql) or set PG_BINDIR"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on ``host:port`` now (connections in TIME_WAIT
    do not count: servers set SO_REUSEADDR, and so does this check)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


class LocalPostgres:
    """One PostgreSQL cluster living in ``datadir``."""

    def __init__(
        self,
        datadir: Path,
        port: int | None = None,
        *,
        fast: bool = False,
        password_file: Path | None = None,
    ) -> None:
        self.root = Path(datadir).resolve()
        self.datadir = self.root / "pgdata"
        self.port = port or free_port()
        self.fast = fast
        self.bindir = find_bindir()
        self.password_file = password_file
        self._password = secrets.token_urlsafe(24) if password_file is None else None
        self._run_as: str | None = None
        if os.geteuid() == 0:
            self._run_as = "postgres" if _user_exists("postgres") else "nobody"

    @property
    def password(self) -> str:
        if self._password is None:
            assert self.password_file is not None
            self._password = read_private(self.password_file)
        return self._password

    @property
    def dsn(self) -> str:
        return self.dsn_for("postgres")

    def dsn_for(self, database: str) -> str:
        return (
            f"postgresql://postgres:{quote(self.password, safe='')}@127.0.0.1:{self.port}"
            f"/{database}"
        )

    @property
    def pid_file(self) -> Path:
        return self.datadir / "postmaster.pid"

    def running_pid(self) -> int | None:
        """The pid of a live postmaster on this data directory, if any."""
        try:
            pid = int(self.pid_file.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None  # stale: the server starts over it by itself
        except PermissionError:
            pass  # alive, another user's
        with contextlib.suppress(OSError):  # Linux: is that pid still a postgres at all?
            if not Path(f"/proc/{pid}/comm").read_text().startswith("postgres"):
                return None  # the pid was reused by an unrelated process
        return pid

    def forget_stale_pid_file(self) -> None:
        """Remove a postmaster.pid no live server owns (the server would refuse a reused pid)."""
        if self.pid_file.exists() and self.running_pid() is None:
            self.pid_file.unlink(missing_ok=True)

    def _cmd(self, *args: str) -> list[str]:
        if self._run_as:
            return ["runuser", "-u", self._run_as, "--", *args]
        return list(args)

    def _give_away(self, path: Path) -> None:
        if self._run_as:
            user = pwd.getpwnam(self._run_as)
            os.chown(path, user.pw_uid, user.pw_gid)

    def prepare(self) -> None:
        """Create the cluster (or secure one an earlier version left on trust)."""
        fresh = not (self.datadir / "PG_VERSION").exists()
        if self.password_file is not None and not self.password_file.exists():
            if not fresh and not self._trusting():
                raise LocalPostgresError(
                    f"{self.password_file} is missing, so nothing can log in to the cluster "
                    f"in {self.datadir}: restore the file, or remove {self.root} to start "
                    "afresh (its data is lost)"
                )
            write_private(self.password_file, secrets.token_urlsafe(32))
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)  # the socket lives here: no one else even reaches it
        self._give_away(self.root)
        if fresh:
            # initdb reads the password from a file: one only the server's user can
            # read, inside the private root, gone as soon as initdb is done.
            pwfile = self.root / "initdb.pw"
            pwfile.unlink(missing_ok=True)
            write_private(pwfile, self.password)
            self._give_away(pwfile)
            try:
                self._run(
                    self._cmd(
                        str(self.bindir / "initdb"),
                        "-D",
                        str(self.datadir),
                        "-U",
                        "postgres",
                        "--auth=scram-sha-256",
                        f"--pwfile={pwfile}",
                        "--encoding=UTF8",
                        "--locale=C.UTF-8",
                        "--no-sync",
                    ),
                    "initdb",
                )
            finally:
                pwfile.unlink(missing_ok=True)
        elif self._trusting():
            self._secure_trusting_cluster()

    def options(self) -> dict[str, str]:
        return {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.root),
            "unix_socket_permissions": "0700",
            "password_encryption": "scram-sha-256",
            "max_connections": "300",
            **(FAST_SETTINGS if self.fast else {}),
        }

    def start(self) -> str:
        """initdb when needed, start, wait until it accepts connections; return the DSN."""
        self.prepare()
        opt_text = " ".join(f"-c {key}={value}" for key, value in self.options().items())
        self._run(
            self._cmd(
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.datadir),
                "-l",
                str(self.root / "server.log"),
                "-o",
                opt_text,
                "-w",
                "-t",
                "60",
                "start",
            ),
            "pg_ctl start",
        )
        self._wait_ready()
        return self.dsn

    def spawn(self, preexec: Callable[[], None] | None = None) -> "subprocess.Popen[bytes]":
        """Run the postmaster as a child of this process (no daemon): it can die with us.

        ``preexec`` runs in the child after it has become the server's user.
        Call ``prepare()`` first; stop it with SIGINT (fast shutdown).
        """
        args = [str(self.bindir / "postgres"), "-D", str(self.datadir)]
        for key, value in self.options().items():
            args += ["-c", f"{key}={value}"]
        user = pwd.getpwnam(self._run_as) if self._run_as else None
        with (self.root / "server.log").open("ab") as log:
            return subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=preexec,
                user=user.pw_uid if user else None,
                group=user.pw_gid if user else None,
                extra_groups=[] if user else None,
            )

    def _trusting(self) -> bool:
        hba = self.datadir / "pg_hba.conf"
        return hba.exists() and _TRUST_LINE.search(hba.read_text()) is not None

    def _secure_trusting_cluster(self) -> None:
        """Give ``postgres`` the password and require it everywhere, with nothing listening."""
        statement = (
            "SET password_encryption = 'scram-sha-256'; "
            f"ALTER ROLE postgres PASSWORD '{self.password}';\n"
        )
        self._run(
            self._cmd(
                str(self.bindir / "postgres"), "--single", "-D", str(self.datadir), "postgres"
            ),
            "postgres --single",
            input=statement,
        )
        hba = self.datadir / "pg_hba.conf"
        hba.write_text(_TRUST_LINE.sub(r"\1scram-sha-256\2", hba.read_text()))

    def _run(self, cmd: list[str], what: str, input: str | None = None) -> None:
        result = subprocess.run(cmd, capture_output=True, text=True, input=input, check=False)
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()
            raise LocalPostgresError(
                f"{what} failed ({result.returncode}): {detail[-1] if detail else 'no output'}"
                f"; see {self.root / 'server.log'}"
            )

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1),
            ):
                return
            time.sleep(0.05)
        raise RuntimeError(f"PostgreSQL did not start; see {self.root / 'server.log'}")

    def stop(self, mode: str = "fast") -> None:
        if not (self.datadir / "postmaster.pid").exists():
            return
        subprocess.run(
            self._cmd(
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.datadir),
                "-m",
                mode,
                "-w",
                "-t",
                "60",
                "stop",
            ),
            check=False,
            capture_output=True,
        )


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
