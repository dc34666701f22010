"""`gophermart` with its own PostgreSQL: private, password-only, and nothing outlives it.

Real processes throughout: the runner, its PostgreSQL, simulator, API and
worker; the runner is killed with SIGKILL and hung up with SIGHUP.
"""

import asyncio
import json
import os
import pwd
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from shared.localpg import LocalPostgres, find_bindir, port_is_free
from tests.helpers import eventually
from tests.processes import Service, free_port, service_url

pytestmark = pytest.mark.e2e
PASSWORD = "e2e-password-5d0b"


@dataclass
class Ports:
    api: int
    pg: int
    sim: int


def _runner(name: str, data: Path, ports: Ports, log_dir: Path, *, wait: bool = True) -> Service:
    service = Service(
        name,
        "stack",
        {
            "RUN_ADDRESS": f"127.0.0.1:{ports.api}",
            "GOPHERMART_DATA_DIR": str(data),
            "GOPHERMART_LOCAL_PG_PORT": str(ports.pg),
            "GOPHERMART_SIMULATOR_ADDRESS": f"127.0.0.1:{ports.sim}",
        },
        log_dir,
        port=ports.api if wait else None,
    )
    service.env.pop("DATABASE_URI", None)
    service.env.pop("ACCRUAL_SYSTEM_ADDRESS", None)
    return service.start()


def _children(runner: Service) -> dict[str, int]:
    """Process name -> pid of every child the runner logged starting, and of the API
    supervisor's own children (both log ``child_pid``)."""
    found = {}
    for line in runner.log().splitlines():
        if line.startswith("{") and "child_pid" in line:
            event = json.loads(line)
            found[event["process"]] = event["child_pid"]
    return found


def _alive(pid: int) -> bool:
    """Running (a zombie nobody reaped yet counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _one_line_refusal(runner: Service) -> str:
    assert runner.process is not None
    assert runner.process.wait(60) == 1
    text = runner.log()
    assert "Traceback" not in text, text
    last = text.strip().splitlines()[-1]
    assert last.startswith("gophermart: "), text
    return last


@pytest.fixture
def ports() -> Ports:
    return Ports(free_port(), free_port(), free_port())


@pytest.fixture
def runners() -> Iterator[list[Service]]:
    started: list[Service] = []
    yield started
    for runner in started:
        if runner.running:
            runner.kill()


async def _register(api_port: int, login: str) -> int:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{service_url(api_port)}/api/user/register",
            json={"login": login, "password": PASSWORD},
        ) as response,
    ):
        return response.status


async def _login(api_port: int, login: str) -> int:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{service_url(api_port)}/api/user/login", json={"login": login, "password": PASSWORD}
        ) as response,
    ):
        return response.status


async def test_kill_9_of_the_runner_takes_every_child_down_and_the_next_run_starts_clean(
    log_dir: Path, ports: Ports, runners: list[Service]
) -> None:
    data = log_dir / "data"
    first = _runner("gophermart-1", data, ports, log_dir)
    runners.append(first)
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{service_url(ports.api)}/api/user/register",
            json={"login": "survivor", "password": PASSWORD},
        ) as response,
    ):
        assert response.status == 200
        token = response.headers["Authorization"]
    assert (data / "session.secret").stat().st_mode & 0o777 == 0o600
    children = _children(first)
    assert {"postgres", "accrual-sim", "api", "worker"} <= set(children), first.log()[-2000:]

    first.kill()  # SIGKILL: no handler runs, no cleanup in the runner

    async def all_gone() -> bool:
        return not any(_alive(pid) for pid in children.values())

    await eventually(
        all_gone,
        within=30,
        what="every child of the killed runner exits",
        context=lambda: str({n: _alive(p) for n, p in children.items()}),
    )
    assert all(port_is_free(p) for p in (ports.api, ports.pg, ports.sim))

    # A postmaster.pid left behind whose pid now belongs to an unrelated live
    # process (as after a power cut) does not stop the next run.
    (data / "postgres" / "pgdata" / "postmaster.pid").write_text(f"{os.getpid()}\n")
    second = _runner("gophermart-2", data, ports, log_dir)
    runners.append(second)
    assert await _login(ports.api, "survivor") == 200  # same cluster, data kept
    # The session secret is kept too: a token from before the kill still works.
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{service_url(ports.api)}/api/user/balance", headers={"Authorization": token}
        ) as response,
    ):
        assert response.status == 200
    assert second.stop(signal.SIGINT, timeout=30) == 0, second.log()[-3000:]
    for secret in ("postgres.password", "session.secret"):
        value = (data / secret).read_text().strip()
        for path in log_dir.glob("*.log"):
            assert value not in path.read_text(errors="replace"), (secret, path)


async def test_sighup_stops_cleanly_and_another_instance_is_refused_in_one_line(
    log_dir: Path, ports: Ports, runners: list[Service]
) -> None:
    data = log_dir / "data"
    first = _runner("gophermart-main", data, ports, log_dir)
    runners.append(first)
    assert first.process is not None

    # Same data directory, other ports: the lock answers.
    again = _runner(
        "gophermart-again", data, Ports(free_port(), free_port(), free_port()), log_dir, wait=False
    )
    runners.append(again)
    refusal = _one_line_refusal(again)
    assert refusal.startswith(
        f"gophermart: another gophermart (pid {first.process.pid}) is already running with"
    ), refusal
    # Another data directory, same API port: the port answers.
    clash = _runner(
        "gophermart-clash",
        log_dir / "other",
        Ports(ports.api, free_port(), free_port()),
        log_dir,
        wait=False,
    )
    runners.append(clash)
    refusal = _one_line_refusal(clash)
    assert refusal.startswith(f"gophermart: port {ports.api} (RUN_ADDRESS) is already in use"), (
        refusal
    )
    assert not (log_dir / "other" / "postgres").exists()  # refused before anything started

    children = _children(first)
    assert first.stop(signal.SIGHUP, timeout=30) == 0, first.log()[-3000:]
    assert not any(_alive(pid) for pid in children.values())
    assert '"signal":"SIGHUP"' in first.log()


async def test_the_local_postgresql_wants_the_password_it_keeps_private(
    log_dir: Path, ports: Ports, runners: list[Service]
) -> None:
    data = log_dir / "data"
    runners.append(_runner("gophermart-pg", data, ports, log_dir))
    secret_file = data / "postgres.password"
    assert secret_file.stat().st_mode & 0o777 == 0o600
    assert secret_file.stat().st_uid == os.geteuid()
    assert (data / "postgres").stat().st_mode & 0o777 == 0o700  # holds the socket
    password = secret_file.read_text().strip()
    assert len(password) >= 32

    for dsn in (
        f"postgresql://postgres@127.0.0.1:{ports.pg}/gophermart",
        f"postgresql://postgres:wrong@127.0.0.1:{ports.pg}/gophermart",
        f"postgresql://postgres@/gophermart?host={data / 'postgres'}&port={ports.pg}",
    ):
        with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError):
            await asyncpg.connect(dsn, timeout=5)  # no password, or a wrong one
    conn = await asyncpg.connect(
        f"postgresql://postgres:{password}@127.0.0.1:{ports.pg}/gophermart", timeout=5
    )
    try:
        assert await conn.fetchval("SHOW listen_addresses") == "127.0.0.1"
        assert await conn.fetchval(
            "SELECT rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid WHERE rolname = 'postgres'"
        )
    finally:
        await conn.close()


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("runuser"),
    reason="needs root to act as another local user",
)
async def test_another_local_user_can_neither_connect_nor_read_the_password(
    log_dir: Path, ports: Ports, runners: list[Service]
) -> None:
    data = log_dir / "data"
    data.mkdir()
    data.chmod(0o700)  # private already: the server's user is let through, no more
    runners.append(_runner("gophermart-other-user", data, ports, log_dir))
    assert data.stat().st_mode & 0o777 == 0o701
    psql = shutil.which("psql") or str(find_bindir() / "psql")
    other = "nobody"
    pwd.getpwnam(other)
    as_other = ["runuser", "-u", other, "--"]
    connect = await asyncio.to_thread(
        subprocess.run,
        [
            *as_other,
            psql,
            "-w",
            "-h",
            "127.0.0.1",
            "-p",
            str(ports.pg),
            "-U",
            "postgres",
            "-d",
            "gophermart",
            "-c",
            "SELECT 1",
        ],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"]},
    )
    assert connect.returncode != 0
    assert "password" in connect.stderr, connect.stderr
    read = await asyncio.to_thread(
        subprocess.run,
        [*as_other, "cat", str(data / "postgres.password")],
        capture_output=True,
        text=True,
    )
    assert read.returncode != 0 and "Permission denied" in read.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own a directory as another user")
async def test_a_data_dir_owned_by_another_user_is_refused_in_one_line(
    log_dir: Path, ports: Ports, runners: list[Service]
) -> None:
    data = log_dir / "planted"
    data.mkdir()
    nobody = pwd.getpwnam("nobody")
    os.chown(data, nobody.pw_uid, nobody.pw_gid)
    runner = _runner("gophermart-planted", data, ports, log_dir, wait=False)
    runners.append(runner)
    refusal = _one_line_refusal(runner)
    assert refusal.startswith(f"gophermart: {data} belongs to another user"), refusal
    assert not (data / "postgres").exists()


async def test_a_postgresql_left_running_on_the_data_dir_is_reported_in_one_line(
    log_dir: Path, ports: Ports, runners: list[Service]
) -> None:
    data = log_dir / "data"
    data.mkdir()
    leftover = LocalPostgres(
        data / "postgres", free_port(), password_file=data / "postgres.password"
    )
    await asyncio.to_thread(leftover.start)  # a daemon no runner owns
    try:
        pid = leftover.running_pid()
        assert pid is not None
        runner = _runner("gophermart-stale", data, ports, log_dir, wait=False)
        runners.append(runner)
        refusal = _one_line_refusal(runner)
        assert refusal.startswith(
            f"gophermart: a PostgreSQL server (pid {pid}) is still running on"
        ), refusal
        assert _alive(pid)  # reported, not killed
    finally:
        await asyncio.to_thread(leftover.stop)


async def test_a_cluster_an_earlier_version_left_on_trust_gets_the_password(
    log_dir: Path, ports: Ports, runners: list[Service]
) -> None:
    data = log_dir / "data"
    old = LocalPostgres(data / "postgres", ports.pg)
    old.root.mkdir(parents=True)
    old._give_away(old.root)
    await asyncio.to_thread(
        subprocess.run,
        old._cmd(
            str(old.bindir / "initdb"),
            "-D",
            str(old.datadir),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
        ),
        check=True,
        capture_output=True,
    )
    runners.append(_runner("gophermart-upgrade", data, ports, log_dir))
    assert "trust" not in "".join(
        line
        for line in (old.datadir / "pg_hba.conf").read_text().splitlines()
        if not line.lstrip().startswith("#")
    )
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{ports.pg}/gophermart", timeout=5)
    assert await _register(ports.api, "after-upgrade") == 200
