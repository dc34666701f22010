"""Sessions: sealed tokens, their server-side check, and a short cache of verified ones.

A token is a Fernet token (AES-128-CBC + HMAC-SHA256 with its issue time)
sealing ``{"uid", "sid", "gen", "exp"}``: the user, a random 128-bit session
id, the user's session generation at issue, and the expiry fixed at issue (so
a later, longer ``SESSION_TTL`` never revives a token). It is valid while its
seal and expiry hold, the user's ``session_generation`` still equals ``gen``
(a password change bumps it) and ``sid`` is not in ``revoked_sessions``
(logout puts it there).

Checking that on every request would cost a Fernet decrypt and a query. A
verified token is therefore cached for ``SESSION_CACHE_TTL`` seconds, keyed by
its exact text, in a bounded map. Every revocation is announced with NOTIFY
in its own transaction; each API process LISTENs and drops the user's
entries when it hears it. The cache is filled only while that connection is
up (a process that is not listening checks every request in the database),
and it is emptied whenever the connection is (re)made, so a missed
notification can keep a revoked token alive for at most SESSION_CACHE_TTL
seconds, and only when the connection died without anyone noticing.
"""

import asyncio
import base64
import binascii
import contextlib
import hashlib
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
import structlog
from cryptography.fernet import Fernet, InvalidToken
from prometheus_client import Counter

from db import sessions as db_sessions
from shared.pg import WORTH_RETRYING

log = structlog.get_logger(__name__)

# A sealed payload is ~170 characters; anything much longer is not ours.
MAX_TOKEN_CHARS = 512
_TOKEN_TEXT = re.compile(r"[A-Za-z0-9_-]+")
SESSION_ID_BYTES = 16
# Verified tokens kept per process (about 0.4 KB each).
CACHE_ENTRIES = 10_000


@dataclass(frozen=True, slots=True)
class Session:
    user_id: int
    session_id: bytes
    generation: int
    expires_at: int  # Unix seconds


# The least a configured SESSION_SECRET must have: a secret guessed offline
# forges tokens for every user, so short or repetitive ones stop the start.
MIN_SECRET_LENGTH = 32
MIN_SECRET_DISTINCT = 10


class WeakSecretError(ValueError):
    """SESSION_SECRET is set but below the documented minimum."""


def check_secret(secret: str) -> None:
    if len(secret) < MIN_SECRET_LENGTH or len(set(secret)) < MIN_SECRET_DISTINCT:
        raise WeakSecretError(
            f"SESSION_SECRET is too weak: use at least {MIN_SECRET_LENGTH} characters with at "
            f"least {MIN_SECRET_DISTINCT} different ones, e.g. the output of "
            "`openssl rand -hex 32`"
        )


def fernet_key(secret: str | None) -> bytes:
    """32 key bytes from a strong enough secret string, or random ones when unset."""
    if not secret:
        log.warning(
            "SESSION_SECRET is not set: using a random secret; every login ends when "
            "this process stops and other replicas will not accept its tokens"
        )
        return secrets.token_bytes(32)
    check_secret(secret)
    return hashlib.sha256(secret.encode("utf-8")).digest()


class Sealer:
    """Seals sessions into tokens and opens them again (no database involved)."""

    def __init__(self, secret: str | None, ttl: int) -> None:
        self._key = fernet_key(secret)
        self._fernet = Fernet(base64.urlsafe_b64encode(self._key))
        self.ttl = ttl

    def fernet_for(self, purpose: str) -> Fernet:
        """A Fernet of its own for another kind of token: what it seals is no session."""
        derived = hashlib.sha256(purpose.encode() + b"\0" + self._key).digest()
        return Fernet(base64.urlsafe_b64encode(derived))

    def seal(self, user_id: int, generation: int) -> tuple[str, Session]:
        now = int(time.time())
        session = Session(
            user_id, secrets.token_bytes(SESSION_ID_BYTES), generation, now + self.ttl
        )
        payload = orjson.dumps(
            {
                "uid": user_id,
                "gen": generation,
                "exp": session.expires_at,
                "sid": base64.urlsafe_b64encode(session.session_id).decode("ascii"),
            }
        )
        # Without base64 padding: "=" would make the Set-Cookie value a quoted
        # string, and the cookie would no longer be the bearer token as is.
        token = self._fernet.encrypt_at_time(payload, now).decode("ascii").rstrip("=")
        return token, session

    def open(self, token: str) -> Session | None:
        """The session a well-sealed, unexpired token names; None for anything else.

        ``token`` is normalised (see ``normalise``).
        """
        if len(token) > MAX_TOKEN_CHARS or not _canonical(token):
            return None
        try:
            payload = orjson.loads(self._fernet.decrypt(_padded(token), ttl=self.ttl))
        except (InvalidToken, ValueError, TypeError):  # ValueError: non-ASCII text
            return None
        session = _session_from(payload)
        if session is None or session.expires_at <= time.time():
            return None
        return session


def normalise(token: str) -> str:
    """The token without base64 padding or the quotes of a quoted cookie value.

    Both are ways of writing the same token (tokens are handed out without
    either); anything else that differs from what we handed out is refused.
    """
    if token.startswith('"') and token.endswith('"') and len(token) >= 2:
        token = token[1:-1]
    return token.rstrip("=")


def _padded(token: str) -> str:
    return token + "=" * (-len(token) % 4)


def _canonical(token: str) -> bool:
    """Exactly the text we handed out, not one of the many spellings of its bytes.

    Base64 decoding skips foreign characters and ignores spare bits, so a
    token has endless variants that open to the same session; each would miss
    the cache and cost a decrypt and a query, and could flush others' entries.
    """
    if not _TOKEN_TEXT.fullmatch(token):
        return False
    try:
        raw = base64.urlsafe_b64decode(_padded(token))
    except (ValueError, binascii.Error):
        return False
    return base64.urlsafe_b64encode(raw).decode().rstrip("=") == token


def _session_from(payload: Any) -> Session | None:
    if not isinstance(payload, dict):
        return None
    uid, gen, exp, sid = (payload.get(k) for k in ("uid", "gen", "exp", "sid"))
    if (
        type(uid) is not int
        or type(gen) is not int
        or type(exp) is not int
        or not isinstance(sid, str)
    ):
        return None
    try:
        session_id = base64.urlsafe_b64decode(sid)
    except (ValueError, binascii.Error):
        return None
    if len(session_id) != SESSION_ID_BYTES:
        return None
    return Session(uid, session_id, gen, exp)


MISS = object()  # what VerifiedTokens.get answers for an unknown token


class VerifiedTokens:
    """Tokens checked against the database recently: token -> Session (or None: ended).

    An ended token never becomes valid again, so remembering the refusal is as
    safe as remembering the acceptance.
    """

    def __init__(self, ttl: float, size: int = CACHE_ENTRIES) -> None:
        self.ttl = ttl
        self.size = size
        self.listening = False
        self._entries: dict[str, tuple[float, int, Session | None]] = {}
        self._by_user: dict[int, set[str]] = {}
        # Bumped by every invalidation: a check that started before one must
        # not cache its (possibly stale) answer.
        self._invalidations = 0

    def get(self, token: str) -> object:
        """The cached Session or None, or ``MISS``."""
        entry = self._entries.get(token)
        if entry is None:
            return MISS
        deadline, _, session = entry
        if deadline < time.monotonic() or (session and session.expires_at <= time.time()):
            self._drop(token)
            return MISS
        return session

    def mark(self) -> int:
        return self._invalidations

    def put(self, token: str, user_id: int, session: Session | None, mark: int) -> None:
        if not self.listening or self.ttl <= 0 or mark != self._invalidations:
            return
        if token not in self._entries and len(self._entries) >= self.size:
            self._drop(next(iter(self._entries)))  # the oldest
        self._entries[token] = (time.monotonic() + self.ttl, user_id, session)
        self._by_user.setdefault(user_id, set()).add(token)

    def forget_user(self, user_id: int) -> None:
        self._invalidations += 1
        for token in self._by_user.pop(user_id, ()):
            self._entries.pop(token, None)

    def clear(self) -> None:
        self._invalidations += 1
        self._entries.clear()
        self._by_user.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def _drop(self, token: str) -> None:
        entry = self._entries.pop(token, None)
        if entry is None:
            return
        tokens = self._by_user.get(entry[1])
        if tokens is not None:
            tokens.discard(token)
            if not tokens:
                del self._by_user[entry[1]]


class Sessions:
    """Issue, check and end sessions: the sealer, the cache and the database together."""

    def __init__(
        self,
        secret: str | None,
        ttl: int,
        cache_ttl: float,
        *,
        cookie_secure: bool = False,
        checked: Mapping[bool, Counter] | None = None,
    ) -> None:
        self.sealer = Sealer(secret, ttl)
        self.cache = VerifiedTokens(cache_ttl)
        self.cookie_secure = cookie_secure
        self._checked = checked  # counters by the database's answer (cache misses only)

    def issue(self, user_id: int, generation: int) -> str:
        return self.sealer.seal(user_id, generation)[0]

    async def check(self, pool: asyncpg.Pool, token: str) -> Session | None:
        token = normalise(token)
        cached = self.cache.get(token)
        if cached is not MISS:
            return cached if isinstance(cached, Session) else None
        session = self.sealer.open(token)
        if session is None:
            return None  # forged, expired or junk: cheap to refuse again
        mark = self.cache.mark()
        current = await db_sessions.is_current(
            pool, session.user_id, session.generation, session.session_id
        )
        result = session if current else None
        self.cache.put(token, session.user_id, result, mark)
        if self._checked is not None:
            self._checked[current].inc()
        return result

    async def end(self, pool: asyncpg.Pool, session: Session) -> None:
        """Log this one session out everywhere."""
        await db_sessions.revoke(pool, session.user_id, session.session_id, session.expires_at)
        self.cache.forget_user(session.user_id)

    def ended_for(self, user_id: int) -> None:
        """This user's sessions changed (this process knows before the NOTIFY arrives)."""
        self.cache.forget_user(user_id)


class RevocationListener:
    """LISTEN for ended sessions; the cache works only while this connection lives."""

    def __init__(
        self, dsn: str, cache: VerifiedTokens, *, timeout: float = 5.0, check_interval: float = 5.0
    ) -> None:
        self._dsn = dsn
        self._cache = cache
        self._timeout = timeout
        self._check_interval = check_interval
        self._lost = asyncio.Event()
        self.connected = asyncio.Event()

    async def run(self) -> None:
        backoff = 0.1
        while True:
            try:
                conn = await asyncpg.connect(
                    self._dsn,
                    timeout=self._timeout,
                    server_settings={"application_name": "gophermart-api-sessions"},
                )
            except WORTH_RETRYING as exc:
                log.warning("cannot connect to listen for ended sessions", error=repr(exc))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            try:
                await self._listen(conn)
            except WORTH_RETRYING as exc:
                log.warning("session listen connection lost", error=repr(exc))
            finally:
                self._cache.listening = False
                self._cache.clear()
                self.connected.clear()
                conn.terminate()

    async def _listen(self, conn: asyncpg.Connection) -> None:
        self._lost.clear()
        conn.add_termination_listener(lambda _conn: self._lost.set())
        await conn.add_listener(db_sessions.SESSIONS_CHANNEL, self._notified)
        # Whatever was cached may have missed notifications: start afresh.
        self._cache.clear()
        self._cache.listening = True
        self.connected.set()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), self._check_interval)
            if self._lost.is_set():
                return
            # Quiet for a while: make sure the connection still lives.
            await asyncio.wait_for(conn.fetchval("SELECT 1"), self._timeout)

    def _notified(self, _conn: object, _pid: object, _channel: object, payload: object) -> None:
        try:
            user_id = int(str(payload))
        except ValueError:
            self._cache.clear()
            return
        self._cache.forget_user(user_id)
