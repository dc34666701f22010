"""Balance, withdrawals, and the guarantee that nobody overdraws."""

import asyncio
from decimal import Decimal

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from shared.luhn import with_check_digit
from tests.helpers import credit, register


async def withdraw(client: TestClient, token: str, order: str, amount: object) -> int:
    response = await client.post(
        "/api/user/balance/withdraw",
        json={"order": order, "sum": amount},
        headers={"Authorization": token},
    )
    return response.status


async def balance(client: TestClient, token: str) -> tuple[str, dict[str, object]]:
    response = await client.get("/api/user/balance", headers={"Authorization": token})
    assert response.status == 200
    assert response.content_type == "application/json"
    return await response.text(), await response.json()


async def test_new_user_balance_is_zero(client: TestClient) -> None:
    token = await register(client, "fresh")
    text, _ = await balance(client, token)
    assert text == '{"current":0,"withdrawn":0}'


async def test_balance_serialises_exact_decimals(client: TestClient, pool: asyncpg.Pool) -> None:
    token = await register(client, "exact")
    await credit(pool, "exact", "729.98", "79927398713")
    text, _ = await balance(client, token)
    assert text == '{"current":729.98,"withdrawn":0}'
    assert await withdraw(client, token, "2377225624", 229.48) == 200
    text, _ = await balance(client, token)
    assert text == '{"current":500.5,"withdrawn":229.48}'


async def test_withdraw_statuses(client: TestClient, pool: asyncpg.Pool) -> None:
    token = await register(client, "spender")
    other = await register(client, "other")
    await credit(pool, "spender", "1000", "79927398713")
    await credit(pool, "other", "1000", "12345678903")
    assert await withdraw(client, token, "2377225624", 751) == 200
    # The same user, order and sum again: a safe retry, charged once.
    assert await withdraw(client, token, "2377225624", 751) == 200
    assert await withdraw(client, token, "2377225624", 751.0) == 200
    # The same order with another sum, or by another user: conflict.
    assert await withdraw(client, token, "2377225624", 10) == 409
    assert await withdraw(client, other, "2377225624", 751) == 409
    # More than is left: 402, nothing changes.
    assert await withdraw(client, token, with_check_digit("5555"), 250) == 402
    # Not a Luhn-valid number: 422.
    assert await withdraw(client, token, "2377225625", 1) == 422
    _, body = await balance(client, token)
    assert body == {"current": 249, "withdrawn": 751}
    rows = await pool.fetch("SELECT amount FROM ledger WHERE kind = 'withdrawal'")
    assert [r["amount"] for r in rows] == [Decimal("751.00")]


async def test_retry_of_a_paid_order_is_200_even_when_balance_is_now_short(
    client: TestClient, pool: asyncpg.Pool
) -> None:
    token = await register(client, "retrier")
    await credit(pool, "retrier", "100", "79927398713")
    assert await withdraw(client, token, "2377225624", 100) == 200
    assert await withdraw(client, token, "2377225624", 100) == 200
    _, body = await balance(client, token)
    assert body == {"current": 0, "withdrawn": 100}


@pytest.mark.parametrize(
    "amount", [0, -1, -0.01, 0.001, 1.005, "10", None, True, [1], {"v": 1}, 1e20]
)
async def test_bad_sums_are_400_and_change_nothing(
    client: TestClient, pool: asyncpg.Pool, amount: object
) -> None:
    token = await register(client, "badsum")
    await credit(pool, "badsum", "100", "79927398713")
    assert await withdraw(client, token, "2377225624", amount) == 400
    _, body = await balance(client, token)
    assert body == {"current": 100, "withdrawn": 0}
    assert await pool.fetchval("SELECT count(*) FROM ledger WHERE kind = 'withdrawal'") == 0


@pytest.mark.parametrize(
    "body",
    [
        '{"sum": 1}',
        '{"order": "2377225624"}',
        "{bad",
        "[]",
        "",
        '{"order": 2377225624.5, "sum": 1}',
    ],
)
async def test_malformed_withdrawal_is_400(client: TestClient, body: str) -> None:
    token = await register(client, "malformed")
    response = await client.post(
        "/api/user/balance/withdraw",
        data=body,
        headers={"Authorization": token, "Content-Type": "application/json"},
    )
    assert response.status == 400
    assert (await response.json())["error"]


async def test_withdrawals_list_newest_first_on_both_paths(
    client: TestClient, pool: asyncpg.Pool
) -> None:
    token = await register(client, "history")
    await credit(pool, "history", "1000", "79927398713")
    for path in ("/api/user/withdrawals", "/api/user/balance/withdrawals"):
        empty = await client.get(path, headers={"Authorization": token})
        assert empty.status == 204
        assert empty.headers["Content-Type"] == "application/json"
    orders = [with_check_digit(str(7000 + i)) for i in range(3)]
    for i, order in enumerate(orders):
        assert await withdraw(client, token, order, 100 + i + 0.5) == 200
    for path in ("/api/user/withdrawals", "/api/user/balance/withdrawals"):
        response = await client.get(path, headers={"Authorization": token})
        assert response.status == 200
        listed = await response.json()
        assert [w["order"] for w in listed] == list(reversed(orders))
        assert [w["sum"] for w in listed] == [102.5, 101.5, 100.5]
        assert all(w["processed_at"].endswith("+00:00") for w in listed)


async def test_concurrent_withdrawals_never_overdraw(
    client: TestClient, pool: asyncpg.Pool
) -> None:
    """50 withdrawals of 30 race for a balance of 1000: exactly 33 succeed."""
    token = await register(client, "racer")
    await credit(pool, "racer", "1000", "79927398713")
    orders = [with_check_digit(str(100000 + i)) for i in range(50)]
    statuses = await asyncio.gather(*(withdraw(client, token, o, 30) for o in orders))
    assert statuses.count(200) == 33
    assert statuses.count(402) == 17
    _, body = await balance(client, token)
    assert body == {"current": 10, "withdrawn": 990}
    assert await pool.fetchval(
        "SELECT sum(amount) FROM ledger WHERE kind = 'withdrawal'"
    ) == Decimal("990.00")


async def test_same_withdrawal_from_many_connections_charges_once(
    client: TestClient, pool: asyncpg.Pool
) -> None:
    token = await register(client, "hammer")
    await credit(pool, "hammer", "100", "79927398713")
    statuses = await asyncio.gather(*(withdraw(client, token, "2377225624", 60) for _ in range(20)))
    assert statuses == [200] * 20
    _, body = await balance(client, token)
    assert body == {"current": 40, "withdrawn": 60}


async def test_database_refuses_a_negative_balance(pool: asyncpg.Pool) -> None:
    """The backstop under the guarded UPDATE: CHECK (current >= 0)."""
    user_id = await pool.fetchval(
        "INSERT INTO users (login, password_hash) VALUES ('x', 'h') RETURNING id"
    )
    await pool.execute("INSERT INTO balances (user_id) VALUES ($1)", user_id)
    with pytest.raises(asyncpg.CheckViolationError):
        await pool.execute("UPDATE balances SET current = current - 1 WHERE user_id = $1", user_id)
