"""A huge list against the real API process: capped per customer, abandoned when the client goes.

No timing is asserted: the mechanisms are read off statuses, the access log
(``status`` 499 and ``items`` sent) and the metrics.
"""

import json
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg

from tests.helpers import eventually
from tests.system import Stack, SystemFactory

HUGE = 100_000  # ~11 MB of JSON: more than the loopback socket buffers hold


async def seed(database_uri: str, login: str, count: int) -> None:
    conn = await asyncpg.connect(database_uri, server_settings={"search_path": "gophermart"})
    try:
        user_id = await conn.fetchval("SELECT id FROM users WHERE login = $1", login)
        await conn.execute(
            """INSERT INTO orders (number, user_id, uploaded_at)
               SELECT $1 || g, $2, now() - g * interval '1 ms'
               FROM generate_series(1, $3) AS g""",
            f"{user_id}0",
            user_id,
            count,
        )
    finally:
        await conn.close()


@contextmanager
def stalled_reads(
    port: int, token: str, count: int, wait_for_start: bool = True
) -> Iterator[list[socket.socket]]:
    """``count`` list requests whose clients read no more than the status line."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", port))
            sock.sendall(
                f"GET /api/user/orders HTTP/1.1\r\nHost: gophermart\r\n"
                f"Authorization: {token}\r\n\r\n".encode()
            )
            sockets.append(sock)
            if wait_for_start:  # the stream has begun: it holds its slot
                assert sock.recv(12) == b"HTTP/1.1 200"
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def list_lines(system: Stack) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in system.api.log().splitlines() if line.startswith("{")]
    return [
        line
        for line in lines
        if line.get("event") == "request" and line.get("path") == "/api/user/orders"
    ]


def gone(system: Stack) -> list[dict[str, object]]:
    return [line for line in list_lines(system) if line["status"] == 499]


async def test_one_customer_streams_at_most_its_share_and_abandoned_lists_stop(
    start_system: SystemFactory, database_uri: str
) -> None:
    # One API process: LIST_CONCURRENCY counts per process.
    system = await start_system(workers=0, api_env={"API_PROCESSES": "1"})
    hoarder = await system.register("hoarder")
    other = await system.register("other")
    await seed(database_uri, "hoarder", HUGE)
    await seed(database_uri, "other", 1500)
    assert system.api.port is not None

    with stalled_reads(system.api.port, hoarder, 2):
        # Both slots of LIST_CONCURRENCY=2 are held by readers that read nothing
        # more: the customer's next list is refused at once, with Retry-After.
        async with system.http.get(
            f"{system.api_url}/api/user/orders", headers={"Authorization": hoarder}
        ) as response:
            assert response.status == 429, response.status
            assert response.headers["Retry-After"] == "1"
            assert (await response.json())["error"]
        # Another customer is not affected: long and short lists, balance.
        status, orders = await system.get(other, "/api/user/orders")
        assert status == 200 and len(orders) == 1500
        assert (await system.get(other, "/api/user/balance"))[0] == 200

    # The readers hung up: their streams stop early and free their slots.
    await eventually(
        lambda: _true(len(gone(system)) >= 2), within=30, what="both abandoned lists logged as 499"
    )
    assert all(0 < int(str(line["items"])) < HUGE for line in gone(system))
    status, orders = await system.get(hoarder, "/api/user/orders")
    assert status == 200 and len(orders) == HUGE
    assert not [line for line in list_lines(system) if line["status"] == 500]

    # A client that hangs up right after asking: no 200 is logged for it.
    before = len(gone(system))
    with stalled_reads(system.api.port, hoarder, 1, wait_for_start=False):
        pass
    await eventually(
        lambda: _true(len(gone(system)) > before), within=30, what="a hung-up request logged as 499"
    )
    assert int(str(gone(system)[-1].get("items", 0))) < HUGE
    async with system.http.get(f"{system.api_url}/metrics") as response:
        metrics = await response.text()
    assert 'route="/api/user/orders",status="499"' in metrics


async def test_a_client_that_stops_reading_is_cut_off_after_send_timeout(
    start_system: SystemFactory, database_uri: str
) -> None:
    system = await start_system(workers=0, api_env={"SEND_TIMEOUT": "1", "API_PROCESSES": "1"})
    token = await system.register("sleepy")
    await seed(database_uri, "sleepy", HUGE)
    assert system.api.port is not None
    with stalled_reads(system.api.port, token, 2) as sockets:
        await eventually(
            lambda: _true(len(gone(system)) >= 2), within=30, what="stalled readers cut off"
        )
        # The server closed the connections: what was sent ends without the whole list.
        for sock in sockets:
            sock.settimeout(10)
            received = b""
            try:
                while chunk := sock.recv(1 << 20):
                    received += chunk
            except ConnectionResetError:
                pass
            assert not received.endswith(b"]\r\n0\r\n\r\n")
        status, orders = await system.get(token, "/api/user/orders?limit=10")
        assert status == 200 and len(orders) == 10


async def _true(value: bool) -> bool:
    return value
