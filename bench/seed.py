"""Users, tokens and rows the benchmarks start from."""

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import aiohttp
import asyncpg

from shared.pg import SCHEMA

# Digit-only logins, so pgbench can draw one with random(): "9000001", "9000002", ...
LOGIN_BASE = 9_000_000


@dataclass(frozen=True, slots=True)
class User:
    id: int
    login: str
    password: str
    token: str


async def register(base_url: str, logins: Sequence[str]) -> list[User]:
    """Register through the API (Argon2 and all); each user's bearer token."""
    sem = asyncio.Semaphore(4)
    async with aiohttp.ClientSession() as session:

        async def one(login: str) -> tuple[str, str, str]:
            password = f"pw-{login}"
            async with (
                sem,
                session.post(
                    f"{base_url}/api/user/register", json={"login": login, "password": password}
                ) as resp,
            ):
                if resp.status != 200:
                    raise RuntimeError(f"register {login}: {resp.status} {await resp.text()}")
                return login, password, resp.headers["Authorization"]

        made = await asyncio.gather(*(one(login) for login in logins))
    return [User(0, login, password, token) for login, password, token in made]


async def with_ids(conn: asyncpg.Connection, users: list[User]) -> list[User]:
    rows = await conn.fetch(
        f"SELECT id, login FROM {SCHEMA}.users WHERE login = ANY($1)", [u.login for u in users]
    )
    ids = {r["login"]: r["id"] for r in rows}
    return [User(ids[u.login], u.login, u.password, u.token) for u in users]


async def make_user(conn: asyncpg.Connection, login: str) -> int:
    """A user straight in the database (no password anyone can use)."""
    user_id: int = await conn.fetchval(
        f"INSERT INTO {SCHEMA}.users (login, password_hash) VALUES ($1, 'x') RETURNING id", login
    )
    await conn.execute(f"INSERT INTO {SCHEMA}.balances (user_id) VALUES ($1)", user_id)
    return user_id


async def add_orders(
    conn: asyncpg.Connection, user_id: int, numbers: Sequence[str], processed_every: int = 0
) -> None:
    """NEW orders in one statement (every ``processed_every``-th one PROCESSED with 10 points)."""
    statuses = [
        "PROCESSED" if processed_every and i % processed_every == 0 else "NEW"
        for i in range(len(numbers))
    ]
    await conn.execute(
        f"""INSERT INTO {SCHEMA}.orders (number, user_id, status, accrual)
            SELECT n, $2, s, CASE WHEN s = 'PROCESSED' THEN 10 END
            FROM unnest($1::text[], $3::text[]) AS t(n, s)""",
        list(numbers),
        user_id,
        statuses,
    )


async def fund(conn: asyncpg.Connection, user_ids: Sequence[int], amount: Decimal) -> None:
    await conn.execute(
        f"UPDATE {SCHEMA}.balances SET current = $2 WHERE user_id = ANY($1)", list(user_ids), amount
    )


def write_lines(path: Path, lines: Sequence[str]) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines))
    return path
