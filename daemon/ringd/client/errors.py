"""Errors of the ringd client; ``str()`` of each is one line. No I/O here."""

from __future__ import annotations

from pathlib import Path


class ClientError(Exception):
    """Base of client errors; ``str()`` is one line."""


class DaemonNotRunning(ClientError):
    """Nothing listens on the control socket (missing file or connection refused)."""

    def __init__(self, path: str | Path, detail: str = "") -> None:
        self.path = Path(path)
        more = f" ({detail})" if detail else ""
        super().__init__(f"no ringd daemon is running at {path}{more}; start one with `ringd run`")


class ProtocolError(ClientError):
    """The daemon's answer is not a valid reply frame, or the connection broke mid-reply."""


class RequestFailed(ClientError):
    """The daemon answered ``{"ok": False, "error": ...}``."""


class DaemonTimeout(ClientError):
    """The daemon did not answer in time."""


class TryAgain(RequestFailed):
    """``send(..., wait=False)`` found the daemon's ordered queue full; retry later."""


class ConnectionLost(ClientError):
    """The daemon closed the connection: it exited, or dropped us (e.g. we read too slowly)."""
