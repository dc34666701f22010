"""The accrual system simulator: admin endpoints, statuses, rewards, limits, faults."""

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from accrual_sim.app import SIM, create_app
from accrual_sim.rules import Good, Rule, compute_accrual
from accrual_sim.settings import SimSettings, load
from shared.luhn import with_check_digit

ORDER = "12345678903"  # passes Luhn
OTHER_ORDER = with_check_digit("7992739871")
NOT_LUHN = "12345678904"


class FakeClock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_client(
    aiohttp_client: Any, clock: FakeClock
) -> Callable[..., Awaitable[TestClient[Any, Any]]]:
    async def make(**overrides: Any) -> TestClient[Any, Any]:
        settings = SimSettings(**{"delay": 0.0, **overrides})
        client: TestClient[Any, Any] = await aiohttp_client(create_app(settings, clock=clock))
        return client

    return make


async def add_rule(client: TestClient[Any, Any], match: str, reward: Any, kind: str) -> int:
    response = await client.post(
        "/api/goods", json={"match": match, "reward": reward, "reward_type": kind}
    )
    return response.status


async def add_order(client: TestClient[Any, Any], number: str, goods: list[tuple[str, str]]) -> int:
    # Prices go out as raw JSON number text, exactly as written.
    items = ",".join(f'{{"description": {json.dumps(d)}, "price": {p}}}' for d, p in goods)
    body = f'{{"order": "{number}", "goods": [{items}]}}'
    response = await client.post("/api/orders", data=body)
    return response.status


async def status_of(client: TestClient[Any, Any], number: str) -> tuple[int, dict[str, Any]]:
    response = await client.get(f"/api/orders/{number}")
    if response.status != 200:
        return response.status, {}
    assert response.content_type == "application/json"
    return 200, json.loads(await response.text(), parse_float=Decimal)


async def stats(client: TestClient[Any, Any]) -> dict[str, Any]:
    response = await client.get("/api/stats")
    assert response.status == 200
    result: dict[str, Any] = await response.json()
    return result


# --- POST /api/goods ---------------------------------------------------------


async def test_rule_registered_then_same_match_conflicts(make_client: Any) -> None:
    client = await make_client()
    assert await add_rule(client, "Bork", 10, "%") == 200
    assert await add_rule(client, "Bork", 5, "pt") == 409
    assert await add_rule(client, "Coca-Cola", "12.5", "pt") == 400  # a string, not a number
    assert await add_rule(client, "Coca-Cola", 12.5, "pt") == 200  # fractional is fine
    assert (await stats(client))["rules_registered"] == 2


@pytest.mark.parametrize(
    "body",
    [
        '{"match": "", "reward": 10, "reward_type": "%"}',
        '{"match": "   ", "reward": 10, "reward_type": "%"}',
        '{"match": "Bork", "reward": -1, "reward_type": "%"}',
        '{"match": "Bork", "reward": 10, "reward_type": "points"}',
        '{"match": "Bork", "reward": 10}',
        '{"match": "Bork", "reward_type": "%"}',
        '{"match": "Bork", "reward": true, "reward_type": "%"}',
        '{"match": "Bork", "reward": 10, "reward_type": "%"',
        '["Bork", 10, "%"]',
        "",
    ],
)
async def test_bad_rule_is_400(make_client: Any, body: str) -> None:
    client = await make_client()
    response = await client.post("/api/goods", data=body)
    assert response.status == 400
    assert "error" in await response.json()


# --- POST /api/orders --------------------------------------------------------


async def test_order_accepted_then_conflicts(make_client: Any) -> None:
    client = await make_client()
    assert await add_order(client, ORDER, [("Чайник Bork", "7000")]) == 202
    assert await add_order(client, ORDER, [("Чайник Tefal", "10")]) == 409
    assert (await stats(client))["orders_registered"] == 1


@pytest.mark.parametrize(
    "body",
    [
        f'{{"order": "{NOT_LUHN}", "goods": []}}',
        '{"order": "12a45", "goods": []}',
        '{"order": "", "goods": []}',
        f'{{"order": {ORDER}, "goods": []}}',
        f'{{"order": "{ORDER}"}}',
        f'{{"order": "{ORDER}", "goods": {{}}}}',
        f'{{"order": "{ORDER}", "goods": [{{"description": "x", "price": -1}}]}}',
        f'{{"order": "{ORDER}", "goods": [{{"description": "x", "price": "7"}}]}}',
        f'{{"order": "{ORDER}", "goods": [{{"price": 7}}]}}',
        f'{{"order": "{ORDER}", "goods": [',
        "not json",
    ],
)
async def test_bad_order_is_400(make_client: Any, body: str) -> None:
    client = await make_client()
    response = await client.post("/api/orders", data=body)
    assert response.status == 400
    assert (await stats(client))["orders_registered"] == 0


# --- GET /api/orders/{number} and rewards ----------------------------------


async def test_unknown_order_is_204(make_client: Any) -> None:
    client = await make_client()
    response = await client.get(f"/api/orders/{ORDER}")
    assert response.status == 204
    assert await response.read() == b""


async def test_worked_example_pringles_and_coca_cola(make_client: Any) -> None:
    client = await make_client()
    assert await add_rule(client, "Pringles", 10, "%") == 200
    assert await add_rule(client, "Coca-Cola", 12.5, "pt") == 200
    assert (
        await add_order(
            client,
            ORDER,
            [
                ("Чайник Tefal", "7000"),
                ("Чипсы Pringles бекон", "147.5"),
                ("Напиток Coca-Cola Zero 0.5л", "55"),
            ],
        )
        == 202
    )
    assert await status_of(client, ORDER) == (
        200,
        {"order": ORDER, "status": "PROCESSED", "accrual": Decimal("27.25")},
    )


async def test_worked_example_rounds_729_975_half_up(make_client: Any) -> None:
    client = await make_client()
    assert await add_rule(client, "Bork", 5, "%") == 200
    assert (
        await add_order(
            client,
            ORDER,
            [
                ("Стиральная машинка LG", "47399.99"),
                ("Телевизор Bork", "14599.50"),
            ],
        )
        == 202
    )
    response = await client.get(f"/api/orders/{ORDER}")
    # The exact JSON number text: no float artefacts.
    assert await response.read() == (
        b'{"order":"' + ORDER.encode() + b'","status":"PROCESSED","accrual":729.98}'
    )


@pytest.mark.parametrize(
    ("price", "percent", "expected"),
    [
        ("0.1", "5", "0.01"),  # 0.005 -> 0.01
        ("0.3", "5", "0.02"),  # 0.015 -> 0.02
        ("0.1", "4", "0"),  # 0.004 -> 0.00
        ("14599.50", "5", "729.98"),  # 729.975
    ],
)
def test_accrual_rounds_half_up(price: str, percent: str, expected: str) -> None:
    rules = [Rule("Bork", Decimal(percent), "%")]
    assert compute_accrual([Good("Bork", Decimal(price))], rules) == Decimal(expected)


def test_accrual_sums_every_matching_rule_before_rounding() -> None:
    rules = [Rule("Bork", Decimal("0.5"), "%"), Rule("Чайник", Decimal("0.125"), "pt")]
    goods = [Good("Чайник Bork", Decimal("1.01")), Good("Чайник Tefal", Decimal(3))]
    # 0.00505 + 0.125 + 0.125 = 0.25505 -> 0.26; matching is case-sensitive.
    assert compute_accrual(goods, rules) == Decimal("0.26")
    assert compute_accrual([Good("bork", Decimal(100))], rules) is None


async def test_nothing_matching_ends_invalid(make_client: Any) -> None:
    client = await make_client()
    assert await add_rule(client, "Bork", 10, "%") == 200
    assert await add_order(client, ORDER, [("Чайник Tefal", "7000")]) == 202
    assert await status_of(client, ORDER) == (200, {"order": ORDER, "status": "INVALID"})


async def test_nothing_matching_can_end_processed_without_accrual(make_client: Any) -> None:
    client = await make_client(invalid_when_nothing=False)
    assert await add_order(client, ORDER, [("Чайник Tefal", "7000")]) == 202
    assert await status_of(client, ORDER) == (200, {"order": ORDER, "status": "PROCESSED"})


async def test_zero_reward_is_processed_without_accrual(make_client: Any) -> None:
    client = await make_client()
    assert await add_rule(client, "Bork", 0, "pt") == 200
    assert await add_order(client, ORDER, [("Чайник Bork", "7000")]) == 202
    assert await status_of(client, ORDER) == (200, {"order": ORDER, "status": "PROCESSED"})


async def test_status_progresses_with_the_clock(make_client: Any, clock: FakeClock) -> None:
    client = await make_client(delay=10.0)
    await add_rule(client, "Bork", 10, "%")
    await add_order(client, ORDER, [("Чайник Bork", "7000")])
    seen = []
    for step in (0, 4.9, 0.1, 4.9, 0.1):
        clock.advance(step)
        _, body = await status_of(client, ORDER)
        seen.append(body["status"])
        assert ("accrual" in body) == (body["status"] == "PROCESSED")
    assert seen == ["REGISTERED", "REGISTERED", "PROCESSING", "PROCESSING", "PROCESSED"]
    assert body["accrual"] == 700


async def test_status_progresses_in_real_time(aiohttp_client: Any) -> None:
    client = await aiohttp_client(create_app(SimSettings(delay=0.3)))
    await add_rule(client, "Bork", 10, "%")
    await add_order(client, ORDER, [("Чайник Bork", "7000")])
    seen: list[str] = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        _, body = await status_of(client, ORDER)
        if not seen or seen[-1] != body["status"]:
            seen.append(body["status"])
        if body["status"] == "PROCESSED":
            break
        await asyncio.sleep(0.02)
    assert seen == ["REGISTERED", "PROCESSING", "PROCESSED"]


# --- rate limit --------------------------------------------------------------


async def test_429_has_the_exact_format(make_client: Any, clock: FakeClock) -> None:
    client = await make_client(rate_limit=2, rate_window=10.0)
    assert (await client.get(f"/api/orders/{ORDER}")).status == 204
    assert (await client.get(f"/api/orders/{ORDER}")).status == 204
    response = await client.get(f"/api/orders/{ORDER}")
    assert response.status == 429
    assert response.headers["Content-Type"] == "text/plain"
    assert response.headers["Retry-After"] == "10"
    assert await response.text() == "No more than 12 requests per minute allowed"
    clock.advance(3.5)
    response = await client.get(f"/api/orders/{ORDER}")
    assert response.status == 429
    assert response.headers["Retry-After"] == "7"  # 6.5 s left, rounded up
    clock.advance(6.5)  # the window has reset
    assert (await client.get(f"/api/orders/{ORDER}")).status == 204
    counters = await stats(client)
    assert counters["too_many_requests"] == 2
    assert counters["by_status"] == {"204": 3, "429": 2}
    assert counters["requests"] == 5


async def test_retry_after_is_at_least_one_second(make_client: Any, clock: FakeClock) -> None:
    client = await make_client(rate_limit=1, rate_window=1.0)
    await client.get(f"/api/orders/{ORDER}")
    clock.advance(0.999)
    response = await client.get(f"/api/orders/{ORDER}")
    assert response.status == 429
    assert response.headers["Retry-After"] == "1"
    assert await response.text() == "No more than 60 requests per minute allowed"


async def test_admin_requests_do_not_count_against_the_limit(make_client: Any) -> None:
    client = await make_client(rate_limit=1, rate_window=60.0)
    for match in ("Bork", "Pringles", "Coca-Cola"):
        assert await add_rule(client, match, 1, "pt") == 200
    assert await add_order(client, ORDER, [("Чайник Bork", "7000")]) == 202
    await stats(client)
    assert (await client.get(f"/api/orders/{ORDER}")).status == 200
    assert (await client.get(f"/api/orders/{ORDER}")).status == 429


async def test_pause_counters_count_during_pause_not_after(
    make_client: Any, clock: FakeClock
) -> None:
    client = await make_client(rate_limit=1, rate_window=10.0, pause_grace=0.05)
    assert (await client.get(f"/api/orders/{ORDER}")).status == 204
    assert (await client.get(f"/api/orders/{ORDER}")).status == 429  # announces the pause
    counters = await stats(client)
    assert (
        counters["pauses"],
        counters["requests_during_pause"],
        counters["in_flight_at_pause"],
    ) == (1, 0, 0)

    clock.advance(0.01)  # within the grace: was already in flight
    assert (await client.get(f"/api/orders/{ORDER}")).status == 429
    clock.advance(1.0)  # past the grace, pause still running
    assert (await client.get(f"/api/orders/{ORDER}")).status == 429
    counters = await stats(client)
    assert (counters["requests_during_pause"], counters["in_flight_at_pause"]) == (1, 1)

    clock.advance(9.0)  # the pause is over
    assert (await client.get(f"/api/orders/{ORDER}")).status == 204
    counters = await stats(client)
    assert (
        counters["pauses"],
        counters["requests_during_pause"],
        counters["in_flight_at_pause"],
    ) == (1, 1, 1)
    assert client.app[SIM].limiter is not None
    assert client.app[SIM].limiter.pause_until is None


async def test_pause_grace_is_configurable(make_client: Any, clock: FakeClock) -> None:
    client = await make_client(rate_limit=1, rate_window=10.0, pause_grace=0.0)
    await client.get(f"/api/orders/{ORDER}")
    await client.get(f"/api/orders/{ORDER}")
    clock.advance(0.01)
    assert (await client.get(f"/api/orders/{ORDER}")).status == 429
    counters = await stats(client)
    assert (counters["requests_during_pause"], counters["in_flight_at_pause"]) == (1, 0)


# --- stats and faults --------------------------------------------------------


async def test_stats_reset_zeroes_counters_but_keeps_data(make_client: Any) -> None:
    client = await make_client(rate_limit=1, rate_window=60.0)
    await add_rule(client, "Bork", 10, "%")
    await add_order(client, ORDER, [("Чайник Bork", "7000")])
    await client.get(f"/api/orders/{ORDER}")
    await client.get(f"/api/orders/{ORDER}")
    before = await stats(client)
    assert before["requests"] == 2 and before["too_many_requests"] == 1

    response = await client.post("/api/stats/reset")
    assert response.status == 204
    after = await stats(client)
    assert after == {
        "requests": 0,
        "too_many_requests": 0,
        "pauses": 0,
        "requests_during_pause": 0,
        "in_flight_at_pause": 0,
        "latest_during_pause": 0,
        "latest_in_flight": 0,
        "pause_with_latest": 0,
        "injected_500s": 0,
        "injected_latencies": 0,
        "orders_registered": 0,
        "rules_registered": 0,
        "by_status": {},
        "orders_known": 1,
        "rules_known": 1,
    }
    # The rate-limit window reopens too, and the order is still there.
    assert await status_of(client, ORDER) == (
        200,
        {"order": ORDER, "status": "PROCESSED", "accrual": 700},
    )


async def test_injected_500_with_probability_one(make_client: Any) -> None:
    client = await make_client(fail_rate=1.0)
    await add_rule(client, "Bork", 10, "%")
    await add_order(client, ORDER, [("Чайник Bork", "7000")])
    response = await client.get(f"/api/orders/{ORDER}")
    assert response.status == 500
    assert response.content_type == "text/plain"
    counters = await stats(client)
    assert counters["injected_500s"] == 1
    assert counters["by_status"] == {"500": 1}


async def test_injected_latency_still_answers(make_client: Any) -> None:
    client = await make_client(latency_rate=1.0, latency_min=0.01, latency_max=0.02)
    await add_rule(client, "Bork", 10, "%")
    await add_order(client, ORDER, [("Чайник Bork", "7000")])
    assert (await status_of(client, ORDER))[0] == 200
    assert (await stats(client))["injected_latencies"] == 1


# --- settings and seeding ----------------------------------------------------


def test_settings_defaults() -> None:
    settings = load([], environ={})
    assert settings == SimSettings()
    assert settings.run_address == "localhost:8081"
    assert settings.rate_limit == 0
    assert settings.pause_grace == 0.05


def test_settings_env_wins_over_flag_wins_over_default() -> None:
    argv = ["-a", "127.0.0.1:9001", "--delay", "2.5", "--rate-limit", "10", "--rate-window", "5"]
    from_flags = load(argv, environ={})
    assert (
        from_flags.run_address,
        from_flags.delay,
        from_flags.rate_limit,
        from_flags.rate_window,
    ) == ("127.0.0.1:9001", 2.5, 10, 5.0)
    from_env = load(argv, environ={"RUN_ADDRESS": ":9002", "SIM_DELAY": "0", "SIM_RATE_LIMIT": "3"})
    assert (from_env.run_address, from_env.delay, from_env.rate_limit, from_env.rate_window) == (
        ":9002",
        0.0,
        3,
        5.0,
    )


def test_bare_boolean_flag_means_true() -> None:
    assert load(["--seed-demo"], environ={}).seed_demo is True
    assert load(["--seed-demo", "-a", ":1"], environ={}).seed_demo is True
    assert load(["--seed-demo", "false"], environ={}).seed_demo is False
    assert load(["--seed-demo"], environ={"SIM_SEED_DEMO": "0"}).seed_demo is False
    assert load([], environ={"SIM_INVALID_WHEN_NOTHING": "no"}).invalid_when_nothing is False
    with pytest.raises(SystemExit):
        load(["--seed-demo", "maybe"], environ={})


@pytest.mark.parametrize(
    "argv",
    [
        ["--fail-rate", "1.5"],
        ["--delay", "-1"],
        ["--rate-limit", "-2"],
        ["--latency-min", "2", "--latency-max", "1"],
    ],
)
def test_nonsense_settings_are_refused(argv: list[str]) -> None:
    with pytest.raises(ValueError):
        load(argv, environ={})


def test_unreadable_setting_exits_with_usage() -> None:
    with pytest.raises(SystemExit):
        load(["--rate-limit", "many"], environ={})


async def test_seed_demo_registers_demo_rules(make_client: Any) -> None:
    client = await make_client(seed_demo=True)
    assert await add_rule(client, "Bork", 10, "%") == 409
    assert await add_rule(client, "Coca-Cola", 1, "pt") == 409
    assert await add_order(client, ORDER, [("Напиток Coca-Cola", "1")]) == 202
    assert (await status_of(client, ORDER))[1]["accrual"] == Decimal("12.5")


async def test_seed_file_registers_rules_and_orders(make_client: Any, tmp_path: Path) -> None:
    seed = tmp_path / "seed.json"
    seed.write_text(
        json.dumps(
            {
                "goods": [{"match": "Bork", "reward": 5, "reward_type": "%"}],
                "orders": [
                    {"order": OTHER_ORDER, "goods": [{"description": "Bork", "price": 100}]}
                ],
            }
        )
    )
    client = await make_client(seed_file=str(seed))
    assert await status_of(client, OTHER_ORDER) == (
        200,
        {"order": OTHER_ORDER, "status": "PROCESSED", "accrual": 5},
    )


# --- the real process --------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "accrual-sim exited before listening"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"accrual-sim did not listen on {port} within {timeout} s")


@pytest.mark.e2e
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_process_serves_and_exits_cleanly_on_signal(sig: signal.Signals) -> None:
    port = _free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SIM_") and k not in ("RUN_ADDRESS", "LOG_LEVEL")
    }
    env["LOG_FORMAT"] = "json"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "accrual_sim",
            "-a",
            f"127.0.0.1:{port}",
            "--delay",
            "0",
            "--seed-demo",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for_port(port, process)
        base = f"http://127.0.0.1:{port}"
        body = json.dumps(
            {"order": ORDER, "goods": [{"description": "Телевизор Bork", "price": 1000}]}
        )
        request = urllib.request.Request(f"{base}/api/orders", data=body.encode(), method="POST")
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 202
        with urllib.request.urlopen(f"{base}/api/orders/{ORDER}", timeout=5) as response:
            assert json.load(response) == {"order": ORDER, "status": "PROCESSED", "accrual": 100}
        process.send_signal(sig)
        assert process.wait(timeout=5) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        assert process.stderr is not None
        process.stderr.close()
        assert process.stdout is not None
        process.stdout.close()
