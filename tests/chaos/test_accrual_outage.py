"""The accrual system goes away and comes back empty: orders wait, none is finalised wrongly."""

import asyncio
import signal
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest

from shared.luhn import with_check_digit
from tests.helpers import eventually, leaked_secrets
from tests.system import SESSION_SECRET, Stack

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(120)
async def test_orders_wait_out_an_accrual_outage_and_complete_after_it(
    database_uri: str, log_dir: Path, pool: asyncpg.Pool
) -> None:
    stack = await Stack.start(
        database_uri,
        log_dir,
        workers=2,
        sim_args=("--delay", "0"),
        worker_env={"WORKER_BACKOFF_MAX": "2"},
    )
    try:
        await stack.sim_rules()
        token = await stack.register("waiting", "accrual-outage-pass-3e7")
        before = with_check_digit("6100001")
        assert await stack.sim_order(before, [("Чайник Bork", "7000")]) == 202
        assert await stack.upload(token, before) == 202

        async def statuses() -> dict[str, tuple[str, int]]:
            rows = await pool.fetch("SELECT number, status, attempts FROM orders")
            return {r["number"]: (r["status"], r["attempts"]) for r in rows}

        async def processed(numbers: list[str]) -> bool:
            now = await statuses()
            return all(now.get(n, ("", 0))[0] == "PROCESSED" for n in numbers)

        # The bound covers the workers' start-up too, slow on a loaded machine.
        await eventually(lambda: processed([before]), within=30, what="first order PROCESSED")

        stack.sim.stop(signal.SIGTERM)
        # Uploaded while the accrual system is down: the restarted one will know
        # `returning` (re-registered), learn `late` later, and never hear of `unknown`.
        returning = [with_check_digit(str(6200000 + i)) for i in range(10)]
        late = [with_check_digit(str(6300000 + i)) for i in range(5)]
        unknown = with_check_digit("6400001")
        for number in [*returning, *late, unknown]:
            assert await stack.upload(token, number) == 202

        async def asked_repeatedly() -> bool:
            now = await statuses()
            return all(now[n][1] >= 2 for n in returning)

        await eventually(asked_repeatedly, within=10, what="orders asked about during the outage")
        await asyncio.sleep(2)
        during = await statuses()
        assert {during[n][0] for n in [*returning, *late, unknown]} == {"NEW"}, during
        assert all(w.running for w in stack.workers)

        stack.sim.start()  # the same port, and no memory of anything
        await stack.sim_rules()
        for number in returning:
            assert await stack.sim_order(number, [("Чипсы Pringles бекон", "147.5")]) == 202
        await asyncio.sleep(1)
        for number in late:
            assert await stack.sim_order(number, [("Напиток Coca-Cola Zero 0.5л", "55")]) == 202
        after = with_check_digit("6500001")
        assert await stack.sim_order(after, [("Телевизор Bork", "14599.50")]) == 202
        assert await stack.upload(token, after) == 202

        await eventually(
            lambda: processed([*returning, *late, after]),
            within=20,
            what="every order the accrual system knows PROCESSED",
            context=stack.logs_tail,
        )
        final = await statuses()
        assert final[unknown][0] == "NEW"  # a 204 is never INVALID
        # 700 + 10 x 11.06 (147.5 x 7.5 % = 11.0625) + 5 x 12.5 + 1459.95
        expected = Decimal(700) + 10 * Decimal("11.06") + 5 * Decimal("12.5") + Decimal("1459.95")
        assert await stack.get(token, "/api/user/balance") == (
            200,
            {"current": expected, "withdrawn": 0},
        )
        credits = await pool.fetch(
            "SELECT order_number, count(*) AS n FROM ledger"
            " WHERE kind = 'accrual' GROUP BY order_number"
        )
        assert sorted(r["order_number"] for r in credits) == sorted(
            [before, *returning, *late, after]
        )
        assert {r["n"] for r in credits} == {1}
        assert stack.api.running and all(w.running for w in stack.workers)
        assert (
            leaked_secrets(
                stack.logs(),
                ["accrual-outage-pass-3e7", SESSION_SECRET, token.removeprefix("Bearer ")],
            )
            == []
        )
    finally:
        await stack.close()
