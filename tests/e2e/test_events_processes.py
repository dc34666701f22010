"""Event streams under API_PROCESSES: every process hears every change on its own LISTEN."""

import asyncio
import json
import signal
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from shared.metrics_share import FLUSH_INTERVAL
from tests.processes import Service, free_port, service_url
from tests.system import SESSION_SECRET

pytestmark = pytest.mark.e2e

USERS = 12  # on connections of their own: the kernel spreads them over the processes
WAIT = 15.0


@pytest.fixture
def api(database_uri: str, log_dir: Path) -> Iterator[Service]:
    port = free_port()
    service = Service(
        "api",
        "api",
        {
            "RUN_ADDRESS": f"127.0.0.1:{port}",
            "DATABASE_URI": database_uri,
            "SESSION_SECRET": SESSION_SECRET,
            "API_PROCESSES": "3",
            "DB_POOL_MAX": "6",
            "REGISTER_MAX_PER_ADDRESS": "0",
            # A stream whose client left ends at its next heartbeat.
            "EVENTS_HEARTBEAT": "0.5",
        },
        log_dir,
        port=port,
    )
    try:
        service.start()
    except RuntimeError as exc:
        raise AssertionError(service.log()[-3000:]) from exc
    yield service
    if service.running:
        service.stop(signal.SIGTERM)


async def _event(response: aiohttp.ClientResponse) -> bytes:
    """The next event block, comments and the retry line skipped."""
    async with asyncio.timeout(WAIT):
        while True:
            block = await response.content.readuntil(b"\n\n")
            if not block or block.startswith(b"event: "):
                return block


async def test_a_change_reaches_streams_in_every_process_and_the_metric_sums_them(
    api: Service, pool: asyncpg.Pool
) -> None:
    assert api.port is not None
    url = service_url(api.port)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        tokens = []
        for i in range(USERS):
            async with http.post(
                f"{url}/api/user/register", json={"login": f"u{i}", "password": "e2e-pass-1"}
            ) as r:
                assert r.status == 200
                tokens.append(r.headers["Authorization"])
        streams = []
        for token in tokens:
            response = await http.get(f"{url}/api/user/events", headers={"Authorization": token})
            assert response.status == 200
            assert await _event(response) == b"event: change\ndata: \n\n"
            streams.append(response)

        async def count() -> str:
            async with http.get(f"{url}/metrics") as r:
                text = await r.text()
            return next(
                line for line in text.splitlines() if line.startswith("gophermart_event_streams ")
            )

        # Other processes' counts reach a scrape within FLUSH_INTERVAL (their snapshots).
        deadline = asyncio.get_running_loop().time() + 5 * FLUSH_INTERVAL
        while await count() != f"gophermart_event_streams {float(USERS)}":
            assert asyncio.get_running_loop().time() < deadline, await count()
            await asyncio.sleep(0.1)
        # One transaction changes every user's balance: every stream hears it.
        await pool.execute("UPDATE balances SET current = current + 1")
        for stream in streams:
            assert await _event(stream) == b"event: change\ndata: \n\n"
        for stream in streams:
            stream.close()

    # Each ended stream leaves an access line that says which process served it.
    def served_by() -> list[int]:
        return [
            line["pid"]
            for line in map(json.loads, _json_lines(api.log()))
            if line.get("path") == "/api/user/events"
        ]

    deadline = asyncio.get_running_loop().time() + WAIT
    while len(served_by()) < USERS:
        assert asyncio.get_running_loop().time() < deadline, served_by()
        await asyncio.sleep(0.1)
    assert len(set(served_by())) >= 2, "the streams were not spread over the processes"


def _json_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("{")]
