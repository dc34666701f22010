"""The OpenAPI 3.1 description of the public API, and the routes that serve it.

The document is a Python dict, the one source of truth: ``/api/openapi.json``
serialises it and ``/api/docs`` renders it as a self-contained HTML page (no
CDN, no JavaScript). tests/test_ops_openapi.py keeps it in step with the
router and with the statuses the handlers can answer.
"""

import functools
import html
from typing import Any

from aiohttp import web

from api.auth import COOKIE_NAME
from api.bodies import MAX_LOGIN, MAX_PASSWORD
from api.page import PAGE_PATH, STATIC_PREFIX
from shared.jsonio import dumps
from shared.luhn import MAX_ORDER_DIGITS

OPENAPI_PATH = "/api/openapi.json"
DOCS_PATH = "/api/docs"

JSON = "application/json"
_SECURED: list[dict[str, list[str]]] = [{"cookieAuth": []}, {"bearerAuth": []}]


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _schema(name: str) -> dict[str, str]:
    return _ref("schemas", name)


def _ok(
    description: str,
    schema: str | None = None,
    example: Any = None,
    headers: dict[str, Any] | None = None,
) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "headers": {"X-Request-ID": _ref("headers", "RequestId")},
    }
    if schema is not None:
        media: dict[str, Any] = {"schema": _schema(schema)}
        if example is not None:
            media["example"] = example
        response["content"] = {JSON: media}
    if headers:
        response["headers"] |= headers
    return response


def _error(description: str, example: str) -> dict[str, Any]:
    return _ok(description, "Error", {"error": example})


# Shared error answers. 413, 500 and 503 come from the error middleware:
# a body over MAX_BODY_BYTES, any unexpected exception, the database down.
_RESPONSES: dict[str, Any] = {
    "BadRequest": _error(
        "Malformed request: unreadable JSON, missing or empty fields, wrong types.",
        "missing field 'login'",
    ),
    "Unauthorized": _error(
        "Not authenticated: no valid session cookie or bearer token "
        "(missing, forged, expired, logged out, or ended by a password "
        "change).",
        "authentication required",
    ),
    "PayloadTooLarge": _error(
        "The body is larger than the configured MAX_BODY_BYTES.", "Request Entity Too Large"
    ),
    "BodyTimeout": _error(
        "The body did not arrive within BODY_TIMEOUT.", "request body not received in time"
    ),
    "NotJson": _error(
        "The body is not sent as application/json (or declares a charset other than UTF-8).",
        "send the body as application/json",
    ),
    "UnprocessableOrder": _error(
        "The order number is not a string of ASCII digits "
        "passing the Luhn check, or starts with 0.",
        "order number must be ASCII digits passing the Luhn check",
    ),
    "InternalError": _error(
        "Internal error; the reason names the request id to report.",
        "internal error (request id 6f1c0e9d2c2b4f0e8a3c1d2e3f4a5b6c)",
    ),
    "CustomerBusy": _ok(
        "This customer already has too many requests in flight: its share of the server's "
        "database connections (DB_CUSTOMER_SHARE) stayed busy for DB_ACQUIRE_TIMEOUT, or, "
        "on list endpoints, LIST_CONCURRENCY long lists are being sent to it. Nothing "
        "changed; retry after the given seconds.",
        "Error",
        {"error": "too many requests of this account in flight; retry shortly"},
        {"Retry-After": _ref("headers", "RetryAfter")},
    ),
    "DatabaseUnavailable": _ok(
        "The database is unreachable right now, or the server is shedding load (every "
        "connection busy past DB_ACQUIRE_TIMEOUT, or too many long lists being sent); "
        "retry after the given seconds.",
        "Error",
        {"error": "service temporarily unavailable"},
        {"Retry-After": _ref("headers", "RetryAfter")},
    ),
}
_COMMON = {
    "500": _ref("responses", "InternalError"),
    "503": _ref("responses", "DatabaseUnavailable"),
}
_WITH_BODY = {
    "400": _ref("responses", "BadRequest"),
    "408": _ref("responses", "BodyTimeout"),
    "413": _ref("responses", "PayloadTooLarge"),
}
_JSON_BODY = {**_WITH_BODY, "415": _ref("responses", "NotJson")}
_HASHING_BUSY = _ok(
    "Too many password checks are waiting (HASH_QUEUE); retry after the "
    "given seconds. Also answered when the database is unreachable.",
    "Error",
    {"error": "too many password checks waiting; try again shortly"},
    {"Retry-After": _ref("headers", "RetryAfter")},
)
_AUTH = {"401": _ref("responses", "Unauthorized")}
# Authenticated operations that query the database: the customer's share of it.
_AUTH_DB = {**_AUTH, "429": _ref("responses", "CustomerBusy")}
_NO_CONTENT = {
    "description": "Nothing to list (the body is empty; Content-Type is still application/json).",
    "headers": {"X-Request-ID": _ref("headers", "RequestId")},
}

_AUTHENTICATED_HEADERS = {
    "Set-Cookie": {
        "description": f"`{COOKIE_NAME}=<sealed session>; Path=/; HttpOnly; "
        "SameSite=Lax` (Secure when COOKIE_SECURE is on).",
        "schema": {"type": "string"},
    },
    "Authorization": {
        "description": "`Bearer <token>`: send this exact value back in the "
        "Authorization request header.",
        "schema": {"type": "string", "pattern": "^Bearer .+$"},
    },
}

_CLEARED_COOKIE = {
    "Set-Cookie": {
        "description": f'`{COOKIE_NAME}=""; Max-Age=0; Path=/; …`: the browser drops the cookie.',
        "schema": {"type": "string"},
    },
}

_CREDENTIALS_BODY = {
    "required": True,
    "content": {
        JSON: {
            "schema": _schema("Credentials"),
            "examples": {
                "login": {"value": {"login": "alice", "password": "correct horse"}},
                "username alias": {"value": {"username": "alice", "password": "correct horse"}},
            },
        }
    },
}

_ORDERS_EXAMPLE = [
    {
        "number": "9278923470",
        "status": "PROCESSED",
        "accrual": 500,
        "uploaded_at": "2020-12-10T15:15:45+03:00",
    },
    {"number": "12345678903", "status": "PROCESSING", "uploaded_at": "2020-12-10T15:12:01+03:00"},
    {"number": "346436439", "status": "INVALID", "uploaded_at": "2020-12-09T16:09:53+03:00"},
]
_WITHDRAWALS_EXAMPLE = [
    {"order": "2377225624", "sum": 500, "processed_at": "2020-12-09T16:09:57+03:00"},
]


_LIST_DESCRIPTION = """\
The whole list by default, newest first, up to LIST_MAX_ITEMS items (100,000 unless
configured). When more items follow, the answer carries `Link: <…?after=CURSOR>;
rel="next"`: request that address for the next part. `limit` asks for fewer items per
answer. A list longer than 1,000 items is streamed (chunked); one customer may have at
most LIST_CONCURRENCY such lists in flight at a time (429 beyond) and each process
streams a bounded number at once (503 beyond)."""

_LIST_PARAMETERS = [
    {
        "name": "limit",
        "in": "query",
        "required": False,
        "description": "Most items to answer (default and maximum: LIST_MAX_ITEMS).",
        "schema": {"type": "integer", "minimum": 1},
    },
    {
        "name": "after",
        "in": "query",
        "required": False,
        "description": 'Continue after this cursor, taken from a `Link: rel="next"` header.',
        "schema": {"type": "string", "pattern": "^-?[0-9]{1,17}_[0-9]{1,19}$"},
    },
]
_NEXT_LINK = {
    "Link": {
        "description": '`<address of the next part>; rel="next"` when more items follow.',
        "schema": {"type": "string"},
    }
}
_LIST_RESPONSES = {
    "204": _NO_CONTENT,
    "400": _error(
        "`limit` or `after` is not one this list accepts.",
        "limit must be a whole number from 1 to 100000",
    ),
    **_AUTH_DB,
    **_COMMON,
}


def _withdrawals_op(operation_id: str, deprecated: bool = False) -> dict[str, Any]:
    op: dict[str, Any] = {
        "tags": ["balance"],
        "summary": "List the user's withdrawals, newest first",
        "description": _LIST_DESCRIPTION,
        "operationId": operation_id,
        "security": _SECURED,
        "parameters": _LIST_PARAMETERS,
        "responses": {
            "200": _ok("The withdrawals.", "WithdrawalList", _WITHDRAWALS_EXAMPLE, _NEXT_LINK),
            **_LIST_RESPONSES,
        },
    }
    if deprecated:
        op["deprecated"] = True
        op["description"] = (
            "The older path of `GET /api/user/withdrawals`; answers the "
            "same.\n\n" + _LIST_DESCRIPTION
        )
    return op


_EVENTS_DESCRIPTION = """\
A long-lived `text/event-stream` (it starts `retry: 5000`, the milliseconds a browser
waits before reconnecting). `event: change` (empty data) means: something you see
changed (an order's status, a credit, a withdrawal, a new order): read the endpoints
again. The first event comes at once, covering anything that changed before the stream
opened. `: ping` comments keep the connection alive every EVENTS_HEARTBEAT seconds. The
server closes a stream after EVENTS_MAX_AGE seconds or when the session expires
(browsers reconnect by themselves and are authenticated afresh), and ends it with
`event: end` and data `replaced` when the same user opened more than EVENTS_PER_USER
streams on one process (the oldest ends; poll instead of reconnecting), `ended` when its
session was ended (logout, password change), and `shutdown` when the server stops.
"""


def _html(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {"X-Request-ID": _ref("headers", "RequestId")},
        "content": {"text/html": {"schema": {"type": "string"}}},
    }


_PATHS: dict[str, Any] = {
    "/api/user/register": {
        "post": {
            "tags": ["users"],
            "summary": "Register a user and log them in",
            "operationId": "register",
            "requestBody": _CREDENTIALS_BODY,
            "responses": {
                "200": _ok(
                    "Registered and authenticated (cookie and Authorization header).",
                    "Status",
                    {"status": "registered"},
                    _AUTHENTICATED_HEADERS,
                ),
                **_JSON_BODY,
                "409": _error("The login is taken.", "login is already taken"),
                "429": _ok(
                    "Too many registrations from this client address "
                    "(REGISTER_MAX_PER_ADDRESS per REGISTER_WINDOW), or too many password "
                    "checks from it at once.",
                    "Error",
                    {"error": "too many registrations from this address; try again later"},
                    {"Retry-After": _ref("headers", "RetryAfter")},
                ),
                **_COMMON,
                "503": _HASHING_BUSY,
            },
        }
    },
    "/api/user/login": {
        "post": {
            "tags": ["users"],
            "summary": "Log in",
            "operationId": "login",
            "requestBody": _CREDENTIALS_BODY,
            "responses": {
                "200": _ok(
                    "Authenticated (cookie and Authorization header).",
                    "Status",
                    {"status": "authenticated"},
                    _AUTHENTICATED_HEADERS,
                ),
                **_JSON_BODY,
                "401": _error("Wrong login/password pair.", "wrong login or password"),
                "429": _ok(
                    "Too many failed logins for this login from this client address, or "
                    "too many password checks from it at once (see the README's "
                    "throttling policy).",
                    "Error",
                    {"error": "too many failed logins; try again later"},
                    {"Retry-After": _ref("headers", "RetryAfter")},
                ),
                **_COMMON,
                "503": _HASHING_BUSY,
            },
        }
    },
    "/api/user/logout": {
        "post": {
            "tags": ["users"],
            "summary": "Log out: end the session this request authenticates with",
            "description": "Ends the calling token (cookie or bearer) for every API process "
            "and replica, and clears the cookie. Other sessions of the same "
            "customer (other devices) stay valid. No body is needed; one sent "
            "is ignored. Calling it again with the same token answers 401.",
            "operationId": "logout",
            "security": _SECURED,
            "responses": {
                "200": _ok(
                    "Logged out; the response also clears the cookie.",
                    "Status",
                    {"status": "logged out"},
                    _CLEARED_COOKIE,
                ),
                **_AUTH_DB,
                **_COMMON,
            },
        }
    },
    "/api/user/password": {
        "post": {
            "tags": ["users"],
            "summary": "Change the password and end every session",
            "description": "Checks `old_password`, stores `new_password`, and ends every token "
            "of the customer at once, including the one this request used; the "
            "answer carries a fresh token (cookie and Authorization header) for "
            "the caller to continue with. Wrong current passwords count towards "
            "the login throttle (LOGIN_MAX_FAILURES per LOGIN_WINDOW). Of two "
            "concurrent changes with the same token, one succeeds and the other "
            "answers 401.",
            "operationId": "changePassword",
            "security": _SECURED,
            "requestBody": {
                "required": True,
                "content": {
                    JSON: {
                        "schema": _schema("PasswordChange"),
                        "example": {
                            "old_password": "correct horse",
                            "new_password": "battery staple",
                        },
                    }
                },
            },
            "responses": {
                "200": _ok(
                    "Changed; every earlier token has ended; here is a new one.",
                    "Status",
                    {"status": "password changed"},
                    _AUTHENTICATED_HEADERS,
                ),
                **_JSON_BODY,
                **_AUTH,
                "403": _error(
                    "`old_password` is not the current password; nothing changed.",
                    "the current password is wrong",
                ),
                "429": _ok(
                    "Too many wrong current passwords for this customer or client address.",
                    "Error",
                    {"error": "too many wrong passwords; try again later"},
                    {"Retry-After": _ref("headers", "RetryAfter")},
                ),
                **_COMMON,
            },
        }
    },
    "/api/user/orders": {
        "post": {
            "tags": ["orders"],
            "summary": "Upload an order number for accrual",
            "description": "The body is the order number as plain text (surrounding "
            'whitespace ignored), or JSON `{"order_number": "…"}` '
            "(also `number` or `order`; a JSON number is accepted). JSON "
            "sent as application/x-www-form-urlencoded (curl's default) "
            "is read as JSON too.",
            "operationId": "uploadOrder",
            "security": _SECURED,
            "requestBody": {
                "required": True,
                "content": {
                    "text/plain": {
                        "schema": {"type": "string", "pattern": r"^\s*[1-9][0-9]*\s*$"},
                        "example": "12345678903",
                    },
                    JSON: {
                        "schema": _schema("OrderUpload"),
                        "example": {"order_number": "12345678903"},
                    },
                },
            },
            "responses": {
                "200": _ok(
                    "This user already uploaded this number.",
                    "Status",
                    {"status": "order already uploaded"},
                ),
                "202": _ok(
                    "New number accepted for processing.",
                    "Status",
                    {"status": "accepted for processing"},
                ),
                **_WITH_BODY,
                **_AUTH_DB,
                "409": _error(
                    "Another user uploaded this number or paid with points on it.",
                    "order number belongs to another user",
                ),
                "415": _error(
                    "The content type is neither text/plain nor application/json.",
                    "send the order number as text/plain or application/json",
                ),
                "422": _ref("responses", "UnprocessableOrder"),
                **_COMMON,
            },
        },
        "get": {
            "tags": ["orders"],
            "summary": "List the user's orders, newest upload first",
            "description": _LIST_DESCRIPTION,
            "operationId": "listOrders",
            "security": _SECURED,
            "parameters": _LIST_PARAMETERS,
            "responses": {
                "200": _ok(
                    "The orders; `accrual` is present on PROCESSED orders only.",
                    "OrderList",
                    _ORDERS_EXAMPLE,
                    _NEXT_LINK,
                ),
                **_LIST_RESPONSES,
            },
        },
    },
    "/api/user/balance": {
        "get": {
            "tags": ["balance"],
            "summary": "Points available now and the total ever withdrawn",
            "operationId": "getBalance",
            "security": _SECURED,
            "responses": {
                "200": _ok("The balance.", "Balance", {"current": 500.5, "withdrawn": 42}),
                **_AUTH_DB,
                **_COMMON,
            },
        }
    },
    "/api/user/balance/withdraw": {
        "post": {
            "tags": ["balance"],
            "summary": "Spend points on a new order",
            "description": "A repeat of the same user, order and sum is a safe retry: 200, "
            "charged once.",
            "operationId": "withdraw",
            "security": _SECURED,
            "requestBody": {
                "required": True,
                "content": {
                    JSON: {
                        "schema": _schema("WithdrawRequest"),
                        "example": {"order": "2377225624", "sum": 751},
                    }
                },
            },
            "responses": {
                "200": _ok("Done.", "Status", {"status": "withdrawn"}),
                **_JSON_BODY,
                **_AUTH_DB,
                "402": _error("Not enough points; nothing changed.", "not enough points"),
                "409": _error(
                    "The order number was already paid with points with a different "
                    "sum or by another user, or another user uploaded it.",
                    "order number already paid with points",
                ),
                "422": _ref("responses", "UnprocessableOrder"),
                **_COMMON,
            },
        }
    },
    "/api/user/withdrawals": {"get": _withdrawals_op("listWithdrawals")},
    "/api/user/events": {
        "get": {
            "tags": ["events"],
            "summary": "Server-sent events: look again when your orders or balance change",
            "description": _EVENTS_DESCRIPTION,
            "operationId": "userEvents",
            "security": _SECURED,
            "responses": {
                "200": {
                    "description": "An open `text/event-stream`.",
                    "headers": {"X-Request-ID": _ref("headers", "RequestId")},
                    "content": {"text/event-stream": {"schema": _schema("UserEvent")}},
                },
                **_AUTH,
                "503": _ok(
                    "The process holds EVENTS_MAX_STREAMS streams already (or the "
                    "database is down): poll the endpoints instead, and try again after "
                    "the given seconds.",
                    "Error",
                    {"error": "too many open event streams; poll instead"},
                    {"Retry-After": _ref("headers", "RetryAfter")},
                ),
                "500": _ref("responses", "InternalError"),
            },
        }
    },
    "/api/user/balance/withdrawals": {"get": _withdrawals_op("listWithdrawalsLegacy", True)},
    PAGE_PATH: {
        "get": {
            "tags": ["page"],
            "summary": "The customer web page",
            "description": "A single page over this API (register, log in, add purchases, "
            "watch them credited, pay with points). Revalidated on every visit "
            "(ETag); strict Content-Security-Policy.",
            "operationId": "page",
            "responses": {
                "200": _html("The page."),
                "304": {"description": "Unchanged since the ETag sent in If-None-Match."},
            },
        }
    },
    STATIC_PREFIX + "/{version}/{name}": {
        "get": {
            "tags": ["page"],
            "summary": "The page's scripts, style and icon",
            "description": "Versioned by a hash of every file: cached for a year (immutable).",
            "operationId": "pageAsset",
            "parameters": [
                {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}},
                {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
            ],
            "responses": {
                "200": {
                    "description": "The file.",
                    "headers": {"X-Request-ID": _ref("headers", "RequestId")},
                    "content": {
                        "text/javascript": {"schema": {"type": "string"}},
                        "text/css": {"schema": {"type": "string"}},
                        "image/svg+xml": {"schema": {"type": "string"}},
                    },
                },
                "304": {"description": "Unchanged since the ETag sent in If-None-Match."},
                "404": _error(
                    "No such file in this version (an old or unknown version).", "not found"
                ),
            },
        }
    },
    "/healthz": {
        "get": {
            "tags": ["operations"],
            "summary": "Liveness: the process serves requests",
            "operationId": "healthz",
            "responses": {"200": _ok("Alive.", "Health", {"status": "ok"})},
        }
    },
    "/readyz": {
        "get": {
            "tags": ["operations"],
            "summary": "Readiness: PostgreSQL answers and the schema is exactly this build's "
            "(no migration pending, none newer)",
            "operationId": "readyz",
            "responses": {
                "200": _ok("Ready for traffic.", "Readiness", {"status": "ready"}),
                "503": _ok(
                    "Not ready; `error` says why.",
                    "Readiness",
                    {"status": "unavailable", "error": "pending migrations: 0002_x.sql"},
                ),
            },
        }
    },
    "/metrics": {
        "get": {
            "tags": ["operations"],
            "summary": "Prometheus metrics (text exposition format)",
            "operationId": "metrics",
            "responses": {
                "200": {
                    "description": "The metrics.",
                    "headers": {"X-Request-ID": _ref("headers", "RequestId")},
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                "500": _ref("responses", "InternalError"),
            },
        }
    },
    OPENAPI_PATH: {
        "get": {
            "tags": ["operations"],
            "summary": "This document",
            "operationId": "openapi",
            "responses": {
                "200": {
                    "description": "The OpenAPI 3.1 document.",
                    "headers": {"X-Request-ID": _ref("headers", "RequestId")},
                    "content": {JSON: {"schema": {"type": "object"}}},
                }
            },
        }
    },
    DOCS_PATH: {
        "get": {
            "tags": ["operations"],
            "summary": "This document as a web page",
            "operationId": "docs",
            "responses": {
                "200": {
                    "description": "A self-contained HTML page.",
                    "headers": {"X-Request-ID": _ref("headers", "RequestId")},
                    "content": {"text/html": {"schema": {"type": "string"}}},
                }
            },
        }
    },
}

_MONEY_DESCRIPTION = "Points (1 point = 1 rouble): a JSON number with at most two decimals."
_ORDER_NUMBER = {
    "type": "string",
    "pattern": "^[1-9][0-9]*$",
    "minLength": 1,
    "maxLength": MAX_ORDER_DIGITS,
    "description": "ASCII digits passing the Luhn check, not starting with 0 (so that "
    "one purchase has one spelling).",
    "examples": ["12345678903"],
}
_ORDER_NUMBER_INPUT = {
    "oneOf": [
        _schema("OrderNumber"),
        {"type": "integer", "minimum": 1, "description": "Accepted too; read as its digits."},
    ]
}

_SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
    "Status": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string"}},
    },
    "Credentials": {
        "type": "object",
        "properties": {
            "login": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_LOGIN,
                "description": "No control characters, no surrounding spaces.",
            },
            "username": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_LOGIN,
                "description": "Alias of `login` (used when `login` is absent).",
            },
            "password": {"type": "string", "minLength": 1, "maxLength": MAX_PASSWORD},
        },
        "required": ["password"],
        "anyOf": [{"required": ["login"]}, {"required": ["username"]}],
    },
    "PasswordChange": {
        "type": "object",
        "required": ["old_password", "new_password"],
        "properties": {
            "old_password": {"type": "string", "minLength": 1, "maxLength": MAX_PASSWORD},
            "new_password": {"type": "string", "minLength": 1, "maxLength": MAX_PASSWORD},
        },
    },
    "OrderNumber": _ORDER_NUMBER,
    "Money": {
        "type": "number",
        "multipleOf": 0.01,
        "minimum": 0,
        "description": _MONEY_DESCRIPTION,
        "examples": [729.98],
    },
    "OrderStatus": {
        "type": "string",
        "enum": ["NEW", "PROCESSING", "INVALID", "PROCESSED"],
        "description": "NEW: not started by the accrual system; PROCESSING: reward being "
        "computed; INVALID: refused, final; PROCESSED: credited, final.",
    },
    "OrderUpload": {
        "type": "object",
        "properties": {
            "order_number": _ORDER_NUMBER_INPUT,
            "number": _ORDER_NUMBER_INPUT,
            "order": _ORDER_NUMBER_INPUT,
        },
        "anyOf": [
            {"required": ["order_number"]},
            {"required": ["number"]},
            {"required": ["order"]},
        ],
    },
    "Order": {
        "type": "object",
        "required": ["number", "status", "uploaded_at"],
        "properties": {
            "number": _schema("OrderNumber"),
            "status": _schema("OrderStatus"),
            "accrual": {**_schema("Money"), "description": "Present on PROCESSED orders only."},
            "uploaded_at": {"type": "string", "format": "date-time"},
        },
    },
    "OrderList": {"type": "array", "items": _schema("Order")},
    "Balance": {
        "type": "object",
        "required": ["current", "withdrawn"],
        "properties": {"current": _schema("Money"), "withdrawn": _schema("Money")},
    },
    "WithdrawRequest": {
        "type": "object",
        "required": ["order", "sum"],
        "properties": {
            "order": _ORDER_NUMBER_INPUT,
            "sum": {
                "type": "number",
                "multipleOf": 0.01,
                "exclusiveMinimum": 0,
                "description": "Positive, at most two decimals.",
            },
        },
    },
    "Withdrawal": {
        "type": "object",
        "required": ["order", "sum", "processed_at"],
        "properties": {
            "order": _schema("OrderNumber"),
            "sum": _schema("Money"),
            "processed_at": {"type": "string", "format": "date-time"},
        },
    },
    "WithdrawalList": {"type": "array", "items": _schema("Withdrawal")},
    "UserEvent": {
        "type": "object",
        "description": "One event of the stream, e.g. `event: change` + `data: ` (empty), "
        "or `event: end` + `data: replaced`.",
        "required": ["event"],
        "properties": {
            "event": {"enum": ["change", "end"]},
            "data": {"enum": ["", "replaced", "ended", "shutdown"]},
        },
    },
    "Health": {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}},
    "Readiness": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"enum": ["ready", "unavailable"]}, "error": {"type": "string"}},
    },
}

_DESCRIPTION = """\
Gophermart: a loyalty-points service. Users register, upload the numbers of their
shop orders, receive points once the accrual system has computed the reward, and
spend points on later orders.

* Register and login answer with a session cookie **and** an `Authorization: Bearer`
  header; every protected endpoint accepts either. A token ends when it expires
  (SESSION_TTL), at `POST /api/user/logout` (that token only), or when the password
  changes (every token of the customer).
* Money is a JSON number with at most two decimals; order numbers are strings of
  digits; times are RFC 3339 with an offset.
* Errors are `{"error": "<reason>"}`. Every response carries `X-Request-ID` (a
  well-formed one sent by the client is echoed).
* Register, login and withdraw take `application/json` only (415 otherwise).
* A state-changing request without an `Authorization` header (that is, one relying
  on the cookie) whose `Origin` is not the API's own host (or one of
  `ALLOWED_ORIGINS`), or with `Sec-Fetch-Site: cross-site`, is refused with 403.
"""


@functools.cache
def document() -> dict[str, Any]:
    """The OpenAPI document (built once; treat it as read-only)."""
    paths = {
        path: {
            method: {**op, "responses": dict(sorted(op["responses"].items()))}
            for method, op in operations.items()
        }
        for path, operations in _PATHS.items()
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Gophermart", "version": "1.0.0", "description": _DESCRIPTION},
        "tags": [
            {"name": name}
            for name in ("users", "orders", "balance", "events", "page", "operations")
        ],
        "paths": paths,
        "components": {
            "schemas": _SCHEMAS,
            "responses": _RESPONSES,
            "headers": {
                "RetryAfter": {
                    "description": "Seconds to wait before retrying.",
                    "schema": {"type": "integer", "minimum": 0},
                },
                "RequestId": {
                    "description": "The request's id, also in the server's logs.",
                    "schema": {"type": "string"},
                },
            },
            "securitySchemes": {
                "cookieAuth": {"type": "apiKey", "in": "cookie", "name": COOKIE_NAME},
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The token from the Authorization header "
                    "register or login answered with.",
                },
            },
        },
    }


@functools.cache
def _document_json() -> bytes:
    return dumps(document())


_PAGE_STYLE = """
body{font:15px/1.45 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}
.op{border:1px solid #ccd;border-radius:6px;margin:1rem 0;padding:.5rem 1rem}
.m{display:inline-block;min-width:4rem;font-weight:bold;text-transform:uppercase}
code{background:#f3f3f6;padding:0 .2rem}li{margin:.1rem 0}.dep{color:#a60}
"""


def _resolve(item: Any) -> Any:
    """Follow one local ``$ref`` (``#/components/<kind>/<name>``)."""
    if isinstance(item, dict) and "$ref" in item:
        _, _, kind, name = item["$ref"].split("/")
        return document()["components"][kind][name]
    return item


def _render_operation(path: str, method: str, op: dict[str, Any]) -> str:
    esc = html.escape
    parts = [
        f'<div class="op"><h3><span class="m">{esc(method)}</span> <code>{esc(path)}'
        f"</code>{' <span class=dep>(deprecated)</span>' if op.get('deprecated') else ''}"
        f"</h3><p>{esc(op['summary'])}</p>"
    ]
    if "description" in op:
        parts.append(f"<p>{esc(op['description'])}</p>")
    if "security" in op:
        parts.append(
            f"<p>Authentication: cookie <code>{esc(COOKIE_NAME)}</code> or "
            "<code>Authorization: Bearer &lt;token&gt;</code>.</p>"
        )
    if "requestBody" in op:
        types = ", ".join(f"<code>{esc(t)}</code>" for t in op["requestBody"]["content"])
        parts.append(f"<p>Body: {types}</p>")
    parts.append("<ul>")
    for status, response in op["responses"].items():
        parts.append(f"<li><b>{esc(status)}</b> {esc(_resolve(response)['description'])}</li>")
    parts.append("</ul></div>")
    return "".join(parts)


@functools.cache
def docs_page() -> bytes:
    """The document as a small self-contained HTML page."""
    doc = document()
    body = [
        f"<h1>{html.escape(doc['info']['title'])} API</h1>",
        f'<p>Machine-readable: <a href="{OPENAPI_PATH}">{OPENAPI_PATH}</a> '
        f"(OpenAPI {doc['openapi']}).</p>",
        f"<pre>{html.escape(doc['info']['description'])}</pre>",
    ]
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            body.append(_render_operation(path, method, op))
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>Gophermart API</title><style>{_PAGE_STYLE}</style></head>"
        f"<body>{''.join(body)}</body></html>"
    ).encode()


async def serve_document(_: web.Request) -> web.StreamResponse:
    return web.Response(body=_document_json(), status=200, content_type=JSON)


async def serve_docs(_: web.Request) -> web.StreamResponse:
    return web.Response(body=docs_page(), status=200, content_type="text/html", charset="utf-8")


def add_docs_routes(app: web.Application) -> None:
    app.router.add_get(OPENAPI_PATH, serve_document, allow_head=False)
    app.router.add_get(DOCS_PATH, serve_docs, allow_head=False)
