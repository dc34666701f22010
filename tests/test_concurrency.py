"""Many users, many connections, at once: the invariants the database guarantees."""

import asyncio
import random
import statistics
import time
from decimal import Decimal

import asyncpg
from aiohttp.test_utils import TestClient

from shared.luhn import with_check_digit
from tests.helpers import credit, register


async def test_invariants_hold_under_concurrent_uploads_and_withdrawals(
    client: TestClient, pool: asyncpg.Pool
) -> None:
    rng = random.Random(7)
    users = [f"crowd{i}" for i in range(12)]
    tokens = {}
    for i, login in enumerate(users):
        tokens[login] = await register(client, login)
        await credit(pool, login, "100", with_check_digit(str(900000 + i)))
    shared_numbers = [with_check_digit(str(800000 + i)) for i in range(20)]
    withdraw_numbers = [with_check_digit(str(700000 + i)) for i in range(60)]

    async def upload(login: str, number: str) -> int:
        response = await client.post(
            "/api/user/orders", data=number, headers={"Authorization": tokens[login]}
        )
        return response.status

    async def withdraw(login: str, number: str, amount: str) -> int:
        response = await client.post(
            "/api/user/balance/withdraw",
            data=f'{{"order": "{number}", "sum": {amount}}}',
            headers={"Authorization": tokens[login], "Content-Type": "application/json"},
        )
        return response.status

    calls = []
    for _ in range(300):
        login = rng.choice(users)
        if rng.random() < 0.5:
            calls.append(upload(login, rng.choice(shared_numbers)))
        else:
            amount = f"{rng.randint(1, 4000) / 100:.2f}"
            calls.append(withdraw(login, rng.choice(withdraw_numbers), amount))
    statuses = await asyncio.gather(*calls)
    assert set(statuses) <= {200, 202, 402, 409}

    # One owner per order number.
    owners = await pool.fetch("SELECT number, count(*) AS n FROM orders GROUP BY number")
    assert all(row["n"] == 1 for row in owners)
    # One withdrawal per order number; balances exact and never negative.
    per_user = await pool.fetch("""
        SELECT b.user_id, b.current, b.withdrawn,
               coalesce(sum(l.amount) FILTER (WHERE l.kind = 'accrual'), 0) AS credited,
               coalesce(sum(l.amount) FILTER (WHERE l.kind = 'withdrawal'), 0) AS spent
        FROM balances b LEFT JOIN ledger l USING (user_id)
        GROUP BY b.user_id, b.current, b.withdrawn""")
    for row in per_user:
        assert row["current"] >= 0
        assert row["withdrawn"] == row["spent"]
        assert row["current"] == row["credited"] - row["spent"]
    total_spent = sum((row["spent"] for row in per_user), Decimal(0))
    assert total_spent > 0  # the mix really withdrew something


async def test_login_costs_the_same_for_unknown_and_known_logins(client: TestClient) -> None:
    await register(client, "timing", "the-right-password")

    async def timed(login: str) -> float:
        started = time.perf_counter()
        response = await client.post(
            "/api/user/login", json={"login": login, "password": "a-wrong-password"}
        )
        assert response.status == 401
        return time.perf_counter() - started

    known, unknown = [], []
    for _ in range(12):  # interleaved, so drift hits both alike
        known.append(await timed("timing"))
        unknown.append(await timed("no-such-user"))
    ratio = statistics.median(unknown) / statistics.median(known)
    # Without the decoy hash an unknown login answers ~100x faster.
    assert 0.5 < ratio < 2.0, (ratio, known, unknown)
