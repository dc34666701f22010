"""The simulator's settings: flags and environment through ``shared.settings``."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from shared import settings as shared_settings
from shared.settings import LogSettings, setting


@dataclass(frozen=True)
class SimSettings(LogSettings):
    """Accrual system simulator: reward rules, orders and the status endpoint."""

    run_address: str = setting(
        "localhost:8081", "RUN_ADDRESS", "-a", help="listen address host:port"
    )
    delay: float = setting(
        1.0,
        "SIM_DELAY",
        "--delay",
        help="seconds from registration to a final status; PROCESSING from half of it "
        "(0 = final at once)",
    )
    invalid_when_nothing: bool = setting(
        True,
        "SIM_INVALID_WHEN_NOTHING",
        "--invalid-when-nothing",
        help="an order no rule matches ends INVALID (otherwise PROCESSED without accrual)",
    )
    rate_limit: int = setting(
        0,
        "SIM_RATE_LIMIT",
        "--rate-limit",
        help="order status requests allowed per window (0 = no limit)",
    )
    rate_window: float = setting(
        60.0, "SIM_RATE_WINDOW", "--rate-window", help="rate limit window in seconds"
    )
    pause_grace: float = setting(
        0.05,
        "SIM_PAUSE_GRACE",
        "--pause-grace",
        help="seconds after a 429 during which further requests count as already in flight",
    )
    fail_rate: float = setting(
        0.0,
        "SIM_FAIL_RATE",
        "--fail-rate",
        help="probability of answering an order status request with 500",
    )
    latency_rate: float = setting(
        0.0,
        "SIM_LATENCY_RATE",
        "--latency-rate",
        help="probability of delaying an order status answer",
    )
    latency_min: float = setting(
        0.0, "SIM_LATENCY_MIN", "--latency-min", help="shortest injected delay, seconds"
    )
    latency_max: float = setting(
        0.5, "SIM_LATENCY_MAX", "--latency-max", help="longest injected delay, seconds"
    )
    random_seed: int | None = setting(
        None,
        "SIM_RANDOM_SEED",
        "--random-seed",
        help="seed for injected faults and latencies (random when unset)",
    )
    seed_demo: bool = setting(
        False,
        "SIM_SEED_DEMO",
        "--seed-demo",
        help="register demo rules at start (Bork 10 %%, Pringles 10 %%, Coca-Cola 12.5 pt)",
    )
    seed_file: str | None = setting(
        None,
        "SIM_SEED_FILE",
        "--seed-file",
        help='JSON file registered at start: a list of rules, or {"goods": [rules], '
        '"orders": [orders]}',
    )

    def __post_init__(self) -> None:
        # Nonsense here would silently disable a fault or a limit; refuse it up front.
        for name in ("delay", "rate_window", "pause_grace", "latency_min", "latency_max"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        for name in ("fail_rate", "latency_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be a probability between 0 and 1")
        if self.rate_limit < 0:
            raise ValueError("rate_limit must not be negative")
        if self.rate_limit and self.rate_window <= 0:
            raise ValueError("rate_window must be positive when rate_limit is set")
        if self.latency_min > self.latency_max:
            raise ValueError("latency_min must not exceed latency_max")


def load(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> SimSettings:
    """Settings from flags and environment (the environment wins)."""
    return shared_settings.load(SimSettings, argv, environ, prog="accrual-sim")
