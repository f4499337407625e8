"""The lab's topology as plain data: ``LabSpec`` in, ``Topology`` out (pure, no I/O).

As in Mininet, the topology is a value; :mod:`podnet.lab.fabric` makes it real and
:mod:`podnet.lab.cleanup` removes it. ``--subnets 2 --nodes 4`` (underlay 10.77.0.0/16)::

      pn-node-1            pn-node-2      pn-etcd  pn-ext      pn-node-3            pn-node-4
     eth0 .0.11           eth0 .0.12     eth0 .0.2 eth0 .0.3  eth0 .1.13           eth0 .1.14
        │                    │                   │               │                    │
   ┌────┴────────────────────┴───────────────────┴──┐       ┌────┴────────────────────┴───┐
   │ br0  10.77.0.0/24            pn-fabric         │       │ br1  10.77.1.0/24            │
   └──────────────────────┬─────────────────────────┘       └───────────┬─────────────────┘
                          │ eth0 10.77.0.1      pn-router   10.77.1.1 eth1
                          └─────────────────── ip_forward ──────────────┘

With one subnet there is no router, only ``br0``; nodes and etcd then have no default route (there
is nothing beyond the subnet). Node ``i`` (1-based, over the whole lab) gets ``<net>.<s>.<10+i>``
in subnet ``s``; with two subnets the first ``ceil(N/2)`` nodes are in subnet 0. Node addresses are
unique across subnets so ``node-3`` is always ``.13``. The underlay is a /16 so tests can pick one
that never meets a user's lab (10.77.0.0/16 is the default). With ``prometheus`` (``podnet lab up
--prometheus``) one more host, ``pn-prometheus`` at ``<net>.0.5`` on ``br0``, runs the Prometheus
server (:mod:`podnet.lab.prometheus`).

With ``--etcd-members 3`` (1, 3 or 5) etcd is a cluster of that many members, each in a namespace of
its own on ``br0``: member 1 is ``pn-etcd`` at ``.2`` as always, member ``i`` > 1 is ``pn-etcd-<i>``
at ``.(4+i)`` (``.6``, ``.7``, …: below the nodes' ``.11``). They bootstrap statically
(:func:`initial_cluster`); agents and the kubelet get every member's client URL
(:attr:`Topology.etcd_endpoints`).
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass

from podnet.lab.naming import LabError, LabNames, link_name, node_name

PROFILES = ("calico", "cilium")
ENCAPSULATIONS = ("none", "vxlan", "ipip", "ipip-crosssubnet")
DEFAULT_UNDERLAY = "10.77.0.0/16"
UNDERLAY_MTU = 1500
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
FIRST_NODE_HOST = 10  # node i gets host number 10 + i
PROMETHEUS_HOST = 5  # .1 router, .2 etcd, .3 ext, .4 left for tests (ext's second address)
ETCD_HOST = 2  # member 1; member i > 1 gets ETCD_PEER_HOST_BASE + i (.6, .7, .8, .9)
ETCD_PEER_HOST_BASE = 4
ETCD_MEMBER_COUNTS = (1, 3, 5)  # odd: an even count tolerates no more failures than one less
MAX_NODES = 254 - FIRST_NODE_HOST


@dataclass(frozen=True)
class LabSpec:
    nodes: int = 3
    subnets: int = 1
    profile: str = "calico"
    encapsulation: str = "none"
    underlay: str = DEFAULT_UNDERLAY
    mtu: int = UNDERLAY_MTU
    bgp: bool = False  # Calico profile: BIRD on every node, node-to-node mesh
    dns: bool = False  # a cluster DNS (kube-system/kube-dns) and the test zone *.example.test on ext
    flows: bool = True  # ClusterConfiguration flows: a flow record per new connection
    prometheus: bool = False  # Prometheus in a namespace of its own, scraping every agent (lab/prometheus.py)
    etcd_members: int = 1  # an etcd cluster of this many members, each in its own namespace

    def __post_init__(self) -> None:
        problems = []
        if self.bgp and self.profile != "calico":
            problems.append("BGP (--bgp) belongs to the calico profile")
        if not 1 <= self.nodes <= MAX_NODES:
            problems.append(f"nodes must be 1..{MAX_NODES}, not {self.nodes}")
        if self.subnets not in (1, 2):
            problems.append(f"subnets must be 1 or 2, not {self.subnets}")
        if self.subnets == 2 and self.nodes < 2:
            problems.append("2 subnets need at least 2 nodes")
        if self.profile not in PROFILES:
            problems.append(f"profile must be one of {', '.join(PROFILES)}, not {self.profile!r}")
        if self.encapsulation not in ENCAPSULATIONS:
            problems.append(
                f"encapsulation must be one of {', '.join(ENCAPSULATIONS)}, not {self.encapsulation!r}"
            )
        try:
            net = ipaddress.IPv4Network(self.underlay)
            if net.prefixlen > 16:
                problems.append(f"underlay must be a /16 or larger, not /{net.prefixlen}")
        except ValueError as exc:
            problems.append(f"bad underlay {self.underlay!r}: {exc}")
        if self.etcd_members not in ETCD_MEMBER_COUNTS:
            problems.append(
                f"etcd members must be one of {', '.join(map(str, ETCD_MEMBER_COUNTS))}, not "
                f"{self.etcd_members} (an even count tolerates no more failures than one less)"
            )
        if not 1280 <= self.mtu <= 9000:
            problems.append(f"mtu must be 1280..9000, not {self.mtu}")
        if problems:
            raise LabError("invalid lab spec: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict) -> LabSpec:
        return cls(**{k: doc[k] for k in cls.__dataclass_fields__ if k in doc})


@dataclass(frozen=True)
class Subnet:
    index: int
    cidr: str  # 10.77.0.0/24
    bridge: str  # br0, in the fabric namespace
    gateway: str | None  # the router's address in this subnet, if there is a router


@dataclass(frozen=True)
class Attachment:
    """One veth between a host namespace and a fabric bridge."""

    ifname: str  # inside the host's namespace (eth0, eth1)
    port: str  # the peer, a port of ``bridge`` in the fabric namespace
    bridge: str
    address: str  # with prefix length: 10.77.0.11/24

    @property
    def ip(self) -> str:
        return self.address.split("/")[0]


@dataclass(frozen=True)
class Host:
    """A namespace attached to the fabric: a node, the router, the etcd host or the external client."""

    name: str  # node-1, router, etcd, ext
    kind: str  # node | router | etcd | ext
    netns: str
    subnet: int  # the subnet of the first attachment
    attachments: tuple[Attachment, ...]
    gateway: str | None = None  # default route via (None: no default route)
    ip_forward: bool = False

    @property
    def ip(self) -> str:
        return self.attachments[0].ip


@dataclass(frozen=True)
class Topology:
    spec: LabSpec
    names: LabNames
    fabric_ns: str
    subnets: tuple[Subnet, ...]
    nodes: tuple[Host, ...]
    etcd: Host
    router: Host | None = None
    external: Host | None = None  # a client outside the cluster, on subnet 0
    prometheus: Host | None = None  # LabSpec.prometheus: the Prometheus server, on subnet 0
    mtu: int = UNDERLAY_MTU
    etcd_client_port: int = ETCD_CLIENT_PORT
    etcd_peer_port: int = ETCD_PEER_PORT
    etcd_peers: tuple[Host, ...] = ()  # members 2..N of the etcd cluster (``etcd`` is member 1)

    @property
    def etcd_members(self) -> tuple[Host, ...]:
        """Every etcd member's host, member 1 first."""
        return (self.etcd, *self.etcd_peers)

    @property
    def hosts(self) -> tuple[Host, ...]:
        """Every attached namespace: router first (if any), then etcd, the external client,
        Prometheus (if any), the nodes."""
        return (
            ((self.router,) if self.router else ())
            + self.etcd_members
            + ((self.external,) if self.external else ())
            + ((self.prometheus,) if self.prometheus else ())
            + tuple(self.nodes)
        )

    @property
    def namespaces(self) -> list[tuple[str, str]]:
        """``(netns, kind)`` for every namespace the fabric creates, fabric first."""
        return [(self.fabric_ns, "fabric")] + [(h.netns, h.kind) for h in self.hosts]

    @property
    def etcd_endpoint(self) -> str:
        """Member 1's client URL."""
        return f"http://{self.etcd.ip}:{self.etcd_client_port}"

    @property
    def etcd_endpoints(self) -> str:
        """Every member's client URL, comma-separated (what ``--etcd-endpoints`` takes)."""
        return ",".join(f"http://{h.ip}:{self.etcd_client_port}" for h in self.etcd_members)

    @property
    def etcd_initial_cluster(self) -> str:
        return initial_cluster([(h.name, h.ip) for h in self.etcd_members], self.etcd_peer_port)

    def node(self, name: str) -> Host:
        for host in self.nodes:
            if host.name == name:
                return host
        raise LabError(f"no node {name!r} in this lab", hint=", ".join(h.name for h in self.nodes))

    def to_dict(self) -> dict:
        """A JSON-able summary (for the state file and the CLI)."""
        return {
            "spec": self.spec.to_dict(),
            "prefix": self.names.prefix,
            "fabric": self.fabric_ns,
            "subnets": [asdict(s) for s in self.subnets],
            "router": _host_dict(self.router) if self.router else None,
            "etcd": _host_dict(self.etcd) | {"endpoint": self.etcd_endpoint},
            "etcd_members": [_host_dict(h) for h in self.etcd_members],
            "external": _host_dict(self.external) if self.external else None,
            "prometheus": _host_dict(self.prometheus) if self.prometheus else None,
            "nodes": [_host_dict(h) for h in self.nodes],
            "mtu": self.mtu,
        }


def _host_dict(host: Host) -> dict:
    return {
        "name": host.name,
        "netns": host.netns,
        "ip": host.ip,
        "subnet": host.subnet,
        "gateway": host.gateway,
        "interfaces": [asdict(a) for a in host.attachments],
    }


def initial_cluster(members: list[tuple[str, str]], peer_port: int = ETCD_PEER_PORT) -> str:
    """etcd's ``--initial-cluster``: ``NAME=http://IP:PEER_PORT`` per member, comma-separated."""
    names = [name for name, _ in members]
    if not members or len(set(names)) != len(names):
        raise LabError(f"etcd members need distinct names, got {names}")
    return ",".join(f"{name}=http://{ip}:{peer_port}" for name, ip in members)


def etcd_member_host(index: int) -> int:
    """The host number of etcd member ``index`` (1-based) on subnet 0."""
    return ETCD_HOST if index == 1 else ETCD_PEER_HOST_BASE + index


def random_underlay() -> str:
    """A random ``10.x.0.0/16`` for a throw-away lab (tests, benchmarks) that meets neither the
    default pod pool (10.244.0.0/16) nor the default service range (10.96.0.0/12 = 10.96 to 10.111)."""
    import random

    return f"10.{random.choice([x for x in range(112, 251) if x != 244])}.0.0/16"


def subnet_cidr(underlay: str, index: int) -> ipaddress.IPv4Network:
    """The ``index``-th /24 of the underlay: 10.77.0.0/16, 1 → 10.77.1.0/24."""
    return list(ipaddress.IPv4Network(underlay).subnets(new_prefix=24))[index]


def node_subnet(spec: LabSpec, index: int) -> int:
    """Subnet of node ``index`` (1-based): the first ceil(N/2) nodes in subnet 0 when there are 2."""
    if spec.subnets == 1:
        return 0
    return 0 if index <= (spec.nodes + 1) // 2 else 1


def build_topology(spec: LabSpec | None = None, names: LabNames | None = None) -> Topology:
    spec = spec or LabSpec()
    names = names or LabNames()
    nets = [subnet_cidr(spec.underlay, i) for i in range(spec.subnets)]
    routed = spec.subnets > 1

    def addr(subnet: int, host: int) -> str:
        return f"{nets[subnet].network_address + host}/24"

    def gw(subnet: int) -> str | None:
        return str(nets[subnet].network_address + 1) if routed else None

    subnets = tuple(Subnet(i, str(net), f"br{i}", gw(i)) for i, net in enumerate(nets))
    router = None
    if routed:
        router = Host(
            name="router",
            kind="router",
            netns=names.router_ns,
            subnet=0,
            attachments=tuple(
                Attachment(link_name(f"eth{i}"), link_name(f"router-{i}"), s.bridge, addr(i, 1))
                for i, s in enumerate(subnets)
            ),
            ip_forward=True,
        )
    etcd = Host(
        name="etcd",
        kind="etcd",
        netns=names.etcd_ns,
        subnet=0,
        attachments=(Attachment("eth0", "etcd", "br0", addr(0, ETCD_HOST)),),
        gateway=gw(0),
    )
    etcd_peers = tuple(
        Host(
            name=f"etcd-{i}",
            kind="etcd",
            netns=names.etcd_member_ns(i),
            subnet=0,
            attachments=(Attachment("eth0", link_name(f"etcd-{i}"), "br0", addr(0, etcd_member_host(i))),),
            gateway=gw(0),
        )
        for i in range(2, spec.etcd_members + 1)
    )
    external = Host(
        name="ext",
        kind="ext",
        netns=names.ext_ns,
        subnet=0,
        attachments=(Attachment("eth0", link_name("ext"), "br0", addr(0, 3)),),
        gateway=gw(0),
    )
    prometheus = None
    if spec.prometheus:
        prometheus = Host(
            name="prometheus",
            kind="other",  # the state's namespace kinds (lab/state.py NETNS_ORDER), as the tor's
            netns=names.prometheus_ns,
            subnet=0,
            attachments=(Attachment("eth0", link_name("prometheus"), "br0", addr(0, PROMETHEUS_HOST)),),
            gateway=gw(0),
        )
    nodes = []
    for i in range(1, spec.nodes + 1):
        s = node_subnet(spec, i)
        name = node_name(i)
        nodes.append(
            Host(
                name=name,
                kind="node",
                netns=names.node_ns(name),
                subnet=s,
                attachments=(
                    Attachment("eth0", link_name(name), subnets[s].bridge, addr(s, FIRST_NODE_HOST + i)),
                ),
                gateway=gw(s),
                ip_forward=True,
            )
        )
    return Topology(
        spec=spec,
        names=names,
        fabric_ns=names.fabric_ns,
        subnets=subnets,
        nodes=tuple(nodes),
        etcd=etcd,
        etcd_peers=etcd_peers,
        router=router,
        external=external,
        prometheus=prometheus,
        mtu=spec.mtu,
    )
