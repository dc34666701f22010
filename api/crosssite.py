"""Refusing cross-site state changes that ride on the session cookie.

Browsers attach cookies to requests another site's page makes; they never
attach our ``Authorization`` header. So a state-changing request (any method
but GET, HEAD, OPTIONS) that carries no ``Authorization`` header must come
from a page of our own origin: its ``Origin`` header (sent by browsers on
such requests) must name the scheme and host the request was sent to, or
one of ALLOWED_ORIGINS. The scheme is the connection's own (``http``: the
server speaks plain HTTP), unless the connection comes from one of
TRUSTED_PROXIES, whose ``X-Forwarded-Proto`` (the last entry, ``http`` or
``https``) then names it: a page served over https must not be taken for
one served over http on the same host, nor the other way round. Without
``Origin``, ``Sec-Fetch-Site: cross-site`` or ``same-site`` is refused too.
Clients that are not browsers (curl, apps) send neither header and are not
affected, nor is anyone using a bearer token.
This is on top of the cookie's ``SameSite=Lax``, which keeps it off
cross-site POSTs in current browsers but not in every one.
"""

from collections.abc import Iterable

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware
from yarl import URL

from api.errors import ApiError
from api.throttle import ClientAddress

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_FOREIGN_FETCH = frozenset({"cross-site", "same-site"})


_Origin = tuple[str, str, int | None]  # scheme, host, port


def _origin(text: str) -> _Origin | None:
    try:
        url = URL(text.strip())
    except ValueError:
        return None
    if not url.scheme or not url.host or url.path not in ("", "/"):
        return None
    return url.scheme.lower(), url.host.lower(), url.port


def own_scheme(request: web.BaseRequest, proxies: ClientAddress) -> str:
    """The scheme the request was sent with, as its sender saw it."""
    if proxies.from_proxy(request):
        said = ",".join(request.headers.getall("X-Forwarded-Proto", []))
        last = said.rsplit(",", 1)[-1].strip().lower()
        if last in ("http", "https"):
            return last
    return request.scheme


def _same_origin(origin: _Origin, request: web.BaseRequest, scheme: str) -> bool:
    own = _origin(f"{scheme}://{request.host}")
    return own is not None and own == origin


def cross_site_guard(allowed_origins: Iterable[str], proxies: ClientAddress) -> Middleware:
    allowed = {parsed for item in allowed_origins if (parsed := _origin(item))}

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method not in _SAFE_METHODS and hdrs.AUTHORIZATION not in request.headers:
            origin_header = request.headers.get(hdrs.ORIGIN)
            if origin_header is not None:
                origin = _origin(origin_header)
                if origin is None or not (
                    origin in allowed or _same_origin(origin, request, own_scheme(request, proxies))
                ):
                    raise ApiError(
                        403,
                        "cross-site request refused: send the Authorization "
                        "header, or come from an allowed origin",
                    )
            elif request.headers.get("Sec-Fetch-Site", "").lower() in _FOREIGN_FETCH:
                raise ApiError(403, "cross-site request refused")
        return await handler(request)

    return guard
