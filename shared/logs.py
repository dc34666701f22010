"""structlog set-up: JSON lines for machines, colours for people.

Stable keys: ``timestamp`` (RFC 3339, UTC), ``level``, ``event``, ``logger``
plus whatever context is bound (``request_id``, ``user_id``, ``order``, …).
"""

import logging
import sys
from typing import Any, TextIO

import orjson
import structlog

# Keys whose values never reach a log line, wherever they were bound.
SECRET_KEYS = frozenset({"password", "password_hash", "secret", "session_secret",
                         "token", "authorization", "cookie"})


def _drop_secrets(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    for key in SECRET_KEYS.intersection(event):
        event[key] = "[redacted]"
    return event


def _orjson_dumps(value: Any, default: Any = None) -> str:
    return orjson.dumps(value, default=default).decode()


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Configure structlog and the standard library logging it feeds into."""
    stream = stream or sys.stderr
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_dumps)
    elif fmt == "console":
        renderer = structlog.dev.ConsoleRenderer()
    else:
        raise ValueError(f"unknown log format {fmt!r}")

    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _drop_secrets,
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        cache_logger_on_first_use=True,
    )
    exc_processor: Any = structlog.processors.format_exc_info if fmt == "json" else _identity
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            exc_processor,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    # aiohttp's own access log is replaced by ours (one line per request).
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def _identity(_: Any, __: str, event: Any) -> Any:
    return event
