"""The aiohttp application: the accrual system's public and admin endpoints.

``GET /api/orders/{number}`` is the hot path benchmarks hammer: a counter bump,
the rate limit, optional fault dice, one dict lookup and a pre-serialised body.
"""

import asyncio
import random

import structlog
from aiohttp import web

from accrual_sim.rules import InvalidPayload, parse_rule
from accrual_sim.settings import SimSettings
from accrual_sim.simulator import Clock, Simulator
from shared.jsonio import JSONInputError, loads_exact
from shared.responses import JSON, error_response, json_response

SIM = web.AppKey("accrual_sim", Simulator)

log = structlog.get_logger("accrual_sim")


async def order_status(request: web.Request) -> web.Response:
    sim = request.app[SIM]
    stats = sim.stats
    stats.requests += 1
    now = sim.clock()
    limiter = sim.limiter
    if limiter is not None:
        retry_after = limiter.admit(now)
        if retry_after is not None:
            stats.too_many_requests += 1
            stats.answered(429)
            return web.Response(
                status=429,
                body=limiter.message,
                content_type="text/plain",
                headers={"Retry-After": str(retry_after)},
            )
    settings = sim.settings
    if settings.latency_rate and sim.rng.random() < settings.latency_rate:
        stats.injected_latencies += 1
        await asyncio.sleep(sim.rng.uniform(settings.latency_min, settings.latency_max))
        now = sim.clock()
    if settings.fail_rate and sim.rng.random() < settings.fail_rate:
        stats.injected_500s += 1
        stats.answered(500)
        return web.Response(status=500, text="injected failure", content_type="text/plain")
    order = sim.orders.get(request.match_info["number"])
    if order is None:
        # Unknown (yet): the client asks again later.
        stats.answered(204)
        return web.Response(status=204, content_type=JSON)
    stats.answered(200)
    return web.Response(body=order.body_at(now, settings.delay), content_type=JSON)


async def _json_body(request: web.Request) -> object:
    try:
        return loads_exact(await request.read())
    except JSONInputError as exc:
        raise InvalidPayload(str(exc)) from exc


async def register_rule(request: web.Request) -> web.Response:
    sim = request.app[SIM]
    try:
        rule = parse_rule(await _json_body(request))
    except InvalidPayload as exc:
        return error_response(400, str(exc))
    if not sim.add_rule(rule):
        return error_response(409, "this match is already registered")
    return web.Response(status=200)


async def register_order(request: web.Request) -> web.Response:
    sim = request.app[SIM]
    try:
        order = sim.add_order(await _json_body(request))
    except InvalidPayload as exc:
        return error_response(400, str(exc))
    if order is None:
        return error_response(409, "this order is already registered")
    return web.Response(status=202)


async def get_stats(request: web.Request) -> web.Response:
    sim = request.app[SIM]
    body = sim.stats.as_json()
    body["orders_known"] = len(sim.orders)
    body["rules_known"] = len(sim.rules)
    return json_response(body)


async def reset_stats(request: web.Request) -> web.Response:
    request.app[SIM].reset_stats()
    log.info("stats reset")
    return web.Response(status=204)


def create_app(
    settings: SimSettings, *, clock: Clock | None = None, rng: random.Random | None = None
) -> web.Application:
    """The simulator app, seeded from ``settings``.

    ``clock`` (monotonic seconds) and ``rng`` let tests drive time and dice.
    Raises InvalidPayload or OSError when the seed file cannot be used.
    """
    sim = Simulator(settings, rng=rng) if clock is None else Simulator(settings, clock, rng)
    sim.seed_from_settings()
    app = web.Application()
    app[SIM] = sim
    app.router.add_get("/api/orders/{number}", order_status)
    app.router.add_post("/api/orders", register_order)
    app.router.add_post("/api/goods", register_rule)
    app.router.add_get("/api/stats", get_stats)
    app.router.add_post("/api/stats/reset", reset_stats)
    return app
