"""The API's edge against a real ``python -m api`` process, over raw sockets.

What only a real process shows: what aiohttp's HTTP parser does with broken
bytes, connection caps and file descriptors, deadlines on slow clients, the
process's own log, throttles shared by several processes, the start-up check
of SESSION_SECRET, and the ops address.
"""

import asyncio
import contextlib
import gzip
import json
import random
import resource
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from tests.helpers import leaked_secrets
from tests.processes import Service, free_port, service_url
from tests.system import SESSION_SECRET

pytestmark = pytest.mark.e2e

PASSWORD = "edge-pass-5c0ffee1"
ApiFactory = Callable[..., Awaitable[Service]]


@pytest.fixture
async def start_api(database_uri: str, log_dir: Path) -> AsyncIterator[ApiFactory]:
    started: list[Service] = []

    async def start(name: str = "api", nofile: int | None = None, **env: str) -> Service:
        port = free_port()

        def limit() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        service = Service(
            name,
            "api",
            {
                "DATABASE_URI": database_uri,
                "RUN_ADDRESS": f"127.0.0.1:{port}",
                "SESSION_SECRET": SESSION_SECRET,
                "REGISTER_MAX_PER_ADDRESS": "0",
                # Caps and limits here are per process: one.
                "API_PROCESSES": "1",
                **env,
            },
            log_dir,
            port=port,
            preexec=limit,
        )
        await asyncio.to_thread(service.start)
        started.append(service)
        return service

    yield start
    for service in started:
        if service.running:
            service.stop()


async def sign_up(api: Service, login: str, source: str = "127.0.0.1") -> str:
    """Register ``login`` from ``source``; the bearer token handed out."""
    assert api.port is not None
    connector = aiohttp.TCPConnector(local_addr=(source, 0))
    async with (
        aiohttp.ClientSession(connector=connector) as http,
        http.post(
            f"{service_url(api.port)}/api/user/register",
            json={"login": login, "password": PASSWORD},
        ) as response,
    ):
        assert response.status == 200, await response.text()
        return response.headers["Authorization"].removeprefix("Bearer ")


# --- raw HTTP ----------------------------------------------------------------------


@dataclass
class Answer:
    status: int | None  # None: closed without answering
    headers: dict[str, str]
    body: bytes
    raw: bytes


def exchange(port: int, data: bytes, source: str = "127.0.0.1", timeout: float = 10.0) -> Answer:
    """Send raw bytes, read until the server closes (or ``timeout``); the first answer."""
    with socket.create_connection(
        ("127.0.0.1", port), timeout=timeout, source_address=(source, 0)
    ) as sock:
        with contextlib.suppress(OSError):  # the server may close before reading it all
            sock.sendall(data)
        raw = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            raw += chunk
    return parse_answer(raw)


def parse_answer(raw: bytes) -> Answer:
    if not raw:
        return Answer(None, {}, b"", raw)
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", len(rest)))
    return Answer(int(lines[0].split()[1]), headers, rest[:length], raw)


def request(
    method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b""
) -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Connection: close",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    if body and not any(
        k.lower() in ("content-length", "transfer-encoding") for k in headers or {}
    ):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def malformed(token: str) -> list[tuple[str, bytes]]:
    """Requests the HTTP parser, content decoding or text decoding must refuse.

    Most carry the token, the cookie or the password where a careless error
    message or log line would repeat it.
    """
    auth = f"Authorization: Bearer {token}"
    cookie = f"Cookie: gophermart_session={token}"
    creds = json.dumps({"login": "edge", "password": PASSWORD}).encode()
    json_type = {"Content-Type": "application/json"}
    return [
        (
            "nul in a header",
            f"GET /api/user/balance HTTP/1.1\r\nHost: x\r\n{auth}\x00\r\n\r\n".encode(),
        ),
        (
            "header line without colon",
            f"GET /api/user/balance HTTP/1.1\r\nHost: x\r\nBearer {token}\r\n\r\n".encode(),
        ),
        (
            "space before colon",
            f"GET /api/user/balance HTTP/1.1\r\nHost: x\r\n"
            f"Authorization : Bearer {token}\r\n\r\n".encode(),
        ),
        (
            "folded header",
            f"GET /api/user/balance HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n {auth}\r\n\r\n".encode(),
        ),
        (
            "header line too long",
            f"GET /api/user/balance HTTP/1.1\r\nHost: x\r\n{cookie}{'a' * 9000}\r\n\r\n".encode(),
        ),
        (
            "request line too long",
            f"GET /api/user/orders?t={token}{'b' * 9000} HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
        ),
        (
            "control char in target",
            f"GET /api/user/orders?t={token}\x7f HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
        ),
        ("bad method", f"G@T /api/user/balance HTTP/1.1\r\nHost: x\r\n{auth}\r\n\r\n".encode()),
        ("bad version", f"GET /api/user/balance HTTP/9.9\r\nHost: x\r\n{auth}\r\n\r\n".encode()),
        ("tls hello", bytes.fromhex("16030100a5010000a10303") + token.encode() + b"\r\n\r\n"),
        ("binary garbage", bytes(range(256)) + b"\r\n\r\n"),
        (
            "negative content length",
            request("POST", "/api/user/login", {**json_type, "Content-Length": "-5"}, creds),
        ),
        (
            "two content lengths",
            request(
                "POST",
                "/api/user/login",
                {**json_type, "Content-Length": f"{len(creds)}, 1"},
                creds,
            ),
        ),
        (
            "length and chunked",
            b"POST /api/user/login HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 5\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + creds,
        ),
        (
            "bad chunk size",
            request(
                "POST",
                "/api/user/login",
                {**json_type, "Transfer-Encoding": "chunked"},
                b"zz\r\n" + creds + b"\r\n0\r\n\r\n",
            ),
        ),
        (
            "bad gzip",
            request("POST", "/api/user/login", {**json_type, "Content-Encoding": "gzip"}, creds),
        ),
        (
            "bad deflate",
            request("POST", "/api/user/login", {**json_type, "Content-Encoding": "deflate"}, creds),
        ),
        (
            "gzip bomb",
            request(
                "POST",
                "/api/user/login",
                {**json_type, "Content-Encoding": "gzip"},
                gzip.compress(b" " * 10_000_000 + creds),
            ),
        ),
        (
            "gzip cut short",
            request(
                "POST",
                "/api/user/login",
                {**json_type, "Content-Encoding": "gzip"},
                gzip.compress(creds)[:20],
            ),
        ),
        (
            "invalid utf-8",
            request("POST", "/api/user/login", json_type, creds.replace(b"edge", b"\xff\xfe")),
        ),
        (
            "utf-16 charset",
            request(
                "POST",
                "/api/user/login",
                {"Content-Type": "application/json; charset=utf-16"},
                creds.decode().encode("utf-16"),
            ),
        ),
        (
            "unknown charset",
            request(
                "POST",
                "/api/user/login",
                {"Content-Type": "application/json; charset=x-unknown"},
                creds,
            ),
        ),
        ("truncated json", request("POST", "/api/user/login", json_type, creds[:-3])),
        (
            "deep json",
            request(
                "POST",
                "/api/user/login",
                json_type,
                b'{"login": ' + b"[" * 30000 + b"]" * 30000 + b"}",
            ),
        ),
        (
            "form post",
            request(
                "POST",
                "/api/user/login",
                {"Content-Type": "application/x-www-form-urlencoded"},
                creds,
            ),
        ),
        (
            "bad cookie",
            request(
                "GET", "/api/user/balance", {"Cookie": f"gophermart_session={token[:-4]}\x01; x"}
            ),
        ),
        (
            "garbage bearer",
            request("GET", "/api/user/balance", {"Authorization": "Bearer \x01" + token[::-1]}),
        ),
        ("bad percent in path", request("GET", f"/api/user/%zz{token}")),
        ("absolute form with userinfo", request("GET", f"http://u:{token}@x/api/user/balance")),
        (
            "unknown expectation",
            request(
                "POST",
                "/api/user/orders",
                {"Authorization": f"Bearer {token}", "Expect": token, "Content-Type": "text/plain"},
                b"12345678903",
            ),
        ),
        (
            "unknown expectation, unknown path",
            request("GET", "/nowhere", {"Expect": f"x={PASSWORD}"}),
        ),
    ]


def assert_quiet_4xx(name: str, answer: Answer, secrets: list[str]) -> None:
    assert answer.status is not None, f"{name}: no answer"
    assert 400 <= answer.status < 500, f"{name}: {answer.raw[:300]!r}"
    assert answer.headers.get("content-type", "").startswith("application/json"), (
        f"{name}: {answer.raw[:300]!r}"
    )
    assert json.loads(answer.body)["error"], name
    assert answer.headers.get("server") == "gophermart", name
    for secret in secrets:
        assert secret.encode() not in answer.raw, f"{name}: echoes a secret"


def assert_clean_log(api: Service, secrets: list[str]) -> None:
    text = api.log()
    leaks = leaked_secrets({"api": text}, secrets)
    assert leaks == [], [
        line for line in text.splitlines() if any(secret in line for _, secret in leaks)
    ]
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert lines, "the API logged nothing"
    bad = [
        line
        for line in lines
        if line.get("level") in ("error", "critical")
        or "exception" in line
        or line.get("event") == "database unavailable"
    ]
    assert bad == [], json.dumps(bad)[:4000]


async def test_malformed_http_gets_a_quiet_json_4xx_and_leaves_no_secret_in_the_log(
    start_api: ApiFactory,
) -> None:
    api = await start_api(BODY_TIMEOUT="2", HEADER_TIMEOUT="2")
    token = await sign_up(api, "edge")
    assert api.port is not None
    secrets = [token, PASSWORD, SESSION_SECRET, token[:40]]
    for name, data in malformed(token):
        answer = await asyncio.to_thread(exchange, api.port, data)
        assert_quiet_4xx(name, answer, secrets)
    assert_clean_log(api, secrets)


async def test_randomly_mutated_requests_never_get_a_5xx_or_leak(start_api: ApiFactory) -> None:
    api = await start_api(BODY_TIMEOUT="1", HEADER_TIMEOUT="1")
    token = await sign_up(api, "mutant")
    assert api.port is not None
    creds = json.dumps({"login": "mutant", "password": PASSWORD}).encode()
    seeds = [
        request(
            "POST",
            "/api/user/login",
            {"Content-Type": "application/json", "Cookie": f"gophermart_session={token}"},
            creds,
        ),
        request(
            "POST",
            "/api/user/orders",
            {"Authorization": f"Bearer {token}", "Content-Type": "text/plain"},
            b"12345678903",
        ),
        request(
            "POST",
            "/api/user/balance/withdraw",
            {
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/json",
                "Content-Encoding": "gzip",
            },
            gzip.compress(b'{"order": "2377225624", "sum": 1}'),
        ),
    ]
    rng = random.Random(20261127)

    def mutate(data: bytes) -> bytes:
        out = bytearray(data)
        for _ in range(rng.randint(1, 6)):
            spot = rng.randrange(len(out))
            choice = rng.random()
            if choice < 0.4:
                out[spot] = rng.randrange(256)
            elif choice < 0.6:
                del out[spot : spot + rng.randint(1, 20)]
            elif choice < 0.8:
                out[spot:spot] = rng.choice(
                    [
                        b"\r\n",
                        b"\x00",
                        b":",
                        b" ",
                        b"\xff",
                        b"%",
                        b"chunked",
                        b"gzip",
                        b"\r\n\r\n",
                        b"9" * 12,
                    ]
                )
            else:
                out[spot:spot] = bytes(out[spot : spot + rng.randint(1, 40)])
        return bytes(out)

    cases = [mutate(rng.choice(seeds)) for _ in range(150)]
    answers = await asyncio.gather(*(asyncio.to_thread(exchange, api.port, case) for case in cases))
    secrets = [token, PASSWORD, SESSION_SECRET]
    for case, answer in zip(cases, answers, strict=True):
        if answer.status is None:  # an unfinished head: closed at its deadline, unanswered
            continue
        assert answer.status < 500, (case, answer.raw[:300])
        assert answer.headers.get("content-type", "").startswith("application/json"), (
            case,
            answer.raw[:300],
        )
        if answer.status >= 400:
            for secret in secrets:
                assert secret.encode() not in answer.raw, case
    assert_clean_log(api, secrets)


# --- slow and idle clients --------------------------------------------------------


def closed_within(sock: socket.socket, seconds: float, drip: bytes = b"") -> bool:
    """True when the server closes ``sock`` within ``seconds`` while we drip bytes."""
    deadline = time.monotonic() + seconds
    sock.settimeout(0.3)
    while time.monotonic() < deadline:
        try:
            if drip:
                sock.send(drip)
            if sock.recv(65536) == b"":
                return True
        except TimeoutError:
            continue
        except OSError:
            return True
    return False


async def test_a_head_dripped_byte_by_byte_is_cut_off_and_idle_connections_closed(
    start_api: ApiFactory,
) -> None:
    api = await start_api(HEADER_TIMEOUT="1", KEEPALIVE_TIMEOUT="2")
    assert api.port is not None

    def slowloris() -> bool:
        with socket.create_connection(("127.0.0.1", api.port)) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            return closed_within(sock, 15, drip=b"X")

    def silent() -> bool:
        with socket.create_connection(("127.0.0.1", api.port)) as sock:
            return closed_within(sock, 15)

    def idle_after_an_answer() -> bool:
        with socket.create_connection(("127.0.0.1", api.port)) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            sock.settimeout(5)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            return closed_within(sock, 15)

    # Without the deadline each of these would be held for as long as it dripped.
    assert await asyncio.to_thread(slowloris)
    assert await asyncio.to_thread(silent)
    assert await asyncio.to_thread(idle_after_an_answer)


async def test_a_slow_body_gets_408_and_a_hang_up_mid_body_is_no_database_outage(
    start_api: ApiFactory,
) -> None:
    api = await start_api(BODY_TIMEOUT="1", HEADER_TIMEOUT="5")
    token = await sign_up(api, "slowbody")
    assert api.port is not None
    head = request(
        "POST",
        "/api/user/orders",
        {"Authorization": f"Bearer {token}", "Content-Type": "text/plain", "Content-Length": "11"},
    )
    slow = await asyncio.to_thread(exchange, api.port, head + b"1234")
    assert slow.status == 408

    def hang_up() -> None:
        for _ in range(20):
            with socket.create_connection(("127.0.0.1", api.port)) as sock:
                sock.sendall(head + b"1234")
                time.sleep(0.05)
                sock.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )  # RST on close

    await asyncio.to_thread(hang_up)
    await asyncio.sleep(0.5)
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{service_url(api.port)}/metrics") as response,
    ):
        metrics = await response.text()
    assert 'status="503"' not in metrics
    assert_clean_log(api, [token, PASSWORD])


# --- connection caps and file descriptors ---------------------------------------------


@contextmanager
def held_connections(port: int, source: str, count: int) -> Iterator[list[Answer]]:
    """Open ``count`` idle connections from ``source``; the answers of those refused."""
    refused: list[Answer] = []
    with ExitStack() as stack:
        for _ in range(count):
            sock = stack.enter_context(
                socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
            )
            sock.settimeout(0.05)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue  # held open by the server
            sock.settimeout(5)
            while chunk := sock.recv(65536):
                data += chunk
            refused.append(parse_answer(data))
        yield refused


async def test_connection_caps_keep_file_descriptors_for_everyone_else(
    start_api: ApiFactory,
) -> None:
    # 256 descriptors: the automatic cap leaves 128 for clients, 32 per address here.
    api = await start_api(
        nofile=256, MAX_CONNECTIONS_PER_ADDRESS="32", HEADER_TIMEOUT="60", KEEPALIVE_TIMEOUT="60"
    )
    assert api.port is not None
    port = api.port

    def flood(sources: list[str], count: int) -> tuple[list[Answer], Answer]:
        with ExitStack() as stack:
            refused = [
                answer
                for source in sources
                for answer in stack.enter_context(held_connections(port, source, count))
            ]
            # Meanwhile a client from a quiet address is served, database included.
            served = exchange(
                port,
                request(
                    "POST",
                    "/api/user/register",
                    {"Content-Type": "application/json"},
                    json.dumps({"login": f"quiet-{len(refused)}", "password": PASSWORD}).encode(),
                ),
                source="127.0.0.200",
            )
            return refused, served

    # One address holding 300 connections keeps 32; the rest are told 429.
    refused, served = await asyncio.to_thread(flood, ["127.0.0.2"], 300)
    assert len(refused) == 300 - 32
    assert {answer.status for answer in refused} == {429}
    assert served.status == 200
    # Many addresses: the process cap (128) turns the rest away with 503, and
    # nothing runs out of descriptors.
    refused, served = await asyncio.to_thread(flood, [f"127.0.1.{i}" for i in range(1, 9)], 32)
    assert {answer.status for answer in refused} == {503}
    assert len(refused) == 8 * 32 - 128
    assert all(answer.headers.get("retry-after") == "1" for answer in refused)
    assert served.status == 503  # full is full, but promptly, in JSON
    # Once they leave, everyone is served again.
    await asyncio.sleep(0.5)
    after = await asyncio.to_thread(exchange, port, request("GET", "/healthz"), "127.0.0.200")
    assert after.status == 200
    assert "Too many open files" not in api.log()
    assert_clean_log(api, [PASSWORD])


async def test_a_refused_oversize_body_frees_its_connection_slot_at_once(
    start_api: ApiFactory,
) -> None:
    # Two connections per address: were a refused connection held while aiohttp
    # lingers for the body it will never read (10 s), the third would be told 429.
    api = await start_api(MAX_CONNECTIONS_PER_ADDRESS="2", HEADER_TIMEOUT="60")
    assert api.port is not None
    port = api.port
    oversize = (
        b"POST /api/user/register HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nContent-Length: 100000000\r\n\r\n{"
    )

    def refused_then_served() -> tuple[list[Answer], Answer]:
        answers = []
        with ExitStack() as stack:
            for _ in range(4):  # each kept open on this side, body never sent
                sock = stack.enter_context(
                    socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.3", 0))
                )
                sock.sendall(oversize)
                # Read to the server's end of the connection. The bound is about
                # correctness, not speed: the close must follow the answer, not
                # aiohttp's 10 s linger; 5 s is generous on a loaded machine.
                sock.settimeout(5)
                raw = b""
                while chunk := sock.recv(65536):
                    raw += chunk
                answers.append(parse_answer(raw))
            served = exchange(port, request("GET", "/healthz"), source="127.0.0.3")
        return answers, served

    answers, served = await asyncio.to_thread(refused_then_served)
    assert [answer.status for answer in answers] == [413] * 4
    assert all(answer.headers.get("connection") == "close" for answer in answers)
    assert served.status == 200


# --- several processes share one throttle ----------------------------------------------


async def test_guesses_spread_over_two_processes_share_one_budget(start_api: ApiFactory) -> None:
    first = await start_api("api-1", LOGIN_MAX_FAILURES="10")
    second = await start_api("api-2", LOGIN_MAX_FAILURES="10")
    await sign_up(first, "target")
    assert first.port is not None and second.port is not None
    urls = [service_url(first.port), service_url(second.port)]
    # Within the per-address connection cap (64) of each process.
    connector = aiohttp.TCPConnector(limit_per_host=40)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def guess(i: int) -> int:
            async with http.post(
                f"{urls[i % 2]}/api/user/login", json={"login": "target", "password": f"guess-{i}"}
            ) as response:
                return response.status

        statuses = await asyncio.gather(*(guess(i) for i in range(300)))
    # Three free attempts and the one that starts the delays (one more per delay
    # that passes while the 300 arrive), fleet-wide: never past the budget of 10.
    assert 4 <= statuses.count(401) <= 10
    assert statuses.count(401) + statuses.count(429) == 300


# --- start-up and ops address -------------------------------------------------------------


def test_a_weak_session_secret_stops_the_start(database_uri: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "api"],
        capture_output=True,
        timeout=60,
        env={
            "DATABASE_URI": database_uri,
            "RUN_ADDRESS": "127.0.0.1:0",
            "SESSION_SECRET": "changeme",
            "PATH": "/usr/bin:/bin",
        },
    )
    assert done.returncode != 0
    assert b"SESSION_SECRET is too weak: use at least 32 characters" in done.stderr


async def test_metrics_and_detailed_readiness_move_to_the_ops_address(
    start_api: ApiFactory,
) -> None:
    ops_port = free_port()
    api = await start_api(OPS_ADDRESS=f"127.0.0.1:{ops_port}")
    assert api.port is not None
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{service_url(api.port)}/metrics") as response:
            assert response.status == 404
        async with http.get(f"{service_url(api.port)}/readyz") as response:
            assert await response.json() == {"status": "ready"}
        async with http.get(f"{service_url(ops_port)}/metrics") as response:
            assert response.status == 200
            assert "gophermart_http_requests_total" in await response.text()
            assert response.headers["Server"] == "gophermart"
        async with http.get(f"{service_url(ops_port)}/readyz") as response:
            assert await response.json() == {"status": "ready"}
