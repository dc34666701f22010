"""POST and GET /api/user/orders."""

import asyncio
from datetime import datetime

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from shared.luhn import with_check_digit
from tests.helpers import register


async def upload(
    client: TestClient, token: str, body: str | bytes, content_type: str = "text/plain"
) -> tuple[int, dict[str, object] | None]:
    response = await client.post(
        "/api/user/orders",
        data=body,
        headers={"Authorization": token, "Content-Type": content_type},
    )
    payload = await response.json() if response.content_length else None
    return response.status, payload


async def test_new_number_202_repeat_200_other_user_409(client: TestClient) -> None:
    alice = await register(client, "alice")
    bob = await register(client, "bob")
    assert (await upload(client, alice, "12345678903"))[0] == 202
    assert (await upload(client, alice, "  12345678903\n"))[0] == 200
    status, payload = await upload(client, bob, "12345678903")
    assert status == 409
    assert payload is not None and payload["error"]


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        ('{"order_number": "12345678903"}', "application/json"),
        ('{"number": "12345678903"}', "application/json"),
        ('{"order": "12345678903"}', "application/json"),
        ('{"order_number": 12345678903}', "application/json"),
        # curl -d without a type: JSON sent with curl's default form content type.
        ('{"order_number": "12345678903"}', "application/x-www-form-urlencoded"),
    ],
)
async def test_json_upload_forms_are_accepted(
    client: TestClient, body: str, content_type: str
) -> None:
    token = await register(client, "json")
    assert (await upload(client, token, body, content_type))[0] == 202
    listed = await client.get("/api/user/orders", headers={"Authorization": token})
    assert [o["number"] for o in await listed.json()] == ["12345678903"]


@pytest.mark.parametrize(
    "body",
    [
        "12345678904",
        "abc",
        "1234-5678",
        "-12345678903",
        "١٢٣",
        "1" * 10_000,
        "12345 678903",
        "0x1f",
    ],
)
async def test_invalid_numbers_are_422(client: TestClient, pool: asyncpg.Pool, body: str) -> None:
    token = await register(client, "luhn")
    status, payload = await upload(client, token, body)
    assert status == 422
    assert payload is not None and payload["error"]
    assert await pool.fetchval("SELECT count(*) FROM orders") == 0


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        ("", "text/plain"),
        ("   ", "text/plain"),
        ("{bad json", "application/json"),
        ('{"something": "12345678903"}', "application/json"),
        ('{"order_number": true}', "application/json"),
        ('{"order_number": null}', "application/json"),
        ('["12345678903"]', "application/json"),
    ],
)
async def test_malformed_upload_is_400(
    client: TestClient, pool: asyncpg.Pool, body: str, content_type: str
) -> None:
    token = await register(client, "bad")
    status, payload = await upload(client, token, body, content_type)
    assert status == 400
    assert payload is not None and payload["error"]
    assert await pool.fetchval("SELECT count(*) FROM orders") == 0


async def test_unsupported_content_type_is_415(client: TestClient) -> None:
    token = await register(client, "xml")
    status, _ = await upload(client, token, "<order>12345678903</order>", "application/xml")
    assert status == 415


async def test_long_numbers_are_kept_as_text(client: TestClient) -> None:
    token = await register(client, "zeros")
    long_number = with_check_digit("1" + "0" * 10 + "9" * 28)
    assert (await upload(client, token, long_number))[0] == 202
    listed = await (await client.get("/api/user/orders", headers={"Authorization": token})).json()
    assert listed[0]["number"] == long_number


async def test_list_is_newest_first_with_accrual_only_when_processed(
    client: TestClient, pool: asyncpg.Pool
) -> None:
    token = await register(client, "lister")
    numbers = [with_check_digit(str(1000 + i)) for i in range(4)]
    for number in numbers:
        assert (await upload(client, token, number))[0] == 202
    statuses = ["NEW", "PROCESSING", "INVALID", "PROCESSED"]
    for i, (number, status) in enumerate(zip(numbers, statuses, strict=True)):
        await pool.execute(
            "UPDATE orders SET status = $2, accrual = $3, "
            "uploaded_at = '2020-12-10T15:00:00+03:00'::timestamptz + make_interval(mins => $4)"
            " WHERE number = $1",
            number,
            status,
            729.98 if status == "PROCESSED" else None,
            i,
        )
    response = await client.get("/api/user/orders", headers={"Authorization": token})
    assert response.status == 200
    assert response.content_type == "application/json"
    body = await response.text()
    orders = await response.json()
    assert [o["number"] for o in orders] == list(reversed(numbers))
    assert [o["status"] for o in orders] == list(reversed(statuses))
    assert orders[0]["accrual"] == 729.98 and '"accrual":729.98' in body
    assert all("accrual" not in o for o in orders[1:])
    for order in orders:
        stamp = order["uploaded_at"]
        assert stamp.endswith(("Z", "+00:00")) and "T" in stamp
        assert datetime.fromisoformat(stamp).tzinfo is not None
    assert orders[0]["uploaded_at"] == "2020-12-10T12:03:00+00:00"


async def test_no_orders_is_204_with_json_content_type(client: TestClient) -> None:
    token = await register(client, "empty")
    response = await client.get("/api/user/orders", headers={"Authorization": token})
    assert response.status == 204
    assert response.headers["Content-Type"] == "application/json"


async def test_same_number_from_two_users_at_once_has_one_owner(
    client: TestClient, pool: asyncpg.Pool
) -> None:
    tokens = [await register(client, f"racer{i}") for i in range(8)]
    results = await asyncio.gather(*(upload(client, t, "79927398713") for t in tokens))
    statuses = sorted(status for status, _ in results)
    assert statuses == [202] + [409] * 7
    assert await pool.fetchval("SELECT count(*) FROM orders") == 1


async def test_an_upload_notifies_the_workers(client: TestClient, database_uri: str) -> None:
    listener = await asyncpg.connect(database_uri)
    received: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener("gophermart_new_order", lambda *args: received.put_nowait(args[2]))
    try:
        token = await register(client, "notifier")
        assert (await upload(client, token, "12345678903"))[0] == 202
        assert await asyncio.wait_for(received.get(), timeout=5) == "gophermart_new_order"
    finally:
        await listener.close()
