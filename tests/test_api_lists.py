"""GET lists: the same JSON as ever, paged by Link headers, capped, streamed when long."""

import json
import re
from decimal import Decimal
from typing import Any, cast

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from api.app import create_app
from db import orders
from db.balance import WithdrawalNames
from db.pages import PAGE_ROWS, Cursor, json_keys
from shared.jsonio import dumps
from shared.settings import ApiSettings
from tests.helpers import SECRET, register

_NEXT = re.compile(r'^<([^>]+)>; rel="next"$')


async def seed_orders(pool: asyncpg.Pool, login: str, count: int) -> int:
    """``count`` orders of every status; three share each upload second (ties by id)."""
    user_id: int = await pool.fetchval("SELECT id FROM users WHERE login = $1", login)
    await pool.execute(
        """INSERT INTO orders (number, user_id, status, accrual, uploaded_at)
           SELECT (100000000000 + g)::text, $1,
                  (ARRAY['PROCESSED', 'NEW', 'PROCESSING', 'INVALID'])[g % 4 + 1],
                  CASE WHEN g % 4 = 0 THEN (g % 7) * 100.25 + 0.5 END,
                  '2024-01-01T00:00:00.654321+03:00'::timestamptz + (g / 3) * interval '1 s'
           FROM generate_series(1, $2) AS g""",
        user_id,
        count,
    )
    return user_id


async def seed_withdrawals(pool: asyncpg.Pool, login: str, count: int) -> int:
    user_id: int = await pool.fetchval("SELECT id FROM users WHERE login = $1", login)
    await pool.execute(
        """INSERT INTO ledger (user_id, kind, order_number, amount, created_at)
           SELECT $1, 'withdrawal', (200000000000 + g)::text, (g % 5) * 12.5 + 0.01,
                  '2024-01-01T00:00:00Z'::timestamptz + (g / 2) * interval '1 s'
           FROM generate_series(1, $2) AS g""",
        user_id,
        count,
    )
    return user_id


async def expected_orders(pool: asyncpg.Pool, user_id: int) -> bytes:
    """The list as the API always rendered it: Python dicts through shared.jsonio."""
    rows = await pool.fetch(
        "SELECT number, status, accrual, uploaded_at FROM orders "
        "WHERE user_id = $1 ORDER BY uploaded_at DESC, id DESC",
        user_id,
    )
    return dumps(
        [
            {
                "number": r["number"],
                "status": r["status"],
                **({"accrual": r["accrual"]} if r["status"] == "PROCESSED" else {}),
                "uploaded_at": r["uploaded_at"],
            }
            for r in rows
        ]
    )


async def expected_withdrawals(pool: asyncpg.Pool, user_id: int) -> bytes:
    rows = await pool.fetch(
        "SELECT order_number, amount, created_at FROM ledger "
        "WHERE user_id = $1 AND kind = 'withdrawal' "
        "ORDER BY created_at DESC, id DESC",
        user_id,
    )
    return dumps(
        [
            {"order": r["order_number"], "sum": r["amount"], "processed_at": r["created_at"]}
            for r in rows
        ]
    )


async def get(client: TestClient, token: str, path: str) -> tuple[int, bytes, dict[str, str]]:
    response = await client.get(path, headers={"Authorization": token})
    return response.status, await response.read(), dict(response.headers)


async def follow(client: TestClient, token: str, path: str) -> tuple[list[Any], int]:
    """Every part of a list, following Link headers; (items, parts)."""
    items: list[Any] = []
    parts = 0
    next_path: str | None = path
    while next_path is not None:
        status, body, headers = await get(client, token, next_path)
        assert status == 200, body
        items += cast(list[Any], json.loads(body))
        parts += 1
        link = headers.get("Link")
        next_path = _NEXT.match(link)[1] if link else None  # type: ignore[index]
    return items, parts


async def test_a_long_list_is_streamed_with_exactly_the_json_it_always_had(
    client: TestClient, pool: asyncpg.Pool
) -> None:
    token = await register(client, "long")
    user_id = await seed_orders(pool, "long", 2 * PAGE_ROWS + 345)
    response = await client.get("/api/user/orders", headers={"Authorization": token})
    assert response.status == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers.get("Transfer-Encoding") == "chunked"  # streamed, not built whole
    assert "X-Request-ID" in response.headers and "Link" not in response.headers
    assert await response.read() == await expected_orders(pool, user_id)


async def test_a_short_list_is_one_piece_with_the_same_json(
    client: TestClient, pool: asyncpg.Pool
) -> None:
    token = await register(client, "short")
    user_id = await seed_orders(pool, "short", 17)
    response = await client.get("/api/user/orders", headers={"Authorization": token})
    assert response.status == 200 and response.content_length is not None
    assert await response.read() == await expected_orders(pool, user_id)


async def test_withdrawals_render_as_before_on_both_paths_short_and_long(
    client: TestClient, pool: asyncpg.Pool
) -> None:
    token = await register(client, "spender")
    user_id = await seed_withdrawals(pool, "spender", PAGE_ROWS + 3)
    expected = await expected_withdrawals(pool, user_id)
    for path in ("/api/user/withdrawals", "/api/user/balance/withdrawals"):
        status, body, _ = await get(client, token, path)
        assert (status, body) == (200, expected)
    status, body, _ = await get(client, token, "/api/user/withdrawals?limit=5")
    assert (status, body) == (200, dumps(json.loads(expected, parse_float=Decimal)[:5]))


@pytest.mark.parametrize("limit", [1, 7, PAGE_ROWS, PAGE_ROWS + 1, 2 * PAGE_ROWS + 500])
async def test_following_next_links_yields_every_order_once_in_order(
    client: TestClient, pool: asyncpg.Pool, limit: int
) -> None:
    token = await register(client, "pager")
    total = 2 * PAGE_ROWS + 345 if limit > 7 else 40
    user_id = await seed_orders(pool, "pager", total)
    items, parts = await follow(client, token, f"/api/user/orders?limit={limit}")
    assert dumps(items) == await expected_orders(pool, user_id)
    assert parts == -(-total // limit)


async def test_the_default_answer_stops_at_the_cap_and_links_to_the_rest(
    aiohttp_client: Any, database_uri: str, pool: asyncpg.Pool
) -> None:
    settings = ApiSettings(
        database_uri=database_uri,
        session_secret=SECRET,
        login_max_failures=0,
        list_max_items=PAGE_ROWS + 200,
    )
    client = cast(TestClient, await aiohttp_client(create_app(settings)))
    token = await register(client, "capped")
    user_id = await seed_orders(pool, "capped", 2 * PAGE_ROWS + 500)
    status, body, headers = await get(client, token, "/api/user/orders")
    assert status == 200 and len(json.loads(body)) == PAGE_ROWS + 200
    assert _NEXT.match(headers["Link"])
    items, parts = await follow(client, token, "/api/user/orders")
    assert parts == 3 and dumps(items) == await expected_orders(pool, user_id)
    over = await client.get(
        f"/api/user/orders?limit={PAGE_ROWS + 201}", headers={"Authorization": token}
    )
    assert over.status == 400


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=-1",
        "limit=abc",
        "limit=1.5",
        "limit=100001",
        "limit=" + "9" * 30,
        "limit=",
        "after=",
        "after=abc",
        "after=1_",
        "after=_1",
        "after=1.5_2",
        "after=-99999999999999999_1",
        "after=1_99999999999999999999",
        "after=%00",
    ],
)
async def test_bad_paging_parameters_are_400_with_a_reason(
    client: TestClient, pool: asyncpg.Pool, query: str
) -> None:
    token = await register(client, "params")
    await seed_orders(pool, "params", 3)
    for path in ("/api/user/orders", "/api/user/withdrawals"):
        response = await client.get(f"{path}?{query}", headers={"Authorization": token})
        assert response.status == 400
        assert (await response.json())["error"]


async def test_nothing_after_the_cursor_is_204(client: TestClient, pool: asyncpg.Pool) -> None:
    token = await register(client, "ended")
    await seed_orders(pool, "ended", 3)
    oldest = await pool.fetchrow(
        "SELECT uploaded_at, id FROM orders ORDER BY uploaded_at, id LIMIT 1"
    )
    cursor = Cursor(oldest["uploaded_at"], oldest["id"]).text()
    status, body, _ = await get(client, token, f"/api/user/orders?after={cursor}")
    assert (status, body) == (204, b"")


def test_cursor_text_round_trips_to_the_microsecond() -> None:
    from datetime import UTC, datetime

    for at in (
        datetime(2024, 1, 1, 0, 0, 0, 654321, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 1, tzinfo=UTC),
    ):
        cursor = Cursor(at, 42)
        assert Cursor.parse(cursor.text()) == cursor


def test_a_json_name_the_statement_cannot_carry_as_is_is_refused() -> None:
    # Names go into the SQL text and the JSON unquoted: anything but a plain word is refused.
    with pytest.raises(ValueError, match="accrual"):
        orders.listing(
            orders.OrderNames(
                number="number", status="status", accrual="x', 'y", uploaded_at="uploaded_at"
            )
        )
    assert json_keys(WithdrawalNames("order", "sum", "processed_at")) == {
        "order_number": '"order":',
        "amount": '"sum":',
        "created_at": '"processed_at":',
    }
