"""Names of lab objects: prefix rules, lengths, paths."""

from __future__ import annotations

import pytest

from podnet.lab.naming import IFNAMSIZ, LabError, LabNames, check_prefix, link_name


def test_default_names():
    n = LabNames()
    assert (n.prefix, n.stem) == ("pn-", "pn")
    assert (n.fabric_ns, n.router_ns, n.etcd_ns) == ("pn-fabric", "pn-router", "pn-etcd")
    assert n.node_ns("node-1") == "pn-node-1"
    assert n.state_dir == "/run/podnet-lab/pn"
    assert n.state_file == "/run/podnet-lab/pn/state.json"
    assert n.node_dir("node-2") == "/run/podnet-lab/pn/nodes/node-2"
    assert n.agent_socket("node-2") == "/run/podnet-lab/pn/nodes/node-2/agent.sock"
    assert n.cni_conf_dir("node-2") == "/run/podnet-lab/pn/nodes/node-2/cni/net.d"
    assert n.cgroup_dir == "/sys/fs/cgroup/unified/podnet-lab-pn"
    assert n.pod_cgroup("node-1", "uid-1") == "/sys/fs/cgroup/unified/podnet-lab-pn/node-1/uid-1"
    assert n.marker == "--lab-prefix=pn-"


def test_test_prefix_and_overrides():
    n = LabNames("pnt1a2b-", run_root="/tmp/x", cgroup_root="/cg")
    assert n.node_ns("node-3") == "pnt1a2b-node-3"
    assert n.state_dir == "/tmp/x/pnt1a2b"
    assert n.cgroup_dir == "/cg/podnet-lab-pnt1a2b"


@pytest.mark.parametrize("bad", ["pn", "-pn-", "PN-", "p-", "pn-x-", "pn_", "toolongprefix-", "1pn-", ""])
def test_bad_prefixes(bad):
    with pytest.raises(LabError):
        check_prefix(bad)


def test_prefixes_never_own_each_others_names():
    a, b = LabNames("pn-"), LabNames("pnt1a2b-")
    assert not a.owns_netns(b.node_ns("node-1"))
    assert not b.owns_netns(a.node_ns("node-1"))
    assert a.owns_netns(a.pod_ns("default", "web"))


def test_pod_ns_readable_short_unique():
    n = LabNames()
    name = n.pod_ns("default", "web-1")
    assert name.startswith("pn-p-default.web-1-") and len(name) == len("pn-p-default.web-1-") + 8
    assert n.pod_ns("default", "web-1") == name  # stable
    assert n.pod_ns("default", "web-2") != name
    assert n.pod_ns("a-b", "c") != n.pod_ns("a", "b-c")  # the hash disambiguates
    long = n.pod_ns("x" * 63, "y" * 253)
    assert len(long) <= len("pn-p-") + 40 + 1 + 8
    assert "/" not in n.pod_ns("ns", "Weird_Name")


def test_netns_kind():
    n = LabNames()
    assert n.netns_kind("pn-p-default.web-0123abcd") == "pod"
    assert n.netns_kind("pn-node-12") == "node"
    assert [n.netns_kind(x) for x in ("pn-router", "pn-etcd", "pn-fabric")] == ["router", "etcd", "fabric"]
    assert n.netns_kind("pn-other") == "other"
    assert n.netns_kind("pnt1234-node-1") is None


def test_link_names_fit_the_kernel():
    assert link_name("node-244") == "node-244"
    with pytest.raises(LabError):
        link_name("x" * (IFNAMSIZ + 1))
    with pytest.raises(LabError):
        link_name("a/b")


def test_pod_cgroup_rejects_path_tricks():
    with pytest.raises(LabError):
        LabNames().pod_cgroup("node-1", "../etc")
