"""The benchmark harness in its smoke mode (`make bench-smoke`): a few seconds per figure.

This checks that `make bench` still runs end to end and prints every row; the
speeds it prints are meaningless at this length and are not checked.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# One fragment of each row's figure name, in table order.
ROWS = (
    "aiohttp hello world",
    "| GET /api/user/balance |",
    "GET /api/user/orders (100 orders)",
    "POST /api/user/orders (fresh numbers)",
    "POST /api/user/balance/withdraw",
    "POST /api/user/login",
    "during a login storm",
    "during a registration flood",
    "GET /api/user/balance p99 while one customer keeps",
    "peak RSS of each API process in the scenario above",
    "worker throughput, 1 process",
    "worker throughput, 2 processes",
    "-> PROCESSED latency",
    "rate-limit utilisation",
    "429s and calls during an announced pause",
    "fairness: another user's known order",
    "queue anchor",
    "peak RSS of one API process",
    "peak RSS of one worker process",
)


def _can_get_wrk() -> bool:
    return shutil.which("wrk") is not None or (
        os.geteuid() == 0 and shutil.which("apt-get") is not None
    )


@pytest.mark.e2e
@pytest.mark.timeout(300)
@pytest.mark.skipif(not _can_get_wrk(), reason="wrk is not installed and cannot be installed")
def test_bench_smoke_run_exits_0_and_prints_every_row(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--results", str(tmp_path / "smoke.md")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert len(table) == len(ROWS) + 1  # the header, then one line per figure
    for fragment, line in zip(ROWS, table[1:], strict=True):
        assert fragment in line
    assert (tmp_path / "smoke.md").read_text().count("\n| ") == len(ROWS) + 1
