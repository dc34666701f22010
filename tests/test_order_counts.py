"""Final-status counters (migration 0005) always equal a full count of ``orders``."""

import asyncpg

from db import orders

_TRUE_COUNTS = "SELECT status, count(*) AS n FROM orders GROUP BY status"


async def _check(pool: asyncpg.Pool) -> dict[str, int]:
    truth = {r["status"]: r["n"] for r in await pool.fetch(_TRUE_COUNTS)}
    counted = {status: n for status, n in (await orders.count_by_status(pool)).items() if n}
    assert counted == truth
    return counted


async def test_counters_follow_inserts_updates_and_truncate(pool: asyncpg.Pool) -> None:
    user = await pool.fetchval(
        "INSERT INTO users (login, password_hash) VALUES ('c', 'x') RETURNING id"
    )
    await pool.execute(
        "INSERT INTO orders (number, user_id, status, accrual) SELECT g::text, $1, "
        "CASE g % 3 WHEN 0 THEN 'NEW' WHEN 1 THEN 'INVALID' ELSE 'PROCESSED' END, "
        "CASE WHEN g % 3 = 2 THEN 1 END FROM generate_series(1, 30) g",
        user,
    )
    assert await _check(pool) == {"NEW": 10, "INVALID": 10, "PROCESSED": 10}
    # One statement moving orders both ways between final and non-final statuses.
    await pool.execute(
        "UPDATE orders SET status = CASE status WHEN 'NEW' THEN 'PROCESSING' "
        "WHEN 'INVALID' THEN 'PROCESSED' ELSE status END, "
        "accrual = CASE WHEN status = 'INVALID' THEN 2 ELSE accrual END"
    )
    assert await _check(pool) == {"PROCESSING": 10, "PROCESSED": 20}
    await pool.execute(
        "UPDATE orders SET status = 'INVALID', accrual = NULL "
        "WHERE status = 'PROCESSING' AND number::int % 2 = 0"
    )
    assert await _check(pool) == {"PROCESSING": 5, "INVALID": 5, "PROCESSED": 20}
    await pool.execute("TRUNCATE orders CASCADE")
    assert await _check(pool) == {}


async def test_counters_follow_writes_of_a_session_without_our_search_path(
    pool: asyncpg.Pool, database_uri: str
) -> None:
    conn = await asyncpg.connect(database_uri)  # search_path: the default, not ours
    try:
        user = await conn.fetchval(
            "INSERT INTO gophermart.users (login, password_hash) VALUES ('p', 'x') RETURNING id"
        )
        await conn.execute(
            "INSERT INTO gophermart.orders (number, user_id, status, accrual) "
            "VALUES ('1', $1, 'PROCESSED', 1), ('2', $1, 'NEW', NULL)",
            user,
        )
        await conn.execute("UPDATE gophermart.orders SET status = 'INVALID' WHERE number = '2'")
    finally:
        await conn.close()
    assert await _check(pool) == {"PROCESSED": 1, "INVALID": 1}
