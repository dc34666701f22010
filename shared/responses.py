"""JSON answers as every process sends them: the API, the ops endpoints, the simulator.

A body is written by ``shared.jsonio.dumps`` (money as exact numbers); an
error's body is ``{"error": "<reason>"}``.
"""

from collections.abc import Mapping

from aiohttp import web

from shared.jsonio import dumps

JSON = "application/json"


def json_response(
    payload: object, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    response = web.Response(body=dumps(payload), status=status, content_type=JSON)
    if headers:
        response.headers.update(headers)
    return response


def error_body(reason: str) -> bytes:
    """The body of every error answer (also written raw, before any HTTP parsing)."""
    return dumps({"error": reason})


def error_response(
    status: int, reason: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    return json_response({"error": reason}, status, headers)


def empty_response(status: int = 204) -> web.Response:
    """A body-less answer that still says ``Content-Type: application/json``."""
    response = web.Response(status=status)
    response.headers["Content-Type"] = JSON
    return response
