"""requirements/*.lock agree with pyproject.toml, and every install uses them.

A dependency added to or raised in pyproject.toml without `make lock` fails here,
before an image build or a fresh clone installs something nobody tested.
"""

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
LOCKS = ROOT / "requirements"
# One entry: "name==version [; marker] \" followed by its "--hash=sha256:..." lines.
_ENTRY = re.compile(
    r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)(?:\s*;\s*([^\\\n]+?))?\s*\\\n"
    r"((?:\s+--hash=sha256:[0-9a-f]{64}\s*\\?\n?)+)",
    re.MULTILINE,
)


def locked(name: str) -> dict[str, list[tuple[Version, str | None, int]]]:
    """package -> [(version, marker, number of hashes)] as the lock file pins them."""
    text = (LOCKS / name).read_text()
    pins: dict[str, list[tuple[Version, str | None, int]]] = {}
    for match in _ENTRY.finditer(text):
        pins.setdefault(canonicalize_name(match.group(1)), []).append(
            (Version(match.group(2)), match.group(3), match.group(4).count("--hash="))
        )
    requirement_lines = [
        line for line in text.splitlines() if line and not line.startswith((" ", "#"))
    ]
    assert len(requirement_lines) == sum(len(v) for v in pins.values()), (
        f"{name}: a line that is not 'name==version' with hashes"
    )
    return pins


RUNTIME = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
DEV = [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"]["dev"]]
BUILD = [Requirement(r) for r in PYPROJECT["build-system"]["requires"]]


@pytest.mark.parametrize(
    ("lock", "requirements"),
    [
        ("runtime.lock", RUNTIME),
        ("build.lock", BUILD),
        ("dev.lock", RUNTIME + DEV + BUILD),
    ],
)
def test_every_declared_dependency_is_pinned_within_its_range(
    lock: str, requirements: list[Requirement]
) -> None:
    pins = locked(lock)
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} is not in requirements/{lock}: run `make lock`"
        for version, _, hashes in pins[name]:
            assert requirement.specifier.contains(version, prereleases=True), (
                f"requirements/{lock} pins {name}=={version}, outside {requirement}: "
                "run `make lock`"
            )
            assert hashes >= 1


def test_the_image_locks_pin_what_the_suite_ran_with() -> None:
    dev = locked("dev.lock")
    for lock in ("runtime.lock", "build.lock"):
        for name, pins in locked(lock).items():
            assert [v for v, _, _ in pins] == [v for v, _, _ in dev.get(name, [])], (
                f"{lock} and dev.lock disagree on {name}: run `make lock`"
            )


def test_the_runtime_lock_holds_no_development_or_build_tool() -> None:
    runtime = locked("runtime.lock")
    for requirement in DEV + BUILD:
        assert canonicalize_name(requirement.name) not in runtime, requirement.name


def test_every_install_goes_through_the_locks_with_hashes() -> None:
    makefile = (ROOT / "Makefile").read_text()
    stamp_recipe = makefile.split("$(STAMP): ", 1)[1].split("\n\n", 1)[0]
    assert "requirements/dev.lock" in stamp_recipe.splitlines()[0], "reinstall on a new lock"
    installs = [line for line in stamp_recipe.splitlines() if "$(PIP)" in line]
    assert installs == [
        "\t$(PIP) --require-hashes -r requirements/dev.lock",
        "\t$(PIP) --no-deps --no-build-isolation -e .",
    ]
    dockerfile = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    pip_installs = re.findall(r"pip install ([^&\n]+)", dockerfile)
    assert {re.sub(r"\s+", " ", args).strip() for args in pip_installs} == {
        "--require-hashes --only-binary=:all: -r requirements/runtime.lock",
        "--require-hashes --only-binary=:all: -r requirements/build.lock",
        "--no-deps /tmp/dist/*.whl",
    }
