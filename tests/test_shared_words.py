"""The words every process shares: order statuses and the groups of database errors."""

import asyncio
import re

import asyncpg
import pytest

from api.openapi import document
from shared.pg import DATABASE_DOWN, WORTH_RETRYING, WORTH_RETRYING_OR_BUSY, PoolBusy
from shared.statuses import FINAL_STATUSES, AccrualStatus, OrderStatus

_LITERAL = re.compile(r"'([A-Z]+)'::text")


async def _literals(pool: asyncpg.Pool, sql: str, name: str) -> set[str]:
    definition = await pool.fetchval(sql, name)
    assert definition is not None, name
    return set(_LITERAL.findall(definition))


_CHECK = """SELECT pg_get_constraintdef(oid) FROM pg_constraint
WHERE conname = $1 AND connamespace = 'gophermart'::regnamespace"""
_INDEX = "SELECT indexdef FROM pg_indexes WHERE schemaname = 'gophermart' AND indexname = $1"


async def test_the_databases_statuses_are_the_enums(pool: asyncpg.Pool) -> None:
    # SQL spells the statuses as literals; these are the places where the
    # schema holds them, each tied to the Python words.
    assert await _literals(pool, _CHECK, "orders_status_check") == set(OrderStatus)
    assert await _literals(pool, _CHECK, "order_status_counts_status_check") == FINAL_STATUSES
    pending = {s for s in OrderStatus if not s.final}
    for index in ("orders_due", "orders_queue"):  # the queue: what is not final
        assert await _literals(pool, _INDEX, index) == pending


def test_the_api_document_lists_our_statuses_in_order() -> None:
    schema = document()["components"]["schemas"]["OrderStatus"]
    assert schema["enum"] == [status.value for status in OrderStatus]


def test_every_accrual_status_maps_to_ours_and_only_registered_is_renamed() -> None:
    renamed = {s: s.ours for s in AccrualStatus if s.ours != s}
    assert renamed == {AccrualStatus.REGISTERED: OrderStatus.NEW}
    assert {s.ours for s in AccrualStatus} == set(OrderStatus)


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(),
        TimeoutError(),
        asyncpg.CannotConnectNowError("the database system is starting up"),
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.InterfaceError("connection is closed"),
        asyncpg.InternalClientError("cannot switch to state 15"),
    ],
)
def test_a_database_out_of_reach_is_down_and_worth_retrying(exc: BaseException) -> None:
    assert isinstance(exc, DATABASE_DOWN)
    assert isinstance(exc, WORTH_RETRYING)


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.DeadlockDetectedError("deadlock detected"),
        asyncpg.SerializationError("could not serialize access"),
        asyncpg.QueryCanceledError("canceling statement due to statement timeout"),
        asyncpg.UniqueViolationError("duplicate key value"),
    ],
)
def test_an_error_postgresql_reports_is_worth_retrying_but_not_down(exc: BaseException) -> None:
    # The API answers these 500 (or 503 "busy" for a statement timeout), never
    # "service unavailable": the database answered.
    assert not isinstance(exc, DATABASE_DOWN)
    assert isinstance(exc, WORTH_RETRYING)


def test_a_busy_pool_is_retried_later_by_background_tasks_only() -> None:
    exc = PoolBusy("pool", 1.0)
    assert isinstance(exc, WORTH_RETRYING_OR_BUSY)
    assert not isinstance(exc, WORTH_RETRYING)
    assert isinstance(asyncpg.DeadlockDetectedError("deadlock detected"), WORTH_RETRYING_OR_BUSY)


@pytest.mark.parametrize("exc", [ValueError("a bug"), KeyError("k"), asyncio.CancelledError()])
def test_a_bug_or_a_cancellation_is_neither(exc: BaseException) -> None:
    assert not isinstance(exc, DATABASE_DOWN)
    assert not isinstance(exc, WORTH_RETRYING)
    assert not isinstance(exc, WORTH_RETRYING_OR_BUSY)
