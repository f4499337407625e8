"""Full node-to-node mesh: every node learns every other block with the right next hop (proto bird),
pods reach each other, and reloads keep sessions up."""

from __future__ import annotations

import os

import pytest
from bgplab import POD_PORT, BgpLab, tcp_from, wait_tcp

from podnet.dataplane.bird import BirdError, BirdManager
from podnet.lab.probe import probe

pytestmark = pytest.mark.root


def test_full_mesh_routes_and_traffic(make_bgp_lab) -> None:
    lab: BgpLab = make_bgp_lab(nodes=3)
    assert set(lab.start_birds(lab.bgp_nodes()).values()) == {"started"}
    lab.wait_established()
    for node in lab.node_names:
        assert sorted(lab.peer_states(node)) == sorted(
            f"Mesh_{lab.ip(o).replace('.', '_')}" for o in lab.node_names if o != node
        )
        # every other block, via its node, metric 32; never our own blackhole (the agent's)
        lab.wait_routes(node, lab.expected_routes(node))
    for src in lab.node_names:
        for dst in lab.node_names:
            if src == dst:
                continue
            result = probe(lab.netns(src), lab.pod_ip(dst), POD_PORT, expect=f"pod-{lab.index(dst)}")
            assert result.ok, (src, dst, result)
            # from the pod address: the answer travels back over the peer's BGP route
            assert tcp_from(lab.netns(src), lab.pod_ip(src), lab.pod_ip(dst)) == f"pod-{lab.index(dst)}"


def test_reload_only_on_change_keeps_sessions(make_bgp_lab) -> None:
    lab: BgpLab = make_bgp_lab(nodes=3)
    nodes = lab.bgp_nodes()
    lab.start_birds(nodes)
    lab.wait_established()
    n1 = lab.node_names[0]
    since = {
        n: {p["name"]: p["since"] for p in lab.bird(n).protocols() if p["proto"] == "BGP"}
        for n in lab.node_names
    }

    # same text: nothing happens
    assert set(lab.start_birds(nodes).values()) == {"unchanged"}

    # node-1 claims a second block: its filters and static protocol change, nothing else
    extra = "10.244.1.64/26"
    blocks = lab.blocks({n1: [extra]})
    assert lab.start_birds(nodes, blocks=blocks) == {
        n1: "reconfigured",
        **{n: "unchanged" for n in lab.node_names[1:]},
    }
    for node in lab.node_names[1:]:
        lab.wait_routes(node, lab.expected_routes(node, blocks))
    wait_tcp(lab.netns(lab.node_names[1]), lab.pod_ip(lab.node_names[1]), lab.pod_ip(n1), "pod-1")
    after = {
        n: {p["name"]: p["since"] for p in lab.bird(n).protocols() if p["proto"] == "BGP"}
        for n in lab.node_names
    }
    assert after == since, "a reload restarted a session"
    lab.wait_established()

    # a config BIRD rejects: an error, the running config and BIRD stay
    before = lab.bird(n1).current_config()
    with pytest.raises(BirdError, match="rejected"):
        lab.bird(n1).apply(before.replace("protocol device {", "protocol device { bogus_option;"))
    assert lab.bird(n1).current_config() == before and lab.bird(n1).running()

    # a BIRD that is not running yet: "bird -p" refuses the text, nothing is started or kept
    fresh = BirdManager(os.path.join(lab.names.state_dir, "fresh"), lab.netns(n1))
    with pytest.raises(BirdError, match="invalid BIRD configuration"):
        fresh.apply("router id 1.2.3.4;\nprotocol bogus {}\n")
    assert fresh.current_config() is None and not fresh.process_alive()

    # the block goes away again: withdrawn everywhere
    lab.start_birds(nodes)
    for node in lab.node_names[1:]:
        lab.wait_routes(node, lab.expected_routes(node))


def test_node_removed_disappears_from_peers(make_bgp_lab) -> None:
    lab: BgpLab = make_bgp_lab(nodes=3)
    nodes = lab.bgp_nodes()
    lab.start_birds(nodes)
    lab.wait_established()
    gone = lab.node_names[2]
    rest = [n for n in nodes if n.name != gone]
    blocks = [b for b in lab.blocks() if b.node != gone]
    lab.bird(gone).stop()
    assert lab.start_birds(rest, blocks=blocks) == {n.name: "reconfigured" for n in rest}
    for n in rest:
        assert f"Mesh_{lab.ip(gone).replace('.', '_')}" not in lab.peer_states(n.name)
        lab.wait_routes(n.name, lab.expected_routes(n.name, blocks), timeout=5)
