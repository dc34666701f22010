"""The accrual system's client: one keep-alive session per process, answers mapped per SPEC.

``ask`` never raises for anything the accrual system or the network does: it
returns an answer the loop turns into a write. Network errors, timeouts and
5xx are retried here (exponential backoff with jitter, a bounded number of
times); a 429 pauses the whole fleet through the gate.
"""

import email.utils
import math
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation

import aiohttp
import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from db.queue import DB_ERRORS
from shared.jsonio import JSONInputError, loads_exact
from shared.money import MAX_AMOUNT, round_half_up
from worker.gate import Gate
from worker.stats import WorkerStats

# Accrual system status -> ours.
STATUS_MAP = {"REGISTERED": "NEW", "PROCESSING": "PROCESSING",
              "INVALID": "INVALID", "PROCESSED": "PROCESSED"}
DEFAULT_RETRY_AFTER = 60.0
MAX_RETRY_AFTER = 86400.0
_RATE = re.compile(r"no more than\s+(\d+)\s+requests?\s+per\s+minute", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Status:
    """A 200: the order's status in our terms, and the rounded accrual when PROCESSED."""

    status: str
    accrual: Decimal | None = None


@dataclass(frozen=True, slots=True)
class NotKnown:
    """A 204: the accrual system does not know the order yet."""


@dataclass(frozen=True, slots=True)
class RateLimited:
    retry_after: float
    rate_per_minute: int | None


@dataclass(frozen=True, slots=True)
class Deferred:
    """Not asked: the fleet is paused or the next paced slot is too far off."""

    delay: float


@dataclass(frozen=True, slots=True)
class Failed:
    """Transient trouble (retries exhausted, malformed answer, odd status)."""

    reason: str


Answer = Status | NotKnown | RateLimited | Deferred | Failed


class MalformedAnswer(ValueError):
    pass


class _Transient(Exception):
    """Worth retrying at once: network error, timeout, 5xx."""


def parse_order_answer(body: bytes) -> Status:
    """Parse a 200 body exactly (Decimal, never float); raise MalformedAnswer."""
    try:
        data = loads_exact(body)
    except JSONInputError as exc:
        raise MalformedAnswer(str(exc)) from exc
    if not isinstance(data, dict):
        raise MalformedAnswer("not a JSON object")
    status = STATUS_MAP.get(data.get("status"))  # type: ignore[arg-type]
    if status is None:
        raise MalformedAnswer(f"unknown status {data.get('status')!r}")
    if status != "PROCESSED":
        return Status(status)
    raw = data.get("accrual")
    if raw is None:
        return Status(status, Decimal(0))
    if isinstance(raw, bool) or not isinstance(raw, int | Decimal):
        raise MalformedAnswer(f"accrual is not a number: {raw!r}")
    try:
        amount = round_half_up(Decimal(raw))
    except InvalidOperation as exc:
        raise MalformedAnswer(f"accrual out of range: {raw!r}") from exc
    if not amount.is_finite() or amount < 0 or amount > MAX_AMOUNT:
        raise MalformedAnswer(f"accrual out of range: {raw!r}")
    return Status(status, amount)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float:
    """Seconds from ``Retry-After`` (delta-seconds or an HTTP date); 60 when unreadable."""
    if value is None or not value.strip():
        return DEFAULT_RETRY_AFTER
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return DEFAULT_RETRY_AFTER
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if not math.isfinite(seconds):
        return DEFAULT_RETRY_AFTER
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def parse_rate(body: str) -> int | None:
    """N from ``No more than N requests per minute allowed``; None when absent."""
    match = _RATE.search(body)
    if match is None:
        return None
    rate = int(match.group(1)[:9])
    return rate if rate > 0 else None


def create_session(*, concurrency: int, timeout: float) -> aiohttp.ClientSession:
    """One session per process: pooled keep-alive connections, a bound per call."""
    connector = aiohttp.TCPConnector(limit=concurrency, keepalive_timeout=30.0)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=timeout),
        headers={"Accept": "application/json"},
    )


class AccrualClient:
    def __init__(self, session: aiohttp.ClientSession, base_url: str, gate: Gate,
                 stats: WorkerStats, *, retries: int = 4, retry_wait_max: float = 2.0) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self._gate = gate
        self._stats = stats
        self._retries = max(retries, 1)
        self._retry_wait_max = retry_wait_max

    async def ask(self, number: str, *, deadline: float,
                  log: structlog.typing.FilteringBoundLogger) -> Answer:
        """Ask about one order; ``deadline`` (loop time) bounds waiting for a paced slot."""

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.warning("accrual call failed, retrying", error=str(exc),
                        call=state.attempt_number)

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._retries),
            wait=wait_exponential(multiplier=0.1, max=self._retry_wait_max) + wait_random(0, 0.1),
            retry=retry_if_exception_type(_Transient),
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    pause = self._gate.pause_left()
                    if pause > 0:
                        return Deferred(pause)
                    later = await self._gate.wait_slot(deadline)
                    if later > 0:
                        return Deferred(later)
                    # A pause may have begun while waiting for the slot.
                    pause = self._gate.pause_left()
                    if pause > 0:
                        return Deferred(pause)
                    return await self._get_once(number, log)
        except _Transient as exc:
            return Failed(str(exc))
        raise AssertionError("unreachable: tenacity either returns or reraises")

    async def _get_once(self, number: str,
                        log: structlog.typing.FilteringBoundLogger) -> Answer:
        stats = self._stats
        started = time.perf_counter()
        try:
            async with self._session.get(f"{self._base}/api/orders/{number}") as resp:
                body = await resp.read()
                code = resp.status
                retry_after = resp.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError) as exc:
            stats.accrual_call(None, time.perf_counter() - started)
            log.debug("accrual call", outcome="error", error=repr(exc))
            raise _Transient(f"network: {exc!r}") from exc
        stats.accrual_call(code, time.perf_counter() - started)
        if code == 200:
            try:
                answer = parse_order_answer(body)
            except MalformedAnswer as exc:
                stats.malformed_answer()
                log.warning("malformed accrual answer", error=str(exc), body=body[:200])
                return Failed(f"malformed answer: {exc}")
            log.debug("accrual call", outcome=200, status=answer.status, accrual=answer.accrual)
            return answer
        if code == 204:
            log.debug("accrual call", outcome=204)
            return NotKnown()
        if code == 429:
            seconds = parse_retry_after(retry_after)
            rate = parse_rate(body.decode("utf-8", "replace"))
            log.warning("accrual rate limited", retry_after=seconds, rate_per_minute=rate)
            try:
                await self._gate.record_429(seconds, rate)
            except DB_ERRORS as exc:
                # This process is paused already; the others learn at their next 429.
                log.error("cannot record the accrual pause", error=repr(exc))
            return RateLimited(seconds, rate)
        if code >= 500:
            log.debug("accrual call", outcome=code)
            raise _Transient(f"status {code}")
        log.warning("unexpected accrual answer", outcome=code, body=body[:200])
        return Failed(f"status {code}")
