"""``gophermart-admin``: see and reset the accrual gate, list set-aside orders, without SQL.

    gophermart-admin gate show       # pause, strikes, learned rate limit, last 429
    gophermart-admin gate reset      # lift the pause, forget the limit; every worker hears it
    gophermart-admin orders problems # orders whose answer could not be applied

DATABASE_URI (or -d) names the database, as for the servers; the environment
wins over the flag. Output is JSON, one object, for people and scripts alike.
"""

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import asyncpg

from db import gate as db_gate
from db import queue
from shared.jsonio import dumps
from shared.pg import SCHEMA, WORTH_RETRYING


async def _gate_show(conn: asyncpg.Connection) -> dict[str, Any]:
    report = await db_gate.gate_report(conn)
    return {
        "gate": {
            **asdict(report),
            "pause_left": round(report.pause_left, 3),
            "rate_left": round(report.rate_left, 3),
        }
    }


async def _gate_reset(conn: asyncpg.Connection) -> dict[str, Any]:
    before = await _gate_show(conn)
    released = await db_gate.reset_gate(conn)
    return {
        "reset": True,
        "released_orders": released,
        "before": before["gate"],
        **await _gate_show(conn),
    }


async def _problems(conn: asyncpg.Connection) -> dict[str, Any]:
    found = await queue.problem_orders(conn)
    return {"orders": [{**asdict(o), "due_in": round(o.due_in, 1)} for o in found]}


_COMMANDS = {
    ("gate", "show"): _gate_show,
    ("gate", "reset"): _gate_reset,
    ("orders", "problems"): _problems,
}


async def run(dsn: str, topic: str, action: str, wait: float = 10.0) -> dict[str, Any]:
    conn = await asyncpg.connect(
        dsn,
        timeout=wait,
        command_timeout=wait,
        server_settings={"search_path": SCHEMA, "application_name": "gophermart-admin"},
    )
    try:
        return await _COMMANDS[(topic, action)](conn)
    finally:
        await conn.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="gophermart-admin",
        description=__doc__.split("\n")[0],
        epilog="DATABASE_URI in the environment wins over -d.",
    )
    parser.add_argument("-d", "--database-uri", metavar="DATABASE_URI", default=None)
    parser.add_argument("topic", choices=sorted({t for t, _ in _COMMANDS}))
    parser.add_argument("action", choices=sorted({a for _, a in _COMMANDS}))
    args = parser.parse_args(argv)
    if (args.topic, args.action) not in _COMMANDS:
        parser.error(f"no such command: {args.topic} {args.action}")
    dsn = os.environ.get("DATABASE_URI") or args.database_uri
    if not dsn:
        parser.error("DATABASE_URI (-d) must be set")
    try:
        result = asyncio.run(run(dsn, args.topic, args.action))
    except WORTH_RETRYING as exc:
        print(f"gophermart-admin: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
