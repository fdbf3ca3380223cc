"""The fuzz harness lives in scripts/ (scripts/fuzz.py, scripts/fuzz_targets.py)."""

from __future__ import annotations

import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))


@pytest.fixture(autouse=True)
def _no_tracing_left_on() -> Iterator[None]:
    """A Checker leaves allocation tracing on between inputs; stop what a test started,
    so the tests after it do not run traced."""
    was_tracing = tracemalloc.is_tracing()
    yield
    if not was_tracing:
        tracemalloc.stop()
