"""The fuzz harness lives in scripts/ (scripts/fuzz.py, scripts/fuzz_targets.py)."""

from __future__ import annotations

import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))
