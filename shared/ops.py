"""Operations endpoints both processes serve: /healthz, /readyz and /metrics.

The API mounts these routes on its own application; the worker serves them
on a tiny application of their own (``ops_app`` + ``start_ops_server``):

    app = ops_app(ready=lambda: database_ready(pool, migrate.schema_problem),
                  registry=metrics.registry)
    runner = await start_ops_server(app, settings.health_address)
    ...
    await runner.cleanup()
"""

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import cast

import asyncpg
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from shared.pg import WORTH_RETRYING
from shared.responses import json_response
from shared.settings import split_host_port

log = structlog.get_logger(__name__)

HEALTHZ = "/healthz"
READYZ = "/readyz"
METRICS = "/metrics"

# Probes must answer well inside an orchestrator's probe timeout.
READY_TIMEOUT = 2.0

# None when ready, otherwise the reason why not.
ReadyCheck = Callable[[], Awaitable[str | None]]
# Metric families computed at scrape time (e.g. counted in the database).
ScrapeHook = Callable[[], Awaitable[Iterable[Metric]]]


# Why the schema is not usable by this build (pending or unknown migrations), or None.
SchemaCheck = Callable[[asyncpg.Connection], Awaitable[str | None]]


async def database_ready(pool: asyncpg.Pool, schema_problem: SchemaCheck) -> str | None:
    """Ready when PostgreSQL answers and the schema is exactly what this build knows.

    ``schema_problem`` is ``db.migrate.schema_problem``, passed in because
    ``shared`` imports nothing of ``db``.
    """
    try:
        async with pool.acquire() as conn:
            await conn.fetchval("SELECT 1")
            # The pool's proxy forwards every Connection method.
            problem = await schema_problem(cast(asyncpg.Connection, conn))
    except WORTH_RETRYING as exc:
        return f"database unavailable: {type(exc).__name__}: {exc}"
    return problem


class _Scrape(Collector):
    """One scrape: the registry's metrics plus families fetched just before."""

    def __init__(self, registry: CollectorRegistry, extra: Iterable[Metric]) -> None:
        self._registry = registry
        self._extra = extra

    def collect(self) -> Iterator[Metric]:
        yield from self._registry.collect()
        yield from self._extra


def ops_routes(
    *,
    ready: ReadyCheck,
    registry: CollectorRegistry,
    scrape: ScrapeHook | None = None,
    ready_timeout: float = READY_TIMEOUT,
    detail: bool = True,
    metrics: bool = True,
) -> list[web.RouteDef]:
    """The routes, bound to a readiness check and a metrics registry.

    ``detail=False`` (a public port) answers /readyz without the reason, which
    can name internals (hosts, exception text); the reason goes to the log.
    ``metrics=False`` leaves /metrics out.
    """

    async def healthz(_: web.Request) -> web.StreamResponse:
        # Liveness: answering at all is the signal; no dependency is checked,
        # so a database outage never gets the process restarted.
        return json_response({"status": "ok"}, 200)

    async def readyz(_: web.Request) -> web.StreamResponse:
        try:
            async with asyncio.timeout(ready_timeout):
                reason = await ready()
        except TimeoutError:
            reason = f"readiness check timed out after {ready_timeout:g} s"
        except Exception as exc:  # a probe reports failures, it does not raise them
            reason = f"readiness check failed: {type(exc).__name__}: {exc}"
        if reason is None:
            return json_response({"status": "ready"}, 200)
        if not detail:
            log.warning("not ready", reason=reason)
            return json_response({"status": "unavailable"}, 503)
        return json_response({"status": "unavailable", "error": reason}, 503)

    async def metrics_page(_: web.Request) -> web.StreamResponse:
        extra = await scrape() if scrape is not None else ()
        response = web.Response(body=generate_latest(_Scrape(registry, extra)), status=200)
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    routes = [
        web.get(HEALTHZ, healthz, allow_head=False),
        web.get(READYZ, readyz, allow_head=False),
    ]
    if metrics:
        routes.append(web.get(METRICS, metrics_page, allow_head=False))
    return routes


def ops_app(
    *, ready: ReadyCheck, registry: CollectorRegistry, scrape: ScrapeHook | None = None
) -> web.Application:
    """A stand-alone application serving only the ops routes (for the worker)."""
    app = web.Application()
    app.add_routes(ops_routes(ready=ready, registry=registry, scrape=scrape))
    app.on_response_prepare.append(quiet_server_header)
    return app


SERVER_NAME = "gophermart"


async def quiet_server_header(_: web.Request, response: web.StreamResponse) -> None:
    """Name no framework or Python version in ``Server``: that only helps an attacker."""
    response.headers["Server"] = SERVER_NAME


async def start_ops_server(
    app: web.Application, address: str, *, reuse_port: bool = False
) -> web.AppRunner:
    """Serve ``app`` on ``host:port``; call ``runner.cleanup()`` to stop.

    ``reuse_port`` lets several processes of one machine serve the same address.
    """
    host, port = split_host_port(address, default_port=9100)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_port=reuse_port or None).start()
    return runner
