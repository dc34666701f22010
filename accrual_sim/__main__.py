"""``accrual-sim``: run the accrual system simulator until SIGINT or SIGTERM."""

import sys
from collections.abc import Sequence

import structlog
from aiohttp import web

from accrual_sim.app import create_app
from accrual_sim.rules import InvalidPayload
from accrual_sim.settings import load
from shared.jsonio import JSONInputError
from shared.logs import configure
from shared.runner import new_event_loop
from shared.settings import split_host_port


def main(argv: Sequence[str] | None = None) -> None:
    try:
        settings = load(argv)
    except ValueError as exc:
        sys.exit(f"accrual-sim: {exc}")
    configure(settings.log_level, settings.log_format)
    log = structlog.get_logger("accrual_sim").bind(address=settings.run_address)
    host, port = split_host_port(settings.run_address, default_port=8081)
    try:
        app = create_app(settings)
    except (OSError, InvalidPayload, JSONInputError) as exc:
        log.error("cannot seed", seed_file=settings.seed_file, error=str(exc))
        sys.exit(2)
    log.info(
        "starting",
        host=host,
        port=port,
        delay=settings.delay,
        rate_limit=settings.rate_limit,
        rate_window=settings.rate_window,
        fail_rate=settings.fail_rate,
        latency_rate=settings.latency_rate,
    )
    # run_app turns SIGINT and SIGTERM into a graceful stop and returns normally.
    web.run_app(
        app,
        host=host,
        port=port,
        access_log=None,
        print=None,
        shutdown_timeout=2.0,
        backlog=1024,
        loop=new_event_loop(),
    )
    log.info("stopped")


if __name__ == "__main__":
    main()
