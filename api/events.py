"""GET /api/user/events: server-sent events that tell a user's page to look again.

Each API process holds one LISTEN connection (migration 0004's triggers
notify it whenever an order or balance of a user changes) and fans each
notification out to that user's open streams. A stream carries no data of
its own: ``event: change`` means "re-read your orders and balance" through
the ordinary endpoints, so nothing here can leak one user's data to another.

Streams are bounded, because each holds a socket open for minutes:
- per user, the newest ``EVENTS_PER_USER`` streams live; opening one more
  ends the oldest (``event: end`` / ``replaced``), so 300 tabs or a script
  cost the process no more than a few streams;
- per process, ``EVENTS_MAX_STREAMS`` in all; past that the answer is 503 and
  the page polls instead;
- a heartbeat comment every ``EVENTS_HEARTBEAT`` seconds keeps proxies from
  timing the stream out and finds clients that vanished;
- a stream ends when its session expires, after ``EVENTS_MAX_AGE`` seconds
  (the browser reconnects and is authenticated afresh), when its session is
  ended (logout or a password change: the same LISTEN connection hears the
  sessions channel, and the user's streams are checked against the database
  again), and at shutdown.
"""

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import asyncpg
import structlog
from aiohttp import web
from prometheus_client import Gauge

from api.auth import session_required
from api.errors import ApiError
from api.metrics import METRICS
from api.sessions import Session
from api.state import POOL, SETTINGS
from db import events
from db import sessions as db_sessions
from shared.pg import WORTH_RETRYING

log = structlog.get_logger(__name__)

# Why the server ended a stream (sent as ``event: end`` with this as data).
REPLACED = "replaced"  # the user opened more than EVENTS_PER_USER streams
ENDED = "ended"  # the stream's session was ended (logout, password change)
SHUTDOWN = "shutdown"

# The browser waits this long before reconnecting a dropped stream.
RECONNECT_MS = 5000


# Is this session still valid? (Asked of the database, never of a cache.)
SessionCheck = Callable[[Session], Awaitable[bool]]


@dataclass(eq=False)
class Stream:
    session: Session
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    ended: str | None = None

    @property
    def user_id(self) -> int:
        return self.session.user_id

    def end(self, why: str) -> None:
        self.ended = why
        self.wake.set()


class EventHub:
    """The process's open streams by user, and the LISTEN connection feeding them."""

    def __init__(
        self,
        dsn: str,
        *,
        per_user: int,
        total: int,
        still_valid: SessionCheck,
        timeout: float = 5.0,
        check_interval: float = 5.0,
        counted: Callable[[int], None] = lambda _n: None,
    ) -> None:
        self._dsn = dsn
        self._still_valid = still_valid
        self._checks: set[asyncio.Task[None]] = set()
        self._per_user = max(per_user, 1)
        self._total = total
        self._timeout = timeout
        self._check_interval = check_interval
        self._streams: dict[int, list[Stream]] = {}
        self._count = 0
        self._counted = counted  # told every new count (the metric)
        self._closing = False
        self._lost = asyncio.Event()  # the listening connection closed, or shutdown
        self.listening = asyncio.Event()

    @property
    def open_streams(self) -> int:
        return self._count

    def open(self, session: Session) -> Stream | None:
        """A new stream for the session's user, ending their oldest beyond the cap;
        None when the process is full."""
        if self._closing or self._count >= self._total:
            return None
        mine = self._streams.setdefault(session.user_id, [])
        while len(mine) >= self._per_user:
            mine.pop(0).end(REPLACED)
            self._add(-1)
        stream = Stream(session)
        mine.append(stream)
        self._add(1)
        return stream

    def _add(self, delta: int) -> None:
        self._count += delta
        self._counted(self._count)

    def close(self, stream: Stream) -> None:
        mine = self._streams.get(stream.user_id)
        if mine is None or stream not in mine:
            return  # already replaced or ended
        mine.remove(stream)
        self._add(-1)
        if not mine:
            del self._streams[stream.user_id]

    def changed(self, user_id: int) -> None:
        """Something of this user's changed: their streams say "look again"."""
        for stream in self._streams.get(user_id, ()):
            stream.wake.set()

    async def recheck(self, user_id: int) -> None:
        """A session of this user ended somewhere: end the streams whose session it was."""
        for stream in list(self._streams.get(user_id, ())):
            try:
                valid = await self._still_valid(stream.session)
            except WORTH_RETRYING as exc:  # keep it; EVENTS_MAX_AGE bounds the doubt
                log.warning("cannot recheck an event stream's session", error=repr(exc))
                continue
            if not valid and stream.ended is None:
                self.close(stream)
                stream.end(ENDED)

    def shutdown(self) -> None:
        """End every stream now and refuse new ones (the server is stopping)."""
        self._closing = True
        self._lost.set()
        for mine in self._streams.values():
            for stream in mine:
                stream.end(SHUTDOWN)
        self._streams.clear()
        self._add(-self._count)
        for task in self._checks:
            task.cancel()

    # -- the LISTEN connection -------------------------------------------------

    async def run(self) -> None:
        """Listen until shutdown, reconnecting with backoff; never raises."""
        backoff = 0.1
        while not self._closing:
            try:
                conn = await asyncpg.connect(
                    self._dsn,
                    timeout=self._timeout,
                    server_settings={"application_name": "gophermart-api-events"},
                )
            except WORTH_RETRYING as exc:
                log.warning("cannot connect to listen for user changes", error=repr(exc))
            else:
                try:
                    await self._listen(conn)
                    backoff = 0.1
                except WORTH_RETRYING as exc:
                    log.warning("user change listener lost", error=repr(exc))
                finally:
                    self.listening.clear()
                    conn.terminate()
            if not self._closing:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._lost.wait(), backoff * random.uniform(0.5, 1.0))
                backoff = min(backoff * 2, 5.0)

    async def _listen(self, conn: asyncpg.Connection) -> None:
        self._lost.clear()
        if self._closing:
            return
        conn.add_termination_listener(lambda _conn: self._lost.set())
        await conn.add_listener(events.USER_CHANGE_CHANNEL, self._user_changed)
        await conn.add_listener(db_sessions.SESSIONS_CHANNEL, self._sessions_changed)
        self.listening.set()
        # Changes may have happened while nobody listened: every page looks again.
        for mine in self._streams.values():
            for stream in mine:
                stream.wake.set()
        while not self._closing:
            try:
                await asyncio.wait_for(self._lost.wait(), self._check_interval)
            except TimeoutError:
                # Quiet for a while: make sure the connection still lives.
                await conn.execute("SELECT 1", timeout=self._timeout)
                continue
            return

    def _user_changed(self, _conn: object, _pid: object, _channel: object, payload: object) -> None:
        user_id = events.parse_user_id(str(payload))
        if user_id is not None:
            self.changed(user_id)

    def _sessions_changed(
        self, _conn: object, _pid: object, _channel: object, payload: object
    ) -> None:
        user_id = events.parse_user_id(str(payload))
        if user_id is None or user_id not in self._streams or self._closing:
            return
        task = asyncio.create_task(self.recheck(user_id))
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)


EVENTS = web.AppKey("events", EventHub)


async def hub_context(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: run the hub while the app runs (after the database is migrated)."""
    settings = app[SETTINGS]
    assert settings.database_uri is not None

    async def still_valid(session: Session) -> bool:
        return await db_sessions.is_current(
            app[POOL], session.user_id, session.generation, session.session_id
        )

    # livesum: under several API processes a scrape sums the live processes' counts.
    gauge = Gauge(
        "gophermart_event_streams",
        "Open GET /api/user/events streams.",
        registry=app[METRICS].registry,
        multiprocess_mode="livesum",
    )
    hub = EventHub(
        settings.database_uri,
        per_user=settings.events_per_user,
        total=settings.events_max_streams,
        still_valid=still_valid,
        timeout=settings.db_timeout,
        counted=gauge.set,
    )
    app[EVENTS] = hub
    task = asyncio.create_task(hub.run(), name="user-events-listener")
    yield
    hub.shutdown()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def end_streams_on_shutdown(app: web.Application) -> None:
    """on_shutdown: streams end before the server waits for handlers to finish."""
    if EVENTS in app:
        app[EVENTS].shutdown()


def _frame(event: str, data: str = "") -> bytes:
    return f"event: {event}\ndata: {data}\n\n".encode()


@session_required
async def user_events(request: web.Request, session: Session) -> web.StreamResponse:
    hub = request.app[EVENTS]
    settings = request.app[SETTINGS]
    stream = hub.open(session)
    if stream is None:
        raise ApiError(503, "too many open event streams; poll instead", {"Retry-After": "30"})
    loop = asyncio.get_running_loop()
    deadline = loop.time() + min(settings.events_max_age, max(session.expires_at - time.time(), 0))
    response = web.StreamResponse(
        status=200,
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",  # nginx: pass each event on at once
        },
    )
    try:
        await response.prepare(request)
        # The first "change" covers anything that happened before the stream opened.
        await _send(
            response,
            f"retry: {RECONNECT_MS}\n\n".encode() + _frame("change"),
            settings.events_heartbeat,
        )
        while (left := deadline - loop.time()) > 0:
            try:
                await asyncio.wait_for(stream.wake.wait(), min(settings.events_heartbeat, left))
            except TimeoutError:
                await _send(response, b": ping\n\n", settings.events_heartbeat)
                continue
            stream.wake.clear()
            if stream.ended is not None:
                await _send(response, _frame("end", stream.ended), settings.events_heartbeat)
                break
            await _send(response, _frame("change"), settings.events_heartbeat)
    except (ConnectionError, TimeoutError):
        pass  # the client went away or stopped reading
    finally:
        hub.close(stream)
    return response


async def _send(response: web.StreamResponse, data: bytes, within: float) -> None:
    """Write, but give up on a client that stopped reading (its buffers are full)."""
    async with asyncio.timeout(within):
        await response.write(data)
