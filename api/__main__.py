"""``gophermart-api``: run the API server (one process, or several on one port)."""

import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence

import structlog
from aiohttp import web

from api.app import create_app
from api.server import serve_until_stopped
from api.supervisor import PARENT_PIPE_ENV, process_count, supervise, watch_parent
from db.migrate import SchemaTooNew
from shared import logs
from shared.runner import run
from shared.settings import ApiSettings, load, require

log = structlog.get_logger("api")


async def _stop_with_supervisor(_: web.Application) -> AsyncIterator[None]:
    # SIGTERM to ourselves: serve_until_stopped's own graceful shutdown.
    unwatch = watch_parent(lambda: os.kill(os.getpid(), signal.SIGTERM))
    yield
    if unwatch is not None:
        unwatch()


def serve(settings: ApiSettings, *, child: bool) -> None:
    """One API process; a supervised child shares the port with its siblings."""
    app = create_app(settings)
    if child:
        app.cleanup_ctx.insert(0, _stop_with_supervisor)
    log.info("starting", address=settings.run_address)
    # The socket listens once start-up (migrations, pool) is done.
    try:
        run(serve_until_stopped(app, settings, reuse_port=child))
    except SchemaTooNew as exc:
        log.error("refusing to start", reason=str(exc))
        sys.exit(f"gophermart-api: {exc}")


def main(argv: Sequence[str] | None = None) -> None:
    settings = load(ApiSettings, argv, prog="gophermart-api")
    child = PARENT_PIPE_ENV in os.environ
    processes = process_count(settings)
    # Several processes write one stream: each line says which one wrote it.
    logs.configure(settings.log_level, settings.log_format, process_id=child or processes > 1)
    require(settings, "database_uri", prog="gophermart-api")
    if child or processes == 1:
        serve(settings, child=child)
    else:
        sys.exit(supervise(settings, processes))


if __name__ == "__main__":
    main()
