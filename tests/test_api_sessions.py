"""Revocable sessions: logout, password change, and the cache of verified tokens."""

import asyncio
import dataclasses
from typing import Any, cast

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from api.app import create_app
from api.auth import COOKIE_NAME
from api.metrics import METRICS
from api.sessions import MISS, Session, VerifiedTokens
from api.state import SESSIONS
from shared.settings import ApiSettings
from tests.helpers import register

PASSWORD = "secret-pass"
NEW_PASSWORD = "new-secret-pass"


async def _status(client: TestClient, token: str) -> int:
    response = await client.get("/api/user/balance", headers={"Authorization": token})
    return response.status


async def _login(client: TestClient, login: str, password: str = PASSWORD) -> str:
    response = await client.post("/api/user/login", json={"login": login, "password": password})
    assert response.status == 200, await response.text()
    return response.headers["Authorization"]


async def _cached_client(
    aiohttp_client: Any, settings: ApiSettings, cache_ttl: float = 3600
) -> TestClient:
    """An app whose verified tokens stay cached for an hour: revocation must not wait."""
    app = create_app(dataclasses.replace(settings, session_cache_ttl=cache_ttl))
    client = cast(TestClient, await aiohttp_client(app))
    await _wait_listening(client)
    return client


async def _wait_listening(client: TestClient) -> None:
    cache = client.app[SESSIONS].cache
    for _ in range(200):
        if cache.listening:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the session listener never connected")


async def test_logout_ends_that_token_for_bearer_and_cookie_and_clears_the_cookie(
    aiohttp_client: Any, api_settings: ApiSettings
) -> None:
    client = await _cached_client(aiohttp_client, api_settings)
    token = await register(client, "alice")
    other_device = await _login(client, "alice")
    assert await _status(client, token) == 200  # now cached as verified

    response = await client.post("/api/user/logout", headers={"Authorization": token})
    assert response.status == 200
    assert await response.json() == {"status": "logged out"}
    cleared = response.cookies[COOKIE_NAME]
    assert cleared.value == "" and cleared["max-age"] == "0"

    assert await _status(client, token) == 401
    client.session.cookie_jar.clear()
    assert (
        await client.get("/api/user/balance", cookies={COOKIE_NAME: token.removeprefix("Bearer ")})
    ).status == 401
    assert await _status(client, other_device) == 200  # other sessions live on
    assert (await client.post("/api/user/logout", headers={"Authorization": token})).status == 401


async def test_logout_by_cookie_ends_the_cookie_token(client: TestClient) -> None:
    await register(client, "bob")
    token = client.session.cookie_jar.filter_cookies(client.make_url("/"))[COOKIE_NAME].value
    assert (await client.post("/api/user/logout")).status == 200  # the jar sends the cookie
    assert await _status(client, f"Bearer {token}") == 401
    assert (await client.get("/api/user/balance", cookies={COOKIE_NAME: token})).status == 401


async def test_password_change_ends_every_token_and_hands_out_a_new_one(
    aiohttp_client: Any, api_settings: ApiSettings
) -> None:
    client = await _cached_client(aiohttp_client, api_settings)
    first = await register(client, "carol")
    second = await _login(client, "carol")
    bystander = await register(client, "dave")
    for token in (first, second, bystander):
        assert await _status(client, token) == 200  # all cached

    response = await client.post(
        "/api/user/password",
        headers={"Authorization": first},
        json={"old_password": PASSWORD, "new_password": NEW_PASSWORD},
    )
    assert response.status == 200, await response.text()
    assert await response.json() == {"status": "password changed"}
    fresh = response.headers["Authorization"]
    assert response.cookies[COOKIE_NAME].value == fresh.removeprefix("Bearer ")

    assert await _status(client, first) == 401
    assert await _status(client, second) == 401
    assert await _status(client, fresh) == 200
    assert await _status(client, bystander) == 200
    bad = await client.post("/api/user/login", json={"login": "carol", "password": PASSWORD})
    assert bad.status == 401
    assert await _status(client, await _login(client, "carol", NEW_PASSWORD)) == 200


async def test_wrong_current_password_is_403_and_changes_nothing(client: TestClient) -> None:
    token = await register(client, "erin")
    response = await client.post(
        "/api/user/password",
        headers={"Authorization": token},
        json={"old_password": "stolen-pass", "new_password": "x"},
    )
    assert response.status == 403
    assert (await response.json())["error"]
    assert await _status(client, token) == 200
    assert await _status(client, await _login(client, "erin")) == 200


@pytest.mark.parametrize(
    "body",
    [
        {"new_password": NEW_PASSWORD},
        {"old_password": PASSWORD},
        {"old_password": PASSWORD, "new_password": ""},
        {"old_password": PASSWORD, "new_password": 12345},
        {"old_password": PASSWORD, "new_password": "x" * 1025},
    ],
)
async def test_bad_password_change_bodies_are_400(client: TestClient, body: dict[str, Any]) -> None:
    token = await register(client, "frank")
    response = await client.post("/api/user/password", headers={"Authorization": token}, json=body)
    assert response.status == 400
    assert await _status(client, token) == 200


async def test_guessing_the_current_password_is_throttled(
    aiohttp_client: Any, api_settings: ApiSettings
) -> None:
    settings = dataclasses.replace(api_settings, login_max_failures=2)
    client = cast(TestClient, await aiohttp_client(create_app(settings)))
    token = await register(client, "grace")
    guess = {"old_password": "stolen-pass", "new_password": "x"}
    statuses = [
        (
            await client.post("/api/user/password", headers={"Authorization": token}, json=guess)
        ).status
        for _ in range(3)
    ]
    assert statuses == [403, 403, 429]
    right = {"old_password": PASSWORD, "new_password": NEW_PASSWORD}
    response = await client.post("/api/user/password", headers={"Authorization": token}, json=right)
    assert response.status == 429  # even the right one waits: it might be the 3rd guess
    assert response.headers["Retry-After"]


async def test_concurrent_password_changes_with_one_token_let_exactly_one_win(
    client: TestClient,
) -> None:
    token = await register(client, "heidi")
    bodies = [{"old_password": PASSWORD, "new_password": f"{NEW_PASSWORD}-{i}"} for i in range(4)]
    responses = await asyncio.gather(
        *(
            client.post("/api/user/password", headers={"Authorization": token}, json=body)
            for body in bodies
        )
    )
    statuses = sorted(r.status for r in responses)
    assert statuses == [200, 401, 401, 401]
    winner = next(i for i, r in enumerate(responses) if r.status == 200)
    for i, body in enumerate(bodies):
        login = await client.post(
            "/api/user/login", json={"login": "heidi", "password": body["new_password"]}
        )
        assert login.status == (200 if i == winner else 401)


async def test_a_login_that_read_the_old_generation_gets_an_ended_token(
    client: TestClient, pool: asyncpg.Pool
) -> None:
    """A login verifying the old password while the change commits gets nothing usable."""
    token = await register(client, "ivan")
    # What a login in flight holds: the generation read together with the old hash.
    user_id, _, generation = (
        await pool.fetchrow(
            "SELECT id, password_hash, session_generation FROM users WHERE login = 'ivan'"
        )
    ).values()
    response = await client.post(
        "/api/user/password",
        headers={"Authorization": token},
        json={"old_password": PASSWORD, "new_password": NEW_PASSWORD},
    )
    assert response.status == 200
    late = client.app[SESSIONS].issue(user_id, generation)
    assert await _status(client, f"Bearer {late}") == 401


async def test_revoked_rows_are_purged_once_their_tokens_expire(
    client: TestClient, pool: asyncpg.Pool
) -> None:
    await pool.execute("INSERT INTO users (login, password_hash) VALUES ('old', 'x')")
    old_id = await pool.fetchval("SELECT id FROM users WHERE login = 'old'")
    await pool.execute(
        "INSERT INTO revoked_sessions SELECT decode(lpad(to_hex(g), 32, '0'), 'hex'), $1,"
        " now() - interval '1 hour' FROM generate_series(1, 150) g",
        old_id,
    )
    token = await register(client, "judy")
    assert (await client.post("/api/user/logout", headers={"Authorization": token})).status == 200
    # One logout purges up to 100 expired rows and adds its own.
    assert await pool.fetchval("SELECT count(*) FROM revoked_sessions") == 150 - 100 + 1
    assert await _status(client, token) == 401


# --- the cache itself ---------------------------------------------------------


def _session(user_id: int) -> Session:
    return Session(user_id, b"x" * 16, 0, 2**40)


def test_cache_fills_only_while_listening() -> None:
    cache = VerifiedTokens(ttl=60)
    cache.put("t", 1, _session(1), cache.mark())
    assert len(cache) == 0
    cache.listening = True
    cache.put("t", 1, _session(1), cache.mark())
    assert cache.get("t") == _session(1)


def test_an_answer_checked_before_an_invalidation_is_not_cached() -> None:
    cache = VerifiedTokens(ttl=60)
    cache.listening = True
    mark = cache.mark()  # a check starts …
    cache.forget_user(2)  # … a revocation lands meanwhile (for anyone) …
    cache.put("t", 1, _session(1), mark)  # … its answer may be stale: not kept
    assert len(cache) == 0


def test_cache_is_bounded_and_forgets_per_user() -> None:
    cache = VerifiedTokens(ttl=60, size=3)
    cache.listening = True
    for i in range(5):
        cache.put(f"t{i}", i % 2, _session(i % 2), cache.mark())
    assert len(cache) == 3
    assert cache.get("t0") is MISS and cache.get("t1") is MISS
    assert cache.get("t4") == _session(0)
    cache.forget_user(0)
    assert len(cache) == 1 and cache.get("t3") == _session(1)


async def test_cache_entries_expire() -> None:
    cache = VerifiedTokens(ttl=0.01)
    cache.listening = True
    cache.put("t", 1, _session(1), cache.mark())
    assert cache.get("t") == _session(1)
    await asyncio.sleep(0.05)
    assert cache.get("t") is MISS
    assert len(cache) == 0


def test_a_session_past_its_expiry_is_not_served_from_the_cache() -> None:
    cache = VerifiedTokens(ttl=60)
    cache.listening = True
    cache.put("t", 1, Session(1, b"x" * 16, 0, 1), cache.mark())  # expired in 1970
    assert cache.get("t") is MISS


async def test_a_lost_listen_connection_empties_the_cache_until_it_is_back(
    aiohttp_client: Any, api_settings: ApiSettings, pool: asyncpg.Pool
) -> None:
    client = await _cached_client(aiohttp_client, api_settings)
    cache = client.app[SESSIONS].cache
    token = await register(client, "kate")
    assert await _status(client, token) == 200
    assert len(cache) == 1
    killed = await pool.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE application_name = 'gophermart-api-sessions' AND datname = current_database()"
    )
    assert killed >= 1
    for _ in range(100):  # notifications may have been missed: nothing cached is trusted
        if len(cache) == 0:
            break
        await asyncio.sleep(0.05)
    assert len(cache) == 0
    await _wait_listening(client)
    assert await _status(client, token) == 200
    assert len(cache) == 1


async def test_a_cached_token_costs_no_query_and_an_ended_one_is_refused_from_the_cache(
    aiohttp_client: Any, api_settings: ApiSettings
) -> None:
    client = await _cached_client(aiohttp_client, api_settings)
    registry = client.app[METRICS].registry

    def checks(outcome: str) -> float:
        value = registry.get_sample_value("gophermart_session_checks_total", {"outcome": outcome})
        return value or 0.0

    token = await register(client, "lena")
    client.session.cookie_jar.clear()
    for _ in range(5):
        assert await _status(client, token) == 200
    assert checks("valid") == 1  # the first request asked PostgreSQL, the rest the cache
    cache = client.app[SESSIONS].cache
    before = cache.mark()
    assert (await client.post("/api/user/logout", headers={"Authorization": token})).status == 200
    # The logout's own NOTIFY comes back to this process too (a second invalidation);
    # a check it overlapped would rightly not be cached, so let it arrive first.
    for _ in range(500):
        if cache.mark() >= before + 2:
            break
        await asyncio.sleep(0.02)
    assert cache.mark() >= before + 2
    for _ in range(5):
        assert await _status(client, token) == 401
    assert checks("ended") == 1  # an ended token never comes back: its refusal is cached


async def test_with_the_cache_off_every_request_asks_the_database(
    aiohttp_client: Any, api_settings: ApiSettings
) -> None:
    client = await _cached_client(aiohttp_client, api_settings, cache_ttl=0)
    token = await register(client, "mona")
    for _ in range(3):
        assert await _status(client, token) == 200
    assert (
        client.app[METRICS].registry.get_sample_value(
            "gophermart_session_checks_total", {"outcome": "valid"}
        )
        == 3
    )
