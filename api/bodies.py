"""Reading request bodies into validated values, with a clear reason when not."""

import asyncio
import unicodedata
from decimal import Decimal
from typing import Any

from aiohttp import hdrs, web
from aiohttp.http_exceptions import HttpProcessingError

from api.errors import ApiError, ClientGone
from api.state import SETTINGS
from shared.jsonio import JSONInputError, loads_exact
from shared.luhn import MAX_ORDER_DIGITS, is_order_number
from shared.money import parse_amount

MAX_LOGIN = 256
MAX_PASSWORD = 1024
_ORDER_KEYS = ("order_number", "number", "order")
# Content types an order upload may come with: plain text, JSON, curl's
# default for ``-d`` (a common way of sending JSON from a shell), or none
# (which aiohttp reports as application/octet-stream).
_ORDER_TYPES = {
    "text/plain",
    "application/json",
    "application/x-www-form-urlencoded",
    "application/octet-stream",
}
# Bodies are read as UTF-8 (which includes ASCII); another declared charset is refused.
_CHARSETS = {None, "utf-8", "utf8", "us-ascii", "ascii"}
# Content codings a body may come in, one at most. aiohttp decodes these and passes
# any coding it does not know as it is: "Content-Encoding: foo" would otherwise be
# read as plain bytes, and "gzip, gzip" decoded once.
_CODINGS = {"identity", "gzip", "x-gzip", "deflate"}


async def read_body(request: web.Request) -> bytes:
    """The whole body, within BODY_TIMEOUT, decoded from any Content-Encoding.

    A client that stops sending gets 408, one whose gzip does not inflate 400;
    one that hangs up mid-body is gone (logged as such, not mistaken for a
    database outage).
    """
    if request.charset not in _CHARSETS:
        raise ApiError(415, "send the body as UTF-8")
    codings = [
        coding.strip().lower()
        for header in request.headers.getall(hdrs.CONTENT_ENCODING, [])
        for coding in header.split(",")
        if coding.strip()
    ]
    if len(codings) > 1 or not set(codings) <= _CODINGS:
        raise ApiError(415, "send the body as it is, or gzip- or deflate-encoded once")
    try:
        async with asyncio.timeout(request.app[SETTINGS].body_timeout):
            return await request.read()
    except TimeoutError as exc:
        raise ApiError(408, "request body not received in time") from exc
    except (HttpProcessingError, web.RequestPayloadError) as exc:
        # Content decoding (gzip, deflate, br) or chunked framing failed.
        raise ApiError(400, "request body could not be decoded") from exc
    except ConnectionError as exc:
        raise ClientGone() from exc


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """A JSON object body, sent as application/json (415 otherwise).

    Requiring the JSON type also keeps these endpoints out of reach of plain
    HTML forms on other sites, which can only send form and text types.
    """
    if request.content_type != "application/json":
        raise ApiError(415, "send the body as application/json")
    body = await read_body(request)
    if not body.strip():
        raise ApiError(400, "empty body")
    try:
        value = loads_exact(body)
    except JSONInputError as exc:
        raise ApiError(400, str(exc)) from exc
    if not isinstance(value, dict):
        raise ApiError(400, "expected a JSON object")
    return value


def _text_field(data: dict[str, Any], *keys: str, limit: int) -> str:
    present = [key for key in keys if key in data]
    if not present:
        raise ApiError(400, f"missing field {keys[0]!r}")
    value = data[present[0]]
    if not isinstance(value, str):
        raise ApiError(400, f"{present[0]!r} must be a string")
    if not value:
        raise ApiError(400, f"{present[0]!r} must not be empty")
    if len(value) > limit:
        raise ApiError(400, f"{present[0]!r} is longer than {limit} characters")
    # JSON's \ud800 escapes make lone surrogates, which no UTF-8 encoder (Argon2's
    # included) accepts: refused here rather than as a 500 deep in the hashing.
    if any("\ud800" <= ch <= "\udfff" for ch in value):
        raise ApiError(400, f"{present[0]!r} is not valid Unicode text")
    return value


def _has_control_chars(text: str) -> bool:
    return any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp") for ch in text)


async def read_credentials(request: web.Request) -> tuple[str, str]:
    """(login, password) from ``{"login"|"username": …, "password": …}``."""
    data = await read_json_object(request)
    login = _text_field(data, "login", "username", limit=MAX_LOGIN)
    if _has_control_chars(login) or login != login.strip():
        raise ApiError(400, "login must not contain control characters or surrounding spaces")
    password = _text_field(data, "password", limit=MAX_PASSWORD)
    return login, password


async def read_password_change(request: web.Request) -> tuple[str, str]:
    """(current, new) from ``{"old_password": …, "new_password": …}``."""
    data = await read_json_object(request)
    old = _text_field(data, "old_password", limit=MAX_PASSWORD)
    new = _text_field(data, "new_password", limit=MAX_PASSWORD)
    return old, new


def checked_order_number(value: str) -> str:
    """The number as given, if valid; 422 otherwise.

    Leading zeros do not change a Luhn check, so ``0012345678903`` would be a
    second spelling of ``12345678903``: one purchase, two orders. Numbers
    starting with 0 are refused rather than rewritten, so the accrual system
    is always asked about exactly the number the customer sent.
    """
    if not is_order_number(value):
        if len(value) > MAX_ORDER_DIGITS:
            raise ApiError(422, f"order number longer than {MAX_ORDER_DIGITS} digits")
        raise ApiError(422, "order number must be ASCII digits passing the Luhn check")
    if value.startswith("0"):
        raise ApiError(422, "order number must not start with 0")
    return value


def _order_from_json(data: Any) -> str:
    if not isinstance(data, dict):
        raise ApiError(400, "expected a JSON object or a plain-text order number")
    for key in _ORDER_KEYS:
        if key in data:
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
                raise ApiError(400, f"{key!r} must be a string of digits")
            return checked_order_number(str(value).strip())
    raise ApiError(400, "missing field 'order_number'")


async def read_order_upload(request: web.Request) -> str:
    """The order number from a text/plain body, or from a small JSON object."""
    if request.content_type not in _ORDER_TYPES:
        raise ApiError(415, "send the order number as text/plain or application/json")
    body = await read_body(request)
    try:
        text = body.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise ApiError(400, "body is not valid UTF-8") from exc
    if not text:
        raise ApiError(400, "empty body: send the order number")
    if request.content_type == "application/json" or text[0] in "{[":
        try:
            data = loads_exact(text)
        except JSONInputError as exc:
            raise ApiError(400, str(exc)) from exc
        return _order_from_json(data)
    return checked_order_number(text)


async def read_withdrawal(request: web.Request) -> tuple[str, Decimal]:
    """(order, sum) from ``{"order": "…", "sum": 751}``."""
    data = await read_json_object(request)
    if "order" not in data:
        raise ApiError(400, "missing field 'order'")
    if "sum" not in data:
        raise ApiError(400, "missing field 'sum'")
    order = data["order"]
    if isinstance(order, bool) or not isinstance(order, str | int):
        raise ApiError(400, "'order' must be a string of digits")
    amount = parse_amount(data["sum"])
    if amount is None:
        raise ApiError(400, "'sum' must be a positive number with at most two decimals")
    return checked_order_number(str(order)), amount
