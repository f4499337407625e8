"""Pod wiring: the veth between a pod and its node, for CNI ADD / DEL / CHECK.

Both schemes give the pod a /32 and make the node its only neighbour, so every packet from the pod
is routed by the node (where policy applies) and nothing depends on L2 between pods:

    pod netns                                  node netns
    eth0  10.244.1.5/32, MAC stable per endpoint   cali1234567890a  no address, MAC ee:ee:ee:ee:ee:ee
      169.254.1.1 dev eth0 scope link    <-veth->    proxy_arp=1 proxy_delay=0 forwarding=1
      default via 169.254.1.1 dev eth0               route_localnet=1
      neigh 169.254.1.1 lladdr ee:ee:.. PERMANENT  10.244.1.5 dev cali1234567890a scope link proto 112

- **calico** (``cni-plugin/pkg/dataplane/linux/dataplane_linux.go``): host side ``cali<sha1[:11]>``
  with MAC ``ee:ee:ee:ee:ee:ee``; the pod's gateway is the fake ``169.254.1.1``, which the host
  veth answers by proxy ARP; sysctls ``proxy_arp=1``, ``proxy_delay=0``, ``forwarding=1``,
  ``route_localnet=1`` on the host veth.
- **cilium** (``plugins/cilium-cni``, ``pkg/datapath/connector/veth.go``): host side
  ``lxc<sha1[:11]>`` with a MAC derived from its name; the pod's gateway is the node's router IP,
  a /32 on ``cilium_host`` (``ensure_router_device``); proxy ARP on, ``rp_filter=0`` on the lxc
  side. Without eBPF the node reaches the pod through the same ``/32 dev lxc…`` route as Calico's.

In both, the pod also gets a permanent neighbour entry for its gateway pointing at the host veth's
MAC. Proxy ARP stays configured, but the pod never needs it: proxy ARP only answers when the node
has a route to the gateway through *another* interface (for 169.254.1.1 that is the default
route, which lab nodes may lack), and the first packet does not wait for an ARP round trip.

**Speed** (median ~1.8 ms on this machine, ``test_dp_endpoint.py::test_wire_unwire_latency``).
Three netlink round trips: (1) the veth, created from the node side with the peer born inside the
pod netns (never created then moved), MACs and MTUs in the same request, both ifindexes read from
the kernel's echo of it; (2) one batch in the pod: eth0 and lo up, addresses, two routes, the
neighbour; (3) the node route. Plus the four sysctls written on one helper thread. The pod netns is
reached through a socket opened by ``setns`` on a helper thread (no forked helper, no pyroute2
``IPRoute`` at all). DEL costs ~15-20 ms, nearly all of it the kernel unregistering the veth (RCU
grace periods; ``ip link del`` takes as long).

**Failure.** Any error after the veth exists deletes it again (which takes its addresses and
routes along), so ADD is all or nothing. ``EndpointExists`` when the pod already has ``ifname``
(CNI: ADD must fail if the interface exists). A leftover host veth of the same name (an earlier
sandbox of the same pod whose DEL never came) is replaced, as Calico does. A /32 route to the pod
address through another interface fails the ADD (the address is in use).

**Deleting** (``unwire_endpoint``) removes the pod side, which takes the pair with it. A host veth
whose pod side is not in the given netns is left alone: the name depends only on namespace and pod,
so it may belong to a newer sandbox of the same pod (an old sandbox's DEL can arrive after the new
sandbox's ADD). A host veth whose netns is gone is removed by the kernel with the netns.

Every function takes ``host_netns`` (default ``None``: the node is the calling thread's netns,
as for the agent); tests and the lab pass the node's netns instead.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import socket
from dataclasses import dataclass

from podnet.dataplane.errors import (
    EndpointError,
    EndpointExists,
    KernelError,
    KernelExists,
    NetnsNotFound,
)
from podnet.dataplane.netlink import LOOPBACK_IFINDEX, Link, Netlink, VethPair
from podnet.dataplane.netns import netns_exists, netns_path
from podnet.dataplane.routes import PODNET_RTPROTO, Route
from podnet.dataplane.sysctl import iface_key
from podnet.errors import ValidationError

log = logging.getLogger(__name__)

CALICO_GATEWAY = "169.254.1.1"
CALICO_HOST_MAC = "ee:ee:ee:ee:ee:ee"
IFNAMSIZ = 15

SCHEMES = ("calico", "cilium")

#: Sysctls of the host side of the veth, per scheme, in the order they are written.
HOST_SYSCTLS: dict[str, dict[str, str]] = {
    "calico": {
        "net/ipv4/conf/{ifname}/proxy_arp": "1",
        "net/ipv4/neigh/{ifname}/proxy_delay": "0",
        "net/ipv4/conf/{ifname}/forwarding": "1",
        "net/ipv4/conf/{ifname}/route_localnet": "1",
    },
    "cilium": {
        "net/ipv4/conf/{ifname}/proxy_arp": "1",
        "net/ipv4/neigh/{ifname}/proxy_delay": "0",
        "net/ipv4/conf/{ifname}/forwarding": "1",
        "net/ipv4/conf/{ifname}/rp_filter": "0",
    },
}


@dataclass(frozen=True)
class EndpointSpec:
    netns: str  # path of the pod's netns, e.g. /run/netns/pn-pod-x
    ifname: str  # inside the pod, usually "eth0"
    host_ifname: str  # on the node, e.g. host_ifname_for("cali", namespace, pod)
    addresses: tuple[str, ...]  # pod IPv4 addresses, e.g. ("10.244.1.5",) -> configured as /32
    mtu: int
    scheme: str  # "calico" | "cilium"
    gateway: str  # calico: "169.254.1.1"; cilium: the node's router IP (cilium_host address)


@dataclass(frozen=True)
class WiredEndpoint:
    host_ifname: str
    host_mac: str
    ifname: str
    mac: str
    mtu: int
    addresses: tuple[str, ...]  # plain addresses ("10.244.1.5"); each is configured as a /32
    gateway: str


# ---------------------------------------------------------------------- pure helpers


def host_ifname_for(prefix: str, namespace: str, pod: str) -> str:
    """Calico's host veth name: ``prefix + sha1("<namespace>.<pod>").hexdigest()[:11]``."""
    name = prefix + hashlib.sha1(f"{namespace}.{pod}".encode()).hexdigest()[:11]
    if len(name) > IFNAMSIZ:
        raise ValueError(f"prefix {prefix!r} too long: {name!r} exceeds {IFNAMSIZ} characters")
    return name


def stable_mac(seed: str) -> str:
    """A locally administered unicast MAC derived from ``seed`` (same seed, same MAC)."""
    b = bytearray(hashlib.sha256(seed.encode()).digest()[:6])
    b[0] = (b[0] & 0xFE) | 0x02
    return ":".join(f"{x:02x}" for x in b)


def pod_mac(spec: EndpointSpec) -> str:
    return stable_mac(f"pod/{spec.host_ifname}/{spec.ifname}")


def host_mac(spec: EndpointSpec) -> str:
    return CALICO_HOST_MAC if spec.scheme == "calico" else stable_mac(f"host/{spec.host_ifname}")


def host_sysctls(scheme: str, host_ifname: str) -> dict[str, str]:
    iface_key(host_ifname, "x")  # validates the name for use in a /proc/sys path
    return {k.format(ifname=host_ifname): v for k, v in HOST_SYSCTLS[scheme].items()}


def endpoint_routes(wired: WiredEndpoint) -> tuple[Route, ...]:
    """The node's routes to a wired endpoint: THE definition, shared by wiring and the agent's resync.

    One ``<addr>/32 dev <host_ifname> scope link`` per pod address, written with ``PODNET_RTPROTO``.
    """
    return tuple(Route(dst=f"{a}/32", dev=wired.host_ifname, scope="link") for a in wired.addresses)


def _valid_ifname(name: str) -> bool:
    return 0 < len(name) <= IFNAMSIZ and name not in (".", "..") and not any(c in name for c in "/: \t\n")


def validate_spec(spec: EndpointSpec) -> tuple[str, ...]:
    """Problems raise ``ValidationError``; returns the canonical pod addresses."""
    problems: list[tuple[str, str]] = []
    if spec.scheme not in SCHEMES:
        problems.append(("scheme", f"must be one of {', '.join(SCHEMES)}"))
    for field in ("ifname", "host_ifname"):
        if not _valid_ifname(getattr(spec, field)):
            problems.append((field, f"not a valid interface name (1-{IFNAMSIZ} chars, no / : or space)"))
    if not spec.netns:
        problems.append(("netns", "required"))
    if not 68 <= spec.mtu <= 65535:
        problems.append(("mtu", "must be within 68..65535"))
    addresses: list[str] = []
    if not spec.addresses:
        problems.append(("addresses", "at least one address is required"))
    for i, addr in enumerate(spec.addresses):
        try:
            iface = ipaddress.ip_interface(addr)
        except ValueError as exc:
            problems.append((f"addresses[{i}]", str(exc)))
            continue
        if iface.version != 4 or iface.network.prefixlen != 32:
            problems.append((f"addresses[{i}]", "only IPv4 /32 pod addresses are supported"))
        addresses.append(str(iface.ip))
    try:
        if ipaddress.ip_address(spec.gateway).version != 4:
            problems.append(("gateway", "must be an IPv4 address"))
        elif spec.gateway in addresses:
            problems.append(("gateway", "must not be one of the pod's addresses"))
    except ValueError as exc:
        problems.append(("gateway", str(exc)))
    if problems:
        raise ValidationError(problems, subject=f"endpoint {spec.host_ifname}")
    return tuple(addresses)


# ---------------------------------------------------------------------- ADD


def wire_endpoint(spec: EndpointSpec, *, host_netns: str | None = None) -> WiredEndpoint:
    """Create and configure the pod's veth (CNI ADD). All or nothing; see the module docstring."""
    addresses = validate_spec(spec)
    pod_path = netns_path(spec.netns)
    if not netns_exists(pod_path):
        raise NetnsNotFound(pod_path or spec.netns)
    wired = WiredEndpoint(
        host_ifname=spec.host_ifname,
        host_mac=host_mac(spec),
        ifname=spec.ifname,
        mac=pod_mac(spec),
        mtu=spec.mtu,
        addresses=addresses,
        gateway=spec.gateway,
    )
    with Netlink.open(host_netns) as host, Netlink.open(pod_path) as pod:
        pair = _create_veth(host, pod, spec, wired)
        try:
            _configure(host, pod, spec, wired, pair)
        except BaseException:
            host.link_del(pair.index, missing_ok=True)
            raise
    return wired


def _create_veth(host: Netlink, pod: Netlink, spec: EndpointSpec, wired: WiredEndpoint) -> VethPair:
    def create() -> VethPair:
        return host.link_add_veth(
            spec.host_ifname,
            spec.ifname,
            peer_netns=pod.netns,
            mtu=spec.mtu,
            mac=wired.host_mac,
            peer_mac=wired.mac,
            up=True,
        )

    try:
        return create()
    except KernelExists:
        if pod.link_find(spec.ifname) is not None:
            raise EndpointExists(
                f"interface {spec.ifname} already exists in netns {pod.netns}",
                hint="CNI ADD was called twice for this container, or the runtime reused the netns",
            ) from None
        if host.link_find(spec.host_ifname) is None:
            raise
        log.warning("replacing leftover host veth %s (an earlier sandbox of the same pod)", spec.host_ifname)
        host.link_del(spec.host_ifname, missing_ok=True)
        return create()


def _configure(host: Netlink, pod: Netlink, spec: EndpointSpec, wired: WiredEndpoint, pair: VethPair) -> None:
    # node side: sysctls of the new device, written on one thread inside the node netns
    host.sysctl_set_many(host_sysctls(spec.scheme, spec.host_ifname))
    # pod side: one batch, one round trip
    eth = pair.peer_index
    with pod.batch() as batch:
        batch.link_set(eth, up=True)
        batch.link_set(LOOPBACK_IFINDEX, up=True)
        for addr in wired.addresses:
            batch.addr_add(eth, f"{addr}/32")
        batch.route_add(f"{spec.gateway}/32", dev=eth, scope="link", protocol=PODNET_RTPROTO)
        batch.route_add("0.0.0.0/0", gateway=spec.gateway, dev=eth, protocol=PODNET_RTPROTO)
        batch.neigh_replace(eth, spec.gateway, wired.host_mac)
    # node side: the /32 route(s) to the pod
    for route in endpoint_routes(wired):
        _add_host_route(host, route, pair.index)


def _add_host_route(host: Netlink, route: Route, host_index: int) -> None:
    try:
        host.route_add(route.dst, dev=host_index, scope=route.scope, protocol=PODNET_RTPROTO)
    except KernelExists:
        routes = [kr for kr in host.routes(table=None) if kr.dst == route.dst]
        if any(kr.kind == "unicast" and kr.oif == host_index for kr in routes):
            return  # already there (e.g. written by the agent's resync first)
        other = host.link_find(routes[0].oif) if routes and routes[0].oif else None
        raise EndpointError(
            f"route {route.dst} already exists for an interface other than {route.dev}"
            + (f" ({other.name})" if other else ""),
            hint="the address is in use by another endpoint on this node; check IPAM for a double allocation",
        ) from None


# ---------------------------------------------------------------------- DEL


def unwire_endpoint(
    host_ifname: str, netns: str | None, ifname: str, *, host_netns: str | None = None
) -> None:
    """Remove the pod's veth (CNI DEL). Idempotent: a missing veth or netns is not an error."""
    pod_path = netns_path(netns) if netns else None
    if pod_path is not None and netns_exists(pod_path):
        with Netlink.open(pod_path) as pod:
            pod.link_del(ifname, missing_ok=True)  # a veth takes its host side along
        return
    # no netns: nothing to do in the pod; a host veth of this name, if any, belongs to a live netns
    # (a dead one takes its veths along), possibly a newer sandbox of the same pod: leave it.
    with Netlink.open(host_netns) as host:
        if host.link_find(host_ifname) is not None:
            log.info("DEL without a netns leaves host veth %s alone (its pod side is alive)", host_ifname)


# ---------------------------------------------------------------------- CHECK


def check_endpoint(spec: EndpointSpec, *, host_netns: str | None = None) -> list[str]:
    """What differs from a freshly wired endpoint, as sentences; ``[]`` when all is in place (CNI CHECK)."""
    try:
        addresses = validate_spec(spec)
    except ValidationError as exc:
        return [str(exc)]
    pod_path = netns_path(spec.netns)
    if not netns_exists(pod_path):
        return [f"pod netns {pod_path} does not exist"]
    problems: list[str] = []
    with Netlink.open(host_netns) as host, Netlink.open(pod_path) as pod:
        pod_if = pod.link_find(spec.ifname)
        host_if = host.link_find(spec.host_ifname)
        if pod_if is None:
            problems.append(f"interface {spec.ifname} is missing in the pod")
        else:
            problems += _check_pod(pod, pod_if, spec, addresses, host_if)
        if host_if is None:
            problems.append(f"host veth {spec.host_ifname} is missing on the node")
        else:
            problems += _check_host(host, host_if, spec, addresses)
        if pod_if is not None and host_if is not None and not _paired(pod_if, host_if):
            problems.append(f"{spec.host_ifname} on the node is not the peer of {spec.ifname} in the pod")
        if spec.scheme == "cilium":
            local = {a.address for a in host.addrs(family=socket.AF_INET)}
            if spec.gateway not in local:
                problems.append(
                    f"gateway {spec.gateway} is not an address of the node (see ensure_router_device)"
                )
    return problems


def _paired(pod_if: Link, host_if: Link) -> bool:
    return pod_if.link_index == host_if.index and host_if.link_index == pod_if.index


def _check_pod(
    pod: Netlink, pod_if: Link, spec: EndpointSpec, addresses: tuple[str, ...], host_if: Link | None
) -> list[str]:
    problems = []
    name = spec.ifname
    if not pod_if.up:
        problems.append(f"pod interface {name} is down")
    if pod_if.mtu != spec.mtu:
        problems.append(f"pod interface {name} has MTU {pod_if.mtu}, expected {spec.mtu}")
    have = {a.cidr for a in pod.addrs(pod_if.index)}
    problems += [f"pod interface {name} lacks address {a}/32" for a in addresses if f"{a}/32" not in have]
    routes = pod.routes()
    gw_link = any(
        r.dst == f"{spec.gateway}/32" and r.oif == pod_if.index and r.scope == "link" and r.gateway is None
        for r in routes
    )
    if not gw_link:
        problems.append(f"pod lacks the route {spec.gateway} dev {name} scope link")
    default = any(
        r.dst == "0.0.0.0/0" and r.gateway == spec.gateway and r.oif == pod_if.index and r.kind == "unicast"
        for r in routes
    )
    if not default:
        problems.append(f"pod lacks the default route via {spec.gateway} dev {name}")
    if host_if is not None:
        neigh = [n for n in pod.neighs(pod_if.index) if n.address == spec.gateway]
        if neigh and neigh[0].lladdr != host_if.mac:
            problems.append(
                f"pod resolves gateway {spec.gateway} to {neigh[0].lladdr}, not the host veth's {host_if.mac}"
            )
    return problems


def _check_host(host: Netlink, host_if: Link, spec: EndpointSpec, addresses: tuple[str, ...]) -> list[str]:
    problems = []
    name = spec.host_ifname
    if not host_if.up:
        problems.append(f"host veth {name} is down")
    if host_if.mtu != spec.mtu:
        problems.append(f"host veth {name} has MTU {host_if.mtu}, expected {spec.mtu}")
    wanted = host_sysctls(spec.scheme, name)
    try:
        values = host.sysctl_get_many(list(wanted))
    except KernelError as exc:
        return [*problems, f"cannot read sysctls of {name}: {exc}"]
    for key, want in wanted.items():
        if values[key] != want:
            problems.append(f"sysctl {key.replace('/', '.')} is {values[key]}, expected {want}")
    routes = host.routes(protocol=None)
    for addr in addresses:
        dst = f"{addr}/32"
        match = [r for r in routes if r.dst == dst and r.kind == "unicast"]
        if not match:
            problems.append(f"node lacks the route {dst} dev {name}")
        elif not any(r.oif == host_if.index and r.gateway is None for r in match):
            problems.append(f"node routes {dst} elsewhere than dev {name}")
    return problems


# ---------------------------------------------------------------------- cilium_host


def ensure_router_device(
    name: str,
    address: str,
    *,
    peer: str | None = None,
    netns: str | None = None,
    mtu: int | None = None,
) -> Link:
    """Make ``name`` the node's router device holding ``address``/32, like Cilium's ``cilium_host``.

    Cilium's ``cilium_host`` is one end of a veth pair (the other is ``cilium_net``); podnet makes
    the same pair (``peer`` defaults to ``cilium_net`` for ``cilium_host``, else ``<name>_net``
    cut to 15 characters), both ends up, and the router IP as a ``scope link`` /32 on ``name``.
    Idempotent: an existing device is reused, its MTU fixed and other addresses of it removed, so
    a changed router IP moves. Pods use the address as their gateway; it is local to the node, so
    the node answers their ARP for it on any lxc device, and a pod's packets to other pods are
    forwarded by the node's routes.
    """
    iface = ipaddress.ip_interface(address)
    if iface.version != 4:
        raise ValidationError([("address", "must be IPv4")], subject=f"router device {name}")
    cidr = f"{iface.ip}/32"
    peer = peer or ("cilium_net" if name == "cilium_host" else f"{name}_net"[:IFNAMSIZ])
    with Netlink.open(netns) as nl:
        if nl.link_find(name) is None:
            nl.link_add_veth(name, peer, mtu=mtu)
        for dev in (name, peer):
            link = nl.link_find(dev)
            if link is not None and (not link.up or mtu not in (None, link.mtu)):
                nl.link_set(link.index, up=True, mtu=mtu)
        current = {a.cidr for a in nl.addrs(name, family=socket.AF_INET)}
        for stale in current - {cidr}:
            nl.addr_del(name, stale, missing_ok=True)
        if cidr not in current:
            nl.addr_add(name, cidr, scope="link")
        return nl.link_get(name)
