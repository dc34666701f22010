"""GET /api/user/events: live "look again" events from PostgreSQL NOTIFY, and their bounds."""

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any, cast

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from api.app import create_app
from api.events import EVENTS
from db import events
from shared.settings import ApiSettings
from tests.helpers import eventually, register

WAIT = 10.0  # seconds a test waits for an event that must come


@pytest.fixture
def settings(api_settings: ApiSettings) -> ApiSettings:
    return dataclasses.replace(
        api_settings,
        events_per_user=3,
        events_max_streams=8,
        events_heartbeat=0.2,
        events_max_age=60.0,
    )


@pytest.fixture
async def sse(settings: ApiSettings, aiohttp_client: Any) -> AsyncIterator[TestClient]:
    client = cast(TestClient, await aiohttp_client(create_app(settings)))
    # Notifications sent before the listener is up would be missed by design
    # (a (re)connect wakes every stream instead): start from a listening hub.
    await asyncio.wait_for(client.app[EVENTS].listening.wait(), WAIT)
    yield client


async def next_event(
    response: aiohttp.ClientResponse,
    within: float = WAIT,
) -> tuple[str, str]:
    """The next (event, data), skipping comments and the retry line; ("eof", "") at the end."""
    async with asyncio.timeout(within):
        while True:
            block = await response.content.readuntil(b"\n\n")
            if not block:
                return "eof", ""
            fields = dict(
                line.split(": ", 1) if ": " in line else (line, "")
                for line in block.decode().splitlines()
                if not line.startswith(":")
            )
            if "event" in fields:
                return fields["event"], fields.get("data", "")


async def open_stream(client: TestClient, token: str) -> aiohttp.ClientResponse:
    response = await client.get("/api/user/events", headers={"Authorization": token})
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert await next_event(response) == ("change", "")  # the first look, at once
    return response


async def user_id(pool: asyncpg.Pool, login: str) -> int:
    found: int = await pool.fetchval("SELECT id FROM users WHERE login = $1", login)
    return found


async def test_a_worker_status_change_reaches_the_owners_stream_only(
    sse: TestClient, pool: asyncpg.Pool
) -> None:
    alice, bob = await register(sse, "alice"), await register(sse, "bob")
    alice_stream, bob_stream = await open_stream(sse, alice), await open_stream(sse, bob)
    response = await sse.post(
        "/api/user/orders",
        data="12345678903",
        headers={"Authorization": alice, "Content-Type": "text/plain"},
    )
    assert response.status == 202
    assert await next_event(alice_stream) == ("change", "")  # the upload (e.g. another tab)
    # The worker's write: status and accrual, balance credited, in one statement.
    await pool.execute(
        "UPDATE orders SET status = 'PROCESSED', accrual = 5 WHERE number = '12345678903'"
    )
    assert await next_event(alice_stream) == ("change", "")
    # Bob's stream heard nothing of it: only heartbeats until it is closed.
    with pytest.raises(TimeoutError):
        await next_event(bob_stream, within=1.0)
    alice_stream.close()
    bob_stream.close()


async def test_heartbeats_keep_a_quiet_stream_talking(sse: TestClient) -> None:
    stream = await open_stream(sse, await register(sse, "carol"))
    async with asyncio.timeout(WAIT):
        assert await stream.content.readuntil(b"\n\n") == b": ping\n\n"
    stream.close()


async def test_300_streams_of_one_user_cost_the_process_three(sse: TestClient) -> None:
    token = await register(sse, "mallory")
    hub = sse.app[EVENTS]
    live: list[aiohttp.ClientResponse] = []
    for _ in range(300):
        live.append(await open_stream(sse, token))
        if len(live) > 3:
            # Each stream past the third ended the oldest, at once.
            oldest = live.pop(0)
            assert await next_event(oldest) == ("end", "replaced")
            assert await next_event(oldest) == ("eof", "")
            oldest.close()
        assert hub.open_streams == len(live)
    metrics = await (await sse.get("/metrics")).text()
    assert "\ngophermart_event_streams 3.0\n" in metrics
    for stream in live:
        stream.close()


async def test_past_the_process_cap_the_answer_is_503_with_retry_after(sse: TestClient) -> None:
    streams = []
    for i in range(8):
        token = await register(sse, f"user{i}")
        streams.append(await open_stream(sse, token))
    token = await register(sse, "one-too-many")
    response = await sse.get("/api/user/events", headers={"Authorization": token})
    assert response.status == 503
    assert response.headers["Retry-After"] == "30"
    assert (await response.json())["error"] == "too many open event streams; poll instead"
    streams.pop().close()

    async def room_again() -> bool:
        return sse.app[EVENTS].open_streams < 8

    await eventually(room_again, within=WAIT, what="a stream closed", every=0.02)
    streams.append(await open_stream(sse, token))
    for stream in streams:
        stream.close()


async def test_anonymous_and_forged_sessions_get_401(sse: TestClient) -> None:
    assert (await sse.get("/api/user/events")).status == 401
    forged = await sse.get("/api/user/events", headers={"Authorization": "Bearer forged"})
    assert forged.status == 401


async def login(client: TestClient, name: str) -> str:
    response = await client.post("/api/user/login", json={"login": name, "password": "secret-pass"})
    assert response.status == 200
    return response.headers["Authorization"]


async def test_logout_ends_that_sessions_streams_in_every_process_and_no_other(
    sse: TestClient, settings: ApiSettings, aiohttp_client: Any
) -> None:
    # A second API process on the same database: it hears the logout through PostgreSQL.
    other_process = cast(TestClient, await aiohttp_client(create_app(settings)))
    await asyncio.wait_for(other_process.app[EVENTS].listening.wait(), WAIT)
    phone = await register(sse, "dave")
    laptop = await login(sse, "dave")
    phone_streams = [await open_stream(sse, phone), await open_stream(other_process, phone)]
    laptop_stream = await open_stream(other_process, laptop)
    response = await sse.post("/api/user/logout", headers={"Authorization": phone})
    assert response.status == 200
    for stream in phone_streams:
        assert await next_event(stream) == ("end", "ended")
        assert await next_event(stream) == ("eof", "")
    # The laptop's session lives on, and so does its stream.
    assert other_process.app[EVENTS].open_streams == 1
    with pytest.raises(TimeoutError):
        await next_event(laptop_stream, within=1.0)
    assert (await sse.get("/api/user/events", headers={"Authorization": phone})).status == 401
    laptop_stream.close()


async def test_a_password_change_ends_every_stream_of_the_user(sse: TestClient) -> None:
    first = await register(sse, "erin")
    streams = [await open_stream(sse, first), await open_stream(sse, await login(sse, "erin"))]
    bystander = await open_stream(sse, await register(sse, "frank"))
    response = await sse.post(
        "/api/user/password",
        headers={"Authorization": first},
        json={"old_password": "secret-pass", "new_password": "n3w-pass"},
    )
    assert response.status == 200
    for stream in streams:
        assert await next_event(stream) == ("end", "ended")
    assert sse.app[EVENTS].open_streams == 1  # frank's
    # The fresh token the change handed out opens a stream as usual.
    renewed = await open_stream(sse, response.headers["Authorization"])
    renewed.close()
    bystander.close()


async def test_a_stream_ends_at_its_max_age_and_the_browser_reconnects(
    settings: ApiSettings, aiohttp_client: Any
) -> None:
    client = cast(
        TestClient,
        await aiohttp_client(create_app(dataclasses.replace(settings, events_max_age=0.5))),
    )
    stream = await open_stream(client, await register(client, "frank"))
    assert await next_event(stream) == ("eof", "")
    assert client.app[EVENTS].open_streams == 0


async def test_shutdown_ends_every_stream_before_the_server_waits_for_handlers(
    sse: TestClient,
) -> None:
    stream = await open_stream(sse, await register(sse, "grace"))
    await sse.app.shutdown()  # what the runner calls before waiting for handlers
    assert await next_event(stream) == ("end", "shutdown")
    assert await next_event(stream) == ("eof", "")
    refused = await sse.get(
        "/api/user/events", headers={"Authorization": await register(sse, "heidi")}
    )
    assert refused.status == 503


async def test_a_lost_listen_connection_reconnects_and_wakes_every_stream(
    sse: TestClient, pool: asyncpg.Pool
) -> None:
    stream = await open_stream(sse, await register(sse, "ivan"))
    hub = sse.app[EVENTS]
    killed = await pool.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE application_name = 'gophermart-api-events' AND datname = current_database()"
    )
    assert killed == 1
    # The reconnect says "look again": changes while nobody listened are not lost.
    assert await next_event(stream) == ("change", "")
    assert hub.listening.is_set()
    await pool.execute("UPDATE balances SET current = current + 1")
    assert await next_event(stream) == ("change", "")
    stream.close()


# --- the triggers (migration 0004) and the channel's payloads -----------------


async def test_triggers_notify_status_and_balance_changes_once_per_user_and_commit(
    pool: asyncpg.Pool, database_uri: str
) -> None:
    heard: asyncio.Queue[str] = asyncio.Queue()
    listener = await asyncpg.connect(database_uri)
    await listener.add_listener(
        events.USER_CHANGE_CHANNEL, lambda *args: heard.put_nowait(args[-1])
    )
    try:
        uid = await pool.fetchval(
            "INSERT INTO users (login, password_hash) VALUES ('u', 'x') RETURNING id"
        )
        await pool.execute("INSERT INTO balances (user_id) VALUES ($1)", uid)
        await pool.execute(
            "INSERT INTO orders (number, user_id) VALUES ('18', $1), ('26', $1)", uid
        )
        assert await asyncio.wait_for(heard.get(), WAIT) == str(uid)  # two rows, one commit
        # A claim or a backoff leaves the status alone: silence.
        await pool.execute(
            "UPDATE orders SET attempts = attempts + 1, "
            "next_attempt_at = now() + interval '1 minute'"
        )
        await pool.execute("UPDATE balances SET current = current")
        # Two statuses and the credit in one transaction: one notification.
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("UPDATE orders SET status = 'PROCESSING'")
            await conn.execute("UPDATE balances SET current = current + 1")
        assert await asyncio.wait_for(heard.get(), WAIT) == str(uid)
        await asyncio.sleep(0.3)
        assert heard.empty()
    finally:
        await listener.close()


@pytest.mark.parametrize(
    "payload", ["", " ", "x", "-1", "1 x", "1 end", "١٢", "1\n", "+1", "1" * 20]
)
def test_unreadable_payloads_are_ignored(payload: str) -> None:
    assert events.parse_user_id(payload) is None


def test_a_payload_names_a_user() -> None:
    assert events.parse_user_id("42") == 42
