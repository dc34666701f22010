"""When a request arrived: the moment its bytes were read, not when its handler began.

Between aiohttp reading a request off the socket and our middleware starting
there are event-loop turns: on a busy or stalled loop that wait is the bulk
of what a client sees, and a latency measured from the handler's start hides
it. The connection protocol here notes the time of every read, and each
request carries the time of the last read before it was parsed
(``arrived(request)``), which the access log and the latency histogram
count from.

(A stall so long that the loop could not even read the socket is seen by the
event-loop lag metric instead: nothing in the process knows when bytes it has
not read yet arrived.)
"""

import time
import warnings
from typing import Any

from aiohttp import hdrs, web
from aiohttp.web_protocol import RequestHandler
from multidict import CIMultiDict, CIMultiDictProxy

from api.unread import ClosingHandler

ARRIVED = web.RequestKey("arrived", float)
# The request carried an Expect other than 100-continue (its value is dropped).
UNMET_EXPECTATION = web.RequestKey("unmet_expectation", bool)


class StampingHandler(ClosingHandler):
    """aiohttp's connection protocol, noting when it last read bytes (and, as
    api.unread's, closing promptly after an answer that abandons the body).

    Subclass it (not RequestHandler) for a protocol of one's own, or requests
    lose their arrival time.
    """

    __slots__ = ("read_at",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.read_at = time.perf_counter()

    def data_received(self, data: bytes) -> None:
        self.read_at = time.perf_counter()
        super().data_received(data)


class _StampingServer(web.Server):
    def __call__(self) -> RequestHandler:
        return StampingHandler(self, loop=self._loop, **self._kwargs)


with warnings.catch_warnings():
    # aiohttp discourages subclassing Application; these two hooks are the
    # only way to reach the connection protocol whatever runs the app
    # (web.run_app, an AppRunner, the test server).
    warnings.simplefilter("ignore", DeprecationWarning)

    class Application(web.Application):
        """A web.Application whose requests know when they arrived."""

        def _make_handler(self, *args: Any, **kwargs: Any) -> web.Server:
            server = super()._make_handler(*args, **kwargs)
            server.__class__ = _StampingServer  # same object, protocols that stamp
            return server

        def _make_request(
            self, message: Any, payload: Any, protocol: RequestHandler, *args: Any, **kwargs: Any
        ) -> web.Request:
            expect = message.headers.get(hdrs.EXPECT)
            unmet = expect is not None and expect.strip().lower() != "100-continue"
            if unmet or (expect is not None and self._declared_too_large(message)):
                # A body over the limit is refused (413) before it is asked for:
                # no "100 Continue" invites a client to send it.
                message = _without_expect(message)
            request = super()._make_request(message, payload, protocol, *args, **kwargs)
            request[ARRIVED] = getattr(protocol, "read_at", None) or time.perf_counter()
            if unmet:
                request[UNMET_EXPECTATION] = True
            return request

        def _declared_too_large(self, message: Any) -> bool:
            declared = message.headers.get(hdrs.CONTENT_LENGTH, "")
            # (More digits than any size worth comparing: too large, without int() on them.)
            return declared.isdigit() and (
                len(declared) > 18 or int(declared) > self._client_max_size
            )


def _without_expect(message: Any) -> Any:
    """The parsed request without its Expect header.

    aiohttp answers an expectation it does not know itself, before any
    middleware: a text/plain 417 echoing the header's value (whatever the
    client put there, a token included), neither logged nor counted. Without
    the header the request reaches the middleware, which refuses it as JSON.
    """
    headers = CIMultiDict(message.headers)
    del headers[hdrs.EXPECT]
    raw = tuple((name, value) for name, value in message.raw_headers if name.lower() != b"expect")
    return message._replace(headers=CIMultiDictProxy(headers), raw_headers=raw)


def arrived(request: web.BaseRequest) -> float:
    """``time.perf_counter()`` when the request's bytes were read."""
    stamp = request.get(ARRIVED) if isinstance(request, web.Request) else None
    return stamp if stamp is not None else time.perf_counter()
