"""structlog set-up: JSON lines for machines, colours for people.

Stable keys: ``timestamp`` (RFC 3339, UTC), ``level``, ``event``, ``logger``
plus whatever context is bound (``request_id``, ``user_id``, ``order``, …).

Our own events go straight from structlog to the stream: the standard
library's LogRecord, caller lookup and formatter cost more than the rest of a
request's logging together. Other libraries' standard ``logging`` records
(aiohttp, asyncpg) are rendered by the same processors into the same stream.
"""

import logging
import os
import re
import sys
from collections.abc import MutableMapping
from decimal import Decimal
from typing import Any, TextIO

import orjson
import structlog

# Keys whose values never reach a log line, wherever they were bound.
SECRET_KEYS = frozenset(
    {"password", "password_hash", "secret", "session_secret", "token", "authorization", "cookie"}
)


# Every value in a log line is cut to this many characters (a traceback to
# MAX_TRACEBACK_CHARS): whatever a client sends (a path, a method, a header or a
# body echoed in an error), one line costs a bounded amount of log.
MAX_VALUE_CHARS = 512
MAX_TRACEBACK_CHARS = 16_384


def bounded(text: str, limit: int = MAX_VALUE_CHARS) -> str:
    """``text``, or its first ``limit`` characters and how many more there were."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…[+{len(text) - limit} chars]"


def _bound_values(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in event.items():
        if isinstance(value, str):
            limit = MAX_TRACEBACK_CHARS if key == "exception" else MAX_VALUE_CHARS
            if len(value) > limit:
                event[key] = bounded(value, limit)
    return event


# Secret-shaped text inside any value, wherever it came from (a client can put
# its token in a path, a header line, a login): session tokens (Fernet: they
# all start with the version byte and a timestamp, "gAAAAA"), bearer
# credentials, Argon2 hashes.
_SECRET_TEXT = re.compile(r"gAAAAA[A-Za-z0-9_\-=]{8,}|(?i:bearer)\s+\S+|\$argon2[a-z]{0,2}\$\S*")


def _drop_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in SECRET_KEYS.intersection(event):
        event[key] = "[redacted]"
    for key, value in event.items():
        if isinstance(value, str) and _SECRET_TEXT.search(value):
            event[key] = _SECRET_TEXT.sub("[redacted]", value)
    return event


def _json_default(value: Any) -> Any:
    """orjson's fallback for what it cannot encode itself."""
    if isinstance(value, Decimal):
        # Money as an exact JSON number (700.00, never a float and never
        # "Decimal('700.00')"); NaN and infinities have no JSON number, so text.
        return orjson.Fragment(format(value, "f")) if value.is_finite() else str(value)
    # What structlog's own fallback does: the object's own rendering, else repr.
    render = getattr(value, "__structlog__", None)
    return render() if callable(render) else repr(value)


def _orjson_dumps(value: Any, default: Any = None) -> str:
    # structlog passes its repr fallback as ``default``; ours handles Decimal first.
    return orjson.dumps(value, default=_json_default).decode()


class _NamedLogger(structlog.WriteLogger):
    """A WriteLogger that knows the name it was asked for, for the ``logger`` key."""

    def __init__(self, stream: TextIO, name: str) -> None:
        super().__init__(stream)
        self.name = name


class _LoggerFactory:
    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def __call__(self, *args: Any) -> _NamedLogger:
        return _NamedLogger(self._stream, str(args[0]) if args else "")


def _add_logger_name(
    logger: Any, _: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    event["logger"] = getattr(logger, "name", "")
    return event


def _add_process_id(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    event["pid"] = os.getpid()
    return event


def configure(
    level: str = "info", fmt: str = "auto", stream: TextIO | None = None, process_id: bool = False
) -> None:
    """Configure structlog, and the standard library logging other libraries use.

    ``process_id`` adds ``pid`` to every line, for processes sharing one stream.
    """
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

    # Tracebacks are rendered before secrets are dropped, so they are scrubbed too.
    common: list[Any] = [
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        _drop_secrets,
        *([_add_process_id] if process_id else []),
    ]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _add_logger_name,
            *common,
            _bound_values,
            renderer,
        ],
        logger_factory=_LoggerFactory(stream),
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_logger_name,
            *common,
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _bound_values,
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
