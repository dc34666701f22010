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
- a stream ends when the session expires, after ``EVENTS_MAX_AGE`` seconds
  (the browser reconnects and is authenticated afresh), when the user's
  streams are ended (``"<id> end"`` on the channel, e.g. a logout), and at
  shutdown.
"""

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import asyncpg
import structlog
from aiohttp import web
from aiohttp_session import get_session
from prometheus_client import Gauge

from api.auth import login_required
from api.errors import ApiError
from api.metrics import METRICS
from api.state import SETTINGS
from db import events

log = structlog.get_logger(__name__)

# Why the server ended a stream (sent as ``event: end`` with this as data).
REPLACED = "replaced"  # the user opened more than EVENTS_PER_USER streams
ENDED = "ended"  # the user's streams were ended (logout)
SHUTDOWN = "shutdown"

# The browser waits this long before reconnecting a dropped stream.
RECONNECT_MS = 5000
_LISTEN_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


@dataclass(eq=False)
class Stream:
    user_id: int
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    ended: str | None = None

    def end(self, why: str) -> None:
        self.ended = why
        self.wake.set()


class EventHub:
    """The process's open streams by user, and the LISTEN connection feeding them."""

    def __init__(self, dsn: str, *, per_user: int, total: int, timeout: float = 5.0,
                 check_interval: float = 5.0) -> None:
        self._dsn = dsn
        self._per_user = max(per_user, 1)
        self._total = total
        self._timeout = timeout
        self._check_interval = check_interval
        self._streams: dict[int, list[Stream]] = {}
        self._count = 0
        self._closing = False
        self._lost = asyncio.Event()  # the listening connection closed, or shutdown
        self.listening = asyncio.Event()

    @property
    def open_streams(self) -> int:
        return self._count

    def open(self, user_id: int) -> Stream | None:
        """A new stream for the user, ending their oldest beyond the cap; None when full."""
        if self._closing or self._count >= self._total:
            return None
        mine = self._streams.setdefault(user_id, [])
        while len(mine) >= self._per_user:
            mine.pop(0).end(REPLACED)
            self._count -= 1
        stream = Stream(user_id)
        mine.append(stream)
        self._count += 1
        return stream

    def close(self, stream: Stream) -> None:
        mine = self._streams.get(stream.user_id)
        if mine is None or stream not in mine:
            return  # already replaced or ended
        mine.remove(stream)
        self._count -= 1
        if not mine:
            del self._streams[stream.user_id]

    def deliver(self, event: events.UserEvent) -> None:
        if event.end:
            for stream in self._streams.pop(event.user_id, []):
                stream.end(ENDED)
                self._count -= 1
            return
        for stream in self._streams.get(event.user_id, ()):
            stream.wake.set()

    def shutdown(self) -> None:
        """End every stream now and refuse new ones (the server is stopping)."""
        self._closing = True
        self._lost.set()
        for mine in self._streams.values():
            for stream in mine:
                stream.end(SHUTDOWN)
        self._streams.clear()
        self._count = 0

    # -- the LISTEN connection -------------------------------------------------

    async def run(self) -> None:
        """Listen until shutdown, reconnecting with backoff; never raises."""
        backoff = 0.1
        while not self._closing:
            try:
                conn = await asyncpg.connect(
                    self._dsn, timeout=self._timeout,
                    server_settings={"application_name": "gophermart-api-events"})
            except _LISTEN_ERRORS as exc:
                log.warning("cannot connect to listen for user changes", error=repr(exc))
            else:
                try:
                    await self._listen(conn)
                    backoff = 0.1
                except _LISTEN_ERRORS as exc:
                    log.warning("user change listener lost", error=repr(exc))
                finally:
                    self.listening.clear()
                    conn.terminate()
            if not self._closing:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._lost.wait(),
                                           backoff * random.uniform(0.5, 1.0))
                backoff = min(backoff * 2, 5.0)

    async def _listen(self, conn: asyncpg.Connection) -> None:
        self._lost.clear()
        if self._closing:
            return
        conn.add_termination_listener(lambda _conn: self._lost.set())
        await conn.add_listener(events.USER_CHANGE_CHANNEL, self._notified)
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

    def _notified(self, _conn: object, _pid: object, _channel: object,
                  payload: object) -> None:
        event = events.parse(str(payload))
        if event is not None:
            self.deliver(event)


EVENTS = web.AppKey("events", EventHub)


async def hub_context(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: run the hub while the app runs (after the database is migrated)."""
    settings = app[SETTINGS]
    assert settings.database_uri is not None
    hub = EventHub(settings.database_uri, per_user=settings.events_per_user,
                   total=settings.events_max_streams, timeout=settings.db_timeout)
    app[EVENTS] = hub
    Gauge("gophermart_event_streams", "Open GET /api/user/events streams in this process.",
          registry=app[METRICS].registry).set_function(lambda: hub.open_streams)
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


@login_required
async def user_events(request: web.Request, user_id: int) -> web.StreamResponse:
    hub = request.app[EVENTS]
    settings = request.app[SETTINGS]
    stream = hub.open(user_id)
    if stream is None:
        raise ApiError(503, "too many open event streams; poll instead",
                       {"Retry-After": "30"})
    session = await get_session(request)
    expires = (session.created or time.time()) + settings.session_ttl
    loop = asyncio.get_running_loop()
    deadline = loop.time() + min(settings.events_max_age, max(expires - time.time(), 0))
    response = web.StreamResponse(status=200, headers={
        "Content-Type": "text/event-stream; charset=utf-8",
        "Cache-Control": "no-store",
        "X-Accel-Buffering": "no",  # nginx: pass each event on at once
    })
    try:
        await response.prepare(request)
        # The first "change" covers anything that happened before the stream opened.
        await _send(response, f"retry: {RECONNECT_MS}\n\n".encode() + _frame("change"),
                    settings.events_heartbeat)
        while (left := deadline - loop.time()) > 0:
            try:
                await asyncio.wait_for(stream.wake.wait(),
                                       min(settings.events_heartbeat, left))
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
