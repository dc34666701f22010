"""``make compose-check``: the image and the compose stack, proven on a real engine.

Builds the image, brings the stack up, runs a customer's flow through it, scales the
workers to 4 and shows that every one of them takes work, checks that every process
runs as a non-root user and that our processes log only JSON lines, then stops the
stack and reports how long each container took to stop. Needs a Docker engine that
has (or can pull) the base images. Runs as its own compose project with its own
secret, so a stack the user runs from this directory is left alone.

Engines differ in two ways this handles: ``docker compose`` v2 runs the project's
file as it is, ``docker-compose`` v1 gets a derived copy without the top-level
``name:`` it rejects; an engine without a bridge network (containers on the host's
network) gets a derived copy on host networking, each service on a free loopback port.
"""

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "gophermartcheck"
IMAGE = "gophermart:local"
APP_SERVICES = ("api", "worker", "accrual")
SCALED_WORKERS = 4


class CheckFailed(Exception):
    """A step of the check did not hold; the message says which and why."""


@dataclass(frozen=True)
class Engine:
    compose: tuple[str, ...]  # ("docker", "compose") or ("docker-compose",)
    compose_version: str
    bridge: bool  # False: no bridge network, containers share the host's network

    @property
    def v1(self) -> bool:
        return self.compose == ("docker-compose",)


@dataclass(frozen=True)
class HostPorts:
    """Loopback ports for host networking, where every service shares one namespace."""

    postgres: int
    api: int
    accrual: int


@dataclass
class Report:
    engine: dict[str, Any] = field(default_factory=dict)
    image: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    ready_after: dict[str, float] = field(default_factory=dict)
    flow: dict[str, Any] = field(default_factory=dict)
    work_per_worker: dict[str, int] = field(default_factory=dict)
    users: dict[str, list[int]] = field(default_factory=dict)
    processes: dict[str, int] = field(default_factory=dict)
    log_lines: dict[str, int] = field(default_factory=dict)
    stop_seconds: dict[str, float] = field(default_factory=dict)
    exit_codes: dict[str, int] = field(default_factory=dict)


def run(
    args: Sequence[str], *, input_text: str | None = None, check: bool = True, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        list(args), input=input_text, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise CheckFailed(
            f"{' '.join(args)} exited {result.returncode}:\n"
            f"{result.stderr.strip() or result.stdout.strip()}"
        )
    return result


def detect_engine() -> Engine:
    if shutil.which("docker") is None:
        raise CheckFailed("no docker CLI: needs a Docker engine")
    run(["docker", "version", "--format", "{{.Server.Version}}"])
    v2 = run(["docker", "compose", "version", "--short"], check=False)
    if v2.returncode == 0:
        compose: tuple[str, ...] = ("docker", "compose")
        version = v2.stdout.strip()
    elif shutil.which("docker-compose"):
        compose = ("docker-compose",)
        version = run(["docker-compose", "version", "--short"]).stdout.strip()
    else:
        raise CheckFailed("neither `docker compose` (v2) nor `docker-compose` (v1) is installed")
    bridge = run(["docker", "network", "inspect", "bridge"], check=False).returncode == 0
    return Engine(compose, version, bridge)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def derive(
    compose: dict[str, Any], *, v1: bool, host: HostPorts | None, context: Path
) -> dict[str, Any]:
    """The compose file as this engine can run it; the project's file stays as users run it.

    v1: without the top-level ``name:`` (the project name is given with ``-p``).
    host: every service on the host's network, listening on loopback only, on the
    given ports; the workers' ops port is off (replicas would clash on it), so their
    health check is too, and their readiness is read from their logs instead.
    """
    derived: dict[str, Any] = json.loads(json.dumps(compose))  # a deep copy
    if v1:
        derived.pop("name", None)
    for spec in derived["services"].values():
        if "build" in spec:  # the derived file lives elsewhere: an absolute context
            spec["build"] = {"context": str(context)}
    if host is None:
        return derived
    services = derived["services"]
    # Addresses as the services know each other, and as they listen, on host networking.
    rename = {
        "@postgres:5432/": f"@127.0.0.1:{host.postgres}/",
        "http://accrual:8081": f"http://127.0.0.1:{host.accrual}",
    }
    own = {"api": ("8080", host.api), "accrual": ("8081", host.accrual)}
    for name, spec in services.items():
        spec["network_mode"] = "host"
        spec.pop("ports", None)
        spec.pop("expose", None)
        env = spec.get("environment", {})
        for key, value in list(env.items()):
            for old, new in rename.items():
                value = str(value).replace(old, new)
            env[key] = value
        if name in own:
            old_port, new_port = own[name]
            env["RUN_ADDRESS"] = f"127.0.0.1:{new_port}"
            spec["healthcheck"]["test"] = [
                part.replace(f"127.0.0.1:{old_port}/", f"127.0.0.1:{new_port}/")
                for part in spec["healthcheck"]["test"]
            ]
    postgres = services["postgres"]
    postgres["environment"]["PGPORT"] = str(host.postgres)  # server, initdb and pg_isready
    postgres["command"] = ["postgres", "-c", "listen_addresses=127.0.0.1"]
    worker = services["worker"]
    worker["environment"].pop("WORKER_HEALTH_ADDRESS", None)
    worker["healthcheck"] = {"disable": True}
    if "build" in services["api"]:
        services["api"]["build"]["network"] = "host"  # the build reaches the index
    return derived


class Stack:
    """The check's compose project: its own name, env file and (maybe derived) file."""

    def __init__(self, engine: Engine, workdir: Path) -> None:
        self.engine = engine
        self.env_file = workdir / "check.env"
        run([str(ROOT / "deploy" / "env-init.sh"), str(self.env_file)])
        compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
        self.host = None if engine.bridge else HostPorts(free_port(), free_port(), free_port())
        if engine.v1 or self.host is not None:
            self.file = workdir / "docker-compose.yml"
            self.file.write_text(
                yaml.safe_dump(
                    derive(compose, v1=engine.v1, host=self.host, context=ROOT), sort_keys=False
                )
            )
        else:
            self.file = ROOT / "docker-compose.yml"
        self.ready_after: dict[str, float] = {}

    def compose(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return run(
            [
                *self.engine.compose,
                "--env-file",
                str(self.env_file),
                "-p",
                PROJECT,
                "-f",
                str(self.file),
                *args,
            ],
            timeout=timeout,
        )

    def containers(self) -> dict[str, str]:
        """container name -> service, for every container of the project."""
        listed = run(
            [
                "docker",
                "ps",
                "-a",
                "--filter",
                f"label=com.docker.compose.project={PROJECT}",
                "--format",
                '{{.Names}} {{.Label "com.docker.compose.service"}}',
            ]
        )
        return dict(line.split() for line in listed.stdout.splitlines() if line.strip())

    def of(self, service: str) -> list[str]:
        return sorted(name for name, svc in self.containers().items() if svc == service)

    def state(self, container: str) -> tuple[str, str]:
        out = run(
            [
                "docker",
                "inspect",
                "-f",
                "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}",
                container,
            ]
        ).stdout.split()
        return out[0], (out[1] if len(out) > 1 else "")

    def startup_seconds(self, container: str) -> float:
        """From the container's start to its first passing health check (for a worker
        without one: to its "worker started" line), by the engine's own clock."""
        state = json.loads(run(["docker", "inspect", "-f", "{{json .State}}", container]).stdout)
        started = _instant(state["StartedAt"])
        passed = [
            _instant(probe["End"])
            for probe in (state.get("Health") or {}).get("Log", [])
            if probe["ExitCode"] == 0
        ]
        if not passed:  # no health check: the worker's own line says when it began
            passed = [
                _instant(json.loads(line)["timestamp"])
                for line in self.logs(container)
                if '"worker started"' in line
            ]
        return round((min(passed) - started).total_seconds(), 1)

    def logs(self, container: str, since: str | None = None) -> list[str]:
        args = ["docker", "logs", *(["--since", since] if since else []), container]
        result = run(args)
        return [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]

    def ready(self, container: str, service: str) -> bool:
        """Running and healthy; a worker without a health check: running and started."""
        status, health = self.state(container)
        if status in ("exited", "dead"):
            tail = "\n".join(self.logs(container)[-15:])
            raise CheckFailed(f"{container} {status}:\n{tail}")
        if status != "running":
            return False
        if health:
            return health == "healthy"
        return service != "worker" or any(
            '"worker started"' in line for line in self.logs(container)
        )

    def in_api(self, *args: str, timeout: float = 180) -> dict[str, Any]:
        """Run deploy/customer_flow.py inside the API container; its JSON answer."""
        [api] = self.of("api")
        result = run(
            ["docker", "exec", "-i", api, "python", "-", *args],
            input_text=(ROOT / "deploy" / "customer_flow.py").read_text(),
            timeout=timeout,
        )
        answer: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
        return answer

    def wait_ready(self, workers: int, timeout: float = 180) -> None:
        """Until every service is healthy (workers: running and started)."""
        started = time.monotonic()
        while True:
            pending = []
            for name, service in self.containers().items():
                if not self.ready(name, service):
                    pending.append(name)
                elif name not in self.ready_after:
                    # Now, while its first passing check is among the five the engine keeps.
                    self.ready_after[name] = self.startup_seconds(name)
            if not pending and len(self.of("worker")) == workers:
                return
            if time.monotonic() - started > timeout:
                tails = "\n".join(
                    f"--- {name}: {self.state(name)}\n" + "\n".join(self.logs(name)[-10:])
                    for name in pending
                )
                raise CheckFailed(f"not ready after {timeout:.0f} s: {pending}\n{tails}")
            time.sleep(0.5)


def _instant(text: str) -> datetime:
    """An RFC 3339 time from the engine (nanoseconds) or our logs."""
    return datetime.fromisoformat(re.sub(r"(\.\d{6})\d*", r"\1", text).replace("Z", "+00:00"))


def check_image(report: Report) -> None:
    size = int(run(["docker", "image", "inspect", "-f", "{{.Size}}", IMAGE]).stdout)
    probe = run(
        [
            "docker",
            "run",
            "--rm",
            "--network",
            "none",
            IMAGE,
            "python",
            "-c",
            "import importlib.util as u, os, sys; "
            "print(os.getuid(), [m for m in ('pip', 'setuptools', 'wheel') "
            "if u.find_spec(m)], sys.prefix)",
        ]
    ).stdout.split(maxsplit=1)
    venv_mb = run(
        ["docker", "run", "--rm", "--network", "none", IMAGE, "du", "-sm", "/opt/venv"]
    ).stdout.split()[0]
    uid, rest = int(probe[0]), probe[1]
    report.image = {
        "size_mb": round(size / 1e6, 1),
        "venv_mb": int(venv_mb),
        "uid": uid,
        "build_tools_in_venv": rest.split("]")[0] + "]",
    }
    if uid == 0:
        raise CheckFailed("the image runs as root")
    if not rest.startswith("[]"):
        raise CheckFailed(f"the runtime venv still holds {rest}")


def check_users(stack: Stack, report: Report) -> None:
    """No process of any container is root; ours run on a read-only root filesystem."""
    for name, service in stack.containers().items():
        top = run(["docker", "top", name, "-eo", "uid,pid,comm"]).stdout.splitlines()[1:]
        uids = sorted({int(line.split()[0]) for line in top if line.strip()})
        report.users[name] = uids
        report.processes[name] = sum(1 for line in top if line.strip())
        if not uids or 0 in uids:
            raise CheckFailed(f"{name} runs a process as root: {top}")
        read_only = (
            run(["docker", "inspect", "-f", "{{.HostConfig.ReadonlyRootfs}}", name]).stdout.strip()
            == "true"
        )
        if service in APP_SERVICES and not read_only:
            raise CheckFailed(f"{name} runs with a writable root filesystem")


def check_json_logs(stack: Stack, report: Report) -> None:
    for name, service in stack.containers().items():
        if service not in APP_SERVICES:
            continue
        lines = stack.logs(name)
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                raise CheckFailed(f"{name} logged a line that is not JSON: {line[:300]}") from None
            if not (isinstance(entry, dict) and {"timestamp", "level", "event"} <= entry.keys()):
                raise CheckFailed(f"{name} logged JSON without the stable keys: {line[:300]}")
            if "Decimal(" in line:
                raise CheckFailed(f"{name} logged money as Python text: {line[:300]}")
        report.log_lines[name] = len(lines)


def work_done(stack: Stack, since: str) -> dict[str, int]:
    """Order state changes each worker wrote since ``since``, read from its JSON log."""
    counts = {}
    for name in stack.of("worker"):
        changes = [
            json.loads(line) for line in stack.logs(name, since) if '"order status changed"' in line
        ]
        for change in changes:
            if change.get("accrual") is not None and not isinstance(change["accrual"], int | float):
                raise CheckFailed(f"{name} logged accrual as {change['accrual']!r}")
        counts[name] = len(changes)
    return counts


def stop_all(stack: Stack, report: Report) -> None:
    """Stop each container on its own, API and workers first, and time it."""
    order = {"api": 0, "worker": 1, "accrual": 2, "postgres": 3}
    for name, _ in sorted(
        stack.containers().items(), key=lambda item: (order.get(item[1], 9), item[0])
    ):
        started = time.monotonic()
        run(["docker", "stop", "-t", "15", name], timeout=60)
        report.stop_seconds[name] = round(time.monotonic() - started, 2)
        report.exit_codes[name] = int(
            run(["docker", "inspect", "-f", "{{.State.ExitCode}}", name]).stdout
        )


def check(engine: Engine, workdir: Path, report: Report, *, build: bool) -> None:
    stack = Stack(engine, workdir)
    report.engine = {
        "compose": " ".join(engine.compose),
        "version": engine.compose_version,
        "network": "bridge" if engine.bridge else "host",
        "file": "docker-compose.yml" if stack.file.parent == ROOT else "derived copy",
    }
    try:
        if build:
            started = time.monotonic()
            stack.compose("build")
            report.timings["image build"] = round(time.monotonic() - started, 1)
        check_image(report)

        started = time.monotonic()
        stack.compose("up", "-d", "--no-build")
        workers = len(stack.of("worker"))
        stack.wait_ready(workers)
        report.timings["up until every service is ready"] = round(time.monotonic() - started, 1)
        report.flow = stack.in_api("flow")

        [api_before] = stack.of("api")
        api_id = run(["docker", "inspect", "-f", "{{.Id}}", api_before]).stdout.strip()
        started = time.monotonic()
        stack.compose("up", "-d", "--no-build", "--scale", f"worker={SCALED_WORKERS}")
        stack.wait_ready(SCALED_WORKERS)
        report.ready_after = stack.ready_after
        report.timings[f"scale to {SCALED_WORKERS} workers until ready"] = round(
            time.monotonic() - started, 1
        )
        [api_after] = stack.of("api")
        if run(["docker", "inspect", "-f", "{{.Id}}", api_after]).stdout.strip() != api_id:
            raise CheckFailed("scaling recreated the API container")
        seen = stack.in_api("balance", report.flow["token"])
        if seen["status"] != 200 or seen["balance"] != report.flow["balance"]:
            raise CheckFailed(f"the first login did not survive `up --scale`: {seen}")

        # Enough orders, in rounds, that every worker gets some: each order is asked
        # about several times (REGISTERED, PROCESSING, PROCESSED), by whoever claims it.
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 1))
        for _ in range(3):
            stack.in_api("load", "60")
            report.work_per_worker = work_done(stack, since)
            if all(report.work_per_worker.values()):
                break
        if len(report.work_per_worker) != SCALED_WORKERS or not all(
            report.work_per_worker.values()
        ):
            raise CheckFailed(f"not every worker took work: {report.work_per_worker}")

        check_users(stack, report)
        check_json_logs(stack, report)
        stop_all(stack, report)
        unclean = {name: code for name, code in report.exit_codes.items() if code != 0}
        if unclean:
            raise CheckFailed(f"containers did not exit cleanly on SIGTERM: {unclean}")
    finally:
        stack.compose("down", "-v", "--remove-orphans", timeout=120)


def print_report(report: Report, out: Any) -> None:
    engine = report.engine
    print(
        f"\nengine: {engine['compose']} {engine['version']}, {engine['network']} "
        f"networking, {engine['file']}",
        file=out,
    )
    image = report.image
    print(
        f"image {IMAGE}: {image['size_mb']} MB (venv {image['venv_mb']} MB), "
        f"uid {image['uid']}, pip/setuptools in the venv: {image['build_tools_in_venv']}",
        file=out,
    )
    for what, seconds in report.timings.items():
        print(f"{what}: {seconds} s", file=out)
    print(
        "container start to its first passing health check (run every 2 s for "
        "PostgreSQL, 5 s for ours, so rounded up to that): "
        + ", ".join(f"{n}={t} s" for n, t in report.ready_after.items()),
        file=out,
    )
    flow = report.flow
    print(
        f"customer flow: order {flow['order']} PROCESSED with {flow['accrual']} points, "
        f"balance {flow['balance']} after a withdrawal, {flow['seconds']} s",
        file=out,
    )
    print(
        "order state changes per worker: "
        + ", ".join(f"{n}={c}" for n, c in report.work_per_worker.items()),
        file=out,
    )
    print(
        "processes (uids): "
        + ", ".join(f"{n}={report.processes[n]} {u}" for n, u in report.users.items()),
        file=out,
    )
    print("JSON log lines: " + ", ".join(f"{n}={c}" for n, c in report.log_lines.items()), file=out)
    print("stop (docker stop, SIGTERM then 15 s grace):", file=out)
    for name, seconds in report.stop_seconds.items():
        print(f"  {name:32} {seconds:5.2f} s  exit {report.exit_codes[name]}", file=out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--no-build", action="store_true", help=f"use the {IMAGE} image already built"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    args = parser.parse_args(argv)
    report = Report()
    try:
        engine = detect_engine()
        with tempfile.TemporaryDirectory(prefix="compose-check-") as workdir:
            check(engine, Path(workdir), report, build=not args.no_build)
    except (CheckFailed, subprocess.TimeoutExpired) as error:
        print(f"compose-check FAILED: {error}", file=sys.stderr)
        return 1
    print_report(report, sys.stdout)
    if args.json:
        Path(args.json).write_text(json.dumps(report.__dict__, indent=2) + "\n")
    print("compose-check passed")
    return 0


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
