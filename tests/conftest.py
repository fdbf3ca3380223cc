"""Shared fixtures. ``daemons``: a registry of real daemon processes for one test, always
killed by PID at teardown (also when the test fails)."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/helpers.py importable as `helpers`

from helpers import ProcessRegistry  # noqa: E402


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short temporary directory: unix socket paths must stay under 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="rd-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def daemons(short_tmp: Path, request: pytest.FixtureRequest) -> Iterator[ProcessRegistry]:
    registry = ProcessRegistry(short_tmp)
    try:
        yield registry
    finally:
        registry.cleanup()
        failed = getattr(request.node, "rep_call", None)
        if failed is not None and failed.failed:
            for d in registry.daemons:  # the daemons' logs explain most failures
                sys.stderr.write(f"\n----- {d.name} log ({d.log_path}) -----\n{d.log()}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
