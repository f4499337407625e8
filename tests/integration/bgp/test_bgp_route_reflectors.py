"""Mesh off, two route reflectors (cluster id 244.0.0.1), two clients: every node still learns every
block, and ``podnet node status`` shows the sessions Established."""

from __future__ import annotations

import pytest
from bgplab import BgpLab, node_status, resource, tcp_from

pytestmark = pytest.mark.root

RR_LABELS = {"route-reflector": "true"}
CLUSTER_ID = "244.0.0.1"


def test_route_reflectors(make_bgp_lab, capsys) -> None:
    lab: BgpLab = make_bgp_lab(nodes=4)
    rr1, rr2, c1, c2 = lab.node_names
    nodes = lab.bgp_nodes(labels={rr1: RR_LABELS, rr2: RR_LABELS}, rr={rr1: CLUSTER_ID, rr2: CLUSTER_ID})
    config = resource("BGPConfiguration", "default", nodeToNodeMeshEnabled=False, listenPort=1179).spec
    peers = [
        resource("BGPPeer", "peer-with-rrs", nodeSelector="all()", peerSelector="route-reflector == 'true'")
    ]
    lab.start_birds(nodes, config, peers)
    lab.wait_established()

    def names(*others: str) -> list[str]:
        return sorted(f"Node_{lab.ip(o).replace('.', '_')}_port_1179" for o in others)

    # reflectors peer with each other and with every client; clients only with the reflectors
    assert sorted(lab.peer_states(rr1)) == names(rr2, c1, c2)
    assert sorted(lab.peer_states(rr2)) == names(rr1, c1, c2)
    assert sorted(lab.peer_states(c1)) == names(rr1, rr2)
    assert sorted(lab.peer_states(c2)) == names(rr1, rr2)
    for node in lab.node_names:
        lab.wait_routes(node, lab.expected_routes(node))  # c1 learns c2's block with c2 as next hop
    for src in lab.node_names:
        for dst in lab.node_names:
            if src != dst:
                assert tcp_from(lab.netns(src), lab.pod_ip(src), lab.pod_ip(dst)) == f"pod-{lab.index(dst)}"

    # the RR side of a client session is an rr client of cluster 244.0.0.1
    text = lab.bird(rr1).current_config()
    assert (
        f"rr client;\n  rr cluster id {CLUSTER_ID};" in text.split(f"Node_{lab.ip(c1).replace('.', '_')}")[1]
    )

    code = node_status(c1, "--lab-prefix", lab.names.prefix)
    out = capsys.readouterr().out
    print(out)
    assert code == 0
    assert out.startswith("Calico process is running.\n\nIPv4 BGP status\n+")
    for rr in (rr1, rr2):
        line = next(ln for ln in out.splitlines() if f"| {lab.ip(rr)}:1179 " in ln)
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[1:3] == ["node specific", "up"] and cells[4] == "Established"
    assert out.endswith("IPv6 BGP status\nNo IPv6 peers found.\n\n")
