"""Restarting BIRD keeps routes: its own kernel routes persist (``persist``), peers keep its block
while it is away (graceful restart), ``bird -R`` defers the kernel sync until the sessions are back,
and the sessions come back Established."""

from __future__ import annotations

import threading
import time

import pytest
from bgplab import BgpLab, tcp_from, wait_tcp

from podnet.dataplane.bird import _cmdline

pytestmark = pytest.mark.root


class RouteSampler(threading.Thread):
    """Samples a node's BIRD routes every 50 ms until stopped; remembers every distinct set seen."""

    def __init__(self, lab: BgpLab, node: str) -> None:
        super().__init__(daemon=True)
        self.lab, self.node = lab, node
        self.samples: list[dict] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.samples.append(self.lab.bird_routes(self.node))
            time.sleep(0.05)

    def stop(self) -> list[dict]:
        self.done.set()
        self.join(5)
        return self.samples


def test_graceful_restart_keeps_routes_and_sessions_return(make_bgp_lab) -> None:
    lab: BgpLab = make_bgp_lab(nodes=3)
    n1, n2, n3 = lab.node_names
    lab.start_birds(lab.bgp_nodes())
    lab.wait_established()
    for node in lab.node_names:
        lab.wait_routes(node, lab.expected_routes(node))
    text = lab.bird(n1).current_config()
    samplers = {n: RouteSampler(lab, n) for n in (n1, n2, n3)}
    for s in samplers.values():
        s.start()

    lab.bird(n1).stop(graceful=True)
    assert not lab.bird(n1).process_alive()
    time.sleep(1.0)  # BIRD is away: nothing may move
    assert lab.bird_routes(n1) == lab.expected_routes(n1)  # persist
    for peer in (n2, n3):
        assert lab.bird_routes(peer) == lab.expected_routes(peer)  # stale, kept by graceful restart
        assert tcp_from(lab.netns(peer), lab.pod_ip(peer), lab.pod_ip(n1)) == "pod-1"

    assert lab.bird(n1).apply(text) == "started"
    assert "-R" in _cmdline(lab.bird(n1).pid)  # its routes were still there: recovery mode
    lab.wait_established()
    time.sleep(1.0)  # past the end of recovery: the kernel sync ran
    samples = {n: s.stop() for n, s in samplers.items()}
    for node, seen in samples.items():
        assert len(seen) > 20
        assert all(routes == lab.expected_routes(node) for routes in seen), (
            f"{node} routes moved during the restart"
        )
    for node in lab.node_names:
        assert lab.bird_routes(node) == lab.expected_routes(node)


def test_plain_stop_keeps_own_routes_and_recovers(make_bgp_lab) -> None:
    lab: BgpLab = make_bgp_lab(nodes=3)
    n1, n2, _ = lab.node_names
    lab.start_birds(lab.bgp_nodes())
    lab.wait_established()
    for node in lab.node_names:
        lab.wait_routes(node, lab.expected_routes(node))
    text = lab.bird(n1).current_config()

    lab.bird(n1).stop()  # "down": peers are told (Cease) and withdraw node-1's block
    assert lab.bird_routes(n1) == lab.expected_routes(n1)  # ours stay (persist)
    lab.wait_routes(n2, {k: v for k, v in lab.expected_routes(n2).items() if k != lab.block(n1)}, timeout=10)

    assert lab.bird(n1).apply(text) == "started"
    lab.wait_established()
    for node in lab.node_names:
        lab.wait_routes(node, lab.expected_routes(node))
    wait_tcp(lab.netns(n2), lab.pod_ip(n2), lab.pod_ip(n1), "pod-1")
