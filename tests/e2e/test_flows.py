"""The whole system as real processes: simulator, API, two workers, PostgreSQL."""

import signal
from decimal import Decimal

import asyncpg

from shared.luhn import with_check_digit
from tests.helpers import eventually
from tests.processes import Service
from tests.system import Stack, SystemFactory


async def _status(system: Stack, token: str, number: str) -> str | None:
    code, orders = await system.get(token, "/api/user/orders")
    if code != 200:
        return None
    return next((o["status"] for o in orders if o["number"] == number), None)


async def _orders_known_and_uploaded(
    system: Stack, login: str, first: int, count: int
) -> tuple[str, list[str]]:
    """``count`` purchases of one "Bork" registered in the simulator and uploaded by a user."""
    numbers = [with_check_digit(str(first + i)) for i in range(count)]
    for number in numbers:
        assert await system.sim_order(number, [("Bork", "1")]) == 202
    token = await system.register(login)
    for number in numbers:
        assert await system.upload(token, number) == 202
    return token, numbers


async def _wait_all_processed(system: Stack, pool: asyncpg.Pool, count: int, within: float) -> None:
    async def all_processed() -> bool:
        done: int = await pool.fetchval(
            "SELECT count(*) FROM gophermart.orders WHERE status = 'PROCESSED'"
        )
        return done == count

    await eventually(
        all_processed, within=within, what="every order PROCESSED", context=system.logs_tail
    )


async def test_spec_example_from_rule_to_withdrawal(start_system: SystemFactory) -> None:
    system = await start_system()
    await system.sim_rule("Bork", "5", "%")
    assert (
        await system.sim_order(
            "12345678903", [("Стиральная машинка LG", "47399.99"), ("Телевизор Bork", "14599.50")]
        )
        == 202
    )
    token = await system.register("shopper")
    assert await system.upload(token, "12345678903") == 202

    async def processed() -> bool:
        return await _status(system, token, "12345678903") == "PROCESSED"

    # The bound covers the workers' start-up too, slow on a loaded machine.
    await eventually(processed, within=30, what="order PROCESSED", context=system.logs_tail)
    _, orders = await system.get(token, "/api/user/orders")
    assert orders[0]["accrual"] == Decimal("729.98")
    assert await system.get(token, "/api/user/balance") == (
        200,
        {"current": Decimal("729.98"), "withdrawn": 0},
    )
    assert await system.withdraw(token, "2377225624", Decimal("500")) == 200
    assert await system.withdraw(token, with_check_digit("777"), Decimal("230")) == 402
    assert await system.get(token, "/api/user/balance") == (
        200,
        {"current": Decimal("229.98"), "withdrawn": 500},
    )
    code, withdrawals = await system.get(token, "/api/user/withdrawals")
    assert code == 200
    assert [(w["order"], w["sum"]) for w in withdrawals] == [("2377225624", 500)]


async def test_order_unknown_to_the_accrual_system_stays_new(start_system: SystemFactory) -> None:
    system = await start_system(sim_args=("--delay", "30"))
    await system.sim_rule("Pringles", "10", "%")
    assert await system.sim_order("79927398713", [("Чипсы Pringles", "100")]) == 202
    token = await system.register("patient")
    assert await system.upload(token, "12345678903") == 202  # the simulator never heard of it
    assert await system.upload(token, "79927398713") == 202  # known, computing for 30 s

    async def asked_about_both_twice() -> bool:
        stats = await system.sim_stats()
        return int(stats["requests"]) >= 4

    await eventually(
        asked_about_both_twice, within=10, what="repeated asks", context=system.logs_tail
    )
    assert await _status(system, token, "12345678903") == "NEW"
    assert await _status(system, token, "79927398713") in ("NEW", "PROCESSING")
    assert await system.get(token, "/api/user/balance") == (200, {"current": 0, "withdrawn": 0})


async def test_killed_worker_loses_nothing_and_credits_nothing_twice(
    start_system: SystemFactory, pool: asyncpg.Pool
) -> None:
    # Every answer takes 0.5-1 s, so the first worker dies holding leases.
    system = await start_system(
        workers=1,
        sim_args=(
            "--delay",
            "0",
            "--latency-rate",
            "1",
            "--latency-min",
            "0.5",
            "--latency-max",
            "1",
        ),
        worker_env={"WORKER_LEASE": "2", "WORKER_BATCH_SIZE": "20"},
    )
    await system.sim_rule("Bork", "12.5", "pt")
    token, numbers = await _orders_known_and_uploaded(system, "survivor", 40000, 40)

    async def leases_held() -> bool:
        held: int = await pool.fetchval(
            "SELECT count(*) FROM gophermart.orders WHERE attempts > 0"
            " AND status IN ('NEW', 'PROCESSING') AND next_attempt_at > now()"
        )
        return held > 0

    await eventually(leases_held, within=10, what="claimed orders", context=system.logs_tail)
    system.workers[0].stop(signal.SIGKILL)
    system.add_worker()
    system.add_worker()

    await _wait_all_processed(system, pool, len(numbers), within=40)
    credits = await pool.fetch(
        "SELECT order_number, count(*) AS n FROM gophermart.ledger"
        " WHERE kind = 'accrual' GROUP BY order_number"
    )
    assert sorted(r["order_number"] for r in credits) == sorted(numbers)
    assert all(r["n"] == 1 for r in credits)
    assert await system.get(token, "/api/user/balance") == (200, {"current": 500, "withdrawn": 0})
    assert await pool.fetchval("SELECT current FROM gophermart.balances") == Decimal("500.00")


async def test_fleet_honours_the_rate_limit_pause(
    start_system: SystemFactory, pool: asyncpg.Pool
) -> None:
    # 8 requests per 2-second window, two workers, 24 orders: three windows at least,
    # so the fleet is paused and resumed more than once.
    system = await start_system(
        sim_args=("--delay", "0", "--rate-limit", "8", "--rate-window", "2")
    )
    await system.sim_rule("Bork", "1", "pt")
    token, numbers = await _orders_known_and_uploaded(system, "limited", 50000, 24)

    await _wait_all_processed(system, pool, len(numbers), within=60)
    stats = await system.sim_stats()
    assert stats["requests_during_pause"] == 0, stats
    assert stats["too_many_requests"] >= 1, stats  # the limit was actually hit
    assert await system.get(token, "/api/user/balance") == (200, {"current": 24, "withdrawn": 0})


async def test_processes_exit_cleanly_on_sigint_and_sigterm(start_system: SystemFactory) -> None:
    system = await start_system()
    # A signal that lands before the worker has installed its handlers (it is
    # still importing) kills it the default way: wait until both have started.
    for worker in system.workers:
        await eventually(lambda w=worker: _started(w), within=30, what=f"{worker.name} started")
    assert system.workers[0].stop(signal.SIGINT) == 0
    assert system.workers[1].stop(signal.SIGTERM) == 0
    assert system.api.stop(signal.SIGTERM) == 0


async def _started(worker: Service) -> bool:
    return '"worker started"' in worker.log()
