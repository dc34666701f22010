"""Register, login, and the two ways a client proves who it is."""

import base64
import json
import time
from dataclasses import replace
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from cryptography.fernet import Fernet

from api.app import create_app
from api.auth import COOKIE_NAME
from api.passwords import MEMORY_COST_KIB, PARALLELISM, TIME_COST, Passwords
from api.sessions import fernet_key
from shared.settings import ApiSettings
from tests.helpers import SECRET, register

PROTECTED = [
    ("GET", "/api/user/orders"),
    ("POST", "/api/user/orders"),
    ("GET", "/api/user/balance"),
    ("POST", "/api/user/balance/withdraw"),
    ("GET", "/api/user/withdrawals"),
    ("GET", "/api/user/balance/withdrawals"),
    ("POST", "/api/user/logout"),
    ("POST", "/api/user/password"),
]


async def test_register_answers_200_with_cookie_and_bearer_header(client: TestClient) -> None:
    response = await client.post("/api/user/register", json={"login": "alice", "password": "pw"})
    assert response.status == 200
    assert response.content_type == "application/json"
    token = response.headers["Authorization"]
    assert token.startswith("Bearer ")
    cookie = response.cookies[COOKIE_NAME]
    assert cookie.value == token.removeprefix("Bearer ")
    # Sent unquoted (no base64 padding): what a browser stores is the bearer token.
    assert f"{COOKIE_NAME}={cookie.value};" in response.headers["Set-Cookie"]
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Lax"
    assert cookie["path"] == "/"
    assert not cookie["secure"]


async def test_register_accepts_username_alias(client: TestClient) -> None:
    response = await client.post(
        "/api/user/register",
        data='{"username": "user1", "password": "password1"}',
        headers={"Content-Type": "application/json"},
    )
    assert response.status == 200
    login = await client.post("/api/user/login", json={"login": "user1", "password": "password1"})
    assert login.status == 200


async def test_register_taken_login_is_409(client: TestClient) -> None:
    await register(client, "bob")
    response = await client.post("/api/user/register", json={"login": "bob", "password": "x"})
    assert response.status == 409
    assert "error" in await response.json()


async def test_login_right_password_200_and_token_works(client: TestClient) -> None:
    await register(client, "carol", "right")
    client.session.cookie_jar.clear()
    response = await client.post("/api/user/login", json={"login": "carol", "password": "right"})
    assert response.status == 200
    token = response.headers["Authorization"]
    client.session.cookie_jar.clear()
    balance = await client.get("/api/user/balance", headers={"Authorization": token})
    assert balance.status == 200


@pytest.mark.parametrize(
    "body",
    [
        {"login": "carol", "password": "wrong"},
        {"login": "nobody", "password": "right"},
    ],
)
async def test_login_wrong_pair_is_401(client: TestClient, body: dict[str, str]) -> None:
    await register(client, "carol", "right")
    response = await client.post("/api/user/login", json=body)
    assert response.status == 401
    assert (await response.json())["error"]


async def test_cookie_alone_authenticates(client: TestClient) -> None:
    await register(client, "dave")
    response = await client.get("/api/user/balance")  # the jar carries the cookie
    assert response.status == 200


async def test_bearer_alone_authenticates(client: TestClient) -> None:
    token = await register(client, "erin")
    client.session.cookie_jar.clear()
    assert (await client.get("/api/user/balance")).status == 401
    assert (await client.get("/api/user/balance", headers={"Authorization": token})).status == 200


@pytest.mark.parametrize(("method", "path"), PROTECTED)
async def test_anonymous_gets_401_even_with_a_bad_body(
    client: TestClient, method: str, path: str
) -> None:
    response = await client.request(
        method, path, data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status == 401
    assert response.content_type == "application/json"


def _tamper(token: str) -> str:
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    raw[30] ^= 0x01
    return base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")


async def test_tampered_token_and_cookie_are_401(client: TestClient) -> None:
    token = (await register(client, "frank")).removeprefix("Bearer ")
    client.session.cookie_jar.clear()
    forged = _tamper(token)
    assert (
        await client.get("/api/user/balance", headers={"Authorization": f"Bearer {forged}"})
    ).status == 401
    assert (await client.get("/api/user/balance", cookies={COOKIE_NAME: forged})).status == 401
    assert (
        await client.get("/api/user/balance", headers={"Authorization": token})
    ).status == 401  # no "Bearer "


def _sealed(secret: str, payload: object, at: int | None = None) -> str:
    """A token sealed by hand, the way the server seals them."""
    fernet = Fernet(base64.urlsafe_b64encode(fernet_key(secret)))
    at = int(time.time()) if at is None else at
    return fernet.encrypt_at_time(json.dumps(payload).encode(), at).decode()


def _claims(user_id: int = 1, *, exp: int | None = None, **extra: object) -> dict[str, object]:
    return {
        "uid": user_id,
        "gen": 0,
        "exp": exp or int(time.time()) + 3600,
        "sid": base64.urlsafe_b64encode(b"s" * 16).decode(),
        **extra,
    }


async def _status(client: TestClient, token: str) -> int:
    response = await client.get("/api/user/balance", headers={"Authorization": f"Bearer {token}"})
    return response.status


async def test_token_sealed_with_another_secret_is_401(client: TestClient) -> None:
    await register(client, "grace")
    client.session.cookie_jar.clear()
    assert await _status(client, _sealed(SECRET, _claims())) == 200
    assert await _status(client, _sealed("another secret, just as long as ours", _claims())) == 401


async def test_expired_token_is_401(client: TestClient) -> None:
    await register(client, "heidi")
    client.session.cookie_jar.clear()
    two_days_ago = int(time.time()) - 2 * 86400
    assert await _status(client, _sealed(SECRET, _claims())) == 200
    # Past SESSION_TTL since sealing, or past the expiry fixed at issue (a later,
    # longer SESSION_TTL must not revive a token).
    assert await _status(client, _sealed(SECRET, _claims(), at=two_days_ago)) == 401
    assert await _status(client, _sealed(SECRET, _claims(exp=int(time.time()) - 1))) == 401


@pytest.mark.parametrize(
    "payload",
    [
        {"created": 0, "session": {"uid": 1}},  # the format of the earlier build
        _claims(sid=base64.urlsafe_b64encode(b"short").decode()),
        _claims(uid="1"),
        _claims(gen=True),
        _claims(gen=1),  # a generation the user never had
        _claims(user_id=999),  # no such user
        [1, 2, 3],
    ],
)
async def test_sealed_but_wrong_claims_are_401(client: TestClient, payload: object) -> None:
    await register(client, "ines")
    client.session.cookie_jar.clear()
    assert await _status(client, _sealed(SECRET, payload)) == 401


async def test_other_spellings_of_a_valid_token_are_401(client: TestClient) -> None:
    """Base64 decoders skip junk and spare bits; we accept only the exact text handed out."""
    await register(client, "kim")
    client.session.cookie_jar.clear()
    token = _sealed(SECRET, _claims())
    assert await _status(client, token) == 200
    last = token.rstrip("=")[-1]
    # The final character of a Fernet token carries 4 spare bits: flip them.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    spare = alphabet[alphabet.index(last) ^ 0b0001]
    body = token.rstrip("=")
    variants = [
        body[:10] + "." + body[10:],  # a character base64 decoding skips
        body[:-1] + spare,
    ]  # the same bytes, other spare bits
    for variant in variants:
        assert base64.urlsafe_b64decode(variant + "==") == base64.urlsafe_b64decode(token + "==")
        assert await _status(client, variant) == 401, variant
    # Padding and the quotes of a quoted cookie value are not part of a token.
    for same in (body, body + "=" * (-len(body) % 4), f'"{body}"'):
        assert await _status(client, same) == 200, same


async def test_junk_tokens_are_401_not_500(client: TestClient) -> None:
    await register(client, "jack")
    client.session.cookie_jar.clear()
    for junk in ("é" * 40, "A" * 1000, "gAAAAA", "==", _sealed(SECRET, _claims()) + "é"):
        assert await _status(client, junk) == 401, junk[:20]
        response = await client.get("/api/user/balance", cookies={COOKIE_NAME: junk})
        assert response.status == 401


async def test_other_users_token_sees_only_its_own_data(client: TestClient) -> None:
    ivan = await register(client, "ivan")
    await client.post("/api/user/orders", data="12345678903", headers={"Authorization": ivan})
    judy = await register(client, "judy")
    client.session.cookie_jar.clear()
    response = await client.get("/api/user/orders", headers={"Authorization": judy})
    assert response.status == 204


def test_argon2_parameters_meet_owasp_guidance() -> None:
    # OWASP's equivalent Argon2id settings, (memory KiB, iterations) with p = 1.
    owasp = [(46 * 1024, 1), (19 * 1024, 2), (12 * 1024, 3), (9 * 1024, 4), (7 * 1024, 5)]
    passwords = Passwords(1)
    try:
        params = passwords.hasher.hash("x").split("$")
        assert params[1] == "argon2id"
        assert PARALLELISM == 1
        assert any(m <= MEMORY_COST_KIB and t <= TIME_COST for m, t in owasp)
        assert params[3] == f"m={MEMORY_COST_KIB},t={TIME_COST},p={PARALLELISM}"
    finally:
        passwords.close()


async def test_passwords_are_stored_as_argon2id_hashes(
    client: TestClient, pool: asyncpg.Pool
) -> None:
    await register(client, "kate", "plain-text-password")
    stored = await pool.fetchval("SELECT password_hash FROM users WHERE login = 'kate'")
    assert stored.startswith("$argon2id$")
    assert "plain-text-password" not in stored


async def test_unknown_login_verifies_against_a_decoy_hash() -> None:
    passwords = Passwords(1)
    try:
        real = await passwords.hash("pw")
        assert await passwords.verify(real, "pw") is True
        assert await passwords.verify(real, "nope") is False
        assert await passwords.verify(None, "pw") is False  # decoy: same work, always False
    finally:
        passwords.close()


async def test_repeated_failed_logins_are_throttled(
    aiohttp_client: Any, api_settings: ApiSettings
) -> None:
    settings = replace(api_settings, login_max_failures=3, login_window=60)
    client: TestClient = await aiohttp_client(create_app(settings))
    await register(client, "mallory", "right")
    for _ in range(3):
        bad = await client.post("/api/user/login", json={"login": "mallory", "password": "no"})
        assert bad.status == 401
    throttled = await client.post("/api/user/login", json={"login": "mallory", "password": "right"})
    assert throttled.status == 429
    assert int(throttled.headers["Retry-After"]) >= 1
    assert (await throttled.json())["error"]
