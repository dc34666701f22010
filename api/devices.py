"""Device cookies: a browser that logged in to a login before goes first during a spray.

OWASP's "device cookies" against lockout: a successful login (or registration)
hands the browser a ``gophermart_device`` cookie sealing that login, kept for
DEVICE_TTL and sent back only to the login endpoint. A later attempt at the
same login carrying it queues for hashing as ``Work.TRUSTED_LOGIN``: served
first, and taking the place of any other login when the queue is full. So a
spray of made-up logins from more clean addresses than the queue holds (which
a clean login cannot outrank) still cannot keep a returning customer out.

The cookie only orders the queue; it opens nothing, and the attempt is
throttled like any other. It cannot be forged (a key of its own, derived from
SESSION_SECRET) and vouches for one login only; whoever holds one for their own
login gets TRUSTED_PER_WINDOW trusted attempts at it per LOGIN_WINDOW, counted
in PostgreSQL, so a spray cannot ride on an account of its own.
"""

import hmac

import asyncpg
from aiohttp import web
from cryptography.fernet import InvalidToken

from api.sessions import Sealer
from db import throttle

DEVICE_COOKIE = "gophermart_device"
DEVICE_TTL = 30 * 86_400
# Trusted attempts at one login per LOGIN_WINDOW, whatever cookies are sent.
TRUSTED_PER_WINDOW = 10
# A sealed login of at most 256 characters is far shorter; longer is not ours.
_MAX_COOKIE = 2048


class DeviceCookies:
    def __init__(self, sealer: Sealer, *, cookie_secure: bool) -> None:
        self._fernet = sealer.fernet_for("device cookie")
        self._secure = cookie_secure

    def hand_out(self, response: web.StreamResponse, login: str) -> None:
        token = self._fernet.encrypt(login.encode("utf-8")).decode("ascii")
        response.set_cookie(
            DEVICE_COOKIE,
            token,
            max_age=DEVICE_TTL,
            path="/api/user/login",
            httponly=True,
            samesite="Strict",
            secure=self._secure or None,
        )

    def vouches_for(self, request: web.Request, login: str) -> bool:
        """True when the request carries a device cookie this service sealed for ``login``."""
        token = request.cookies.get(DEVICE_COOKIE)
        if not token or len(token) > _MAX_COOKIE or not token.isascii():
            return False
        try:
            sealed = self._fernet.decrypt(token.encode("ascii"), ttl=DEVICE_TTL)
        except InvalidToken:
            return False
        return hmac.compare_digest(sealed, login.encode("utf-8"))

    async def trusted(
        self, pool: asyncpg.Pool, request: web.Request, login: str, window: float
    ) -> bool:
        """Vouched for, and within the login's trusted attempts of the window."""
        if not self.vouches_for(request, login):
            return False
        return await throttle.hit(pool, "trusted:" + login, TRUSTED_PER_WINDOW, window) is None
