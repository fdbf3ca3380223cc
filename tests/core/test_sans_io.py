"""The protocol cores stay sans-IO: no forbidden imports, no use of the global random."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "daemon" / "ringd" / "core"
FORBIDDEN = {"trio", "socket", "time", "cbor2", "prometheus_client", "asyncio", "select", "threading"}
RANDOM_ALLOWED = {"Random"}  # an injected random.Random is fine; random.random() is not


def core_files() -> list[Path]:
    files = sorted(CORE.glob("*.py"))
    assert files, f"no core modules under {CORE}"
    return files


@pytest.mark.parametrize("path", core_files(), ids=lambda p: p.name)
def test_core_module_is_sans_io(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in FORBIDDEN:
                    problems.append(f"line {node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            module = (node.module or "").split(".")[0]
            if module in FORBIDDEN:
                problems.append(f"line {node.lineno}: from {node.module} import ...")
            if module == "random" and any(a.name not in RANDOM_ALLOWED for a in node.names):
                problems.append(f"line {node.lineno}: from random import {[a.name for a in node.names]}")
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "random"
            and node.attr not in RANDOM_ALLOWED
        ):
            problems.append(f"line {node.lineno}: random.{node.attr} (global random)")
    assert not problems, f"{path.name} is not sans-IO: " + "; ".join(problems)
