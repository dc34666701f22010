"""The customer page: ``GET /`` and its files, shipped in the package (api/static).

The files are read once at start. Their URLs carry a version, a hash of every
file, so the browser may keep them for a year (``immutable``) and a new
release is fetched at once: the page itself is revalidated on every visit
(``no-cache`` with an ETag, answered 304 while unchanged). The page runs
under a strict Content-Security-Policy: its own scripts and styles only,
nothing inline, no framing, requests to this origin alone.
"""

import functools
import hashlib
import mimetypes
from dataclasses import dataclass
from importlib import resources

from aiohttp import hdrs, web

from api.errors import ApiError

PAGE_PATH = "/"
STATIC_PREFIX = "/static"
_VERSION_MARK = "{{static}}"

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
_SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
_TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".html": "text/html",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


@dataclass(frozen=True)
class Assets:
    version: str
    page: Asset
    files: dict[str, Asset]


def _asset(name: str, body: bytes) -> Asset:
    suffix = name[name.rfind(".") :]
    content_type = _TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"
    return Asset(body, content_type, f'"{hashlib.sha256(body).hexdigest()[:20]}"')


@functools.cache
def assets() -> Assets:
    """Every file under api/static, and the page pointing at this version of them."""
    static = resources.files("api").joinpath("static")
    raw = {
        entry.name: entry.read_bytes()
        for entry in static.iterdir()
        if entry.is_file() and not entry.name.startswith(".")
    }
    digest = hashlib.sha256()
    for name in sorted(raw):
        digest.update(name.encode() + b"\0" + raw[name] + b"\0")
    version = digest.hexdigest()[:12]
    template = raw.pop("index.html").decode("utf-8")
    page = template.replace(_VERSION_MARK, f"{STATIC_PREFIX}/{version}").encode("utf-8")
    return Assets(
        version,
        _asset("index.html", page),
        {name: _asset(name, body) for name, body in raw.items()},
    )


def _answer(request: web.Request, asset: Asset, cache_control: str) -> web.Response:
    headers = {
        hdrs.ETAG: asset.etag,
        hdrs.CACHE_CONTROL: cache_control,
        hdrs.VARY: "Accept-Encoding",
        **_SECURITY_HEADERS,
    }
    if asset.etag in request.headers.get(hdrs.IF_NONE_MATCH, ""):
        return web.Response(status=304, headers=headers)
    response = web.Response(status=200, body=asset.body, headers=headers)
    response.content_type = asset.content_type
    if asset.content_type.startswith("text/"):
        response.charset = "utf-8"
    return response


async def serve_page(request: web.Request) -> web.StreamResponse:
    return _answer(request, assets().page, "no-cache")


async def serve_static(request: web.Request) -> web.StreamResponse:
    found = assets()
    asset = found.files.get(request.match_info["name"])
    if request.match_info["version"] != found.version or asset is None:
        raise ApiError(404, "not found")
    return _answer(request, asset, "public, max-age=31536000, immutable")


def add_page_routes(app: web.Application) -> None:
    app.router.add_get(PAGE_PATH, serve_page, allow_head=False)
    app.router.add_get(STATIC_PREFIX + "/{version}/{name}", serve_static, allow_head=False)
