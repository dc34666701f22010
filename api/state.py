"""Typed application state shared by the handlers."""

import asyncpg
from aiohttp import web

from api.devices import DeviceCookies
from api.listgate import StreamGate
from api.passwords import Passwords
from api.sessions import Sessions
from api.throttle import Throttle
from shared.settings import ApiSettings
from shared.stalls import Stalls

SETTINGS = web.AppKey("settings", ApiSettings)
POOL = web.AppKey("pool", asyncpg.Pool)
PASSWORDS = web.AppKey("passwords", Passwords)
THROTTLE = web.AppKey("throttle", Throttle)
SESSIONS = web.AppKey("sessions", Sessions)
LIST_GATE = web.AppKey("list_gate", StreamGate)
STALLS = web.AppKey("stalls", Stalls)
DEVICES = web.AppKey("devices", DeviceCookies)
