"""The API's /healthz, /readyz and /metrics (shared.ops), bound to its state."""

from collections.abc import Iterable

from aiohttp import web
from prometheus_client.metrics_core import Metric

from api.metrics import METRICS, orders_by_status
from api.state import POOL
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
    app.add_routes(ops.ops_routes(ready=ready, registry=exported(own, sharing), scrape=scrape))
