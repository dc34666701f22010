"""The API's edge, in process: hashing queue, JSON-only bodies, cross-site requests,
token scheme, secrets, order-number spellings and owners, quiet ops answers."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from api.app import create_app
from api.auth import COOKIE_NAME
from api.passwords import HashingBusy, HashQueue, Work
from api.state import PASSWORDS
from shared.luhn import with_check_digit
from shared.settings import ApiSettings
from tests.helpers import credit, register

WITHDRAW = "/api/user/balance/withdraw"


# --- the hashing queue --------------------------------------------------------


async def test_hash_queue_serves_logins_first_and_refuses_beyond_its_bound() -> None:
    queue = HashQueue(slots=1, limit=8, per_address=2)  # registrations may queue 2
    order: list[str] = []
    gate = asyncio.Event()

    async def job(work: Work, name: str, address: str) -> None:
        async with queue.turn(work, address):
            order.append(name)
            await gate.wait()

    first = asyncio.create_task(job(Work.REGISTRATION, "r0", "a"))
    await asyncio.sleep(0)
    waiting = [
        asyncio.create_task(job(Work.REGISTRATION, "r1", "b")),
        asyncio.create_task(job(Work.REGISTRATION, "r2", "c")),
        asyncio.create_task(job(Work.LOGIN, "l1", "d")),
    ]
    await asyncio.sleep(0)
    assert queue.waiting(Work.REGISTRATION) == 2 and queue.waiting(Work.LOGIN) == 1
    with pytest.raises(HashingBusy) as full:  # a third registration may not queue
        async with queue.turn(Work.REGISTRATION, "e"):
            pass
    assert not full.value.per_address
    with pytest.raises(HashingBusy) as own_share:  # "a" runs one; "a" may hold two
        await asyncio.gather(job(Work.LOGIN, "l2", "a"), job(Work.LOGIN, "l3", "a"))
    assert own_share.value.per_address
    gate.set()
    await asyncio.gather(first, *waiting, return_exceptions=True)
    # The login that arrived after two registrations still went before them.
    assert order[:3] == ["r0", "l2", "l1"] or order[:2] == ["r0", "l1"]
    assert order.index("l1") < order.index("r1") < order.index("r2")


async def test_a_clean_login_takes_the_place_of_a_suspect_or_crowding_one() -> None:
    queue = HashQueue(slots=1, limit=4, per_address=0)
    gate = asyncio.Event()
    served: list[str] = []

    async def job(work: Work, name: str, address: str, rank: int = 0) -> None:
        async with queue.turn(work, address, rank):
            served.append(name)
            await gate.wait()

    running = asyncio.create_task(job(Work.LOGIN, "running", "r"))
    await asyncio.sleep(0)
    suspects = [asyncio.create_task(job(Work.FLAGGED_LOGIN, f"s{i}", "s")) for i in range(2)]
    crowd = [asyncio.create_task(job(Work.LOGIN, f"c{i}", "c", rank=5)) for i in range(2)]
    await asyncio.sleep(0)
    assert queue.waiting(Work.LOGIN) + queue.waiting(Work.FLAGGED_LOGIN) == 4  # full
    with pytest.raises(HashingBusy):  # a suspect login finds no place
        queue.check(Work.FLAGGED_LOGIN, "t")
    # Clean logins take the newest suspect's place, one after the other...
    clean = [asyncio.create_task(job(Work.LOGIN, f"a{i}", f"a{i}")) for i in range(2)]
    await asyncio.sleep(0)
    for suspect in suspects:
        with pytest.raises(HashingBusy):
            await suspect
    # ...then the place of the address holding two more than their own.
    queue.check(Work.LOGIN, "b")
    late = asyncio.create_task(job(Work.LOGIN, "b", "b"))
    await asyncio.sleep(0)
    with pytest.raises(HashingBusy):
        await crowd[1]
    # Now "c" holds one place, like everyone: nobody else gets one.
    with pytest.raises(HashingBusy):
        queue.check(Work.LOGIN, "d")
    gate.set()
    await asyncio.gather(running, *clean, late, crowd[0])
    # Served: unranked before ranked, the oldest first.
    assert served == ["running", "a0", "a1", "b", "c0"]


async def test_a_turn_goes_to_the_address_holding_fewest() -> None:
    queue = HashQueue(slots=1, limit=8, per_address=0)
    gate = asyncio.Event()
    served: list[str] = []

    async def job(name: str, address: str) -> None:
        async with queue.turn(Work.LOGIN, address):
            served.append(name)
            await gate.wait()

    tasks = [asyncio.create_task(job("running", "x"))]
    await asyncio.sleep(0)
    tasks += [asyncio.create_task(job(f"x{i}", "x")) for i in range(3)]
    tasks += [asyncio.create_task(job("y", "y"))]
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(*tasks)
    assert served == ["running", "y", "x0", "x1", "x2"]


async def test_a_cancelled_waiter_gives_its_turn_to_the_next() -> None:
    queue = HashQueue(slots=1, limit=4)
    held = asyncio.Event()
    release = asyncio.Event()

    async def holder() -> None:
        async with queue.turn(Work.LOGIN, "a"):
            held.set()
            await release.wait()

    task = asyncio.create_task(holder())
    await held.wait()
    cancelled = asyncio.create_task(_enter(queue, "b"))
    served = asyncio.create_task(_enter(queue, "c"))
    await asyncio.sleep(0)
    cancelled.cancel()
    release.set()
    await task
    assert await asyncio.wait_for(served, 1) == "c"
    # Every slot came back: a new job runs at once.
    assert await asyncio.wait_for(_enter(queue, "d"), 1) == "d"


async def _enter(queue: HashQueue, address: str) -> str:
    async with queue.turn(Work.LOGIN, address):
        return address


@contextlib.asynccontextmanager
async def _occupied(app: web.Application) -> AsyncIterator[None]:
    """Hold every hashing thread of the app until the block ends."""
    queue = app[PASSWORDS].queue
    entered = asyncio.Event()
    leave = asyncio.Event()

    async def hold() -> None:
        async with queue.turn(Work.LOGIN, "test"):
            entered.set()
            await leave.wait()

    task = asyncio.create_task(hold())
    await entered.wait()
    try:
        yield
    finally:
        leave.set()
        await task


async def test_a_full_hashing_queue_answers_503_promptly(
    aiohttp_client: Any, api_settings: ApiSettings
) -> None:
    settings = replace(api_settings, hash_concurrency=1, hash_queue=4, trusted_proxies="127.0.0.1")
    client: TestClient = await aiohttp_client(create_app(settings))
    async with _occupied(client.app):
        # One registration may wait (a quarter of 4); the next is refused at once.
        waiting = asyncio.create_task(
            client.post(
                "/api/user/register",
                json={"login": "w", "password": "secret-pass"},
                headers={"X-Forwarded-For": "192.0.2.1"},
            )
        )
        while client.app[PASSWORDS].queue.waiting(Work.REGISTRATION) == 0:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        refused = await client.post(
            "/api/user/register",
            json={"login": "r", "password": "secret-pass"},
            headers={"X-Forwarded-For": "192.0.2.2"},
        )
        assert refused.status == 503
        assert refused.headers["Retry-After"] == "1"
        assert "password checks" in (await refused.json())["error"]
    assert (await waiting).status == 200


# --- JSON means application/json --------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None],
)
@pytest.mark.parametrize("path", ["/api/user/register", "/api/user/login", WITHDRAW])
async def test_json_endpoints_refuse_other_content_types(
    client: TestClient, pool: asyncpg.Pool, path: str, content_type: str | None
) -> None:
    token = await register(client, "typed")
    await credit(pool, "typed", "100", "79927398713")
    body = '{"login": "typed2", "password": "secret-pass", "order": "2377225624", "sum": 1}'
    headers = {"Authorization": token}
    if content_type is not None:
        headers["Content-Type"] = content_type
    response = await client.post(path, data=body.encode(), headers=headers)
    assert response.status == 415
    assert (await response.json())["error"] == "send the body as application/json"
    balance = await (await client.get("/api/user/balance", headers={"Authorization": token})).json()
    assert balance["current"] == 100


async def test_json_in_another_charset_is_415(client: TestClient) -> None:
    response = await client.post(
        "/api/user/register",
        data='{"login": "é", "password": "p"}'.encode("latin-1"),
        headers={"Content-Type": "application/json; charset=latin-1"},
    )
    assert response.status == 415


# --- cross-site requests -------------------------------------------------------


async def _cookie_client(client: TestClient, pool: asyncpg.Pool) -> str:
    token = await register(client, "browser")
    await credit(pool, "browser", "100", "79927398713")
    assert client.session.cookie_jar.filter_cookies(client.make_url("/"))[COOKIE_NAME]
    return token


async def _withdraw(client: TestClient, headers: dict[str, str], number: str) -> int:
    response = await client.post(WITHDRAW, json={"order": number, "sum": 1}, headers=headers)
    assert response.content_type == "application/json"
    return response.status


async def test_cookie_state_change_from_another_origin_is_403(
    client: TestClient, pool: asyncpg.Pool
) -> None:
    await _cookie_client(client, pool)
    for headers in (
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Origin": f"http://{client.host}:{client.port + 1}"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
    ):
        assert await _withdraw(client, headers, "2377225624") == 403, headers
    for path, body in (
        ("/api/user/orders", "12345678903"),
        ("/api/user/register", '{"login": "csrf", "password": "secret-pass"}'),
    ):
        response = await client.post(
            path,
            data=body,
            headers={"Origin": "https://evil.example", "Content-Type": "text/plain"},
        )
        assert response.status == 403
    balance = await (await client.get("/api/user/balance")).json()
    assert balance["current"] == 100


async def test_same_origin_pages_and_bearer_tokens_are_unaffected(
    client: TestClient, pool: asyncpg.Pool
) -> None:
    token = await _cookie_client(client, pool)
    own = f"http://{client.host}:{client.port}"
    assert (
        await _withdraw(client, {"Origin": own, "Sec-Fetch-Site": "same-origin"}, "2377225624")
        == 200
    )
    assert await _withdraw(client, {}, "12345678903") == 200  # no browser headers: not a page
    client.session.cookie_jar.clear()
    assert (
        await _withdraw(
            client, {"Origin": "https://evil.example", "Authorization": token}, "4561261212345467"
        )
        == 200
    )


async def test_allowed_origins_may_use_the_cookie(
    aiohttp_client: Any, api_settings: ApiSettings, pool: asyncpg.Pool
) -> None:
    settings = replace(api_settings, allowed_origins="https://shop.example, https://x.example")
    client: TestClient = await aiohttp_client(create_app(settings))
    await _cookie_client(client, pool)
    assert await _withdraw(client, {"Origin": "https://shop.example"}, "2377225624") == 200
    assert await _withdraw(client, {"Origin": "http://shop.example"}, "12345678903") == 403


async def test_an_origin_of_another_scheme_on_the_same_host_is_403(
    client: TestClient, pool: asyncpg.Pool
) -> None:
    await _cookie_client(client, pool)
    host = f"{client.host}:{client.port}"
    # The server speaks plain HTTP: a page served over https is another origin,
    # and a client cannot say otherwise (it is no trusted proxy).
    for headers in (
        {"Origin": f"https://{host}"},
        {"Origin": f"https://{host}", "X-Forwarded-Proto": "https"},
        {"Origin": f"ftp://{host}"},
    ):
        assert await _withdraw(client, headers, "2377225624") == 403, headers
    assert await _withdraw(client, {"Origin": f"http://{host}"}, "2377225624") == 200


async def test_a_trusted_proxy_names_the_scheme(
    aiohttp_client: Any, api_settings: ApiSettings, pool: asyncpg.Pool
) -> None:
    settings = replace(api_settings, trusted_proxies="127.0.0.1")
    client: TestClient = await aiohttp_client(create_app(settings))
    await _cookie_client(client, pool)
    host = f"{client.host}:{client.port}"
    behind_tls = {"X-Forwarded-Proto": "https"}
    assert await _withdraw(client, {"Origin": f"http://{host}", **behind_tls}, "2377225624") == 403
    # The proxy's entry is the last one; a client's own before it is not believed.
    spoofed = {"X-Forwarded-Proto": "https, http"}
    assert await _withdraw(client, {"Origin": f"https://{host}", **spoofed}, "2377225624") == 403
    assert await _withdraw(client, {"Origin": f"https://{host}", **behind_tls}, "2377225624") == 200
    # Without the header (or with nonsense) the connection's own scheme counts.
    assert await _withdraw(client, {"Origin": f"https://{host}"}, "12345678903") == 403
    junk = {"X-Forwarded-Proto": "gopher"}
    assert await _withdraw(client, {"Origin": f"http://{host}", **junk}, "12345678903") == 200


async def test_bearer_scheme_is_case_insensitive(client: TestClient) -> None:
    token = (await register(client, "lower")).removeprefix("Bearer ")
    client.session.cookie_jar.clear()
    for scheme in ("bearer", "BEARER", "Bearer"):
        response = await client.get(
            "/api/user/balance", headers={"Authorization": f"{scheme} {token}"}
        )
        assert response.status == 200, scheme
    basic = await client.get("/api/user/balance", headers={"Authorization": f"Basic {token}"})
    assert basic.status == 401


# --- secrets -------------------------------------------------------------------


@pytest.mark.parametrize(
    "secret", ["changeme", "x" * 64, "0123456789" * 3, "abababababababababababababababab1234"]
)
def test_weak_session_secrets_stop_the_start(api_settings: ApiSettings, secret: str) -> None:
    with pytest.raises(SystemExit, match="SESSION_SECRET is too weak"):
        create_app(replace(api_settings, session_secret=secret))


def test_a_strong_or_absent_secret_starts(api_settings: ApiSettings) -> None:
    create_app(replace(api_settings, session_secret="3f9a1c7e0b2d4f6a8c1e3b5d7f9a2c4e"))
    create_app(replace(api_settings, session_secret=None))  # random, with a warning


# --- one purchase, one order, one owner --------------------------------------


@pytest.mark.parametrize("spelling", ["012345678903", "0012345678903", "0"])
async def test_numbers_with_leading_zeros_are_refused_everywhere(
    client: TestClient, pool: asyncpg.Pool, spelling: str
) -> None:
    token = await register(client, "zeros")
    await credit(pool, "zeros", "100", "79927398713")
    auth = {"Authorization": token}
    upload = await client.post(
        "/api/user/orders", data=spelling, headers={**auth, "Content-Type": "text/plain"}
    )
    assert upload.status == 422
    as_json = await client.post("/api/user/orders", json={"number": spelling}, headers=auth)
    assert as_json.status == 422
    withdraw = await client.post(WITHDRAW, json={"order": spelling, "sum": 1}, headers=auth)
    assert withdraw.status == 422
    assert "start with 0" in (await withdraw.json())["error"]
    assert await pool.fetchval("SELECT count(*) FROM orders") == 1  # the credited one
    assert await pool.fetchval("SELECT count(*) FROM ledger WHERE kind = 'withdrawal'") == 0


async def test_another_customers_order_number_cannot_be_paid_with_points(
    client: TestClient, pool: asyncpg.Pool
) -> None:
    owner = await register(client, "owner")
    payer = await register(client, "payer")
    await credit(pool, "payer", "100", "79927398713")
    assert (
        await client.post("/api/user/orders", data="12345678903", headers={"Authorization": owner})
    ).status == 202
    response = await client.post(
        WITHDRAW, json={"order": "12345678903", "sum": 5}, headers={"Authorization": payer}
    )
    assert response.status == 409
    assert (await response.json())["error"] == "order number was uploaded by another user"
    # And the other way: a number paid with points by one is not uploaded by another.
    assert (
        await client.post(
            WITHDRAW, json={"order": "2377225624", "sum": 5}, headers={"Authorization": payer}
        )
    ).status == 200
    taken = await client.post(
        "/api/user/orders", data="2377225624", headers={"Authorization": owner}
    )
    assert taken.status == 409
    # The payer's own upload of a number they paid for is theirs to make.
    assert (
        await client.post("/api/user/orders", data="2377225624", headers={"Authorization": payer})
    ).status == 202
    balance = await (await client.get("/api/user/balance", headers={"Authorization": payer})).json()
    assert balance == {"current": 95, "withdrawn": 5}


async def test_racing_upload_and_payment_by_two_customers_leave_one_owner(
    client: TestClient, pool: asyncpg.Pool
) -> None:
    uploader = await register(client, "uploader")
    payer = await register(client, "racer")
    await credit(pool, "racer", "1000", "79927398713")

    async def race(number: str) -> tuple[int, int]:
        up, pay = await asyncio.gather(
            client.post("/api/user/orders", data=number, headers={"Authorization": uploader}),
            client.post(
                WITHDRAW, json={"order": number, "sum": 1}, headers={"Authorization": payer}
            ),
        )
        return up.status, pay.status

    numbers = [with_check_digit(str(5_000_000 + i)) for i in range(40)]
    outcomes = await asyncio.gather(*(race(number) for number in numbers))
    for up, pay in outcomes:
        assert (up, pay) in ((202, 409), (409, 200)), (up, pay)
    both = await pool.fetchval("""
        SELECT count(*) FROM orders o JOIN ledger l
          ON l.kind = 'withdrawal' AND l.order_number = o.number AND l.user_id <> o.user_id""")
    assert both == 0
    spent = sum(1 for _, pay in outcomes if pay == 200)
    assert await pool.fetchval(
        "SELECT current FROM balances b JOIN users u ON u.id = b.user_id WHERE u.login = 'racer'"
    ) == Decimal(1000 - spent)


# --- quiet ops surface -----------------------------------------------------------


async def test_server_header_names_no_version(client: TestClient) -> None:
    for path in ("/healthz", "/api/user/balance", "/no-such-path", "/metrics"):
        response = await client.get(path)
        assert response.headers["Server"] == "gophermart", path
