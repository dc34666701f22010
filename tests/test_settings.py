"""Configuration: env wins over flag wins over default; addresses in any form."""

import os
import subprocess
import sys

import pytest

from shared.settings import (
    ApiSettings,
    StackSettings,
    WorkerSettings,
    load,
    require,
    split_host_port,
    with_scheme,
)


def test_defaults() -> None:
    settings = load(ApiSettings, [], {})
    assert settings.run_address == "localhost:8080"
    assert settings.database_uri is None
    assert load(WorkerSettings, [], {}).accrual_system_address is None


def test_flag_wins_over_default_and_env_over_flag() -> None:
    argv = ["-a", "0.0.0.0:9000", "-d", "postgresql://flag"]
    assert load(ApiSettings, argv, {}).run_address == "0.0.0.0:9000"
    env = {"RUN_ADDRESS": "127.0.0.1:7000", "DATABASE_URI": "postgresql://env"}
    settings = load(ApiSettings, argv, env)
    assert settings.run_address == "127.0.0.1:7000"
    assert settings.database_uri == "postgresql://env"
    worker = load(WorkerSettings, ["-d", "postgresql://flag", "-r", "flag:1"], env)
    assert (worker.database_uri, worker.accrual_system_address) == ("postgresql://env", "flag:1")


def test_the_accrual_address_is_the_workers_alone() -> None:
    assert load(StackSettings, ["-r", "flag:1"], {}).accrual_system_address == "flag:1"
    assert not hasattr(load(ApiSettings, [], {}), "accrual_system_address")
    with pytest.raises(SystemExit):
        load(ApiSettings, ["-r", "flag:1"], {})


@pytest.mark.parametrize(
    ("argv", "environ", "expected"),
    [
        ([], {}, False),
        (["--cookie-secure"], {}, True),
        (["--cookie-secure", "-a", ":1"], {}, True),
        (["--cookie-secure", "false"], {}, False),
        (["--cookie-secure=no"], {}, False),
        (["--cookie-secure", "ON"], {}, True),
        ([], {"COOKIE_SECURE": "true"}, True),
        ([], {"COOKIE_SECURE": "1"}, True),
        ([], {"COOKIE_SECURE": "off"}, False),
        ([], {"COOKIE_SECURE": ""}, False),
        (["--cookie-secure"], {"COOKIE_SECURE": "0"}, False),
        (["--cookie-secure", "no"], {"COOKIE_SECURE": "yes"}, True),
    ],
)
def test_a_boolean_flag_alone_means_true_and_takes_a_value_like_its_env_var(
    argv: list[str], environ: dict[str, str], expected: bool
) -> None:
    assert load(ApiSettings, argv, environ).cookie_secure is expected


@pytest.mark.parametrize(
    ("argv", "environ", "named"),
    [
        (["--cookie-secure", "maybe"], {}, "--cookie-secure: cannot read 'maybe'"),
        ([], {"COOKIE_SECURE": "maybe"}, "COOKIE_SECURE: cannot read 'maybe'"),
    ],
)
def test_a_boolean_that_is_neither_is_a_usage_error_naming_where_it_came_from(
    capsys: pytest.CaptureFixture[str], argv: list[str], environ: dict[str, str], named: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        load(ApiSettings, argv, environ)
    assert exited.value.code == 2
    assert f"{named} (true/false, yes/no, on/off or 1/0)" in capsys.readouterr().err


def test_required_settings_are_named_with_their_flags() -> None:
    settings = load(WorkerSettings, [], {})
    with pytest.raises(SystemExit) as exited:
        require(settings, "database_uri", "accrual_system_address", prog="prog")
    assert str(exited.value) == (
        "prog: DATABASE_URI (-d) and ACCRUAL_SYSTEM_ADDRESS (-r) must be set"
    )
    with pytest.raises(SystemExit) as exited:
        require(load(ApiSettings, [], {"MAX_BODY_BYTES": "0"}), "max_body_bytes", prog="p")
    assert str(exited.value) == "p: MAX_BODY_BYTES must be set"
    require(load(ApiSettings, ["-d", "postgresql://x/y"], {}), "database_uri", prog="p")


def test_the_api_refuses_to_start_without_a_database() -> None:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URI"}
    done = subprocess.run(
        [sys.executable, "-m", "api"], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == "gophermart-api: DATABASE_URI (-d) must be set"


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


def _help(module: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", module, "-h"], capture_output=True, text=True, check=True
    ).stdout


def test_help_lists_every_setting() -> None:
    out = _help("api")
    for env in (
        "RUN_ADDRESS",
        "DATABASE_URI",
        "SESSION_SECRET",
        "SESSION_TTL",
        "LOG_LEVEL",
        "LOG_FORMAT",
        "MAX_BODY_BYTES",
        "DB_POOL_MAX",
    ):
        assert env in out
    for flag in ("-a", "-d"):
        assert f"{flag} " in out
    assert "--cookie-secure [COOKIE_SECURE]" in out  # the value is optional
    assert "ACCRUAL_SYSTEM_ADDRESS" not in out and "-r " not in out
    worker = _help("worker")
    assert "-r ACCRUAL_SYSTEM_ADDRESS" in worker and "-d DATABASE_URI" in worker
