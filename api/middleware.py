"""Request plumbing: request ids, the access log, JSON errors, compression."""

import asyncio
import re
import time
import uuid

import asyncpg
import structlog
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from api.arrival import UNMET_EXPECTATION, arrived
from api.errors import (
    CLIENT_GONE,
    ApiError,
    ClientGone,
    Overloaded,
    client_gone,
)
from api.metrics import METRICS
from api.negotiation import accepts_gzip
from api.state import SETTINGS
from api.unread import abandon_body
from shared.logs import bounded
from shared.pg import DATABASE_DOWN, PoolBusy
from shared.responses import error_response

log = structlog.get_logger("api.access")

# Client-supplied request ids are echoed only when they look like ids.
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
COMPRESS_MIN_BYTES = 1024
# Answers after which the request's body is never read: refused before it (413 for
# a declared oversize, 417), given up on (408), or cut at MAX_BODY_BYTES (aiohttp's
# 413). The connection closes at once after them, not after aiohttp's 10 s linger
# waiting for a body the client may never send (api.unread).
BODY_ABANDONED_STATUSES = frozenset({408, 413, 417})


def _request_id(request: web.Request) -> str:
    supplied = request.headers.get("X-Request-ID", "")
    return supplied if _REQUEST_ID.match(supplied) else uuid.uuid4().hex


@web.middleware
async def errors_and_access_log(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into a JSON answer and log one line per request."""
    started = arrived(request)
    request_id = _request_id(request)
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id)
    try:
        if request.get(UNMET_EXPECTATION):
            raise ApiError(417, "unsupported Expect header (only 100-continue)")
        _refuse_declared_oversize(request)
        response = await handler(request)
    except ClientGone as exc:
        # Nobody to answer: hand back what was started, for aiohttp to close.
        response = exc.response if exc.response is not None else web.Response()
    except PoolBusy as exc:
        response = _shed(request, _pool_busy(exc))
    except asyncpg.QueryCanceledError:
        # statement_timeout (or an operator's cancel): PostgreSQL answered, so it is
        # up; a row locked by a long transaction, or a database too busy.
        response = _shed(
            request, Overloaded(503, "the database is busy; retry shortly", "slow_statement")
        )
    except Overloaded as exc:
        response = _shed(request, exc)
    except ApiError as exc:
        response = error_response(exc.status, exc.reason, exc.headers)
    except web.HTTPException as exc:
        # Routing and body-size errors raised by aiohttp itself (404, 405, 413).
        response = error_response(exc.status, exc.reason, _kept_headers(exc))
    except DATABASE_DOWN as exc:
        log.warning("database unavailable", error=repr(exc))
        response = error_response(503, "service temporarily unavailable", {"Retry-After": "1"})
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error")
        response = error_response(500, f"internal error (request id {request_id})")
    if not response.prepared:  # a streamed answer set its headers itself
        if response.status in BODY_ABANDONED_STATUSES:
            abandon_body(response)
        response.headers["X-Request-ID"] = request_id
        if request.path.startswith("/api/user/"):
            # Tokens and a customer's own data: for no shared or browser cache.
            response.headers.setdefault(hdrs.CACHE_CONTROL, "no-store")
        _maybe_compress(request, response)
    # An answer nobody will receive is not logged as delivered.
    status = CLIENT_GONE if client_gone(request) else response.status
    log.info(
        "request",
        method=request.method,
        path=_logged_path(request),
        status=status,
        latency_ms=round((time.perf_counter() - started) * 1000, 2),
    )
    return response


def _refuse_declared_oversize(request: web.Request) -> None:
    """413 at once for a body declared larger than MAX_BODY_BYTES, and close.

    Otherwise the body would be read until it passes the limit: a client that
    declares a huge length and then sends nothing (or a byte now and then)
    would hold the request until BODY_TIMEOUT. The connection is closed as soon
    as the answer is written, since the body it announced is not going to be read.
    """
    declared = request.content_length
    if declared is not None and declared > request.app[SETTINGS].max_body_bytes:
        raise BodyTooLarge()


class BodyTooLarge(ApiError):
    def __init__(self) -> None:
        super().__init__(413, "request body too large")


# The path of a request no route matched is the client's free text: cut shorter.
UNMATCHED_PATH_CHARS = 128


def _logged_path(request: web.Request) -> str:
    if request.match_info.route.resource is None:  # 404 and 405: no route matched
        return bounded(request.path, UNMATCHED_PATH_CHARS)
    return request.path


def request_id() -> str:
    """The current request's id (for answers that send their headers early)."""
    return str(structlog.contextvars.get_contextvars().get("request_id", ""))


def _pool_busy(exc: PoolBusy) -> Overloaded:
    if exc.scope == "customer":
        return Overloaded(
            429,
            "too many requests of this account in flight; retry shortly",
            "customer_connections",
        )
    return Overloaded(503, "server busy; retry shortly", "pool")


def _shed(request: web.Request, exc: Overloaded) -> web.Response:
    """Answer a refusal made to shed load: counted, and named on the access line."""
    request.app[METRICS].shed(exc.cause)
    structlog.contextvars.bind_contextvars(shed=exc.cause)
    return error_response(exc.status, exc.reason, exc.headers)


def _kept_headers(exc: web.HTTPException) -> dict[str, str]:
    return {
        name: exc.headers[name] for name in (hdrs.ALLOW, hdrs.RETRY_AFTER) if name in exc.headers
    }


def _maybe_compress(request: web.Request, response: web.StreamResponse) -> None:
    """gzip bodies worth compressing when the client accepts it."""
    if not isinstance(response, web.Response) or response.body is None:
        return
    body = response.body
    if (
        isinstance(body, bytes | bytearray)
        and len(body) >= COMPRESS_MIN_BYTES
        and accepts_gzip(request)
    ):
        response.enable_compression(web.ContentCoding.gzip)
