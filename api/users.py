"""Register, log in, log out and change the password."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from aiohttp import web

from api.auth import clear_cookie, hand_out, session_required
from api.bodies import read_credentials, read_password_change
from api.errors import ApiError, Overloaded
from api.passwords import HashingBusy, Work
from api.sessions import Session
from api.state import DEVICES, PASSWORDS, POOL, SESSIONS, SETTINGS, THROTTLE
from api.throttle import Throttled
from db import sessions as db_sessions
from db import users
from shared.responses import json_response

log = structlog.get_logger(__name__)

# Seconds a refusal for busy hashing waits before it is sent.
REFUSAL_PAUSE = 0.25


@asynccontextmanager
async def _refusals() -> AsyncIterator[None]:
    """Refusals for busy hashing (503, 429 for one address) and spent throttles (429).

    Prompt, but not instant: a client that keeps its connection busy with
    refused requests would otherwise turn refusals into a CPU flood of their
    own, starving the hashing threads (which run at a lower priority than the
    event loop). A short pause costs nothing but a sleeping coroutine; it is
    taken outside the hashing queue, whose turn is given back first.
    """
    try:
        yield
    except Throttled:
        await asyncio.sleep(REFUSAL_PAUSE)
        raise
    except HashingBusy as exc:
        # Named on the access line (shed=hashing…) and counted: no line of its own.
        await asyncio.sleep(REFUSAL_PAUSE)
        if exc.per_address:
            raise Overloaded(
                429, "too many password checks from this address at once", "hashing_address"
            ) from exc
        raise Overloaded(
            503, "too many password checks waiting; try again shortly", "hashing"
        ) from exc


async def register(request: web.Request) -> web.StreamResponse:
    login, password = await read_credentials(request)
    pool, passwords, throttle = request.app[POOL], request.app[PASSWORDS], request.app[THROTTLE]
    address = throttle.client_address(request)
    # Counted only once it holds a hashing turn: a refusal for a full queue leaves no trace.
    async with _refusals():
        throttle.registration_closed(request)
        async with passwords.turn(Work.REGISTRATION, address):
            await throttle.registration(pool, request)
            password_hash = await passwords.hash_in_turn(password)
    user_id = await users.register(pool, login, password_hash)
    if user_id is None:
        raise ApiError(409, "login is already taken")
    response = json_response({"status": "registered"})
    hand_out(request, response, user_id, generation=0)
    request.app[DEVICES].hand_out(response, login)
    log.info("user registered")
    return response


async def login(request: web.Request) -> web.StreamResponse:
    """Check a login's password: reads first, then a hashing turn, then the reservation.

    The attempt is reserved in PostgreSQL only once it holds its turn, so an
    attempt the queue refuses writes nothing. An unknown login is checked
    against a decoy hash, in the same queue and at the same cost.
    """
    login, password = await read_credentials(request)
    pool, passwords, throttle = request.app[POOL], request.app[PASSWORDS], request.app[THROTTLE]
    devices = request.app[DEVICES]
    address = throttle.client_address(request)
    vouched = devices.vouches_for(request, login)
    async with _refusals():
        # Refused before anything is read when even a clean (or trusted) login would be.
        passwords.queue.check(Work.TRUSTED_LOGIN if vouched else Work.LOGIN, address)
    found = await users.credentials(pool, login)
    work, rank = await throttle.login_work(pool, request, login)
    if vouched and await devices.trusted(pool, request, login, request.app[SETTINGS].login_window):
        work = Work.TRUSTED_LOGIN
    async with (
        _refusals(),
        passwords.turn(work, address, rank),
        throttle.login_attempt(pool, request, login) as attempt,
    ):
        ok = await passwords.verify_in_turn(found.password_hash if found else None, password)
        attempt.verified = True
        if not ok or found is None:
            log.info("login failed")
            raise ApiError(401, "wrong login or password")
        attempt.succeeded = True
    response = json_response({"status": "authenticated"})
    hand_out(request, response, found.user_id, generation=found.session_generation)
    devices.hand_out(response, login)
    return response


@session_required
async def logout(request: web.Request, session: Session) -> web.StreamResponse:
    """End the calling session for every API process; other sessions live on."""
    await request.app[SESSIONS].end(request.app[POOL], session)
    response = json_response({"status": "logged out"})
    clear_cookie(request, response)
    log.info("logged out")
    return response


@session_required
async def change_password(request: web.Request, session: Session) -> web.StreamResponse:
    """Check the current password, store the new one, end every session, start a new one.

    The token this request came with ends too (it may be the stolen copy the
    customer is reacting to): the answer carries a fresh one.
    """
    old, new = await read_password_change(request)
    throttle = request.app[THROTTLE]
    address = throttle.client_address(request)
    pool, passwords = request.app[POOL], request.app[PASSWORDS]
    ended = ApiError(401, "authentication required")
    # Guesses at the current password, by whoever holds the token, are
    # throttled like logins: per customer and address, fleet-wide.
    current_hash = await db_sessions.password_hash(
        pool, session.user_id, session.generation, session.session_id
    )
    if current_hash is None:
        raise ended
    work, rank = await throttle.password_change_work(pool, request, session.user_id)
    async with (
        _refusals(),
        passwords.turn(work, address, rank),
        throttle.password_change_attempt(pool, request, session.user_id) as attempt,
    ):
        ok = await passwords.verify_in_turn(current_hash, old)
        attempt.verified = True
        if not ok:
            log.info("password change refused: wrong current password")
            raise ApiError(403, "the current password is wrong")
        attempt.succeeded = True
    async with _refusals():
        new_hash = await passwords.hash(new, address)
    generation = await db_sessions.change_password(
        pool, session.user_id, session.generation, session.session_id, new_hash
    )
    if generation is None:  # another change or a logout of this session committed first
        raise ended
    request.app[SESSIONS].ended_for(session.user_id)
    response = json_response({"status": "password changed"})
    hand_out(request, response, session.user_id, generation)
    log.info("password changed")
    return response
