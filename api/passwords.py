"""Argon2id password hashing off the event loop, with bounded concurrency.

Parameters are one of the equivalent Argon2id settings of OWASP's password
storage guidance (m = 12 MiB, t = 3, p = 1): the same defence as 19 MiB with
t = 2 for the same CPU, and 7 MiB less memory per concurrent hash.

argon2-cffi releases the GIL while hashing, so a small thread pool runs hashes
in parallel without stalling the loop; the pool's size is the bound on
concurrent hashes (and on the memory they take).
Hashing threads run at a lower CPU priority than the event loop, so a storm
of logins slows logins, not every other request.

The work waiting for a thread is bounded and ordered (``HashQueue``): logins
go before registrations, each kind may queue only so much, and one client
address only a share of it; beyond that the request is refused at once
(503, or 429 for the address) instead of waiting behind an unbounded queue.
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

    LOGIN = 0
    REGISTRATION = 1


class HashingBusy(Exception):
    """The queue for this kind of work (or for this address) is full."""

    def __init__(self, per_address: bool) -> None:
        super().__init__("per address" if per_address else "queue full")
        self.per_address = per_address


class HashQueue:
    """``slots`` turns at the hashing threads, handed out logins first.

    ``limit`` logins may wait; registrations a quarter of that; one address
    ``per_address`` waiting or running, whatever its kind (0: no such share).
    """

    def __init__(self, slots: int, limit: int, per_address: int = 4) -> None:
        self._free = slots
        self._limits = {Work.LOGIN: limit, Work.REGISTRATION: max(1, limit // 4)}
        self._per_address = per_address
        self._waiting: dict[Work, deque[asyncio.Future[None]]] = {w: deque() for w in Work}
        self._by_address: Counter[str] = Counter()

    def waiting(self, work: Work) -> int:
        return len(self._waiting[work])

    @contextlib.asynccontextmanager
    async def turn(self, work: Work, address: str) -> AsyncIterator[None]:
        if self._per_address and self._by_address[address] >= self._per_address:
            raise HashingBusy(per_address=True)
        if self._free > 0 and not any(self._waiting.values()):
            self._free -= 1
        else:
            queue = self._waiting[work]
            if len(queue) >= self._limits[work]:
                raise HashingBusy(per_address=False)
            self._by_address[address] += 1
            ready = asyncio.get_running_loop().create_future()
            queue.append(ready)
            try:
                await ready
            except BaseException:
                if ready.done() and not ready.cancelled():
                    self._pass_on()  # granted just as we were cancelled
                else:
                    queue.remove(ready)
                self._release_address(address)
                raise
            self._release_address(address)
        self._by_address[address] += 1
        try:
            yield
        finally:
            self._release_address(address)
            self._pass_on()

    def _release_address(self, address: str) -> None:
        self._by_address[address] -= 1
        if self._by_address[address] <= 0:
            del self._by_address[address]

    def _pass_on(self) -> None:
        for work in Work:
            queue = self._waiting[work]
            while queue:
                ready = queue.popleft()
                if not ready.done():
                    ready.set_result(None)
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

    async def hash(self, password: str, address: str = "") -> str:
        """A new hash, queued behind logins; HashingBusy when the queue is full."""
        async with self.queue.turn(Work.REGISTRATION, address):
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, self._hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str, address: str = "") -> bool:
        """True when the password matches; ``None`` (unknown login) does the same work."""
        async with self.queue.turn(Work.LOGIN, address):
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
