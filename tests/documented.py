"""What the OpenAPI document (api/openapi.yaml) declares, checked with jsonschema.

``schema_errors`` validates a value against a schema of the document.
``watch_answers`` makes an in-process API app note every answer it gives that
the document does not declare (conftest.py's ``aiohttp_client`` does it for
every app of the suite), so that every test driving the API is also a check of
the document, for the answers a fuzzer cannot provoke (a database outage, a busy
pool, a slow body, throttling) as much as for the common ones.
"""

import functools
import json
from decimal import Decimal
from typing import Any

from aiohttp import web
from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from api.openapi import OPENAPI_PATH, document

METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
# Answers any request may get, which the document's description states once
# rather than on every operation: 413 to a declared Content-Length over
# MAX_BODY_BYTES, 417 to an Expect other than 100-continue.
ANY_REQUEST = {413, 417}

_URI = "urn:gophermart:openapi"
# Numbers as decimals, in the document and in answers, as the server writes
# money: `multipleOf: 0.01` is then exact, not a float's approximation.
DOCUMENT = json.loads(json.dumps(document()), parse_float=Decimal)
_REGISTRY: Registry[Any] = Registry().with_resource(_URI, DRAFT202012.create_resource(DOCUMENT))


def escape(part: str) -> str:
    """One JSON-pointer segment."""
    return part.replace("~", "~0").replace("/", "~1")


@functools.cache
def operations() -> dict[tuple[str, str], dict[str, Any]]:
    """(path template, method) -> the documented operation."""
    return {
        (path, method): op
        for path, ops in document()["paths"].items()
        for method, op in ops.items()
        if method in METHODS
    }


@functools.cache
def _validator(pointer: str) -> Draft202012Validator:
    return Draft202012Validator({"$ref": f"{_URI}#{pointer}"}, registry=_REGISTRY)


def schema_errors(value: Any, pointer: str) -> list[str]:
    """Why ``value`` does not match the schema at ``pointer`` in the document."""
    errors = _validator(pointer).iter_errors(value)
    return [f"{error.json_path}: {error.message}" for error in errors]


def response_schema(path: str, method: str, status: int) -> str:
    """The pointer to the JSON schema of that documented answer."""
    response = operations()[(path, method)]["responses"][str(status)]
    if "$ref" in response:
        where = response["$ref"][1:]
    else:
        where = f"/paths/{escape(path)}/{method}/responses/{status}"
    return f"{where}/content/application~1json/schema"


def undocumented(path: str, method: str, status: int, content_type: str, body: Any) -> str | None:
    """What is wrong with that answer of the operation, or None when it is documented."""
    responses = operations()[(path, method)]["responses"]
    if str(status) not in responses:
        return None if status in ANY_REQUEST else f"status {status} is not documented"
    if content_type != "application/json" or not body:
        return None  # not JSON, streamed, or empty (204)
    response = responses[str(status)]
    if "application/json" not in _resolve(response).get("content", {}):
        return f"status {status}: JSON is not a documented content type"
    value = json.loads(body, parse_float=Decimal)
    problems = schema_errors(value, response_schema(path, method, status))
    return f"status {status}: {problems}" if problems else None


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    """Follow one local ``$ref``."""
    if "$ref" not in node:
        return node
    target: Any = document()
    for part in node["$ref"][2:].split("/"):
        target = target[part]
    return dict(target)


def is_api(app: web.Application) -> bool:
    return any(
        route.resource is not None and route.resource.canonical == OPENAPI_PATH
        for route in app.router.routes()
    )


def watch_answers(app: web.Application, found: list[str]) -> None:
    """Append to ``found`` every answer of ``app`` the document does not declare."""

    async def check(request: web.Request, response: web.StreamResponse) -> None:
        resource = request.match_info.route.resource
        if resource is None or request.method == "HEAD":
            return  # no route matched (404, 405): answers the description states
        key = (resource.canonical, request.method.lower())
        if key not in operations():
            found.append(f"{request.method} {resource.canonical}: not documented")
            return
        body = response.body if isinstance(response, web.Response) else None
        body = body if isinstance(body, bytes) else None  # not a payload object
        problem = undocumented(*key, response.status, response.content_type, body)
        if problem is not None:
            found.append(f"{request.method} {request.path}: {problem}")

    app.on_response_prepare.append(check)
