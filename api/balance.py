"""GET /api/user/balance, POST /api/user/balance/withdraw, GET /api/user/withdrawals."""

import structlog
from aiohttp import web

from api.auth import login_required
from api.bodies import read_withdrawal
from api.errors import ApiError
from api.lists import respond
from api.state import POOL
from db import balance
from db.balance import Withdrawal
from shared.responses import json_response

# PostgreSQL writes each listed withdrawal's JSON itself, with no Python object
# per row (db/pages.py); these are the names it writes.
WITHDRAWALS = balance.withdrawals(
    balance.WithdrawalNames(order_number="order", amount="sum", created_at="processed_at")
)


@login_required
async def get_balance(request: web.Request, user_id: int) -> web.StreamResponse:
    found = await balance.balance(request.app[POOL], user_id)
    return json_response({"current": found.current, "withdrawn": found.withdrawn})


@login_required
async def withdraw(request: web.Request, user_id: int) -> web.StreamResponse:
    order, amount = await read_withdrawal(request)
    # On the request's access line rather than a line of its own.
    structlog.contextvars.bind_contextvars(order=order, sum=str(amount))
    outcome = await balance.withdraw(request.app[POOL], user_id, order, amount)
    if outcome is Withdrawal.INSUFFICIENT:
        raise ApiError(402, "not enough points")
    if outcome is Withdrawal.CONFLICT:
        raise ApiError(409, "order number already paid with points")
    if outcome is Withdrawal.NOT_YOURS:
        raise ApiError(409, "order number was uploaded by another user")
    return json_response({"status": "withdrawn"})


@login_required
async def list_withdrawals(request: web.Request, user_id: int) -> web.StreamResponse:
    return await respond(request, user_id, WITHDRAWALS)
