"""NetworkPolicy status: what each node's agent reports, and the conditions a policy shows.

Each agent writes one :class:`PolicyReport` per node (``<root>status/policy/<node>``) after every
policy sync: the datastore revision it compiled, the revision its kernel ruleset last reached, the
error of a failed ``nft`` transaction, policies that did not compile, and stored policies that are
not valid (the agent keeps their last good version). ``podnet get netpol NAME -o yaml`` turns the
reports into ``status.conditions`` with :func:`conditions_for` (types from Kubernetes'
NetworkPolicyStatus, KEP-2943)::

    Accepted        True  Programmed          every reporting node's ruleset includes this version
    Accepted        False Pending             some nodes have not caught up yet (names them)
    Failure         True  CompileFailed       the policy cannot be compiled; it allows nothing
    Failure         True  ProgrammingFailed   nft refused a node's transaction; the previous ruleset
                                              is in force there and the agent retries (PartialFailure
                                              when only some nodes failed)
    Failure         True  InvalidObject       the stored object does not validate; nodes keep its
                                              last valid version
    Failure         True  PolicyMapFull       (Cilium profile) a node's policy map cannot hold every
                                              endpoint's entries: the endpoints named keep their
                                              previous policy, never a truncated one (cilium#9117)

Conditions about the object itself, from calc (``notes``; they do not change Accepted):

    L7Enforced      True  ProxyRedirect       CNP/CCNP HTTP and DNS rules: the nodes' proxies enforce them
    L7Enforced      False L7ProxyFailed       a node's proxy cannot run: its sync failed, the node
                                              keeps its previous maps (redirected ports fail closed)
    L7Enforced      Unknown NoProxy           no node runs the proxy yet (no local endpoint has them)
    FQDNLearnable   False NoDNSRule           toFQDNs applies to endpoints whose lookups no DNS rule
                                              sends to the DNS proxy: it can never allow anything

    Unsupported     True  NotCompiled         CNP/CCNP fields this profile does not compile: their
                                              sections allow nothing

Pure: no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class PolicyReport:
    node: str
    time: str  # RFC 3339, when the agent last synced policy
    revision: int  # datastore revision the last sync compiled
    applied_revision: int  # revision of the last sync nft accepted (0: never)
    error: str | None = None  # the last sync's nft error, if it failed
    compile_errors: dict[str, str] = field(default_factory=dict)  # "ns/name" -> why
    invalid: dict[str, str] = field(default_factory=dict)  # "ns/name" -> why the stored value is refused
    # "ns/name" -> why: local endpoints whose Pod object claims another node, none, or is gone;
    # they stay under policy here until CNI DEL (calc.local_pods)
    endpoint_conflicts: dict[str, str] = field(default_factory=dict)
    policy_map_full: tuple[str, ...] = ()  # Cilium: endpoints whose new policy did not fit
    l7_proxy: bool = False  # Cilium: the node's L7 proxy runs and enforces its endpoints' HTTP rules
    l7_error: str | None = None  # Cilium: why the node's L7 proxy could not be configured
    #: Cilium: policy ref -> local endpoints its toFQDNs applies to with no DNS rule to learn from
    fqdn_without_dns: dict[str, list[str]] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> PolicyReport:
        doc = json.loads(raw)
        return cls(
            node=str(doc["node"]),
            time=str(doc.get("time", "")),
            revision=int(doc.get("revision", 0)),
            applied_revision=int(doc.get("applied_revision", 0)),
            error=doc.get("error"),
            compile_errors=dict(doc.get("compile_errors") or {}),
            invalid=dict(doc.get("invalid") or {}),
            endpoint_conflicts=dict(doc.get("endpoint_conflicts") or {}),
            policy_map_full=tuple(doc.get("policy_map_full") or ()),
            l7_proxy=bool(doc.get("l7_proxy", False)),
            l7_error=doc.get("l7_error"),
            fqdn_without_dns={str(k): list(v) for k, v in (doc.get("fqdn_without_dns") or {}).items()},
        )


#: Datastore type key -> the kind name compiled policies carry (see calc.policy.policy_key).
POLICY_KINDS = {
    "networkpolicies.networking.k8s.io": "NetworkPolicy",
    "networkpolicies.projectcalico.org": "CalicoNetworkPolicy",
    "globalnetworkpolicies.projectcalico.org": "GlobalNetworkPolicy",
    "adminnetworkpolicies.policy.networking.k8s.io": "AdminNetworkPolicy",
    "baselineadminnetworkpolicies.policy.networking.k8s.io": "BaselineAdminNetworkPolicy",
    "clusternetworkpolicies.policy.networking.k8s.io": "ClusterNetworkPolicy",
    "ciliumnetworkpolicies.cilium.io": "CiliumNetworkPolicy",
    "ciliumclusterwidenetworkpolicies.cilium.io": "CiliumClusterwideNetworkPolicy",
}
CILIUM_KINDS = ("NetworkPolicy", "CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy")


def policy_ref(type_key: str, namespace: str | None, name: str) -> str | None:
    """How reports name the policy stored under ``type_key`` (None: not a policy kind):
    ``ns/name`` for a Kubernetes NetworkPolicy, ``Kind:ns/name`` or ``Kind:name`` otherwise."""
    kind = POLICY_KINDS.get(type_key)
    if kind is None:
        return None
    if kind == "NetworkPolicy":
        return f"{namespace or 'default'}/{name}"
    return f"{kind}:{namespace}/{name}" if namespace else f"{kind}:{name}"


def _condition(type_: str, status: str, reason: str, message: str, time: str) -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": time}


def _nodes(reports: Iterable[PolicyReport]) -> str:
    return ", ".join(sorted(r.node for r in reports))


def object_notes(
    kind: str, policy: Any, reports: Sequence[PolicyReport] = ()
) -> list[tuple[str, str, str, str]]:
    """(type, status, reason, message) conditions about a CNP/CCNP object itself (its L7 rules, as
    the nodes' proxies report them, and the fields this profile does not compile)."""
    if kind not in ("CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy"):
        return []
    from podnet.calc.policy_cnp import l7_sections, unsupported

    notes = []
    l7 = l7_sections(policy)
    sections = [*l7.get("http", []), *l7.get("dns", [])]  # HTTP and DNS: both through the node's proxies
    failed = [r for r in reports if r.l7_error]
    running = [r for r in reports if r.l7_proxy]
    if sections and failed:
        details = "; ".join(f"{r.node}: {r.l7_error}" for r in sorted(failed, key=lambda r: r.node))
        notes.append(
            (
                "L7Enforced",
                "False",
                "L7ProxyFailed",
                f"the L7 proxy could not be configured ({details}); those nodes keep their previous "
                "policy maps, and redirected ports refuse connections while no proxy listens",
            )
        )
    elif sections and running:
        notes.append(
            (
                "L7Enforced",
                "True",
                "ProxyRedirect",
                f"L7 rules at {', '.join(sections)} are enforced by the L7 proxies on {_nodes(running)}",
            )
        )
    elif sections:
        notes.append(
            (
                "L7Enforced",
                "Unknown",
                "NoProxy",
                f"no node runs the L7 proxy for the L7 rules at {', '.join(sections)} yet "
                "(no endpoint they select is local to a Cilium-profile node)",
            )
        )
    missing = unsupported(policy)
    if missing:
        notes.append(
            (
                "Unsupported",
                "True",
                "NotCompiled",
                f"{', '.join(missing)}: not compiled by this profile; these sections allow nothing",
            )
        )
    return notes


def conditions_for(
    policy: str,
    resource_version: int,
    reports: Sequence[PolicyReport],
    notes: Sequence[tuple[str, str, str, str]] = (),
) -> list[dict[str, Any]]:
    """``status.conditions`` of the policy ``policy`` (a :func:`policy_ref`) at ``resource_version``,
    from every node's report, then ``notes`` (:func:`object_notes`)."""
    latest = max((r.time for r in reports), default="")
    extra = [_condition(t, status, reason, message, latest) for t, status, reason, message in notes]
    if not reports:
        return [_condition("Accepted", "Unknown", "NoAgents", "no node agent has reported yet", ""), *extra]
    conditions = []
    invalid = [r for r in reports if policy in r.invalid]
    if invalid:
        why = invalid[0].invalid[policy]
        conditions.append(
            _condition(
                "Failure",
                "True",
                "InvalidObject",
                f"{why} (seen by {_nodes(invalid)}); the nodes keep enforcing its last valid version",
                latest,
            )
        )
    broken = [r for r in reports if policy in r.compile_errors]
    if broken:
        why = broken[0].compile_errors[policy]
        conditions.append(
            _condition(
                "Failure",
                "True",
                "CompileFailed",
                f"{why} (on {_nodes(broken)}); "
                + (
                    "it denies every connection of the endpoints it selects (fails closed)"
                    if ":" in policy
                    else "it isolates the pods it selects and allows nothing"
                ),
                latest,
            )
        )
    policy_kind = policy.split(":", 1)[0] if ":" in policy else "NetworkPolicy"
    full = [r for r in reports if r.policy_map_full] if policy_kind in CILIUM_KINDS else []
    if full:
        details = "; ".join(
            f"{r.node}: {', '.join(r.policy_map_full)}" for r in sorted(full, key=lambda r: r.node)
        )
        conditions.append(
            _condition(
                "Failure",
                "True",
                "PolicyMapFull",
                f"the policy map cannot hold every endpoint's entries ({details}): those endpoints keep "
                "their previous policy, never a truncated one",
                latest,
            )
        )
    blind = [r for r in reports if policy in r.fqdn_without_dns]
    if blind:
        where = "; ".join(f"{r.node}: {', '.join(r.fqdn_without_dns[policy])}" for r in blind)
        conditions.append(
            _condition(
                "FQDNLearnable",
                "False",
                "NoDNSRule",
                f"toFQDNs can learn no address for {where}: no DNS rule sends their lookups to the DNS "
                "proxy, so the names it selects allow nothing; add an egress rule with rules.dns "
                "(e.g. matchPattern '*') on port 53 to kube-dns",
                latest,
            )
        )
    refused = [r for r in reports if r.error and r.applied_revision < resource_version]
    if refused:
        kind = "Failure" if len(refused) == len(reports) else "PartialFailure"
        details = "; ".join(f"{r.node}: {r.error}" for r in sorted(refused, key=lambda r: r.node))
        conditions.append(
            _condition(
                kind,
                "True",
                "ProgrammingFailed",
                f"{details} — the previous ruleset stays in force there and the agent retries",
                latest,
            )
        )
    done = [r for r in reports if r.applied_revision >= resource_version]
    pending = [r for r in reports if r.applied_revision < resource_version and r not in refused]
    if conditions:
        conditions.insert(
            0, _condition("Accepted", "False", conditions[0]["reason"], conditions[0]["message"], latest)
        )
    elif pending:
        conditions.append(
            _condition(
                "Accepted",
                "False",
                "Pending",
                f"not yet programmed on {_nodes(pending)}"
                + (f"; programmed on {_nodes(done)}" if done else ""),
                latest,
            )
        )
    else:
        message = f"programmed on {_nodes(done)}"
        conditions.append(_condition("Accepted", "True", "Programmed", message, latest))
    return conditions + extra
