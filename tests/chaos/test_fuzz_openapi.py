"""Schemathesis against a real ``python -m api`` process and its own /api/openapi.json.

Anonymous and authenticated: no 5xx, and every status, content type, header
and body is one the document declares. ``FUZZ_EXAMPLES`` sets the examples per
operation (``make chaos`` runs many more than the suite's default).
"""

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from tests.helpers import credit, leaked_secrets
from tests.processes import Service, free_port, service_url
from tests.system import SESSION_SECRET

pytestmark = pytest.mark.e2e
pytest.importorskip("schemathesis")  # a dev extra

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "15"))
# Conformance to the document; FUZZ_CHECKS=all adds schemathesis's opinions too.
CHECKS = os.environ.get("FUZZ_CHECKS") or (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_headers_conformance,response_schema_conformance"
)
PASSWORD = "fuzz-pass-6b2d0a"


@pytest.fixture
async def api(database_uri: str, log_dir: Path) -> AsyncIterator[Service]:
    port = free_port()
    service = Service(
        "api",
        "api",
        {
            "DATABASE_URI": database_uri,
            "RUN_ADDRESS": f"127.0.0.1:{port}",
            "SESSION_SECRET": SESSION_SECRET,
            # Event streams end after a second, as documented,
            # instead of outliving the fuzzer's request timeout.
            "EVENTS_MAX_AGE": "1",
        },
        log_dir,
        port=port,
    ).start()
    try:
        yield service
    finally:
        service.stop()


async def schemathesis(
    api: Service, log_dir: Path, *headers: str, options: tuple[str, ...] = ()
) -> str:
    """Run the schemathesis CLI against ``api``; its output. Fails on any finding."""
    assert api.port is not None
    url = service_url(api.port)
    args = [
        str(Path(sys.executable).parent / "schemathesis"),
        "run",
        f"{url}/api/openapi.json",
        "--url",
        url,
        "--checks",
        CHECKS,
        "--max-examples",
        str(EXAMPLES),
        "--seed",
        "20261127",
        "--phases",
        "examples,coverage,fuzzing",
        "--request-timeout",
        "10",
        "--suppress-health-check",
        "all",
        "--workers",
        "1",
        "--report",
        "junit",
        "--report-dir",
        str(log_dir / "schemathesis"),
    ]
    for header in headers:
        args += ["--header", header]
    args += options
    process = await asyncio.create_subprocess_exec(
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "NO_COLOR": "1"},
        cwd=log_dir,
    )  # its cache dir stays out of the tree
    output, _ = await process.communicate()
    text = output.decode(errors="replace")
    assert process.returncode == 0, text[-12000:]
    assert api.running
    return text


def only_401(output: str) -> set[str]:
    """Operations schemathesis reports as answering nothing but 401/403."""
    _, found, rest = output.partition("401 Unauthorized (")
    if not found:
        return set()
    block = rest.split("\n\n", 1)[0]
    return {line.strip()[2:] for line in block.splitlines() if line.strip().startswith("- ")}


@pytest.mark.timeout(180)
async def test_anonymous_fuzzing_finds_no_5xx_and_no_undocumented_answer(
    api: Service, log_dir: Path
) -> None:
    output = await schemathesis(api, log_dir)
    assert "passed" in output.lower()
    assert "GET /api/user/orders" in only_401(output)  # anonymous means anonymous


@pytest.mark.timeout(180)
async def test_authenticated_fuzzing_finds_no_5xx_and_no_undocumented_answer(
    api: Service, log_dir: Path, pool: asyncpg.Pool
) -> None:
    assert api.port is not None
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{service_url(api.port)}/api/user/register",
            json={"login": "fuzzed", "password": PASSWORD},
        ) as response,
    ):
        assert response.status == 200
        token = response.headers["Authorization"]
    # Something to list: a PROCESSED order with points to spend, and a withdrawal.
    await credit(pool, "fuzzed", "1000", "9278923470")
    await pool.execute(
        "INSERT INTO orders (number, user_id) SELECT '12345678903', id"
        " FROM users WHERE login = 'fuzzed'"
    )
    # Logging out would end the credential for every operation fuzzed after it
    # (the anonymous run covers logout).
    output = await schemathesis(
        api, log_dir, f"Authorization: {token}", options=("--exclude-operation-id", "logout")
    )
    assert "passed" in output.lower()
    # The credential really got the fuzzer past authentication (a password change
    # answers 403 to every guess at the current password).
    assert only_401(output) <= {"POST /api/user/login", "POST /api/user/password"}, output
    logs = {"api": api.log()}
    assert leaked_secrets(logs, [PASSWORD, SESSION_SECRET, token.removeprefix("Bearer ")]) == []
