"""Trace entries of a run, and their (deferred) formatting for humans."""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from typing import Any

TraceEntry = tuple[float, str, str, Any]  # (time, node or "-", what, object or None)
RECV = "recv"  # trace tag of a received datagram (the object is (sender, msg))


def format_trace(entries: list[TraceEntry]) -> list[str]:
    """Trace entries as lines; formatting is deferred to here because most runs pass."""
    out = []
    for at, node, what, obj in entries:
        if what is RECV:
            line = f"{at:10.6f} {node:>4} recv from {obj[0]} {short_repr(obj[1])}"
        else:
            line = f"{at:10.6f} {node:>4} {what}"
            if obj is not None:
                line += f" {short_repr(obj)}"
        out.append(line)
    return out


def short_repr(obj: Any, limit: int = 400) -> str:
    """A one-line, size-capped description of a trace object."""
    text = obj if isinstance(obj, str) else _brief(obj)
    return text if len(text) <= limit else text[:limit] + "..."


def _brief(obj: Any) -> str:
    """repr() with payload bytes shown as their size: traces are for reading."""
    if isinstance(obj, bytes):
        return f"<{len(obj)} B>"
    if isinstance(obj, (tuple, list)):
        inner = ", ".join(_brief(v) for v in obj[:8]) + (", ..." if len(obj) > 8 else "")
        return f"({inner})" if isinstance(obj, tuple) else f"[{inner}]"
    if is_dataclass(obj) and not isinstance(obj, type):
        if type(obj).__name__ == "RingId":
            return str(obj)
        parts = ", ".join(f"{f.name}={_brief(getattr(obj, f.name))}" for f in fields(obj))
        return f"{type(obj).__name__}({parts})"
    return repr(obj)
