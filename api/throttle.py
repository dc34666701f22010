"""Throttles at the API's edge, counted in PostgreSQL so they hold fleet-wide.

Every API process and replica reserves attempts in the same ``throttle``
table (db.throttle), one statement per reservation: however attempts are
sent — at once, to several processes, to several replicas — no more are let
through than the configured number. The policy is written out in the README
("Throttling").
"""

import asyncio
import contextlib
import ipaddress
import math
import time
from collections.abc import AsyncIterator, Awaitable

import asyncpg
import structlog
from aiohttp import web

from api.errors import ApiError
from api.passwords import Work
from db import throttle
from shared.pg import WORTH_RETRYING_OR_BUSY
from shared.settings import ApiSettings

log = structlog.get_logger(__name__)

# The pair (login, address) may fail this often before delays start.
FREE_FAILURES = 3
# Closed registration windows remembered per process.
MAX_REMEMBERED = 10_000
SWEEP_EVERY = 60.0


def retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


class Throttled(ApiError):
    """429: the attempt's budget is spent.

    The caller pauses a moment before answering (api/users.py), once out of the
    hashing queue: a client hammering a closed window then costs a sleeping
    coroutine, not a busy event loop, nor a hashing turn.
    """

    def __init__(self, reason: str, wait: float) -> None:
        super().__init__(429, reason, retry_after(wait))


def address_key(text: str) -> str:
    """What counts as one client address: an IPv4 address, or an IPv6 /64.

    One IPv6 subscriber is usually given a whole /64: counted per address, one
    machine could open a new "client" for every connection or guess.
    """
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return text
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def forwarded_ip(entry: str) -> str | None:
    """The address in one X-Forwarded-For entry, with or without a port; None if none.

    Some proxies append ``ip:port`` or ``[ipv6]:port``: read as unparsable, every
    client behind them would count as the proxy, one address shared by all.
    """
    text = entry.strip()
    if text.startswith("[") and "]" in text:
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


class ClientAddress:
    """The client's address key (address_key): the TCP peer's, or a trusted proxy's word."""

    def __init__(self, trusted_proxies: str) -> None:
        self._trusted = {
            str(ipaddress.ip_address(item.strip()))
            for item in trusted_proxies.split(",")
            if item.strip()
        }

    def from_proxy(self, request: web.BaseRequest) -> bool:
        """True when the request came through one of TRUSTED_PROXIES."""
        return (request.remote or "") in self._trusted

    def __call__(self, request: web.Request) -> str:
        peer = request.remote or ""
        if peer not in self._trusted:
            return address_key(peer)
        # The entry our proxy appended is the last one; earlier ones are the client's word.
        forwarded = request.headers.getall("X-Forwarded-For", [])
        last = forwarded_ip(",".join(forwarded).rsplit(",", 1)[-1])
        return address_key(last if last is not None else peer)


class Throttle:
    def __init__(self, settings: ApiSettings) -> None:
        self._settings = settings
        self.client_address = ClientAddress(settings.trusted_proxies)
        # Registration windows known to be closed, per address: until when.
        # A refusal is certain until its window ends, so repeats are answered
        # without asking PostgreSQL (a flood of them would otherwise be a
        # flood of writes on one row).
        self._closed: dict[str, float] = {}

    async def login_work(
        self, pool: asyncpg.Pool, request: web.Request, login: str
    ) -> tuple[Work, int]:
        """How an attempt at ``login`` queues for hashing: its kind and its rank.

        A suspect login: its (login, address) pair used up its free failures in
        the window (FREE_FAILURES, before which the pair is not delayed either:
        a customer's typo must not put them behind a spray), or its address
        failed LOGIN_ADDRESS_FREE_FAILURES times on any logins (a spray of
        made-up logins is a fresh pair every time). The rank, the address's
        failures, orders clean logins: an address without any goes first. Read
        before the attempt is reserved, so that one refused by a full queue
        leaves no row behind. Whether the login exists plays no part: no oracle.
        """
        settings = self._settings
        if settings.login_max_failures <= 0:
            return Work.LOGIN, 0
        pair, address = await throttle.login_standing(pool, login, self.client_address(request))
        free = min(FREE_FAILURES, settings.login_max_failures)
        suspect = pair >= free or address >= settings.login_address_free_failures
        return (Work.FLAGGED_LOGIN if suspect else Work.LOGIN), address

    def password_change_work(
        self, pool: asyncpg.Pool, request: web.Request, user_id: int
    ) -> Awaitable[tuple[Work, int]]:
        return self.login_work(pool, request, _password_change_key(user_id))

    def login_attempt(
        self, pool: asyncpg.Pool, request: web.Request, login: str
    ) -> contextlib.AbstractAsyncContextManager["LoginAttempt"]:
        """Reserve one attempt at ``login`` (Throttled when none is left); settled on exit.

        Enter it holding the hashing turn: an attempt the queue refuses is never counted.
        """
        return self._attempt(pool, request, login, "too many failed logins; try again later")

    def password_change_attempt(
        self, pool: asyncpg.Pool, request: web.Request, user_id: int
    ) -> contextlib.AbstractAsyncContextManager["LoginAttempt"]:
        """The same for a customer's guesses at their current password."""
        return self._attempt(
            pool,
            request,
            _password_change_key(user_id),
            "too many wrong passwords; try again later",
        )

    @contextlib.asynccontextmanager
    async def _attempt(
        self, pool: asyncpg.Pool, request: web.Request, login: str, refusal: str
    ) -> AsyncIterator["LoginAttempt"]:
        settings = self._settings
        attempt = LoginAttempt()
        if settings.login_max_failures <= 0:
            yield attempt
            return
        address = self.client_address(request)
        wait = await throttle.reserve_login(
            pool,
            login,
            address,
            pair_limit=settings.login_max_failures,
            login_limit=settings.login_max_failures_per_login,
            free_failures=min(FREE_FAILURES, settings.login_max_failures),
            window=settings.login_window,
        )
        if wait is not None:
            log.info("login throttled", retry_after=round(wait, 1))
            raise Throttled(refusal, wait)
        try:
            yield attempt
        except BaseException:
            if not attempt.verified:  # hashing busy, database gone: it did not count
                await asyncio.shield(throttle.refund_login(pool, login, address, succeeded=False))
            raise
        if attempt.succeeded:
            await throttle.refund_login(pool, login, address, succeeded=True)
        elif not attempt.verified:
            await throttle.refund_login(pool, login, address, succeeded=False)

    def registration_closed(self, request: web.Request) -> None:
        """Throttled when this process knows the address's registration window is closed.

        Asks nothing of PostgreSQL: checked before the hashing queue, so that an
        address hammering a closed window never takes a place in it.
        """
        if self._settings.register_max_per_address <= 0:
            return
        until = self._closed.get("register:" + self.client_address(request))
        now = time.monotonic()
        if until is not None and until > now:
            raise Throttled(_REGISTRATION_REFUSAL, until - now)

    async def registration(self, pool: asyncpg.Pool, request: web.Request) -> None:
        """Count one registration from the client's address; Throttled beyond the rate.

        Counted holding the hashing turn: a registration the queue refuses is not.
        """
        settings = self._settings
        if settings.register_max_per_address <= 0:
            return
        self.registration_closed(request)
        key = "register:" + self.client_address(request)
        wait = await throttle.hit(
            pool, key, settings.register_max_per_address, settings.register_window
        )
        if wait is None:
            return
        now = time.monotonic()
        if len(self._closed) >= MAX_REMEMBERED:
            self._closed = {k: t for k, t in self._closed.items() if t > now}
        if len(self._closed) < MAX_REMEMBERED:
            self._closed[key] = now + wait
        raise Throttled(_REGISTRATION_REFUSAL, wait)


_REGISTRATION_REFUSAL = "too many registrations from this address; try again later"


def _password_change_key(user_id: int) -> str:
    """Logins never contain control characters, so this key is never a login's."""
    return f"\x1fpassword-change {user_id}"


class LoginAttempt:
    """Set ``verified`` once the password was checked, ``succeeded`` when it was right.

    An attempt left unverified is given back; a verified wrong one stays counted.
    """

    verified = False
    succeeded = False


async def sweep_forever(pool: asyncpg.Pool, every: float = SWEEP_EVERY) -> None:
    """Delete spent throttle rows now and then (several processes sweeping is harmless)."""
    while True:
        await asyncio.sleep(every)
        try:
            swept = await throttle.sweep(pool)
        except WORTH_RETRYING_OR_BUSY as exc:  # the next sweep catches up
            log.warning("cannot sweep throttle rows", error=repr(exc))
            continue
        if swept:
            log.debug("throttle rows swept", rows=swept)
