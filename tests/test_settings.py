"""Configuration: env wins over flag wins over default; addresses in any form."""

import subprocess
import sys

import pytest

from shared.settings import ApiSettings, WorkerSettings, load, split_host_port, with_scheme


def test_defaults() -> None:
    settings = load(ApiSettings, [], {})
    assert settings.run_address == "localhost:8080"
    assert settings.database_uri is None
    assert settings.accrual_system_address is None


def test_flag_wins_over_default_and_env_over_flag() -> None:
    argv = ["-a", "0.0.0.0:9000", "-d", "postgresql://flag", "-r", "flag:1"]
    assert load(ApiSettings, argv, {}).run_address == "0.0.0.0:9000"
    env = {"RUN_ADDRESS": "127.0.0.1:7000", "DATABASE_URI": "postgresql://env"}
    settings = load(ApiSettings, argv, env)
    assert settings.run_address == "127.0.0.1:7000"
    assert settings.database_uri == "postgresql://env"
    assert settings.accrual_system_address == "flag:1"


def test_typed_values_from_env() -> None:
    env = {"WORKER_CONCURRENCY": "7", "WORKER_LEASE": "2.5", "LOG_LEVEL": "debug"}
    settings = load(WorkerSettings, [], env)
    assert settings.worker_concurrency == 7 and settings.worker_lease == 2.5
    assert load(ApiSettings, [], {"COOKIE_SECURE": "true"}).cookie_secure is True


def test_unreadable_value_is_a_usage_error() -> None:
    with pytest.raises(SystemExit):
        load(WorkerSettings, [], {"WORKER_CONCURRENCY": "many"})


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("localhost:8081", "http://localhost:8081"),
        ("http://localhost:8081/", "http://localhost:8081"),
        ("https://accrual.example:443", "https://accrual.example:443"),
    ],
)
def test_accrual_address_with_or_without_scheme(given: str, expected: str) -> None:
    assert with_scheme(given) == expected


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("localhost:8080", ("127.0.0.1", 8080)),
        (":9000", ("0.0.0.0", 9000)),
        ("0.0.0.0:80", ("0.0.0.0", 80)),
        ("[::1]:8080", ("::1", 8080)),
        ("http://localhost:1234/", ("127.0.0.1", 1234)),
    ],
)
def test_listen_address_forms(given: str, expected: tuple[str, int]) -> None:
    assert split_host_port(given) == expected


def test_help_lists_every_setting() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "api", "-h"], capture_output=True, text=True, check=True
    ).stdout
    for env in (
        "RUN_ADDRESS",
        "DATABASE_URI",
        "ACCRUAL_SYSTEM_ADDRESS",
        "SESSION_SECRET",
        "SESSION_TTL",
        "LOG_LEVEL",
        "LOG_FORMAT",
        "MAX_BODY_BYTES",
        "DB_POOL_MAX",
    ):
        assert env in out
    for flag in ("-a", "-d", "-r"):
        assert f"{flag} " in out
