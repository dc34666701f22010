"""The write-back: answers gathered and written in batches, on size, on time and on exit.

One writer task writes every answer that has arrived in one statement (status,
ledger entry and balance together); answers that arrive while it writes
gather for the next one. A batch is written as soon as ``write_batch_max``
answers wait, when the first of them has waited ``write_wait`` seconds, and,
whatever is left, when the ``async with`` block ends (for at most
``stop_timeout`` seconds: an answer not written then is lost harmlessly, its
order comes back when its lease ends).

One answer the database refuses (a balance that would overflow, a CHECK)
must not hold back the others: a batch that fails for such a reason is split
in halves until the bad answer stands alone; that one is set aside (its order
put back for later with the reason in ``orders.problem``) and the rest is
written.
"""

import asyncio
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Self

import asyncpg
import structlog

from db import queue
from db.executor import Executor
from shared.pg import WORTH_RETRYING
from worker.schedule import Backoff
from worker.stats import WorkerStats
from worker.tunings import Tunings

log = structlog.get_logger(__name__)

# A claimed order and what to write back for it.
Answered = tuple[queue.ClaimedOrder, queue.Result]
# Told of every batch once it is done with: the rows it changed (none when
# the batch could not be written and its orders wait for their leases to end).
OnWritten = Callable[[Sequence[Answered], list[queue.Applied]], None]


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


class WriteBack:
    """``async with WriteBack(...) as answers: answers.add(order, result)``."""

    def __init__(
        self,
        db: Executor,
        stats: WorkerStats,
        *,
        on_written: OnWritten,
        backoff: Backoff | None = None,
        tunings: Tunings | None = None,
        stop_timeout: float = 3.0,
    ) -> None:
        self._db = db
        self._stats = stats
        self._on_written = on_written
        self._backoff = backoff or Backoff()
        self._tunings = tunings or Tunings()
        self._stop_timeout = stop_timeout
        self._pending: list[Answered] = []
        self._ready = asyncio.Event()  # write now: size, time or exit
        self._timer: asyncio.TimerHandle | None = None
        self._closing = False
        self._writer: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> int:
        """Answers not yet taken into a statement."""
        return len(self._pending)

    def add(self, order: queue.ClaimedOrder, result: queue.Result) -> None:
        self._pending.append((order, result))
        tunings = self._tunings
        if self._closing or tunings.write_wait <= 0 or self.waiting >= tunings.write_batch_max:
            self._ready.set()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(tunings.write_wait, self._due)

    def _due(self) -> None:
        self._timer = None
        self._ready.set()

    async def __aenter__(self) -> Self:
        self._writer = asyncio.create_task(self._write_loop(), name="accrual-write-back")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Write what is left, for at most ``stop_timeout`` seconds."""
        self._closing = True
        self._ready.set()
        assert self._writer is not None
        try:
            await asyncio.wait_for(self._writer, self._stop_timeout)
        except TimeoutError:
            log.warning(
                "could not write back every answer before stopping; their leases will expire"
            )
        finally:
            if self._timer is not None:
                self._timer.cancel()

    async def _write_loop(self) -> None:
        limit = self._tunings.write_batch_max
        while True:
            await self._ready.wait()
            self._ready.clear()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            while self._pending:
                batch = self._pending[:limit]
                del self._pending[:limit]
                await self._write(batch)
            if self._closing:
                return

    async def _write(self, batch: list[Answered]) -> None:
        applied: list[queue.Applied] = []
        try:
            tries = self._tunings.write_tries
            for attempt in range(1, tries + 1):
                try:
                    applied = await self._write_isolated(batch)
                    break
                except WORTH_RETRYING as exc:
                    # The orders stay leased and come back when the lease ends.
                    log.warning(
                        "applying answers failed", error=repr(exc), orders=len(batch), try_=attempt
                    )
                    if attempt == tries or self._closing:
                        return
                    await asyncio.sleep(self._tunings.write_retry_step * attempt)
            self._log_written(batch, applied)
        finally:
            self._on_written(batch, applied)

    async def _write_isolated(self, batch: list[Answered]) -> list[queue.Applied]:
        """Write a batch; when one answer cannot be applied, split until it stands alone."""
        try:
            return await queue.apply_results(self._db, [r for _, r in batch])
        except WORTH_RETRYING as exc:
            if not unappliable(exc):
                raise
            if len(batch) > 1:
                half = len(batch) // 2
                return [
                    *await self._write_isolated(batch[:half]),
                    *await self._write_isolated(batch[half:]),
                ]
            ((order, result),) = batch
            return await self._set_aside(order, result, exc)

    async def _set_aside(
        self, order: queue.ClaimedOrder, result: queue.Result, exc: BaseException
    ) -> list[queue.Applied]:
        self._stats.set_aside()
        reason = f"{getattr(exc, 'sqlstate', '')} {exc}"[: self._tunings.problem_max_chars]
        backoff = self._backoff
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

    def _log_written(self, batch: list[Answered], applied: list[queue.Applied]) -> None:
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
