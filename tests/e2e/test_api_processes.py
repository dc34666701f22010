"""API_PROCESSES: several real API processes on one port under the supervisor."""

import asyncio
import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from api.supervisor import child_budgets, process_count, shares, usable_cpus
from shared.metrics_share import FLUSH_INTERVAL
from shared.settings import ApiSettings
from tests.processes import Service, free_port, service_url
from tests.system import SESSION_SECRET


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped by whoever inherited it."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return not re.search(r"^State:\s+[ZX]", status, re.MULTILINE)


def wait_until(check: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.05)


@pytest.fixture
def api(database_uri: str, log_dir: Path) -> Iterator[Service]:
    port = free_port()
    service = Service(
        "api",
        "api",
        {
            "RUN_ADDRESS": f"127.0.0.1:{port}",
            "DATABASE_URI": database_uri,
            "SESSION_SECRET": SESSION_SECRET,
            "API_PROCESSES": "3",
            "DB_POOL_MAX": "7",
            "DB_POOL_MIN": "3",
        },
        log_dir,
        port=port,
    )
    service.start()
    assert service.process is not None
    wait_until(lambda: len(children(service.process.pid)) == 3)
    wait_until(lambda: len(_pids_of(service, "listening")) == 3)
    yield service
    if service.running:
        service.stop(signal.SIGTERM)
    for pid in children(service.process.pid):
        os.kill(pid, signal.SIGKILL)


async def _get(url: str, times: int) -> list[int]:
    """``times`` requests, each on a connection of its own (so each may meet another process)."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        statuses = []
        for _ in range(times):
            async with http.get(url) as response:
                statuses.append(response.status)
        return statuses


def _pids_of(service: Service, event_name: str, **fields: str) -> set[int]:
    """The processes that logged ``event_name`` (with ``fields``)."""
    pids = set()
    for line in service.log().splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if (
                event.get("event") == event_name
                and "pid" in event
                and all(event.get(k) == v for k, v in fields.items())
            ):
                pids.add(event["pid"])
    return pids


def _request_pids(service: Service, path: str) -> set[int]:
    return _pids_of(service, "request", path=path)


async def test_every_process_serves_the_one_port_and_sigterm_stops_them_all(
    api: Service, database_uri: str
) -> None:
    assert api.process is not None and api.port is not None
    pids = children(api.process.pid)
    assert await _get(f"{service_url(api.port)}/healthz", 120) == [200] * 120
    # The kernel spread the connections over all three (each logs its pid).
    assert _request_pids(api, "/healthz") == set(pids)

    # Pool sizes are totals split between the processes: DB_POOL_MIN 3 is one each.
    conn = await asyncpg.connect(database_uri)
    try:
        idle = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'gophermart' "
            "AND datname = current_database()"
        )
    finally:
        await conn.close()
    assert idle == 3

    assert api.stop(signal.SIGTERM) == 0, api.log()[-3000:]
    assert not any(alive(pid) for pid in pids)
    assert "did not stop in time" not in api.log()


async def test_a_killed_process_is_replaced_and_the_port_keeps_serving(api: Service) -> None:
    assert api.process is not None and api.port is not None
    before = children(api.process.pid)
    os.kill(before[0], signal.SIGKILL)
    wait_until(
        lambda: (
            len(children(api.process.pid)) == 3  # type: ignore[union-attr]
            and before[0] not in children(api.process.pid)
        )
    )  # type: ignore[union-attr]
    after = children(api.process.pid)
    (replacement,) = set(after) - set(before)
    # The others serve while the replacement starts; then it serves too.
    deadline = time.monotonic() + 20
    while replacement not in _request_pids(api, "/healthz"):
        assert time.monotonic() < deadline, api.log()[-3000:]
        assert await _get(f"{service_url(api.port)}/healthz", 20) == [200] * 20
    assert "an API process exited" in api.log()
    assert api.stop(signal.SIGINT) == 0, api.log()[-3000:]
    assert not any(alive(pid) for pid in after)


async def test_processes_stop_by_themselves_when_the_supervisor_is_killed(api: Service) -> None:
    assert api.process is not None
    pids = children(api.process.pid)
    api.kill()  # SIGKILL: no chance to stop its children
    wait_until(lambda: not any(alive(pid) for pid in pids))
    assert api.log().count("the supervisor is gone; stopping") == 3


async def test_metrics_count_the_requests_of_every_process(api: Service) -> None:
    assert api.port is not None
    url = service_url(api.port)
    await _get(f"{url}/api/openapi.json", 40)
    assert len(_request_pids(api, "/api/openapi.json")) > 1
    pattern = re.compile(
        r'^gophermart_http_requests_total\{method="GET",'
        r'route="/api/openapi.json",status="200"\} (\S+)$',
        re.MULTILINE,
    )

    async def count(http: aiohttp.ClientSession) -> float:
        async with http.get(f"{url}/metrics") as response:
            text = await response.text()
        found = pattern.search(text)
        assert found is not None, text[:2000]
        return float(found.group(1))

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        # Other processes' snapshots are at most FLUSH_INTERVAL old.
        deadline = time.monotonic() + 5 * FLUSH_INTERVAL
        while await count(http) != 40:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        # Scrapes reach different processes: each reports the total of all of them.
        assert [await count(http) for _ in range(6)] == [40.0] * 6


def test_budgets_are_totals_split_between_processes() -> None:
    assert shares(10, 3) == [4, 3, 3]
    settings = ApiSettings(
        database_uri="x", db_pool_max=10, db_pool_min=2, hash_concurrency=3, api_processes=4
    )
    assert process_count(settings) == 4
    budgets = child_budgets(settings, 4)
    assert [b["DB_POOL_MAX"] for b in budgets] == ["3", "3", "2", "2"]
    assert [b["DB_POOL_MIN"] for b in budgets] == ["1", "1", "0", "0"]
    assert sum(int(b["DB_POOL_MAX"]) for b in budgets) == 10
    assert [b["HASH_CONCURRENCY"] for b in budgets] == ["1", "1", "1", "1"]  # ≥ 1 each


def test_usable_cpus_honour_a_cgroup_quota(tmp_path: Path) -> None:
    machine = usable_cpus(tmp_path)  # no cpu.max there: the affinity
    assert machine == len(os.sched_getaffinity(0))
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs -> 2 processes
    assert usable_cpus(tmp_path) == min(machine, 2)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert usable_cpus(tmp_path) == machine


def test_process_count_defaults_to_cpus_within_the_pool_budget() -> None:
    cpus = usable_cpus()
    assert process_count(ApiSettings(database_uri="x")) == min(cpus, 10)
    assert process_count(ApiSettings(database_uri="x", db_pool_max=1)) == 1
    with pytest.raises(SystemExit, match="exceeds DB_POOL_MAX"):
        process_count(ApiSettings(database_uri="x", api_processes=11))
