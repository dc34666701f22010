"""The API's /healthz, /readyz and /metrics (shared.ops), bound to its state.

On the public port /readyz says only ready or not (the reason is logged);
with OPS_ADDRESS set, /metrics and a /readyz that gives the reason move to
that address, which should be reachable by operators only.
"""

from collections.abc import AsyncIterator, Iterable

from aiohttp import web
from prometheus_client.metrics_core import Metric

from api.metrics import METRICS, orders_by_status
from api.state import POOL, SETTINGS
from db.migrate import schema_problem
from shared import ops
from shared.metrics_share import exported, shared


def add_ops_routes(app: web.Application) -> None:
    # The pool is looked up per request: it exists only once the app has started.
    async def ready() -> str | None:
        return await ops.database_ready(app[POOL], schema_problem)

    async def scrape() -> Iterable[Metric]:
        return await orders_by_status(app[POOL])

    own = app[METRICS].registry
    sharing = shared(own)  # one of several API processes: report them all
    if sharing is not None:
        app.cleanup_ctx.append(lambda _: sharing.flushing())
    registry = exported(own, sharing)
    ops_address = app[SETTINGS].ops_address
    app.add_routes(
        ops.ops_routes(
            ready=ready, registry=registry, scrape=scrape, detail=False, metrics=ops_address is None
        )
    )
    if ops_address is None:
        return

    async def ops_server(_: web.Application) -> AsyncIterator[None]:
        runner = await ops.start_ops_server(
            ops.ops_app(ready=ready, registry=registry, scrape=scrape), ops_address, reuse_port=True
        )
        yield
        await runner.cleanup()

    app.cleanup_ctx.append(ops_server)
