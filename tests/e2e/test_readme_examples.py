"""The README's examples work when pasted into a shell, against what ``make run`` starts.

Which commands: every fenced block in README.md whose info string is ``sh example``
(GitHub highlights it as ``sh``; the second word marks it for this test). Other
blocks (``make``, Docker, Kubernetes, the admin tool) are not run here. The blocks run
in README order, one shell session for all, so a variable a command sets (``TOKEN``)
is there for the next ones, as in a terminal.

What is checked, command by command: the exit status is 0; a ``TOKEN=$(…)`` command
leaves a bearer token in the variable; an HTTP status line (``curl -i``) is 2xx, or one
of the statuses a ``#`` comment on the command names ("202, then 200 on repeat"); and a
``# [...]`` / ``# {...}`` comment line right under a command is the answer's body: the
same keys, types and values, but for ``…_at`` times, which only need to be RFC 3339. A
read-only command whose answer does not match yet is run again for a while (the worker
credits an order a moment after its upload, as a person pasting would see).

The system is the ``gophermart`` runner (what ``make run`` starts) with no settings, in
a temporary directory: its own PostgreSQL under ``./.data``, the bundled simulator on
localhost:8081 with its demo rules, the API on localhost:8080. So that those fixed ports
are free on a shared machine, the runner and the shell get a private network
namespace (``unshare --net``) when the suite runs as root; otherwise the README's ports
must be free on the host, or the test is skipped.
"""

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import eventually

# The system's start is waited for up to START_WITHIN, inside the test's own limit,
# so a start that does not come fails with the runner's log rather than a bare timeout.
START_WITHIN = 150.0
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(START_WITHIN + 150)]

README = Path(__file__).resolve().parents[2] / "README.md"
EXAMPLE_BLOCK = re.compile(r"^```sh example\n(.*?)^```", re.MULTILINE | re.DOTALL)
# The ports the README's examples use: the API, the simulator, the local PostgreSQL.
README_PORTS = (8080, 8081, 15432)
GOPHERMART = Path(sys.executable).with_name("gophermart")
COMMAND_TIMEOUT = 60.0  # seconds one command may take before the shell counts as stuck


@dataclass
class Example:
    command: str
    answer: Any = None  # the body the README shows under the command, parsed

    @property
    def read_only(self) -> bool:
        return not re.search(r"\s(-X|-d|--data)\b", self.command)

    @property
    def assigns(self) -> str | None:
        found = re.match(r"([A-Z_]+)=\$\(", self.command)
        return found.group(1) if found else None

    @property
    def statuses(self) -> set[int]:
        """The statuses a ``#`` comment on the command names (none: any 2xx)."""
        comments = [line.split(" # ", 1)[1] for line in self.command.splitlines() if " # " in line]
        return {int(code) for text in comments for code in re.findall(r"\b[1-5]\d\d\b", text)}


def _complete(text: str) -> bool:
    """Whether ``text`` is whole commands (no open quote, ``$(`` or trailing ``\\``)."""
    return subprocess.run(["bash", "-n", "-c", text], capture_output=True).returncode == 0


def readme_examples(readme: str) -> list[Example]:
    examples: list[Example] = []
    pending: list[str] = []
    for block in EXAMPLE_BLOCK.findall(readme):
        for line in block.splitlines():
            if pending:
                pending.append(line)
            elif line.startswith("#"):
                shown = line.removeprefix("#").strip()
                if shown[:1] in ("[", "{") and examples:
                    examples[-1].answer = json.loads(shown, parse_float=Decimal)
                continue
            elif line.strip():
                pending.append(line)
            if pending and not pending[-1].endswith("\\") and _complete("\n".join(pending)):
                examples.append(Example("\n".join(pending)))
                pending = []
        assert not pending, f"an unfinished command in README.md: {pending}"
    return examples


def test_the_readme_marks_its_examples() -> None:
    """The convention holds: the examples are found, each one a whole command."""
    examples = readme_examples(README.read_text())
    commands = [e.command for e in examples]
    assert any("localhost:8081/api/orders" in c for c in commands)  # a purchase first
    assert any(e.assigns == "TOKEN" for e in examples)
    assert sum(e.answer is not None for e in examples) >= 3
    assert all(c.startswith(("curl ", "TOKEN=")) for c in commands), commands


# --- the answers' shapes ----------------------------------------------------------


def _matches(shown: Any, got: Any, key: str = "") -> bool:
    if key.endswith("_at"):
        return isinstance(got, str) and _is_rfc3339(got)
    if isinstance(shown, dict):
        return (
            isinstance(got, dict)
            and shown.keys() == got.keys()
            and all(_matches(shown[k], got[k], k) for k in shown)
        )
    if isinstance(shown, list):
        return (
            isinstance(got, list)
            and len(got) == len(shown)
            and all(_matches(s, g) for s, g in zip(shown, got, strict=True))
        )
    if isinstance(shown, int | Decimal) and not isinstance(shown, bool):
        return isinstance(got, int | Decimal) and not isinstance(got, bool) and got == shown
    return type(got) is type(shown) and got == shown


def _is_rfc3339(text: str) -> bool:
    try:
        return datetime.fromisoformat(text).tzinfo is not None
    except ValueError:
        return False


def _http_answer(output: str) -> tuple[list[int], str]:
    """The statuses of every response ``curl -i`` printed, and the body after the last."""
    statuses = [int(s) for s in re.findall(r"^HTTP/[\d.]+ (\d{3})", output, re.MULTILINE)]
    body = re.split(r"\r?\n\r?\n", output, maxsplit=1)[1] if statuses else output
    return statuses, body


def _problem(example: Example, code: int, output: str, value: str) -> str | None:
    """What is wrong with a command's outcome, or None."""
    if code != 0:
        return f"exit status {code}"
    if example.assigns:
        return None if value.startswith("Bearer ") else f"${example.assigns} is {value!r}"
    statuses, body = _http_answer(output)
    for status in statuses:
        if example.statuses and status not in example.statuses:
            return f"HTTP {status}, not one of {sorted(example.statuses)}"
        if not example.statuses and not 200 <= status < 300:
            return f"HTTP {status}, not 2xx"
    if example.answer is not None:
        try:
            got = json.loads(body, parse_float=Decimal)
        except ValueError:
            return "the answer is not JSON"
        if not _matches(example.answer, got):
            return f"the answer is not shaped like {example.answer}"
    return None


# --- a shell, and the system it talks to -------------------------------------------


class Shell:
    """One bash session (the way commands pasted into a terminal share variables)."""

    MARK = "@@readme-example-done@@"

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def run(self, command: str) -> tuple[int, str]:
        """The exit status and what the command wrote to stdout."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"{command}\nprintf '\\n{self.MARK}%s\\n' \"$?\"\n".encode())
        await self.process.stdin.drain()
        lines: list[str] = []
        while True:
            async with asyncio.timeout(COMMAND_TIMEOUT):
                raw = await self.process.stdout.readline()
            if not raw:
                raise AssertionError(f"the shell ended during: {command}")
            line = raw.decode(errors="replace")
            if line.startswith(self.MARK):
                output = "".join(lines)
                return int(line.removeprefix(self.MARK)), output.removesuffix("\n")
            lines.append(line)

    async def value(self, name: str) -> str:
        _, output = await self.run(f'printf %s "${name}"')
        return output


def _private_network() -> bool:
    """Whether the runner can get a network namespace of its own (root, unshare, ip)."""
    if os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("ip")):
        return False
    probe = subprocess.run(["unshare", "--net", "ip", "link", "set", "lo", "up"], check=False)
    return probe.returncode == 0


def _free_on_host(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def gophermart(home: Path) -> Iterator[tuple[subprocess.Popen[bytes], list[str]]]:
    """``gophermart`` with no settings, from ``home``; the prefix that enters its network."""
    private = _private_network()
    if not private and not all(_free_on_host(p) for p in README_PORTS):
        pytest.skip(f"ports {README_PORTS} are taken and no private network namespace is allowed")
    # Nothing of the suite's own environment: the runner's defaults, as after `make run`.
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "PG_BINDIR", "TMPDIR")}
    env["LANG"] = "C.UTF-8"
    command = [str(GOPHERMART)]
    if private:
        command = ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *command]
    with (home / "gophermart.log").open("ab") as log:
        runner = subprocess.Popen(command, cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT)
    enter = ["nsenter", f"--net=/proc/{runner.pid}/ns/net"] if private else []
    if private:
        _await_own_network(runner)
    try:
        yield runner, enter
    except BaseException:
        runner.kill()  # its children carry a parent-death signal
        runner.wait()
        raise
    # Ctrl-C stops all of it, cleanly, and the cluster stays under ./.data.
    runner.send_signal(signal.SIGINT)
    try:
        code = runner.wait(30)
    except subprocess.TimeoutExpired:
        runner.kill()
        runner.wait()
        raise
    assert code == 0, _tail(home / "gophermart.log")
    assert (home / ".data" / "postgres" / "pgdata" / "PG_VERSION").exists()


def _await_own_network(runner: subprocess.Popen[bytes]) -> None:
    """Wait until the runner is in its own network namespace.

    ``unshare`` enters it only once it runs: a shell that entered the runner's
    namespace before then would be in the host's, where nothing answers on the
    README's ports (a busy machine hit that race now and then).
    """
    host = os.readlink("/proc/self/ns/net")
    for _ in range(500):
        if runner.poll() is not None:
            return  # the caller's wait reports the exit, with the log
        with contextlib.suppress(FileNotFoundError):
            if os.readlink(f"/proc/{runner.pid}/ns/net") != host:
                return
        time.sleep(0.02)
    raise AssertionError("gophermart did not enter its own network namespace")


@pytest.fixture
async def shell(log_dir: Path) -> AsyncIterator[Shell]:
    """A shell beside a running ``gophermart``, once the API and simulator answer."""
    with gophermart(log_dir) as (runner, enter):
        with (log_dir / "shell.stderr").open("ab") as stderr:
            process = await asyncio.create_subprocess_exec(
                *enter,
                "bash",
                "--noprofile",
                "--norc",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                cwd=log_dir,
                env={"PATH": os.environ["PATH"], "LANG": "C.UTF-8"},
            )
        session = Shell(process)

        async def serving() -> bool:
            if runner.poll() is not None:
                raise AssertionError(f"gophermart exited: {_tail(log_dir / 'gophermart.log')}")
            # --max-time: a connection accepted but not yet answered is asked again.
            code, _ = await session.run(
                "curl -sf --max-time 2 -o /dev/null localhost:8080/readyz"
                " && curl -s --max-time 2 -o /dev/null localhost:8081/api/orders/0"
            )
            return code == 0

        try:
            await eventually(
                serving,
                within=START_WITHIN,
                every=0.2,
                what="gophermart serving on localhost:8080 and :8081",
                context=lambda: _tail(log_dir / "gophermart.log"),
            )
            yield session
        finally:
            if process.returncode is None:
                process.kill()
            await process.wait()


def _tail(path: Path, lines: int = 30) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


async def test_every_readme_example_works_when_pasted(shell: Shell, log_dir: Path) -> None:
    for example in readme_examples(README.read_text()):
        outcome: list[str | None] = [None, ""]

        def report(example: Example = example, outcome: list[str | None] = outcome) -> str:
            problem, output = outcome
            return (
                f"README example: {example.command}\n{problem}\n--- its output ---\n{output}\n"
                f"--- the shell's stderr ---\n{_tail(log_dir / 'shell.stderr')}\n"
                f"--- gophermart ---\n{_tail(log_dir / 'gophermart.log')}"
            )

        async def as_shown(example: Example = example, outcome: list[str | None] = outcome) -> bool:
            code, output = await shell.run(example.command)
            value = await shell.value(example.assigns) if example.assigns else ""
            outcome[:] = [_problem(example, code, output, value), output]
            return outcome[0] is None or not example.read_only

        await eventually(as_shown, within=60, every=0.5, what="as shown", context=report)
        assert outcome[0] is None, report()
