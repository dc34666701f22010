"""The OpenAPI 3.1 description of the public API, and the routes that serve it.

The document is data: ``api/openapi.yaml``, shipped in the package, is the one
source of truth. It is read once; ``/api/openapi.json`` serves it as JSON and
``/api/docs`` renders it as a self-contained HTML page (no CDN, no JavaScript).
"""

import functools
import html
from importlib import resources
from typing import Any

import yaml
from aiohttp import web

from shared.jsonio import dumps

OPENAPI_PATH = "/api/openapi.json"
DOCS_PATH = "/api/docs"
DOCUMENT_FILE = "openapi.yaml"

# A safe loader (plain data, no Python objects), libyaml's when the wheel has it.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@functools.cache
def document() -> dict[str, Any]:
    """The OpenAPI document (read once; treat it as read-only)."""
    text = resources.files("api").joinpath(DOCUMENT_FILE).read_text("utf-8")
    loaded: dict[str, Any] = yaml.load(text, Loader=_LOADER)
    return loaded


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
        cookie = document()["components"]["securitySchemes"]["cookieAuth"]["name"]
        parts.append(
            f"<p>Authentication: cookie <code>{esc(cookie)}</code> or "
            "<code>Authorization: Bearer &lt;token&gt;</code>.</p>"
        )
    if "requestBody" in op:
        types = ", ".join(f"<code>{esc(t)}</code>" for t in _resolve(op["requestBody"])["content"])
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
    return web.Response(body=_document_json(), status=200, content_type="application/json")


async def serve_docs(_: web.Request) -> web.StreamResponse:
    return web.Response(body=docs_page(), status=200, content_type="text/html", charset="utf-8")


def add_docs_routes(app: web.Application) -> None:
    # Read and rendered now: a document that does not load stops the server at start.
    docs_page()
    app.router.add_get(OPENAPI_PATH, serve_document, allow_head=False)
    app.router.add_get(DOCS_PATH, serve_docs, allow_head=False)
