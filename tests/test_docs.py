"""The README and docs/ stay true of the code they describe.

Cheap checks that fail when a rename leaves the prose behind: every relative
link (and its #anchor) resolves, every setting named is declared, every
``gophermart_*`` name (metric, channel, cookie) is in the code, and every file
and test a page points to exists.
"""

import ast
import functools
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from shared.statuses import FINAL_STATUSES, OrderStatus

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Where the project's own code lives (tests and benchmarks read settings too).
CODE_DIRS = ("api", "worker", "shared", "db", "accrual_sim", "stack", "bench", "deploy", "tests")

_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_SETTING = re.compile(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b")
_NAME = re.compile(r"\bgophermart_[a-z0-9_]*[a-z0-9]\b")
_TEST_REF = re.compile(r"\b(tests/[\w/]+\.py)::(\w+)")
_PATH = re.compile(r"`((?:" + "|".join((*CODE_DIRS, "docs", "requirements")) + r")/[^`\s]*)`")
# Upper-case names in the pages that are not settings of ours, and why.
NOT_SETTINGS = {
    "PG_BINDIR",  # read by shared/localpg.py to find PostgreSQL's binaries
    "SO_REUSEPORT",  # the socket option the API's processes share a port with
}
# Paths made at run time, not kept in the repository.
RUNTIME_PATHS = {"bench/out/pgq-venv", "test-artifacts/browser/"}
_METRIC_SUFFIXES = ("_total", "_bucket", "_count", "_sum", "_created")


def _text(page: Path) -> str:
    return page.read_text(encoding="utf-8")


def _prose(page: Path) -> str:
    """The page without fenced code blocks (examples may show anything)."""
    return re.sub(r"^```.*?^```", "", _text(page), flags=re.S | re.M)


def _code_files() -> Iterator[Path]:
    for name in CODE_DIRS:
        yield from (ROOT / name).rglob("*.py")


@functools.cache
def declared_settings() -> frozenset[str]:
    """Env names of every ``setting(default, "ENV", …)`` and every env var the code reads."""
    names: set[str] = set()
    for path in _code_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            # setting(default, "ENV", …) declares; os.environ.get("ENV") reads.
            position = {"setting": 1, "get": 0, "getenv": 0}.get(called)
            if position is None or len(node.args) <= position:
                continue
            env = node.args[position]
            if isinstance(env, ast.Constant) and isinstance(env.value, str):
                names.add(env.value)
    return frozenset(names)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    for line in _prose(page).splitlines():
        if match := re.match(r"#{1,6} (.+)", line):
            slug = _slug(match.group(1))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            result.add(slug if count == 0 else f"{slug}-{count}")
    return result


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    broken = []
    for target in _LINK.findall(_prose(page)):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists() or (anchor and file.suffix == ".md" and anchor not in anchors(file)):
            broken.append(target)
    assert not broken, f"{page.name}: links that lead nowhere: {broken}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_setting_named_is_declared(page: Path) -> None:
    known = declared_settings() | NOT_SETTINGS
    unknown = sorted({name for name in _SETTING.findall(_prose(page))} - known)
    assert not unknown, f"{page.name} names settings no code declares: {unknown}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_gophermart_name_is_in_the_code(page: Path) -> None:
    """Metrics, NOTIFY channels and the cookie, as the code spells them."""
    code = "\n".join(
        p.read_text(encoding="utf-8")
        for d in ("api", "worker", "shared", "db")
        for p in (ROOT / d).rglob("*")
        if p.suffix in (".py", ".sql")
    )
    missing = []
    for name in sorted(set(_NAME.findall(_prose(page)))):
        bare = name
        for suffix in _METRIC_SUFFIXES:
            bare = bare.removesuffix(suffix)
        if f'"{bare}"' not in code and f"'{bare}'" not in code:
            missing.append(name)
    assert not missing, f"{page.name} names what the code does not: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_file_and_test_pointed_to_exists(page: Path) -> None:
    prose = _prose(page)
    missing = []
    for raw in _PATH.findall(prose):
        path = raw.split("::")[0].rstrip(".,")
        if path in RUNTIME_PATHS or any(ch in path for ch in "*<{"):
            continue
        if not (ROOT / path).exists():
            missing.append(path)
    for path, name in _TEST_REF.findall(prose):
        file = ROOT / path
        if not file.exists() or not re.search(rf"def {name}\(", _text(file)):
            missing.append(f"{path}::{name}")
    assert not missing, f"{page.name} points to what is not there: {missing}"


def test_the_checks_can_fail() -> None:
    """The patterns find what they are meant to (a check that sees nothing proves nothing)."""
    sample = "see [x](docs/nowhere.md#here), `NO_SUCH_SETTING`, `gophermart_nothing_total`"
    assert _LINK.findall(sample) == ["docs/nowhere.md#here"]
    assert "NO_SUCH_SETTING" not in declared_settings()
    assert {"WORKER_LEASE", "DATABASE_URI", "ACCRUAL_RATE_TTL"} <= declared_settings()
    assert _SETTING.findall(sample) == ["NO_SUCH_SETTING"]
    assert _NAME.findall(sample) == ["gophermart_nothing_total"]
    assert _slug("Own Fernet tokens, not aiohttp-session") == (
        "own-fernet-tokens-not-aiohttp-session"
    )
    assert "the-gate-pause-and-pace" in anchors(ROOT / "docs" / "worker.md")


def _service_settings() -> Iterator[tuple[str, tuple[str, ...], object]]:
    """(env, flags, default) of every setting the API, worker and runner declare."""
    for name in ("api", "worker", "shared", "db", "stack"):
        for path in (ROOT / name).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if not (
                    isinstance(node, ast.AnnAssign)
                    and isinstance(node.target, ast.Name)
                    and isinstance(node.value, ast.Call)
                    and getattr(node.value.func, "id", "") == "setting"
                ):
                    continue
                args = node.value.args
                default = args[0].value if isinstance(args[0], ast.Constant) else None
                env = args[1].value if isinstance(args[1], ast.Constant) else ""
                flags = tuple(str(a.value) for a in args[2:] if isinstance(a, ast.Constant))
                yield str(env), flags or ("--" + node.target.id.replace("_", "-"),), default


def _configuration_rows() -> dict[str, tuple[str, str]]:
    """env -> (flag, default) from the README's configuration table (``A / B`` rows split)."""
    rows = {}
    for line in _text(ROOT / "README.md").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 5 or not cells[0].startswith("`") or cells[3] == "process":
            continue
        envs, flags, defaults = (cell.split(" / ") for cell in cells[:3])
        for i, env in enumerate(envs):
            pick = min(i, len(defaults) - 1)
            rows[env.strip("`")] = (flags[min(i, len(flags) - 1)].strip("`"), defaults[pick])
    return rows


def test_every_setting_is_in_the_readme_configuration_table_as_declared() -> None:
    """Name, flag and (numeric) default of every setting, as ``-h`` would print them."""
    rows = _configuration_rows()
    wrong = []
    declared = list(_service_settings())
    assert len(declared) > 40  # the scan sees the declarations
    for env, flags, default in declared:
        if env not in rows:
            wrong.append(f"{env}: not in the table")
            continue
        flag, shown = rows[env]
        if flag not in flags:
            wrong.append(f"{env}: flag {flag}, declared {flags}")
        number = shown.strip("`")
        if isinstance(default, bool) or not isinstance(default, int | float):
            continue
        if re.fullmatch(r"[0-9.]+", number) and float(number) != float(default):
            wrong.append(f"{env}: default {number}, declared {default}")
    assert not wrong, wrong


def test_the_state_diagram_has_exactly_our_statuses_and_final_ones() -> None:
    """docs/worker.md's diagram of an order: the four OrderStatus values, two of them final."""
    worker_md = _text(ROOT / "docs" / "worker.md")
    diagram = re.search(r"```mermaid\n(stateDiagram-v2\n.*?)```", worker_md, re.S)
    assert diagram is not None, "docs/worker.md has no Mermaid state diagram"
    states = set(re.findall(r"\b([A-Z]{3,})\s*-->", diagram.group(1)))
    states |= set(re.findall(r"-->\s*([A-Z]{3,})\b", diagram.group(1)))
    assert states == {status.value for status in OrderStatus}
    final = set(re.findall(r"\b([A-Z]+) --> \[\*\]", diagram.group(1)))
    assert final == {status.value for status in FINAL_STATUSES}


def _endpoint_sections(page: Path) -> dict[tuple[str, str], str]:
    """``### `METHOD /path``` sections of a page: (method, path) -> the section's text."""
    parts = re.split(r"^### `(GET|POST) (/[^`]*)`$", _text(page), flags=re.M)
    # A section ends at the next heading of its level or above.
    return {
        (parts[i], parts[i + 1]): parts[i + 2].split("\n## ")[0]
        for i in range(1, len(parts) - 2, 3)
    }


def test_api_md_and_the_openapi_document_name_the_same_statuses() -> None:
    """Each endpoint of docs/api.md: its statuses are the document's, less the common ones."""
    document = yaml.safe_load(_text(ROOT / "api" / "openapi.yaml"))
    api_md = ROOT / "docs" / "api.md"
    common_part = _text(api_md).split("## Statuses every endpoint may answer")[1]
    common = set(re.findall(r"`([1-5][0-9][0-9])`", common_part.split("\n## ")[0]))
    sections = _endpoint_sections(api_md)
    assert len(sections) >= 10
    wrong = []
    for (method, path), text in sections.items():
        operation = document["paths"].get(path, {}).get(method.lower())
        if operation is None:
            wrong.append(f"{method} {path}: not in api/openapi.yaml")
            continue
        documented = set(operation["responses"])
        named = set(re.findall(r"`([1-5][0-9][0-9])`", text))
        if extra := named - documented:
            wrong.append(f"{method} {path}: api.md names {sorted(extra)}, the document does not")
        if unnamed := documented - named - common:
            wrong.append(f"{method} {path}: the document has {sorted(unnamed)}, api.md does not")
    assert not wrong, wrong


def test_defaults_quoted_in_prose_are_the_declared_ones() -> None:
    """ "`WORKER_LEASE` (30 s)", "`MAX_BODY_BYTES` (64 KiB)", "(97 %)": as declared."""
    defaults = {env: default for env, _, default in _service_settings()}
    quoted = re.compile(r"`([A-Z][A-Z0-9_]+)` \(([0-9][0-9,.]*)(?: ?(KiB|%))?(?![0-9,.]| ?=)")
    scale = {"KiB": 1024.0, "%": 0.01, None: 1.0}
    wrong = []
    seen = 0
    for page in PAGES:
        for env, number, unit in quoted.findall(_prose(page)):
            default = defaults.get(env)
            if isinstance(default, bool) or not isinstance(default, int | float):
                continue
            seen += 1
            said = float(number.replace(",", "").rstrip(".")) * scale[unit or None]
            if abs(said - float(default)) > 1e-9:
                wrong.append(f"{page.name}: {env} ({number}{unit}), declared {default}")
    assert seen > 15  # the pattern finds the quotes
    assert not wrong, wrong
