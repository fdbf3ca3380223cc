"""Where the daemon's socket is, and what a failed connect to it means."""

from __future__ import annotations

import errno
from pathlib import Path

from ringd.client.errors import ClientError, DaemonNotRunning
from ringd.config import default_socket_path


def resolve_socket(path: str | Path | None) -> Path:
    """``None`` → the default daemon's socket."""
    return Path(path) if path else default_socket_path()


def connect_error(sock_path: Path, exc: OSError) -> ClientError:
    """The ClientError for a failed connect to ``sock_path``."""
    if isinstance(exc, FileNotFoundError):
        return DaemonNotRunning(sock_path, "no such socket")
    if isinstance(exc, ConnectionRefusedError):
        return DaemonNotRunning(sock_path, "connection refused")
    if isinstance(exc, PermissionError):
        return ClientError(f"permission denied on control socket {sock_path}")
    if exc.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTSOCK):
        return DaemonNotRunning(sock_path, exc.strerror or "")
    return ClientError(f"cannot connect to {sock_path}: {exc.strerror or exc}")
