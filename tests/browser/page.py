"""One headless Chromium window on the customer page, and what a test checks in it."""

import logging
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service as DriverService
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from tests.system import Stack

ROOT = Path(__file__).resolve().parents[2]
AXE = Path(__file__).parent / "node_modules" / "axe-core" / "axe.min.js"
ARTIFACTS = Path(os.environ.get("BROWSER_ARTIFACTS", ROOT / "test-artifacts" / "browser"))
# Selenium logs every WebDriver call at DEBUG: far too much for a failure report.
for _name in ("selenium", "urllib3"):
    logging.getLogger(_name).setLevel(logging.WARNING)

WAIT = 60.0  # at most: seconds the page gets to show what it must (a loaded machine too)

# "<url> - Failed to load resource: the server responded with a status of 409 (Conflict)"
_HTTP_STATUS = re.compile(
    r"^(\S+) - Failed to load resource: the server responded with a "
    r"status of (\d{3})"
)


def missing_browser() -> str | None:
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        return "chromium and chromium-driver are not installed (make test installs them)"
    if not AXE.is_file():
        return "axe-core is not installed (make test runs npm ci in tests/browser)"
    return None


class Page:
    """One browser window on the page, with what a test checks along the way."""

    def __init__(self, driver: webdriver.Chrome, base_url: str, artifacts: Path) -> None:
        self.driver = driver
        self.base_url = base_url
        self.artifacts = artifacts
        self.shots = 0
        self.expected_statuses: set[tuple[str, int]] = set()

    # -- driving ---------------------------------------------------------------

    def open(self) -> None:
        self.driver.get(self.base_url + "/")
        self.wait_until(lambda: not self.by_id("loading").is_displayed(), "the page loaded")

    def by_id(self, element_id: str) -> WebElement:
        return self.driver.find_element(By.ID, element_id)

    def text(self, element_id: str) -> str:
        return self.by_id(element_id).text

    def fill(self, element_id: str, value: str) -> None:
        field = self.by_id(element_id)
        field.clear()
        field.send_keys(value)

    def click(self, element_id: str) -> None:
        self.by_id(element_id).click()

    def wait_until(self, condition: Any, what: str, within: float = WAIT) -> None:
        WebDriverWait(
            self.driver,
            within,
            poll_frequency=0.05,
            ignored_exceptions=[StaleElementReferenceException],
        ).until(lambda _driver: condition(), message=f"{what}: not within {within} s")

    def wait_text(self, element_id: str, expected: str, within: float = WAIT) -> None:
        """Wait until the element's visible text contains ``expected``."""
        self.wait_until(
            lambda: expected in self.text(element_id),
            f"{expected!r} in #{element_id} (now {self.text(element_id)!r})",
            within,
        )

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def active_id(self) -> str:
        return str(self.js("return document.activeElement && document.activeElement.id"))

    def order_row(self, number: str) -> list[str]:
        """The cells' texts of an order's row ([] while it is not listed)."""
        # One script, so that a re-render in between cannot split the answer.
        cells = self.js(
            "const row = [...document.querySelectorAll('#orders tbody tr')]"
            ".find(r => r.dataset.number === arguments[0]);"
            "return row ? [...row.cells].map(c => c.innerText) : [];",
            number,
        )
        return [str(c) for c in cells]

    # -- what every test checks ------------------------------------------------

    def shot(self, step: str) -> Path:
        self.shots += 1
        path = self.artifacts / f"{self.shots:02d}-{step}.png"
        self.driver.save_screenshot(str(path))
        return path

    def expect_status(self, path: str, status: int) -> None:
        """An HTTP error status this test provokes on purpose (Chromium logs those)."""
        self.expected_statuses.add((path, status))

    def console_errors(self) -> list[str]:
        """Console errors and warnings, less the HTTP statuses the test expects."""
        problems = []
        for entry in self.driver.get_log("browser"):
            if entry["level"] not in ("SEVERE", "WARNING"):
                continue
            message = entry["message"]
            match = _HTTP_STATUS.match(message)
            if entry.get("source") == "network" and match:
                path = re.sub(r"^https?://[^/]+", "", match.group(1))
                if (path, int(match.group(2))) in self.expected_statuses:
                    continue
            problems.append(message)
        return problems

    def check_accessibility(self, screen: str) -> None:
        """axe-core's WCAG 2.1 A/AA and best-practice rules on what is shown now."""
        if not self.js("return typeof window.axe === 'object'"):
            self.js(AXE.read_text())
        violations = self.driver.execute_async_script("""
            const done = arguments[arguments.length - 1];
            axe.run(document, {runOnly: {type: "tag",
                                         values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa",
                                                  "best-practice"]}})
               .then(r => done(r.violations.map(v => ({id: v.id, impact: v.impact,
                   help: v.help, nodes: v.nodes.map(n => n.target.join(" "))}))),
                     e => done([{id: "axe failed", help: String(e), nodes: []}]));
        """)
        assert violations == [], f"accessibility problems on {screen}: {violations}"


def _driver(language: str, size: tuple[int, int], phone: bool) -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--lang={language}",
        f"--window-size={size[0]},{size[1]}",
    ):
        options.add_argument(argument)
    options.add_experimental_option("prefs", {"intl.accept_languages": language})
    if phone:  # a phone's viewport, pixel ratio and touch, not merely a narrow window
        options.add_experimental_option(
            "mobileEmulation",
            {
                "deviceMetrics": {
                    "width": size[0],
                    "height": size[1],
                    "pixelRatio": 2.0,
                    "touch": True,
                    "mobile": True,
                }
            },
        )
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = DriverService(executable_path=shutil.which("chromedriver"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_script_timeout(30)
    return driver


def open_page(
    system: Stack,
    artifacts: Path,
    language: str = "en-GB",
    size: tuple[int, int] = (1280, 900),
    phone: bool = False,
) -> Iterator[Page]:
    driver = _driver(language, size, phone)
    page = Page(driver, system.api_url, artifacts)
    try:
        yield page
        errors = page.console_errors()
        assert errors == [], f"console errors: {errors}"
    finally:
        driver.quit()
