"""The OpenAPI document: in step with the router, the handlers and real responses."""

import ast
import dataclasses
import inspect
import json
import re
import textwrap
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from api.app import create_app
from api.openapi import document
from shared.settings import ApiSettings
from tests.helpers import SECRET, credit, register

METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def app_operations() -> dict[tuple[str, str], Callable[..., Any]]:
    """(path template, method) -> handler, for every route the API app serves."""
    # Nothing connects until the app starts, so any DSN will do.
    app = create_app(ApiSettings(database_uri="postgresql://unused/unused", session_secret=SECRET))
    found = {}
    for route in app.router.routes():
        resource = route.resource
        assert resource is not None
        found[(resource.canonical, route.method.lower())] = route.handler
    return found


def documented_operations() -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (path, method): op
        for path, ops in document()["paths"].items()
        for method, op in ops.items()
        if method in METHODS
    }


def resolve(node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), ref
        node = document()
        for part in ref[2:].split("/"):
            node = node[part]
    return node


def test_every_route_is_documented_and_every_documented_operation_exists() -> None:
    served = set(app_operations())
    documented = set(documented_operations())
    assert served - documented == set(), "routes missing from the OpenAPI document"
    assert documented - served == set(), "documented operations the app does not serve"


# --- statuses: what the handler code can answer ------------------------------

# Statuses named in calls: (function name, positional index of the status, default).
_STATUS_CALLS = {
    "ApiError": (0, None),
    "Overloaded": (0, None),
    "error_response": (0, None),
    "json_response": (1, 200),
    "empty_response": (0, 204),
    "_json": (1, None),
    "Response": (None, 200),
    "StreamResponse": (None, 200),
}
_BODY_READERS = {"read", "json", "text", "post", "content"}


class _Scan:
    """Statuses a handler can answer, from its source and what it calls in our code.

    Besides the statuses written in the code, the error middleware answers 500
    for any exception, 503 when the database is down (handlers using POOL),
    413 when a body exceeds MAX_BODY_BYTES (handlers reading the body), and
    login_required answers 401.
    """

    def __init__(self) -> None:
        self.statuses: set[int] = set()
        self.uses_pool = False
        self.reads_body = False
        self._seen: set[Callable[..., Any]] = set()

    def scan(self, func: Callable[..., Any]) -> None:
        func = inspect.unwrap(func)
        if func in self._seen:
            return
        self._seen.add(func)
        tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and node.id == "POOL":
                self.uses_pool = True
            elif (
                isinstance(node, ast.Attribute)
                and node.attr in _BODY_READERS
                and isinstance(node.value, ast.Name)
                and node.value.id == "request"
            ):
                self.reads_body = True
            elif isinstance(node, ast.Call):
                self._call(node, func.__globals__)

    def _call(self, node: ast.Call, scope: dict[str, Any]) -> None:
        name = (
            node.func.attr
            if isinstance(node.func, ast.Attribute)
            else node.func.id
            if isinstance(node.func, ast.Name)
            else None
        )
        if name in _STATUS_CALLS:
            index, default = _STATUS_CALLS[name]
            given = [k.value for k in node.keywords if k.arg == "status"]
            if index is not None and len(node.args) > index:
                given.append(node.args[index])
            if given:
                status = given[0]
                assert isinstance(status, ast.Constant) and isinstance(status.value, int), (
                    f"a status must be a literal to be checked: {ast.dump(status)}"
                )
                self.statuses.add(status.value)
            elif default is not None:
                self.statuses.add(default)
            return  # the helper itself only passes a status through
        target = _lookup(node.func, scope)
        if inspect.isfunction(target) and target.__module__.startswith(("api.", "shared.ops")):
            self.scan(target)


def _lookup(func: ast.expr, scope: dict[str, Any]) -> Any:
    if isinstance(func, ast.Name):
        return scope.get(func.id)
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        return getattr(scope.get(func.value.id), func.attr, None)
    return None


def possible_statuses(handler: Callable[..., Any]) -> tuple[set[int], set[int]]:
    """(statuses the code names or implies, statuses it may answer at all)."""
    scan = _Scan()
    scan.scan(handler)
    implied = set(scan.statuses)
    if hasattr(handler, "__wrapped__"):  # login_required
        implied.add(401)
    if scan.uses_pool:
        implied |= {500, 503}
        if hasattr(handler, "__wrapped__"):  # the customer's share of the pool
            implied.add(429)
    if scan.reads_body:
        implied |= {413, 500}
    return implied, implied | {500}


def test_status_scan_sees_middleware_and_body_statuses() -> None:
    # The scan itself, on the handler with the most ways to fail.
    implied, _ = possible_statuses(app_operations()[("/api/user/orders", "post")])
    assert implied == {200, 202, 400, 401, 408, 409, 413, 415, 422, 429, 500, 503}


@pytest.mark.parametrize("operation", sorted(documented_operations()), ids=" ".join)
def test_documented_statuses_match_what_the_handler_can_answer(operation: tuple[str, str]) -> None:
    handler = app_operations()[operation]
    implied, possible = possible_statuses(handler)
    documented = {int(code) for code in documented_operations()[operation]["responses"]}
    assert documented - possible == set(), "documented statuses the code never answers"
    assert implied - documented == set(), "statuses the code answers but the document omits"


# --- structure ---------------------------------------------------------------


def _walk(node: Any, where: str = "#") -> Iterator[tuple[str, Any]]:
    yield where, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, f"{where}/{index}")


def test_document_is_structurally_valid_openapi_3_1() -> None:
    doc = document()
    assert doc["openapi"].startswith("3.1.")
    assert doc["info"]["title"] and doc["info"]["version"]
    for where, node in _walk(doc):
        if isinstance(node, dict) and "$ref" in node:
            assert resolve(node) is not None, f"unresolvable $ref at {where}"
    schemes = doc["components"]["securitySchemes"]
    operation_ids = []
    for (path, method), op in documented_operations().items():
        assert path.startswith("/")
        operation_ids.append(op["operationId"])
        assert op["summary"] and op["responses"], (path, method)
        for requirement in op.get("security", []):
            assert set(requirement) <= set(schemes)
        for code, response in op["responses"].items():
            assert re.fullmatch(r"[1-5][0-9][0-9]", code), (path, method, code)
            assert resolve(response)["description"], (path, method, code)
    assert len(operation_ids) == len(set(operation_ids)), "operationIds must be unique"
    for name, schema in doc["components"]["schemas"].items():
        for key in schema.get("required", []):
            assert key in schema.get("properties", {}), (name, key)


def test_document_passes_openapi_spec_validator_when_installed() -> None:
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(document())


def test_auth_schemes_are_cookie_and_bearer() -> None:
    schemes = document()["components"]["securitySchemes"]
    assert schemes["cookieAuth"] == {"type": "apiKey", "in": "cookie", "name": "gophermart_session"}
    assert schemes["bearerAuth"]["type"] == "http"
    assert schemes["bearerAuth"]["scheme"] == "bearer"
    protected = [
        op
        for (path, _), op in documented_operations().items()
        if path.startswith("/api/user/") and not path.endswith(("/register", "/login"))
    ]
    assert len(protected) == 9  # six of the contract, logout, password change, events
    assert all(op["security"] == [{"cookieAuth": []}, {"bearerAuth": []}] for op in protected)


# --- examples and real responses conform to the schemas ----------------------

_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: (
        (isinstance(v, int) and not isinstance(v, bool))
        or (isinstance(v, Decimal) and v == v.to_integral_value())
    ),
    "number": lambda v: isinstance(v, int | float | Decimal) and not isinstance(v, bool),
}


def conforms(value: Any, schema: Any) -> list[str]:
    """Problems of ``value`` against the JSON Schema subset the document uses."""
    schema = resolve(schema)
    problems: list[str] = []
    if "type" in schema and not _TYPES[schema["type"]](value):
        return [f"{value!r} is not of type {schema['type']}"]
    if "const" in schema and value != schema["const"]:
        problems.append(f"{value!r} != {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{value!r} not in {schema['enum']}")
    if isinstance(value, str) and "pattern" in schema and not re.search(schema["pattern"], value):
        problems.append(f"{value!r} does not match {schema['pattern']}")
    if _TYPES["number"](value):
        number = Decimal(str(value))
        if "multipleOf" in schema and number % Decimal(str(schema["multipleOf"])) != 0:
            problems.append(f"{value!r} is not a multiple of {schema['multipleOf']}")
        if "minimum" in schema and number < Decimal(str(schema["minimum"])):
            problems.append(f"{value!r} < {schema['minimum']}")
        if "exclusiveMinimum" in schema and number <= Decimal(str(schema["exclusiveMinimum"])):
            problems.append(f"{value!r} <= {schema['exclusiveMinimum']}")
    if isinstance(value, dict):
        problems += [f"missing {key!r}" for key in schema.get("required", []) if key not in value]
        for key, item in value.items():
            if key in schema.get("properties", {}):
                problems += conforms(item, schema["properties"][key])
    if isinstance(value, list) and "items" in schema:
        for item in value:
            problems += conforms(item, schema["items"])
    for branch in schema.get("allOf", []):
        problems += conforms(value, branch)
    if "anyOf" in schema and all(conforms(value, b) for b in schema["anyOf"]):
        problems.append(f"{value!r} matches none of anyOf")
    if "oneOf" in schema and sum(not conforms(value, b) for b in schema["oneOf"]) != 1:
        problems.append(f"{value!r} does not match exactly one of oneOf")
    return problems


def _media_examples() -> Iterator[tuple[str, Any, Any]]:
    for where, node in _walk(document()):
        if isinstance(node, dict) and "schema" in node:
            if "example" in node:
                yield where, node["example"], node["schema"]
            for name, example in node.get("examples", {}).items():
                yield f"{where}/{name}", example["value"], node["schema"]


def test_every_example_conforms_to_its_schema() -> None:
    examples = list(_media_examples())
    assert len(examples) > 20
    for where, example, schema in examples:
        assert conforms(example, schema) == [], where


def test_conformance_check_rejects_what_the_schemas_forbid() -> None:
    money = {"$ref": "#/components/schemas/Balance"}
    assert conforms({"current": 1.5, "withdrawn": 0}, money) == []
    assert conforms({"current": Decimal("1.005"), "withdrawn": 0}, money)
    assert conforms({"current": "1.50", "withdrawn": 0}, money)
    assert conforms({"current": 1}, money)
    order = {"$ref": "#/components/schemas/Order"}
    assert conforms({"number": "1a", "status": "NEW", "uploaded_at": "x"}, order)
    assert conforms({"number": "18", "status": "DONE", "uploaded_at": "x"}, order)


def response_schema(path: str, method: str, status: int) -> Any:
    response = resolve(documented_operations()[(path, method)]["responses"][str(status)])
    return response["content"]["application/json"]["schema"]


async def check(
    client: TestClient,
    method: str,
    path: str,
    expected: int,
    doc_path: str | None = None,
    **kwargs: Any,
) -> Any:
    """Make the request; its status and body must be the documented ones."""
    response = await client.request(method, path, **kwargs)
    assert response.status == expected, await response.text()
    operation = documented_operations()[(doc_path or path, method.lower())]
    assert str(expected) in operation["responses"]
    if expected == 204:
        assert response.headers["Content-Type"] == "application/json"
        return None
    body = json.loads(await response.read(), parse_float=Decimal)
    assert conforms(body, response_schema(doc_path or path, method.lower(), expected)) == []
    return body


async def test_real_responses_conform_to_the_document(
    client: TestClient, pool: asyncpg.Pool
) -> None:
    await check(client, "POST", "/api/user/register", 400, json={"login": "x"})
    await check(client, "GET", "/api/user/orders", 401)  # before the cookie jar holds one
    token = await register(client, "alice")
    auth = {"Authorization": token}
    await check(
        client, "POST", "/api/user/login", 401, json={"username": "alice", "password": "wrong"}
    )
    await check(
        client,
        "POST",
        "/api/user/login",
        200,
        json={"username": "alice", "password": "secret-pass"},
    )
    await check(client, "GET", "/api/user/orders", 204, headers=auth)
    await check(client, "GET", "/api/user/withdrawals", 204, headers=auth)
    await check(
        client,
        "POST",
        "/api/user/orders",
        202,
        data="12345678903",
        headers={**auth, "Content-Type": "text/plain"},
    )
    await check(
        client, "POST", "/api/user/orders", 200, json={"order_number": "12345678903"}, headers=auth
    )
    await check(
        client,
        "POST",
        "/api/user/orders",
        415,
        data=b"12345678903",
        headers={**auth, "Content-Type": "image/png"},
    )
    await check(
        client,
        "POST",
        "/api/user/orders",
        422,
        data="12345678904",
        headers={**auth, "Content-Type": "text/plain"},
    )
    await check(
        client,
        "POST",
        "/api/user/orders",
        413,
        data="1" * 70_000,
        headers={**auth, "Content-Type": "text/plain"},
    )
    await credit(pool, "alice", "729.98", "9278923470")
    orders = await check(client, "GET", "/api/user/orders", 200, headers=auth)
    assert {o["status"] for o in orders} == {"NEW", "PROCESSED"}
    await check(
        client,
        "POST",
        "/api/user/balance/withdraw",
        402,
        json={"order": "2377225624", "sum": 10_000},
        headers=auth,
    )
    await check(
        client,
        "POST",
        "/api/user/balance/withdraw",
        200,
        json={"order": "2377225624", "sum": 100.5},
        headers=auth,
    )
    await check(
        client,
        "POST",
        "/api/user/balance/withdraw",
        409,
        json={"order": "2377225624", "sum": 1},
        headers=auth,
    )
    balance = await check(client, "GET", "/api/user/balance", 200, headers=auth)
    assert balance == {"current": Decimal("629.48"), "withdrawn": Decimal("100.5")}
    await check(client, "GET", "/api/user/withdrawals", 200, headers=auth)
    await check(client, "GET", "/api/user/balance/withdrawals", 200, headers=auth)
    await check(client, "POST", "/api/user/password", 400, json={"old_password": "x"}, headers=auth)
    await check(
        client,
        "POST",
        "/api/user/password",
        403,
        json={"old_password": "wrong", "new_password": "new-secret-pass"},
        headers=auth,
    )
    await check(
        client,
        "POST",
        "/api/user/password",
        200,
        json={"old_password": "secret-pass", "new_password": "new-secret-pass"},
        headers=auth,
    )
    await check(client, "POST", "/api/user/logout", 401, headers=auth)  # ended by the change
    fresh = await client.post(
        "/api/user/login", json={"login": "alice", "password": "new-secret-pass"}
    )
    fresh_auth = {"Authorization": fresh.headers["Authorization"]}
    await check(client, "POST", "/api/user/logout", 200, headers=fresh_auth)
    await check(client, "GET", "/healthz", 200)
    await check(client, "GET", "/readyz", 200)


async def test_login_throttling_answers_429_with_retry_after(
    aiohttp_client: Any, api_settings: ApiSettings
) -> None:
    settings = dataclasses.replace(api_settings, login_max_failures=1)
    client: TestClient = await aiohttp_client(create_app(settings))
    await register(client, "bob")
    wrong = {"login": "bob", "password": "nope"}
    await check(client, "POST", "/api/user/login", 401, json=wrong)
    await check(client, "POST", "/api/user/login", 429, json=wrong)
    assert (await client.post("/api/user/login", json=wrong)).headers["Retry-After"]


async def test_document_and_docs_page_are_served(client: TestClient) -> None:
    response = await client.get("/api/openapi.json")
    assert response.status == 200
    assert response.content_type == "application/json"
    assert await response.json() == json.loads(json.dumps(document()))
    page = await client.get("/api/docs")
    assert page.status == 200
    assert page.content_type == "text/html"
    text = await page.text()
    for path in document()["paths"]:
        assert f"<code>{path}</code>" in text
    # Self-contained: nothing is fetched from elsewhere.
    assert "<script" not in text and "http://" not in text and "https://" not in text
