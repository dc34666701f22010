"""The scale benchmark's seeder (bench/scale_seed.py) builds a consistent shop."""

import asyncpg

from bench.scale_seed import WHALE_ID, Size, seed


async def test_a_small_shop_is_consistent(database_uri: str) -> None:
    said: list[str] = []
    size = Size(customers=50, orders=2_000, ledger=2_500, whale_orders=300, chunks=3)
    phases = await seed(database_uri, size, said.append)
    assert phases["total"] > 0 and len(said) == 4
    conn = await asyncpg.connect(database_uri, server_settings={"search_path": "gophermart"})
    try:
        assert await conn.fetchval("SELECT count(*) FROM users") == 50
        assert await conn.fetchval("SELECT count(*) FROM balances") == 50
        assert await conn.fetchval("SELECT count(*) FROM orders") == 2_000
        assert await conn.fetchval("SELECT count(*) FROM ledger") == 2_500
        assert (
            await conn.fetchval("SELECT count(*) FROM orders WHERE user_id = $1", WHALE_ID) == 300
        )
        # Every order belongs to an existing customer (the seed runs without FK checks).
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM orders o LEFT JOIN users u ON u.id = o.user_id "
                "WHERE u.id IS NULL"
            )
            == 0
        )
        # One accrual entry per PROCESSED order, for its owner and its amount.
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM orders o FULL JOIN (SELECT * FROM ledger "
                "WHERE kind = 'accrual') l ON l.order_number = o.number AND o.status = 'PROCESSED'"
                " WHERE o.status = 'PROCESSED' AND (l.id IS NULL OR l.user_id <> o.user_id "
                "OR l.amount <> o.accrual) OR (o.id IS NULL)"
            )
            == 0
        )
        counted = {
            r["status"]: r["n"]
            for r in await conn.fetch("SELECT status, count(*) AS n FROM orders GROUP BY status")
        }
        kept = {
            r["status"]: r["n"]
            for r in await conn.fetch("SELECT status, n FROM order_status_counts")
        }
        assert kept == {s: counted[s] for s in ("INVALID", "PROCESSED")}
        # The backlog is small and not due.
        assert (
            counted["PROCESSING"] == 2
            and await conn.fetchval(
                "SELECT count(*) FROM orders WHERE status = 'PROCESSING' "
                "AND next_attempt_at <= now()"
            )
            == 0
        )
    finally:
        await conn.close()
