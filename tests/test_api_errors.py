"""Unexpected failures: a JSON 500 or 503 with a request id, never a traceback."""

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from db import balance as balance_queries
from tests.helpers import register


async def test_unexpected_error_is_json_500_without_details(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    token = await register(client, "boom")

    async def explode(*_: object) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(balance_queries, "balance", explode)
    response = await client.get(
        "/api/user/balance", headers={"Authorization": token, "X-Request-ID": "req-42"}
    )
    assert response.status == 500
    body = await response.json()
    assert body == {"error": "internal error (request id req-42)"}
    assert "secret internals" not in await response.text()


async def test_database_down_is_prompt_json_503(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = await register(client, "down")

    async def unreachable(*_: object) -> None:
        raise asyncpg.CannotConnectNowError("the database system is shutting down")

    monkeypatch.setattr(balance_queries, "balance", unreachable)
    response = await client.get("/api/user/balance", headers={"Authorization": token})
    assert response.status == 503
    assert response.headers["Retry-After"] == "1"
    assert (await response.json())["error"] == "service temporarily unavailable"
