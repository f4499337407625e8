"""``podnet bpf``: BPF programs and maps as the kernel holds them, like ``cilium bpf …``.

``prog list``: without ``--node`` it lists the current network namespace (the agent's node); with
``--node`` the lab node's namespace. One row per attachment: device, hook direction, tc pref,
program name, id, tag, and the maps the program uses with their pinned paths.

``lb list``: the socket load balancer's pinned maps (``podnet.dataplane.sock_lb``), one row per
service address then one per backend slot, as the programs see them::

    SERVICE ADDRESS      BACKEND ADDRESS (ID) (SLOT)
    10.96.0.10:80/TCP    0.0.0.0:0 (1) (0) [3 backends]
                         10.244.1.5:8080 (1) (1)

The pins of node N are ``<bpf dir>/<N>/sock_lb``: the lab's bpffs (``<state dir>/bpf``) with
``--node``, else ``/sys/fs/bpf/podnet/<this host's name>/sock_lb``; ``--pin-dir`` names it outright.

The Cilium profile's datapath (``podnet.dataplane.lxc``), read from its pins ``<bpf dir>/<N>/lxc``
(:func:`lxc_pin_dir`: with ``--node`` the lab node's, or ``/sys/fs/bpf/podnet/<N>/lxc`` when no lab
is up; without ``--node`` every node of the lab that is up (a NODE column first), or this host's;
``--pin-dir`` names it outright). Like their ``cilium bpf`` namesakes:

``endpoint list``: one row per endpoint record: endpoint id, host ifindex, IPv4, pod MAC, host
veth MAC, identity, ingress and egress enforcement (Enabled/Disabled), ready or not-ready.

``ipcache list``: prefix, identity (reserved ones named: ``1 (reserved:host)``), ``pod`` flag.

``policy get NS/POD``: the entries of the pod's endpoint (found by the pod's IP on its
spec.nodeName, or ``--node``), after a line on the endpoint; labels one per line, as Cilium::

    np/api on node-1: endpoint 2, 10.244.1.3, identity 31187, ingress enforced, egress not enforced
    POLICY  DIRECTION  IDENTITY  LABELS (source:key[=value])  PORT/PROTO     PROXY PORT  ENTRY  ...
    Allow   Ingress    1         reserved:host                ANY            NONE        1
    Allow   Ingress    48213     k8s:app=web                  8080/TCP       NONE        3
                                 k8s:io.kubernetes.pod.namespace=np
    Deny    Ingress    ANY       -                            8000-8003/TCP  NONE        4

``ct list [NODE]``: one row per conntrack entry: protocol, ``saddr:sport -> daddr:dport``, the
endpoint and its direction of the first packet, EXPIRES (its CLOCK_MONOTONIC second minus now, or
``expired``), packets and bytes forward/reply, flags, peer identity, the policy entry that allowed it.

A port range is stored as port prefixes: ``8000/14`` is shown as ``8000-8003`` (``-o json`` keeps
``port`` and ``prefix``). PACKETS/BYTES of a policy entry count the packets it decided
(``pn_entry_stats``): a connection's first packet (the rest follow its conntrack entry). Reading
pins needs root. The lab: ``--lab-prefix`` or ``$PODNET_LAB_PREFIX`` (default ``pn-``).
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from podnet.cli.printers import align
from podnet.errors import PodnetError

DEFAULT_BPF_DIR = "/sys/fs/bpf/podnet"  # the agent's --bpf-dir default
PROTOCOLS = {0: "ANY", 1: "ICMP", 6: "TCP", 17: "UDP", 58: "ICMPv6", 132: "SCTP"}
LAB_HINT = "podnet lab status lists the nodes; --lab-prefix or $PODNET_LAB_PREFIX picks the lab"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bpf_object", metavar="OBJECT")
    sub.required = True
    prog = sub.add_parser("prog", help="BPF programs")
    verbs = prog.add_subparsers(dest="bpf_verb", metavar="VERB")
    verbs.required = True
    show = verbs.add_parser("list", help="programs attached to tc hooks (device, direction, maps)")
    show.add_argument("--node", default=None, help="a lab node (default: this network namespace)")
    show.add_argument("-o", "--output", choices=["table", "json"], default="table")
    lb = sub.add_parser("lb", help="socket load balancer maps (services and backends)")
    lb_verbs = lb.add_subparsers(dest="bpf_verb", metavar="VERB")
    lb_verbs.required = True
    lb_list = lb_verbs.add_parser("list", help="service addresses and their backend slots")
    lb_list.add_argument("--node", default=None, help="a lab node (default: this host's agent)")
    lb_list.add_argument("--pin-dir", default=None, help="the sock_lb pin directory (overrides --node)")
    lb_list.add_argument("-o", "--output", choices=["text", "table", "json"], default="text")

    every = "a lab node (default: every node of the lab that is up, else this host)"
    endpoint = _verbs(sub, "endpoint", "Cilium profile: the endpoint map (one record per pod)")
    _pin_options(
        endpoint.add_parser("list", help="endpoint records: id, ifindex, IPv4, MACs, identity"), every
    )
    ipcache = _verbs(sub, "ipcache", "Cilium profile: the ipcache (prefix -> security identity)")
    _pin_options(ipcache.add_parser("list", help="prefixes and their identities"), every)
    policy = _verbs(sub, "policy", "Cilium profile: the policy map of a pod's endpoint")
    get = policy.add_parser("get", help="the policy map entries of one pod's endpoint")
    get.add_argument("pod", metavar="NS/POD", help="the pod (namespace default when only POD)")
    _pin_options(get, "the pod's node (default: its spec.nodeName)")
    ct = _verbs(sub, "ct", "Cilium profile: the connection tracking map")
    ct_list = ct.add_parser("list", help="conntrack entries (like cilium bpf ct list global)")
    ct_list.add_argument("node", nargs="?", default=None, metavar="NODE", help=every)
    _pin_options(ct_list, None)


def _verbs(sub: Any, name: str, help_text: str) -> Any:
    parser = sub.add_parser(name, help=help_text)
    verbs = parser.add_subparsers(dest="bpf_verb", metavar="VERB")
    verbs.required = True
    return verbs


def _pin_options(parser: argparse.ArgumentParser, node_help: str | None) -> None:
    if node_help:
        parser.add_argument("--node", default=None, help=node_help)
    parser.add_argument("--pin-dir", default=None, help="the lxc pin directory (overrides the node's)")
    parser.add_argument(
        "--lab-prefix", default=None, help="the lab's prefix (default: $PODNET_LAB_PREFIX or pn-)"
    )
    parser.add_argument("-o", "--output", choices=["table", "json"], default="table")


def lb_pin_dir(node: str | None, pin_dir: str | None = None) -> str:
    """Where node ``node``'s socket-LB maps are pinned (see the module docstring)."""
    import socket

    if pin_dir:
        return pin_dir
    if node:
        from podnet.lab.cluster import lab_names

        return os.path.join(lab_names().state_dir, "bpf", node, "sock_lb")
    return os.path.join(DEFAULT_BPF_DIR, socket.gethostname(), "sock_lb")


# ------------------------------------------------------------------------ where the lxc pins are


@dataclass(frozen=True)
class Target:
    """One node's Cilium datapath pins: ``node`` None for this host's; ``lab`` the lab prefix when
    the directory is a lab node's (for the hints)."""

    node: str | None
    pin_dir: str
    lab: str | None = None


def _natural(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _lab_nodes(prefix: str | None) -> tuple[str, list[str]] | None:
    """(prefix, nodes) of the lab that is up, or None; an error when ``prefix`` (``--lab-prefix``)
    names a lab that is not up."""
    from podnet.lab.cluster import lab_names
    from podnet.lab.naming import LabError
    from podnet.lab.state import LabState

    names = lab_names(prefix)
    state = LabState(names.state_dir)
    if not state.exists():
        if prefix:
            raise LabError(f"no lab with prefix {names.prefix} is up", hint=LAB_HINT)
        return None
    return names.prefix, sorted(state.meta().get("nodes") or {}, key=_natural)


def lxc_pin_dir(node: str | None, pin_dir: str | None = None, prefix: str | None = None) -> str:
    """Where node ``node``'s Cilium datapath is pinned: ``pin_dir`` when given; the lab node's
    (``<state dir>/bpf/<node>/lxc``) when a lab is up; else the agent's default bpf dir, for
    ``node`` or this host."""
    return _target(node, pin_dir, prefix).pin_dir


def _target(node: str | None, pin_dir: str | None, prefix: str | None) -> Target:
    import socket

    from podnet.agent.cilium_datapath import pin_dir_for

    if pin_dir:
        return Target(node, pin_dir)
    if node:
        lab = _lab_nodes(prefix)
        if lab is None:
            return Target(node, pin_dir_for(DEFAULT_BPF_DIR, node))
        from podnet.lab.cluster import lab_names
        from podnet.lab.naming import LabError

        if node not in lab[1]:
            raise LabError(f"no node {node} in the lab with prefix {lab[0]}", hint=LAB_HINT)
        return Target(node, pin_dir_for(os.path.join(lab_names(prefix).state_dir, "bpf"), node), lab[0])
    return Target(None, pin_dir_for(DEFAULT_BPF_DIR, socket.gethostname()))


def targets(node: str | None, pin_dir: str | None, prefix: str | None) -> list[Target]:
    """The pin directories a list command reads: the one named, or every lab node's, or this host's."""
    if node or pin_dir:
        return [_target(node, pin_dir, prefix)]
    lab = _lab_nodes(prefix)
    if lab is None:
        return [_target(None, None, prefix)]
    if not lab[1]:
        from podnet.lab.naming import LabError

        raise LabError(f"the lab with prefix {lab[0]} has no nodes", hint=LAB_HINT)
    return [_target(n, None, prefix) for n in lab[1]]


def missing_pins_error(
    pin_dir: str, map_name: str, target: Target | None = None, root: bool = True
) -> PodnetError:
    """Pure: the error of a pin directory without ``map_name`` (a clear path and what to check)."""
    from podnet.dataplane.lxc import LxcError

    node = target.node if target else None
    message = f"no Cilium datapath pinned in {pin_dir} ({map_name} is missing)"
    if node:
        message = f"{node}: {message}"
    hints = [] if root else ["reading pinned BPF maps needs root (sudo)"]
    if target is not None and target.lab:
        hints.append(
            f"is the lab with prefix {target.lab} a Cilium-profile lab (podnet lab up --profile cilium) "
            f"and {node}'s agent running? podnet lab status shows the agents"
        )
    else:
        hints.append(
            "is this a Cilium-profile node whose agent has loaded its datapath? "
            "--node picks a lab node, --pin-dir names the pin directory"
        )
    return LxcError(message, hint="; ".join(hints))


def _read(target: Target, map_name: str, reader: Callable[[str], Any]) -> Any:
    """``reader(pin_dir)``, with a clear error when the pins are not there or not readable."""
    from podnet.dataplane.bpf import BpfError

    root = os.geteuid() == 0
    if not os.path.exists(os.path.join(target.pin_dir, map_name)):
        raise missing_pins_error(target.pin_dir, map_name, target, root)
    try:
        return reader(target.pin_dir)
    except BpfError as exc:
        if exc.hint is None and not root:
            exc.hint = "reading pinned BPF maps needs root (sudo)"
        raise


def _entry_counters(pin_dir: str, entry_ids: Iterable[int]) -> dict[int, tuple[int, int]] | None:
    """entry id -> (packets, bytes) summed over CPUs from ``pn_entry_stats``; None without it."""
    from podnet.dataplane import cilium_maps as cm
    from podnet.dataplane.bpf import BpfMap
    from podnet.dataplane.lxc import ENTRY_STATS

    path = os.path.join(pin_dir, ENTRY_STATS)
    if not os.path.exists(path):
        return None
    out = {}
    with BpfMap(path) as m:
        for entry_id in entry_ids:
            if not entry_id:
                continue
            packets = octets = 0
            for value in m.percpu_values(m.lookup(cm.u32_key(entry_id)) or b""):
                packets += int.from_bytes(value[:8], "little")
                octets += int.from_bytes(value[8:16], "little")
            out[entry_id] = (packets, octets)
    return out


# ------------------------------------------------------------------------------------------ run


def run(args: argparse.Namespace) -> int:
    import json

    if args.bpf_object in ("endpoint", "ipcache", "ct"):
        return _run_lists(args)
    if args.bpf_object == "policy":
        return _run_policy(args)
    if args.bpf_object == "lb":
        from podnet.dataplane.sock_lb import list_services

        services = list_services(lb_pin_dir(args.node, args.pin_dir))
        if args.output == "json":
            print(json.dumps(services, indent=2))
        else:
            print(render_lb_table(services), end="")
        return 0

    from podnet.dataplane.bpf import list_programs

    netns = None
    if args.node:
        from podnet.lab.cluster import lab_names

        netns = lab_names().node_ns(args.node)
    progs = list_programs(netns)
    if args.output == "json":
        print(json.dumps(progs, indent=2))
    else:
        print(render_table(progs), end="")
    return 0


def _run_lists(args: argparse.Namespace) -> int:
    """endpoint list, ipcache list, ct list: every target node; 1 when some (not all) failed."""
    import json
    import sys
    import time

    from podnet.dataplane import lxc

    kind = args.bpf_object
    rows: list[dict[str, Any]] = []
    failures: list[PodnetError] = []
    nodes = targets(args.node, args.pin_dir, args.lab_prefix)
    for target in nodes:
        try:
            if kind == "endpoint":
                rows += endpoint_rows(target.node, _read(target, lxc.ENDPOINTS, lxc.pinned_endpoints))
            elif kind == "ipcache":
                rows += ipcache_rows(target.node, _read(target, lxc.IPCACHE, lxc.pinned_ipcache))
            else:
                entries = _read(target, lxc.CT, lxc.pinned_ct)
                rows += ct_rows(target.node, entries, int(time.monotonic()))
        except PodnetError as exc:
            if len(nodes) == 1:
                raise
            failures.append(exc)
    if failures and len(failures) == len(nodes):
        raise failures[0]
    if args.output == "json":
        print(json.dumps(rows, indent=2))
    else:
        render = {"endpoint": render_endpoint_table, "ipcache": render_ipcache_table, "ct": render_ct_table}
        print(render[kind](rows), end="")
    sys.stdout.flush()
    for exc in failures:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
    return 1 if failures else 0


def _run_policy(args: argparse.Namespace) -> int:
    import json

    from podnet.cli.context import resource_store
    from podnet.dataplane import lxc
    from podnet.model import lookup

    if args.lab_prefix and not args.etcd_endpoints and not os.environ.get("PODNET_ETCD_ENDPOINTS"):
        from podnet.lab.cluster import lab_names, running_endpoint

        args.etcd_endpoints = running_endpoint(lab_names(args.lab_prefix))
    namespace, _, name = args.pod.rpartition("/")
    namespace = namespace or "default"
    store = resource_store(args)
    pod = store.get(lookup("pods"), name, namespace)
    key = f"{namespace}/{name}"
    if pod.spec.host_network:
        raise PodnetError(f"pod {key} uses the host's network: it has no endpoint of its own")
    ip = pod.status.pod_ip if pod.status else None
    if not ip:
        raise PodnetError(f"pod {key} has no address yet", hint="podnet lab wait; podnet get pods -o wide")
    node = args.node or pod.spec.node_name
    if not node and not args.pin_dir:
        raise PodnetError(f"pod {key} has no spec.nodeName", hint="--node names the node it runs on")
    target = _target(node, args.pin_dir, args.lab_prefix)
    endpoints = _read(target, lxc.ENDPOINTS, lxc.pinned_endpoints)
    found = find_endpoint(endpoints, ip)
    if found is None:
        from podnet.errors import NotFoundError

        where = f"node {node}" if node else target.pin_dir
        raise NotFoundError(
            f"no endpoint with IP {ip} (pod {key}) on {where}",
            hint=f"podnet bpf endpoint list{f' --node {node}' if node else ''} shows the node's endpoints; "
            "the CNI may not have wired the pod yet",
        )
    ifindex, record = found
    entries = [e for e in _read(target, lxc.POLICY, lxc.pinned_policy) if e.endpoint == record.endpoint]
    counters = _entry_counters(target.pin_dir, (e.entry_id for e in entries))
    cidrs: dict[int, list[str]] = {}
    try:
        for prefix, (identity, _flags) in lxc.pinned_ipcache(target.pin_dir).items():
            cidrs.setdefault(identity, []).append(prefix)
    except PodnetError:
        pass  # labels of CIDR identities are a nicety
    labels = identity_labels(_allocated_labels(store), cidrs)
    doc = policy_doc(key, node, ifindex, record, entries, labels, counters)
    if args.output == "json":
        print(json.dumps(doc, indent=2))
    else:
        print(render_policy(doc), end="")
    return 0


def _allocated_labels(store: Any) -> dict[int, list[str]]:
    from podnet.datastore.identity_alloc import list_identities

    try:
        return {n: list(ls.labels) for n, ls in list_identities(store.store, store.layout).items()}
    except PodnetError:
        return {}


# ------------------------------------------------------------------------------- pure: data


def protocol_name(number: int) -> str:
    return PROTOCOLS.get(number, str(number))


def port_range(port: int, prefix: int) -> tuple[int, int]:
    """The ports a port prefix covers: ``(8000, 14)`` -> ``(8000, 8003)``."""
    return port, port | (0xFFFF >> prefix)


def port_proto(protocol: int, port: int, prefix: int) -> str:
    """``ANY`` (any protocol), ``ANY/TCP`` (every port), ``80/TCP``, ``8000-8003/TCP`` (a prefix)."""
    if protocol == 0:
        return "ANY"
    if prefix == 0:
        return f"ANY/{protocol_name(protocol)}"
    first, last = port_range(port, prefix)
    return (
        f"{first}/{protocol_name(protocol)}" if first == last else f"{first}-{last}/{protocol_name(protocol)}"
    )


def identity_text(identity: int) -> str:
    """The number, with its reserved name or ``cidr`` (what the maps alone tell)."""
    from podnet.model.identity import describe

    kind = describe(identity)
    return f"{identity} ({kind})" if kind.startswith("reserved:") or kind == "cidr" else str(identity)


def identity_labels(
    allocated: Mapping[int, list[str]], cidrs: Mapping[int, list[str]]
) -> Callable[[int], list[str]]:
    """identity -> its labels: reserved ones by name, cluster ones as allocated in the datastore,
    a node-local CIDR identity as ``cidr:<prefix>`` of the ipcache; [] for 0 (any identity)."""
    from podnet.model.identity import RESERVED_NAMES, describe

    def labels(identity: int) -> list[str]:
        if identity == 0:
            return []
        if identity in RESERVED_NAMES:
            return [f"reserved:{RESERVED_NAMES[identity]}"]
        if describe(identity) == "cidr":
            return [f"cidr:{p}" for p in sorted(cidrs.get(identity, []))] or ["cidr"]
        return list(allocated.get(identity) or ["(unknown identity)"])

    return labels


def endpoint_rows(node: str | None, endpoints: Mapping[int, Any]) -> list[dict[str, Any]]:
    """Pure: ``pinned_endpoints`` (ifindex -> EndpointValue) as rows, by endpoint id."""
    rows = []
    for ifindex, ep in sorted(endpoints.items(), key=lambda item: (item[1].endpoint, item[0])):
        rows.append({"node": node, "ifindex": ifindex, **asdict(ep)})
    return rows


def _node_column(rows: list[dict[str, Any]]) -> bool:
    return any(r.get("node") for r in rows)


def _lines(header: tuple[str, ...], body: list[tuple[str, ...]]) -> str:
    return "".join(line + "\n" for line in align([header, *body], gap="  "))


def render_endpoint_table(rows: list[dict[str, Any]]) -> str:
    """Pure: the table ``podnet bpf endpoint list`` prints."""
    if not rows:
        return "no endpoints in the endpoint map\n"
    header: tuple[str, ...] = (
        "ENDPOINT", "IFINDEX", "IPV4", "MAC", "HOST MAC", "IDENTITY", "INGRESS POLICY", "EGRESS POLICY",
        "STATUS",
    )  # fmt: skip
    body = [
        (
            str(r["endpoint"]),
            str(r["ifindex"]),
            r["ipv4"],
            r["mac"],
            r["host_mac"],
            identity_text(r["identity"]),
            "Enabled" if r["ingress_enforced"] else "Disabled",
            "Enabled" if r["egress_enforced"] else "Disabled",
            "ready" if r["ready"] else "not-ready",
        )
        for r in rows
    ]
    if _node_column(rows):
        header = ("NODE", *header)
        body = [(r.get("node") or "-", *b) for r, b in zip(rows, body, strict=True)]
    return _lines(header, body)


def ipcache_rows(node: str | None, cache: Mapping[str, tuple[int, int]]) -> list[dict[str, Any]]:
    """Pure: ``pinned_ipcache`` (prefix -> (identity, flags)) as rows, by address then length."""
    import ipaddress

    from podnet.dataplane.cilium_maps import IPCACHE_POD

    def order(prefix: str) -> tuple[int, int, int]:
        net = ipaddress.ip_network(prefix, strict=False)
        return net.version, int(net.network_address), net.prefixlen

    return [
        {
            "node": node,
            "prefix": p,
            "identity": cache[p][0],
            "flags": cache[p][1],
            "pod": bool(cache[p][1] & IPCACHE_POD),
        }
        for p in sorted(cache, key=order)
    ]


def render_ipcache_table(rows: list[dict[str, Any]]) -> str:
    """Pure: the table ``podnet bpf ipcache list`` prints."""
    if not rows:
        return "no entries in the ipcache\n"
    header: tuple[str, ...] = ("PREFIX", "IDENTITY", "FLAGS")
    body = [(r["prefix"], identity_text(r["identity"]), "pod" if r["pod"] else "-") for r in rows]
    if _node_column(rows):
        header = ("NODE", *header)
        body = [(r.get("node") or "-", *b) for r, b in zip(rows, body, strict=True)]
    return _lines(header, body)


def find_endpoint(endpoints: Mapping[int, Any], ipv4: str) -> tuple[int, Any] | None:
    """Pure: (ifindex, record) of the endpoint whose IPv4 is ``ipv4``."""
    for ifindex, record in sorted(endpoints.items()):
        if record.ipv4 == ipv4:
            return ifindex, record
    return None


def policy_doc(
    pod: str,
    node: str | None,
    ifindex: int,
    record: Any,
    entries: Iterable[Any],
    labels: Callable[[int], list[str]],
    counters: Mapping[int, tuple[int, int]] | None,
) -> dict[str, Any]:
    """Pure: what ``podnet bpf policy get -o json`` prints: the endpoint and its entries
    (``PinnedEntry``), ingress first, then by identity, protocol and port."""
    out = []
    order = {"ingress": 0, "egress": 1}
    for e in sorted(entries, key=lambda e: (order.get(e.key.direction, 2), e.key.identity, e.key)):
        k = e.key
        first, last = port_range(k.port, k.prefix) if k.protocol else (0, 65535)
        counted = counters.get(e.entry_id) if counters is not None and e.entry_id else None
        out.append(
            {
                "direction": k.direction,
                "identity": k.identity,
                "labels": labels(k.identity),
                "protocol": k.protocol,
                "port": k.port,
                "prefix": k.prefix,
                "ports": [first, last],
                "deny": e.deny,
                "proxy_port": e.proxy_port,
                "entry_id": e.entry_id,
                "packets": counted[0] if counted else None,
                "bytes": counted[1] if counted else None,
            }
        )
    return {
        "pod": pod,
        "node": node,
        "ifindex": ifindex,
        "endpoint": record.endpoint,
        "ipv4": record.ipv4,
        "identity": record.identity,
        "ingress_enforced": record.ingress_enforced,
        "egress_enforced": record.egress_enforced,
        "ready": record.ready,
        "entries": out,
    }


def _enforced(on: bool) -> str:
    return "enforced" if on else "not enforced (allows all)"


def render_policy(doc: dict[str, Any]) -> str:
    """Pure: what ``podnet bpf policy get`` prints: one line on the endpoint, then the entries, a
    label per line as Cilium prints them."""
    where = f" on {doc['node']}" if doc.get("node") else ""
    head = (
        f"{doc['pod']}{where}: endpoint {doc['endpoint']}, {doc['ipv4']}, identity {doc['identity']}, "
        f"ingress {_enforced(doc['ingress_enforced'])}, egress {_enforced(doc['egress_enforced'])}"
        f"{'' if doc['ready'] else ', NOT READY (every new connection refused)'}\n"
    )
    if not doc["entries"]:
        return head + "no policy map entries\n"
    header = (
        "POLICY", "DIRECTION", "IDENTITY", "LABELS (source:key[=value])", "PORT/PROTO", "PROXY PORT",
        "ENTRY", "PACKETS", "BYTES",
    )  # fmt: skip
    body: list[tuple[str, ...]] = []
    for e in doc["entries"]:
        labels = e["labels"] or ["-"]
        body.append(
            (
                "Deny" if e["deny"] else "Allow",
                e["direction"].capitalize(),
                "ANY" if e["identity"] == 0 else str(e["identity"]),
                labels[0],
                port_proto(e["protocol"], e["port"], e["prefix"]),
                str(e["proxy_port"]) if e["proxy_port"] else "NONE",
                str(e["entry_id"]) if e["entry_id"] else "-",
                "-" if e["packets"] is None else str(e["packets"]),
                "-" if e["bytes"] is None else str(e["bytes"]),
            )
        )
        body.extend(("", "", "", label, "", "", "", "", "") for label in labels[1:])
    return head + _lines(header, body)


def expires_text(seconds: int) -> str:
    return "expired" if seconds < 0 else f"{seconds}s"


def ct_rows(node: str | None, entries: Iterable[Any], now: int) -> list[dict[str, Any]]:
    """Pure: ``pinned_ct`` entries as rows (``expires_in``: seconds from ``now``, CLOCK_MONOTONIC),
    by endpoint, direction, then addresses and ports."""
    import ipaddress

    def order(e: Any) -> tuple:
        return (e.endpoint, e.direction, e.protocol, ipaddress.IPv4Address(e.saddr), e.sport,
                ipaddress.IPv4Address(e.daddr), e.dport)  # fmt: skip

    rows = []
    for e in sorted(entries, key=order):
        doc = asdict(e)
        doc["flags"] = list(e.flags)
        rows.append({"node": node, **doc, "expires_in": e.expires - now, "expired": e.expires < now})
    return rows


def render_ct_table(rows: list[dict[str, Any]]) -> str:
    """Pure: the table ``podnet bpf ct list`` prints."""
    if not rows:
        return "no entries in the conntrack map\n"
    header: tuple[str, ...] = (
        "PROTO", "SOURCE -> DESTINATION", "ENDPOINT", "DIRECTION", "EXPIRES", "PACKETS FWD/REV",
        "BYTES FWD/REV", "FLAGS", "PEER IDENTITY", "ENTRY",
    )  # fmt: skip
    body = [
        (
            protocol_name(r["protocol"]),
            f"{r['saddr']}:{r['sport']} -> {r['daddr']}:{r['dport']}",
            str(r["endpoint"]),
            r["direction"],
            expires_text(r["expires_in"]),
            f"{r['packets_fwd']}/{r['packets_rev']}",
            f"{r['bytes_fwd']}/{r['bytes_rev']}",
            ",".join(r["flags"]) or "-",
            identity_text(r["peer_identity"]),
            str(r["entry_id"]) if r["entry_id"] else "-",
        )
        for r in rows
    ]
    if _node_column(rows):
        header = ("NODE", *header)
        body = [(r.get("node") or "-", *b) for r, b in zip(rows, body, strict=True)]
    return _lines(header, body)


# ------------------------------------------------------------------ pure: prog list, lb list


def _maps(prog: dict[str, Any]) -> str:
    parts = []
    for m in prog.get("maps", []):
        pins = m.get("pinned") or []
        parts.append(f"{m.get('name')}({m.get('id')}){' ' + pins[0] if pins else ''}")
    return ", ".join(parts) or "-"


def render_table(progs: list[dict[str, Any]]) -> str:
    """Pure: the table ``podnet bpf prog list`` prints."""
    if not progs:
        return "no BPF programs on tc hooks\n"
    header = ("DEVICE", "DIRECTION", "PREF", "NAME", "ID", "TAG", "MAPS")
    rows = [
        (
            str(p.get("device")),
            str(p.get("direction")),
            "-" if p.get("pref") is None else str(p["pref"]),
            str(p.get("name") or "-"),
            str(p.get("id")),
            str(p.get("tag") or "-"),
            _maps(p),
        )
        for p in progs
    ]
    return "".join(line + "\n" for line in align([header, *rows], gap="  "))


def render_lb_table(services: list[dict[str, Any]]) -> str:
    """Pure: the table ``podnet bpf lb list`` prints (``cilium bpf lb list``'s columns)."""
    if not services:
        return "no services in the socket load balancer maps\n"
    rows: list[tuple[str, str]] = []
    for svc in services:
        backends = svc.get("backends") or []
        notes = [
            f"{len(backends)} backend{'s' if len(backends) != 1 else ''}"
            if backends
            else "no backend: refused"
        ]
        if svc.get("affinity_seconds"):
            notes.append(f"affinity {svc['affinity_seconds']}s")
        rows.append((str(svc["service"]), f"0.0.0.0:0 ({svc['id']}) (0) [{', '.join(notes)}]"))
        rows.extend(("", f"{b['address']} ({svc['id']}) ({b['slot']})") for b in backends)
    header = ("SERVICE ADDRESS", "BACKEND ADDRESS (ID) (SLOT)")
    return "".join(line + "\n" for line in align([header, *rows], gap="  "))
