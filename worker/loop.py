"""Claim -> ask -> write back.

The claim loop leases due orders in batches (claiming again at once after a
full batch), one task per order asks the accrual system under a semaphore,
and the write-back (``worker.writeback``) writes the answers in batches.
No transaction is open while the accrual system is asked; the lease makes
abandoning an order at any point safe.
"""

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog

from db import gate as db_gate
from db import queue
from db.executor import Executor
from shared.pg import WORTH_RETRYING
from shared.statuses import FINAL_STATUSES, OrderStatus
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
from worker.schedule import Alarm, Backoff
from worker.stats import WorkerStats
from worker.tunings import Tunings
from worker.writeback import Answered, WriteBack

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class LoopConfig:
    concurrency: int = 32
    batch_size: int = 64
    lease: float = 30.0
    poll_interval: float = 1.0
    stop_timeout: float = 3.0
    backoff: Backoff = field(default_factory=Backoff)
    tunings: Tunings = field(default_factory=Tunings)


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
        self._loop = asyncio.get_running_loop()
        self._due = Alarm(self._wake.set)
        self._answers = WriteBack(
            db,
            stats,
            on_written=self._written,
            backoff=config.backoff,
            tunings=config.tunings,
            stop_timeout=config.stop_timeout,
        )

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
        with contextlib.suppress(*WORTH_RETRYING):
            self._gate.note(await db_gate.read_gate(self._db))
        try:
            async with self._answers:
                try:
                    await self._claim_loop()
                finally:
                    await self._finish_calls()
        finally:
            self._due.cancel()

    # -- claim --------------------------------------------------------------

    def _capacity(self) -> int:
        config = self._config
        capacity = config.concurrency + config.batch_size
        interval = self._gate.interval()
        if interval is not None:
            # Paced: hold no more orders than a second of slots serves (and a
            # quarter lease at most, so none waits for a slot past its lease).
            tunings = config.tunings
            horizon = min(config.lease * tunings.paced_lease_share, tunings.paced_buffer)
            capacity = min(capacity, max(1, int(horizon / interval)))
        return capacity

    async def _claim_loop(self) -> None:
        config = self._config
        tunings = config.tunings
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
            except WORTH_RETRYING as exc:
                failures += 1
                log.warning("claim failed", error=repr(exc), failures=failures)
                # Back off, but retry at once when the listener reconnects: the
                # database is back (stop() sets _wake too).
                retry = tunings.claim_retry_first * 2 ** min(failures, 32)
                await self._sleep(
                    self._wake, min(retry, tunings.claim_retry_max, config.poll_interval)
                )
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
                wait = min(wait, max(result.next_due_in, tunings.due_min_wait))
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
                    config = self._config
                    deadline = claimed_at + config.lease * config.tunings.ask_lease_share
                    answer = await self._client.ask(order.number, deadline=deadline, log=order_log)
        except asyncio.CancelledError:
            self._answers.add(order, self._release(order))
            raise
        except Exception as exc:  # a bug or a database error while pacing: never lose the order
            order_log.exception("accrual call crashed", error=repr(exc))
            answer = Failed(repr(exc))
        self._answers.add(order, self._to_result(order, answer))

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
            case Status(status=status, accrual=accrual) if status.final:
                return queue.Result(order.id, order.attempts, status, accrual, 0.0)
            case Status(status=OrderStatus.PROCESSING as status):
                return queue.Result(
                    order.id, order.attempts, status, None, backoff.delay(order.attempts)
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

    # -- written back ---------------------------------------------------------

    def _written(self, batch: Sequence[Answered], applied: list[queue.Applied]) -> None:
        self._in_flight -= len(batch)
        self._room.set()
        self._wake_when_due(batch, applied)

    def _wake_when_due(self, batch: Sequence[Answered], applied: list[queue.Applied]) -> None:
        """Wake the claim loop when the soonest order just put back falls due.

        The claim's own "next due" cannot see orders that were still leased
        then, and a re-check due in half a second must not wait for the next poll.
        """
        changed = {row.id for row in applied if row.status not in FINAL_STATUSES}
        delays = [r.delay for _, r in batch if r.id in changed]
        if delays:
            self._due.set_at(self._loop.time() + min(delays) + self._config.tunings.due_slack)

    # -- stop ---------------------------------------------------------------

    async def _finish_calls(self) -> None:
        """Let in-flight calls finish for a moment, then give back the rest."""
        if self._tasks:
            _, unfinished = await asyncio.wait(set(self._tasks), timeout=self._config.stop_timeout)
            for task in unfinished:
                task.cancel()
            if unfinished:
                await asyncio.wait(unfinished)
                log.info("abandoned in-flight accrual calls", orders=len(unfinished))
