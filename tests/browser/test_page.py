"""The customer page, step by step, in headless Chromium against the real system."""

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.keys import Keys

from shared.luhn import with_check_digit
from tests.browser.page import Page, open_page
from tests.helpers import credit, leaked_secrets
from tests.system import Stack

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

PASSWORD = "browser-pass-8c1f"


def luhn_broken(number: str) -> str:
    """The same number with a wrong check digit."""
    return number[:-1] + str((int(number[-1]) + 1) % 10)


def sign_up(page: Page, login: str) -> None:
    page.fill("login", login)
    page.fill("password", PASSWORD)
    page.click("do-register")
    page.wait_until(lambda: page.by_id("account").is_displayed(), "the account shown")


async def test_whole_journey_register_upload_credited_live_withdraw_history(
    system: Stack, page: Page
) -> None:
    purchase = with_check_digit("4242100")
    page.expect_status("/api/user/balance", 401)  # the first look, before logging in
    page.open()
    assert page.by_id("auth").is_displayed()
    assert page.driver.title == "Gophermart"
    page.check_accessibility("the login screen")
    page.shot("login")

    sign_up(page, "journey")
    assert page.text("who") == "Signed in as journey"
    assert page.active_id() == "balance-h"  # focus follows the customer to the account
    page.wait_text("current", "0.00")
    page.wait_text("live", "Updates live")
    page.shot("registered")

    # The simulator knows the purchase; it answers PROCESSED two seconds from now.
    assert await system.sim_order(purchase, [("Чайник Bork", "1234.50")]) == 202
    page.js("window.notReloaded = true")
    page.fill("order-number", luhn_broken(purchase))
    assert page.text("order-err") == "This is not a valid order number: check the digits."
    assert page.by_id("order-number").get_attribute("aria-invalid") == "true"
    page.shot("luhn-as-you-type")
    page.fill("order-number", purchase)
    assert page.text("order-check") == "The number looks valid."
    assert page.text("order-err") == ""
    page.by_id("order-number").send_keys(Keys.ENTER)
    page.wait_text("upload-result", f"Order {purchase} accepted.")
    page.wait_until(
        lambda: page.order_row(purchase)[1:2] in (["New"], ["Processing"]),
        "the order listed before it is credited",
    )
    page.shot("uploaded")

    # No reload and no click: the worker's status change arrives by itself.
    page.wait_until(
        lambda: page.order_row(purchase)[1:3] == ["Credited", "123.45"],
        "the order credited on screen",
    )
    page.wait_text("current", "123.45")
    assert page.js("return window.notReloaded") is True
    assert page.text("withdrawn") == "0.00"
    assert page.text("announce") == f"Order {purchase}: 123.45 points credited."
    page.check_accessibility("the account with a credited order")
    page.shot("credited-live")

    paid_order = with_check_digit("777000")
    page.fill("withdraw-order", paid_order)
    page.fill("withdraw-sum", "100.5")
    page.by_id("withdraw-sum").send_keys(Keys.ENTER)
    page.wait_text("withdraw-result", f"Done: 100.50 points paid for order {paid_order}.")
    page.wait_text("current", "22.95")
    page.wait_text("withdrawn", "100.50")
    page.wait_until(lambda: paid_order in page.text("history"), "the withdrawal listed")
    history = page.text("history")
    assert "100.50" in history
    assert page.by_id("history-empty").is_displayed() is False
    page.shot("withdrawn-history")

    # The API agrees with the screen, to the cent, for the session the browser holds.
    cookie = page.driver.get_cookie("gophermart_session")
    assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    token = cookie["value"].strip('"')  # a value with "=" travels quoted
    assert await system.get(f"Bearer {token}", "/api/user/balance") == (
        200,
        {"current": Decimal("22.95"), "withdrawn": Decimal("100.5")},
    )
    assert leaked_secrets(system.logs(), [PASSWORD, token]) == []
    page.click("logout")
    page.wait_until(lambda: page.by_id("auth").is_displayed(), "the login screen again")
    assert page.active_id() == "login"
    assert not page.by_id("who").is_displayed()
    page.shot("logged-out")
    # Ended on the server too: the old token is refused and a reload asks to log in.
    assert (await system.get(f"Bearer {token}", "/api/user/balance"))[0] == 401
    assert page.driver.get_cookie("gophermart_session") is None
    page.driver.refresh()
    page.wait_until(lambda: page.by_id("auth").is_displayed(), "the login screen after reload")


async def test_error_paths_are_explained_next_to_their_field(
    system: Stack, page: Page, database_uri: str
) -> None:
    await system.register("taken-login")
    others = await system.register("someone-else")
    theirs = with_check_digit("5555001")
    assert await system.upload(others, theirs) == 202
    page.expect_status("/api/user/balance", 401)
    page.open()

    page.expect_status("/api/user/register", 409)
    page.fill("login", "taken-login")
    page.fill("password", PASSWORD)
    page.click("do-register")
    page.wait_text("login-err", "This login is taken.")
    assert page.by_id("login").get_attribute("aria-invalid") == "true"
    assert page.active_id() == "login"
    page.shot("register-409")

    page.expect_status("/api/user/login", 401)
    page.fill("password", "wrong-password")
    page.click("do-login")
    page.wait_text("password-err", "Wrong login or password.")
    assert page.text("login-err") == ""  # the earlier error went away
    page.shot("login-401")

    sign_up(page, "erroneous")
    page.expect_status("/api/user/orders", 409)
    page.fill("order-number", theirs)
    page.by_id("order-number").send_keys(Keys.ENTER)
    page.wait_text("order-err", f"Order {theirs} was added by another customer.")
    page.shot("upload-409")

    mine = with_check_digit("5555002")
    page.fill("order-number", mine)
    page.by_id("order-number").send_keys(Keys.ENTER)
    page.wait_text("upload-result", f"Order {mine} accepted.")
    page.fill("order-number", mine)
    page.by_id("order-number").send_keys(Keys.ENTER)
    page.wait_text("upload-result", f"You have already added order {mine}.")

    page.fill("order-number", "12a4")
    assert page.text("order-err") == "Only digits, please."

    page.expect_status("/api/user/balance/withdraw", 402)
    page.fill("withdraw-order", with_check_digit("9990001"))
    page.fill("withdraw-sum", "10")
    page.by_id("withdraw-sum").send_keys(Keys.ENTER)
    page.wait_text("withdraw-sum-err", "Not enough points: you have 0.00.")
    page.shot("withdraw-402")

    page.fill("withdraw-sum", "1.005")
    page.by_id("withdraw-sum").send_keys(Keys.ENTER)
    page.wait_text("withdraw-sum-err", "at most two decimals")

    pool = await asyncpg.create_pool(
        database_uri, min_size=1, max_size=1, server_settings={"search_path": "gophermart"}
    )
    try:
        await credit(pool, "erroneous", "50", with_check_digit("9990002"))
    finally:
        await pool.close()
    page.wait_text("current", "50.00")  # the credit arrives live too
    page.expect_status("/api/user/balance/withdraw", 409)
    paid = with_check_digit("9990003")
    page.fill("withdraw-order", paid)
    page.fill("withdraw-sum", "5")
    page.by_id("withdraw-sum").send_keys(Keys.ENTER)
    page.wait_text("withdraw-result", "Done: 5.00 points")
    page.fill("withdraw-order", paid)
    page.fill("withdraw-sum", "6")
    page.by_id("withdraw-sum").send_keys(Keys.ENTER)
    page.wait_text("withdraw-order-err", f"Order {paid} has already been paid with points.")
    page.check_accessibility("the account showing errors")
    page.shot("withdraw-409")

    # A long history comes 50 orders at a time, newest first.
    pool = await asyncpg.create_pool(
        database_uri, min_size=1, max_size=1, server_settings={"search_path": "gophermart"}
    )
    try:
        await pool.execute(
            "INSERT INTO orders (number, user_id, status, uploaded_at) "
            "SELECT n::text, (SELECT id FROM users WHERE login = 'erroneous'), 'INVALID', "
            "now() - n * interval '1 hour' FROM generate_series(1000, 1059) AS n"
        )
    finally:
        await pool.close()
    page.wait_until(lambda: page.by_id("orders-more").is_displayed(), "a show-more button")
    assert page.js("return document.querySelectorAll('#orders tbody tr').length") == 50
    page.click("orders-more")
    page.wait_until(lambda: not page.by_id("orders-more").is_displayed(), "the whole list")
    assert page.js("return document.querySelectorAll('#orders tbody tr').length") == 62
    assert page.order_row("1059")[1] == "Rejected"  # the oldest, last
    code, balance = await system.get(others, "/api/user/balance")
    assert (code, balance["current"]) == (200, Decimal(0))


@pytest.mark.parametrize("system", [{"api_env": {"LOGIN_MAX_FAILURES": "2"}}], indirect=True)
async def test_too_many_failed_logins_say_how_long_to_wait(system: Stack, page: Page) -> None:
    await system.register("throttled")
    page.expect_status("/api/user/balance", 401)
    page.expect_status("/api/user/login", 401)
    page.expect_status("/api/user/login", 429)
    page.open()
    page.fill("login", "throttled")
    for _ in range(2):
        page.fill("password", "wrong")
        page.click("do-login")
        page.wait_text("password-err", "Wrong login or password.")
        page.js("document.getElementById('password-err').textContent = ''")
    page.fill("password", "wrong")
    page.click("do-login")
    page.wait_text("auth-err", "Too many failed attempts. Try again in ")
    assert page.text("auth-err").endswith(" s.")
    page.shot("login-429")


@pytest.fixture
def russian_page(system: Stack, artifacts: Path) -> Iterator[Page]:
    yield from open_page(system, artifacts, language="ru-RU")


async def test_russian_browser_gets_russian_and_the_switch_remembers_english(
    system: Stack, russian_page: Page, database_uri: str
) -> None:
    page = russian_page
    page.expect_status("/api/user/balance", 401)
    page.open()
    assert page.js("return document.documentElement.lang") == "ru"
    assert page.text("title") == "Ваши баллы лояльности"
    assert page.text("do-login") == "Войти"
    sign_up(page, "покупатель")
    pool = await asyncpg.create_pool(
        database_uri, min_size=1, max_size=1, server_settings={"search_path": "gophermart"}
    )
    try:
        await credit(pool, "покупатель", "12345.6", with_check_digit("31337"))
    finally:
        await pool.close()
    # Russian money: a space groups thousands, a comma before the kopecks.
    page.wait_until(
        lambda: page.text("current").replace("\u00a0", " ") == "12 345,60",
        "the balance in Russian format",
    )
    # The list is fetched apart from the balance, so it may be drawn a moment later.
    page.wait_until(
        lambda: page.order_row(with_check_digit("31337"))[1:2] == ["Начислено"],
        "the credited order in Russian",
    )
    page.check_accessibility("the account in Russian")
    page.shot("russian")

    page.click("lang")
    assert page.js("return document.documentElement.lang") == "en"
    assert page.text("title") == "Your loyalty points"
    assert page.text("current") == "12,345.60"
    assert page.order_row(with_check_digit("31337"))[1] == "Credited"
    assert page.text("lang") == "Русский"
    page.shot("switched-to-english")
    page.driver.refresh()
    page.wait_until(lambda: page.by_id("account").is_displayed(), "the account after reload")
    assert page.text("title") == "Your loyalty points"  # the choice is remembered


@pytest.fixture
def phone(system: Stack, artifacts: Path) -> Iterator[Page]:
    yield from open_page(system, artifacts, size=(390, 844), phone=True)


async def test_phone_screen_with_the_keyboard_alone(system: Stack, phone: Page) -> None:
    page = phone
    purchase = with_check_digit("8080800")
    assert await system.sim_order(purchase, [("Pringles", "200")]) == 202
    page.expect_status("/api/user/balance", 401)
    page.open()
    keys = ActionChains(page.driver)

    def press(*sequence: str) -> None:
        for key in sequence:
            keys.send_keys(key)
        keys.perform()
        keys.reset_actions()

    press(Keys.TAB)
    assert page.active_id() == ""  # the skip link, first of all
    assert page.js("return document.activeElement.className") == "skip"
    press(Keys.TAB)
    assert page.active_id() == "lang"
    press(Keys.TAB)
    assert page.active_id() == "login"
    press("pocket", Keys.TAB, PASSWORD, Keys.TAB)
    assert page.active_id() == "do-login"
    press(Keys.TAB)
    assert page.active_id() == "do-register"
    press(Keys.ENTER)
    page.wait_until(lambda: page.by_id("account").is_displayed(), "the account shown")
    assert page.active_id() == "balance-h"
    press(Keys.TAB)
    assert page.active_id() == "order-number"
    press(purchase, Keys.ENTER)
    page.wait_until(
        lambda: page.order_row(purchase)[1:3] == ["Credited", "15.00"],
        "the order credited on screen",
    )
    width = page.js("return [document.documentElement.scrollWidth, window.innerWidth]")
    assert width[1] == 390
    assert width[0] <= width[1], f"the page scrolls sideways on a phone: {width}"
    # Each order is a small labelled card: the table head is visually hidden.
    assert page.by_id("orders").find_element("css selector", "thead").size["height"] <= 1
    page.check_accessibility("the account on a phone")
    page.shot("phone-account")
    page.js("window.scrollTo(0, document.body.scrollHeight)")
    page.shot("phone-bottom")
