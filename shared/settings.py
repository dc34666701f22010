"""Configuration: environment wins over a flag, a flag wins over the default.

Each setting is a dataclass field whose metadata names its env var and flags;
``load`` builds the argparse parser from the fields, so ``-h`` always lists
every setting and there is no second list to drift.
"""

import argparse
import dataclasses
import os
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


def setting(default: Any, env: str, *flags: str, help: str) -> Any:
    """Declare one setting: its default, env var, flags and help text."""
    return dataclasses.field(default=default, metadata={"env": env, "flags": flags, "help": help})


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _converter(hint: Any) -> Any:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        inner = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return _converter(inner[0])
    if hint is bool:
        return _parse_bool
    return hint


def load(
    cls: type[T],
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    prog: str | None = None,
) -> T:
    """Build ``cls`` from flags and environment; exits with usage on bad input."""
    environ = os.environ if environ is None else environ
    hints = typing.get_type_hints(cls)
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(cls.__doc__ or "").strip(),
        epilog="Every setting can also come from its environment variable, which wins.",
    )
    fields = [f for f in dataclasses.fields(cls) if "env" in f.metadata]  # type: ignore[arg-type]
    flags = {f.name: f.metadata["flags"] or (f"--{f.name.replace('_', '-')}",) for f in fields}
    for field in fields:
        env = field.metadata["env"]
        # A boolean flag alone means true (``--seed-demo``); it also takes a value
        # (``--seed-demo false``), read like its env var.
        boolean = _converter(hints[field.name]) is _parse_bool
        parser.add_argument(
            *flags[field.name],
            dest=field.name,
            metavar=env,
            default=None,
            nargs="?" if boolean else None,
            const="true" if boolean else None,
            help=f"{field.metadata['help']} [env {env}; default {field.default!r}]",
        )
    args = parser.parse_args(argv)
    values: dict[str, Any] = {}
    for field in fields:
        raw, source = environ.get(field.metadata["env"]), field.metadata["env"]
        if raw is None:
            raw, source = getattr(args, field.name), "/".join(flags[field.name])
        if raw is None:
            continue
        convert = _converter(hints[field.name])
        try:
            values[field.name] = convert(raw)
        except ValueError:
            expected = " (true/false, yes/no, on/off or 1/0)" if convert is _parse_bool else ""
            parser.error(f"{source}: cannot read {raw!r}{expected}")
    return cls(**values)


def require(settings: object, *names: str, prog: str) -> None:
    """Exit with a message naming every one of ``names`` left unset, with its flag."""
    fields = {field.name: field for field in dataclasses.fields(settings)}  # type: ignore[arg-type]
    missing = []
    for name in names:
        if not getattr(settings, name):
            env, flags = fields[name].metadata["env"], fields[name].metadata["flags"]
            missing.append(f"{env} ({', '.join(flags)})" if flags else env)
    if missing:
        raise SystemExit(f"{prog}: {' and '.join(missing)} must be set")


def with_scheme(address: str) -> str:
    """``host:port`` or ``http://host:port/`` -> ``http://host:port``."""
    address = address.strip().rstrip("/")
    if "://" not in address:
        address = "http://" + address
    return address


def split_host_port(address: str, default_port: int = 8080) -> tuple[str, int]:
    """``host:port`` (also ``:port``, ``[::1]:port``, ``http://host:port``) -> (host, port).

    ``localhost`` listens on 127.0.0.1 so that IPv4 clients always reach it.
    """
    address = address.strip()
    if "://" in address:
        address = address.split("://", 1)[1]
    address = address.rstrip("/")
    host, sep, port = address.rpartition(":")
    if not sep:
        host, port = address, str(default_port)
    host = host.strip("[]") or "0.0.0.0"
    if host == "localhost":
        host = "127.0.0.1"
    return host, int(port)


@dataclass(frozen=True)
class LogSettings:
    """How a process logs: every program has these."""

    log_level: str = setting(
        "info", "LOG_LEVEL", "--log-level", help="debug, info, warning or error"
    )
    log_format: str = setting(
        "auto",
        "LOG_FORMAT",
        "--log-format",
        help="json, console, or auto (console on a terminal, JSON otherwise)",
    )


@dataclass(frozen=True)
class CommonSettings(LogSettings):
    """Settings both processes share."""

    database_uri: str | None = setting(None, "DATABASE_URI", "-d", help="PostgreSQL DSN (required)")
    db_pool_min: int = setting(
        2, "DB_POOL_MIN", help="minimum PostgreSQL connections (the API's: shared by its processes)"
    )
    db_pool_max: int = setting(
        10,
        "DB_POOL_MAX",
        help="maximum PostgreSQL connections (the API's: shared by its processes)",
    )
    db_timeout: float = setting(
        5.0, "DB_TIMEOUT", help="seconds one query, or opening a connection, may take"
    )
    stall_log_threshold: float = setting(
        0.1,
        "STALL_LOG_THRESHOLD",
        help="seconds of event-loop lag or of waiting for a pooled connection that are "
        "logged as a warning",
    )


@dataclass(frozen=True)
class ApiSettings(CommonSettings):
    """Gophermart API server."""

    run_address: str = setting(
        "localhost:8080", "RUN_ADDRESS", "-a", help="listen address host:port"
    )
    session_secret: str | None = setting(
        None,
        "SESSION_SECRET",
        "-s",
        help="secret that signs and encrypts session cookies and tokens: at least 32 "
        "characters, 10 of them different (random per start when unset)",
    )
    session_ttl: int = setting(86400, "SESSION_TTL", help="seconds a login stays valid")
    session_cache_ttl: float = setting(
        5.0,
        "SESSION_CACHE_TTL",
        help="seconds a verified token is trusted without the database (0 = check every "
        "request); bounds how long a revoked token can outlive a lost notification",
    )
    cookie_secure: bool = setting(
        False, "COOKIE_SECURE", help="mark the session cookie Secure (behind HTTPS)"
    )
    allowed_origins: str = setting(
        "",
        "ALLOWED_ORIGINS",
        help="comma-separated origins (scheme://host[:port]) besides the API's own that may "
        "make state-changing requests without a bearer token",
    )
    max_body_bytes: int = setting(
        65536, "MAX_BODY_BYTES", help="largest accepted request body, decompressed"
    )
    api_processes: int = setting(
        0,
        "API_PROCESSES",
        help="API processes serving the one port (0 = CPU count, at most DB_POOL_MAX)",
    )
    hash_concurrency: int = setting(
        0,
        "HASH_CONCURRENCY",
        help="password hashes at once, shared by the API's processes "
        "(0 = CPU count - 1; at least 1 per process)",
    )
    hash_queue: int = setting(
        32,
        "HASH_QUEUE",
        help="logins that may wait for a hashing thread; beyond it 503 with Retry-After "
        "(registrations may queue a quarter of it)",
    )
    hash_per_address: int = setting(
        4,
        "HASH_PER_ADDRESS",
        help="password checks one client address may have waiting or running at once; "
        "beyond it 429 (0 = no per-address share)",
    )
    login_max_failures: int = setting(
        10,
        "LOGIN_MAX_FAILURES",
        help="failed logins per login and client address per window (0 = no throttling)",
    )
    login_max_failures_per_login: int = setting(
        100,
        "LOGIN_MAX_FAILURES_PER_LOGIN",
        help="failed logins per login from all addresses per window, after which only "
        "addresses without failures on that login may try",
    )
    login_window: int = setting(
        300, "LOGIN_WINDOW", help="seconds over which failed logins are counted"
    )
    login_address_free_failures: int = setting(
        10,
        "LOGIN_ADDRESS_FREE_FAILURES",
        help="failed logins one client address may have on any logins per LOGIN_WINDOW "
        "before its further logins wait behind clean ones for hashing",
    )
    db_acquire_timeout: float = setting(
        1.0,
        "DB_ACQUIRE_TIMEOUT",
        help="seconds a request waits for a pooled connection before a 503 (overload)",
    )
    db_customer_share: int = setting(
        0,
        "DB_CUSTOMER_SHARE",
        help="pooled connections one customer's requests may hold at once in one API "
        "process (0 = a third of the process's pool, at least 2)",
    )
    list_max_items: int = setting(
        100_000,
        "LIST_MAX_ITEMS",
        help="most items one list answer holds (the rest via its Link: rel=next)",
    )
    list_concurrency: int = setting(
        2,
        "LIST_CONCURRENCY",
        help="lists longer than one page (1,000 items) one customer may stream at once",
    )
    send_timeout: float = setting(
        30.0,
        "SEND_TIMEOUT",
        help="seconds a streamed answer waits for its client to take more data",
    )
    events_per_user: int = setting(
        5,
        "EVENTS_PER_USER",
        help="open event streams per user and process; one more ends the oldest",
    )
    events_max_streams: int = setting(
        1000,
        "EVENTS_MAX_STREAMS",
        help="open event streams per process; past it GET /api/user/events answers 503",
    )
    events_heartbeat: float = setting(
        15.0, "EVENTS_HEARTBEAT", help="seconds between keep-alive comments on an event stream"
    )
    events_max_age: float = setting(
        300.0,
        "EVENTS_MAX_AGE",
        help="seconds an event stream lives before the browser reconnects (re-authenticated)",
    )
    register_max_per_address: int = setting(
        10,
        "REGISTER_MAX_PER_ADDRESS",
        help="registrations per client address per REGISTER_WINDOW (0 = unlimited)",
    )
    register_window: int = setting(
        60, "REGISTER_WINDOW", help="seconds over which registrations are counted"
    )
    trusted_proxies: str = setting(
        "",
        "TRUSTED_PROXIES",
        help="comma-separated proxy addresses whose last X-Forwarded-For entry is taken "
        "as the client address, and last X-Forwarded-Proto as the request's scheme",
    )
    header_timeout: float = setting(
        10.0,
        "HEADER_TIMEOUT",
        help="seconds a client has to send a request's headers, from connecting or from "
        "its first byte after the previous answer",
    )
    body_timeout: float = setting(
        15.0, "BODY_TIMEOUT", help="seconds a client has to send a request's body"
    )
    keepalive_timeout: float = setting(
        15.0, "KEEPALIVE_TIMEOUT", help="seconds an idle keep-alive connection stays open"
    )
    max_connections: int = setting(
        0,
        "MAX_CONNECTIONS",
        help="open client connections per process; beyond it new ones get 503 and are "
        "closed (0 = from the file descriptor limit, at most 10000)",
    )
    max_connections_per_address: int = setting(
        64,
        "MAX_CONNECTIONS_PER_ADDRESS",
        help="open connections per client address per process; beyond it 429 "
        "(0 = unlimited; behind a proxy every client shares its address)",
    )
    ops_address: str | None = setting(
        None,
        "OPS_ADDRESS",
        help="host:port serving /metrics and a detailed /readyz for operators; when set, "
        "the public port no longer serves /metrics",
    )


@dataclass(frozen=True)
class WorkerSettings(CommonSettings):
    """Gophermart accrual worker."""

    accrual_system_address: str | None = setting(
        None,
        "ACCRUAL_SYSTEM_ADDRESS",
        "-r",
        help="accrual system base URL, with or without scheme (required)",
    )
    worker_concurrency: int = setting(
        32, "WORKER_CONCURRENCY", help="accrual requests in flight per process"
    )
    worker_batch_size: int = setting(64, "WORKER_BATCH_SIZE", help="orders claimed per claim")
    worker_lease: float = setting(
        30.0, "WORKER_LEASE", help="seconds a claimed order stays reserved for one worker"
    )
    worker_poll_interval: float = setting(
        1.0, "WORKER_POLL_INTERVAL", help="seconds between polls when no notification comes"
    )
    accrual_timeout: float = setting(
        5.0, "ACCRUAL_TIMEOUT", help="seconds to wait for one accrual answer"
    )
    worker_stop_timeout: float = setting(
        3.0,
        "WORKER_STOP_TIMEOUT",
        help="seconds in-flight accrual calls may finish after SIGINT/SIGTERM",
    )
    worker_backoff_first: float = setting(
        0.5,
        "WORKER_BACKOFF_FIRST",
        help="seconds before asking again about an order that is not final yet",
    )
    worker_backoff_max: float = setting(
        60.0, "WORKER_BACKOFF_MAX", help="longest interval between asks about one order"
    )
    accrual_retries: int = setting(
        4, "ACCRUAL_RETRIES", help="tries per accrual call on network errors, timeouts and 5xx"
    )
    accrual_rate_share: float = setting(
        0.97,
        "ACCRUAL_RATE_SHARE",
        help="share of the announced requests-per-minute limit the fleet paces itself to",
    )
    accrual_pause_min: float = setting(
        1.0,
        "ACCRUAL_PAUSE_MIN",
        help="shortest fleet-wide pause after a 429, whatever Retry-After says (seconds)",
    )
    accrual_pause_max: float = setting(
        600.0,
        "ACCRUAL_PAUSE_MAX",
        help="longest fleet-wide pause after a 429, also when repeated 429s double it",
    )
    accrual_rate_ttl: float = setting(
        600.0,
        "ACCRUAL_RATE_TTL",
        help="seconds a rate limit announced by a 429 is obeyed after its pause ends, "
        "before full speed is tried",
    )
    accrual_max_answer_bytes: int = setting(
        65536,
        "ACCRUAL_MAX_ANSWER_BYTES",
        help="largest accrual answer read, on the wire and decompressed (bigger: malformed)",
    )
    worker_recheck_max: float = setting(
        3600.0,
        "WORKER_RECHECK_MAX",
        help="longest interval between asks about an order the accrual system does not know",
    )
    health_address: str | None = setting(
        None,
        "WORKER_HEALTH_ADDRESS",
        help="host:port for the worker's /healthz, /readyz and /metrics (off when unset)",
    )


@dataclass(frozen=True)
class StackSettings(ApiSettings, WorkerSettings):
    """Gophermart API server and accrual worker together, for one machine.

    With DATABASE_URI unset a local PostgreSQL is started under --data-dir;
    with ACCRUAL_SYSTEM_ADDRESS unset the bundled accrual simulator is started.
    """

    data_dir: str = setting(
        ".data",
        "GOPHERMART_DATA_DIR",
        help="where the local PostgreSQL keeps its cluster and password",
    )
    local_pg_port: int = setting(
        15432, "GOPHERMART_LOCAL_PG_PORT", help="port of the local PostgreSQL"
    )
    simulator_address: str = setting(
        "localhost:8081",
        "GOPHERMART_SIMULATOR_ADDRESS",
        help="listen address of the bundled accrual simulator",
    )


def to_environ(settings: object) -> dict[str, str]:
    """Every set value as its env var, for a child process to read back."""
    result = {}
    for field in dataclasses.fields(settings):  # type: ignore[arg-type]
        value = getattr(settings, field.name)
        if "env" in field.metadata and value is not None:
            result[field.metadata["env"]] = (
                str(value).lower() if isinstance(value, bool) else str(value)
            )
    return result
