"""The node control plane closed to pods (calc.policy.control_plane): pure, no root."""

from __future__ import annotations

from podnet.calc.policy import ControlPlane, control_plane, datastore_address


def test_ports_on_every_node_address_and_the_datastore():
    cp = control_plane(
        ["10.77.0.12", None, "10.77.0.11", "fd00::1", "10.77.0.11"],
        ["http://10.77.0.2:2379", "10.77.0.3:12379"],
        179,
        9099,
    )
    assert cp.local == (("tcp", 179), ("tcp", 9099))
    assert cp.remote == (
        ("10.77.0.2", "tcp", 2379),
        ("10.77.0.3", "tcp", 12379),
        ("10.77.0.11", "tcp", 179),
        ("10.77.0.11", "tcp", 9099),
        ("10.77.0.12", "tcp", 179),
        ("10.77.0.12", "tcp", 9099),
    )
    assert cp.skipped == ()


def test_bgp_listen_port_and_no_metrics():
    cp = control_plane(["10.0.0.1"], [], bgp_port=1179)
    assert cp == ControlPlane(local=(("tcp", 1179),), remote=(("10.0.0.1", "tcp", 1179),))


def test_datastore_endpoints():
    assert datastore_address("http://10.77.0.2:2379") == ("10.77.0.2", 2379)
    assert datastore_address("https://10.1.2.3") == ("10.1.2.3", 2379)
    assert datastore_address("10.1.2.3:4001") == ("10.1.2.3", 4001)
    assert datastore_address("http://etcd.example:2379") is None  # names are not resolved in calc
    assert datastore_address("http://[fd00::2]:2379") is None  # the set is IPv4
    cp = control_plane([], ["http://etcd.example:2379", "http://127.0.0.1:2379"])
    assert cp.skipped == ("http://etcd.example:2379",)
    assert cp.remote == (("127.0.0.1", "tcp", 2379),)
