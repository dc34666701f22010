"""The whole system as real processes: simulator, API and a changing fleet of workers.

Used by the end-to-end tests, the chaos tests and ``python -m tests.chaos.run``
alike, so it depends on no pytest fixture. Every HTTP helper returns the status (and body)
instead of asserting, because under faults the caller decides what is allowed.
"""

import contextlib
import json
import signal
import subprocess
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import aiohttp

from tests.processes import Service, free_port, service_url

SESSION_SECRET = "chaos-session-secret-4f9c2e-0b7d31a8"

# Reward rules every run registers: (match, reward, type).
RULES: tuple[tuple[str, str, str], ...] = (
    ("Bork", "10", "%"),
    ("Pringles", "7.5", "%"),
    ("Coca-Cola", "12.5", "pt"),
    ("LG", "3.33", "%"),
)


def expected_accrual(goods: Iterable[tuple[str, str]]) -> Decimal | None:
    """What the accrual system awards (each good matching a rule earns its percent of
    the price or its points; the sum rounded half up), computed independently of
    the simulator's code."""
    total, matched = Decimal(0), False
    for description, price in goods:
        for match, reward, kind in RULES:
            if match in description:
                matched = True
                total += Decimal(price) * Decimal(reward) / 100 if kind == "%" else Decimal(reward)
    return total.quantize(Decimal("0.01"), ROUND_HALF_UP) if matched else None


@dataclass
class Stack:
    """A running system; ``workers`` holds every worker ever started, dead ones too."""

    log_dir: Path
    database_uri: str
    sim: Service
    api: Service
    http: aiohttp.ClientSession
    worker_env: dict[str, str]
    workers: list[Service] = field(default_factory=list)
    killed: int = 0
    # tests/hostile_accrual.py in front of the simulator, when asked for: the workers
    # talk to it, and it answers scripted orders its own way.
    front: Service | None = None

    @classmethod
    async def start(
        cls,
        database_uri: str,
        log_dir: Path,
        *,
        workers: int = 2,
        sim_args: tuple[str, ...] = ("--delay", "0"),
        worker_env: dict[str, str] | None = None,
        api_env: dict[str, str] | None = None,
        hostile_front: bool = False,
    ) -> "Stack":
        sim_port, api_port = free_port(), free_port()
        sim = Service(
            "accrual-sim",
            "accrual_sim",
            {"RUN_ADDRESS": f"127.0.0.1:{sim_port}"},
            log_dir,
            sim_args,
            port=sim_port,
        ).start()
        front = None
        accrual_port = sim_port
        if hostile_front:
            accrual_port = free_port()
            front = Service(
                "hostile-front",
                "tests.hostile_accrual",
                {},
                log_dir,
                ("--port", str(accrual_port), "--upstream", service_url(sim_port)),
                port=accrual_port,
            ).start()
        api = Service(
            "api",
            "api",
            {
                "DATABASE_URI": database_uri,
                "RUN_ADDRESS": f"127.0.0.1:{api_port}",
                "SESSION_SECRET": SESSION_SECRET,
                "LOGIN_MAX_FAILURES": "0",
                "REGISTER_MAX_PER_ADDRESS": "0",
                **(api_env or {}),
            },
            log_dir,
            port=api_port,
        ).start()
        env = {
            "DATABASE_URI": database_uri,
            "ACCRUAL_SYSTEM_ADDRESS": f"127.0.0.1:{accrual_port}",
            "WORKER_POLL_INTERVAL": "0.5",
            **(worker_env or {}),
        }
        connector = aiohttp.TCPConnector(limit=32)
        stack = cls(
            log_dir,
            database_uri,
            sim,
            api,
            aiohttp.ClientSession(connector=connector),
            env,
            front=front,
        )
        for _ in range(workers):
            stack.add_worker()
        return stack

    async def close(self) -> None:
        await self.http.close()
        for service in (*self.workers, self.api, self.sim, *([self.front] if self.front else [])):
            if service.running:
                # A hung process is killed by stop(), which then raises: go on.
                with contextlib.suppress(subprocess.TimeoutExpired):
                    service.stop(signal.SIGTERM)

    # -- processes -------------------------------------------------------------

    @property
    def api_url(self) -> str:
        assert self.api.port is not None
        return service_url(self.api.port)

    @property
    def sim_url(self) -> str:
        assert self.sim.port is not None
        return service_url(self.sim.port)

    def live_workers(self) -> list[Service]:
        return [w for w in self.workers if w.running]

    def add_worker(self) -> Service:
        worker = Service(
            f"worker-{len(self.workers) + 1}", "worker", self.worker_env, self.log_dir
        ).start()
        self.workers.append(worker)
        return worker

    def kill_worker(self, worker: Service) -> None:
        worker.kill()  # SIGKILL: no drain, leases left behind
        self.killed += 1

    def services(self) -> list[Service]:
        return [self.sim, self.api, *self.workers, *([self.front] if self.front else [])]

    def logs(self) -> dict[str, str]:
        return {s.name: s.log() for s in self.services()}

    def logs_tail(self, lines: int = 25) -> str:
        return "\n".join(
            f"--- {name} ---\n" + "\n".join(text.splitlines()[-lines:])
            for name, text in self.logs().items()
        )

    # -- the accrual simulator's admin side ------------------------------------

    async def sim_rule(self, match: str, reward: str, kind: str) -> None:
        body = f'{{"match": "{match}", "reward": {reward}, "reward_type": "{kind}"}}'
        async with self.http.post(
            f"{self.sim_url}/api/goods", data=body, headers={"Content-Type": "application/json"}
        ) as response:
            assert response.status == 200, await response.text()

    async def sim_rules(self) -> None:
        for rule in RULES:
            await self.sim_rule(*rule)

    async def sim_order(self, number: str, goods: list[tuple[str, str]]) -> int:
        items = ", ".join(f'{{"description": {json.dumps(d)}, "price": {p}}}' for d, p in goods)
        body = f'{{"order": "{number}", "goods": [{items}]}}'
        async with self.http.post(
            f"{self.sim_url}/api/orders",
            data=body.encode(),
            headers={"Content-Type": "application/json"},
        ) as response:
            return response.status

    async def sim_stats(self) -> dict[str, Any]:
        async with self.http.get(f"{self.sim_url}/api/stats") as response:
            result: dict[str, Any] = await response.json()
            return result

    # -- the hostile front ------------------------------------------------------

    async def hostile_script(self, script: dict[str, str]) -> None:
        assert self.front is not None and self.front.port is not None
        async with self.http.post(
            f"{service_url(self.front.port)}/hostile/script", json=script
        ) as response:
            assert response.status == 200, await response.text()

    async def hostile_requests(self) -> dict[str, Any]:
        assert self.front is not None and self.front.port is not None
        async with self.http.get(f"{service_url(self.front.port)}/hostile/requests") as response:
            result: dict[str, Any] = await response.json()
            return result

    # -- the API ---------------------------------------------------------------

    async def register(self, login: str, password: str = "e2e-password-5d0b") -> str:
        async with self.http.post(
            f"{self.api_url}/api/user/register", json={"login": login, "password": password}
        ) as response:
            assert response.status == 200, await response.text()
            return response.headers["Authorization"]

    async def upload(self, token: str, number: str) -> int:
        async with self.http.post(
            f"{self.api_url}/api/user/orders",
            data=number,
            headers={"Authorization": token, "Content-Type": "text/plain"},
        ) as response:
            await response.read()
            return response.status

    async def withdraw(self, token: str, order: str, amount: Decimal) -> int:
        async with self.http.post(
            f"{self.api_url}/api/user/balance/withdraw",
            data=f'{{"order": "{order}", "sum": {amount}}}',
            headers={"Authorization": token, "Content-Type": "application/json"},
        ) as response:
            await response.read()
            return response.status

    async def get(self, token: str | None, path: str) -> tuple[int, Any]:
        """GET with a bearer token (None: anonymous); the body parsed with exact decimals."""
        headers = {"Authorization": token} if token else {}
        async with self.http.get(f"{self.api_url}{path}", headers=headers) as response:
            raw = await response.read()
            body = json.loads(raw, parse_float=Decimal) if raw else None
            return response.status, body


# What the end-to-end tests' ``start_system`` fixture hands out: Stack.start's options in.
SystemFactory = Callable[..., Awaitable["Stack"]]
