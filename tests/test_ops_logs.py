"""JSON logs for operations: one object per line with stable keys."""

import json
import logging
from datetime import UTC, datetime
from decimal import Decimal

import pytest
import structlog

from shared.logs import MAX_TRACEBACK_CHARS, MAX_VALUE_CHARS, configure


@pytest.fixture
def json_logs(capsys: pytest.CaptureFixture[str]) -> pytest.CaptureFixture[str]:
    """Standard error, captured; conftest's ``logging_restored`` undoes ``configure``."""
    return capsys


def configure_json() -> None:
    # Inside the test: the handler binds the sys.stderr capsys captures then.
    configure("info", "json")


def lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    return [json.loads(line) for line in capsys.readouterr().err.splitlines() if line]


def test_a_structlog_event_is_one_json_line_with_stable_keys(
    json_logs: pytest.CaptureFixture[str],
) -> None:
    configure_json()
    structlog.contextvars.bind_contextvars(request_id="r-1")
    structlog.get_logger("api.orders").info(
        "order uploaded", order="12345678903", password="hunter2"
    )
    [entry] = lines(json_logs)
    assert entry["event"] == "order uploaded"
    assert entry["level"] == "info"
    assert entry["logger"] == "api.orders"
    assert entry["request_id"] == "r-1"
    assert entry["order"] == "12345678903"
    assert entry["password"] == "[redacted]"
    timestamp = datetime.fromisoformat(str(entry["timestamp"]))
    assert timestamp.utcoffset() == UTC.utcoffset(None)


def test_standard_library_records_get_the_same_keys(json_logs: pytest.CaptureFixture[str]) -> None:
    configure_json()
    structlog.contextvars.bind_contextvars(request_id="r-2")
    logging.getLogger("asyncpg.pool").warning("connection lost")
    logging.getLogger("noisy").debug("below the level")
    [entry] = lines(json_logs)
    assert {"timestamp", "level", "event", "logger", "request_id"} <= entry.keys()
    assert (entry["level"], entry["logger"], entry["event"]) == (
        "warning",
        "asyncpg.pool",
        "connection lost",
    )


def test_exceptions_are_rendered_inside_the_json_line(
    json_logs: pytest.CaptureFixture[str],
) -> None:
    configure_json()
    try:
        raise ValueError("bad")
    except ValueError:
        structlog.get_logger("api").exception("unhandled error")
    [entry] = lines(json_logs)
    assert entry["level"] == "error"
    assert "ValueError: bad" in str(entry["exception"])


def test_money_is_an_exact_json_number_in_every_log_line(
    json_logs: pytest.CaptureFixture[str],
) -> None:
    configure_json()
    structlog.contextvars.bind_contextvars(balance=Decimal("0.10"))
    structlog.get_logger("worker.loop").info(
        "order status changed",
        accrual=Decimal("700.00"),
        big=Decimal("9999999999999999.99"),
        odd=Decimal("NaN"),
        nested={"sum": Decimal("1E+2")},
    )
    logging.getLogger("stdlib").warning("through the standard library too")
    raw, stdlib_line = json_logs.readouterr().err.splitlines()
    assert '"accrual":700.00' in raw and "Decimal(" not in raw
    entry = json.loads(raw, parse_float=Decimal)
    assert entry["accrual"] == Decimal("700.00")
    assert entry["big"] == Decimal("9999999999999999.99")  # exact: no float on the way
    assert entry["balance"] == Decimal("0.10")
    assert entry["nested"] == {"sum": 100}
    assert entry["odd"] == "NaN"  # JSON has no NaN: text, and the line still parses
    assert json.loads(stdlib_line)["balance"] == 0.1


def test_other_unknown_values_are_their_repr_not_a_lost_line(
    json_logs: pytest.CaptureFixture[str],
) -> None:
    configure_json()
    structlog.get_logger("x").info("odd value", what=object)
    [entry] = lines(json_logs)
    assert entry["what"] == "<class 'object'>"


def test_every_value_is_cut_to_a_bounded_size_ours_and_other_libraries(
    json_logs: pytest.CaptureFixture[str],
) -> None:
    configure_json()
    structlog.contextvars.bind_contextvars(path="/" + "p" * 10_000)
    structlog.get_logger("api.access").info("request", method="G" * 5_000, status=404)
    logging.getLogger("aiohttp.server").warning("bad request line %s", "q" * 10_000)
    try:
        raise ValueError("v" * 100_000)
    except ValueError:
        structlog.get_logger("api").exception("unhandled error")
    ours, theirs, failed = lines(json_logs)
    assert ours["path"] == "/" + "p" * (MAX_VALUE_CHARS - 1) + "…[+9489 chars]"
    assert str(ours["method"]).endswith("…[+4488 chars]") and ours["status"] == 404
    assert str(theirs["event"]).endswith(f"…[+{10_000 + 17 - MAX_VALUE_CHARS} chars]")
    assert len(str(failed["exception"])) < MAX_TRACEBACK_CHARS + 32
    assert "ValueError" in str(failed["exception"])
