"""Register, log in, log out and change the password."""

import structlog
from aiohttp import web

from api.auth import clear_cookie, hand_out, session_required
from api.bodies import read_credentials, read_password_change
from api.errors import ApiError, json_response
from api.sessions import Session
from api.state import PASSWORDS, POOL, SESSIONS, THROTTLE
from db import sessions as db_sessions
from db import users

log = structlog.get_logger(__name__)


async def register(request: web.Request) -> web.StreamResponse:
    login, password = await read_credentials(request)
    password_hash = await request.app[PASSWORDS].hash(password)
    user_id = await users.register(request.app[POOL], login, password_hash)
    if user_id is None:
        raise ApiError(409, "login is already taken")
    response = json_response({"status": "registered"})
    hand_out(request, response, user_id, generation=0)
    log.info("user registered")
    return response


async def login(request: web.Request) -> web.StreamResponse:
    login, password = await read_credentials(request)
    throttle = request.app[THROTTLE]
    keys = (f"login:{login}", f"addr:{request.remote}")
    wait = throttle.retry_after(*keys)
    if wait is not None:
        raise ApiError(429, "too many failed logins; try again later",
                       {"Retry-After": str(wait)})
    found = await users.credentials(request.app[POOL], login)
    ok = await request.app[PASSWORDS].verify(found[1] if found else None, password)
    if not ok or found is None:
        throttle.failed(*keys)
        log.info("login failed")
        raise ApiError(401, "wrong login or password")
    throttle.succeeded(keys[0])
    response = json_response({"status": "authenticated"})
    hand_out(request, response, found[0], generation=found[2])
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
    keys = (f"password:{session.user_id}", f"addr:{request.remote}")
    wait = throttle.retry_after(*keys)
    if wait is not None:
        raise ApiError(429, "too many wrong passwords; try again later",
                       {"Retry-After": str(wait)})
    pool, passwords = request.app[POOL], request.app[PASSWORDS]
    ended = ApiError(401, "authentication required")
    current_hash = await db_sessions.password_hash(pool, session.user_id, session.generation,
                                                   session.session_id)
    if current_hash is None:
        raise ended
    if not await passwords.verify(current_hash, old):
        throttle.failed(*keys)
        log.info("password change refused: wrong current password")
        raise ApiError(403, "the current password is wrong")
    throttle.succeeded(keys[0])
    new_hash = await passwords.hash(new)
    generation = await db_sessions.change_password(
        pool, session.user_id, session.generation, session.session_id, new_hash)
    if generation is None:  # another change or a logout of this session committed first
        raise ended
    request.app[SESSIONS].ended_for(session.user_id)
    response = json_response({"status": "password changed"})
    hand_out(request, response, session.user_id, generation)
    log.info("password changed")
    return response
