"""Sessions: one encrypted credential, handed out as a cookie and a bearer token.

aiohttp-session's EncryptedCookieStorage seals the session with Fernet
(AES-128-CBC + HMAC-SHA256, with a timestamp checked against ``max_age``), so
the credential cannot be forged, altered or used after it expires. The same
sealed value is also returned in an ``Authorization: Bearer …`` response
header and accepted in that request header.
"""

import functools
import hashlib
import secrets
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import hdrs, web
from aiohttp_session import get_session, new_session
from aiohttp_session.cookie_storage import EncryptedCookieStorage

from api.errors import ApiError

log = structlog.get_logger(__name__)

COOKIE_NAME = "gophermart_session"
_USER_KEY = "uid"
_BEARER = "Bearer "


def fernet_key(secret: str | None) -> bytes:
    """32 key bytes from any configured secret string, or random ones."""
    if not secret:
        log.warning(
            "SESSION_SECRET is not set: using a random secret; every login ends when "
            "this process stops and other replicas will not accept its tokens")
        raw = secrets.token_bytes(32)
    else:
        raw = hashlib.sha256(secret.encode("utf-8")).digest()
    return raw


class TokenStorage(EncryptedCookieStorage):
    """The encrypted cookie storage that also speaks ``Authorization: Bearer``."""

    def load_cookie(self, request: web.Request) -> str | None:
        header = request.headers.get(hdrs.AUTHORIZATION)
        if header is not None:
            return header[len(_BEARER):].strip() if header.startswith(_BEARER) else ""
        cookie: str | None = request.cookies.get(self.cookie_name)
        return cookie

    def save_cookie(self, response: web.StreamResponse, cookie_data: str, *,
                    max_age: int | None = None) -> None:
        super().save_cookie(response, cookie_data, max_age=max_age)
        if cookie_data:
            response.headers[hdrs.AUTHORIZATION] = _BEARER + cookie_data


def create_storage(secret: str | None, ttl: int, secure: bool) -> TokenStorage:
    return TokenStorage(
        fernet_key(secret),
        cookie_name=COOKIE_NAME,
        max_age=ttl,
        path="/",
        httponly=True,
        samesite="Lax",
        secure=secure or None,
    )


async def log_in(request: web.Request, user_id: int) -> None:
    """Start a fresh session for the user (sent with the response)."""
    session = await new_session(request)
    session[_USER_KEY] = user_id
    structlog.contextvars.bind_contextvars(user_id=user_id)


async def current_user(request: web.Request) -> int | None:
    session = await get_session(request)
    user_id = session.get(_USER_KEY)
    return user_id if isinstance(user_id, int) else None


Handler = Callable[[web.Request, int], Awaitable[web.StreamResponse]]


def login_required(handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Authenticate before anything else: an anonymous bad request still gets 401."""

    @functools.wraps(handler)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        user_id = await current_user(request)
        if user_id is None:
            raise ApiError(401, "authentication required")
        structlog.contextvars.bind_contextvars(user_id=user_id)
        return await handler(request, user_id)

    return wrapper
