"""GET / and /static/…: the customer page's files, caching, security headers and words."""

import re
from importlib import resources

from aiohttp.test_utils import TestClient

from api.page import CONTENT_SECURITY_POLICY, assets

STATIC = resources.files("api").joinpath("static")


def static_text(name: str) -> str:
    return STATIC.joinpath(name).read_text("utf-8")


async def test_the_page_is_revalidated_by_etag_under_a_strict_policy(client: TestClient) -> None:
    response = await client.get("/")
    assert response.status == 200
    assert response.content_type == "text/html"
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert "script-src 'self';" in CONTENT_SECURITY_POLICY
    assert "unsafe" not in CONTENT_SECURITY_POLICY
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    html = await response.text()
    # Nothing inline for the policy to forbid: scripts and styles are files.
    assert "<style" not in html and " style=" not in html
    assert re.search(r"\son[a-z]+\s*=", html) is None  # no inline event handlers
    assert re.findall(r"<script[^>]*>", html) == [
        f'<script type="module" src="/static/{assets().version}/app.js">'
    ]
    again = await client.get("/", headers={"If-None-Match": response.headers["ETag"]})
    assert again.status == 304
    assert await again.read() == b""


async def test_every_file_the_page_loads_is_served_immutable_under_its_version(
    client: TestClient,
) -> None:
    html = await (await client.get("/")).text()
    wanted = set(re.findall(r'(?:src|href)="(/static/[^"]+)"', html))
    # The modules' own imports resolve next to them (plain ES modules, no bundler).
    for name in ("app.js", "api.js", "i18n.js", "checks.js"):
        for imported in re.findall(r'from "\./([\w.]+)"', static_text(name)):
            wanted.add(f"/static/{assets().version}/{imported}")
    assert {p.rsplit("/", 1)[1] for p in wanted} == {
        "app.js",
        "api.js",
        "i18n.js",
        "checks.js",
        "style.css",
        "icon.svg",
    }
    types = {"js": "text/javascript", "css": "text/css", "svg": "image/svg+xml"}
    for path in wanted:
        response = await client.get(path)
        assert response.status == 200, path
        assert response.content_type == types[path.rsplit(".", 1)[1]], path
        assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        unchanged = await client.get(path, headers={"If-None-Match": response.headers["ETag"]})
        assert unchanged.status == 304, path


async def test_other_versions_and_unknown_names_are_404_json(client: TestClient) -> None:
    version = assets().version
    for path in (
        "/static/0123456789ab/app.js",
        f"/static/{version}/nope.js",
        f"/static/{version}/index.html",
        f"/static/{version}/..%2fpage.py",
        f"/static/{version}/%2e%2e%2f%2e%2e%2fapi%2fapp.py",
        "/static/app.js",
    ):
        response = await client.get(path)
        assert response.status == 404, path
        assert response.content_type == "application/json", path


async def test_the_files_are_compressed_for_clients_that_accept_it(client: TestClient) -> None:
    response = await client.get(
        f"/static/{assets().version}/app.js", headers={"Accept-Encoding": "gzip"}
    )
    assert response.headers["Content-Encoding"] == "gzip"
    assert response.headers["Vary"] == "Accept-Encoding"
    assert (await response.text()) == static_text("app.js")


def test_the_version_changes_with_any_file() -> None:
    found = assets()
    assert re.fullmatch(r"[0-9a-f]{12}", found.version)
    assert f"/static/{found.version}/app.js".encode() in found.page.body
    assert b"{{static}}" not in found.page.body


def _keys(block: str) -> set[str]:
    return set(re.findall(r'^\s+"?([\w.]+)"?: "', block, re.MULTILINE))


def test_english_and_russian_have_the_same_words_and_every_word_used_exists() -> None:
    source = static_text("i18n.js")
    english = _keys(source.split("\n  en: {", 1)[1].split("\n  },", 1)[0])
    russian = _keys(source.split("\n  ru: {", 1)[1].split("\n  },", 1)[0])
    assert len(english) > 50
    assert english == russian
    page = static_text("index.html")
    used = set(re.findall(r'data-i18n(?:-label)?="([\w.]+)"', page))
    # A list's words: its name before each column, "empty" and "more" (app.js buildList).
    for name, columns in re.findall(r'data-list="(\w+)" data-columns="([\w ]+)"', page):
        used |= {f"{name}.{word}" for word in [*columns.split(), "empty", "more"]}
    assert {"orders.uploaded", "history.more"} <= used
    app = static_text("app.js")
    used |= {
        key
        for key in re.findall(r'"([a-z]+\.[A-Za-z]+)"', app)
        if not key.startswith("gophermart.")
    } | {"who"}
    used |= {f"status.{s}" for s in ("NEW", "PROCESSING", "PROCESSED", "INVALID")}
    assert used - english == set(), "words the page uses but neither language has"
