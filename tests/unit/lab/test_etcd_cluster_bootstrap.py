"""An etcd cluster in the lab: topology, bootstrap strings, leader parsing, the proxy's fail-over
and the member scenarios' verdicts (pure, or loopback only: no root)."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator

import pytest

from podnet.datastore.etcd import MemberStatus, endpoints_from, parse_status
from podnet.errors import DatastoreError, DatastoreUnavailable
from podnet.lab.etcd_chaos import classify_write_error, lost_writes, problems
from podnet.lab.etcd_cluster import leader_name, members_meta, proxy_netns
from podnet.lab.etcd_proxy import failover_order, split_hostport, split_upstreams, start_etcd_proxy
from podnet.lab.naming import LabError, LabNames
from podnet.lab.topology import LabSpec, build_topology, initial_cluster


def test_three_members_each_in_its_own_namespace():
    t = build_topology(LabSpec(etcd_members=3))
    assert [(h.name, h.netns, h.ip, h.kind) for h in t.etcd_members] == [
        ("etcd", "pn-etcd", "10.77.0.2", "etcd"),
        ("etcd-2", "pn-etcd-2", "10.77.0.6", "etcd"),
        ("etcd-3", "pn-etcd-3", "10.77.0.7", "etcd"),
    ]
    assert t.etcd_endpoints == "http://10.77.0.2:2379,http://10.77.0.6:2379,http://10.77.0.7:2379"
    assert t.etcd_initial_cluster == (
        "etcd=http://10.77.0.2:2380,etcd-2=http://10.77.0.6:2380,etcd-3=http://10.77.0.7:2380"
    )
    assert [k for _, k in t.namespaces].count("etcd") == 3  # created, recorded and removed with the fabric
    assert {a.port for h in t.etcd_members for a in h.attachments} == {"etcd", "etcd-2", "etcd-3"}
    assert proxy_netns(t) == "pn-ext"  # not a member's: any member can be cut off
    assert [m["endpoint"] for m in members_meta(t)] == t.etcd_endpoints.split(",")


def test_one_member_is_as_before():
    t = build_topology(LabSpec())
    assert [h.netns for h in t.etcd_members] == ["pn-etcd"]
    assert t.etcd_endpoints == t.etcd_endpoint == "http://10.77.0.2:2379"
    assert proxy_netns(t) == "pn-etcd"


def test_five_members_stay_below_the_nodes_and_prometheus():
    t = build_topology(LabSpec(etcd_members=5, prometheus=True))
    ips = [h.ip for h in t.etcd_members]
    assert ips == ["10.77.0.2", "10.77.0.6", "10.77.0.7", "10.77.0.8", "10.77.0.9"]
    assert len({h.ip for h in t.hosts}) == len(t.hosts)


@pytest.mark.parametrize("count", [0, 2, 4, 7])
def test_member_counts_other_than_1_3_5_are_refused(count):
    with pytest.raises(LabError, match="etcd members must be one of 1, 3, 5"):
        LabSpec(etcd_members=count)


def test_initial_cluster_needs_distinct_names():
    assert initial_cluster([("a", "10.0.0.1")], 2380) == "a=http://10.0.0.1:2380"
    with pytest.raises(LabError, match="distinct"):
        initial_cluster([("a", "10.0.0.1"), ("a", "10.0.0.2")])
    with pytest.raises(LabError):
        initial_cluster([])


def test_member_namespaces_are_etcd_kind():
    names = LabNames("pn-")
    assert names.etcd_member_ns(1) == "pn-etcd" and names.etcd_member_ns(3) == "pn-etcd-3"
    assert names.netns_kind("pn-etcd-3") == "etcd"
    assert names.netns_kind("pn-etcd") == "etcd"
    assert names.netns_kind("pn-etcdx") == "other"
    assert names.netns_kind("pn-etcd-x") == "other"


def test_endpoints_lists_are_flattened_and_deduplicated():
    assert endpoints_from(["http://a:1,http://b:2", "c:3", "http://a:1"]) == [
        "http://a:1",
        "http://b:2",
        "http://c:3",
    ]
    with pytest.raises(DatastoreError):
        endpoints_from(["https://a:1"])


def test_parse_status_turns_decimal_ids_into_hex_and_knows_the_leader():
    member = str(0xD5E204D3BD895A11)  # the gateway's decimal form of what etcdctl shows
    doc = {
        "header": {"cluster_id": "1", "member_id": member, "revision": "42"},
        "version": "3.4.23",
        "leader": member,
        "raftTerm": "3",
    }
    s = parse_status(doc, "http://x:2379")
    assert (s.member_id, s.leader, s.is_leader, s.revision, s.raft_term) == (
        "d5e204d3bd895a11",
        "d5e204d3bd895a11",
        True,
        42,
        3,
    )
    follower = parse_status({**doc, "header": {**doc["header"], "member_id": "1"}})
    assert not follower.is_leader and follower.member_id == "1"
    lost = parse_status({**doc, "leader": "0"})
    assert lost.leader == "" and not lost.is_leader
    with pytest.raises(DatastoreError, match="member id"):
        parse_status({"header": {}})


def _status(member: str, leader: str) -> MemberStatus:
    return MemberStatus("http://x", member, leader, 2, 1, "3.4")


def test_leader_name_needs_agreement():
    ok = {"etcd": _status("a", "b"), "etcd-2": _status("b", "b"), "etcd-3": _status("c", "b")}
    assert leader_name(ok) == "etcd-2"
    split = {**ok, "etcd-3": _status("c", "c")}
    assert leader_name(split) is None
    assert leader_name({"etcd": _status("a", "")}) is None  # no leader known
    assert leader_name({"etcd": _status("a", "z")}) is None  # a leader not among those asked


def test_failover_order_starts_with_the_listeners_own_member():
    ups = split_upstreams("10.0.0.2:2379, 10.0.0.6:2379,10.0.0.7:2379")
    assert failover_order(ups, 1) == [("10.0.0.6", 2379), ("10.0.0.7", 2379), ("10.0.0.2", 2379)]
    with pytest.raises(ValueError):
        split_upstreams(" , ")


class _Echo(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    server = _Echo(("127.0.0.1", 0), _EchoHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address
    server.shutdown()
    server.server_close()


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_proxy_listener_fails_over_to_the_next_member(echo):
    dead = _dead_port()
    upstream = f"127.0.0.1:{dead},{echo[0]}:{echo[1]}"
    spawned, endpoints = start_etcd_proxy(upstream=upstream, netns=None, lab_prefix="pnt0000-", listeners=2)
    try:
        urls = endpoints.split(",")
        assert len(urls) == 2 and len(set(urls)) == 2
        for url in urls:  # listener 1 prefers the dead member: it must reach the live one anyway
            with socket.create_connection(split_hostport(url.removeprefix("http://")), timeout=5) as s:
                s.sendall(b"hello")
                assert s.recv(5) == b"hello"
    finally:
        spawned.stop()


def test_lost_writes_and_their_classification():
    assert lost_writes(["k1", "k2", "k3"], {"k1", "k3", "other"}) == ["k2"]
    assert classify_write_error(
        DatastoreUnavailable("etcd at x did not answer a write; its outcome is unknown")
    ) == ("unknown")
    assert classify_write_error(DatastoreUnavailable("etcd unavailable at a, b")) == "refused"


def _report(**changes) -> dict:
    report = {
        "scenario": "etcd-member-partition",
        "member": "etcd-2",
        "leader_during_fault": "etcd",
        "agent_members_before": ["etcd-2"],
        "agent_members_during_fault": ["etcd-2", "etcd-3"],
        "policy_enforced_seconds": 5.5,
        "policy_open_before": True,
        "policy_reopened_after_delete": True,
        "writes": {
            "acknowledged": 300,
            "lost_per_member": {"etcd": [], "etcd-2": [], "etcd-3": []},
            "unknown_landed_per_member": {"etcd": 1, "etcd-2": 1, "etcd-3": 1},
            "control_missing_on": ["etcd", "etcd-2", "etcd-3"],
        },
        "ipam": {
            "pods": 40,
            "pods_done": 40,
            "ipam_samples": 3,
            "leak_control_seen": True,
            "ipam_ok_after_gc": True,
        },
        "witness": {"interrupted_flows": 0},
    }
    for path, value in changes.items():
        doc = report
        *parents, leaf = path.split("__")
        for p in parents:
            doc = doc[p]
        doc[leaf] = value
    return report


def test_a_good_report_has_no_problems():
    assert problems(_report()) == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"writes__lost_per_member": {"etcd": [], "etcd-2": ["k7"], "etcd-3": []}}, "etcd-2 lost 1"),
        ({"writes__acknowledged": 0}, "no write was acknowledged"),
        ({"writes__control_missing_on": ["etcd"]}, "control key"),
        ({"writes__unknown_landed_per_member": {"etcd": 1, "etcd-2": 0, "etcd-3": 1}}, "disagree"),
        ({"policy_enforced_seconds": None}, "enforced after None"),
        ({"policy_enforced_seconds": 12.0}, "enforced after 12.0"),
        ({"policy_open_before": False}, "did not answer before"),
        ({"ipam__duplicates": ["10.244.0.5: a and b"]}, "duplicates"),
        ({"ipam__leaks_before_gc": ["10.244.0.9"]}, "leaks before gc"),
        ({"ipam__leak_control_seen": False}, "leak put there on purpose"),
        ({"ipam__pods_done": 39}, "39 of 40 pods"),
        ({"agent_members_before": ["etcd"]}, "was not connected to etcd-2"),
        ({"agent_members_during_fault": ["etcd-2"]}, "reached no member but"),
        ({"scenario": "etcd-leader-kill", "leader_during_fault": "etcd-2"}, "no new leader"),
        ({"witness__interrupted_flows": 2}, "2 flow(s) interrupted"),
    ],
)
def test_every_check_can_fail(change, expected):
    found = problems(_report(**change))
    assert any(expected in line for line in found), found
