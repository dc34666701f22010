"""The API application factory."""

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from api import balance, orders, page, users
from api.arrival import Application
from api.crosssite import cross_site_guard
from api.devices import DeviceCookies
from api.events import end_streams_on_shutdown, hub_context, user_events
from api.listgate import StreamGate
from api.metrics import METRICS, ApiMetrics
from api.middleware import errors_and_access_log
from api.openapi import add_docs_routes
from api.ops import add_ops_routes
from api.passwords import Passwords
from api.sessions import RevocationListener, Sessions, WeakSecretError
from api.state import DEVICES, LIST_GATE, PASSWORDS, POOL, SESSIONS, SETTINGS, STALLS, THROTTLE
from api.throttle import ClientAddress, Throttle, sweep_forever
from db.migrate import migrate_when_ready
from shared.ops import quiet_server_header
from shared.pg import create_pool
from shared.settings import ApiSettings
from shared.stalls import Stalls

log = structlog.get_logger(__name__)


async def _database(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    assert settings.database_uri is not None
    await migrate_when_ready(settings.database_uri)
    app[POOL] = await create_pool(
        settings.database_uri,
        min_size=settings.db_pool_min,
        max_size=settings.db_pool_max,
        connect_timeout=settings.db_timeout,
        acquire_timeout=settings.db_acquire_timeout,
        share=customer_share(settings),
        statement_timeout=settings.db_timeout * STATEMENT_SHARE,
        on_wait=app[STALLS].pool_waited,
    )
    watching = asyncio.create_task(app[STALLS].watch_loop(), name="loop-lag")
    listener = RevocationListener(
        settings.database_uri, app[SESSIONS].cache, timeout=settings.db_timeout
    )
    listening = asyncio.create_task(listener.run(), name="session-listener")
    sweeper = asyncio.create_task(sweep_forever(app[POOL]), name="throttle-sweeper")
    yield
    for task in (listening, watching, sweeper):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await app[POOL].close()


async def _passwords(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    app[PASSWORDS] = Passwords(
        settings.hash_concurrency, settings.hash_queue, settings.hash_per_address
    )
    yield
    app[PASSWORDS].close()


# PostgreSQL ends a statement (503, "slow_statement") before DB_TIMEOUT would end
# it in the client as if the database were unreachable. (lock_timeout would not
# do: it bounds each lock wait, and a statement queued behind other waiters for
# one row waits on two locks in turn.)
STATEMENT_SHARE = 0.8


def customer_share(settings: ApiSettings) -> int:
    """Pooled connections one customer's requests may hold at once in this process.

    ``db_pool_max`` is this process's pool (the supervisor hands each API
    process its part of the total); two at least, so that one customer's
    requests rarely wait for each other.
    """
    if settings.db_customer_share > 0:
        return settings.db_customer_share
    return max(settings.db_pool_max // 3, 2)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/user/register", users.register)
    app.router.add_post("/api/user/login", users.login)
    app.router.add_post("/api/user/logout", users.logout)
    app.router.add_post("/api/user/password", users.change_password)
    app.router.add_post("/api/user/orders", orders.upload)
    app.router.add_get("/api/user/orders", orders.list_orders, allow_head=False)
    app.router.add_get("/api/user/balance", balance.get_balance, allow_head=False)
    app.router.add_post("/api/user/balance/withdraw", balance.withdraw)
    app.router.add_get("/api/user/withdrawals", balance.list_withdrawals, allow_head=False)
    app.router.add_get("/api/user/events", user_events, allow_head=False)
    # The older path some clients still call.
    app.router.add_get("/api/user/balance/withdrawals", balance.list_withdrawals, allow_head=False)
    add_docs_routes(app)
    add_ops_routes(app)
    page.add_page_routes(app)


def create_app(settings: ApiSettings) -> web.Application:
    # A registry per app: tests create many apps in one process.
    metrics = ApiMetrics()
    origins = [item for item in settings.allowed_origins.split(",") if item.strip()]
    app = Application(
        middlewares=[
            metrics.middleware(),
            errors_and_access_log,
            cross_site_guard(origins, ClientAddress(settings.trusted_proxies)),
        ],
        client_max_size=settings.max_body_bytes,
    )
    app[SETTINGS] = settings
    app[METRICS] = metrics
    app[STALLS] = Stalls(metrics.registry, settings.stall_log_threshold)
    try:
        app[SESSIONS] = Sessions(
            settings.session_secret,
            settings.session_ttl,
            settings.session_cache_ttl,
            cookie_secure=settings.cookie_secure,
            checked=metrics.session_checks,
        )
    except WeakSecretError as exc:
        raise SystemExit(f"gophermart-api: {exc}") from exc
    app[DEVICES] = DeviceCookies(app[SESSIONS].sealer, cookie_secure=settings.cookie_secure)
    app[THROTTLE] = Throttle(settings)
    # Each long list holds at most one connection at a time: half the pool
    # always stays for everything else.
    app[LIST_GATE] = StreamGate(settings.list_concurrency, settings.db_pool_max // 2)
    app.on_response_prepare.append(quiet_server_header)
    app.cleanup_ctx.append(_database)
    app.cleanup_ctx.append(_passwords)
    app.cleanup_ctx.append(hub_context)
    app.on_shutdown.append(end_streams_on_shutdown)
    add_routes(app)
    return app
