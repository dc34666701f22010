"""Claim -> ask -> apply.

The claim loop leases due orders in batches (claiming again at once after a
full batch), one task per order asks the accrual system under a semaphore,
and a single applier writes every answer that has arrived in one statement.
No transaction is open while the accrual system is asked; the lease makes
abandoning an order at any point safe.
"""

import asyncio
import contextlib
from dataclasses import dataclass, field

import asyncpg
import structlog

from db import gate as db_gate
from db import queue
from db.executor import Executor
from worker.accrual_client import (
    AccrualClient,
    Answer,
    Deferred,
    Failed,
    NotKnown,
    RateLimited,
    Status,
)
from worker.gate import Gate
from worker.schedule import Backoff
from worker.stats import WorkerStats

log = structlog.get_logger(__name__)

_MAX_APPLY_BATCH = 1000
_APPLY_TRIES = 3
# Paced, a process holds at most this many seconds of call slots' worth of
# orders: an order claimed now is asked within about this long, so a fresh
# order never waits behind a long local backlog (the fair claim decides).
_PACED_BUFFER = 1.0


def unappliable(exc: BaseException) -> bool:
    """A database error caused by the data of one answer, not by the database's state.

    Class 22 (data exception: a balance that would overflow numeric(18,2)) and
    class 23 (integrity: a CHECK) fail again whenever that answer is applied;
    anything else (a lost connection, a timeout, a deadlock) may pass on retry.
    """
    state = getattr(exc, "sqlstate", None)
    return (
        isinstance(exc, asyncpg.PostgresError)
        and isinstance(state, str)
        and state[:2] in ("22", "23")
    )


@dataclass(frozen=True, slots=True)
class LoopConfig:
    concurrency: int = 32
    batch_size: int = 64
    lease: float = 30.0
    poll_interval: float = 1.0
    stop_timeout: float = 3.0
    backoff: Backoff = field(default_factory=Backoff)


class Worker:
    def __init__(
        self,
        db: Executor,
        client: AccrualClient,
        gate: Gate,
        stats: WorkerStats,
        config: LoopConfig,
    ) -> None:
        self._db = db
        self._client = client
        self._gate = gate
        self._stats = stats
        self._config = config
        self._sem = asyncio.Semaphore(config.concurrency)
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._in_flight = 0  # claimed and not yet written back
        self._pending: list[tuple[queue.ClaimedOrder, queue.Result]] = []
        self._apply_wake = asyncio.Event()
        self._closing = False
        self._loop = asyncio.get_running_loop()
        self._due_timer: asyncio.TimerHandle | None = None

    def wake(self) -> None:
        """New work may be due (a notification or a reconnect)."""
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        self._room.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def run(self) -> None:
        # Learn a pause or a limit before the first claim sizes its batch by them.
        with contextlib.suppress(*queue.DB_ERRORS):
            self._gate.note(await db_gate.read_gate(self._db))
        applier = asyncio.create_task(self._apply_loop(), name="accrual-applier")
        try:
            await self._claim_loop()
        finally:
            await self._drain(applier)

    # -- claim --------------------------------------------------------------

    def _capacity(self) -> int:
        config = self._config
        capacity = config.concurrency + config.batch_size
        interval = self._gate.interval()
        if interval is not None:
            # Paced: hold no more orders than a second of slots serves (and a
            # quarter lease at most, so none waits for a slot past its lease).
            horizon = min(config.lease / 4, _PACED_BUFFER)
            capacity = min(capacity, max(1, int(horizon / interval)))
        return capacity

    async def _claim_loop(self) -> None:
        config = self._config
        failures = 0
        while not self.stopping:
            pause = self._gate.pause_left()
            if pause > 0:
                # A wake (an operator's reset, a stop) ends the sleep early.
                self._wake.clear()
                await self._sleep(self._wake, pause)
                continue
            room = self._capacity() - self._in_flight
            if room <= 0:
                self._room.clear()
                await self._sleep(self._room, config.poll_interval)
                continue
            limit = min(config.batch_size, room)
            self._wake.clear()
            try:
                result = await queue.claim(self._db, limit=limit, lease=config.lease)
            except queue.DB_ERRORS as exc:
                failures += 1
                log.warning("claim failed", error=repr(exc), failures=failures)
                # Back off, but retry at once when the listener reconnects: the
                # database is back (stop() sets _wake too).
                await self._sleep(self._wake, min(0.1 * 2**failures, 5.0, config.poll_interval))
                continue
            failures = 0
            claimed_at = self._loop.time()
            self._gate.note(result.gate)
            self._stats.claimed(len(result.orders))
            for order in result.orders:
                self._in_flight += 1
                task = asyncio.create_task(self._handle(order, claimed_at))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            if len(result.orders) == limit:
                continue  # a full batch: more may be due right now
            wait = config.poll_interval
            if result.next_due_in is not None:
                wait = min(wait, max(result.next_due_in, 0.005))
            await self._sleep(self._wake, wait)

    async def _sleep(self, event: asyncio.Event, seconds: float) -> None:
        """Sleep until ``event`` is set or ``seconds`` pass (stop sets every event)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), seconds)

    # -- ask ----------------------------------------------------------------

    async def _handle(self, order: queue.ClaimedOrder, claimed_at: float) -> None:
        order_log = log.bind(order=order.number, attempt=order.attempts)
        answer: Answer
        try:
            async with self._sem:
                if self.stopping:
                    answer = Deferred(0.0)  # give it back at once for another replica
                else:
                    answer = await self._client.ask(
                        order.number, deadline=claimed_at + self._config.lease / 2, log=order_log
                    )
        except asyncio.CancelledError:
            self._enqueue(order, self._release(order))
            raise
        except Exception as exc:  # a bug or a database error while pacing: never lose the order
            order_log.exception("accrual call crashed", error=repr(exc))
            answer = Failed(repr(exc))
        self._enqueue(order, self._to_result(order, answer))

    def _release(self, order: queue.ClaimedOrder, delay: float = 0.0) -> queue.Result:
        """Put an order back without counting the attempt."""
        self._stats.rescheduled()
        return queue.Result(order.id, order.attempts, None, None, delay, refund_attempt=True)

    def _to_result(self, order: queue.ClaimedOrder, answer: Answer) -> queue.Result:
        backoff = self._config.backoff
        # Orders the accrual system does not know (yet) are asked ever more
        # rarely as they age; one it is processing keeps the short schedule.
        again = backoff.delay(order.attempts, order.age)
        match answer:
            case Status(status="PROCESSED" | "INVALID" as status, accrual=accrual):
                return queue.Result(order.id, order.attempts, status, accrual, 0.0)
            case Status(status="PROCESSING"):
                return queue.Result(
                    order.id, order.attempts, "PROCESSING", None, backoff.delay(order.attempts)
                )
            case Status(status=status):
                return queue.Result(order.id, order.attempts, status, None, again)
            case NotKnown():
                # Stays as it is (NEW): the accrual system may learn of it later.
                return queue.Result(order.id, order.attempts, None, None, again)
            case RateLimited():
                return self._release(order, max(self._gate.pause_left(), answer.retry_after))
            case Deferred(delay=delay):
                return self._release(order, delay)
            case Failed():
                self._stats.rescheduled()
                return queue.Result(order.id, order.attempts, None, None, again)
        raise AssertionError(f"unhandled answer {answer!r}")

    # -- apply --------------------------------------------------------------

    def _enqueue(self, order: queue.ClaimedOrder, result: queue.Result) -> None:
        self._pending.append((order, result))
        self._apply_wake.set()

    async def _apply_loop(self) -> None:
        while True:
            await self._apply_wake.wait()
            self._apply_wake.clear()
            while self._pending:
                batch = self._pending[:_MAX_APPLY_BATCH]
                del self._pending[:_MAX_APPLY_BATCH]
                await self._apply(batch)
            if self._closing:
                return

    async def _apply(self, batch: list[tuple[queue.ClaimedOrder, queue.Result]]) -> None:
        try:
            applied: list[queue.Applied] = []
            for attempt in range(1, _APPLY_TRIES + 1):
                try:
                    applied = await self._apply_isolated(batch)
                    break
                except queue.DB_ERRORS as exc:
                    # The orders stay leased and come back when the lease ends.
                    log.warning(
                        "applying answers failed", error=repr(exc), orders=len(batch), try_=attempt
                    )
                    if attempt == _APPLY_TRIES or self._closing:
                        return
                    await asyncio.sleep(0.05 * attempt)
            self._log_applied(batch, applied)
            self._wake_when_due(batch, applied)
        finally:
            self._in_flight -= len(batch)
            self._room.set()

    async def _apply_isolated(
        self, batch: list[tuple[queue.ClaimedOrder, queue.Result]]
    ) -> list[queue.Applied]:
        """Apply a batch; when one answer cannot be applied, split until it stands alone.

        The answer that fails on its own is set aside (its order put back for
        later with the reason in ``orders.problem``) and every other answer
        of the batch is applied: one bad answer never holds back the rest.
        """
        try:
            return await queue.apply_results(self._db, [r for _, r in batch])
        except queue.DB_ERRORS as exc:
            if not unappliable(exc):
                raise
            if len(batch) > 1:
                half = len(batch) // 2
                return [
                    *await self._apply_isolated(batch[:half]),
                    *await self._apply_isolated(batch[half:]),
                ]
            ((order, result),) = batch
            return await self._set_aside(order, result, exc)

    async def _set_aside(
        self, order: queue.ClaimedOrder, result: queue.Result, exc: BaseException
    ) -> list[queue.Applied]:
        self._stats.set_aside()
        reason = f"{getattr(exc, 'sqlstate', '')} {exc}"[:500]
        backoff = self._config.backoff
        delay = max(backoff.cap, backoff.delay(order.attempts, order.age))
        log.error(
            "answer cannot be applied; order set aside",
            order=order.number,
            attempt=order.attempts,
            status=result.status,
            accrual=result.accrual,
            error=reason,
            retry_in=round(delay, 1),
        )
        aside = queue.Result(order.id, order.attempts, None, None, delay, problem=reason)
        await queue.apply_results(self._db, [aside])
        return []  # nothing of this order changed but its schedule

    def _wake_when_due(
        self, batch: list[tuple[queue.ClaimedOrder, queue.Result]], applied: list[queue.Applied]
    ) -> None:
        """Wake the claim loop when the soonest order just put back falls due.

        The claim's own "next due" cannot see orders that were still leased
        then, and a 0.5 s re-check must not wait for the next poll.
        """
        changed = {row.id for row in applied if row.status not in queue.FINAL_STATUSES}
        delays = [r.delay for _, r in batch if r.id in changed]
        if not delays:
            return
        when = self._loop.time() + min(delays) + 0.005
        timer = self._due_timer
        if timer is not None and not timer.cancelled() and self._loop.time() < timer.when() <= when:
            return
        if timer is not None:
            timer.cancel()
        self._due_timer = self._loop.call_at(when, self._wake.set)

    def _log_applied(
        self, batch: list[tuple[queue.ClaimedOrder, queue.Result]], applied: list[queue.Applied]
    ) -> None:
        orders = {order.id: (order, result) for order, result in batch}
        for row in applied:
            order, result = orders[row.id]
            self._stats.applied(row.status)
            if row.status != order.status:
                log.info(
                    "order status changed",
                    order=row.number,
                    attempt=order.attempts,
                    old=order.status,
                    new=row.status,
                    accrual=row.accrual,
                )
            else:
                log.debug(
                    "order rescheduled",
                    order=row.number,
                    attempt=order.attempts,
                    status=row.status,
                    delay=round(result.delay, 3),
                )

    # -- stop ---------------------------------------------------------------

    async def _drain(self, applier: asyncio.Task[None]) -> None:
        """Let in-flight calls finish for a moment, give back the rest, write it all."""
        if self._tasks:
            _, unfinished = await asyncio.wait(set(self._tasks), timeout=self._config.stop_timeout)
            for task in unfinished:
                task.cancel()
            if unfinished:
                await asyncio.wait(unfinished)
                log.info("abandoned in-flight accrual calls", orders=len(unfinished))
        self._closing = True
        self._apply_wake.set()
        if self._due_timer is not None:
            self._due_timer.cancel()
        try:
            await asyncio.wait_for(applier, self._config.stop_timeout)
        except TimeoutError:
            log.warning(
                "could not write back every answer before stopping; their leases will expire"
            )
