"""Real processes for end-to-end tests: start, wait for the port, signal, collect logs."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from shared.localpg import free_port


def wait_for_port(
    port: int,
    timeout: float = 20.0,
    process: subprocess.Popen[bytes] | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s")


class Service:
    """One child process of ours (``python -m <module>``) with its log in a file."""

    def __init__(
        self,
        name: str,
        module: str,
        env: dict[str, str],
        log_dir: Path,
        args: tuple[str, ...] = (),
        port: int | None = None,
        preexec: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.module = module
        self.env = {**os.environ, "LOG_FORMAT": "json", **env}
        self.args = args
        self.port = port
        self.preexec = preexec  # run in the child before exec (e.g. resource limits)
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> "Service":
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", self.module, *self.args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=self.preexec,
        )
        log.close()
        if self.port is not None:
            wait_for_port(self.port, process=self.process)
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, sig: int = signal.SIGINT, timeout: float = 10.0) -> int:
        """Signal and wait; the exit code (raises if it hangs past ``timeout``)."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def service_url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


__all__ = ["Service", "free_port", "service_url", "wait_for_port"]
