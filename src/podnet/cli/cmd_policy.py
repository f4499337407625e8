"""``podnet policy``: why a connection is allowed or denied, and whether the kernel agrees.

podnet policy explain --from NS/POD|IP --to NS/POD|IP --port 80/TCP [-o text|json]
podnet policy test [--port 80/TCP,81/UDP] [-n NS | -A] [--timeout S] [-o text|json]

Both compute the verdict the way the agents do: the datastore's resources go through the same
:class:`~podnet.calc.cluster.ClusterCache` and :func:`~podnet.calc.policy_inputs.compile_cluster`
(compiled for every pod, as if every node were asked), and ``explain`` walks the compiled form
(:mod:`podnet.calc.policy_explain`), so it names the tier, policy and rule that each node's
nftables table carries in its comments. In the Cilium profile both sides are decided from the
eBPF policy maps as the tc programs decide (:mod:`podnet.calc.explain_cilium`, every kind the
profile enforces: NetworkPolicy, CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy), naming the
deciding entry (peer identity, protocol, port) and its rules, or the default deny's policies.

``test`` probes every pod pair of the lab with real traffic (TCP connect / UDP datagram; a refused
connection counts as reached: the packet got through policy to a port nobody serves) and prints the
probed truth table beside the one ``explain`` predicts, marking each disagreement with ``!``. Its
exit code is 0 when the two agree everywhere, 1 otherwise.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
from dataclasses import dataclass
from typing import Any

from podnet.errors import NotFoundError, PodnetError

REACHED_DETAILS = ("refused",)  # the probe got through policy; nothing listened on the port


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="policy_command", metavar="SUBCOMMAND")
    sub.required = True
    explain = sub.add_parser("explain", help="the verdict for one connection and the rules that decided it")
    explain.add_argument("--from", dest="src", required=True, metavar="NS/POD|IP")
    explain.add_argument("--to", dest="dst", required=True, metavar="NS/POD|IP")
    explain.add_argument(
        "--port", required=True, metavar="PORT/PROTO|ICMP", help="e.g. 80/TCP, 53/UDP, ICMP (a ping)"
    )
    explain.add_argument("-o", "--output", choices=["text", "json"], default="text")
    test = sub.add_parser("test", help="probe every pod pair in the lab and compare with explain")
    test.add_argument("--port", metavar="PORT/PROTO,...", help="default: every declared containerPort")
    test.add_argument("-n", "--namespace", help="only pods of this namespace (default: every namespace)")
    test.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace (the default)")
    test.add_argument("--timeout", type=float, default=1.0, help="seconds before a probe counts as blocked")
    test.add_argument("-o", "--output", choices=["text", "json"], default="text")


def run(args: argparse.Namespace) -> int:
    return {"explain": _explain, "test": _test}[args.policy_command](args)


# ------------------------------------------------------------------------------- the compiled view


@dataclass
class ClusterPolicy:
    """Every pod, the compiled plan for all of them, and the policies by ``ns/name``."""

    cache: Any  # ClusterCache
    pods: dict[str, Any]  # "ns/name" -> PodInfo (pods with their own network)
    plan: Any  # PolicyPlan
    cilium: Any = None  # Cilium profile: node -> CiliumPlan (calc.policy_inputs.compile_cilium), cached

    def cilium_plan(self, node: str | None) -> Any:
        """The Cilium plan as ``node``'s agent compiles it (None: the first node), every pod local."""
        from podnet.calc.policy import datastore_address
        from podnet.calc.policy_inputs import compile_cilium

        node = node or min(self.cache.nodes, default="")
        if node not in self.cilium:
            endpoints = [datastore_address(e) for e in getattr(self.cache, "datastore_endpoints", [])]
            apiserver = [found[0] for found in endpoints if found is not None]
            self.cilium[node] = compile_cilium(self.cache, self.pods.values(), node, apiserver)
        return self.cilium[node]


def load(store) -> ClusterPolicy:
    """Read the resources and endpoint records as an agent does, and compile for every pod."""
    from podnet.calc.policy_inputs import compile_cluster
    from podnet.cli.context import cluster_cache

    cache = cluster_cache(store)
    pods = {p.key: p for p in cache.pod_infos()}
    profile = cache.config.effective().profile if cache.config else "calico"
    view = ClusterPolicy(cache, pods, compile_cluster(cache, pods.values(), profile))
    if profile == "cilium":
        view.cilium = {}
        cache.datastore_endpoints = list(getattr(store.store, "endpoints", []))
    return view


def resolve(view: ClusterPolicy, ref: str):
    """``NS/POD`` → its PodInfo (a host-network pod → its node's address); an IP stays an IP."""
    try:
        return str(ipaddress.ip_address(ref))
    except ValueError:
        pass
    namespace, _, name = ref.rpartition("/")
    key = f"{namespace or 'default'}/{name}"
    if key in view.pods:
        pod = view.pods[key]
        if not pod.ips:
            raise PodnetError(f"pod {key} has no address yet", hint="podnet lab wait")
        return pod
    stored = view.cache.pods.get(key)
    if stored is not None and stored.spec.host_network:
        ip = stored.status.pod_ip if stored.status else None
        if not ip:
            raise PodnetError(f"host-network pod {key} has no address yet", hint="podnet lab wait")
        return ip
    raise NotFoundError(f'pod "{key}" not found', hint="podnet get pods -A, or give an IP address")


def _label(end) -> str:
    return end if isinstance(end, str) else f"{end.key} ({end.ips[0] if end.ips else '-'})"


def rule_text(view: ClusterPolicy, provenance) -> str:
    """The rule as the user wrote it (compact JSON), or "" for a default deny."""
    if provenance.rule < 0:
        return ""
    policy = stored_policy(view.cache, provenance)
    if policy is None:
        return ""
    rules = getattr(policy.spec, provenance.direction, None)
    if not rules or provenance.rule >= len(rules):
        return ""
    doc = rules[provenance.rule].model_dump(mode="json", by_alias=True, exclude_none=True)
    return json.dumps(doc, separators=(",", ":"))


def stored_policy(cache: Any, provenance: Any) -> Any:
    """The cached object a provenance names, or None."""
    ref = f"{provenance.namespace}/{provenance.name}"
    by_kind = {
        "NetworkPolicy": lambda: cache.netpols.get(ref),
        "CalicoNetworkPolicy": lambda: cache.calico_policies.get(ref),
        "GlobalNetworkPolicy": lambda: cache.global_policies.get(provenance.name),
        "AdminNetworkPolicy": lambda: cache.admin_policies.get(provenance.name),
        "BaselineAdminNetworkPolicy": lambda: cache.baseline_policy,
        "ClusterNetworkPolicy": lambda: cache.cluster_policies.get(provenance.name),
    }
    found = by_kind.get(provenance.kind)
    return found() if found else None


# ------------------------------------------------------------------------------------------ explain


def predict(view: ClusterPolicy, src, dst, port: int, proto: str):
    """:func:`~podnet.calc.policy.explain` (Cilium profile: both sides from the eBPF maps,
    :mod:`podnet.calc.explain_cilium`), except that a pod always reaches itself (its own loopback
    never crosses the node's forward hook; Kubernetes' e2e suite expects it too)."""
    from podnet.calc.policy_explain import Verdict, explain

    if not isinstance(src, str) and not isinstance(dst, str) and src.key == dst.key:
        return Verdict(True, "loopback", ())
    if view.cilium is not None:
        from podnet.calc.explain_cilium import explain as explain_cilium

        sides = explain_cilium(view.cilium_plan, src, dst, port, proto)
        denied = next((s for s in sides if not s.allowed), None)
        decided = next((s for s in sides if s.enforced), None)
        by = denied or decided
        return Verdict(denied is None, by.direction if by else "not isolated", tuple(by.rules) if by else ())
    return explain(view.plan, src, dst, port, proto)


def cilium_sides(view: ClusterPolicy, src, dst, port: int, proto: str) -> dict[str, Any]:
    """Per direction, the Cilium profile's decision in the shape :func:`render_explain` reads."""
    from podnet.calc.explain_cilium import describe_key, explain, parse_provenance, policy_text

    out = {}
    for side in explain(view.cilium_plan, src, dst, port, proto):
        policies = [parse_provenance(p) for p in side.rules]
        step = side.reason + (f" by {describe_key(side.key)}" if side.key is not None else "")
        out[side.direction] = {
            "endpoint": side.endpoint,
            "isolated": side.enforced,
            "allowed": side.allowed,
            "peerIdentity": side.peer_identity,
            "walk": [step],
            "rules": [
                {
                    "policy": f"{p['namespace']}/{p['name']}" if p["namespace"] else p["name"],
                    "kind": p["kind"],
                    "tier": None,
                    "direction": side.direction,
                    "rule": p["rule"] if p["rule"] is not None and side.key is not None else -1,
                    "text": policy_text(p),
                    "spec": "",
                }
                for p in policies
            ],
        }
    return out


def explain_doc(view: ClusterPolicy, src, dst, port: int, proto: str) -> dict[str, Any]:
    """The verdict and, per direction, whether it is isolated and which rules decided."""
    from podnet.calc.policy_explain import explain_sides

    verdict = predict(view, src, dst, port, proto)
    doc: dict[str, Any] = {
        "from": src if isinstance(src, str) else src.key,
        "to": dst if isinstance(dst, str) else dst.key,
        "port": port,
        "protocol": proto,
        "verdict": "allowed" if verdict.allowed else "denied",
        "decidedBy": verdict.decided_by,
        "rules": [str(p) for p in verdict.rules],
        "walk": [f"{step.direction}: {step}" for step in verdict.walk],
    }
    if view.cilium is not None:
        doc |= cilium_sides(view, src, dst, port, proto)
        doc["walk"] = [
            f"{d}: {w}" for d in ("egress", "ingress") for w in doc[d]["walk"] if doc[d]["isolated"]
        ]
        return doc
    for side in explain_sides(view.plan, src, dst, port, proto):
        doc[side.direction] = {
            "endpoint": side.endpoint,
            "isolated": side.isolated,
            "allowed": side.allowed,
            "walk": [str(step) for step in side.walk],
            "rules": [
                {
                    "policy": f"{p.namespace}/{p.name}" if p.namespace else p.name,
                    "kind": p.kind,
                    "tier": p.tier,
                    "direction": p.direction,
                    "rule": p.rule,
                    "text": str(p),
                    "spec": rule_text(view, p),
                }
                for p in side.rules
            ],
        }
    return doc


def render_explain(doc: dict[str, Any], src_label: str, dst_label: str) -> str:
    verdict = doc["verdict"].upper()
    by = "" if doc["decidedBy"] == "not isolated" else f" (decided by {doc['decidedBy']})"
    lines = [f"{src_label} -> {dst_label} {doc['port']}/{doc['protocol']}: {verdict}{by}"]
    for direction, whose in (("egress", doc["from"]), ("ingress", doc["to"])):
        side = doc[direction]
        head = f"  {direction:7} of {whose}:"
        if not side["isolated"]:
            why = "not a pod podnet isolates" if side["endpoint"] is None else "no policy selects it"
            lines.append(f"{head} not isolated ({why} for {direction}): allowed")
            continue
        walk = " → ".join(side["walk"])
        if side["allowed"]:
            lines.append(f"{head} allowed: {walk}")
            for rule in side["rules"]:
                lines.append(f"      {rule['text']}: {rule['spec']}")
        elif side["rules"] and all(rule["rule"] >= 0 for rule in side["rules"]):
            lines.append(f"{head} denied: {walk}")
            for rule in side["rules"]:
                lines.append(f"      {rule['text']}: {rule['spec']}")
        else:
            deny = "the default deny of" if "peerIdentity" in side else "the end-of-tier deny of"
            lines.append(f"{head} denied: {walk}; {deny}")
            lines += [f"      {rule['kind']} {rule['policy']}" for rule in side["rules"]]
    return "\n".join(lines)


def _explain(args: argparse.Namespace) -> int:
    from podnet.cli.context import parse_port, resource_store

    if args.port.strip().upper() == "ICMP":
        port, proto = 0, "ICMP"  # an echo request (type 8, code 0), as podnet lab probe sends
    else:
        port, proto = parse_port(args.port, ("TCP", "UDP", "SCTP"))
    view = load(resource_store(args))
    src, dst = resolve(view, args.src), resolve(view, args.dst)
    try:
        doc = explain_doc(view, src, dst, port, proto)
    except ValueError as exc:
        raise PodnetError(str(exc)) from exc
    if args.output == "json":
        print(json.dumps(doc, indent=2))
    else:
        print(render_explain(doc, _label(src), _label(dst)))
    return 0


# --------------------------------------------------------------------------------------------- test


def declared_ports(view: ClusterPolicy, keys: list[str]) -> list[tuple[int, str]]:
    """Every distinct (containerPort, protocol) the pods declare, TCP and UDP only."""
    found = {
        (number, proto)
        for key in keys
        for _, number, proto in view.pods[key].ports
        if proto in ("TCP", "UDP")
    }
    return sorted(found, key=lambda p: (p[1], p[0]))


def compare(
    probed: dict[str, dict[str, Any]], view: ClusterPolicy, port: int, proto: str
) -> list[dict[str, Any]]:
    """Each probed pair next to the verdict ``explain`` predicts."""
    pairs = []
    for src, row in probed.items():
        for dst, result in row.items():
            reached = result.ok or result.detail in REACHED_DETAILS
            verdict = predict(view, view.pods[src], view.pods[dst], port, proto)
            pairs.append(
                {
                    "from": src,
                    "to": dst,
                    "probed": reached,
                    "detail": result.detail,
                    "explained": verdict.allowed,
                    "decidedBy": verdict.decided_by,
                    "rules": [str(p) for p in verdict.rules],
                    "agree": reached == verdict.allowed,
                }
            )
    return pairs


def render_comparison(port: int, proto: str, pairs: list[dict[str, Any]]) -> str:
    """Two grids side by side (probed, explain), rows = sources, columns = numbered targets."""
    sources = list(dict.fromkeys(p["from"] for p in pairs))
    targets = list(dict.fromkeys(p["to"] for p in pairs))
    cell = {(p["from"], p["to"]): p for p in pairs}
    width = max([len(s) for s in sources] + [len(f"{port}/{proto}")])
    cols = " ".join(f"{i + 1:>3}" for i in range(len(targets)))
    grid_width = len(cols)
    lines = [
        f"{f'{port}/{proto}':<{width}}  {'probed':<{grid_width}}    explain",
        f"{'':<{width}}  {cols}    {cols}",
    ]
    for s in sources:
        probed, explained = [], []
        for d in targets:
            p = cell.get((s, d))
            if p is None:
                probed.append("  -")
                explained.append("  -")
                continue
            mark = " " if p["agree"] else "!"
            probed.append(f" {'✓' if p['probed'] else '✗'}{mark}")
            explained.append(f" {'✓' if p['explained'] else '✗'}{mark}")
        lines.append(f"{s:<{width}}  {' '.join(probed)}    {' '.join(explained)}")
    lines += [f"{i + 1:>{width + 2}} = {d}" for i, d in enumerate(targets)]
    wrong = [p for p in pairs if not p["agree"]]
    lines.append(f"{len(pairs) - len(wrong)}/{len(pairs)} pairs agree")
    for p in wrong:
        said = "allowed" if p["explained"] else "denied"
        probed = "reached" if p["probed"] else "blocked"
        rules = ", ".join(p["rules"]) or "-"
        lines.append(
            f"  ! {p['from']} -> {p['to']}: probed {probed} ({p['detail']}), "
            f"explain says {said} ({p['decidedBy']}: {rules})"
        )
    return "\n".join(lines)


def _test(args: argparse.Namespace) -> int:
    from podnet.cli.context import parse_port, resource_store
    from podnet.lab.cluster import lab_names
    from podnet.lab.probe import probe_all

    store = resource_store(args)
    view = load(store)
    names = lab_names()
    only = None if args.all_namespaces else args.namespace
    keys = sorted(k for k, p in view.pods.items() if p.ips and (only is None or p.namespace == only))
    if len(keys) < 1:
        raise PodnetError("no pods with an address to probe", hint="podnet get pods -A; podnet lab wait")
    if args.port:
        ports = [parse_port(p) for p in args.port.split(",") if p.strip()]
    else:
        ports = declared_ports(view, keys)
    if not ports:
        raise PodnetError("the pods declare no TCP or UDP port", hint="give --port 80/TCP,53/UDP")
    sources = {k: names.pod_ns(view.pods[k].namespace, view.pods[k].name) for k in keys}
    targets = {k: view.pods[k].ips[0] for k in keys}
    report, disagreements = [], 0
    for port, proto in ports:
        pairs = compare(probe_all(sources, targets, port, proto, args.timeout), view, port, proto)
        disagreements += sum(not p["agree"] for p in pairs)
        report.append({"port": port, "protocol": proto, "pairs": pairs})
        if args.output == "text":
            print(render_comparison(port, proto, pairs))
            print()
    if args.output == "json":
        print(json.dumps({"ports": report, "disagreements": disagreements}, indent=2))
    else:
        total = sum(len(r["pairs"]) for r in report)
        print(
            f"{total - disagreements}/{total} probes agree with explain"
            + ("" if not disagreements else f"; {disagreements} disagree (marked !)")
        )
    return 0 if disagreements == 0 else 1
