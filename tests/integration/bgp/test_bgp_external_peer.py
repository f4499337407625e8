"""An external router (GoBGP in its own namespace, AS 64567) peers with every node: it learns every
pod block and programs them; nodes learn its 198.51.100.0/24 and pods reach 198.51.100.1 over it."""

from __future__ import annotations

import os
import shutil
import time

import pytest
from bgplab import POD_PORT, BgpLab, node_status, resource, tcp_from, wait_tcp

from podnet.lab.netns import spawn
from podnet.lab.podserver import podserver_command
from podnet.lab.state import ProcessRecord

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(shutil.which("gobgpd") is None, reason="gobgpd is not installed (Debian gobgpd)"),
]

TOR_AS = 64567
TOR_PREFIX = "198.51.100.0/24"
TOR_HOST = "198.51.100.1"


def test_external_peer(make_bgp_lab, capsys) -> None:
    lab: BgpLab = make_bgp_lab(nodes=3)
    tor_ns, tor_ip = lab.attach_tor()
    server = spawn(
        podserver_command("tor", [f"{POD_PORT}/TCP"], lab.names.prefix),
        netns=tor_ns,
        log=os.path.join(lab.names.log_dir, "tor-server.log"),
        lab_prefix=lab.names.prefix,
    )
    lab.state.record_process(ProcessRecord.of("tor-server", server))
    tor = lab.start_tor(tor_ns, tor_ip, [(lab.ip(n), 64512) for n in lab.node_names])

    peers = [resource("BGPPeer", "tor", peerIP=tor_ip, asNumber=TOR_AS)]
    lab.start_birds(lab.bgp_nodes(), peers=peers)
    lab.wait_established()
    tor.wait_established()

    global_name = f"Global_{tor_ip.replace('.', '_')}"
    for node in lab.node_names:
        assert global_name in lab.peer_states(node)
        # mesh blocks as before, plus the ToR's prefix via the ToR
        want = lab.expected_routes(node) | {TOR_PREFIX: (tor_ip, "unicast", 32)}
        lab.wait_routes(node, want)

    # the ToR learned every block from its owner (nodes announce only their own blocks to an
    # external peer) and its fib-sync put them in its kernel
    want_tor = {lab.block(n): lab.ip(n) for n in lab.node_names}
    deadline = time.monotonic() + 10
    while tor.kernel_routes() != want_tor and time.monotonic() < deadline:
        time.sleep(0.1)
    assert tor.learned_routes() == want_tor
    assert tor.kernel_routes() == want_tor

    # a pod address reaches the ToR's address (node → ToR by BIRD's route, back by the ToR's)
    for node in lab.node_names:
        wait_tcp(lab.netns(node), lab.pod_ip(node), TOR_HOST, "tor")
        assert tcp_from(tor_ns, TOR_HOST, lab.pod_ip(node)) == f"pod-{lab.index(node)}"

    assert node_status(lab.node_names[0], "--lab-prefix", lab.names.prefix) == 0
    out = capsys.readouterr().out
    print(out)
    line = next(ln for ln in out.splitlines() if f"| {tor_ip} " in ln)
    assert [c.strip() for c in line.strip("|").split("|")][1:3] == ["global", "up"]
