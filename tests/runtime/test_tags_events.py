"""Tags and user events through the CLI, disseminated by gossip between real daemons."""

from __future__ import annotations

import json

from helpers import ProcessRegistry, load_json, wait_until


def test_tags_and_events_reach_every_member(daemons: ProcessRegistry) -> None:
    nodes = daemons.start_cluster(3)
    wait_until(lambda: all(len([m for m in n.members().values() if m["state"] == "alive"]) == 3
                           for n in nodes), 20, "3 nodes converge")
    src = nodes[0]

    out = daemons.run_cli("tags", "role=db", "zone=a", "--socket", str(src.socket))
    assert out.returncode == 0, out.stderr
    wait_until(lambda: all(n.members()[src.name]["tags"] == {"role": "db", "zone": "a"} for n in nodes),
               10, "new tags seen by every member")

    out = daemons.run_cli("event", "deploy", "v1.2", "--socket", str(src.socket))
    assert out.returncode == 0, out.stderr

    def got_event(n: object) -> bool:
        res = daemons.run_cli("events", "--json", "--socket", str(n.socket))  # type: ignore[attr-defined]
        return any(e["name"] == "deploy" and e["data"] == "v1.2" and e["origin"] == src.name
                   for e in load_json(res.stdout))

    wait_until(lambda: all(got_event(n) for n in nodes), 10, "event received by every member")
    # Delivered once per member, not once per gossip copy.
    res = daemons.run_cli("events", "--json", "--socket", str(nodes[2].socket))
    assert sum(e["name"] == "deploy" for e in json.loads(res.stdout)) == 1


def test_bad_tags_and_events_get_one_line_errors(daemons: ProcessRegistry) -> None:
    (node,) = daemons.start_cluster(1)
    out = daemons.run_cli("tags", "novalue", "--socket", str(node.socket))
    assert out.returncode != 0 and out.stderr.count("\n") == 1 and "KEY=VALUE" in out.stderr
    out = daemons.run_cli("tags", "k=" + "v" * 600, "--socket", str(node.socket))
    assert out.returncode != 0 and "exceeds gossip.tags_bytes_max" in out.stderr
    out = daemons.run_cli("event", "big", "x" * 600, "--socket", str(node.socket))
    assert out.returncode != 0 and "exceed 512 bytes" in out.stderr
    assert node.running()
    assert node.status()["control"]["errors"]["bad_request"] == 2
