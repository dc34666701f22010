"""LISTEN for new orders and fleet pauses on a dedicated connection that reconnects.

A dead listening connection must not leave the worker asleep: asyncpg's
termination listener reports a closed connection at once, a periodic probe
catches one that died silently, and every (re)connect reads the gate and
wakes the worker, in case a pause began or orders arrived while nobody was
listening. The claim loop's polling fallback covers the gaps in between.
"""

import asyncio
import contextlib
import random
from collections.abc import Callable

import asyncpg
import structlog

from db import gate as db_gate
from db import queue
from shared.pg import SERVER_SETTINGS, WORTH_RETRYING

log = structlog.get_logger(__name__)


class Listener:
    def __init__(
        self,
        dsn: str,
        *,
        on_new_order: Callable[[], None],
        on_pause: Callable[[db_gate.GateState], None],
        on_reset: Callable[[], None] | None = None,
        check_interval: float = 5.0,
        timeout: float = 5.0,
        max_backoff: float = 5.0,
    ) -> None:
        self._dsn = dsn
        self._on_new_order = on_new_order
        self._on_pause = on_pause
        self._on_reset = on_reset
        self._check_interval = check_interval
        self._timeout = timeout
        self._max_backoff = max_backoff
        self._stopping = False
        self._kick = asyncio.Event()  # connection lost or stop requested
        self.connected = asyncio.Event()  # for tests and readiness
        self.connects = 0

    def stop(self) -> None:
        self._stopping = True
        self._kick.set()

    async def run(self) -> None:
        backoff = 0.1
        while not self._stopping:
            try:
                conn = await asyncpg.connect(
                    self._dsn,
                    timeout=self._timeout,
                    # The pool's settings (the schema's search path): the gate is read here too.
                    server_settings={
                        **SERVER_SETTINGS,
                        "application_name": "gophermart-worker-listen",
                    },
                )
            except WORTH_RETRYING as exc:
                log.warning("cannot connect to listen", error=repr(exc), retry_in=backoff)
                await self._pause(backoff * random.uniform(0.5, 1.0))
                backoff = min(backoff * 2, self._max_backoff)
                continue
            try:
                await self._listen(conn)
                backoff = 0.1
            except WORTH_RETRYING as exc:
                log.warning("listen connection lost", error=repr(exc))
            finally:
                self.connected.clear()
                await self._close(conn)
            if not self._stopping:
                await self._pause(backoff * random.uniform(0.5, 1.0))

    async def _listen(self, conn: asyncpg.Connection) -> None:
        self._kick.clear()
        if self._stopping:
            return
        conn.add_termination_listener(lambda _conn: self._kick.set())
        await conn.add_listener(db_gate.PAUSE_CHANNEL, self._pause_notified)
        await conn.add_listener(queue.NEW_ORDER_CHANNEL, self._order_notified)
        # A pause recorded while nobody listened here was announced to nobody here:
        # read the gate now that every later one will be heard. Otherwise calls
        # already claimed would go on until the next claim reported it.
        self._on_pause(await asyncio.wait_for(db_gate.read_gate(conn), self._timeout))
        await asyncio.wait_for(queue.listen_ping(conn), self._timeout)  # last statement: LISTEN
        self.connects += 1
        self.connected.set()
        log.info("listening for new orders", connects=self.connects)
        self._on_new_order()  # orders may have arrived while nobody listened
        while not self._stopping:
            try:
                await asyncio.wait_for(self._kick.wait(), self._check_interval)
            except TimeoutError:
                # Nothing heard for a while: make sure the connection still lives.
                await asyncio.wait_for(queue.listen_ping(conn), self._timeout)
                continue
            break  # kicked: the connection closed or we are stopping
        if not self._stopping:
            log.warning("listen connection closed")

    def _order_notified(self, *_: object) -> None:
        self._on_new_order()

    def _pause_notified(
        self, _conn: object, _pid: object, _channel: object, payload: object
    ) -> None:
        text = str(payload)
        if text == db_gate.RESET_PAYLOAD:
            if self._on_reset is not None:
                self._on_reset()
            return
        state = db_gate.parse_pause_payload(text)
        if state is not None:
            self._on_pause(state)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._kick.wait(), seconds)
        self._kick.clear()

    async def _close(self, conn: asyncpg.Connection) -> None:
        if conn.is_closed():
            return
        try:
            await asyncio.wait_for(conn.close(), 1.0)
        except WORTH_RETRYING:
            conn.terminate()
