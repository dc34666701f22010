"""PostgreSQL stops under load and comes back: the API and the workers recover by themselves."""

import asyncio
import contextlib
import json
from decimal import Decimal
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from shared.localpg import LocalPostgres
from shared.luhn import with_check_digit
from tests.helpers import eventually, leaked_secrets
from tests.system import SESSION_SECRET, Stack

pytestmark = pytest.mark.e2e

OUTAGE = 14.0  # seconds PostgreSQL stays down
PROMPT = 5.0  # seconds: an answer slower than this while the database is down is a hang
LISTENERS = (
    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'gophermart-worker-listen'"
)


async def _status_of(stack: Stack, token: str, number: str) -> str | None:
    code, orders = await stack.get(token, "/api/user/orders")
    return (
        next((o["status"] for o in orders if o["number"] == number), None) if code == 200 else None
    )


@pytest.mark.timeout(180)
async def test_api_and_workers_ride_out_a_database_restart_losing_nothing(
    own_server: LocalPostgres, log_dir: Path
) -> None:
    # A 30 s polling fallback: after the restart only a working LISTEN is prompt.
    stack = await Stack.start(
        own_server.dsn,
        log_dir,
        workers=2,
        sim_args=("--delay", "0"),
        api_env={"DB_TIMEOUT": "2"},
        worker_env={
            "WORKER_POLL_INTERVAL": "30",
            "WORKER_LEASE": "2",
            "DB_TIMEOUT": "2",
            "WORKER_BACKOFF_MAX": "1",
        },
    )
    try:
        await stack.sim_rules()
        token = await stack.register("steady", "outage-pass-9d1")
        numbers = (with_check_digit(str(3_000_000 + i)) for i in range(100_000))

        # Credit something and spend part of it before the outage.
        first = next(numbers)
        assert await stack.sim_order(first, [("Чайник Bork", "7000")]) == 202
        assert await stack.upload(token, first) == 202

        async def first_processed() -> bool:
            return await _status_of(stack, token, first) == "PROCESSED"

        await eventually(
            first_processed, within=30, what="first order PROCESSED", context=stack.logs_tail
        )
        assert await stack.withdraw(token, "2377225624", Decimal("123.45")) == 200
        # Orders the accrual system never heard of are asked about every second,
        # so every worker's claim loop is busy, not idle, when the database goes.
        pending = [next(numbers) for _ in range(4)]
        for number in pending:
            assert await stack.upload(token, number) == 202

        # A steady stream of uploads through the outage; every answer on time.
        acknowledged = [first]
        attempted = [first]  # a 503 may still have committed: listed, never promised
        statuses: list[int] = []
        stop = asyncio.Event()

        async def upload_stream() -> None:
            while not stop.is_set():
                number = next(numbers)
                assert await stack.sim_order(number, [("Телевизор Bork", "100")]) == 202
                attempted.append(number)
                status = await asyncio.wait_for(stack.upload(token, number), PROMPT)
                statuses.append(status)
                if status == 202:
                    acknowledged.append(number)
                await asyncio.sleep(0.05)

        stream = asyncio.create_task(upload_stream())
        await asyncio.sleep(1.5)
        loop = asyncio.get_running_loop()
        await asyncio.to_thread(own_server.stop, "fast")
        stopped_at = loop.time()
        try:
            # While it is down: a prompt JSON 503 from every database-backed endpoint.
            for method, path, body in (
                ("GET", "/api/user/orders", None),
                ("GET", "/api/user/balance", None),
                ("GET", "/api/user/withdrawals", None),
                ("POST", "/api/user/orders", "79927398713"),
                ("POST", "/api/user/balance/withdraw", '{"order": "12345678903", "sum": 1}'),
                ("POST", "/api/user/login", '{"login": "steady", "password": "x"}'),
            ):
                async with (
                    asyncio.timeout(PROMPT),
                    stack.http.request(
                        method,
                        f"{stack.api_url}{path}",
                        data=body,
                        headers={"Authorization": token, "Content-Type": "application/json"}
                        if body and body.startswith("{")
                        else {"Authorization": token},
                    ) as response,
                ):
                    assert response.status == 503, (path, response.status)
                    assert response.content_type == "application/json"
                    assert json.loads(await response.read()) == {
                        "error": "service temporarily unavailable"
                    }
            # Long enough for every retry loop to back off far (the claim loop's
            # backoff reaches 12.8 s by now): recovery must not wait for it.
            await asyncio.sleep(OUTAGE - (loop.time() - stopped_at))
            assert stack.api.running and all(w.running for w in stack.workers), stack.logs_tail()
        finally:
            await asyncio.to_thread(own_server.start)
        await asyncio.sleep(1.0)
        stop.set()
        await stream
        assert set(statuses) <= {202, 503}, statuses  # never a 500, never a hang
        assert 503 in statuses  # the outage did happen under load

        # Back without a restart: the API...
        async def api_serves() -> bool:
            with contextlib.suppress(aiohttp.ClientError):
                return (await stack.get(token, "/api/user/balance"))[0] == 200
            return False

        await eventually(api_serves, within=10, what="API serving again")
        # ... and each worker's LISTEN connection.
        conn = await asyncpg.connect(own_server.dsn)
        try:

            async def listening() -> bool:
                return int(await conn.fetchval(LISTENERS)) == len(stack.workers)

            await eventually(
                listening, within=10, what="workers listening again", context=stack.logs_tail
            )
        finally:
            await conn.close()
        fresh = next(numbers)
        assert await stack.sim_order(fresh, [("Телевизор Bork", "100")]) == 202
        assert await stack.upload(token, fresh) == 202
        acknowledged.append(fresh)
        attempted.append(fresh)

        async def fresh_processed() -> bool:
            return await _status_of(stack, token, fresh) == "PROCESSED"

        await eventually(
            fresh_processed,
            within=3,
            what="an order uploaded after recovery "
            "PROCESSED (the polling fallback is 30 s: LISTEN must work)",
            context=stack.logs_tail,
        )

        # Nothing acknowledged is lost; everything completes, credited once.
        listed: set[str] = set()

        async def all_processed() -> bool:
            code, orders = await stack.get(token, "/api/user/orders")
            listed.clear()
            listed.update(o["number"] for o in orders or [])
            return code == 200 and all(
                o["status"] == "PROCESSED" for o in orders if o["number"] not in pending
            )

        await eventually(
            all_processed, within=20, what="every uploaded order PROCESSED", context=stack.logs_tail
        )
        assert set(acknowledged) | set(pending) <= listed <= set(attempted) | set(pending)
        conn = await asyncpg.connect(own_server.dsn)
        try:
            assert (
                await conn.fetch(
                    "SELECT order_number FROM gophermart.ledger"
                    " WHERE kind = 'accrual' GROUP BY order_number"
                    " HAVING count(*) > 1"
                )
                == []
            )
        finally:
            await conn.close()
        accrued = Decimal(700) + Decimal(10) * (len(listed) - len(pending) - 1)
        assert await stack.get(token, "/api/user/balance") == (
            200,
            {"current": accrued - Decimal("123.45"), "withdrawn": Decimal("123.45")},
        )
        assert {await _status_of(stack, token, n) for n in pending} == {"NEW"}
        code, withdrawals = await stack.get(token, "/api/user/withdrawals")
        assert code == 200 and [w["order"] for w in withdrawals] == ["2377225624"]
        assert stack.api.running and all(w.running for w in stack.workers)
        assert (
            leaked_secrets(
                stack.logs(), ["outage-pass-9d1", SESSION_SECRET, token.removeprefix("Bearer ")]
            )
            == []
        )
    finally:
        await stack.close()
