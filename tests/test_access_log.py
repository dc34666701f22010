"""One access-log line per request, with context; secrets never logged."""

import json
from pathlib import Path

from aiohttp.test_utils import TestClient

from tests.helpers import register


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


async def test_each_request_logs_one_line_with_id_status_latency_and_user(
    client: TestClient, captured_logs: Path
) -> None:
    token = await register(client, "logged", "hunter2-password")
    response = await client.get(
        "/api/user/balance", headers={"Authorization": token, "X-Request-ID": "trace-123"}
    )
    assert response.status == 200
    access = [
        line
        for line in _lines(captured_logs)
        if line.get("event") == "request" and line.get("request_id") == "trace-123"
    ]
    assert len(access) == 1
    line = access[0]
    assert line["method"] == "GET" and line["path"] == "/api/user/balance"
    assert line["status"] == 200 and isinstance(line["latency_ms"], float)
    assert isinstance(line["user_id"], int)
    assert {"timestamp", "level", "logger"} <= line.keys()
    text = captured_logs.read_text()
    assert "hunter2-password" not in text
    assert token.removeprefix("Bearer ") not in text


def test_bound_secret_keys_are_redacted(captured_logs: Path) -> None:
    import structlog

    structlog.get_logger("test").warning("careless", password="p@ss-in-log", token="tok-x")
    text = captured_logs.read_text()
    assert "careless" in text
    assert "p@ss-in-log" not in text and "tok-x" not in text
