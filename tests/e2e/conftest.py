"""End-to-end fixtures: PostgreSQL, accrual-sim, gophermart-api and workers as real processes."""

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.system import Stack, SystemFactory

pytestmark = pytest.mark.e2e


@pytest.fixture
async def start_system(database_uri: str, log_dir: Path) -> AsyncIterator[SystemFactory]:
    """Start the whole system with simulator and worker options; stop it afterwards."""
    started: list[Stack] = []

    async def start(**options: object) -> Stack:
        stack = await Stack.start(database_uri, log_dir, **options)  # type: ignore[arg-type]
        started.append(stack)
        return stack

    yield start
    for stack in started:
        await stack.close()
