"""The API's Prometheus metrics: requests, business outcomes, orders by status.

Business outcomes are read off the response status of the two routes whose
statuses the API contract (docs/api.md, /api/openapi.json) ties one-to-one to an outcome, so
handlers carry no metrics code and the mapping cannot drift from what clients see.
"""

import asyncio
import time
from collections.abc import Iterable

import asyncpg
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from api.arrival import arrived
from api.errors import CLIENT_GONE, client_gone
from db import orders
from shared.metrics import LATENCY_BUCKETS, new_registry
from shared.pg import WORTH_RETRYING_OR_BUSY
from shared.statuses import OrderStatus

log = structlog.get_logger(__name__)

# The route label of requests no route matched (404, 405): a fixed value, so
# scanners probing random paths cannot create new time series.
UNMATCHED = "unmatched"

WITHDRAW_OUTCOMES = {200: "done", 402: "insufficient", 409: "conflict"}
UPLOAD_OUTCOMES = {202: "accepted", 200: "duplicate", 409: "conflict", 422: "invalid"}
_OUTCOME_ROUTES = {
    ("POST", "/api/user/balance/withdraw"): "withdrawals",
    ("POST", "/api/user/orders"): "uploads",
}

SHED_CAUSES = (
    "pool",
    "customer_connections",
    "customer_lists",
    "lists",
    "slow_statement",
    "hashing",
    "hashing_address",
)

ORDERS_QUERY_TIMEOUT = 1.0

_Children = tuple[Counter, Histogram, Counter | None]


class ApiMetrics:
    """The API's metric objects, on a registry of this app's own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else new_registry()
        self.requests = Counter(
            "gophermart_http_requests",
            "HTTP requests by method, route template and status.",
            ("method", "route", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "gophermart_http_request_duration_seconds",
            "HTTP request latency by method, route template and status.",
            ("method", "route", "status"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        withdrawals = Counter(
            "gophermart_withdrawals",
            "Withdrawal requests by outcome "
            "(done, insufficient = not enough points, conflict = order paid otherwise).",
            ("outcome",),
            registry=self.registry,
        )
        uploads = Counter(
            "gophermart_order_uploads",
            "Order uploads by outcome (accepted = new, "
            "duplicate = already yours, conflict = another user's, invalid = fails Luhn).",
            ("outcome",),
            registry=self.registry,
        )
        session_checks = Counter(
            "gophermart_session_checks",
            "Tokens checked in PostgreSQL, i.e. not answered by "
            "the verified-token cache, by outcome (valid, ended).",
            ("outcome",),
            registry=self.registry,
        )
        self.session_checks = {
            True: session_checks.labels("valid"),
            False: session_checks.labels("ended"),
        }
        self._shed = Counter(
            "gophermart_shed_requests",
            "Requests refused to shed load, by cause: pool "
            "(no connection free within DB_ACQUIRE_TIMEOUT, 503), customer_connections "
            "(that customer's share of the pool busy, 429), customer_lists "
            "(LIST_CONCURRENCY long lists in flight, 429), lists (the process's long "
            "lists at their limit, 503), slow_statement (a statement outlasted "
            "statement_timeout, 503), hashing (the password hashing queue full, 503), "
            "hashing_address (that address's HASH_PER_ADDRESS share busy, 429).",
            ("cause",),
            registry=self.registry,
        )
        for cause in SHED_CAUSES:
            self._shed.labels(cause)
        # Created up front so every outcome is exported (as 0) from the start.
        self._outcomes = {
            "withdrawals": {s: withdrawals.labels(o) for s, o in WITHDRAW_OUTCOMES.items()},
            "uploads": {s: uploads.labels(o) for s, o in UPLOAD_OUTCOMES.items()},
        }
        # (method, route, status) -> bound children; bounded by routes x statuses.
        self._children: dict[tuple[str, str, int], _Children] = {}

    def _bind(self, method: str, route: str, status: int) -> _Children:
        status_text = str(status)
        outcomes = self._outcomes.get(_OUTCOME_ROUTES.get((method, route), ""), {})
        children = (
            self.requests.labels(method, route, status_text),
            self.latency.labels(method, route, status_text),
            outcomes.get(status),
        )
        self._children[(method, route, status)] = children
        return children

    def shed(self, cause: str) -> None:
        self._shed.labels(cause).inc()

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        children = self._children.get((method, route, status)) or self._bind(method, route, status)
        children[0].inc()
        children[1].observe(seconds)
        if children[2] is not None:
            children[2].inc()

    def _record(self, request: web.Request, status: int, started: float) -> None:
        route = request.match_info.route
        if route.resource is None:  # aiohttp's system route for 404 and 405
            method, label = UNMATCHED, UNMATCHED
        else:
            method, label = route.method, route.resource.canonical
        self.observe(method, label, status, time.perf_counter() - started)

    def middleware(self) -> Middleware:
        """Outermost middleware: sees the final status after error handling."""

        @web.middleware
        async def measure(request: web.Request, handler: Handler) -> web.StreamResponse:
            started = arrived(request)
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                self._record(request, exc.status, started)
                raise
            except asyncio.CancelledError:  # the client went away: no status to count
                raise
            except Exception:
                self._record(request, 500, started)
                raise
            self._record(request, CLIENT_GONE if client_gone(request) else response.status, started)
            return response

        return measure


METRICS = web.AppKey("metrics", ApiMetrics)


async def orders_by_status(
    pool: asyncpg.Pool, within: float = ORDERS_QUERY_TIMEOUT
) -> Iterable[Metric]:
    """``gophermart_orders{status}`` counted at scrape time; nothing if the query fails.

    A failed count is left out rather than reported as zeros, which would
    look like every order vanished.
    """
    try:
        async with asyncio.timeout(within):
            counted = await orders.count_by_status(pool)
    except WORTH_RETRYING_OR_BUSY as exc:  # a busy pool is no reason to wait
        log.warning("cannot count orders for metrics", error=repr(exc))
        return ()
    # Every status, so each labelled series exists from the first scrape.
    counts = dict.fromkeys(OrderStatus, 0) | counted
    family = GaugeMetricFamily(
        "gophermart_orders", "Orders by status, counted at scrape time.", labels=("status",)
    )
    for status, count in counts.items():
        family.add_metric((status,), count)
    return (family,)
