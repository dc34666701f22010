"""The benchmark's private world: a PostgreSQL in a temp dir and the processes around it.

Everything started here is stopped again by ``close()`` (also on failure and
on Ctrl-C): children first, then PostgreSQL, then the temp dir goes.
"""

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import asyncpg

from bench.procs import Proc
from db.migrate import migrate
from shared.localpg import LocalPostgres, free_port

SECRET = "bench-session-secret-not-for-production"


class Stack:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir  # the last run's logs only: the API's access log is large
        shutil.rmtree(log_dir, ignore_errors=True)
        log_dir.mkdir(parents=True)
        self.tmp = Path(tempfile.mkdtemp(prefix="gophermart-bench-"))
        os.chmod(self.tmp, 0o755)  # PostgreSQL runs as the postgres user when we are root
        self.pg = LocalPostgres(self.tmp / "pg", fast=True)
        self._procs: list[Proc] = []

    def start_postgres(self) -> None:
        self.pg.start()

    async def database(self, name: str) -> str:
        """A fresh, migrated database; its DSN."""
        conn = await asyncpg.connect(self.pg.dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        dsn = self.pg.dsn_for(name)
        await migrate(dsn)
        return dsn

    def start(self, proc: Proc) -> Proc:
        self._procs.append(proc)
        return proc.start()

    def api(self, name: str, dsn: str) -> Proc:
        port = free_port()
        return self.start(
            Proc.python(
                name,
                "api",
                self.log_dir,
                port=port,
                env={
                    "RUN_ADDRESS": f"127.0.0.1:{port}",
                    "DATABASE_URI": dsn,
                    "SESSION_SECRET": SECRET,
                    "LOG_FORMAT": "json",
                    # Every benchmark client comes from 127.0.0.1: per-address shares and
                    # rates would measure themselves, not the server.
                    "MAX_CONNECTIONS_PER_ADDRESS": "0",
                    "HASH_PER_ADDRESS": "0",
                    "REGISTER_MAX_PER_ADDRESS": "0",
                    # The login storm's 32 clients plus 8 probes all wait for hashing:
                    # a queue bound below that would make the storm a test of refusals.
                    "HASH_QUEUE": "64",
                },
            )
        )

    def worker(self, name: str, dsn: str, accrual_url: str) -> Proc:
        return self.start(
            Proc.python(
                name,
                "worker",
                self.log_dir,
                env={
                    "DATABASE_URI": dsn,
                    "ACCRUAL_SYSTEM_ADDRESS": accrual_url,
                    "LOG_FORMAT": "json",
                },
            )
        )

    def simulator(self, name: str, *args: str) -> Proc:
        port = free_port()
        return self.start(
            Proc.python(
                name,
                "accrual_sim",
                self.log_dir,
                port=port,
                args=("-a", f"127.0.0.1:{port}", *args),
                env={"LOG_FORMAT": "json", "LOG_LEVEL": "warning"},
            )
        )

    def stop(self, proc: Proc) -> None:
        proc.stop()
        if proc in self._procs:
            self._procs.remove(proc)

    def close(self) -> None:
        for proc in reversed(self._procs):
            with contextlib.suppress(Exception):
                proc.stop()
        self._procs.clear()
        with contextlib.suppress(Exception):
            self.pg.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


def url(proc: Proc) -> str:
    assert proc.port is not None
    return f"http://127.0.0.1:{proc.port}"
