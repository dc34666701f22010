"""One user's credential never reveals another user's orders, withdrawals or balance."""

import json
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from api.auth import COOKIE_NAME
from tests.helpers import credit, register

# Every GET endpoint that answers with a user's data.
USER_GETS = (
    "/api/user/orders",
    "/api/user/balance",
    "/api/user/withdrawals",
    "/api/user/balance/withdrawals",
)


async def _seed(
    client: TestClient,
    pool: asyncpg.Pool,
    login: str,
    *,
    credited: str,
    accrual_order: str,
    new_order: str,
    withdrawal: str,
    spent: str,
) -> tuple[str, str]:
    """Register with orders, points and a withdrawal; the bearer token and the cookie."""
    response = await client.post(
        "/api/user/register", json={"login": login, "password": "secret-pass"}
    )
    assert response.status == 200
    token, cookie = response.headers["Authorization"], response.cookies[COOKIE_NAME].value
    client.session.cookie_jar.clear()
    await credit(pool, login, credited, accrual_order)
    auth = {"Authorization": token}
    assert (await client.post("/api/user/orders", data=new_order, headers=auth)).status == 202
    response = await client.post(
        "/api/user/balance/withdraw", headers=auth, json={"order": withdrawal, "sum": float(spent)}
    )
    assert response.status == 200
    return token, cookie


async def _views(client: TestClient, **kwargs: Any) -> dict[str, Any]:
    views = {}
    for path in USER_GETS:
        response = await client.get(path, **kwargs)
        assert response.status == 200, (path, response.status)
        views[path] = json.loads(await response.read(), parse_float=Decimal)
    return views


@pytest.mark.parametrize("via", ["bearer", "cookie"])
async def test_each_credential_sees_exactly_its_own_user_data_on_every_get(
    client: TestClient, pool: asyncpg.Pool, via: str
) -> None:
    alice = await _seed(
        client,
        pool,
        "alice",
        credited="500",
        accrual_order="9278923470",
        new_order="12345678903",
        withdrawal="2377225624",
        spent="100",
    )
    bob = await _seed(
        client,
        pool,
        "bob",
        credited="70",
        accrual_order="79927398713",
        new_order="4561261212345467",
        withdrawal="49927398716",
        spent="20.5",
    )
    seen = {}
    for login, (token, cookie) in (("alice", alice), ("bob", bob)):
        client.session.cookie_jar.clear()
        if via == "bearer":
            seen[login] = await _views(client, headers={"Authorization": token})
        else:  # the session cookie alone, no header
            client.session.cookie_jar.update_cookies({COOKIE_NAME: cookie})
            seen[login] = await _views(client)
            client.session.cookie_jar.clear()

    for login, orders, (withdrawal, spent), current in (
        ("alice", {"9278923470", "12345678903"}, ("2377225624", Decimal(100)), Decimal(400)),
        (
            "bob",
            {"79927398713", "4561261212345467"},
            ("49927398716", Decimal("20.5")),
            Decimal("49.5"),
        ),
    ):
        views = seen[login]
        assert {o["number"] for o in views["/api/user/orders"]} == orders
        assert views["/api/user/balance"] == {"current": current, "withdrawn": spent}
        for path in ("/api/user/withdrawals", "/api/user/balance/withdrawals"):
            assert [(w["order"], w["sum"]) for w in views[path]] == [(withdrawal, spent)]
    # Nothing of one appears anywhere in what the other sees.
    alice_text, bob_text = (
        json.dumps(seen["alice"], default=str),
        json.dumps(seen["bob"], default=str),
    )
    for secret_of_bob in ("79927398713", "4561261212345467", "49927398716"):
        assert secret_of_bob not in alice_text
    for secret_of_alice in ("9278923470", "12345678903", "2377225624"):
        assert secret_of_alice not in bob_text


async def test_a_users_own_order_number_cannot_be_claimed_or_paid_by_another(
    client: TestClient, pool: asyncpg.Pool
) -> None:
    alice = await register(client, "alice")
    bob = await register(client, "bob")
    client.session.cookie_jar.clear()
    await credit(pool, "bob", "50", "79927398713")
    assert (
        await client.post("/api/user/orders", data="12345678903", headers={"Authorization": alice})
    ).status == 202
    # Bob uploading Alice's number learns only that it is taken, and gets nothing of it.
    response = await client.post(
        "/api/user/orders", data="12345678903", headers={"Authorization": bob}
    )
    assert response.status == 409
    assert "alice" not in await response.text()
    response = await client.get("/api/user/orders", headers={"Authorization": bob})
    assert {o["number"] for o in await response.json()} == {"79927398713"}
    # A withdrawal order number Alice used cannot be reused by Bob (409), and costs him nothing.
    await credit(pool, "alice", "10", "9278923470")
    assert (
        await client.post(
            "/api/user/balance/withdraw",
            headers={"Authorization": alice},
            json={"order": "2377225624", "sum": 5},
        )
    ).status == 200
    assert (
        await client.post(
            "/api/user/balance/withdraw",
            headers={"Authorization": bob},
            json={"order": "2377225624", "sum": 5},
        )
    ).status == 409
    response = await client.get("/api/user/balance", headers={"Authorization": bob})
    assert await response.json() == {"current": 50, "withdrawn": 0}
