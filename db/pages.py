"""Keyset pages of a user's list, rendered as JSON by PostgreSQL.

A list is read newest first in pages of at most ``PAGE_ROWS`` rows, each page
one short statement that continues after the last row of the one before
(``(time, id) < cursor`` on the list's index), so no connection is held
between pages and no page costs more than the one before it. PostgreSQL
writes each page as the comma-separated JSON objects of the API's answer, so
the API never builds a Python object per row: it only frames and forwards
bytes. The JSON names are the API's: it hands them to the list's builder
(``db.orders.listing``, ``db.balance.withdrawals``), which writes them into
the statement once, at import.

Rows never move in these orders (the time is set once, at insert), and new
rows are newer than any cursor, so paging through a list that changes meanwhile
neither repeats nor skips a row.
"""

import dataclasses
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import asyncpg

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

# Rows per page: a page is about 110 KB of JSON and a millisecond or two of
# PostgreSQL's time, short enough that other requests interleave between pages.
PAGE_ROWS = 1000

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Before every row: the first page of a list.
_START = (datetime.max.replace(tzinfo=UTC), 2**63 - 1)
_CURSOR = re.compile(r"^(-?[0-9]{1,17})_([0-9]{1,19})$")
# A JSON name the statements can carry as is: no quoting in SQL or in JSON.
_NAME = re.compile(r"[a-z][a-z0-9_]*")


@dataclass(frozen=True, slots=True)
class Cursor:
    """The position after one row: its time and id."""

    at: datetime
    id: int

    def text(self) -> str:
        """The opaque form clients send back: ``<microseconds>_<id>``."""
        delta = self.at - _EPOCH
        micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
        return f"{micros}_{self.id}"

    @classmethod
    def parse(cls, text: str) -> "Cursor | None":
        """The cursor ``text()`` wrote, or None when ``text`` is not one."""
        match = _CURSOR.match(text)
        if match is None:
            return None
        try:
            at = _EPOCH + timedelta(microseconds=int(match[1]))
        except OverflowError:
            return None
        row_id = int(match[2])
        return cls(at, row_id) if row_id < 2**63 else None


START = Cursor(*_START)


@dataclass(frozen=True, slots=True)
class Page:
    """``count`` rows as comma-separated JSON objects, and the cursor after the last."""

    items: bytes
    count: int
    last: Cursor


@dataclass(frozen=True, slots=True)
class Listing:
    """A user's list: the page statement and the boundary statement.

    ``page``: ``$1`` user, ``$2``/``$3`` cursor, ``$4`` rows; one row
    ``(items, n, last_at, last_id)`` or none when nothing follows the cursor.
    ``boundary``: ``$1`` user, ``$2``/``$3`` cursor, ``$4`` offset; the keys of
    the row at that offset after the cursor and of the one after it (no JSON).
    """

    page: str
    boundary: str


def json_keys(names: "DataclassInstance") -> dict[str, str]:
    """Each field of a dataclass of JSON names as the key it writes: ``'"name":'``."""
    keys = {}
    for field in dataclasses.fields(names):
        name = getattr(names, field.name)
        if not (isinstance(name, str) and _NAME.fullmatch(name)):
            raise ValueError(f"{field.name}: {name!r} is not a plain lower-case JSON name")
        keys[field.name] = f'"{name}":'
    return keys


def page_statement(*, table: str, time: str, where: str, item: str) -> str:
    """One page after a cursor, as a single row of rendered JSON."""
    return f"""
WITH page AS (
    SELECT id, {time} AS at, {item} AS item
    FROM {table}
    WHERE user_id = $1 AND {where}({time}, id) < ($2, $3)
    ORDER BY {time} DESC, id DESC
    LIMIT $4
)
SELECT convert_to(string_agg(item, ',' ORDER BY at DESC, id DESC), 'UTF8') AS items,
       count(*) AS n,
       min(at) AS last_at,
       min(id) FILTER (WHERE at = (SELECT min(at) FROM page)) AS last_id
FROM page
HAVING count(*) > 0
"""


def boundary_statement(*, table: str, time: str, where: str) -> str:
    """The keys at an offset after a cursor (an index-only walk, nothing rendered)."""
    return f"""
SELECT {time} AS at, id
FROM {table}
WHERE user_id = $1 AND {where}({time}, id) < ($2, $3)
ORDER BY {time} DESC, id DESC
OFFSET $4 LIMIT 2
"""


async def page(
    pool: asyncpg.Pool, listing: Listing, user_id: int, after: Cursor, rows: int
) -> Page | None:
    """Up to ``rows`` rows after ``after``; None when there are none."""
    row = await pool.fetchrow(listing.page, user_id, after.at, after.id, rows)
    if row is None:
        return None
    return Page(row["items"], row["n"], Cursor(row["last_at"], row["last_id"]))


async def boundary(
    pool: asyncpg.Pool, listing: Listing, user_id: int, after: Cursor, skip: int
) -> Cursor | None:
    """Where to continue when more than ``skip`` rows follow ``after``; else None.

    The cursor is the one after the ``skip``-th row (``after`` itself for 0).
    """
    found = await pool.fetch(listing.boundary, user_id, after.at, after.id, max(skip - 1, 0))
    if skip == 0:
        return after if found else None
    if len(found) < 2:
        return None
    return Cursor(found[0]["at"], found[0]["id"])
