"""Small integers a daemon keeps across restarts in its state directory (the gossip
incarnation, the highest Totem ring seq): one number per file, replaced atomically."""

from __future__ import annotations

import logging
import os
from pathlib import Path


def read_counter(path: Path, log: logging.Logger) -> int | None:
    """The number stored at ``path``, or None if there is none (first start) or it is unreadable."""
    try:
        return int(path.read_text().strip())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        # Written atomically, so this is operator damage; the caller falls back to a safe value.
        log.warning("ignoring unreadable %s: %s", path, exc)
        return None


def write_counter(path: Path, value: int) -> None:
    """Persist durably: write and fsync a temporary file, then rename it over the old one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(f"{value}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
