"""Authentication: one sealed token, handed out as a cookie and a bearer token.

Register and login answer with the token in a ``gophermart_session`` cookie
and in an ``Authorization: Bearer …`` response header; every protected
endpoint accepts either (the header wins when both are sent). What a token
holds and how it is checked and revoked is in api/sessions.py.
"""

import functools
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import hdrs, web

from api.errors import ApiError
from api.sessions import Session, Sessions
from api.state import POOL, SESSIONS
from shared.pg import SHARE_KEY

COOKIE_NAME = "gophermart_session"
_BEARER = "Bearer "


def request_token(request: web.Request) -> str | None:
    """The token the request carries: the bearer header, else the cookie."""
    header = request.headers.get(hdrs.AUTHORIZATION)
    if header is not None:
        # The scheme is case-insensitive (RFC 9110 §11.1): "bearer" is "Bearer".
        scheme, _, token = header.strip().partition(" ")
        return token.strip() if scheme.lower() == "bearer" else None
    return request.cookies.get(COOKIE_NAME)


def hand_out(
    request: web.Request, response: web.StreamResponse, user_id: int, generation: int
) -> None:
    """Start a fresh session for the user: its token as cookie and bearer header."""
    sessions = request.app[SESSIONS]
    token = sessions.issue(user_id, generation)
    response.set_cookie(
        COOKIE_NAME,
        token,
        max_age=sessions.sealer.ttl,
        path="/",
        httponly=True,
        samesite="Lax",
        secure=sessions.cookie_secure or None,
    )
    response.headers[hdrs.AUTHORIZATION] = _BEARER + token
    structlog.contextvars.bind_contextvars(user_id=user_id)


def clear_cookie(request: web.Request, response: web.StreamResponse) -> None:
    response.del_cookie(
        COOKIE_NAME,
        path="/",
        httponly=True,
        samesite="Lax",
        secure=request.app[SESSIONS].cookie_secure or None,
    )


async def current_session(request: web.Request) -> Session | None:
    token = request_token(request)
    if not token:
        return None
    sessions: Sessions = request.app[SESSIONS]
    return await sessions.check(request.app[POOL], token)


Handler = Callable[[web.Request, int], Awaitable[web.StreamResponse]]
SessionHandler = Callable[[web.Request, Session], Awaitable[web.StreamResponse]]
Wrapped = Callable[[web.Request], Awaitable[web.StreamResponse]]


def session_required(handler: SessionHandler) -> Wrapped:
    """Authenticate before anything else: an anonymous bad request still gets 401."""

    @functools.wraps(handler)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        session = await current_session(request)
        if session is None:
            raise ApiError(401, "authentication required")
        structlog.contextvars.bind_contextvars(user_id=session.user_id)
        # From here on the request's queries come out of this customer's share.
        SHARE_KEY.set(session.user_id)
        return await handler(request, session)

    return wrapper


def login_required(handler: Handler) -> Wrapped:
    """``session_required`` for handlers that need only the user's id."""

    @functools.wraps(handler)
    async def with_user_id(request: web.Request, session: Session) -> web.StreamResponse:
        return await handler(request, session.user_id)

    return session_required(with_user_id)
