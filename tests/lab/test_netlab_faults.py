"""The lab's fault schedule (scripts/netlab.py) as plain functions: no root, no network."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _netlab():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("netlab", ROOT / "scripts" / "netlab.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("netlab", module)
    spec.loader.exec_module(module)
    return module


def test_the_token_hop_cut_drops_a_member_to_the_next_in_ring_order() -> None:
    netlab = _netlab()
    for nodes in (3, 5, 12):
        ring = sorted(f"n{k + 1}" for k in range(nodes))  # ringd's ring: names in order
        cut_at = set()
        for seed in range(40):
            faults = netlab.schedule(["asymmetric-token-hop"], random.Random(seed), nodes, 150.0,
                                     5.0, 0.0, 1, 140.0)
            assert len(faults) == 1 and (faults[0].start, faults[0].end) == (5.0, 145.0)
            [(src, dst)] = faults[0].cuts  # one direction only
            a, b = f"n{src + 1}", f"n{dst + 1}"
            assert ring[(ring.index(a) + 1) % nodes] == b, (nodes, a, b)
            cut_at.add(a)
        assert len(cut_at) > 1  # the seed picks where
    # The plain asymmetric cut is one direction of one link, anywhere.
    [(src, dst)] = netlab.schedule(["asymmetric"], random.Random(1), 5, 150.0, 5.0, 0.0, 1,
                                   140.0)[0].cuts
    assert src != dst
