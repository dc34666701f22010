"""Serving the API: bounded connections, deadlines, and quiet answers to bad HTTP.

aiohttp's own server is used, with its request handler extended where a
hostile client could otherwise hold or break something:

* connections per process and per client address are capped; a connection
  beyond a cap is answered at once (503, or 429 for the address) and closed;
* a request's headers must arrive within HEADER_TIMEOUT of the connection
  opening or of the first byte after the previous answer, so a client
  dripping a header a byte at a time (slowloris) is cut off; an idle
  keep-alive connection is closed after KEEPALIVE_TIMEOUT;
* what the HTTP parser refuses is answered with a JSON 4xx that echoes
  nothing the client sent, and logged without the offending bytes (they
  may hold a token or a cookie).
"""

import asyncio
import contextlib
import resource
import signal
from collections import Counter
from http import HTTPStatus
from typing import Any, cast

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from api.arrival import StampingHandler
from api.throttle import address_key
from shared.ops import SERVER_NAME
from shared.responses import error_body, error_response
from shared.settings import ApiSettings, split_host_port

log = structlog.get_logger("api.server")

# File descriptors kept free for PostgreSQL connections, logs and the like
# when the connection cap is derived from the descriptor limit.
SPARE_DESCRIPTORS = 128
MAX_AUTO_CONNECTIONS = 10_000
# A refused connection stays open this long (reading and dropping its request)
# so that its answer arrives; at most this many at once, a share of the spare
# descriptors.
REFUSED_LINGER = 0.5
MAX_LINGERING = SPARE_DESCRIPTORS // 2


def connection_cap(configured: int) -> int:
    """The configured cap, or one the process's file descriptor limit can afford."""
    if configured > 0:
        return configured
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Use what we are allowed: raise the soft limit towards the hard one.
    wanted = (
        min(hard, MAX_AUTO_CONNECTIONS + SPARE_DESCRIPTORS)
        if hard != resource.RLIM_INFINITY
        else MAX_AUTO_CONNECTIONS + SPARE_DESCRIPTORS
    )
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
    if soft == resource.RLIM_INFINITY:
        return MAX_AUTO_CONNECTIONS
    return max(16, min(MAX_AUTO_CONNECTIONS, soft - SPARE_DESCRIPTORS))


def raw_response(status: int, reason: str, headers: dict[str, str] | None = None) -> bytes:
    """A complete HTTP/1.1 answer that closes the connection, for use before any parsing."""
    body = error_body(reason)
    lines = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
        f"Server: {SERVER_NAME}",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body


class ConnectionLimits:
    """Counts of open connections, per process and per client address."""

    def __init__(self, total: int, per_address: int) -> None:
        self.total = total
        self.per_address = per_address
        self.open = 0
        self.by_address: Counter[str] = Counter()
        # Refused connections, and ones whose request body was abandoned, still
        # open for a moment.
        self.lingering = 0

    def admit(self, address: str) -> bytes | None:
        """None when the connection may stay, else the answer to close it with."""
        if self.open >= self.total:
            return raw_response(
                503, "too many connections; try again shortly", {"Retry-After": "1"}
            )
        if self.per_address and self.by_address[address] >= self.per_address:
            return raw_response(429, "too many connections from this address", {"Retry-After": "1"})
        self.open += 1
        self.by_address[address] += 1
        return None

    def release(self, address: str) -> None:
        self.open -= 1
        self.by_address[address] -= 1
        if self.by_address[address] <= 0:
            del self.by_address[address]


# Short, fixed reasons for what the parser refuses: never the client's bytes.
_PARSER_REASONS = {
    400: "malformed HTTP request",
    413: "request too large",
    414: "request line too long",
    431: "request headers too large",
    501: "not implemented",
}


class GuardedHandler(StampingHandler):
    """aiohttp's connection handler with caps, a header deadline and JSON errors
    (and, as api.arrival's, the time of every read)."""

    def __init__(
        self, manager: web.Server, *, limits: ConnectionLimits, header_timeout: float, **kwargs: Any
    ) -> None:
        super().__init__(manager, **kwargs)
        self._limits = limits
        self._header_timeout = header_timeout
        self._address: str | None = None
        self._head_started = False
        self._refused = False
        self._lingering = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        address = address_key(str(peer[0])) if isinstance(peer, tuple) and peer else ""
        refusal = self._limits.admit(address)
        if refusal is not None:
            self._refuse(cast(asyncio.Transport, transport), refusal)
            return
        self._address = address
        super().connection_made(transport)
        self._head_deadline()

    def _refuse(self, transport: asyncio.Transport, answer: bytes) -> None:
        """Answer and close; linger briefly so the answer is read, not lost to a reset.

        Closing with the client's request unread makes the kernel send a reset,
        and the client may then never see the answer. So the request is read
        and dropped for a moment after the answer, unless too many refused
        connections linger already (then close at once: descriptors come first).
        """
        self._refused = True
        transport.write(answer)
        limits = self._limits
        if limits.lingering >= MAX_LINGERING or not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        limits.lingering += 1
        self._lingering = True
        self._loop.call_later(REFUSED_LINGER, transport.close)

    def _may_linger(self) -> bool:
        # After an answer that abandons the body the connection serves nothing
        # more: its slots are free at once, and its brief drain counts among
        # the lingering refused connections (closed at once beyond their cap).
        if self._address is not None:
            self._limits.release(self._address)
            self._address = None
        if self._limits.lingering >= MAX_LINGERING:
            return False
        self._limits.lingering += 1
        self._lingering = True
        return True

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._lingering:
            self._limits.lingering -= 1
            self._lingering = False
        if self._refused:  # aiohttp never saw this connection
            return
        if self._address is not None:
            self._limits.release(self._address)
            self._address = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        # The first bytes of a request while waiting for one start its header deadline.
        waiting = self._waiter is not None and not self._waiter.done()
        if waiting and not self._head_started:
            self._head_started = True
            self._head_deadline()
        super().data_received(data)
        if self._waiter is None or self._waiter.done():
            self._head_started = False

    def _head_deadline(self) -> None:
        """Close the connection if no complete head arrives within the header timeout."""
        if self._header_timeout <= 0 or self._manager is None:
            return
        deadline = self._loop.time() + self._header_timeout
        if self._keepalive_handle is not None and self._next_keepalive_close_time <= deadline:
            return
        # aiohttp's keep-alive check closes a connection whose handler still
        # waits for a request at this time; move it earlier.
        self._next_keepalive_close_time = deadline
        if self._keepalive_handle is not None:
            self._keepalive_handle.cancel()
        self._keepalive_handle = self._loop.call_at(deadline, self._process_keepalive)

    def log_exception(self, *args: Any, **kw: Any) -> None:
        # aiohttp logs with a traceback what a client broke after its answer
        # (a body it then could not decode, a hang-up): not a server error.
        exc = kw.get("exc_info")
        if isinstance(exc, web.RequestPayloadError | HttpProcessingError | ConnectionError):
            log.info("client error after the answer", error=type(exc).__name__)
            return
        log.error("error in the HTTP server", error=type(exc).__name__, exc_info=exc)

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # aiohttp would answer text/plain with the parser's message, which
        # quotes the offending line, and log that line in full.
        if status >= 500:
            log.error("unhandled error outside the application", error=type(exc).__name__)
        else:
            log.info(
                "malformed request refused",
                status=status,
                error=type(exc).__name__ if exc is not None else None,
            )
        if request.writer.output_size > 0:
            raise ConnectionError("the answer was already started")
        reason = (
            _PARSER_REASONS.get(status, "internal error")
            if status >= 400
            else "malformed HTTP request"
        )
        response = error_response(status, reason)
        response.headers["Server"] = SERVER_NAME
        response.force_close()
        return response


class GuardedServer(web.Server):
    """aiohttp's connection factory, making GuardedHandlers."""

    def __init__(self, plain: web.Server, limits: ConnectionLimits, header_timeout: float) -> None:
        super().__init__(
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=asyncio.get_running_loop(),
            **plain._kwargs,
        )
        self._limits = limits
        self._header_timeout = header_timeout

    def __call__(self) -> RequestHandler:
        return GuardedHandler(
            self,
            loop=self._loop,
            limits=self._limits,
            header_timeout=self._header_timeout,
            **self._kwargs,
        )


class GuardedRunner(web.AppRunner):
    def __init__(
        self, app: web.Application, limits: ConnectionLimits, header_timeout: float, **kwargs: Any
    ) -> None:
        super().__init__(app, **kwargs)
        self.limits = limits
        self._header_timeout = header_timeout

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        return GuardedServer(plain, self.limits, self._header_timeout)


def make_runner(app: web.Application, settings: ApiSettings) -> GuardedRunner:
    limits = ConnectionLimits(
        connection_cap(settings.max_connections), settings.max_connections_per_address
    )
    return GuardedRunner(
        app,
        limits,
        settings.header_timeout,
        access_log=None,
        keepalive_timeout=settings.keepalive_timeout,
        shutdown_timeout=5,
        handle_signals=False,
    )


async def serve_until_stopped(
    app: web.Application, settings: ApiSettings, *, reuse_port: bool = False
) -> None:
    """Serve until SIGINT or SIGTERM, then shut down gracefully.

    The socket listens only once start-up (migrations, pool) is done, so a
    port that accepts connections has a ready process behind it.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runner = make_runner(app, settings)
    await runner.setup()
    try:
        host, port = split_host_port(settings.run_address)
        await web.TCPSite(runner, host, port, reuse_port=reuse_port or None).start()
        log.info("listening", address=f"{host}:{port}", max_connections=runner.limits.total)
        await stop.wait()
        log.info("stopping")
    finally:
        await runner.cleanup()
