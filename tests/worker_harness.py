"""A worker running in-process (with its listener) and a scriptable fake accrual system."""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web

from worker.accrual_client import AccrualClient, create_session
from worker.gate import Gate, GatePolicy
from worker.listener import Listener
from worker.loop import LoopConfig, Worker
from worker.stats import WorkerStats

Reply = Callable[[str], web.StreamResponse | Awaitable[web.StreamResponse]]


def json_reply(status: str, accrual: str | None = None, order: str = "") -> web.Response:
    """A 200 body written by hand so accruals keep their exact decimal text."""
    extra = f', "accrual": {accrual}' if accrual is not None else ""
    return web.Response(
        body=f'{{"order": "{order}", "status": "{status}"{extra}}}', content_type="application/json"
    )


@dataclass
class FakeAccrual:
    """Answers ``GET /api/orders/{number}`` with ``reply(number)``; records every request."""

    reply: Reply = field(default=lambda number: web.Response(status=204))
    requests: list[tuple[float, str]] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api/orders/{number}", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        number = request.match_info["number"]
        self.requests.append((asyncio.get_running_loop().time(), number))
        result = self.reply(number)
        if isinstance(result, web.StreamResponse):
            return result
        return await result

    def asked(self, number: str) -> int:
        return sum(1 for _, n in self.requests if n == number)


@dataclass
class Harness:
    worker: Worker
    gate: Gate
    stats: WorkerStats
    listener: Listener
    session: aiohttp.ClientSession
    tasks: list[asyncio.Task[None]]


@asynccontextmanager
async def running_worker(
    pool: asyncpg.Pool,
    dsn: str,
    base_url: str,
    *,
    listen: bool = True,
    retries: int = 3,
    policy: GatePolicy | None = None,
    http_timeout: float = 2.0,
    **config: Any,
) -> AsyncIterator[Harness]:
    """A worker (and its listener) running against ``pool`` until the block ends."""
    stats = WorkerStats()
    gate = Gate(pool, stats, policy=policy)
    session = create_session(concurrency=config.get("concurrency", 8), timeout=http_timeout)
    client = AccrualClient(session, base_url, gate, stats, retries=retries, retry_wait_max=0.05)
    worker = Worker(pool, client, gate, stats, LoopConfig(**config))

    def reset() -> None:
        gate.forget()
        worker.wake()

    listener = Listener(
        dsn, on_new_order=worker.wake, on_pause=gate.note, on_reset=reset, check_interval=0.5
    )
    tasks = [asyncio.create_task(worker.run())]
    if listen:
        tasks.append(asyncio.create_task(listener.run()))
        await asyncio.wait_for(listener.connected.wait(), 5)
    harness = Harness(worker, gate, stats, listener, session, tasks)
    try:
        yield harness
    finally:
        worker.stop()
        listener.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        await session.close()
