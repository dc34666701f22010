"""Plain helpers the tests share: no fixtures here (those live in conftest.py).

Customers and points through the API or straight into the database, waiting for a
condition, and looking for secrets in logs.
"""

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from decimal import Decimal

import asyncpg
from aiohttp.test_utils import TestClient

# The session secret of the in-process API (conftest.py's ``api_settings``).
SECRET = "test-session-secret-8c41f0d2e9b7a536"


async def eventually(
    check: Callable[[], Awaitable[bool]],
    *,
    within: float,
    what: str = "",
    every: float = 0.05,
    context: Callable[[], str] | None = None,
) -> float:
    """Poll ``check`` every ``every`` seconds until it holds; the seconds it took.

    Fails after ``within`` seconds with ``what`` (by default the check's name) and,
    when given, whatever ``context()`` returns (e.g. the processes' log tails).
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not await check():
        if loop.time() - started > within:
            name = what or getattr(check, "__name__", repr(check))
            detail = f"\n{context()}" if context else ""
            raise AssertionError(f"{name}: not reached within {within} s{detail}")
        await asyncio.sleep(every)
    return loop.time() - started


# --- customers and points -----------------------------------------------------


async def register(client: TestClient, login: str, password: str = "secret-pass") -> str:
    """Register a user and return the ``Authorization`` header value handed out."""
    response = await client.post("/api/user/register", json={"login": login, "password": password})
    assert response.status == 200, await response.text()
    return response.headers["Authorization"]


async def credit(pool: asyncpg.Pool, user_login: str, amount: str, order: str) -> None:
    """Credit points the way the worker does: a ledger entry and the balance, together."""
    async with pool.acquire() as conn, conn.transaction():
        user_id = await conn.fetchval("SELECT id FROM users WHERE login = $1", user_login)
        await conn.execute(
            "INSERT INTO orders (number, user_id, status, accrual) "
            "VALUES ($1, $2, 'PROCESSED', $3)",
            order,
            user_id,
            Decimal(amount),
        )
        await conn.execute(
            "INSERT INTO ledger (user_id, kind, order_number, amount) "
            "VALUES ($1, 'accrual', $2, $3)",
            user_id,
            order,
            Decimal(amount),
        )
        await conn.execute(
            "UPDATE balances SET current = current + $2 WHERE user_id = $1",
            user_id,
            Decimal(amount),
        )


async def make_user(pool: asyncpg.Pool, login: str = "alice") -> int:
    """A customer straight in the database (no password that could log in)."""
    user_id: int = await pool.fetchval(
        "INSERT INTO users (login, password_hash) VALUES ($1, 'x') RETURNING id", login
    )
    await pool.execute("INSERT INTO balances (user_id) VALUES ($1)", user_id)
    return user_id


async def add_order(pool: asyncpg.Pool, user_id: int, number: str) -> int:
    """An uploaded order, NEW and due at once, as the API leaves it."""
    order_id: int = await pool.fetchval(
        "INSERT INTO orders (number, user_id) VALUES ($1, $2) RETURNING id", number, user_id
    )
    return order_id


async def order_row(pool: asyncpg.Pool, number: str) -> asyncpg.Record:
    """An order's status, accrual, attempts and ``due_in`` (seconds until its next check)."""
    row = await pool.fetchrow(
        "SELECT status, accrual, attempts, extract(epoch FROM next_attempt_at - now())::float8"
        " AS due_in FROM orders WHERE number = $1",
        number,
    )
    assert row is not None
    return row


async def status_of(pool: asyncpg.Pool, number: str) -> str:
    status: str = await pool.fetchval("SELECT status FROM orders WHERE number = $1", number)
    return status


# --- logs -------------------------------------------------------------------------


def leaked_secrets(logs: dict[str, str], secrets: Iterable[str]) -> list[tuple[str, str]]:
    """(process, secret) for every secret found in a process's log; `$argon2id$` always."""
    needles = {s for s in secrets if s} | {"$argon2id$"}
    return [
        (name, needle)
        for name, text in logs.items()
        for needle in sorted(needles)
        if needle in text
    ]
