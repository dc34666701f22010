"""Secrets kept in files only their owner can read (mode 0600), made once."""

import os
import secrets
from pathlib import Path


class UnsafeFile(RuntimeError):
    """A secret's file that someone else could have written or can read."""


def write_private(path: Path, text: str) -> None:
    """Create ``path`` readable by its owner only; never replaces one that exists
    (nor follows a symlink planted in its place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as stream:
        stream.write(text + "\n")


def read_private(path: Path) -> str:
    """The secret in ``path``, refusing a file of another user or one others can read."""
    info = path.stat()
    if info.st_uid != os.geteuid():
        raise UnsafeFile(
            f"{path} belongs to another user (uid {info.st_uid}); it cannot be trusted"
        )
    if info.st_mode & 0o077:
        raise UnsafeFile(
            f"{path} is readable by others (mode {info.st_mode & 0o777:o}); run: chmod 600 {path}"
        )
    return path.read_text().strip()


def kept_secret(path: Path) -> str:
    """The secret stored at ``path``, generated there on first use."""
    if not path.exists():
        write_private(path, secrets.token_urlsafe(32))
    return read_private(path)
