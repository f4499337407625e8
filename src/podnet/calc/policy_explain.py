"""Walk a connection through a compiled :class:`~podnet.calc.policy.PolicyPlan` (pure).

:func:`explain` evaluates one new connection the way the dataplane does:

1. the source's egress walk (when the source is an endpoint of the plan);
2. the destination's ingress walk.

Each walk goes tier by tier, rule by rule, and records every step that decided something:

    egress  tier kube-admin: AdminNetworkPolicy pass-monitoring egress rule 0 Pass
    ingress tier default: NetworkPolicy shop/web ingress rule 2 Deny

A walk where no rule matched ends with the tier's end-of-tier step, or with the namespace profile
(allow) once every tier has passed.

What is assumed about the packet:

- the source port is unknown, so a rule that asks for source ports does not match;
- ICMP is an echo request (type 8, code 0), which is what ``podnet lab probe … ICMP`` sends.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from podnet.calc.policy import (
    EGRESS,
    INGRESS,
    EndpointPolicy,
    Match,
    PodInfo,
    PolicyPlan,
    Provenance,
    Side,
    protocol_name,
)

ECHO_REQUEST = {4: (8, 0), 6: (128, 0)}
PROFILE = "profile"


@dataclass(frozen=True)
class Packet:
    src: str
    dst: str
    protocol: str  # a protocol_name
    port: int | None  # destination port (None for ICMP)

    @property
    def version(self) -> int:
        return ipaddress.ip_address(self.dst).version

    @property
    def icmp(self) -> tuple[int, int]:
        return ECHO_REQUEST[self.version]


@dataclass(frozen=True)
class Step:
    """One decision of a walk. ``provenance`` None means the tier's end (``tier`` set) or the
    namespace profile (``tier`` is :data:`PROFILE`)."""

    direction: str
    tier: str
    action: str
    provenance: Provenance | None = None

    def __str__(self) -> str:
        if self.tier == PROFILE:
            return f"no tier decided: namespace profile {self.action}"
        if self.provenance is None:
            return f"tier {self.tier}: end of tier {self.action}"
        p = self.provenance
        return f"tier {self.tier}: {p.policy} {p.direction} rule {p.rule} {self.action}"


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    decided_by: str  # "egress" | "ingress" | "not isolated" (no walk met a tier)
    rules: tuple[Provenance, ...]  # allowed: the deciding Allow rules; denied: the Deny rule or deniers
    walk: tuple[Step, ...] = ()

    def describe(self) -> str:
        """The walk on one line: ``tier a: … Pass → tier b: … Deny``."""
        return " → ".join(str(step) for step in self.walk) or "no policy applies"


@dataclass(frozen=True)
class SideVerdict:
    """One direction of a connection, on its own (``explain`` stops at the first deny)."""

    direction: str  # "egress" (of the source) | "ingress" (of the destination)
    endpoint: str | None  # the endpoint key on that side, None when it is not a pod of the plan
    isolated: bool
    allowed: bool
    rules: tuple[Provenance, ...]  # allowed: the deciding rule; denied: the Deny rule or the deniers
    walk: tuple[Step, ...] = ()


# ------------------------------------------------------------------------------------------- matching


def _in_sets(plan: PolicyPlan, name: str, address: str) -> bool:
    ip = ipaddress.ip_address(address)
    for cidr in plan.sets.get(name, frozenset()):
        net = ipaddress.ip_network(cidr)
        if net.version == ip.version and ip in net:
            return True
    return False


def _side_matches(plan: PolicyPlan, side: Side, address: str, port: int | None, protocol: str) -> bool:
    if side.never:
        return False
    if not all(_in_sets(plan, name, address) for name in side.sets):
        return False
    if any(_in_sets(plan, name, address) for name in side.not_sets):
        return False
    triple = (address, protocol, port)
    if side.has_ports:
        numeric = any(m.matches(port, protocol) for m in side.ports)
        named = port is not None and any(triple in plan.port_sets.get(n, ()) for n in side.port_sets)
        if not (numeric or named):
            return False
    if any(m.matches(port, protocol) for m in side.not_ports):
        return False
    return not any(triple in plan.port_sets.get(n, ()) for n in side.not_port_sets)


def _icmp_matches(wanted: tuple[int, int | None], packet: Packet) -> bool:
    kind, code = packet.icmp
    return wanted[0] == kind and wanted[1] in (None, code)


def matches(plan: PolicyPlan, match: Match, packet: Packet) -> bool:
    """Does ``match`` match ``packet``?"""
    if match.ip_version is not None and match.ip_version != packet.version:
        return False
    if match.protocol is not None and match.protocol != packet.protocol:
        return False
    if match.not_protocol is not None and match.not_protocol == packet.protocol:
        return False
    is_icmp = packet.protocol in ("ICMP", "ICMPv6")
    if match.icmp is not None and not (is_icmp and _icmp_matches(match.icmp, packet)):
        return False
    if match.not_icmp is not None and is_icmp and _icmp_matches(match.not_icmp, packet):
        return False
    if not _side_matches(plan, match.src, packet.src, None, packet.protocol):
        return False
    return _side_matches(plan, match.dst, packet.dst, packet.port, packet.protocol)


# ---------------------------------------------------------------------------------------------- walks


def walk(
    plan: PolicyPlan, endpoint: EndpointPolicy, direction: str, packet: Packet
) -> tuple[bool, tuple[Step, ...], tuple[Provenance, ...]]:
    """(allowed, steps, deciding provenance) of ``endpoint``'s ``direction`` for ``packet``."""
    steps: list[Step] = []
    for tier in endpoint.tiers(direction):
        passed = False
        for key in tier.policies:
            policy = plan.policies.get(key)
            if policy is None:
                continue
            if policy.fail_closed:
                step = Step(direction, tier.tier, "Deny", policy.deny_provenance(direction))
                return False, (*steps, step), (policy.deny_provenance(direction),)
            for rule in policy.rules(direction):
                if not matches(plan, rule.match, packet):
                    continue
                steps.append(Step(direction, tier.tier, rule.action, rule.provenance))
                if rule.action == "Allow":
                    return True, tuple(steps), (rule.provenance,)
                if rule.action == "Deny":
                    return False, tuple(steps), (rule.provenance,)
                if rule.action == "Pass":
                    passed = True
                    break
            if passed:
                break
        if passed:
            continue
        steps.append(Step(direction, tier.tier, tier.default_action))
        if tier.default_action != "Pass":
            return False, tuple(steps), plan.deniers(endpoint, tier, direction)
    if not endpoint.tiers(direction):
        return True, (), ()
    steps.append(Step(direction, PROFILE, "Allow"))
    return True, tuple(steps), ()


def _address_of(end: PodInfo | str, version: int | None = None) -> str | None:
    if isinstance(end, str):
        return end
    for ip in end.ips:
        if version is None or ipaddress.ip_address(ip).version == version:
            return ip
    return None


def packet_between(src: PodInfo | str, dst: PodInfo | str, port: int, protocol: str) -> Packet:
    """The packet of a new connection from ``src`` to ``dst`` (addresses of one family)."""
    dst_address = _address_of(dst)
    if dst_address is None:
        raise ValueError(f"{getattr(dst, 'key', dst)} has no address")
    version = ipaddress.ip_address(dst_address).version
    src_address = _address_of(src, version)
    if src_address is None:
        raise ValueError(f"{getattr(src, 'key', src)} has no IPv{version} address")
    name = protocol_name(protocol)
    return Packet(src_address, dst_address, name, None if name in ("ICMP", "ICMPv6") else port)


def endpoint_for(plan: PolicyPlan, end: PodInfo | str, address: str | None) -> EndpointPolicy | None:
    if isinstance(end, PodInfo):
        return plan.endpoints.get(end.key)
    for endpoint in plan.endpoints.values():
        if address in endpoint.addresses:
            return endpoint
    return None


def explain_sides(
    plan: PolicyPlan, src: PodInfo | str, dst: PodInfo | str, port: int, protocol: str = "TCP"
) -> tuple[SideVerdict, SideVerdict]:
    """Egress of ``src`` and ingress of ``dst``, each evaluated whatever the other says."""
    packet = packet_between(src, dst, port, protocol)
    sides = []
    for direction, end, own in ((EGRESS, src, packet.src), (INGRESS, dst, packet.dst)):
        endpoint = endpoint_for(plan, end, own)
        if endpoint is None or not endpoint.tiers(direction):
            sides.append(SideVerdict(direction, endpoint.key if endpoint else None, False, True, ()))
            continue
        allowed, steps, rules = walk(plan, endpoint, direction, packet)
        sides.append(SideVerdict(direction, endpoint.key, True, allowed, rules, steps))
    return sides[0], sides[1]


def explain(
    plan: PolicyPlan, src: PodInfo | str, dst: PodInfo | str, port: int, protocol: str = "TCP"
) -> Verdict:
    """Would ``src`` reach ``dst`` on ``port/protocol``? Evaluated on the compiled plan."""
    egress, ingress = explain_sides(plan, src, dst, port, protocol)
    walked = (*egress.walk, *ingress.walk)
    if not egress.allowed:
        return Verdict(False, EGRESS, egress.rules, egress.walk)
    if not ingress.allowed:
        return Verdict(False, INGRESS, ingress.rules, walked)
    decided = INGRESS if ingress.isolated else EGRESS if egress.isolated else "not isolated"
    return Verdict(True, decided, (*egress.rules, *ingress.rules), walked)


def describe_deniers(deniers: Iterable[Provenance]) -> str:
    """``default deny of NetworkPolicy a/b, …``."""
    names = sorted({p.policy for p in deniers})
    return f"default deny of {', '.join(names)}" if names else "default deny"
