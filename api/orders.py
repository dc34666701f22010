"""POST and GET /api/user/orders."""

import structlog
from aiohttp import web

from api.auth import login_required
from api.bodies import read_order_upload
from api.errors import ApiError
from api.lists import respond
from api.state import POOL
from db import orders
from db.orders import Upload
from shared.responses import json_response


@login_required
async def upload(request: web.Request, user_id: int) -> web.StreamResponse:
    number = await read_order_upload(request)
    # On the request's access line rather than a line of its own.
    structlog.contextvars.bind_contextvars(order=number)
    outcome = await orders.upload(request.app[POOL], number, user_id)
    if outcome is Upload.TAKEN:
        raise ApiError(409, "order number belongs to another user")
    if outcome is Upload.ALREADY_YOURS:
        return json_response({"status": "order already uploaded"}, 200)
    return json_response({"status": "accepted for processing"}, 202)


# PostgreSQL writes each listed order's JSON itself, with no Python object per
# row (db/pages.py); these are the names it writes.
LISTING = orders.listing(
    orders.OrderNames(
        number="number", status="status", accrual="accrual", uploaded_at="uploaded_at"
    )
)


@login_required
async def list_orders(request: web.Request, user_id: int) -> web.StreamResponse:
    return await respond(request, user_id, LISTING)
