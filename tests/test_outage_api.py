"""PostgreSQL goes away under the API and comes back: 503s meanwhile, no restart needed."""

import asyncio
from typing import Any

from aiohttp.test_utils import TestClient

from api.app import create_app
from shared.localpg import LocalPostgres
from shared.settings import ApiSettings
from tests.helpers import SECRET


async def test_api_answers_503_while_the_database_is_down_then_recovers(
    aiohttp_client: Any, own_server: LocalPostgres
) -> None:
    settings = ApiSettings(database_uri=own_server.dsn, session_secret=SECRET, db_timeout=2.0)
    client: TestClient = await aiohttp_client(create_app(settings))
    registered = await client.post("/api/user/register", json={"login": "u", "password": "p"})
    token = registered.headers["Authorization"]
    assert (
        await client.post("/api/user/orders", data="12345678903", headers={"Authorization": token})
    ).status == 202

    await asyncio.to_thread(own_server.stop, "fast")
    for path in ("/api/user/balance", "/api/user/orders"):
        # A deadline, not a benchmark: a hanging request would fail here.
        response = await asyncio.wait_for(
            client.get(path, headers={"Authorization": token}), timeout=10
        )
        assert response.status == 503
        assert response.headers["Retry-After"] == "1"
        assert (await response.json()) == {"error": "service temporarily unavailable"}

    await asyncio.to_thread(own_server.start)
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        response = await client.get("/api/user/orders", headers={"Authorization": token})
        if response.status == 200:
            break
        assert response.status == 503
        assert asyncio.get_running_loop().time() < deadline, "API did not recover"
        await asyncio.sleep(0.1)
    orders = await response.json()
    assert [o["number"] for o in orders] == ["12345678903"]  # acknowledged before: kept
    login = await client.post("/api/user/login", json={"login": "u", "password": "p"})
    assert login.status == 200
