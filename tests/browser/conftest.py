"""The customer page in a real headless Chromium, against the real processes.

Debian's ``chromium`` is driven through its ``chromedriver`` (Selenium, which
then never downloads a browser or driver of its own); ``make test`` installs
both, and axe-core from npm (tests/browser/package-lock.json), when missing.
Without them these tests are skipped, unless BROWSER_TESTS=required (as
``make test`` sets it), when they fail instead.

Every test leaves screenshots of its steps under test-artifacts/browser/
(BROWSER_ARTIFACTS), checks the console holds no error but the HTTP statuses
the test provoked on purpose, and runs axe-core on the screens it visits.
"""

import os
import re
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.browser.page import ARTIFACTS, Page, missing_browser, open_page
from tests.system import Stack

pytestmark = [pytest.mark.browser, pytest.mark.e2e]


@pytest.fixture
def artifacts(request: pytest.FixtureRequest) -> Path:
    directory = ARTIFACTS / re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    return directory


@pytest.fixture
async def system(
    database_uri: str, log_dir: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Stack]:
    """Simulator, API and one worker; the simulator answers after a short while so
    that the page shows an order before and after it is credited."""
    reason = missing_browser()
    if reason:
        if os.environ.get("BROWSER_TESTS") == "required":
            pytest.fail(reason)
        pytest.skip(reason)
    options = getattr(request, "param", {})
    stack = await Stack.start(
        database_uri, log_dir, workers=1, sim_args=("--delay", "2"), **options
    )
    await stack.sim_rules()
    yield stack
    await stack.close()


@pytest.fixture
def page(system: Stack, artifacts: Path) -> Iterator[Page]:
    """An English browser on a desktop-sized window."""
    yield from open_page(system, artifacts)
