"""Policy enforcement: the compiled :class:`PolicyPlan` as one nftables table, ``inet podnet_policy``.

kube-proxy's nftables proxier is the model: one owned table, one transaction per sync, partial
syncs, a full resync after any failure. Felix is the model for the ordered rules: one chain per
policy, which every endpoint it selects jumps to, and one chain per endpoint, direction and tier::

    table inet podnet_policy {
        set pn-<hash> { type ipv4_addr; flags interval; elements = { 10.244.1.5/32, ... } }   # plan.sets
        set pp-<hash> { type ipv4_addr . inet_proto . inet_service; elements = { 10.244.1.5 . tcp . 8080 } }
        set control_ports / control_hosts                 # the node control plane (below)
        set notrack_tracked { type ipv4_addr; }           # pool addresses kept tracked (below)
        map source_dispatch  { type ifname : verdict; elements = { "cali…" : jump ep-<h>-src, ... } }
        map egress_dispatch  { type ifname : verdict; elements = { "cali…" : jump ep-<h>-eg, ... } }
        map ingress_dispatch { type ifname : verdict; elements = { "cali…" : jump ep-<h>-in, ... } }
        chain prerouting {                                # EVERY packet from a local pod, first
            type filter hook prerouting priority raw; policy accept;
            iifname vmap @source_dispatch                 # anti-spoofing: MAC, then IP
            jump untrack_pods                             # conntrack (below)
        }
        chain untrack_pods {                              # both ends in the pools, neither tracked
            ip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16 \\
                ip saddr != @notrack_tracked ip daddr != @notrack_tracked notrack
        }
        chain forward {                                   # egress of the source pod
            type filter hook forward priority filter; policy accept;
            ct state untracked accept                     # (below)
            ct state established,related accept
            ct state invalid drop
            iifname vmap @egress_dispatch
        }
        chain forward_ingress {                           # then ingress of the destination pod
            type filter hook forward priority filter + 1; policy accept;
            ct state untracked accept
            ct state established,related accept
            oifname vmap @ingress_dispatch
        }
        chain input { … iifname vmap @egress_dispatch }   # a pod's traffic to its own node
        chain ep-<h>-eg {                                 # every local pod: control plane first
            meta l4proto . th dport @control_ports fib daddr type local counter log … drop
            ip daddr . meta l4proto . th dport @control_hosts counter log … drop
            goto ep-<h>-eg-t-kube-admin                   # when some tier selects the pod
        }
        chain ep-<h>-eg-t-kube-admin {                    # the tier's selecting policies, in order
            jump pol-<p>-eg
            meta mark & 0x100000 == 0x100000 meta mark set meta mark & 0xffefffff goto ep-<h>-eg-t-default
            goto ep-<h>-eg-t-default                      # end of tier: defaultAction Pass
        }
        chain ep-<h>-eg-t-default {
            jump pol-<q>-eg
            counter log group 7 prefix "pnd:<h>:eg:default:ns/pod" drop   # end of tier: Deny
        }
        chain pol-<p>-eg {                                # one per policy and direction, shared
            ip daddr @pn-… tcp dport 80 counter accept comment "anp:kube-admin:x:egress:0"     # Allow
            ip daddr @pn-… counter log group 7 prefix "pnx:<r>" drop comment "…"            # Deny
            ip daddr @pn-… meta mark set meta mark | 0x100000 counter return comment "…"   # Pass
            ip daddr @pn-… counter log group 7 prefix "pnl:<r>" comment "…"                  # Log
        }
    }

**Verdicts.** Allow is ``accept``. That ends only the base chain the packet is in, which is why
egress and ingress live in two base chains on the forward hook: a connection between two pods of
this node that its source's egress accepts still meets its destination's ingress. Deny is a logged
``drop``. Log is a logged rule without a verdict. Pass sets :data:`PASS_MARK` and returns. The tier
chain then clears the mark and goes to the next tier, or accepts when no tier is left (the profile).
A policy that cannot be compiled is a logged ``drop`` in place of its jump (it fails closed). A
Kubernetes NetworkPolicy that cannot be compiled only loses its rules: it never allowed anything
else.

**Anti-spoofing** runs in ``prerouting`` at priority ``raw``, before conntrack. A packet from a pod
is dropped and logged, whatever hook it was heading for, when either check fails:

- its source MAC is not the pod's eth0 MAC (recorded at wiring);
- its source IP is not one of the pod's.

It is dropped even when its addresses match an established connection. ICMPv6 link control from
``::``/link-local passes the IP check only. ARP is not IP and this table does not see it.

**Control plane.** The node control plane (:class:`podnet.calc.policy.ControlPlane`) is rendered as
two sets. Every endpoint's egress chain starts with two drops, before any policy, so no policy can
open them:

- a control port on any local address;
- an (address, protocol, port) of another node or of the datastore.

**Conntrack.** After anti-spoofing, ``prerouting`` (priority ``raw``, before conntrack) marks
untracked the packets whose source and destination are both in the IP pools and neither in
``notrack_tracked``, the addresses that must stay tracked (local endpoints some tier selects,
Service backends, node and control-plane addresses in the pools). Pod traffic that no policy and
no NAT concerns then creates no conntrack entry. The decision is symmetric in source and destination, so both
directions of a flow get the same one (:mod:`podnet.calc.conntrack` has the reasoning, flow by
flow). Both forward chains accept untracked packets first: neither end is an endpoint any tier
selects here (no ingress entry, an egress chain of control-plane drops only), a forwarded
packet's destination is not local, and no control-plane host is untracked, so the dispatch would
accept them too, after more work per packet.

**Node to pod.** Traffic the node itself sends to its pods goes through OUTPUT and is never filtered
here (Kubernetes requires it). A pod's packets to its own node meet INPUT, which dispatches into
the same egress chains.

**Syncs.** :class:`PolicyManager` keeps the rendering it last applied. The first apply, and the one
after any failure, is one full transaction. Later applies send one transaction with only the
differences. ``nft -f`` is atomic: on failure nothing is applied, the previous ruleset stays, and
the next sync is full.

**NFLOG prefixes** (group :data:`~podnet.dataplane.nflog.NFLOG_GROUP`), each at most 63 characters:

- ``pnd:<endpoint>:<dir>:<tier>:…`` an end-of-tier deny;
- ``pnx:<rule>`` a Deny rule;
- ``pne:<policy>:<dir>`` a policy that fails closed;
- ``pnl:<rule>`` a Log rule;
- ``pns``/``pnc`` anti-spoofing and the control plane.

:func:`deny_reasons` and :func:`log_reasons` map each prefix to its provenance.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import Any

from podnet.calc.conntrack import NotrackPlan
from podnet.calc.memo import GenerationMemo, ObjectMemo
from podnet.calc.policy import (
    DIRECTIONS,
    INGRESS,
    CompiledPolicy,
    ControlPlane,
    EndpointPolicy,
    Match,
    OrderedRule,
    PolicyPlan,
    PortMatch,
    Provenance,
    Side,
)
from podnet.calc.policy_sets import PortTriple
from podnet.dataplane.netns import run_in_netns
from podnet.dataplane.nflog import NFLOG_GROUP
from podnet.dataplane.nft import TableSync

TABLE = "podnet_policy"
FAMILY = "inet"
QUALIFIED = f"{FAMILY} {TABLE}"
EGRESS_MAP = "egress_dispatch"
INGRESS_MAP = "ingress_dispatch"
SOURCE_MAP = "source_dispatch"
MAX_PREFIX = 63
MAX_COMMENT = 127
#: The packet mark bit a Pass rule sets for its tier chain (kube-proxy uses 0x4000, Felix 0xffff0000).
PASS_MARK = 0x00100000
_DIRECTIONS = {"ingress": "in", "egress": "eg", "source": "src"}
_NFT_PROTOCOLS = {
    "TCP": "tcp",
    "UDP": "udp",
    "SCTP": "sctp",
    "ICMP": "icmp",
    "ICMPv6": "ipv6-icmp",
    "UDPLite": "udplite",
}
_KIND_TAGS = {
    "NetworkPolicy": "knp",
    "CalicoNetworkPolicy": "np",
    "GlobalNetworkPolicy": "gnp",
    "AdminNetworkPolicy": "anp",
    "BaselineAdminNetworkPolicy": "banp",
    "ClusterNetworkPolicy": "cnp",
}
CONTROL_SETS = {
    "control_ports": "inet_proto . inet_service",
    "control_hosts": "ipv4_addr . inet_proto . inet_service",
}
PORT_SET_TYPE = "ipv4_addr . inet_proto . inet_service"
#: The set of the ``notrack`` rule (:mod:`podnet.calc.conntrack`): name -> type (a hash set).
NOTRACK_SETS = {"notrack_tracked": "ipv4_addr"}
#: Pod-to-pod traffic that neither policy nor NAT needs skips conntrack (calc.conntrack says why
#: this is the same decision for both directions of a flow): prerouting jumps to this chain, whose
#: rule names the pools (:func:`notrack_chain`).
NOTRACK_CHAIN = "untrack_pods"
NOTRACK_JUMP = f"jump {NOTRACK_CHAIN}"
#: Untracked packets are accepted first in forward: what the dispatch would do with them, sooner.
UNTRACKED_ACCEPT = "ct state untracked accept"

#: endpoint key -> (host interface name, pod addresses[, pod eth0 MAC]); no MAC: no MAC check
Endpoints = Mapping[str, tuple[str, tuple[str, ...]] | tuple[str, tuple[str, ...], str]]

PREROUTING_CHAIN = (
    "type filter hook prerouting priority raw; policy accept;",
    f"iifname vmap @{SOURCE_MAP}",
    NOTRACK_JUMP,
)
FORWARD_CHAIN = (
    "type filter hook forward priority filter; policy accept;",
    UNTRACKED_ACCEPT,
    "ct state established,related accept",
    "ct state invalid drop",
    f"iifname vmap @{EGRESS_MAP}",
)
FORWARD_INGRESS_CHAIN = (
    "type filter hook forward priority filter + 1; policy accept;",
    UNTRACKED_ACCEPT,
    "ct state established,related accept",
    f"oifname vmap @{INGRESS_MAP}",
)
#: ICMPv6 a pod sends its own host that is link control, not traffic policy governs.
LINK_CONTROL_ICMPV6 = (
    "nd-router-solicit",
    "nd-neighbor-solicit",
    "nd-neighbor-advert",
    "mld-listener-report",
    "mld2-listener-report",
)
#: A pod's traffic to its own node: no ``ct state invalid drop`` and no ingress dispatch here, this
#: hook also carries the node's own traffic from everywhere else.
INPUT_CHAIN = (
    "type filter hook input priority filter; policy accept;",
    "ct state established,related accept",
    f"icmpv6 type {{ {', '.join(LINK_CONTROL_ICMPV6)} }} accept",
    f"iifname vmap @{EGRESS_MAP}",
)
BASE_CHAINS = (
    ("prerouting", PREROUTING_CHAIN),
    ("forward", FORWARD_CHAIN),
    ("forward_ingress", FORWARD_INGRESS_CHAIN),
    ("input", INPUT_CHAIN),
)


# ------------------------------------------------------------------------------------------- names


@lru_cache(maxsize=16384)
def short_hash(text: str) -> str:
    """The first 12 hex digits of sha256(``text``), remembered: every render names each endpoint's
    and policy's chains again (~20,000 names at 645 policies over 100 pods)."""
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def endpoint_hash(key: str) -> str:
    return short_hash(key)


def clean(text: str) -> str:
    return "".join(c for c in text if c.isprintable() and c not in '"\\')


def nft_protocol(protocol: str) -> str:
    """A :func:`~podnet.calc.policy.protocol_name` as nft writes it (numbers stay numbers)."""
    return _NFT_PROTOCOLS.get(protocol, protocol)


def chain_name(key: str, direction: str) -> str:
    """``ep-<sha256(key)[:12]>-in|eg|src``: a valid nft identifier, stable per endpoint key."""
    return f"ep-{endpoint_hash(key)}-{_DIRECTIONS[direction]}"


def tier_chain_name(key: str, direction: str, tier: str) -> str:
    return f"{chain_name(key, direction)}-t-{tier}"


def policy_chain_name(policy_key: str, direction: str) -> str:
    return f"pol-{short_hash(policy_key)}-{_DIRECTIONS[direction]}"


def _tier_tag(tier: str) -> str:
    return tier if len(tier) <= 24 else short_hash(tier)[:8]


def deny_prefix(key: str, direction: str, tier: str = "default") -> str:
    """The NFLOG prefix of an endpoint's end-of-tier deny (<= 63 chars, unique by the hash)."""
    return clean(f"pnd:{endpoint_hash(key)}:{_DIRECTIONS[direction]}:{_tier_tag(tier)}:{key}")[:MAX_PREFIX]


def rule_prefix(provenance: Provenance, action: str) -> str:
    """``pnx:<hash>`` (Deny) or ``pnl:<hash>`` (Log): the NFLOG prefix of one rule."""
    tag = "pnl" if action == "Log" else "pnx"
    return f"{tag}:{short_hash(repr(provenance))}"


def fail_closed_prefix(policy_key: str, direction: str) -> str:
    return f"pne:{short_hash(policy_key)}:{_DIRECTIONS[direction]}"


def spoof_prefix(key: str) -> str:
    return f"pns:{endpoint_hash(key)}:spoof"


def mac_spoof_prefix(key: str) -> str:
    return f"pns:{endpoint_hash(key)}:mac"


def control_prefix(key: str) -> str:
    return f"pnc:{endpoint_hash(key)}:control"


def deny_reasons(plan: PolicyPlan) -> dict[str, list[Provenance]]:
    """NFLOG prefix -> the provenance of what that drop stands for: the policies whose selection
    brought an end-of-tier deny, a Deny rule, or a policy failing closed."""
    reasons: dict[str, list[Provenance]] = {}
    for key, endpoint in sorted(plan.endpoints.items()):
        for direction in DIRECTIONS:
            for tier in endpoint.tiers(direction):
                if tier.default_action == "Deny":
                    reasons[deny_prefix(key, direction, tier.tier)] = list(
                        plan.deniers(endpoint, tier, direction)
                    )
    for policy in plan.policies.values():
        for direction in DIRECTIONS:
            if policy.fail_closed:
                reasons[fail_closed_prefix(policy.key, direction)] = [policy.deny_provenance(direction)]
            for rule in policy.rules(direction):
                if rule.action == "Deny":
                    reasons[rule_prefix(rule.provenance, "Deny")] = [rule.provenance]
    return reasons


def log_reasons(plan: PolicyPlan) -> dict[str, Provenance]:
    """NFLOG prefix -> the Log rule that logged the packet."""
    return {
        rule_prefix(rule.provenance, "Log"): rule.provenance
        for policy in plan.policies.values()
        for direction in DIRECTIONS
        for rule in policy.rules(direction)
        if rule.action == "Log"
    }


def provenance_comment(p: Provenance) -> str:
    kind = _KIND_TAGS.get(p.kind, p.kind.lower())
    where = f"{p.namespace}/{p.name}" if p.namespace else p.name
    tier = "" if p.kind == "NetworkPolicy" else f"{p.tier}:"
    return clean(f"{kind}:{tier}{where}:{p.direction}:{p.rule}")[:MAX_COMMENT]


# --------------------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class Rendering:
    """The table as data: what the manager diffs between syncs."""

    sets: dict[str, tuple[str, ...]] = field(default_factory=dict)  # name -> disjoint IPv4 CIDRs
    port_sets: dict[str, tuple[str, ...]] = field(default_factory=dict)  # name -> "ip . proto . port"
    chains: dict[str, tuple[str, ...]] = field(default_factory=dict)  # regular chain -> rules
    egress_map: dict[str, str] = field(default_factory=dict)  # ifname -> chain
    ingress_map: dict[str, str] = field(default_factory=dict)
    source_map: dict[str, str] = field(default_factory=dict)
    control: dict[str, tuple[str, ...]] = field(default_factory=dict)  # CONTROL_SETS name -> elements
    notrack: dict[str, tuple[str, ...]] = field(default_factory=dict)  # NOTRACK_SETS name -> elements


def v4_elements(cidrs: frozenset[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The IPv4 members as nft elements, collapsed."""
    nets = []
    for cidr in cidrs:
        net = ipaddress.ip_network(cidr, strict=False)
        if net.version == 4:
            nets.append(net)
    return tuple(str(n) for n in ipaddress.collapse_addresses(nets))


def port_elements(triples: frozenset[tuple[str, str, int]]) -> tuple[str, ...]:
    """The IPv4 ``address . protocol . port`` members (protocols nft names)."""
    out = {
        f"{ip} . {nft_protocol(protocol)} . {port}"
        for ip, protocol, port in triples
        if ipaddress.ip_address(ip).version == 4
    }
    return tuple(sorted(out))


def _ranges(ports: list[PortMatch]) -> str:
    texts = [str(p.first) if p.first == p.last else f"{p.first}-{p.last}" for p in ports]
    return texts[0] if len(texts) == 1 else f"{{ {', '.join(texts)} }}"


def _side_alternatives(side: Side, addr: str, keyword: str) -> list[str]:
    """The port alternatives of a side (any one matches): by protocol, then each port set."""
    if not side.has_ports:
        return [""]
    by_protocol: dict[str, list[PortMatch]] = {}
    for port in side.ports:
        by_protocol.setdefault(port.protocol, []).append(port)
    out = [
        f"meta l4proto {nft_protocol(protocol)} th {keyword} {_ranges(ports)}"
        for protocol, ports in by_protocol.items()
    ]
    out += [f"ip {addr} . meta l4proto . th {keyword} @{name}" for name in side.port_sets]
    return out


def _side_conditions(side: Side, addr: str, keyword: str) -> list[str]:
    parts = [f"ip {addr} @{name}" for name in side.sets]
    parts += [f"ip {addr} != @{name}" for name in side.not_sets]
    if side.not_ports:
        parts.append(f"th {keyword} != {_ranges(list(side.not_ports))}")
    parts += [f"ip {addr} . meta l4proto . th {keyword} != @{name}" for name in side.not_port_sets]
    return parts


def _icmp_family(match: Match) -> str:
    return "icmpv6" if match.protocol == "ICMPv6" or match.ip_version == 6 else "icmp"


def match_lines(match: Match) -> list[str]:
    """The nft match expressions of ``match``, one per alternative (any one matches); none when
    the match can never match."""
    if match.src.never or match.dst.never:
        return []
    base: list[str] = []
    if match.ip_version is not None:
        base.append(f"meta nfproto ipv{match.ip_version}")
    if match.protocol is not None:
        base.append(f"meta l4proto {nft_protocol(match.protocol)}")
    if match.not_protocol is not None:
        base.append(f"meta l4proto != {nft_protocol(match.not_protocol)}")
    family = _icmp_family(match)
    if match.icmp is not None:
        kind, code = match.icmp
        base.append(f"{family} type {kind}" + ("" if code is None else f" {family} code {code}"))
    if match.not_icmp is not None:
        kind, code = match.not_icmp
        if code is None:
            base.append(f"{family} type != {kind}")
        else:
            base.append(f"{family} type . {family} code != {{ {kind} . {code} }}")
    base += _side_conditions(match.src, "saddr", "sport")
    base += _side_conditions(match.dst, "daddr", "dport")
    lines = []
    for src in _side_alternatives(match.src, "saddr", "sport"):
        for dst in _side_alternatives(match.dst, "daddr", "dport"):
            lines.append(" ".join(part for part in (*base, src, dst) if part))
    return lines


def _verdict(rule: OrderedRule) -> str:
    comment = f'comment "{provenance_comment(rule.provenance)}"'
    if rule.action == "Allow":
        return f"counter accept {comment}"
    if rule.action == "Deny":
        return (
            f'counter log group {NFLOG_GROUP} prefix "{rule_prefix(rule.provenance, "Deny")}" drop {comment}'
        )
    if rule.action == "Pass":
        return f"meta mark set meta mark | {PASS_MARK:#010x} counter return {comment}"
    return f'counter log group {NFLOG_GROUP} prefix "{rule_prefix(rule.provenance, "Log")}" {comment}'


def policy_chain(policy: CompiledPolicy, direction: str) -> tuple[str, ...]:
    """The rules of one policy in one direction, in order."""
    lines: list[str] = []
    for rule in policy.rules(direction):
        verdict = _verdict(rule)
        lines += [f"{match} {verdict}".strip() for match in match_lines(rule.match)]
    return tuple(lines)


def tier_chains(
    plan: PolicyPlan, key: str, endpoint: EndpointPolicy, direction: str, final: str = "accept"
) -> dict[str, tuple[str, ...]]:
    """The endpoint's chain per tier it meets in ``direction`` (see the module docstring); past the
    last tier, ``final`` (a pod's profile accepts; a host endpoint's default deny drops)."""
    tiers = endpoint.tiers(direction)
    names = [tier_chain_name(key, direction, tier.tier) for tier in tiers]
    chains: dict[str, tuple[str, ...]] = {}
    clear = f"meta mark set meta mark & {~PASS_MARK & 0xFFFFFFFF:#010x}"
    for index, tier in enumerate(tiers):
        onward = f"goto {names[index + 1]}" if index + 1 < len(tiers) else final
        lines: list[str] = []
        for policy_key in tier.policies:
            policy = plan.policies[policy_key]
            if policy.fail_closed:
                prefix = fail_closed_prefix(policy.key, direction)
                lines.append(f'counter log group {NFLOG_GROUP} prefix "{prefix}" drop')
                break
            if not policy.rules(direction):
                continue
            lines.append(f"jump {policy_chain_name(policy.key, direction)}")
            if policy.has_pass(direction):
                lines.append(f"meta mark & {PASS_MARK:#010x} == {PASS_MARK:#010x} {clear} {onward}")
        if tier.default_action == "Pass":
            lines.append(onward)
        else:
            prefix = deny_prefix(key, direction, tier.tier)
            lines.append(f'counter log group {NFLOG_GROUP} prefix "{prefix}" drop')
        chains[names[index]] = tuple(lines)
    return chains


def _source_chain(key: str, addresses: tuple[str, ...], mac: str) -> tuple[str, ...]:
    """Anti-spoofing: the pod's MAC (when known), then its addresses."""
    v4 = sorted({str(a) for a in map(ipaddress.ip_address, addresses) if a.version == 4})
    v6 = sorted({str(a) for a in map(ipaddress.ip_address, addresses) if a.version == 6})
    log = f'log group {NFLOG_GROUP} prefix "{spoof_prefix(key)}"'
    lines = []
    if mac:
        mac_log = f'log group {NFLOG_GROUP} prefix "{mac_spoof_prefix(key)}"'
        lines.append(f"ether saddr != {mac.lower()} counter {mac_log} drop")
    lines += [
        f"ip6 saddr {{ ::, fe80::/10 }} icmpv6 type {{ {', '.join(LINK_CONTROL_ICMPV6)} }} return",
        f"ip saddr != {{ {', '.join(v4)} }} counter {log} drop"
        if v4
        else f"meta nfproto ipv4 counter {log} drop",
        f"ip6 saddr != {{ {', '.join(v6)} }} counter {log} drop"
        if v6
        else f"meta nfproto ipv6 counter {log} drop",
    ]
    return tuple(lines)


def _egress_chain(key: str, first_tier: str | None) -> tuple[str, ...]:
    """Control plane first (no policy opens it), then the first tier that selects the endpoint."""
    log = f'counter log group {NFLOG_GROUP} prefix "{control_prefix(key)}" drop'
    lines = [
        f"meta l4proto . th dport @control_ports fib daddr type local {log}",
        f"ip daddr . meta l4proto . th dport @control_hosts {log}",
    ]
    if first_tier is not None:
        lines.append(f"goto {tier_chain_name(key, 'egress', first_tier)}")
    return tuple(lines)


def control_elements(control: ControlPlane | None) -> dict[str, tuple[str, ...]]:
    """The two control-plane sets' elements (empty sets without ``control``)."""
    if control is None:
        return {name: () for name in CONTROL_SETS}
    return {
        "control_ports": tuple(f"{proto} . {port}" for proto, port in control.local),
        "control_hosts": tuple(f"{ip} . {proto} . {port}" for ip, proto, port in control.remote),
    }


def notrack_elements(notrack: NotrackPlan | None) -> dict[str, tuple[str, ...]]:
    """The ``notrack`` rule's set elements: the pool addresses that stay tracked."""
    return {"notrack_tracked": (notrack or NotrackPlan()).tracked}


def kernel_untracks(netns: str | None, address: str) -> bool:
    """Whether the policy table in ``netns`` (as the kernel has it) lets ``address`` skip conntrack:
    inside the pools :data:`NOTRACK_CHAIN`'s rule names and not in ``notrack_tracked``."""
    listing = run_in_netns(netns, ["nft", "-j", "list", "chain", FAMILY, TABLE, NOTRACK_CHAIN], timeout=30)
    if listing.returncode != 0:
        return False
    pools: list[Any] = []
    for item in json.loads(listing.stdout).get("nftables", []):
        if "rule" in item:
            right = item["rule"]["expr"][0]["match"]["right"]  # ip saddr <pool or anonymous set>
            pools = right["set"] if isinstance(right, dict) and "set" in right else [right]
    if not any(ipaddress.ip_address(address) in ipaddress.ip_network(_prefix_text(p)) for p in pools):
        return False
    tracked = next(iter(NOTRACK_SETS))
    get = ["nft", "get", "element", FAMILY, TABLE, tracked, f"{{ {address} }}"]
    return run_in_netns(netns, get, timeout=30).returncode != 0  # not found: not kept tracked


def _prefix_text(value: Any) -> str:
    """A CIDR from nft's JSON (``{"prefix": {"addr": …, "len": …}}`` or an address)."""
    if isinstance(value, dict) and "prefix" in value:
        return f"{value['prefix']['addr']}/{value['prefix']['len']}"
    return str(value)


def notrack_chain(notrack: NotrackPlan | None) -> tuple[str, ...]:
    """The rule of :data:`NOTRACK_CHAIN`: both ends in the pools (prefix compares: one pool is a
    masked compare, several an anonymous set), neither kept tracked; no pools, no rule."""
    pools = (notrack or NotrackPlan()).pools
    if not pools:
        return ()
    space = pools[0] if len(pools) == 1 else f"{{ {', '.join(pools)} }}"
    tracked = f"@{next(iter(NOTRACK_SETS))}"
    return (f"ip saddr {space} ip daddr {space} ip saddr != {tracked} ip daddr != {tracked} notrack",)


# Most sets are unchanged from one sync to the next: memoised for the renderings that ask.
V4_ELEMENTS: GenerationMemo[frozenset[str] | tuple[str, ...], tuple[str, ...]] = GenerationMemo(v4_elements)
PORT_ELEMENTS: GenerationMemo[frozenset[PortTriple], tuple[str, ...]] = GenerationMemo(port_elements)


def build_rendering(
    plan: PolicyPlan,
    endpoints: Endpoints,
    control: ControlPlane | None = None,
    notrack: NotrackPlan | None = None,
    chains_memo: ObjectMemo[Any] | None = None,
) -> Rendering:
    """The table for ``plan`` over the LOCAL ``endpoints`` (pure). Plan endpoints without an
    interface here are skipped (nothing to dispatch on); local endpoints without a plan entry get
    anti-spoofing and the control-plane drops only. ``notrack``: what may skip conntrack.
    ``chains_memo`` (the caller's, kept across calls): a policy's chain is rendered again only
    when its compiled form is a new object (the compile memo hands back the same one); an
    endpoint's tier chains only when its tiers or the policy objects in them changed; its
    anti-spoofing chain only when its addresses or MAC did."""
    V4_ELEMENTS.new_generation()
    PORT_ELEMENTS.new_generation()
    rendering = Rendering(
        sets={name: V4_ELEMENTS(cidrs) for name, cidrs in sorted(plan.sets.items())},
        port_sets={name: PORT_ELEMENTS(triples) for name, triples in sorted(plan.port_sets.items())},
        control=control_elements(control),
        notrack=notrack_elements(notrack),
    )
    rendering.chains[NOTRACK_CHAIN] = notrack_chain(notrack)
    remembered: set[Any] = set()

    def memo(name: Any, obj: object, context: Any, compute: Callable[[], Any]) -> Any:
        if chains_memo is None:
            return compute()
        remembered.add(name)
        return chains_memo.get(name, obj, context, compute)

    used: set[tuple[str, str]] = set()
    for key, (ifname, addresses, *rest) in sorted(endpoints.items()):
        endpoint = plan.endpoints.get(key)
        source = chain_name(key, "source")
        mac = rest[0] if rest else ""
        addresses = tuple(addresses)
        rendering.chains[source] = memo(
            source, None, (addresses, mac), lambda key=key, a=addresses, m=mac: _source_chain(key, a, m)
        )
        rendering.source_map[ifname] = source
        egress = chain_name(key, "egress")
        first = endpoint.egress[0].tier if endpoint is not None and endpoint.egress else None
        rendering.chains[egress] = _egress_chain(key, first)
        rendering.egress_map[ifname] = egress
        if endpoint is None:
            continue
        for direction in DIRECTIONS:
            tiers = endpoint.tiers(direction)
            policies = tuple(plan.policies[p] for tier in tiers for p in tier.policies)
            rendering.chains.update(
                memo(
                    ("tiers", key, direction),
                    None,
                    (tiers, policies),
                    lambda key=key, endpoint=endpoint, d=direction: tier_chains(plan, key, endpoint, d),
                )
            )
            used.update((p.key, direction) for p in policies)
        if endpoint.ingress:
            ingress = chain_name(key, "ingress")
            rendering.chains[ingress] = (f"goto {tier_chain_name(key, INGRESS, endpoint.ingress[0].tier)}",)
            rendering.ingress_map[ifname] = ingress
    for policy_key, direction in sorted(used):
        policy = plan.policies[policy_key]
        if policy.rules(direction) and not policy.fail_closed:
            name = policy_chain_name(policy_key, direction)
            render = partial(policy_chain, policy, direction)
            rendering.chains[name] = memo(name, policy, direction, render)
    if chains_memo is not None:
        chains_memo.retain(remembered)
    return rendering


def set_decl(name: str, elements: tuple[str, ...], table: str = "") -> str:
    """``set NAME {…}`` inside a table block, or with ``table`` the ``add set TABLE NAME {…}`` command."""
    return _set_text(name, "ipv4_addr; flags interval", elements, table)


def port_set_decl(name: str, elements: tuple[str, ...], table: str = "") -> str:
    """As :func:`set_decl`, for an (address, protocol, port) set."""
    return _set_text(name, PORT_SET_TYPE, elements, table)


def _set_text(name: str, kind: str, elements: tuple[str, ...], table: str) -> str:
    body = f" elements = {{ {', '.join(elements)} }};" if elements else ""
    head = f"add set {table} {name}" if table else f"set {name}"
    return f"{head} {{ type {kind};{body} }}"


def _map_elements(entries: Mapping[str, str]) -> str:
    return ", ".join(f'"{ifname}" : jump {chain}' for ifname, chain in sorted(entries.items()))


def _map_decl(name: str, entries: Mapping[str, str]) -> str:
    body = f" elements = {{ {_map_elements(entries)} }};" if entries else ""
    return f"map {name} {{ type ifname : verdict;{body} }}"


def render_full(rendering: Rendering) -> str:
    """The whole table as one transaction that replaces whatever podnet_policy held."""
    out = [f"add table {QUALIFIED}", f"delete table {QUALIFIED}", f"table {QUALIFIED} {{"]
    out += [f"    {set_decl(name, elements)}" for name, elements in sorted(rendering.sets.items())]
    out += [f"    {port_set_decl(name, elements)}" for name, elements in sorted(rendering.port_sets.items())]
    declared = [(name, kind, rendering.control.get(name, ())) for name, kind in CONTROL_SETS.items()]
    declared += [(name, kind, rendering.notrack.get(name, ())) for name, kind in NOTRACK_SETS.items()]
    for name, kind, elements in declared:
        body = f" elements = {{ {', '.join(elements)} }};" if elements else ""
        out.append(f"    set {name} {{ type {kind};{body} }}")
    # Chains before the maps that jump to them, maps before the base chains that use them (within
    # one table block nft resolves jumps between chains in any order).
    for name, rules in sorted(rendering.chains.items()):
        out.append(f"    chain {name} {{")
        out += [f"        {rule}" for rule in rules]
        out.append("    }")
    out.append(f"    {_map_decl(SOURCE_MAP, rendering.source_map)}")
    out.append(f"    {_map_decl(EGRESS_MAP, rendering.egress_map)}")
    out.append(f"    {_map_decl(INGRESS_MAP, rendering.ingress_map)}")
    for name, rules in BASE_CHAINS:
        out.append(f"    chain {name} {{")
        out += [f"        {rule}" for rule in rules]
        out.append("    }")
    out.append("}")
    return "\n".join(out) + "\n"


def render_policy(
    plan: PolicyPlan,
    endpoints: Endpoints,
    control: ControlPlane | None = None,
    notrack: NotrackPlan | None = None,
) -> str:
    """The full ``nft -f`` transaction for ``plan`` on this node's ``endpoints`` (pure)."""
    return render_full(build_rendering(plan, endpoints, control, notrack))


def _chunks(items: list[str], size: int = 1000) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _element_diff(out: list[str], name: str, before: set[str], after: set[str]) -> None:
    for part in _chunks(sorted(before - after)):
        out.append(f"delete element {QUALIFIED} {name} {{ {', '.join(part)} }}")
    for part in _chunks(sorted(after - before)):
        out.append(f"add element {QUALIFIED} {name} {{ {', '.join(part)} }}")


def render_diff(old: Rendering, new: Rendering) -> str:
    """One transaction turning ``old`` into ``new`` ("" when they are equal). Order: new sets and
    elements; every new chain created empty (rules may jump to chains created after them), then
    new and changed chains filled; map entries; then removals (chains once nothing jumps to them,
    sets once no rule uses them)."""
    out: list[str] = []
    # 1. sets: new ones declared with their members (an ``add element`` costs ~0.1 s at 1,200
    #    sets: nft 1.0.6 first reads every set's elements back; a declaration does not), then
    #    members of kept sets added and removed.
    out += [set_decl(name, new.sets[name], QUALIFIED) for name in sorted(new.sets.keys() - old.sets.keys())]
    out += [
        port_set_decl(name, new.port_sets[name], QUALIFIED)
        for name in sorted(new.port_sets.keys() - old.port_sets.keys())
    ]
    for name, elements in sorted(new.sets.items()):
        if name in old.sets and old.sets[name] != elements:
            _element_diff(out, name, set(old.sets[name]), set(elements))
    for name, elements in sorted(new.port_sets.items()):
        if name in old.port_sets and old.port_sets[name] != elements:
            _element_diff(out, name, set(old.port_sets[name]), set(elements))
    for name in CONTROL_SETS:  # always declared: only their members change
        _element_diff(out, name, set(old.control.get(name, ())), set(new.control.get(name, ())))
    for name in NOTRACK_SETS:
        _element_diff(out, name, set(old.notrack.get(name, ())), set(new.notrack.get(name, ())))
    # 2. chains: new ones created, then new and changed ones (flushed) filled.
    out += [f"add chain {QUALIFIED} {name}" for name in sorted(new.chains.keys() - old.chains.keys())]
    for name, rules in sorted(new.chains.items()):
        if old.chains.get(name) == rules:
            continue
        if name in old.chains:
            out.append(f"flush chain {QUALIFIED} {name}")
        out += [f"add rule {QUALIFIED} {name} {rule}" for rule in rules]
    # 3. dispatch maps.
    for map_name, before_map, after_map in (
        (SOURCE_MAP, old.source_map, new.source_map),
        (EGRESS_MAP, old.egress_map, new.egress_map),
        (INGRESS_MAP, old.ingress_map, new.ingress_map),
    ):
        gone = {k: v for k, v in before_map.items() if after_map.get(k) != v}
        added = {k: v for k, v in after_map.items() if before_map.get(k) != v}
        if gone:
            keys = ", ".join(f'"{k}"' for k in sorted(gone))
            out.append(f"delete element {QUALIFIED} {map_name} {{ {keys} }}")
        if added:
            out.append(f"add element {QUALIFIED} {map_name} {{ {_map_elements(added)} }}")
    # 4. removals: every removed chain flushed first (they may jump to each other), then deleted.
    removed = sorted(old.chains.keys() - new.chains.keys())
    out += [f"flush chain {QUALIFIED} {name}" for name in removed]
    out += [f"delete chain {QUALIFIED} {name}" for name in removed]
    for name in sorted((old.sets.keys() - new.sets.keys()) | (old.port_sets.keys() - new.port_sets.keys())):
        out.append(f"delete set {QUALIFIED} {name}")
    return "\n".join(out) + "\n" if out else ""


def diff_policy(
    old_plan: PolicyPlan,
    old_endpoints: Endpoints,
    plan: PolicyPlan,
    endpoints: Endpoints,
    control: ControlPlane | None = None,
    notrack: NotrackPlan | None = None,
) -> str:
    """The partial transaction from one plan to the next (pure; what :class:`PolicyManager` sends)."""
    old = build_rendering(old_plan, old_endpoints, control, notrack)
    return render_diff(old, build_rendering(plan, endpoints, control, notrack))


# ----------------------------------------------------------------------------------------- manager


class PolicyManager:
    """Keeps ``table inet podnet_policy`` of the caller's network namespace (or ``netns``) in shape:
    full transaction first (or the kernel's table adopted), then partial ones (:class:`TableSync`)."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self.table: TableSync[Rendering] = TableSync(
            FAMILY,
            TABLE,
            netns,
            full=render_full,
            diff=render_diff,
            hint="the previous policy ruleset is still in force; the next sync is a full resync",
        )
        self._chains: ObjectMemo[Any] = ObjectMemo()

    @property
    def needs_full_resync(self) -> bool:
        return self.table.applied is None

    @property
    def last_script(self) -> str | None:
        return self.table.last_script

    def apply(
        self,
        plan: PolicyPlan,
        endpoints: Endpoints,
        control: ControlPlane | None = None,
        notrack: NotrackPlan | None = None,
    ) -> dict[str, Any]:
        """Make the table enforce ``plan`` (close ``control`` to every pod, untrack what
        ``notrack`` allows): ``{"mode": "full"|"partial"|"noop"|"adopted", "statements": n,
        "seconds": t}``. Raises :class:`DataplaneError` (nothing applied) when nft refuses."""
        started = time.perf_counter()
        rendering = build_rendering(plan, endpoints, control, notrack, self._chains)
        mode, statements = self.table.sync(rendering)
        return {"mode": mode, "statements": statements, "seconds": time.perf_counter() - started}

    def remove(self) -> None:
        """Delete the table (absent is fine)."""
        self.table.remove()
