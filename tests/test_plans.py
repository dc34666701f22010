"""Plans that cannot rot: every statement in db/ reaches the big tables through an index.

Statements are discovered, not listed: every module-level SQL string in the
``db`` package is checked, and so are the list statements ``api`` modules
build from db's pieces with their JSON names (``api.orders.LISTING``), so a
new hot statement is checked the day it lands.
Each one is prepared on a connection with the pools' own session settings and
explained under ``plan_cache_mode = force_generic_plan`` (the plan a connection
caches and reuses whatever the table grows to) and ``force_custom_plan``, on
empty tables (never analyzed, then analyzed: the state in which a cached
generic plan used to pick a sequential scan of ``orders``) and on large ones.
No plan may read ``orders``, ``ledger``, ``users`` or ``balances`` with a
sequential scan or with an index scan that has no condition (a full scan too).
"""

import dataclasses
import importlib
import json
import pkgutil
import re
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest

import api
import db
from shared.pg import SERVER_SETTINGS

GUARDED = frozenset({"orders", "ledger", "users", "balances"})
_SQL = re.compile(r"^\s*(WITH|SELECT|INSERT|UPDATE|DELETE)\b", re.IGNORECASE)

# Statements that may read the whole of one index, and why.
ALLOWED_FULL_SCANS: dict[str, tuple[str, str]] = {
    "orders.COUNT_BY_STATUS": (
        "orders_due",
        "the metrics count the backlog, which is what this partial index holds",
    ),
    "queue.PROBLEMS": (
        "orders_problems",
        "operators list the set-aside orders, all this partial index holds",
    ),
}


def _is_sql(value: object) -> bool:
    return (
        isinstance(value, str)
        and bool(_SQL.match(value))
        and bool(re.search(r"\b(FROM|INTO|UPDATE)\b", value, re.IGNORECASE))
    )


def statements() -> dict[str, str]:
    """``module.NAME`` -> SQL for every module-level SQL string under ``db`` and ``api``.

    Strings held by a module-level dataclass (``api.orders.LISTING.boundary``)
    count too; a statement reachable under two names is checked once. Labels
    of ``db`` modules leave the package out (``queue.CLAIM``).
    """
    found: dict[str, str] = {}
    for package, prefix in ((db, ""), (api, "api.")):
        for module_info in pkgutil.iter_modules(package.__path__):
            module = importlib.import_module(f"{package.__name__}.{module_info.name}")
            _collect(found, f"{prefix}{module_info.name}", vars(module))
    return found


def _collect(found: dict[str, str], module: str, names: dict[str, object]) -> None:
    for name, value in names.items():
        if not name.lstrip("_").isupper():
            continue
        label = f"{module}.{name.lstrip('_')}"
        candidates = {label: value}
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            candidates = {
                f"{label}.{f.name}": getattr(value, f.name) for f in dataclasses.fields(value)
            }
        for key, sql in candidates.items():
            if _is_sql(sql) and sql not in found.values():
                found[key] = sql


STATEMENTS = statements()

# A harmless literal per parameter type, for EXPLAIN EXECUTE (EXPLAIN takes no binds).
_LITERALS = {
    "int2": "1",
    "int4": "1",
    "int8": "1",
    "numeric": "1",
    "float8": "1",
    "float4": "1",
    "text": "1",
    "varchar": "1",
    "bool": "f",
    "timestamptz": "2026-01-01T00:00:00Z",
    "interval": "1 second",
    "bytea": "\\x00",
    "uuid": "00000000-0000-0000-0000-000000000000",
    "inet": "127.0.0.1",
    "jsonb": "{}",
    "json": "{}",
    "date": "2026-01-01",
}


def _literal(type_: Any) -> str:
    name: str = type_.name
    if name.endswith("[]"):
        return f"'{{{_LITERALS[name[:-2]]}}}'::{name}"
    return f"'{_LITERALS[name]}'::{name}"


def _scans(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", ()):
        yield from _scans(child)


def full_scans(plan: dict[str, Any], leading: dict[str, str]) -> list[str]:
    """Scans of a guarded table that read all of it or all of one of its indexes.

    An index scan counts as bounded only when its condition constrains the
    index's leading column (``leading``: index name -> first column); a
    condition on a later column is checked entry by entry over the whole index.
    """
    bad = []
    for node in _scans(plan["Plan"]):
        relation = node.get("Relation Name")
        kind = node["Node Type"]
        if relation not in GUARDED:
            continue
        if kind == "Seq Scan":
            bad.append(f"Seq Scan on {relation}")
        elif kind in ("Index Scan", "Index Only Scan", "Bitmap Index Scan"):
            index = node["Index Name"]
            if not re.search(rf"\b{leading[index]}\b", node.get("Index Cond", "")):
                bad.append(f"{kind} on {relation} reading all of {index}")
    return bad


async def leading_columns(conn: asyncpg.Connection) -> dict[str, str]:
    rows = await conn.fetch("""
        SELECT i.relname AS index, a.attname AS leading
        FROM pg_index x
        JOIN pg_class i ON i.oid = x.indexrelid
        JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = x.indkey[0]
        WHERE i.relnamespace = 'gophermart'::regnamespace""")
    return {r["index"]: r["leading"] for r in rows}


async def explain(conn: asyncpg.Connection, sql: str, mode: str) -> dict[str, Any]:
    params = (await conn.prepare(sql)).get_parameters()
    await conn.execute(f"SET plan_cache_mode = {mode}")
    await conn.execute(f"PREPARE checked AS {sql}")
    try:
        args = ", ".join(_literal(t) for t in params)
        text = await conn.fetchval(
            f"EXPLAIN (FORMAT JSON) EXECUTE checked{f'({args})' if args else ''}"
        )
    finally:
        await conn.execute("DEALLOCATE checked")
    plan: dict[str, Any] = json.loads(text)[0]
    return plan


# What the first autovacuum ANALYZE sees: a few rows, every order final (the
# queue's partial index empty) and nobody has withdrawn yet (the withdrawals'
# partial index empty) -- the state in which full scans look free.
_SMALL = """
INSERT INTO users (login, password_hash) SELECT 's' || g, 'x' FROM generate_series(1, 100) g;
INSERT INTO balances (user_id, current) SELECT id, 10 FROM users;
INSERT INTO orders (number, user_id, status, accrual)
SELECT 's' || g, (SELECT min(id) FROM users) + g % 100, 'PROCESSED', 5
FROM generate_series(1, 100) g;
INSERT INTO ledger (user_id, kind, order_number, amount)
SELECT user_id, 'accrual', number, accrual FROM orders;
"""

# Large enough that any full scan costs far more than an index lookup (20,000 orders
# fill ~150 pages; an index lookup reads a handful), small enough to fill in moments.
_FILL = """
INSERT INTO users (login, password_hash) SELECT 'u' || g, 'x' FROM generate_series(1, 2000) g;
INSERT INTO balances (user_id, current) SELECT id, 10 FROM users WHERE login LIKE 'u%';
INSERT INTO orders (number, user_id, next_attempt_at)
SELECT g::text, (SELECT min(id) FROM users WHERE login LIKE 'u%') + g % 2000,
       now() + (g % 100) * interval '1 second'
FROM generate_series(1, 20000) g;
-- Made final by one UPDATE, as the worker does (one counter update per statement).
UPDATE orders SET status = CASE WHEN id % 7 = 0 THEN 'INVALID' ELSE 'PROCESSED' END,
                  accrual = CASE WHEN id % 7 <> 0 THEN 5 END
WHERE id % 50 <> 0 AND number NOT LIKE 's%';
INSERT INTO ledger (user_id, kind, order_number, amount)
SELECT user_id, 'accrual', number, accrual FROM orders
WHERE status = 'PROCESSED' AND number NOT LIKE 's%';
INSERT INTO ledger (user_id, kind, order_number, amount)
SELECT 1 + g % 2000, 'withdrawal', 'w' || g, 1 FROM generate_series(1, 10000) g;
"""


async def _plans(dsn: str, sizes: list[tuple[str, str | None]]) -> list[str]:
    conn = await asyncpg.connect(dsn, server_settings=SERVER_SETTINGS)
    problems = []
    try:
        leading = await leading_columns(conn)
        for size, prepare in sizes:
            if prepare:
                await conn.execute(prepare)
            for name, sql in STATEMENTS.items():
                allowed = ALLOWED_FULL_SCANS.get(name, ("", ""))[0]
                for mode in ("force_generic_plan", "force_custom_plan"):
                    plan = await explain(conn, sql, mode)
                    for scan in full_scans(plan, leading):
                        if not (allowed and scan.endswith(f"reading all of {allowed}")):
                            problems.append(f"{name} ({size}, {mode}): {scan}")
    finally:
        await conn.close()
    return problems


def test_statements_are_discovered() -> None:
    # The hot statements of every module: if discovery breaks, this test says so.
    for name in (
        "orders.UPLOAD",
        "api.orders.LISTING.page",
        "api.orders.LISTING.boundary",
        "api.balance.WITHDRAWALS.page",
        "balance.WITHDRAW",
        "balance.BALANCE",
        "users.CREDENTIALS",
        "queue.CLAIM",
        "queue.APPLY",
        "gate.RECORD_PAUSE",
        "gate.RESERVE_SLOTS",
    ):
        assert name in STATEMENTS, sorted(STATEMENTS)


def test_the_check_catches_a_full_scan() -> None:
    plan = {
        "Plan": {
            "Node Type": "Hash Join",
            "Plans": [
                {"Node Type": "Seq Scan", "Relation Name": "orders"},
                {"Node Type": "Index Scan", "Relation Name": "users", "Index Name": "users_pkey"},
                {
                    "Node Type": "Index Scan",
                    "Relation Name": "orders",
                    "Index Name": "orders_by_user",
                    "Index Cond": "(id = 1)",
                },
                {
                    "Node Type": "Index Scan",
                    "Relation Name": "ledger",
                    "Index Name": "ledger_pkey",
                    "Index Cond": "(id = 1)",
                },
            ],
        }
    }
    leading = {"users_pkey": "id", "orders_by_user": "user_id", "ledger_pkey": "id"}
    assert full_scans(plan, leading) == [
        "Seq Scan on orders",
        "Index Scan on users reading all of users_pkey",
        "Index Scan on orders reading all of orders_by_user",
    ]


@pytest.mark.timeout(300)
async def test_no_statement_scans_a_whole_table_at_any_size(database_uri: str) -> None:
    problems = await _plans(
        database_uri,
        [
            ("empty, never analyzed", None),
            ("empty, analyzed", "ANALYZE"),
            ("small, analyzed", _SMALL + "ANALYZE"),
            ("large, analyzed", _FILL + "ANALYZE"),
        ],
    )
    assert problems == [], "\n".join(problems)


async def test_without_the_session_settings_the_check_fails(database_uri: str) -> None:
    """The guard is the setting plus the statements: without it the old upload plan returns."""
    conn = await asyncpg.connect(database_uri, server_settings={"search_path": "gophermart"})
    try:
        await conn.execute("ANALYZE")
        plan = await explain(conn, STATEMENTS["orders.UPLOAD"], "force_generic_plan")
        leading = await leading_columns(conn)
    finally:
        await conn.close()
    assert "Seq Scan on orders" in full_scans(plan, leading)
