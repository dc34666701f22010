"""End-to-end fixtures: PostgreSQL, accrual-sim, gophermart-api and workers as real processes."""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.processes import Service, free_port, service_url

pytestmark = pytest.mark.e2e


@dataclass
class System:
    """A running Gophermart: simulator, API, workers; an HTTP session to drive them."""

    log_dir: Path
    database_uri: str
    sim: Service
    api: Service
    workers: list[Service]
    http: aiohttp.ClientSession
    worker_env: dict[str, str] = field(default_factory=dict)

    @property
    def api_url(self) -> str:
        assert self.api.port is not None
        return service_url(self.api.port)

    @property
    def sim_url(self) -> str:
        assert self.sim.port is not None
        return service_url(self.sim.port)

    def add_worker(self) -> Service:
        name = f"worker-{len(self.workers) + 1}"
        worker = Service(name, "worker", self.worker_env, self.log_dir).start()
        self.workers.append(worker)
        return worker

    async def register(self, login: str, password: str = "pw") -> str:
        async with self.http.post(f"{self.api_url}/api/user/register",
                                  json={"login": login, "password": password}) as response:
            assert response.status == 200, await response.text()
            return response.headers["Authorization"]

    async def sim_rule(self, match: str, reward: float | str, reward_type: str) -> None:
        body = f'{{"match": "{match}", "reward": {reward}, "reward_type": "{reward_type}"}}'
        async with self.http.post(f"{self.sim_url}/api/goods", data=body,
                                  headers={"Content-Type": "application/json"}) as response:
            assert response.status == 200, await response.text()

    async def sim_order(self, number: str, goods: list[tuple[str, str]]) -> None:
        items = ", ".join(f'{{"description": "{d}", "price": {p}}}' for d, p in goods)
        body = f'{{"order": "{number}", "goods": [{items}]}}'
        async with self.http.post(f"{self.sim_url}/api/orders", data=body.encode(),
                                  headers={"Content-Type": "application/json"}) as response:
            assert response.status == 202, await response.text()

    async def sim_stats(self) -> dict[str, Any]:
        async with self.http.get(f"{self.sim_url}/api/stats") as response:
            result: dict[str, Any] = await response.json()
            return result

    async def upload(self, token: str, number: str) -> int:
        async with self.http.post(f"{self.api_url}/api/user/orders", data=number,
                                  headers={"Authorization": token,
                                           "Content-Type": "text/plain"}) as response:
            return response.status

    async def get(self, token: str, path: str) -> tuple[int, Any]:
        async with self.http.get(f"{self.api_url}{path}",
                                 headers={"Authorization": token}) as response:
            body = await response.json() if response.status == 200 else None
            return response.status, body

    async def withdraw(self, token: str, order: str, amount: str) -> int:
        async with self.http.post(f"{self.api_url}/api/user/balance/withdraw",
                                  data=f'{{"order": "{order}", "sum": {amount}}}',
                                  headers={"Authorization": token,
                                           "Content-Type": "application/json"}) as response:
            return response.status

    async def wait_for(self, check: Callable[[], Awaitable[bool]], within: float = 30.0,
                       what: str = "condition") -> None:
        deadline = asyncio.get_running_loop().time() + within
        while not await check():
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{what} not reached within {within} s\n{self.logs_tail()}")
            await asyncio.sleep(0.1)

    def logs_tail(self, lines: int = 30) -> str:
        parts = []
        for service in (self.sim, self.api, *self.workers):
            tail = service.log().splitlines()[-lines:]
            parts.append(f"--- {service.name} ---\n" + "\n".join(tail))
        return "\n".join(parts)


SystemFactory = Callable[..., Awaitable[System]]


@pytest.fixture
async def start_system(database_uri: str, log_dir: Path) -> AsyncIterator[SystemFactory]:
    """Start the whole system with simulator and worker options; stop it afterwards."""
    started: list[System] = []

    async def start(*, workers: int = 2, sim_args: tuple[str, ...] = ("--delay", "0"),
                    worker_env: dict[str, str] | None = None) -> System:
        sim_port, api_port = free_port(), free_port()
        sim = Service("accrual-sim", "accrual_sim", {"RUN_ADDRESS": f"127.0.0.1:{sim_port}"},
                      log_dir, sim_args, port=sim_port).start()
        common = {"DATABASE_URI": database_uri,
                  "ACCRUAL_SYSTEM_ADDRESS": f"127.0.0.1:{sim_port}"}
        api = Service("api", "api", {**common, "RUN_ADDRESS": f"127.0.0.1:{api_port}",
                                     "SESSION_SECRET": "e2e-secret"},
                      log_dir, port=api_port).start()
        env = {**common, "WORKER_POLL_INTERVAL": "0.5", **(worker_env or {})}
        system = System(log_dir, database_uri, sim, api, [], aiohttp.ClientSession(), env)
        started.append(system)
        for _ in range(workers):
            system.add_worker()
        return system

    yield start
    for system in started:
        await system.http.close()
        for service in (*system.workers, system.api, system.sim):
            if service.running:
                service.stop()
