"""The OpenAPI document (api/openapi.yaml): in step with the router, the code and real answers.

That every answer the server gives is one the document declares is proven twice:
by fuzzing a running server (tests/chaos/test_fuzz_openapi.py: statuses, content
types, headers, bodies), and by every in-process test of the suite, whose API app
notes any status or JSON body the document does not declare (tests/documented.py,
wired in by conftest.py's ``aiohttp_client``).

Here: the document is valid OpenAPI 3.1 describing exactly the routes the app
serves, its limits are the code's, its examples match their schemas (jsonschema),
and the answers of a whole customer's flow (a credited order, a withdrawal, a
password change), of throttling and of cross-site refusals are the documented ones.
"""

import dataclasses
import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient
from openapi_spec_validator import validate

from api.app import create_app
from api.auth import COOKIE_NAME
from api.bodies import MAX_LOGIN, MAX_PASSWORD
from api.openapi import document
from db.pages import PAGE_ROWS
from shared.luhn import MAX_ORDER_DIGITS
from shared.settings import ApiSettings
from tests.documented import DOCUMENT, escape, operations, schema_errors, undocumented
from tests.helpers import SECRET, credit, register


def app_operations() -> set[tuple[str, str]]:
    """(path template, method) of every route the API app serves."""
    # Nothing connects until the app starts, so any DSN will do.
    app = create_app(ApiSettings(database_uri="postgresql://unused/unused", session_secret=SECRET))
    found = set()
    for route in app.router.routes():
        resource = route.resource
        assert resource is not None
        found.add((resource.canonical, route.method.lower()))
    return found


def test_every_route_is_documented_and_every_documented_operation_exists() -> None:
    served = app_operations()
    documented = set(operations())
    assert served - documented == set(), "routes missing from the OpenAPI document"
    assert documented - served == set(), "documented operations the app does not serve"


def test_document_passes_openapi_spec_validator() -> None:
    # OpenAPI 3.1's own schema, every $ref resolvable, operationIds unique.
    validate(document())


def test_schemas_require_only_properties_they_declare() -> None:
    for name, schema in document()["components"]["schemas"].items():
        for key in schema.get("required", []):
            assert key in schema.get("properties", {}), (name, key)


def test_auth_schemes_are_cookie_and_bearer() -> None:
    schemes = document()["components"]["securitySchemes"]
    assert schemes["cookieAuth"] == {"type": "apiKey", "in": "cookie", "name": "gophermart_session"}
    assert schemes["bearerAuth"]["type"] == "http"
    assert schemes["bearerAuth"]["scheme"] == "bearer"
    protected = [
        op
        for (path, _), op in operations().items()
        if path.startswith("/api/user/") and not path.endswith(("/register", "/login"))
    ]
    assert len(protected) == 9  # six of the contract, logout, password change, events
    assert all(op["security"] == [{"cookieAuth": []}, {"bearerAuth": []}] for op in protected)


def test_the_documents_limits_are_the_ones_the_code_enforces() -> None:
    # The document is data: the numbers the code defines are written in it, so
    # they are checked here rather than filled in at load time.
    doc = document()
    schemas = doc["components"]["schemas"]
    credentials = schemas["Credentials"]["properties"]
    assert credentials["login"]["maxLength"] == MAX_LOGIN
    assert credentials["username"]["maxLength"] == MAX_LOGIN
    assert credentials["password"]["maxLength"] == MAX_PASSWORD
    for field in ("old_password", "new_password"):
        assert schemas["PasswordChange"]["properties"][field]["maxLength"] == MAX_PASSWORD
    assert schemas["OrderNumber"]["maxLength"] == MAX_ORDER_DIGITS
    assert doc["components"]["securitySchemes"]["cookieAuth"]["name"] == COOKIE_NAME
    assert doc["components"]["headers"]["SessionCookie"]["description"].startswith(
        f"`{COOKIE_NAME}=<"
    )
    logout = doc["paths"]["/api/user/logout"]["post"]["responses"]["200"]
    assert logout["headers"]["Set-Cookie"]["description"].startswith(f'`{COOKIE_NAME}="";')
    default_items = ApiSettings.__dataclass_fields__["list_max_items"].default
    listing = doc["paths"]["/api/user/orders"]["get"]["description"]
    assert f"({default_items:,} unless\nconfigured)" in listing
    assert f"longer than {PAGE_ROWS:,} items is streamed" in listing
    bad_limit = doc["components"]["responses"]["BadListParameters"]["content"]
    assert bad_limit["application/json"]["example"]["error"].endswith(f"1 to {default_items}")


# --- examples and real answers match their schemas (jsonschema) ---------------


def _media_examples(node: Any = DOCUMENT, where: str = "") -> Iterator[tuple[str, Any]]:
    """(pointer to the schema, example) of every media type's example."""
    if isinstance(node, dict):
        if "schema" in node:
            if "example" in node:
                yield f"{where}/schema", node["example"]
            for example in node.get("examples", {}).values():
                yield f"{where}/schema", example["value"]
        for key, value in node.items():
            yield from _media_examples(value, f"{where}/{escape(key)}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _media_examples(value, f"{where}/{index}")


def test_every_example_conforms_to_its_schema() -> None:
    examples = list(_media_examples())
    assert len(examples) > 20
    for pointer, example in examples:
        assert schema_errors(example, pointer) == [], pointer


def test_the_schemas_reject_what_they_forbid() -> None:
    balance = "/components/schemas/Balance"
    assert schema_errors({"current": Decimal("629.48"), "withdrawn": 0}, balance) == []
    assert schema_errors({"current": Decimal("1.005"), "withdrawn": 0}, balance)
    assert schema_errors({"current": Decimal("-1"), "withdrawn": 0}, balance)
    assert schema_errors({"current": "1.50", "withdrawn": 0}, balance)
    assert schema_errors({"current": 1}, balance)
    order = "/components/schemas/Order"
    assert schema_errors({"number": "18", "status": "NEW", "uploaded_at": "x"}, order) == []
    assert schema_errors({"number": "1a", "status": "NEW", "uploaded_at": "x"}, order)
    assert schema_errors({"number": "018", "status": "NEW", "uploaded_at": "x"}, order)
    assert schema_errors({"number": "18", "status": "DONE", "uploaded_at": "x"}, order)


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
    body = await response.read()
    assert response.status == expected, body
    operation = (doc_path or path, method.lower())
    assert str(expected) in operations()[operation]["responses"]
    assert undocumented(*operation, expected, response.content_type, body) is None
    if expected == 204:
        assert response.headers["Content-Type"] == "application/json"
    return json.loads(body, parse_float=Decimal) if body else None


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


async def test_every_change_from_another_site_is_a_documented_403(client: TestClient) -> None:
    # The cross-site guard answers before any handler, so every state-changing
    # operation must document it, a future one included.
    await register(client, "carol")  # the cookie jar holds a session from now on
    changes = [(path, method) for path, method in operations() if method != "get"]
    assert len(changes) == 6
    for path, method in changes:
        await check(
            client, method.upper(), path, 403, headers={"Origin": "https://elsewhere.example"}
        )


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
