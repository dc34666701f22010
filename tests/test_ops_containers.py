"""Dockerfile and docker-compose.yml agree with the code (no Docker engine needed).

Every command is a console script, every variable a real setting, every port
the one the service listens on: the mistakes a compose file otherwise only
shows at ``docker compose up``.
"""

import dataclasses
import importlib.util
import re
import stat
import subprocess
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from accrual_sim.settings import SimSettings
from deploy.compose_check import HostPorts, derive
from shared.settings import ApiSettings, WorkerSettings, split_host_port

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
SETTINGS_OF = {
    "gophermart-api": ApiSettings,
    "gophermart-worker": WorkerSettings,
    "accrual-sim": SimSettings,
}
# Compose's own interpolation: ${VAR}, ${VAR:-default}, ${VAR:?message}.
_INTERPOLATION = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?::?[-?][^}]*)?\}")


def env_names(cls: type) -> set[str]:
    return {f.metadata["env"] for f in dataclasses.fields(cls) if "env" in f.metadata}


def flag_names(cls: type) -> set[str]:
    flags: set[str] = set()
    for field in dataclasses.fields(cls):
        if "env" in field.metadata:
            flags.update(field.metadata["flags"] or (f"--{field.name.replace('_', '-')}",))
    return flags


def expand(text: str) -> str:
    """The value with every ``${VAR…}`` replaced by its default (or a placeholder)."""

    def default(match: re.Match[str]) -> str:
        rest = match.group(0)[len(match.group(1)) + 2 : -1]
        return rest[2:] if rest.startswith(":-") else "set-by-operator"

    return _INTERPOLATION.sub(default, text)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def app_services(services: dict[str, dict[str, Any]]) -> dict[str, tuple[str, list[str]]]:
    """service -> (console script, its arguments) for the services running our image."""
    return {
        name: (spec["command"][0], spec["command"][1:])
        for name, spec in services.items()
        if "command" in spec
    }


def environment(spec: dict[str, Any]) -> dict[str, str]:
    env = spec.get("environment", {})
    assert isinstance(env, dict), "use the mapping form of environment"
    return {key: expand(str(value)) for key, value in env.items()}


def test_the_expected_services_run_the_expected_programs(
    services: dict[str, dict[str, Any]],
) -> None:
    assert {name: script for name, (script, _) in app_services(services).items()} == {
        "api": "gophermart-api",
        "worker": "gophermart-worker",
        "accrual": "accrual-sim",
    }
    assert services["postgres"]["image"] == "postgres:15"
    assert app_services(services)["accrual"][1] == ["--seed-demo"]


def test_commands_are_console_scripts_whose_modules_exist(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, (script, args) in app_services(services).items():
        assert script in SCRIPTS, f"{name}: {script} is not in [project.scripts]"
        module, _, function = SCRIPTS[script].partition(":")
        assert importlib.util.find_spec(module) is not None, f"{name}: no module {module}"
        flags = flag_names(SETTINGS_OF[script])
        for arg in args:
            if arg.startswith("-"):
                assert arg.split("=")[0] in flags, f"{name}: {arg} is not a flag of {script}"
        assert function == "main"


def test_every_variable_set_is_a_real_setting(services: dict[str, dict[str, Any]]) -> None:
    for name, (script, _) in app_services(services).items():
        unknown = set(environment(services[name])) - env_names(SETTINGS_OF[script])
        assert unknown == set(), f"{name} sets variables no setting reads: {unknown}"
    postgres_env = set(environment(services["postgres"]))
    assert postgres_env and all(key.startswith("POSTGRES_") for key in postgres_env)


def test_listen_addresses_are_public_and_match_the_published_ports(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in ("api", "accrual"):
        host, port = split_host_port(environment(services[name])["RUN_ADDRESS"])
        assert host == "0.0.0.0", f"{name} must listen on every interface in a container"
        published = [str(p).rsplit(":", 1)[-1] for p in services[name].get("ports", [])]
        assert published == [str(port)], f"{name}: ports {published} vs RUN_ADDRESS {port}"
    assert environment(services["api"])["RUN_ADDRESS"].endswith(":8080")


def test_addresses_between_services_point_at_real_services(
    services: dict[str, dict[str, Any]],
) -> None:
    accrual_port = split_host_port(environment(services["accrual"])["RUN_ADDRESS"])[1]
    postgres = environment(services["postgres"])
    accrual = urlsplit(environment(services["worker"])["ACCRUAL_SYSTEM_ADDRESS"])
    assert (accrual.hostname, accrual.port) == ("accrual", accrual_port)
    for name in ("api", "worker"):
        env = environment(services[name])
        database = urlsplit(env["DATABASE_URI"])
        assert database.hostname in services
        assert (database.username, database.password, database.path) == (
            postgres["POSTGRES_USER"],
            postgres["POSTGRES_PASSWORD"],
            "/" + postgres["POSTGRES_DB"],
        )


def test_the_api_requires_a_session_secret_from_the_environment(
    services: dict[str, dict[str, Any]],
) -> None:
    # ${VAR:?message}: compose refuses to start without it, so tokens never
    # silently become per-process random ones.
    assert re.fullmatch(
        r"\$\{SESSION_SECRET:\?.+\}", services["api"]["environment"]["SESSION_SECRET"]
    )


def test_the_first_run_script_writes_the_secret_once(tmp_path: Path) -> None:
    # compose reads .env by itself: the secret written once is the one every later
    # `up`, `--scale` and restart uses, so logins survive them.
    env = tmp_path / ".env"
    env.write_text("POSTGRES_PASSWORD=kept")  # no final newline: must not be swallowed
    script = ROOT / "deploy" / "env-init.sh"
    assert "deploy/env-init.sh" in str(
        yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["api"]["environment"][
            "SESSION_SECRET"
        ]
    )
    subprocess.run([script, env], check=True, capture_output=True)
    first = env.read_text()
    assert re.fullmatch(r"POSTGRES_PASSWORD=kept\nSESSION_SECRET=[0-9a-f]{64}\n", first)
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    again = subprocess.run([script, env], check=True, capture_output=True, text=True)
    assert env.read_text() == first and "keeping it" in again.stdout
    other = tmp_path / "other.env"
    subprocess.run([script, other], check=True, capture_output=True)
    assert other.read_text() != first.split("\n", 1)[1]  # a fresh random secret


def test_secrets_stay_out_of_the_image_and_out_of_git() -> None:
    for ignore_file in (".dockerignore", ".gitignore"):
        assert ".env" in (ROOT / ignore_file).read_text().split(), ignore_file


def test_one_image_is_built_once_and_shared_by_every_app_service(
    services: dict[str, dict[str, Any]],
) -> None:
    builders = [name for name, spec in services.items() if "build" in spec]
    assert builders == ["api"]
    images = {services[name]["image"] for name in app_services(services)}
    assert images == {"gophermart:local"}
    # Nothing writes to the image's filesystem but /tmp (the API's multiprocess
    # metrics): read-only with a tmpfs there (make compose-check runs them so).
    for name in app_services(services):
        assert services[name]["read_only"] is True and services[name]["tmpfs"] == ["/tmp"]


def test_only_the_api_is_published_beyond_loopback(services: dict[str, dict[str, Any]]) -> None:
    # The simulator's write API registers purchases, i.e. mints points: loopback
    # only. PostgreSQL and the workers' ops ports stay inside the network.
    published = {name: [str(p) for p in spec.get("ports", [])] for name, spec in services.items()}
    assert published["api"] == ["8080:8080"]
    assert published["accrual"] == ["127.0.0.1:8081:8081"]
    assert not published["postgres"] and not published["worker"]


def test_the_compose_version_is_stated(compose: dict[str, Any]) -> None:
    # The top-level `name:` needs Compose v2.3.3; the file and the README say so.
    assert compose["name"] == "gophermart"
    assert "Compose v2.3.3" in (ROOT / "docker-compose.yml").read_text()
    assert "Compose v2.3.3" in (ROOT / "README.md").read_text()


def test_start_order_waits_for_healthy_dependencies(services: dict[str, dict[str, Any]]) -> None:
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    for name in ("api", "worker"):
        assert "postgres" in services[name]["depends_on"]
    for name, spec in services.items():
        depends = spec.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on needs conditions"
        for target, condition in depends.items():
            assert condition == {"condition": "service_healthy"}, (name, target)
            assert "healthcheck" in services[target], f"{target} has no healthcheck"


def test_workers_scale_out(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]
    assert worker["deploy"]["replicas"] >= 2
    assert "container_name" not in worker
    assert "ports" not in worker  # a host port would clash between replicas
    host, port = split_host_port(environment(worker)["WORKER_HEALTH_ADDRESS"])
    assert host == "0.0.0.0" and [str(p) for p in worker["expose"]] == [str(port)]


def test_the_database_keeps_its_data_in_a_named_volume(compose: dict[str, Any]) -> None:
    [volume] = compose["services"]["postgres"]["volumes"]
    name, _, target = volume.partition(":")
    assert name in compose["volumes"]
    assert target == "/var/lib/postgresql/data"


# --- Dockerfile --------------------------------------------------------------


def dockerfile_stages() -> list[tuple[str, list[tuple[str, str]]]]:
    """[(base image, [(instruction, arguments)])] with ``\\`` continuations joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    args: dict[str, str] = {}
    stages: list[tuple[str, list[tuple[str, str]]]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "ARG" and not stages:
            key, _, value = rest.partition("=")
            args[key] = value
        elif instruction == "FROM":
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest.split()[0])
            stages.append((image, []))
        else:
            stages[-1][1].append((instruction, rest.strip()))
    return stages


def test_image_is_multi_stage_on_python_3_11_slim() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2
    assert all(image == "python:3.11-slim" for image, _ in stages)
    final = stages[-1][1]
    copies = [rest for instruction, rest in final if instruction == "COPY"]
    assert copies == ["--from=builder /opt/venv /opt/venv"], "the final stage gets the venv only"


def test_final_stage_runs_unprivileged_without_build_tools() -> None:
    final = dockerfile_stages()[-1][1]
    users = [rest for instruction, rest in final if instruction == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    body = " ".join(rest for _, rest in final)
    for tool in ("gcc", "build-essential", "apt-get install", "make "):
        assert tool not in body
    # The venv handed over has lost pip and setuptools (about 25 MB nothing runs);
    # `make compose-check` confirms that in the built image.
    builder = " ".join(rest for _, rest in dockerfile_stages()[0][1])
    assert re.search(r"/opt/venv/bin/python -m pip uninstall --yes pip setuptools", builder)


def test_default_command_is_the_api_and_its_port_is_exposed() -> None:
    final = dockerfile_stages()[-1][1]
    [cmd] = [rest for instruction, rest in final if instruction == "CMD"]
    assert cmd == '["gophermart-api"]'  # exec form: the app is PID 1 and gets SIGTERM
    assert ("EXPOSE", "8080") in final
    entry = [rest for instruction, rest in final if instruction == "ENTRYPOINT"]
    assert entry == []  # compose's `command` then names the console script to run


def test_the_image_contains_every_package_the_console_scripts_need() -> None:
    builder = dockerfile_stages()[0][1]
    copied = {rest.split()[0] for instruction, rest in builder if instruction == "COPY"}
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"
    ]
    assert set(packages) <= copied
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert not set(packages) & set(ignored)
    assert ".venv" in ignored and ".git" in ignored


def test_every_data_file_of_a_package_ships_in_its_wheel() -> None:
    # The image installs a wheel, not the tree: a file the code reads at run time
    # (migrations, the page's files, the OpenAPI document) must be package data.
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    tracked = subprocess.run(
        ["git", "ls-files", *setuptools["packages"]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    data = [Path(name) for name in tracked if not name.endswith(".py")]
    assert Path("api/openapi.yaml") in data
    for path in data:
        package, inside = path.parts[0], Path(*path.parts[1:])
        globs = setuptools["package-data"].get(package, [])
        assert any(inside.match(glob) for glob in globs), f"{path} is not package data"


# --- make compose-check's derived files ----------------------------------------


def test_compose_v1_gets_the_same_file_without_its_name(compose: dict[str, Any]) -> None:
    derived = derive(compose, v1=True, host=None, context=ROOT)
    assert "name" not in derived and compose["name"] == "gophermart"
    assert derived["services"]["api"]["build"] == {"context": str(ROOT)}
    del derived["services"]["api"]["build"]
    original = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    del original["name"], original["services"]["api"]["build"]
    assert derived == original  # nothing else differs


def test_host_networking_keeps_every_address_consistent(compose: dict[str, Any]) -> None:
    ports = HostPorts(postgres=25432, api=28080, accrual=28081)
    services = derive(compose, v1=False, host=ports, context=ROOT)["services"]
    assert {spec["network_mode"] for spec in services.values()} == {"host"}
    assert not any("ports" in spec or "expose" in spec for spec in services.values())
    text = yaml.safe_dump(services)
    for stale in ("@postgres:", "http://accrual:", ":8080", ":8081", ":9100", "0.0.0.0"):
        assert stale not in text, stale
    for name in ("api", "worker"):
        env = environment(services[name])
        assert urlsplit(env["DATABASE_URI"]).netloc.endswith("@127.0.0.1:25432")
    assert environment(services["worker"])["ACCRUAL_SYSTEM_ADDRESS"] == "http://127.0.0.1:28081"
    assert environment(services["api"])["RUN_ADDRESS"] == "127.0.0.1:28080"
    assert "127.0.0.1:28080/readyz" in " ".join(services["api"]["healthcheck"]["test"])
    assert environment(services["accrual"])["RUN_ADDRESS"] == "127.0.0.1:28081"
    assert environment(services["postgres"])["PGPORT"] == "25432"
    assert "listen_addresses=127.0.0.1" in services["postgres"]["command"]
    # Replicas would clash on one ops port: it is off, and readiness comes from the log.
    assert "WORKER_HEALTH_ADDRESS" not in services["worker"]["environment"]
    assert services["worker"]["healthcheck"] == {"disable": True}
    assert services["api"]["build"]["network"] == "host"
