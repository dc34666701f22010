"""Child processes of the benchmark: start, wait for the port, read peak RSS, stop."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process {process.args!r} exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s")


def peak_rss_mib(pid: int) -> float:
    """VmHWM (peak resident set) of a live process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


class Proc:
    """One long-running child (``python -m <module>`` or any command), logging to a file."""

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        log_dir: Path,
        env: dict[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        self.name = name
        self.args = list(args)
        self.env = {**os.environ, **(env or {})}
        self.port = port
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def python(
        cls,
        name: str,
        module: str,
        log_dir: Path,
        env: dict[str, str] | None = None,
        args: Sequence[str] = (),
        port: int | None = None,
    ) -> "Proc":
        return cls(name, [sys.executable, "-m", module, *args], log_dir, env, port)

    def start(self) -> "Proc":
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.args, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        if self.port is not None:
            wait_for_port(self.port, self.process)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def peak_rss_mib(self) -> float:
        """The largest peak among this process and its children (the API's processes
        run under a supervisor)."""
        children = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        pids = (
            [self.pid, *(int(p) for p in children.read_text().split())]
            if children.exists()
            else [self.pid]
        )
        return max(peak_rss_mib(pid) for pid in pids)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (a graceful stop), then SIGKILL if it lingers; safe to call twice."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
