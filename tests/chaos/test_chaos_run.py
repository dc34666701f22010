"""The chaos run, scaled down to about a minute: faults everywhere, every point accounted for.

``make chaos`` runs the full size (tests/chaos/run.py); the audit is the same.
"""

from pathlib import Path

import pytest

from tests.chaos.run import ChaosConfig, chaos

pytestmark = pytest.mark.e2e

SCALED = ChaosConfig(
    users=30,
    orders=200,  # the smallest plan (seeded) with every kind of order, a repeat among them
    workers=3,
    rate_limit=12,
    upload_over=15.0,  # still more uploads per second than the rate limit lets through
    withdrawals_per_user=4,
    flood=100,
    settle_within=90.0,
)


@pytest.mark.timeout(240)
async def test_under_500s_latency_429s_and_sigkilled_workers_every_point_is_accounted_for(
    database_uri: str, log_dir: Path
) -> None:
    figures = await chaos(SCALED, database_uri, log_dir)
    print(f"\nscaled chaos run:\n{figures.table()}")
    assert figures.kills >= 3  # workers really died mid-run
    assert figures.sim_500s > 0 and figures.sim_429s > 0  # the faults really happened
    assert figures.processed > 0 and figures.invalid > 0 and figures.withdrawals_ok > 0
    assert figures.hostile_orders > 0  # the hostile front really lied
