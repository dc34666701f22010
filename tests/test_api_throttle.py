"""Throttles: reserved before the password is verified, counted in PostgreSQL, no lockouts.

Client addresses are varied through X-Forwarded-For from a trusted proxy
(the test client connects from 127.0.0.1, configured as TRUSTED_PROXIES).
"""

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, make_mocked_request

from api.app import create_app
from api.devices import DEVICE_COOKIE, TRUSTED_PER_WINDOW
from api.metrics import METRICS
from api.passwords import HashQueue, Work
from api.state import DEVICES, PASSWORDS
from api.throttle import ClientAddress, address_key, sweep_forever
from db import throttle
from shared.pg import create_pool
from shared.settings import ApiSettings
from tests.helpers import eventually, register

LOGIN = "/api/user/login"


@pytest.fixture
async def guarded(aiohttp_client: Any, api_settings: ApiSettings) -> TestClient:
    settings = replace(
        api_settings,
        login_max_failures=10,
        login_max_failures_per_login=20,
        login_window=300,
        trusted_proxies="127.0.0.1",
    )
    return await aiohttp_client(create_app(settings))  # type: ignore[no-any-return]


async def attempt(
    client: TestClient, password: str, address: str = "198.51.100.1", login: str = "victim"
) -> tuple[int, int | None]:
    response = await client.post(
        LOGIN, json={"login": login, "password": password}, headers={"X-Forwarded-For": address}
    )
    assert response.content_type == "application/json"
    retry = response.headers.get("Retry-After")
    return response.status, int(retry) if retry is not None else None


async def test_concurrent_guesses_are_reserved_before_verification(guarded: TestClient) -> None:
    await register(guarded, "victim", "right-password")
    results = await asyncio.gather(*(attempt(guarded, f"guess-{i}") for i in range(300)))
    statuses = [status for status, _ in results]
    # However many arrive at once, no more than the pair's budget is verified:
    # three free attempts, the fourth starting the delays (and one more per
    # delay that passes while the 300 are still arriving); the rest wait.
    assert 4 <= statuses.count(401) <= 10
    assert statuses.count(401) + statuses.count(429) == 300
    assert all(retry is not None and retry >= 1 for status, retry in results if status == 429)


async def test_delays_grow_then_the_pair_stops_until_the_window_ends(
    guarded: TestClient, pool: asyncpg.Pool
) -> None:
    await register(guarded, "victim", "right-password")
    for _ in range(3):
        assert await attempt(guarded, "wrong") == (401, None)
    waits = []
    for _ in range(7):  # failures 4..10: each is followed by a longer wait
        assert (await attempt(guarded, "wrong"))[0] == 401
        status, retry = await attempt(guarded, "wrong")
        assert status == 429
        waits.append(retry)
        # Let the delay pass without waiting for it.
        await pool.execute("UPDATE throttle SET next_at = now() WHERE key LIKE 'pair:%'")
    assert waits[:6] == [1, 2, 4, 8, 16, 32]
    # The tenth failure used the pair's budget: refused until the window ends,
    # even with the right password.
    status, retry = await attempt(guarded, "right-password")
    assert status == 429 and retry is not None and retry > 200


async def test_right_password_from_a_clean_address_is_never_refused(guarded: TestClient) -> None:
    await register(guarded, "victim", "right-password")
    # Someone guesses from many addresses until the login-wide budget (20) is spent.
    for i in range(8):
        for _ in range(3):
            await attempt(guarded, "wrong", address=f"203.0.113.{i}")
    status, retry = await attempt(guarded, "wrong", address="203.0.113.1")
    assert status == 429 and retry is not None and retry > 200  # until the window ends
    # The owner, from an address that has not failed, gets in at once.
    assert (await attempt(guarded, "right-password", address="198.51.100.7"))[0] == 200
    # And the guesser's addresses are still held back.
    assert (await attempt(guarded, "right-password", address="203.0.113.2"))[0] == 429


async def test_made_up_logins_do_not_lock_out_a_shared_address(guarded: TestClient) -> None:
    await register(guarded, "alice", "alice-password")
    for i in range(30):
        assert (await attempt(guarded, "x", address="192.0.2.9", login=f"made-up-{i}"))[0] == 401
    status, _ = await attempt(guarded, "alice-password", address="192.0.2.9", login="alice")
    assert status == 200


async def test_success_forgets_the_pairs_failures(guarded: TestClient, pool: asyncpg.Pool) -> None:
    await register(guarded, "victim", "right-password")
    for _ in range(3):
        await attempt(guarded, "typo")
    assert (await attempt(guarded, "right-password"))[0] == 200
    assert await pool.fetchval("SELECT count(*) FROM throttle WHERE key LIKE 'pair:%'") == 0
    # The login-wide count keeps the failures but not the success.
    assert await pool.fetchval("SELECT hits FROM throttle WHERE key = 'login:victim'") == 3
    for _ in range(3):
        assert (await attempt(guarded, "typo"))[0] == 401


async def test_an_untrusted_peer_cannot_choose_its_address(
    aiohttp_client: Any, api_settings: ApiSettings
) -> None:
    settings = replace(api_settings, login_max_failures=3)  # no trusted proxy
    client: TestClient = await aiohttp_client(create_app(settings))
    await register(client, "victim", "right-password")
    for i in range(3):
        await attempt(client, "wrong", address=f"10.0.0.{i}")
    assert (await attempt(client, "wrong", address="10.0.0.99"))[0] == 429


async def test_registrations_are_rate_limited_per_address(
    aiohttp_client: Any, api_settings: ApiSettings
) -> None:
    settings = replace(
        api_settings, register_max_per_address=2, register_window=60, trusted_proxies="127.0.0.1"
    )
    client: TestClient = await aiohttp_client(create_app(settings))

    async def sign_up(login: str, address: str) -> tuple[int, str | None]:
        response = await client.post(
            "/api/user/register",
            json={"login": login, "password": "secret-pass"},
            headers={"X-Forwarded-For": address},
        )
        return response.status, response.headers.get("Retry-After")

    assert (await sign_up("a1", "192.0.2.1"))[0] == 200
    assert (await sign_up("a2", "192.0.2.1"))[0] == 200
    status, retry = await sign_up("a3", "192.0.2.1")
    assert status == 429 and retry is not None and 1 <= int(retry) <= 60
    assert (await sign_up("b1", "192.0.2.2"))[0] == 200


async def test_spent_throttle_rows_are_swept(pool: asyncpg.Pool) -> None:
    for i in range(50):
        await throttle.hit(pool, f"register:made-up-{i}", 10, 0.001)
    await throttle.hit(pool, "register:current", 10, 300)
    await asyncio.sleep(0.01)
    assert await throttle.sweep(pool) == 50
    assert await pool.fetchval("SELECT array_agg(key) FROM throttle") == ["register:current"]


async def test_concurrent_reservations_and_refunds_of_one_pair_never_deadlock(
    pool: asyncpg.Pool,
) -> None:
    """Reserving and giving back take the pair's rows in one order (login, pair, address).

    Taken in different orders, a login's reservation and another attempt's refund
    of the same pair deadlocked, and the login got a 500.
    """

    async def attempts(n: int) -> None:
        for i in range(40):
            wait = await throttle.reserve_login(
                pool,
                "shared",
                "192.0.2.9",
                pair_limit=10**6,
                login_limit=10**6,
                free_failures=10**6,
                window=60,
            )
            assert wait is None
            await throttle.refund_login(pool, "shared", "192.0.2.9", succeeded=(n + i) % 2 == 0)

    await asyncio.gather(*(attempts(n) for n in range(8)))


async def test_the_sweeper_outlives_a_busy_pool(database_uri: str) -> None:
    """A pool with no connection free (PoolBusy) is overload: the sweeper tries again later."""
    busy = await create_pool(database_uri, min_size=1, max_size=1, acquire_timeout=0.01)
    sweeper = asyncio.create_task(sweep_forever(busy, every=0.01))
    try:
        await throttle.hit(busy, "register:made-up", 10, 0.001)
        async with busy.acquire():
            await asyncio.sleep(0.2)  # many sweeps find the pool busy
        assert not sweeper.done()
        await eventually(
            lambda: busy.fetchval("SELECT count(*) = 0 FROM throttle"), within=10, what="a sweep"
        )
    finally:
        sweeper.cancel()
        await busy.close()


@pytest.mark.parametrize(
    ("forwarded", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("192.0.2.7:51234", "192.0.2.7"),
        ("[2001:db8:1:2::1]:443", "2001:db8:1:2::/64"),
        ("[2001:db8:1:2::1]", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
        ("spoofed, 192.0.2.8:80", "192.0.2.8"),
        ("unknown", "127.0.0.1"),
        ("192.0.2.7:80:80", "127.0.0.1"),
    ],
)
def test_a_trusted_proxys_entry_is_read_with_or_without_a_port(forwarded: str, key: str) -> None:
    request = make_mocked_request("GET", "/", headers={"X-Forwarded-For": forwarded})
    assert ClientAddress("127.0.0.1")(request.clone(remote="127.0.0.1")) == key


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
    ],
)
def test_an_ipv6_subscriber_counts_as_one_address(address: str, key: str) -> None:
    assert address_key(address) == key


async def test_addresses_of_one_ipv6_subscriber_share_a_registration_rate(
    aiohttp_client: Any, api_settings: ApiSettings
) -> None:
    settings = replace(api_settings, register_max_per_address=2, trusted_proxies="127.0.0.1")
    client: TestClient = await aiohttp_client(create_app(settings))
    statuses = []
    for i in range(3):
        response = await client.post(
            "/api/user/register",
            json={"login": f"v6-{i}", "password": "secret-pass"},
            headers={"X-Forwarded-For": f"2001:db8:7:7::{i + 1}"},
        )
        statuses.append(response.status)
    assert statuses == [200, 200, 429]


# --- a spray of made-up logins against the hashing queue ----------------------


@pytest.fixture
async def sprayed(aiohttp_client: Any, api_settings: ApiSettings) -> TestClient:
    """One hashing thread, the default queue (32) and per-address share (4)."""
    settings = replace(
        api_settings,
        login_max_failures=10,
        login_address_free_failures=3,
        hash_concurrency=1,
        hash_queue=32,
        hash_per_address=4,
        trusted_proxies="127.0.0.1",
    )
    return await aiohttp_client(create_app(settings))  # type: ignore[no-any-return]


async def spray_then_log_in(
    client: TestClient, origin: Callable[[int, int], str], login: str, password: str, address: str
) -> tuple[list[int], list[int]]:
    """80 made-up logins kept in flight (lane ``l``'s ``i``-th from ``origin(l, i)``)
    until the hashing queue overflows; then 5 right logins. (The spray's statuses,
    the customer's.)"""
    stop = asyncio.Event()
    seen: list[int] = []

    async def spray(lane: int) -> None:
        for i in itertools.count():
            if stop.is_set():
                return
            made_up = f"no-{lane}-{i}"
            status, _ = await attempt(client, "x", address=origin(lane, i), login=made_up)
            seen.append(status)

    sprayers = [asyncio.create_task(spray(lane)) for lane in range(80)]
    try:

        async def queue_overflowed() -> bool:
            return 503 in seen

        await eventually(queue_overflowed, within=60)
        mine = [
            (await attempt(client, password, address=address, login=login))[0] for _ in range(5)
        ]
    finally:
        stop.set()
        await asyncio.gather(*sprayers)
    return seen, mine


def from_20_addresses(lane: int, _: int) -> str:
    """4 lanes per address: as many logins in flight as an address's share allows."""
    return f"203.0.113.{lane // 4}"


def from_fresh_addresses(lane: int, i: int) -> str:
    """Every made-up login from an address of its own."""
    n = lane * 100_000 + i + 1
    return f"10.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}"


async def test_a_spray_from_20_addresses_does_not_keep_a_clean_login_out(
    sprayed: TestClient,
) -> None:
    await register(sprayed, "alice", "alice-password")
    # 80 at once from 20 addresses, more than the queue holds: the lever works for
    # the sprayers (their own logins meet a full queue) but not against the customer.
    seen, mine = await spray_then_log_in(
        sprayed, from_20_addresses, "alice", "alice-password", "198.51.100.77"
    )
    assert mine == [200] * 5
    assert set(seen) <= {401, 429, 503}


async def test_attempts_refused_by_a_full_queue_leave_no_trace(
    aiohttp_client: Any, api_settings: ApiSettings, pool: asyncpg.Pool
) -> None:
    settings = replace(
        api_settings,
        login_max_failures=10,
        register_max_per_address=10,
        hash_concurrency=1,
        hash_queue=4,  # registrations may queue 1
        hash_per_address=1,
        trusted_proxies="127.0.0.1",
    )
    client: TestClient = await aiohttp_client(create_app(settings))
    await register(client, "victim", "right-password")
    client.session.cookie_jar.clear()  # no device cookie: nobody here is let ahead
    await pool.execute("DELETE FROM throttle")
    queue = client.app[PASSWORDS].queue
    entered, leave = asyncio.Event(), asyncio.Event()

    async def hold() -> None:  # the hashing thread is busy, and so is 192.0.2.1's share
        async with queue.turn(Work.LOGIN, "192.0.2.1"):
            entered.set()
            await leave.wait()

    holder = asyncio.create_task(hold())
    await entered.wait()
    waiters = [asyncio.create_task(_take_a_turn(queue, f"192.0.2.{10 + i}")) for i in range(4)]
    registering = asyncio.create_task(
        client.post(
            "/api/user/register",
            json={"login": "waits", "password": "secret-pass"},
            headers={"X-Forwarded-For": "192.0.2.30"},
        )
    )
    try:
        await eventually(lambda: _waiting(queue, Work.REGISTRATION), within=10)
        # Full for logins, for registrations, and for this address's share.
        refused = [
            await attempt(client, "right-password", address="198.51.100.1", login="victim"),
            await attempt(client, "guess", address="198.51.100.2", login="made-up"),
            await attempt(client, "right-password", address="192.0.2.1", login="victim"),
        ]
        other = await client.post(
            "/api/user/register",
            json={"login": "refused", "password": "secret-pass"},
            headers={"X-Forwarded-For": "198.51.100.3"},
        )
        assert [status for status, _ in refused] == [503, 503, 429]
        assert other.status == 503
        # Nothing was counted for any of them: no row, not even an emptied one.
        assert await pool.fetchval("SELECT count(*) FROM throttle") == 0
        # They are counted as shed load instead.
        registry = client.app[METRICS].registry
        shed = {
            cause: registry.get_sample_value("gophermart_shed_requests_total", {"cause": cause})
            for cause in ("hashing", "hashing_address")
        }
        assert shed == {"hashing": 3, "hashing_address": 1}
    finally:
        leave.set()
        await asyncio.gather(holder, *waiters)
    assert (await registering).status == 200


async def _take_a_turn(queue: HashQueue, address: str) -> None:
    async with queue.turn(Work.LOGIN, address):
        pass


async def _waiting(queue: HashQueue, work: Work) -> bool:
    return queue.waiting(work) > 0


async def test_a_customer_who_mistyped_once_still_gets_in_during_a_spray(
    sprayed: TestClient,
) -> None:
    # One typo is one of the pair's free failures: it must not make the
    # customer's next, right, attempt suspect, queued with the spray and
    # refused with it while the spray fills the queue.
    await register(sprayed, "bob", "bob-password")
    assert (await attempt(sprayed, "typo", address="198.51.100.78", login="bob"))[0] == 401
    _, mine = await spray_then_log_in(
        sprayed, from_20_addresses, "bob", "bob-password", "198.51.100.78"
    )
    assert mine == [200] * 5


async def test_a_device_cookie_gets_a_returning_customer_through_a_spray_of_clean_addresses(
    sprayed: TestClient,
) -> None:
    # Every made-up login from an address of its own: each is clean, holds one
    # place, and a clean login can take none of them. Her browser's device
    # cookie (handed out at registration) puts her ahead of them all.
    await register(sprayed, "dora", "dora-password")
    assert any(cookie.key == DEVICE_COOKIE for cookie in sprayed.session.cookie_jar)
    _, mine = await spray_then_log_in(
        sprayed, from_fresh_addresses, "dora", "dora-password", "198.51.100.79"
    )
    assert mine == [200] * 5


async def test_a_device_cookie_vouches_for_its_own_login_only_and_only_so_often(
    sprayed: TestClient, pool: asyncpg.Pool
) -> None:
    response = await sprayed.post(LOGIN, json={"login": "nobody", "password": "x"})
    assert response.status == 401
    assert not any(cookie.key == DEVICE_COOKIE for cookie in sprayed.session.cookie_jar)
    await register(sprayed, "erin", "erin-password")
    token = next(c.value for c in sprayed.session.cookie_jar if c.key == DEVICE_COOKIE)
    devices = sprayed.app[DEVICES]

    def carrying(value: str) -> Any:
        return make_mocked_request("POST", LOGIN, headers={"Cookie": f"{DEVICE_COOKIE}={value}"})

    assert devices.vouches_for(carrying(token), "erin")
    assert not devices.vouches_for(carrying(token), "erin2")
    assert not devices.vouches_for(carrying(token), "Erin")
    tampered = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    assert not devices.vouches_for(carrying(tampered), "erin")
    assert not devices.vouches_for(carrying("x" * 5000), "erin")
    # A session token is no device cookie, though sealed from the same secret.
    session = next(c.value for c in sprayed.session.cookie_jar if c.key == "gophermart_session")
    assert not devices.vouches_for(carrying(session), "erin")
    # Whoever holds one gets only so many trusted attempts at the login per window.
    trusted = [
        await devices.trusted(pool, carrying(token), "erin", 300)
        for _ in range(TRUSTED_PER_WINDOW + 2)
    ]
    assert trusted == [True] * TRUSTED_PER_WINDOW + [False] * 2
