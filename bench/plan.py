"""How long and how big each figure runs: the full benchmark and the smoke run."""

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Plan:
    name: str
    wrk_seconds: float  # one wrk run per HTTP figure
    pgbench_seconds: float
    connections: int  # wrk connections (one wrk thread)
    users: int  # pre-registered users the HTTP scripts rotate through
    list_orders: int  # orders of the user GET /api/user/orders lists
    storm_connections: int  # clients logging in during the login storm
    storm_probe_connections: int  # balance readers measured during (and without) the storm
    worker_orders: int  # orders inserted for each worker-throughput run
    latency_rate: float  # uploads per second for the upload -> PROCESSED latency
    latency_seconds: float
    rate_limit: int  # simulator's N requests ...
    rate_window: float  # ... per window of this many seconds
    rate_seconds: float  # how long the workers run against the limit
    anchor_jobs: int  # jobs for the pgqueuer / our-loop anchor
    batch_size: int = 64  # worker batch (our default) and pgqueuer's batch
    hoard_orders: int = 100_000  # orders of the customer whose lists load the API
    hoard_connections: int = 40  # that customer's list requests in flight
    fair_flood: int = 3_000  # one user's unknown orders in the fairness figure
    fair_orders: int = 20  # another user's known orders uploaded meanwhile ...
    fair_rate: float = 2.0  # ... at this many per second
    fair_baseline: bool = True  # also the same uploads without the flood (the baseline)


FULL = Plan(
    name="full",
    wrk_seconds=10,
    pgbench_seconds=10,
    connections=32,
    users=32,
    list_orders=100,
    storm_connections=32,
    storm_probe_connections=8,
    worker_orders=20_000,
    latency_rate=20,
    latency_seconds=10,
    rate_limit=50,
    rate_window=5,
    rate_seconds=30,
    anchor_jobs=20_000,
)

SMOKE = Plan(
    name="smoke",
    wrk_seconds=1.5,
    pgbench_seconds=1,
    connections=32,
    users=32,
    list_orders=100,
    storm_connections=32,
    storm_probe_connections=8,
    worker_orders=1_000,
    latency_rate=20,
    latency_seconds=2,
    rate_limit=10,
    rate_window=1,
    rate_seconds=4,
    anchor_jobs=1_000,
    hoard_orders=3_000,
    fair_flood=300,
    fair_orders=4,
    fair_baseline=False,
)
