"""The accrual system's client: one keep-alive session per process, answers as docs/accrual.md says.

``ask`` never raises for anything the accrual system or the network does: it
returns an answer the loop turns into a write. Network errors, timeouts and
5xx are retried here (exponential backoff with jitter, a bounded number of
times); a 429 pauses the whole fleet through the gate.

Every byte of an answer is untrusted: redirects are never followed (every
request goes to the configured address, through the fleet's pacing); the
body is read up to a cap, and decompressed by us (gzip or deflate only, one
layer) up to the same cap; a 200 must be the documented object about the
order asked, with an accrual the schema can hold. Anything else is a
malformed answer: counted, logged with the order (the same complaint about
one order at its 1st, 2nd, 4th, … occurrence only), never credited, and the
order is asked again later with backoff.
"""

import email.utils
import math
import re
import time
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from urllib.parse import quote

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

from shared.jsonio import JSONInputError, loads_exact
from shared.money import MAX_AMOUNT, round_half_up
from shared.pg import WORTH_RETRYING
from shared.statuses import AccrualStatus, OrderStatus
from worker.gate import Gate
from worker.repeats import Repeats
from worker.stats import WorkerStats

DEFAULT_RETRY_AFTER = 60.0
MAX_RETRY_AFTER = 86400.0
_RATE = re.compile(r"no more than\s+(\d+)\s+requests?\s+per\s+minute", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Status:
    """A 200: the order's status in our terms, and the rounded accrual when PROCESSED."""

    status: OrderStatus
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
    """An answer we refuse; ``reason`` is its metrics label (worker.stats.MALFORMED_REASONS)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


# The largest answer read, on the wire and again after decompression. A real
# answer is under 100 bytes.
DEFAULT_MAX_ANSWER_BYTES = 65536


class _Transient(Exception):
    """Worth retrying at once: network error, timeout, 5xx."""


def parse_order_answer(body: bytes, number: str) -> Status:
    """Parse a 200 body about ``number`` exactly (Decimal, never float); raise MalformedAnswer.

    The documented shape: an object whose ``order`` is the number asked,
    ``status`` one of four, and for PROCESSED an optional non-negative
    ``accrual`` the schema can hold (absent or null is 0). Other keys are
    ignored, as is an ``accrual`` on a status that earns nothing.
    """
    try:
        data = loads_exact(body)
    except JSONInputError as exc:
        raise MalformedAnswer("json", str(exc)) from exc
    if not isinstance(data, dict):
        raise MalformedAnswer("shape", "not a JSON object")
    order = data.get("order")
    if order != number:
        raise MalformedAnswer("order", f"answer is about order {str(order)[:80]!r}")
    raw_status = data.get("status")
    try:
        if not isinstance(raw_status, str):
            raise ValueError(raw_status)
        status = AccrualStatus(raw_status).ours
    except ValueError:
        raise MalformedAnswer("shape", f"unknown status {str(raw_status)[:80]!r}") from None
    if status != OrderStatus.PROCESSED:
        return Status(status)
    raw = data.get("accrual")
    if raw is None:
        return Status(status, Decimal(0))
    if isinstance(raw, bool) or not isinstance(raw, int | Decimal):
        raise MalformedAnswer("shape", f"accrual is not a number: {str(raw)[:80]!r}")
    try:
        value = Decimal(raw)
        if not value.is_finite() or value < 0 or value > MAX_AMOUNT:
            raise InvalidOperation
        amount = round_half_up(value)
    except InvalidOperation as exc:
        raise MalformedAnswer("accrual", f"accrual out of range: {str(raw)[:80]}") from exc
    if amount > MAX_AMOUNT:
        raise MalformedAnswer("accrual", f"accrual out of range: {str(raw)[:80]}")
    return Status(status, amount)


def decode_body(raw: bytes, encoding: str, cap: int) -> bytes:
    """Undo one layer of gzip or deflate, never inflating past ``cap`` bytes."""
    name = encoding.strip().lower()
    if name in ("", "identity"):
        return raw
    if name in ("gzip", "x-gzip"):
        candidates: tuple[int, ...] = (16 + zlib.MAX_WBITS,)
    elif name == "deflate":  # zlib-wrapped as the RFC says, or raw as some servers send
        candidates = (zlib.MAX_WBITS, -zlib.MAX_WBITS)
    else:
        raise MalformedAnswer("encoding", f"content encoding {name[:40]!r}")
    for wbits in candidates:
        inflater = zlib.decompressobj(wbits)
        try:
            out = inflater.decompress(raw, cap + 1)
        except zlib.error:
            continue
        if len(out) > cap or inflater.unconsumed_tail:
            raise MalformedAnswer("too_large", f"more than {cap} bytes once decompressed")
        if not inflater.eof:
            raise MalformedAnswer("encoding", f"truncated {name} stream")
        if inflater.unused_data:  # a second member or trailing bytes: not one answer
            raise MalformedAnswer("encoding", f"bytes after the {name} stream")
        return out
    raise MalformedAnswer("encoding", f"broken {name} stream")


async def read_capped(resp: aiohttp.ClientResponse, cap: int) -> bytes:
    """The body as sent, refusing more than ``cap`` bytes before reading them all."""
    declared = resp.content_length
    if declared is not None and declared > cap:
        raise MalformedAnswer("too_large", f"Content-Length {declared} over {cap}")
    body = bytearray()
    async for chunk in resp.content.iter_chunked(8192):
        body += chunk
        if len(body) > cap:
            raise MalformedAnswer("too_large", f"more than {cap} bytes")
    return bytes(body)


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
        except (TypeError, ValueError, OverflowError):  # OverflowError: year 99999999999
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
    # Leading zeros are no reason to forget a limit; past nine digits any
    # limit is more than a fleet can send, so the cap costs nothing.
    digits = match.group(1).lstrip("0")
    rate = int(digits or "0") if len(digits) <= 9 else 999_999_999
    return rate if rate > 0 else None


def create_session(*, concurrency: int, timeout: float) -> aiohttp.ClientSession:
    """One session per process: pooled keep-alive connections, a bound per call.

    Decompression is ours (``decode_body``, bounded), not aiohttp's.
    """
    connector = aiohttp.TCPConnector(limit=concurrency, keepalive_timeout=30.0)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=timeout),
        headers={"Accept": "application/json", "Accept-Encoding": "gzip, deflate"},
        auto_decompress=False,
    )


class AccrualClient:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        gate: Gate,
        stats: WorkerStats,
        *,
        retries: int = 4,
        retry_wait_max: float = 2.0,
        max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES,
    ) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self._gate = gate
        self._stats = stats
        self._retries = max(retries, 1)
        self._retry_wait_max = retry_wait_max
        self._cap = max(max_answer_bytes, 1024)
        self._malformed_repeats = Repeats()
        self._retry_repeats = Repeats()

    async def ask(
        self, number: str, *, deadline: float, log: structlog.typing.FilteringBoundLogger
    ) -> Answer:
        """Ask about one order; ``deadline`` (loop time) bounds waiting for a paced slot."""

        def before_sleep(state: RetryCallState) -> None:
            # An accrual system failing about one order at every ask is logged
            # at its 1st, 2nd, 4th, … retry only (a hostile one answers 5xx for ever).
            occurrences = self._retry_repeats.note(number)
            if occurrences is not None:
                exc = state.outcome.exception() if state.outcome else None
                log.warning(
                    "accrual call failed, retrying",
                    error=str(exc),
                    call=state.attempt_number,
                    occurrences=occurrences,
                )

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

    async def _get_once(self, number: str, log: structlog.typing.FilteringBoundLogger) -> Answer:
        stats = self._stats
        started = time.perf_counter()
        body = b""
        refused: MalformedAnswer | None = None
        try:
            async with self._session.get(
                f"{self._base}/api/orders/{quote(number, safe='')}", allow_redirects=False
            ) as resp:
                code = resp.status
                retry_after = resp.headers.get("Retry-After")
                if code in (200, 429):  # the only answers whose body we read
                    try:
                        raw = await read_capped(resp, self._cap)
                        body = decode_body(raw, resp.headers.get("Content-Encoding", ""), self._cap)
                    except MalformedAnswer as exc:
                        refused = exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            stats.accrual_call(None, time.perf_counter() - started)
            log.debug("accrual call", outcome="error", error=repr(exc))
            raise _Transient(f"network: {exc!r}") from exc
        stats.accrual_call(code, time.perf_counter() - started)
        if code == 200:
            try:
                if refused is not None:
                    raise refused
                answer = parse_order_answer(body, number)
            except MalformedAnswer as exc:
                return self._malformed(exc, number, body, log)
            log.debug("accrual call", outcome=200, status=answer.status, accrual=answer.accrual)
            return answer
        if code == 204:
            log.debug("accrual call", outcome=204)
            return NotKnown()
        if code == 429:
            seconds = parse_retry_after(retry_after)
            rate = parse_rate(body.decode("utf-8", "replace"))
            log.warning(
                "accrual rate limited",
                retry_after=seconds,
                header=ascii((retry_after or "")[:64]),
                rate_per_minute=rate,
            )
            try:
                await self._gate.record_429(seconds, rate)
            except WORTH_RETRYING as exc:
                # This process is paused already; the others learn at their next 429.
                log.error("cannot record the accrual pause", error=repr(exc))
            return RateLimited(self._gate.policy.clamp(seconds), rate)
        if code >= 500:
            log.debug("accrual call", outcome=code)
            raise _Transient(f"status {code}")
        # A redirect (never followed) or a status the contract (docs/accrual.md) does not have.
        return self._malformed(MalformedAnswer("status", f"status {code}"), number, b"", log)

    def _malformed(
        self,
        exc: MalformedAnswer,
        number: str,
        body: bytes,
        log: structlog.typing.FilteringBoundLogger,
    ) -> Failed:
        self._stats.malformed_answer(exc.reason)
        # Every answer is counted; the same complaint about the same order is
        # logged at its 1st, 2nd, 4th, 8th, … occurrence only.
        occurrences = self._malformed_repeats.note((number, exc.reason))
        if occurrences is not None:
            # ascii(): the answer's own text, escaped, so it cannot forge log lines or
            # send control sequences to a terminal.
            log.warning(
                "malformed accrual answer",
                reason=exc.reason,
                error=ascii(str(exc)),
                body=ascii(body[:120]) if body else None,
                occurrences=occurrences,
            )
        return Failed(f"malformed answer ({exc.reason}): {exc}")
