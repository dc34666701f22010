"""Revocation across real API processes sharing one database.

Process ``cached`` trusts a verified token for an hour (SESSION_CACHE_TTL=3600),
so only the NOTIFY can make it refuse a revoked token within the seconds
allowed here; process ``uncached`` (SESSION_CACHE_TTL=0) must refuse at once.
"""

import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.helpers import eventually, leaked_secrets
from tests.processes import Service, free_port, service_url
from tests.system import SESSION_SECRET

pytestmark = pytest.mark.e2e
PASSWORD = "e2e-password-5d0b"
NEW_PASSWORD = "e2e-password-changed-77"


@pytest.fixture
async def apis(database_uri: str, log_dir: Path) -> AsyncIterator[dict[str, str]]:
    services = []
    for name, cache_ttl in (("cached", "3600"), ("uncached", "0")):
        port = free_port()
        services.append(
            Service(
                f"api-{name}",
                "api",
                {
                    "DATABASE_URI": database_uri,
                    "RUN_ADDRESS": f"127.0.0.1:{port}",
                    "SESSION_SECRET": SESSION_SECRET,
                    "SESSION_CACHE_TTL": cache_ttl,
                    "LOGIN_MAX_FAILURES": "0",
                },
                log_dir,
                port=port,
            ).start()
        )
    try:
        yield {s.name.removeprefix("api-"): service_url(s.port or 0) for s in services}
    finally:
        for service in services:
            service.stop()
        logs = {s.name: s.log() for s in services}
        assert leaked_secrets(logs, [PASSWORD, NEW_PASSWORD, SESSION_SECRET]) == []


async def _post(
    http: aiohttp.ClientSession, url: str, token: str | None = None, json: object = None
) -> tuple[int, str | None]:
    headers = {"Authorization": token} if token else {}
    async with http.post(url, json=json, headers=headers) as response:
        return response.status, response.headers.get("Authorization")


async def _balance(http: aiohttp.ClientSession, base: str, token: str) -> int:
    async with http.get(f"{base}/api/user/balance", headers={"Authorization": token}) as response:
        return response.status


async def test_logout_and_password_change_end_tokens_on_every_api_process(
    apis: dict[str, str],
) -> None:
    cached, uncached = apis["cached"], apis["uncached"]
    # No cookie jar: each token travels only as the bearer header.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        status, phone = await _post(
            http, f"{cached}/api/user/register", json={"login": "multi", "password": PASSWORD}
        )
        assert status == 200 and phone
        status, laptop = await _post(
            http, f"{uncached}/api/user/login", json={"login": "multi", "password": PASSWORD}
        )
        assert status == 200 and laptop
        for base in (cached, uncached):
            for token in (phone, laptop):
                assert await _balance(http, base, token) == 200  # now cached in `cached`

        # Logout on one process ends that token on the other; the other session lives.
        assert (await _post(http, f"{uncached}/api/user/logout", phone))[0] == 200
        assert await _balance(http, uncached, phone) == 401

        async def phone_refused() -> bool:
            return await _balance(http, cached, phone) == 401

        await eventually(phone_refused, within=15, what="logged-out token refused elsewhere")
        assert await _balance(http, cached, laptop) == 200
        assert await _balance(http, uncached, laptop) == 200

        # A password change on one process ends every token on the other.
        status, fresh = await _post(
            http,
            f"{uncached}/api/user/password",
            laptop,
            json={"old_password": PASSWORD, "new_password": NEW_PASSWORD},
        )
        assert status == 200 and fresh
        assert await _balance(http, uncached, laptop) == 401

        async def laptop_refused() -> bool:
            return await _balance(http, cached, laptop) == 401

        await eventually(laptop_refused, within=15, what="pre-change token refused elsewhere")
        assert await _balance(http, cached, fresh) == 200
        assert await _balance(http, uncached, fresh) == 200
        status, _ = await _post(
            http, f"{cached}/api/user/login", json={"login": "multi", "password": PASSWORD}
        )
        assert status == 401


async def test_without_session_secret_every_api_process_accepts_the_others_tokens(
    database_uri: str, log_dir: Path
) -> None:
    """API_PROCESSES children share one generated secret (else a token works on one in N)."""
    port = free_port()
    api = Service(
        "api-no-secret",
        "api",
        {
            "DATABASE_URI": database_uri,
            "RUN_ADDRESS": f"127.0.0.1:{port}",
            "API_PROCESSES": "2",
            "LOGIN_MAX_FAILURES": "0",
        },
        log_dir,
        port=port,
    )
    api.env.pop("SESSION_SECRET", None)
    api.start()
    try:
        base = service_url(port)
        # A new connection per request: the kernel spreads them over both processes.
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.DummyCookieJar()
        ) as http:
            status, token = await _post(
                http, f"{base}/api/user/register", json={"login": "shared", "password": PASSWORD}
            )
            assert status == 200 and token
            statuses: list[int] = []

            def answering_pids() -> set[object]:
                return {
                    json.loads(line).get("pid")
                    for line in api.log().splitlines()
                    if line.startswith("{") and '"event":"request"' in line
                }

            # Until both processes have answered (the second may still be starting).
            while len(answering_pids()) < 2 and len(statuses) < 400:
                statuses += [await _balance(http, base, token) for _ in range(10)]
        assert len(answering_pids()) == 2, api.log()[-3000:]
        assert set(statuses) == {200}, statuses
    finally:
        api.stop()
