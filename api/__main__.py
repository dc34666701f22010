"""``gophermart-api``: run the API server."""

import asyncio
import sys
from collections.abc import Sequence

import structlog
from aiohttp import web

from api.app import create_app
from db.migrate import SchemaTooNew
from shared import logs
from shared.settings import ApiSettings, load, split_host_port

log = structlog.get_logger("api")


def _event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def main(argv: Sequence[str] | None = None) -> None:
    settings = load(ApiSettings, argv, prog="gophermart-api")
    logs.configure(settings.log_level, settings.log_format)
    if not settings.database_uri:
        sys.exit("gophermart-api: DATABASE_URI (-d) is required")
    host, port = split_host_port(settings.run_address)
    app = create_app(settings)
    log.info("starting", address=f"{host}:{port}")
    # run_app handles SIGINT and SIGTERM with a graceful shutdown.
    try:
        web.run_app(app, host=host, port=port, access_log=None, print=None,
                    shutdown_timeout=5, loop=_event_loop())
    except SchemaTooNew as exc:
        log.error("refusing to start", reason=str(exc))
        sys.exit(f"gophermart-api: {exc}")


if __name__ == "__main__":
    main()
