"""The builder: makes a :class:`~podnet.lab.topology.Topology` real (see that module's diagram).

Order, each step recorded in the state before it is carried out (``down`` ignores what is gone)::

    1. namespaces   ip netns add pn-fabric, pn-router, pn-etcd, pn-node-1..N
    2. sysctls      written through /proc/sys from a thread inside each namespace (per-netns)
    3. fabric       bridges br0 (br1), up; per host a veth: port on the bridge, peer created
                    directly inside the host namespace under its final name (eth0/eth1)
    4. hosts        lo up, eth* mtu + address + up, default route via the router when there is one
    5. files        state dir layout: nodes/<node>/{cni/net.d,log}; cgroup podnet-lab-<stem>/<node>

Netlink is pyroute2 (the project's netlink library): an ``IPRoute`` opened while the thread is in a
namespace stays bound to it (:func:`podnet.dataplane.netns.in_netns`). Nothing is ever created in the
root namespace.

sysctls, and why:

- nodes and the router: ``ip_forward=1`` (nodes route pod traffic, the router between subnets);
- ``rp_filter``: ``all=0`` and ``default=0`` in nodes and router. The kernel applies
  max(all, interface), so ``all=0`` lets each interface decide: pod traffic may arrive on an
  interface other than the one the reverse route points to (asymmetric routing across nodes and
  subnets, tunnels, the link-local gateway scheme), which strict mode (1) would drop silently. The
  dataplane may still set ``rp_filter=1`` on pod veths for anti-spoofing, which then takes effect.
- bridge netfilter off in the fabric namespace (when br_netfilter is loaded at all);
- IPv6 quiet: the fabric namespace is pure L2, so IPv6 is disabled there (no RS/MLD/DAD chatter
  flooding the bridges); in hosts ``accept_dad=0``, ``accept_ra=0``, ``router_solicitations=0`` so
  links are usable at once and nothing waits on IPv6 autoconfiguration.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field

from podnet.dataplane import sysctl
from podnet.dataplane.errors import KernelNotFound
from podnet.dataplane.netns import in_netns, netns_exists, netns_path
from podnet.lab.naming import LabError, LabNames
from podnet.lab.netns import create_cgroup, create_netns
from podnet.lab.state import LabState
from podnet.lab.topology import Host, LabSpec, Topology, build_topology

IPV6_QUIET = {
    "accept_dad": 0,
    "accept_ra": 0,
    "router_solicitations": 0,
}
HOST_SYSCTLS = {
    "net.ipv4.conf.all.rp_filter": 0,
    "net.ipv4.conf.default.rp_filter": 0,
} | {f"net.ipv6.conf.{scope}.{k}": v for scope in ("all", "default") for k, v in IPV6_QUIET.items()}
FABRIC_SYSCTLS = {
    "net.ipv6.conf.all.disable_ipv6": 1,
    "net.ipv6.conf.default.disable_ipv6": 1,
}
# Only present when br_netfilter is loaded (e.g. by Docker): keep bridged lab frames out of the
# fabric namespace's netfilter/conntrack; the switch should just switch.
FABRIC_OPTIONAL_SYSCTLS = {
    "net.bridge.bridge-nf-call-iptables": 0,
    "net.bridge.bridge-nf-call-ip6tables": 0,
    "net.bridge.bridge-nf-call-arptables": 0,
}


@dataclass
class FabricReport:
    elapsed: float
    namespaces: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)  # "netns/ifname"
    dirs: list[str] = field(default_factory=list)
    cgroups: list[str] = field(default_factory=list)


def host_sysctls(host: Host) -> dict[str, int]:
    out = dict(HOST_SYSCTLS)
    if host.ip_forward:
        out["net.ipv4.ip_forward"] = 1
    return out


def build_fabric(topo: Topology, state: LabState, *, cgroups: bool = True) -> FabricReport:
    """Create the topology's namespaces, links, addresses, routes, node dirs and node cgroups."""
    started = time.perf_counter()
    from pyroute2 import IPRoute  # ~100 ms import, only the builder needs it (counted in elapsed)

    names = topo.names
    report = FabricReport(0.0)

    # 1. namespaces: none may exist yet (a name with our prefix that we did not create this time
    #    is a leftover: refuse rather than adopt it), then recorded, then created.
    if existing := [ns for ns, _ in topo.namespaces if netns_exists(ns)]:
        raise LabError(
            f"network namespaces of this lab already exist: {', '.join(existing)}",
            hint=f"podnet lab down, or podnet lab clean for leftovers of prefix {names.prefix}",
        )
    state.record_netns_many(topo.namespaces)
    for ns, _kind in topo.namespaces:
        create_netns(ns)
        report.namespaces.append(ns)

    # 2. sysctls, before any link exists so new interfaces inherit the "default" values.
    sysctl.write_many(FABRIC_SYSCTLS, topo.fabric_ns)
    for key, value in FABRIC_OPTIONAL_SYSCTLS.items():
        with contextlib.suppress(KernelNotFound):
            sysctl.write(key, value, topo.fabric_ns)
    for host in topo.hosts:
        sysctl.write_many(host_sysctls(host), host.netns)

    # 3. fabric: bridges and veths whose peers are born inside the host namespaces.
    with in_netns(topo.fabric_ns), IPRoute() as ipr:
        _loopback_up(ipr)
        bridges = {}
        for subnet in topo.subnets:
            ipr.link("add", ifname=subnet.bridge, kind="bridge", mtu=topo.mtu)
            (bridges[subnet.bridge],) = ipr.link_lookup(ifname=subnet.bridge)
            ipr.link("set", index=bridges[subnet.bridge], state="up")
            report.links.append(f"{topo.fabric_ns}/{subnet.bridge}")
        for host in topo.hosts:
            for att in host.attachments:
                ipr.link(
                    "add",
                    ifname=att.port,
                    kind="veth",
                    mtu=topo.mtu,
                    peer={"ifname": att.ifname, "net_ns_fd": netns_path(host.netns), "mtu": topo.mtu},
                )
                (port,) = ipr.link_lookup(ifname=att.port)
                ipr.link("set", index=port, master=bridges[att.bridge], state="up")
                report.links.append(f"{topo.fabric_ns}/{att.port}")

    # 4. hosts: addresses, links up, default route.
    for host in topo.hosts:
        with in_netns(host.netns), IPRoute() as ipr:
            _loopback_up(ipr)
            for att in host.attachments:
                (index,) = ipr.link_lookup(ifname=att.ifname)
                ip, plen = att.address.split("/")
                ipr.addr("add", index=index, address=ip, prefixlen=int(plen))
                ipr.link("set", index=index, state="up")
                report.links.append(f"{host.netns}/{att.ifname}")
            if host.gateway:
                ipr.route("add", dst="0.0.0.0/0", gateway=host.gateway)

    # 5. node dirs (under the state dir: removed with it) and node cgroups.
    for node in topo.nodes:
        for d in (names.cni_conf_dir(node.name), names.node_log_dir(node.name)):
            os.makedirs(d, exist_ok=True)
            report.dirs.append(d)
    os.makedirs(names.log_dir, exist_ok=True)
    if cgroups:
        if not os.path.isfile(os.path.join(names.cgroup_root, "cgroup.procs")):
            raise LabError(f"no cgroup v2 hierarchy at {names.cgroup_root}")
        state.record_cgroup(names.cgroup_dir)
        for node in topo.nodes:
            report.cgroups.append(create_cgroup(names.node_cgroup(node.name)))

    report.elapsed = time.perf_counter() - started
    state.set_meta(topology=topo.to_dict(), fabric_build_seconds=round(report.elapsed, 4))
    return report


def _loopback_up(ipr) -> None:
    (lo,) = ipr.link_lookup(ifname="lo")
    ipr.link("set", index=lo, state="up")


def fabric_up(spec: LabSpec, names: LabNames) -> tuple[Topology, LabState, FabricReport]:
    """Create the lab's state, then its fabric; on any failure remove what was made and re-raise."""
    from podnet.lab.cleanup import down

    state = LabState.create(names.state_dir, names.prefix, meta={"spec": spec.to_dict()})
    topo = build_topology(spec, names)
    try:
        report = build_fabric(topo, state)
    except BaseException:
        down(names.state_dir)
        raise
    return topo, state, report
