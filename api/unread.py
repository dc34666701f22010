"""Closing promptly after an answer given without reading the request's body.

After an answer, aiohttp reads and drops whatever of the body the handler
left unread, for up to ``lingering_time`` (10 s), before it closes or reuses
the connection. That protects a normal answer: closing a socket with bytes
still unread makes the kernel send a reset, which can destroy the answer
before the client reads it. But where the server has decided never to read
the body (a declared oversize, an unmet expectation, a body that timed out),
the client may never send it, and the connection - and its per-address slot -
stayed open for those 10 s for nothing. ``response.force_close()`` only says
"Connection: close"; it does not skip that wait.

So such an answer is marked (``abandon_body``); once it is written, the
connection is half-closed at once (the client sees the end of the answer
now) and whatever still arrives is read and dropped for a brief moment only,
so that a body already in flight does not turn the answer into a reset. Only
so much is dropped (``ABANDONED_BODY_DRAIN``): a client that keeps sending
after the answer is not in flight, it is making the server read at wire speed
for nothing (20 connections reconnecting at once had the process drop 7 GB in
8 s, a health check taking 250 ms instead of 2), and is cut off.
"""

import asyncio

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

BODY_ABANDONED = web.ResponseKey("body_abandoned", bool)
# How long a half-closed connection keeps reading and dropping a body in flight.
ABANDONED_BODY_LINGER = 0.5
# How much of it is dropped at most before the connection is closed at once: more
# than socket buffers hold in flight, little next to what wire speed moves in
# ABANDONED_BODY_LINGER.
ABANDONED_BODY_DRAIN = 256 * 1024


def abandon_body(response: web.StreamResponse) -> web.StreamResponse:
    """Mark an answer after which the request's body will never be read: close promptly."""
    response.force_close()
    response[BODY_ABANDONED] = True
    return response


class ClosingHandler(RequestHandler):
    """aiohttp's connection protocol, closing without its long linger after an
    answer marked by ``abandon_body``."""

    _draining: asyncio.Transport | None = None
    _drain_left = ABANDONED_BODY_DRAIN

    def data_received(self, data: bytes) -> None:
        transport = self._draining
        if transport is None:
            super().data_received(data)
            return
        self._drain_left -= len(data)
        if self._drain_left < 0:
            transport.close()

    async def finish_response(
        self, request: BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        resp, reset = await super().finish_response(request, resp, start_time)
        if not reset and resp.get(BODY_ABANDONED) and self.transport is not None:
            self._close_abandoned(self.transport)
        return resp, reset

    def _close_abandoned(self, transport: asyncio.Transport) -> None:
        """Half-close now, drop what arrives for a moment, then close.

        The transport is taken from aiohttp first: its force_close then ends
        the request loop and skips its lingering without closing the socket at
        once, and its ``data_received`` drops what still arrives.
        """
        self.transport = None
        self.force_close()
        if not self._may_linger() or not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        self._draining = transport
        # Reading may be paused (a full body buffer): drain means read.
        transport.resume_reading()
        self._loop.call_later(ABANDONED_BODY_LINGER, transport.close)

    def _may_linger(self) -> bool:
        """Whether the connection may stay open for the brief drain (a hook for caps)."""
        return True
