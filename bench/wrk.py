"""Run ``wrk`` with one of our Lua scripts and read back its one-line result."""

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

LUA_DIR = Path(__file__).parent / "lua"
_MARK = "WRK_RESULT "


class WrkMissing(RuntimeError):
    pass


def ensure_wrk() -> str:
    """The wrk binary; installed with apt-get when missing and we are root on Debian."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise WrkMissing(
            "wrk is not installed: install it (Debian: apt-get install wrk) "
            "or run the benchmark as root so it can install it"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "wrk"], check=True, env=env, stdout=subprocess.DEVNULL
    )
    found = shutil.which("wrk")
    if not found:
        raise WrkMissing("apt-get install wrk did not provide a wrk binary")
    return found


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    statuses: dict[int, int]
    socket_errors: int
    timeouts: int
    expected: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def unexpected(self) -> dict[int, int]:
        return {code: n for code, n in self.statuses.items() if code != self.expected}

    @property
    def problem(self) -> str | None:
        """Why this figure cannot be trusted, or None: any other status or socket error."""
        issues = self._errors(refused=())
        if self.timeouts:
            issues.append(f"{self.timeouts} timeouts")
        if not self.requests:
            issues.append("no requests")
        return ", ".join(issues) or None

    def problem_besides(self, refused: Collection[int]) -> str | None:
        """The problem of a load meant to be partly turned away with ``refused``
        statuses: any status besides those and the expected one, or socket errors."""
        return ", ".join(self._errors(refused)) or None

    def _errors(self, refused: Collection[int]) -> list[str]:
        issues = [
            f"{n}x{code}" for code, n in sorted(self.unexpected.items()) if code not in refused
        ]
        if self.socket_errors:
            issues.append(f"{self.socket_errors} socket errors")
        return issues


def script(name: str, work_dir: Path) -> Path:
    """Our shared prelude followed by the named script, as one file wrk can load."""
    path = work_dir / f"{name}.lua"
    path.write_text(
        (LUA_DIR / "common.lua").read_text() + "\n" + (LUA_DIR / f"{name}.lua").read_text()
    )
    return path


async def run(
    wrk: str,
    url: str,
    lua: Path,
    *,
    seconds: float,
    connections: int,
    expected: int,
    args: tuple[str, ...] = (),
) -> WrkResult:
    """One wrk thread, ``connections`` keep-alive connections, for ``seconds``."""
    cmd = [
        wrk,
        "-t1",
        f"-c{connections}",
        f"-d{max(round(seconds), 1)}s",
        "--timeout",
        "5s",
        "-s",
        str(lua),
        url,
        "--",
        *args,
    ]
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    text = out.decode(errors="replace")
    line = next((ln for ln in text.splitlines() if ln.startswith(_MARK)), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(
            f"wrk failed ({proc.returncode}): {text[-500:]} {err.decode(errors='replace')[-500:]}"
        )
    data = json.loads(line[len(_MARK) :])
    return WrkResult(
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        statuses={int(code): n for code, n in data["statuses"].items()},
        socket_errors=data["socket_errors"],
        timeouts=data["timeouts"],
        expected=expected,
    )
