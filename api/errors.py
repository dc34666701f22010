"""The API's errors: raised by handlers and middleware, answered as ``{"error": "<reason>"}``.

The answers themselves are built by ``shared.responses``.
"""

from collections.abc import Mapping

from aiohttp import web

# nginx's status for "the client closed the connection before the answer".
CLIENT_GONE = 499


class ClientGone(Exception):
    """The client hung up or stopped reading; ``response`` is what was started."""

    def __init__(self, response: web.StreamResponse | None = None) -> None:
        super().__init__("client gone")
        self.response = response


def client_gone(request: web.BaseRequest) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


class ApiError(Exception):
    """Raise from a handler to answer ``status`` with a JSON reason."""

    def __init__(self, status: int, reason: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = dict(headers or {})


class Overloaded(ApiError):
    """Refused to shed load (429 for one customer's excess, 503 for the process's).

    ``cause`` labels ``gophermart_shed_requests_total``.
    """

    def __init__(self, status: int, reason: str, cause: str) -> None:
        super().__init__(status, reason, {"Retry-After": "1"})
        self.cause = cause
