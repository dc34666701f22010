"""Fixtures for the fault tests: a log directory and a PostgreSQL of a test's own."""

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.localpg import LocalPostgres


@pytest.fixture
def log_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="gophermart-chaos-") as directory:
        Path(directory).chmod(0o755)
        yield Path(directory)


@pytest.fixture
def own_server() -> Iterator[LocalPostgres]:
    """A server this test may stop and start without disturbing the others."""
    root = Path(tempfile.mkdtemp(prefix="gophermart-outage-"))
    root.chmod(0o755)
    server = LocalPostgres(root, fast=True)
    server.start()
    try:
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)
