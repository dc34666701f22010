"""Register, log in, log out and change the password."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from aiohttp import web

from api.auth import clear_cookie, hand_out, session_required
from api.bodies import read_credentials, read_password_change
from api.errors import ApiError
from api.passwords import HashingBusy
from api.sessions import Session
from api.state import PASSWORDS, POOL, SESSIONS, THROTTLE
from db import sessions as db_sessions
from db import users
from shared.responses import json_response

log = structlog.get_logger(__name__)

# Seconds a refusal for busy hashing waits before it is sent.
REFUSAL_PAUSE = 0.25


@asynccontextmanager
async def _hashing() -> AsyncIterator[None]:
    """Hashing work refused for a full queue becomes a prompt 503 (429 for one address).

    Prompt, but not instant: a client that keeps its connection busy with
    refused requests would otherwise turn refusals into a CPU flood of their
    own, starving the hashing threads (which run at a lower priority than the
    event loop). A short pause costs nothing but a sleeping coroutine.
    """
    try:
        yield
    except HashingBusy as exc:
        log.info("hashing busy", per_address=exc.per_address)
        await asyncio.sleep(REFUSAL_PAUSE)
        if exc.per_address:
            raise ApiError(
                429, "too many password checks from this address at once", {"Retry-After": "1"}
            ) from exc
        raise ApiError(
            503, "too many password checks waiting; try again shortly", {"Retry-After": "1"}
        ) from exc


async def register(request: web.Request) -> web.StreamResponse:
    login, password = await read_credentials(request)
    throttle = request.app[THROTTLE]
    await throttle.registration(request.app[POOL], request)
    async with _hashing():
        password_hash = await request.app[PASSWORDS].hash(
            password, throttle.client_address(request)
        )
    user_id = await users.register(request.app[POOL], login, password_hash)
    if user_id is None:
        raise ApiError(409, "login is already taken")
    response = json_response({"status": "registered"})
    hand_out(request, response, user_id, generation=0)
    log.info("user registered")
    return response


async def login(request: web.Request) -> web.StreamResponse:
    login, password = await read_credentials(request)
    pool = request.app[POOL]
    throttle = request.app[THROTTLE]
    async with throttle.login_attempt(pool, request, login) as attempt:
        found = await users.credentials(pool, login)
        async with _hashing():
            ok = await request.app[PASSWORDS].verify(
                found.password_hash if found else None, password, throttle.client_address(request)
            )
        attempt.verified = True
        if not ok or found is None:
            log.info("login failed")
            raise ApiError(401, "wrong login or password")
        attempt.succeeded = True
    response = json_response({"status": "authenticated"})
    hand_out(request, response, found.user_id, generation=found.session_generation)
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
    async with throttle.password_change_attempt(pool, request, session.user_id) as attempt:
        current_hash = await db_sessions.password_hash(
            pool, session.user_id, session.generation, session.session_id
        )
        if current_hash is None:
            raise ended
        async with _hashing():
            ok = await passwords.verify(current_hash, old, address)
        attempt.verified = True
        if not ok:
            log.info("password change refused: wrong current password")
            raise ApiError(403, "the current password is wrong")
        attempt.succeeded = True
    async with _hashing():
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
