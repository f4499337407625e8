"""Why the Cilium profile allows or denies a connection (pure): the egress of the source and the
ingress of the destination, each decided the way the tc programs decide from the maps
(:func:`podnet.calc.policymap.datapath_verdict`), with the rules behind the deciding entry.

    a pod side, direction not enforced          allowed ("no policy selects it for <direction>")
    ingress from the host identity              allowed (the node reaches its own pods)
    a deny entry from either lookup             denied by it (181 Policy denied by denylist)
    an allow entry                              allowed by it
    no entry                                    denied: default deny of the policies that enforce
                                                the direction (133 Policy denied)

A peer is the other end's identity: a pod's from the allocator (a pod without a number yet is
``world`` to the others, as the ipcache says), an address's from the ipcache of the node the
side runs on (:func:`podnet.calc.ipcache.lookup`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from podnet.calc.ipcache import lookup
from podnet.calc.policy import PodInfo
from podnet.calc.policy_inputs import CiliumPlan
from podnet.calc.policymap import EGRESS, INGRESS, PolicyKey, datapath_verdict
from podnet.calc.policymap import lookup as map_lookup
from podnet.model.identity import RESERVED

PROTOCOLS = {"TCP": 6, "UDP": 17, "SCTP": 132, "ICMP": 1}
PROTOCOL_NAMES = {number: name for name, number in PROTOCOLS.items()}
ICMP_ECHO = 8
KINDS = {"knp": "NetworkPolicy", "cnp": "CiliumNetworkPolicy", "ccnp": "CiliumClusterwideNetworkPolicy"}


def parse_provenance(text: str) -> dict[str, Any]:
    """``knp:a/web:ingress:0`` / ``cnp:a/x:ingressDeny:1`` / ``ccnp:x:egress:0`` → the record's
    policy fields (kind, namespace, name, section, rule)."""
    prefix, _, rest = text.partition(":")
    if prefix == "enforcement":
        return {
            "kind": "PolicyEnforcementMode",
            "namespace": None,
            "name": rest,
            "section": None,
            "rule": None,
        }
    parts = rest.split(":")
    name = parts[0] if parts else rest
    namespace, _, short = name.rpartition("/")
    section = parts[1] if len(parts) > 1 else None
    rule = int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else None
    return {
        "kind": KINDS.get(prefix, prefix),
        "namespace": namespace or None,
        "name": short,
        "section": section,
        "rule": rule,
    }


def policy_text(p: dict[str, Any]) -> str:
    where = f"{p['namespace']}/{p['name']}" if p.get("namespace") else p["name"]
    text = f"{p['kind']} {where}"
    if p.get("section") is not None:
        text += f" {p['section']}[{p['rule']}]" if p.get("rule") is not None else f" {p['section']}"
    return text


def describe_key(key: PolicyKey) -> str:
    peer = "any identity" if key.identity == 0 else f"identity {key.identity}"
    if key.protocol == 0:
        return f"{peer}, any protocol"
    proto = PROTOCOL_NAMES.get(key.protocol, str(key.protocol))
    ports = (
        "any port" if key.prefix == 0 else f"port {key.port}" + (f"/{key.prefix}" if key.prefix < 16 else "")
    )
    return f"{peer}, {proto} {ports}"


@dataclass(frozen=True)
class CiliumSide:
    """One direction of a connection as the endpoint's map decides it."""

    direction: str
    endpoint: str | None  # the pod key; None: not a pod (an address, a host-network pod)
    enforced: bool
    allowed: bool
    peer_identity: int
    reason: str  # what decided, in words
    key: PolicyKey | None = None  # the deciding entry's key
    rules: tuple[str, ...] = ()  # provenance: the rules behind it, or the default deny's enforcers
    deny_entry: bool = False


def identity_of(end: PodInfo | str, plan: CiliumPlan) -> int:
    if isinstance(end, PodInfo):
        return plan.pod_identity.get(end.key, RESERVED["world"])
    return lookup(plan.ipcache, end)


def side(
    direction: str, end: PodInfo | str, peer: PodInfo | str, plan: CiliumPlan, port: int, protocol: str
) -> CiliumSide:
    """``end``'s ``direction`` for a connection with ``peer`` (``plan``: compiled for ``end``'s node)."""
    peer_identity = identity_of(peer, plan)
    if not isinstance(end, PodInfo) or end.key not in plan.maps:
        return CiliumSide(direction, None, False, True, peer_identity, "not a pod of this profile")
    endpoint = plan.maps[end.key]
    if not endpoint.enforced(direction):
        return CiliumSide(
            direction, end.key, False, True, peer_identity, f"no policy selects it for {direction}"
        )
    if direction == INGRESS and peer_identity == RESERVED["host"]:
        return CiliumSide(direction, end.key, True, True, peer_identity, "the node reaches its own pods")
    number = PROTOCOLS[protocol]
    probe_port = ICMP_ECHO if protocol == "ICMP" else port
    found = datapath_verdict(endpoint.entries, direction, peer_identity, number, probe_port)
    if found is None:
        enforcers = endpoint.enforced_by.get(direction, ())
        return CiliumSide(direction, end.key, True, False, peer_identity, "Policy denied", None, enforcers)
    key = next(
        hit[0]
        for hit in (
            map_lookup(endpoint.entries, direction, peer_identity, number, probe_port),
            map_lookup(endpoint.entries, direction, 0, number, probe_port),
        )
        if hit is not None and hit[1] == found
    )
    if found.deny:
        return CiliumSide(
            direction,
            end.key,
            True,
            False,
            peer_identity,
            "Policy denied by denylist",
            key,
            found.provenance,
            True,
        )
    return CiliumSide(direction, end.key, True, True, peer_identity, "allowed", key, found.provenance)


def explain(
    plan_for: Callable[[str | None], CiliumPlan],
    src: PodInfo | str,
    dst: PodInfo | str,
    port: int,
    protocol: str = "TCP",
) -> tuple[CiliumSide, CiliumSide]:
    """Egress of ``src`` and ingress of ``dst`` (``plan_for(node)``: the plan as that node's agent
    compiles it; None: any node, for an address)."""
    src_plan = plan_for(src.node if isinstance(src, PodInfo) else None)
    dst_plan = plan_for(dst.node if isinstance(dst, PodInfo) else None)
    return (
        side(EGRESS, src, dst, src_plan, port, protocol),
        side(INGRESS, dst, src, dst_plan, port, protocol),
    )
