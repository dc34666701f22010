"""Argon2id password hashing off the event loop, with bounded concurrency.

Parameters are one of the equivalent Argon2id settings of OWASP's password
storage guidance (m = 12 MiB, t = 3, p = 1): the same defence as 19 MiB with
t = 2 for the same CPU, and 7 MiB less memory per concurrent hash.

argon2-cffi releases the GIL while hashing, so a small thread pool runs hashes
in parallel without stalling the loop; the pool's size is the bound on
concurrent hashes (and on the memory they take).
Hashing threads run at a lower CPU priority than the event loop, so a storm
of logins slows logins, not every other request.

The work waiting for a thread is bounded and ordered (``HashQueue``): clean
logins go before registrations, and logins from addresses that keep failing
after both; each kind may queue only so much, and one client address only a
share of it; beyond that the request is refused at once (503, or 429 for the
address) instead of waiting behind an unbounded queue. A clean login finding
the queue full takes the place of a suspect one (or of an address holding
many places), so a spray of made-up logins cannot lock everyone out.
"""

import asyncio
import contextlib
import enum
import os
import secrets
import threading
from collections import Counter, deque
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError

TIME_COST = 3
MEMORY_COST_KIB = 12 * 1024
PARALLELISM = 1


# Nice value for hashing threads: the scheduler then gives the event loop
# (nice 0) about nine times their share of a contended core.
HASH_NICENESS = 10


def _lower_priority() -> None:
    """Lower this thread's CPU priority (Linux schedules threads individually)."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASH_NICENESS)


class Work(enum.IntEnum):
    """Kinds of hashing work, in the order they are served."""

    # A login vouched for by a device cookie of that login (api.devices): served
    # first, and it takes the place of any other login when the queue is full.
    TRUSTED_LOGIN = 3
    LOGIN = 0
    REGISTRATION = 1
    # A login whose address or login-and-address pair failed recently (api.throttle):
    # served after everything else, and the first refused when logins fill the queue.
    FLAGGED_LOGIN = 2


_LOGINS = (Work.TRUSTED_LOGIN, Work.LOGIN, Work.FLAGGED_LOGIN)


class HashingBusy(Exception):
    """The queue for this kind of work (or for this address) is full."""

    def __init__(self, per_address: bool) -> None:
        super().__init__("per address" if per_address else "queue full")
        self.per_address = per_address


@dataclass(slots=True)
class _Waiter:
    address: str
    rank: int
    ready: asyncio.Future[None]
    granted: bool = False


class HashQueue:
    """``slots`` turns at the hashing threads, handed out clean logins first.

    ``limit`` logins may wait, clean and suspect together; registrations a
    quarter of that; one address ``per_address`` waiting or running, whatever
    its kind (0: no such share). When logins fill the queue, a clean login
    still gets a place: it takes the newest suspect login's, else the newest
    of the address holding at least two places more than its own (that one
    is refused, 503); a trusted login takes the newest suspect's, else the
    newest clean login's. Within a kind, a turn goes first to the address holding
    the fewest. So addresses that keep failing cannot keep a clean login out,
    nor can a few addresses crowd out, or queue ahead of, one with a single
    attempt.
    """

    def __init__(self, slots: int, limit: int, per_address: int = 4) -> None:
        self._free = slots
        self._limit = limit
        self._registrations = max(1, limit // 4)
        self._per_address = per_address
        self._waiting: dict[Work, deque[_Waiter]] = {w: deque() for w in Work}
        self._by_address: Counter[str] = Counter()

    def waiting(self, work: Work) -> int:
        return len(self._waiting[work])

    def check(self, work: Work, address: str) -> None:
        """HashingBusy when a turn for ``work`` from ``address`` would be refused now.

        Lets a caller refuse before doing anything else (reads included); the
        turn itself checks again.
        """
        if self._per_address and self._by_address[address] >= self._per_address:
            raise HashingBusy(per_address=True)
        if (self._free > 0 and not any(self._waiting.values())) or self._has_room(work, address):
            return
        raise HashingBusy(per_address=False)

    @contextlib.asynccontextmanager
    async def turn(self, work: Work, address: str, rank: int = 0) -> AsyncIterator[None]:
        """A turn at a hashing thread; ``rank`` (lower first) orders waiters of one kind."""
        if self._per_address and self._by_address[address] >= self._per_address:
            raise HashingBusy(per_address=True)
        self._by_address[address] += 1
        try:
            if self._free > 0 and not any(self._waiting.values()):
                self._free -= 1
            else:
                await self._wait(work, address, rank)
            try:
                yield
            finally:
                self._pass_on()
        finally:
            self._release_address(address)

    async def _wait(self, work: Work, address: str, rank: int) -> None:
        if not self._make_room(work, address):
            raise HashingBusy(per_address=False)
        waiter = _Waiter(address, rank, asyncio.get_running_loop().create_future())
        queue = self._waiting[work]
        queue.append(waiter)
        try:
            await waiter.ready
        except BaseException:
            if waiter.granted:
                self._pass_on()  # granted just as we were cancelled
            elif waiter in queue:
                queue.remove(waiter)
            raise

    def _has_room(self, work: Work, address: str) -> bool:
        return self._room(work, address, evict=False)

    def _make_room(self, work: Work, address: str) -> bool:
        return self._room(work, address, evict=True)

    def _room(self, work: Work, address: str, *, evict: bool) -> bool:
        """Whether ``work`` may wait; when ``evict``, the place it takes is freed."""
        if work is Work.REGISTRATION:
            return len(self._waiting[work]) < self._registrations
        if sum(len(self._waiting[w]) for w in _LOGINS) < self._limit:
            return True
        if work is Work.FLAGGED_LOGIN:
            return False
        suspects = self._waiting[Work.FLAGGED_LOGIN]
        if suspects:
            if evict:
                self._evict(suspects, suspects[-1])
            return True
        clean = self._waiting[Work.LOGIN]
        if work is Work.TRUSTED_LOGIN:
            if clean and evict:
                self._evict(clean, clean[-1])
            return bool(clean)
        places = Counter(waiter.address for waiter in clean)
        crowded, held = places.most_common(1)[0] if places else ("", 0)
        if held < places[address] + 2:
            return False
        if evict:
            self._evict(clean, next(w for w in reversed(clean) if w.address == crowded))
        return True

    @staticmethod
    def _evict(queue: deque[_Waiter], waiter: _Waiter) -> None:
        queue.remove(waiter)
        waiter.ready.set_exception(HashingBusy(per_address=False))

    def _release_address(self, address: str) -> None:
        self._by_address[address] -= 1
        if self._by_address[address] <= 0:
            del self._by_address[address]

    def _pass_on(self) -> None:
        """The turn goes to the first kind of work waiting; within it, to the lowest
        rank, then to the address holding the fewest turns (running or waiting),
        then the oldest: one address's pile of attempts does not delay another's
        single one."""
        for work in Work:
            queue = self._waiting[work]
            while queue:
                waiter = min(queue, key=lambda w: (w.rank, self._by_address[w.address]))
                queue.remove(waiter)
                if not waiter.ready.done():
                    waiter.granted = True
                    waiter.ready.set_result(None)
                    return
        self._free += 1


class Passwords:
    def __init__(self, concurrency: int = 0, queue: int = 32, per_address: int = 4) -> None:
        # One core fewer than the machine has: hashing must never take the core
        # the event loop needs (measured: a login storm then costs ordinary
        # requests 2x their p99 instead of 7-10x, for a fifth fewer logins/s).
        workers = concurrency or max(1, (os.cpu_count() or 2) - 1)
        self.queue = HashQueue(workers, queue, per_address)
        self._executor = ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="argon2", initializer=_lower_priority
        )
        self._hasher = PasswordHasher(
            time_cost=TIME_COST, memory_cost=MEMORY_COST_KIB, parallelism=PARALLELISM, type=Type.ID
        )
        # Verified against for unknown logins, so that they cost a full hash too.
        self._decoy = self._hasher.hash(secrets.token_urlsafe(16))

    @property
    def hasher(self) -> PasswordHasher:
        return self._hasher

    def turn(
        self, work: Work, address: str, rank: int = 0
    ) -> contextlib.AbstractAsyncContextManager[None]:
        """A turn at the hashing threads (HashingBusy when refused); hash within it."""
        return self.queue.turn(work, address, rank)

    async def hash(self, password: str, address: str = "") -> str:
        """A new hash, queued behind logins; HashingBusy when the queue is full."""
        async with self.queue.turn(Work.REGISTRATION, address):
            return await self.hash_in_turn(password)

    async def verify(self, password_hash: str | None, password: str, address: str = "") -> bool:
        """True when the password matches; ``None`` (unknown login) does the same work."""
        async with self.queue.turn(Work.LOGIN, address):
            return await self.verify_in_turn(password_hash, password)

    async def hash_in_turn(self, password: str) -> str:
        """``hash`` for a caller holding a ``turn``."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._hasher.hash, password)

    async def verify_in_turn(self, password_hash: str | None, password: str) -> bool:
        """``verify`` for a caller holding a ``turn``."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, self._verify_sync, password_hash, password
        )

    def _verify_sync(self, password_hash: str | None, password: str) -> bool:
        try:
            ok = self._hasher.verify(password_hash or self._decoy, password)
        except (VerificationError, InvalidHashError):
            return False
        return bool(ok) and password_hash is not None

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
