"""The words every process shares: the groups of database errors."""

import asyncio

import asyncpg
import pytest

from shared.pg import DATABASE_DOWN, WORTH_RETRYING


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


@pytest.mark.parametrize("exc", [ValueError("a bug"), KeyError("k"), asyncio.CancelledError()])
def test_a_bug_or_a_cancellation_is_neither(exc: BaseException) -> None:
    assert not isinstance(exc, DATABASE_DOWN)
    assert not isinstance(exc, WORTH_RETRYING)
