"""Pod wiring in both schemes, proven with real ICMP traffic between throw-away namespaces."""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from podnet.dataplane import sysctl
from podnet.dataplane.endpoint import (
    CALICO_GATEWAY,
    CALICO_HOST_MAC,
    EndpointSpec,
    check_endpoint,
    endpoint_routes,
    ensure_router_device,
    host_ifname_for,
    unwire_endpoint,
    wire_endpoint,
)
from podnet.dataplane.errors import EndpointError, EndpointExists, NetnsNotFound
from podnet.dataplane.netlink import Netlink
from podnet.dataplane.routes import PODNET_RTPROTO, Route, RouteManager

pytestmark = pytest.mark.root


def spec_for(scheme: str, pod_netns: str, pod: str, ip: str, *, gateway: str | None = None, mtu: int = 1450):
    prefix = "cali" if scheme == "calico" else "lxc"
    return EndpointSpec(
        netns=pod_netns,
        ifname="eth0",
        host_ifname=host_ifname_for(prefix, "default", pod),
        addresses=(ip,),
        mtu=mtu,
        scheme=scheme,
        gateway=gateway or CALICO_GATEWAY,
    )


@pytest.fixture(params=["calico", "cilium"])
def scheme(request: pytest.FixtureRequest, node) -> str:
    if request.param == "cilium":
        ensure_router_device("cilium_host", node.router_ip, netns=node.netns)
    return request.param


def gw(scheme: str, node) -> str:
    return CALICO_GATEWAY if scheme == "calico" else node.router_ip


def test_wire_calico_kernel_state(node, make_netns):
    pod_ns = make_netns("pod1")
    spec = spec_for("calico", pod_ns, "web-1", "10.244.1.5")
    wired = wire_endpoint(spec, host_netns=node.netns)
    assert wired.host_mac == CALICO_HOST_MAC
    assert wired.addresses == ("10.244.1.5",)
    with Netlink.open(pod_ns) as pod:
        eth0 = pod.link_get("eth0")
        assert (eth0.up, eth0.mtu, eth0.mac) == (True, 1450, wired.mac)
        assert pod.link_get("lo").up
        assert "10.244.1.5/32" in {a.cidr for a in pod.addrs("eth0")}
        routes = {(r.dst, r.gateway, r.scope) for r in pod.routes()}
        assert ("169.254.1.1/32", None, "link") in routes
        assert ("0.0.0.0/0", "169.254.1.1", "global") in routes
        neigh = {n.address: (n.lladdr, n.state) for n in pod.neighs("eth0")}
        assert neigh["169.254.1.1"] == (CALICO_HOST_MAC, "permanent")
    with Netlink.open(node.netns) as host:
        cali = host.link_get(spec.host_ifname)
        assert (cali.up, cali.mtu, cali.mac, cali.kind) == (True, 1450, CALICO_HOST_MAC, "veth")
        assert host.addrs(spec.host_ifname, family=2) == []
        [route] = [r for r in host.routes(protocol=PODNET_RTPROTO) if r.dst == "10.244.1.5/32"]
        assert (route.oif, route.scope, route.gateway) == (cali.index, "link", None)
        values = host.sysctl_get_many(
            [sysctl.iface_key(spec.host_ifname, k) for k in ("proxy_arp", "forwarding", "route_localnet")]
            + [f"net/ipv4/neigh/{spec.host_ifname}/proxy_delay"]
        )
        assert list(values.values()) == ["1", "1", "1", "0"]
    assert check_endpoint(spec, host_netns=node.netns) == []


def test_node_and_pods_reach_each_other(scheme, node, make_netns, ping):
    gateway = gw(scheme, node)
    p1, p2 = make_netns("pod1"), make_netns("pod2")
    s1 = spec_for(scheme, p1, "web-1", "10.244.1.5", gateway=gateway)
    s2 = spec_for(scheme, p2, "web-2", "10.244.1.6", gateway=gateway)
    wire_endpoint(s1, host_netns=node.netns)
    wire_endpoint(s2, host_netns=node.netns)
    assert check_endpoint(s1, host_netns=node.netns) == []
    assert check_endpoint(s2, host_netns=node.netns) == []
    assert ping(node.netns, "10.244.1.5")  # node -> pod
    assert ping(p2, "10.244.1.5")  # pod -> gateway -> pod
    assert ping(p1, "10.244.1.6")
    assert ping(p1, node.ip)  # pod -> node
    # a full-size packet with DF passes at the pod MTU
    assert ping(p1, "10.244.1.6", size=1450 - 28, df=True)
    assert not ping(p1, "10.244.1.6", size=1450 - 27, df=True, timeout=0.3)  # one byte over: EMSGSIZE


def test_calico_proxy_arp_answers_for_the_gateway(node, make_netns, ping):
    """Without the pod's static neighbour entry the host veth answers ARP for 169.254.1.1 (Calico)."""
    pod_ns = make_netns("pod1")
    spec = spec_for("calico", pod_ns, "web-1", "10.244.1.5")
    wire_endpoint(spec, host_netns=node.netns)
    with Netlink.open(node.netns) as host:  # proxy ARP needs a route to the gateway elsewhere
        host.route_add("0.0.0.0/0", gateway="10.0.0.2", dev="eth0")
    with Netlink.open(pod_ns) as pod:
        pod.neigh_del("eth0", CALICO_GATEWAY)
    assert ping(pod_ns, node.ip)
    with Netlink.open(pod_ns) as pod:
        [entry] = [n for n in pod.neighs("eth0") if n.address == CALICO_GATEWAY]
        assert entry.lladdr == CALICO_HOST_MAC and entry.state != "permanent"  # learnt by ARP


def test_cilium_gateway_is_the_router_ip(node, make_netns, ping):
    ensure_router_device("cilium_host", node.router_ip, netns=node.netns)
    pod_ns = make_netns("pod1")
    spec = spec_for("cilium", pod_ns, "web-1", "10.244.1.5", gateway=node.router_ip)
    wired = wire_endpoint(spec, host_netns=node.netns)
    assert spec.host_ifname.startswith("lxc") and wired.host_mac != CALICO_HOST_MAC
    assert ping(pod_ns, node.router_ip)
    assert check_endpoint(spec, host_netns=node.netns) == []
    with Netlink.open(node.netns) as host:
        ch = host.link_get("cilium_host")
        assert ch.up and host.link_get("cilium_net").up
        assert [a.cidr for a in host.addrs("cilium_host", family=2)] == ["10.244.1.1/32"]
        assert host.sysctl_get(sysctl.iface_key(spec.host_ifname, "rp_filter")) == "0"
    # idempotent, and a changed router IP moves
    ensure_router_device("cilium_host", node.router_ip, netns=node.netns)
    ensure_router_device("cilium_host", "10.244.1.254", netns=node.netns, mtu=1400)
    with Netlink.open(node.netns) as host:
        assert [a.cidr for a in host.addrs("cilium_host", family=2)] == ["10.244.1.254/32"]
        assert host.link_get("cilium_host").mtu == 1400
    assert check_endpoint(spec, host_netns=node.netns) == [
        "gateway 10.244.1.1 is not an address of the node (see ensure_router_device)"
    ]


def test_unwire_removes_everything_and_repeats(scheme, node, make_netns, ping):
    pod_ns = make_netns("pod1")
    spec = spec_for(scheme, pod_ns, "web-1", "10.244.1.5", gateway=gw(scheme, node))
    wire_endpoint(spec, host_netns=node.netns)
    unwire_endpoint(spec.host_ifname, pod_ns, "eth0", host_netns=node.netns)
    with Netlink.open(pod_ns) as pod:
        assert pod.link_find("eth0") is None
    with Netlink.open(node.netns) as host:
        assert host.link_find(spec.host_ifname) is None
        assert [r for r in host.routes(table=None) if r.dst == "10.244.1.5/32"] == []
    assert not ping(node.netns, "10.244.1.5", timeout=0.3)
    unwire_endpoint(spec.host_ifname, pod_ns, "eth0", host_netns=node.netns)  # again: fine
    unwire_endpoint(spec.host_ifname, None, "eth0", host_netns=node.netns)  # no netns: fine
    unwire_endpoint(spec.host_ifname, "/run/netns/pntest-dp-gone", "eth0", host_netns=node.netns)
    # and the pod can be wired again afterwards
    wire_endpoint(spec, host_netns=node.netns)
    assert ping(node.netns, "10.244.1.5")


def test_unwire_without_netns_leaves_a_live_pods_veth(node, make_netns):
    pod_ns = make_netns("pod1")
    spec = spec_for("calico", pod_ns, "web-1", "10.244.1.5")
    wire_endpoint(spec, host_netns=node.netns)
    # e.g. the DEL of an older sandbox of the same pod arriving after the new sandbox's ADD
    unwire_endpoint(spec.host_ifname, None, "eth0", host_netns=node.netns)
    assert check_endpoint(spec, host_netns=node.netns) == []


def test_check_names_what_is_broken(scheme, node, make_netns):
    pod_ns = make_netns("pod1")
    spec = spec_for(scheme, pod_ns, "web-1", "10.244.1.5", gateway=gw(scheme, node))
    host_if = spec.host_ifname

    def rewire():
        unwire_endpoint(host_if, pod_ns, "eth0", host_netns=node.netns)
        wire_endpoint(spec, host_netns=node.netns)
        assert check_endpoint(spec, host_netns=node.netns) == []

    rewire()
    with Netlink.open(pod_ns) as pod:
        pod.addr_del("eth0", "10.244.1.5/32")  # the kernel also drops the routes through eth0 then
    problems = check_endpoint(spec, host_netns=node.netns)
    assert problems[0] == "pod interface eth0 lacks address 10.244.1.5/32"

    rewire()
    with Netlink.open(node.netns) as host:
        host.route_del("10.244.1.5/32", protocol=PODNET_RTPROTO)
    assert check_endpoint(spec, host_netns=node.netns) == [
        f"node lacks the route 10.244.1.5/32 dev {host_if}"
    ]

    rewire()
    with Netlink.open(node.netns) as host:
        host.sysctl_set(sysctl.iface_key(host_if, "proxy_arp"), 0)
        host.link_set(host_if, up=False)
    problems = check_endpoint(spec, host_netns=node.netns)
    assert f"host veth {host_if} is down" in problems
    assert f"sysctl net.ipv4.conf.{host_if}.proxy_arp is 0, expected 1" in problems

    rewire()
    with Netlink.open(pod_ns) as pod:
        pod.route_del("0.0.0.0/0")
        pod.link_set("eth0", mtu=1400)
    assert check_endpoint(spec, host_netns=node.netns) == [
        f"pod interface eth0 has MTU 1400, expected {spec.mtu}",
        f"pod lacks the default route via {spec.gateway} dev eth0",
    ]

    unwire_endpoint(host_if, pod_ns, "eth0", host_netns=node.netns)
    assert check_endpoint(spec, host_netns=node.netns) == [
        "interface eth0 is missing in the pod",
        f"host veth {host_if} is missing on the node",
    ]


def test_add_of_an_existing_ifname_fails_clearly(node, make_netns):
    pod_ns = make_netns("pod1")
    spec = spec_for("calico", pod_ns, "web-1", "10.244.1.5")
    wire_endpoint(spec, host_netns=node.netns)
    with pytest.raises(EndpointExists, match=r"interface eth0 already exists in netns .*pod1"):
        wire_endpoint(spec, host_netns=node.netns)
    # a different host name (another pod) into the same netns and ifname: same answer
    other = spec_for("calico", pod_ns, "web-2", "10.244.1.6")
    with pytest.raises(EndpointExists):
        wire_endpoint(other, host_netns=node.netns)
    assert check_endpoint(spec, host_netns=node.netns) == []  # the first endpoint is untouched


def test_missing_netns_is_reported(node):
    spec = spec_for("calico", "/run/netns/pntest-dp-missing", "web-1", "10.244.1.5")
    with pytest.raises(NetnsNotFound):
        wire_endpoint(spec, host_netns=node.netns)
    assert check_endpoint(spec, host_netns=node.netns) == [
        "pod netns /run/netns/pntest-dp-missing does not exist"
    ]


def test_leftover_host_veth_is_replaced(node, make_netns, ping):
    old_ns, new_ns = make_netns("old"), make_netns("new")
    wire_endpoint(spec_for("calico", old_ns, "web-1", "10.244.1.5"), host_netns=node.netns)
    spec = spec_for("calico", new_ns, "web-1", "10.244.1.7")  # same pod, new sandbox
    wire_endpoint(spec, host_netns=node.netns)
    assert check_endpoint(spec, host_netns=node.netns) == []
    assert ping(node.netns, "10.244.1.7")


def test_address_in_use_fails_and_rolls_back(node, make_netns):
    p1, p2 = make_netns("pod1"), make_netns("pod2")
    s1 = spec_for("calico", p1, "web-1", "10.244.1.5")
    wire_endpoint(s1, host_netns=node.netns)
    s2 = spec_for("calico", p2, "web-2", "10.244.1.5")  # double allocation
    with pytest.raises(
        EndpointError, match=rf"already exists for an interface other than .*{s1.host_ifname}"
    ):
        wire_endpoint(s2, host_netns=node.netns)
    with Netlink.open(p2) as pod:
        assert pod.link_find("eth0") is None
    with Netlink.open(node.netns) as host:
        assert host.link_find(s2.host_ifname) is None
    assert check_endpoint(s1, host_netns=node.netns) == []


def test_endpoint_routes_are_what_wiring_writes(node, make_netns):
    pod_ns = make_netns("pod1")
    wired = wire_endpoint(spec_for("calico", pod_ns, "web-1", "10.244.1.5"), host_netns=node.netns)
    assert endpoint_routes(wired) == (Route("10.244.1.5/32", dev=wired.host_ifname, scope="link"),)
    manager = RouteManager(netns=node.netns)
    assert manager.current() == list(endpoint_routes(wired))
    diff = manager.apply(endpoint_routes(wired))
    assert (diff.operations, diff.unchanged, diff.ok) == (0, 1, True)


@pytest.mark.parametrize("scheme_name", ["calico", "cilium"])
def test_cross_node_pod_to_pod(scheme_name, two_nodes, make_netns, ping):
    a, b = two_nodes
    pods = {}
    for node, ip, label in ((a, "10.244.1.5", "pa"), (b, "10.244.2.5", "pb")):
        gateway = CALICO_GATEWAY
        if scheme_name == "cilium":
            ensure_router_device("cilium_host", node.router_ip, netns=node.netns)
            gateway = node.router_ip
        pods[label] = make_netns(label)
        spec = spec_for(scheme_name, pods[label], f"web-{label}", ip, gateway=gateway)
        wired = wire_endpoint(spec, host_netns=node.netns)
        # what the agent programs: the other node's pod CIDR via its node IP, plus its own endpoints
        peer = b if node is a else a
        desired = [Route(peer.pod_cidr, gateway=peer.ip, dev="eth0"), *endpoint_routes(wired)]
        diff = RouteManager(netns=node.netns).apply(desired)
        assert diff.ok and diff.operations == 1
    assert ping(pods["pa"], "10.244.2.5")
    assert ping(pods["pb"], "10.244.1.5")
    assert ping(a.netns, "10.244.2.5")


def test_concurrent_adds_from_many_threads(node, make_netns, ping):
    """The agent may serve CNI requests on several threads: each call uses its own handles."""
    specs = [spec_for("calico", make_netns(f"c{i}"), f"conc-{i}", f"10.244.1.{100 + i}") for i in range(8)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda s: wire_endpoint(s, host_netns=node.netns), specs))
    for spec in specs:
        assert check_endpoint(spec, host_netns=node.netns) == []
    assert ping(specs[0].netns, "10.244.1.107")
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(
            pool.map(lambda s: unwire_endpoint(s.host_ifname, s.netns, "eth0", host_netns=node.netns), specs)
        )
    with Netlink.open(node.netns) as host:
        assert not [link for link in host.links() if link.name.startswith("cali")]


def test_wire_unwire_latency(scheme, node, make_netns):
    """Median wall time of ADD and DEL, each on a fresh pod netns (printed; loose upper bound)."""
    gateway = gw(scheme, node)
    wire_times, unwire_times = [], []
    for i in range(20):
        pod_ns = make_netns(f"lat{i}")
        spec = spec_for(scheme, pod_ns, f"lat-{i}", f"10.244.1.{10 + i}", gateway=gateway)
        t0 = time.perf_counter()
        wire_endpoint(spec, host_netns=node.netns)
        t1 = time.perf_counter()
        unwire_endpoint(spec.host_ifname, pod_ns, "eth0", host_netns=node.netns)
        t2 = time.perf_counter()
        wire_times.append(t1 - t0)
        unwire_times.append(t2 - t1)
    wire_ms, unwire_ms = statistics.median(wire_times) * 1e3, statistics.median(unwire_times) * 1e3
    print(f"\n[{scheme}] wire_endpoint median {wire_ms:.2f} ms, unwire_endpoint median {unwire_ms:.2f} ms")
    assert wire_ms < 50 and unwire_ms < 50
