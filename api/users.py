"""POST /api/user/register and POST /api/user/login."""

import structlog
from aiohttp import web

from api.auth import log_in
from api.bodies import read_credentials
from api.errors import ApiError, json_response
from api.state import PASSWORDS, POOL, THROTTLE
from db import users

log = structlog.get_logger(__name__)


async def register(request: web.Request) -> web.StreamResponse:
    login, password = await read_credentials(request)
    password_hash = await request.app[PASSWORDS].hash(password)
    user_id = await users.register(request.app[POOL], login, password_hash)
    if user_id is None:
        raise ApiError(409, "login is already taken")
    await log_in(request, user_id)
    log.info("user registered")
    return json_response({"status": "registered"})


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
    await log_in(request, found[0])
    return json_response({"status": "authenticated"})
