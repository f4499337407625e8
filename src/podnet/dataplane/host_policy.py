"""Calico HostEndpoints: the node's own traffic through an interface, as ``table inet podnet_host``.

See :func:`render_host_table` for the table and :mod:`podnet.calc.host_endpoints` /
:mod:`podnet.calc.host_policy` for what it enforces. The GlobalNetworkPolicies selecting a host
endpoint render as in the pod table (:mod:`podnet.dataplane.policy`: one chain per policy and
direction, one per subject and tier, Pass by the mark bit), with the host endpoint's default deny
where a pod's profile would accept. One full transaction whenever the rendering changes.
"""

from __future__ import annotations

import ipaddress

from podnet.calc.host_endpoints import WILDCARD, WORKLOAD_PREFIXES, HostEndpointPlan
from podnet.calc.host_policy import host_key
from podnet.calc.policy import EGRESS, INGRESS
from podnet.dataplane.nflog import NFLOG_GROUP
from podnet.dataplane.nft import TableSync, kernel_matches, list_table
from podnet.dataplane.policy import (
    FAMILY,
    LINK_CONTROL_ICMPV6,
    MAX_PREFIX,
    clean,
    endpoint_hash,
    nft_protocol,
    policy_chain,
    policy_chain_name,
    port_elements,
    port_set_decl,
    set_decl,
    tier_chain_name,
    tier_chains,
    v4_elements,
)

HOST_TABLE = "podnet_host"
HOST_QUALIFIED = f"{FAMILY} {HOST_TABLE}"
HOST_RESET = f"add table {HOST_QUALIFIED}\ndelete table {HOST_QUALIFIED}\n"  # also: no host endpoint
_HOST_DIRECTIONS = {"in": ("iifname", "saddr"), "out": ("oifname", "daddr")}
_POLICY_DIRECTIONS = {"in": INGRESS, "out": EGRESS}


def host_chain_name(ifname: str, direction: str) -> str:
    """``hep-<sha256(ifname)[:12]>-in|out``: one chain per host-endpoint interface and direction."""
    return f"hep-{endpoint_hash(ifname)}-{direction}"


def host_deny_prefix(ifname: str, direction: str, hep: str) -> str:
    """The NFLOG prefix of a host endpoint's default deny: ``pnh:<hash>:in|out:<HostEndpoint>``."""
    return clean(f"pnh:{endpoint_hash(ifname)}:{direction}:{hep}")[:MAX_PREFIX]


def _failsafe_rule(entry: tuple[str, int, str | None], addr: str) -> str:
    protocol, port, net = entry
    match = ""
    if net:
        family = "ip6" if ipaddress.ip_network(net, strict=False).version == 6 else "ip"
        match = f"{family} {addr} {net} "
    return f"{match}meta l4proto {nft_protocol(protocol)} th dport {port} accept"


def _host_chain(plan: HostEndpointPlan, ifname: str, direction: str) -> list[str]:
    addr = _HOST_DIRECTIONS[direction][1]
    ports = ", ".join(str(p) for p in plan.tunnel_ports)
    lines = [
        "ct state established,related accept",
        f"ip {addr} @local_pods accept",
        f"ip {addr} @tunnel_peers udp dport {{ {ports} }} accept",
        f"ip {addr} @tunnel_peers ip protocol ipip accept",
        f"icmpv6 type {{ {', '.join(LINK_CONTROL_ICMPV6)} }} accept",
    ]
    failsafe = plan.failsafe_in if direction == "in" else plan.failsafe_out
    lines += [_failsafe_rule(entry, addr) for entry in failsafe]
    key, policy_direction = host_key(ifname), _POLICY_DIRECTIONS[direction]
    tiers = plan.tiers(key, policy_direction)
    if tiers:
        lines.append(f"goto {tier_chain_name(key, policy_direction, tiers[0].tier)}")
    else:
        lines.append(_default_deny(plan, ifname, direction))
    return lines


def _default_deny(plan: HostEndpointPlan, ifname: str, direction: str) -> str:
    prefix = host_deny_prefix(ifname, direction, plan.interfaces[ifname])
    return f'counter log group {NFLOG_GROUP} prefix "{prefix}" drop'


def policy_chains(plan: HostEndpointPlan) -> dict[str, tuple[str, ...]]:
    """The chains of the policies selecting ``plan``'s interfaces: per subject (host traffic and
    forwarded, :func:`~podnet.calc.host_policy.host_key`) and tier, then per policy and direction;
    past the last tier the host endpoint's default deny."""
    policy = plan.policy
    if policy is None:
        return {}
    chains: dict[str, tuple[str, ...]] = {}
    used: set[tuple[str, str]] = set()
    for ifname in plan.interfaces:
        for forwarded in (False, True):
            key = host_key(ifname, forwarded)
            endpoint = policy.endpoints.get(key)
            if endpoint is None:
                continue
            for short, direction in _POLICY_DIRECTIONS.items():
                final = _default_deny(plan, ifname, short)
                chains.update(tier_chains(policy, key, endpoint, direction, final))
                used.update((p, direction) for tier in endpoint.tiers(direction) for p in tier.policies)
    for policy_key, direction in sorted(used):
        compiled = policy.policies[policy_key]
        if compiled.rules(direction) and not compiled.fail_closed:
            chains[policy_chain_name(policy_key, direction)] = policy_chain(compiled, direction)
    return chains


def _forward_chains(plan: HostEndpointPlan, ordered: list[str]) -> list[str]:
    """``forward_in`` / ``forward_out``: forwarded traffic via a host endpoint interface walks the
    ``applyOnForward`` policies selecting it in that direction (none: allowed). Two base chains,
    as in the pod table, so an accept in via one host endpoint still meets the one it leaves by."""
    workloads = ", ".join(f'"{p}*"' for p in WORKLOAD_PREFIXES)
    out: list[str] = []
    for hook, short, priority in (("forward_in", "in", "filter"), ("forward_out", "out", "filter + 1")):
        direction = _POLICY_DIRECTIONS[short]
        key = _HOST_DIRECTIONS[short][0]
        jumps = []
        for ifname in ordered:
            tiers = plan.tiers(host_key(ifname, True), direction)
            if tiers:
                match = "" if ifname == WILDCARD else f'{key} "{ifname}" '
                jumps.append(
                    f"{match}goto {tier_chain_name(host_key(ifname, True), direction, tiers[0].tier)}"
                )
        if not jumps:
            continue
        out.append(f"    chain {hook} {{")
        out.append(f"        type filter hook forward priority {priority}; policy accept;")
        out.append("        ct state established,related accept")
        out.append(f"        {key} {{ {workloads} }} accept")
        out += [f"        {jump}" for jump in jumps]
        out.append("    }")
    return out


def render_host_table(plan: HostEndpointPlan) -> str:
    """``table inet podnet_host`` for ``plan`` as ONE transaction replacing whatever it held; with no
    host endpoint on this node, the transaction that deletes it (pure)::

        table inet podnet_host {
            set tunnel_peers { type ipv4_addr; elements = { <node IPs> } }
            set local_pods { type ipv4_addr; elements = { <this node's pod IPs> } }
            chain hep-<h>-in {                    # one per host-endpoint interface (and -out)
                ct state established,related accept
                ip saddr @local_pods accept
                ip saddr @tunnel_peers udp dport { 4789, 8472 } accept
                ip saddr @tunnel_peers ip protocol ipip accept
                icmpv6 type { nd-… } accept
                meta l4proto tcp th dport 22 accept           # failsafe inbound ports
                counter log group 7 prefix "pnh:<h>:in:<HostEndpoint>" drop
            }
            chain input {
                type filter hook input priority filter; policy accept;
                iif lo accept
                iifname { "cali*", "lxc*" } accept    # pods: their own policy, not host policy
                iifname "eth0" jump hep-<h>-in        # named interfaces, then "*"
            }
            chain output { ... the same with oif / oifname / daddr ... }
        }

    With GlobalNetworkPolicies selecting a host endpoint (:mod:`podnet.calc.host_policy`), its
    chain goes on from the failsafe ports to its first tier chain instead of the deny, and the
    policies' sets and chains join the table (:func:`policy_chains`). With ``applyOnForward``
    ones, two forward base chains (priority filter and filter + 1) do the same for forwarded
    traffic: ``iifname "eth0" goto <tier chain>`` / ``oifname …``, pods' interfaces excluded.

    Base chains of other tables on the same hooks still see the packet (an ``accept`` here ends only
    this table's verdict); forwarded traffic never meets ``input``/``output``.
    """
    if not plan.active:
        return HOST_RESET
    out = [HOST_RESET.rstrip("\n"), f"table {HOST_QUALIFIED} {{"]
    for name, elements in (("tunnel_peers", plan.tunnel_peers), ("local_pods", plan.local_pods)):
        body = f" elements = {{ {', '.join(elements)} }};" if elements else ""
        out.append(f"    set {name} {{ type ipv4_addr;{body} }}")
    if plan.policy is not None:
        sets, port_sets = plan.policy.sets, plan.policy.port_sets
        out += [f"    {set_decl(name, v4_elements(cidrs))}" for name, cidrs in sorted(sets.items())]
        out += [f"    {port_set_decl(name, port_elements(t))}" for name, t in sorted(port_sets.items())]
    for name, rules in sorted(policy_chains(plan).items()):
        out.append(f"    chain {name} {{")
        out += [f"        {rule}" for rule in rules]
        out.append("    }")
    ordered = sorted(plan.interfaces, key=lambda i: (i == WILDCARD, i))  # named first, "*" last
    for ifname in ordered:
        for direction in ("in", "out"):
            out.append(f"    chain {host_chain_name(ifname, direction)} {{")
            out += [f"        {rule}" for rule in _host_chain(plan, ifname, direction)]
            out.append("    }")
    workloads = ", ".join(f'"{p}*"' for p in WORKLOAD_PREFIXES)
    for hook, direction in (("input", "in"), ("output", "out")):
        key = _HOST_DIRECTIONS[direction][0]
        out.append(f"    chain {hook} {{")
        out.append(f"        type filter hook {hook} priority filter; policy accept;")
        out.append(f"        {key[0]}if lo accept")
        out.append(f"        {key} {{ {workloads} }} accept")
        for ifname in ordered:
            match = "" if ifname == WILDCARD else f'{key} "{ifname}" '
            out.append(f"        {match}jump {host_chain_name(ifname, direction)}")
        out.append("    }")
    out += _forward_chains(plan, ordered)
    out.append("}")
    return "\n".join(out) + "\n"


class HostEndpointManager:
    """Keeps ``table inet podnet_host`` (this netns or ``netns``) enforcing a :class:`HostEndpointPlan`:
    one full transaction whenever the rendering changes (the table is small), none otherwise."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self.table: TableSync[str] = TableSync(
            FAMILY,
            HOST_TABLE,
            netns,
            full=lambda script: script,
            matches=self._kernel_has,
            hint="the previous host-endpoint ruleset is still in force",
        )

    def apply(self, plan: HostEndpointPlan) -> str:
        """``"applied"``, ``"adopted"`` or ``"noop"``; raises :class:`DataplaneError` (nothing
        applied) on refusal. On the first sync (a restarted agent) the kernel's table is adopted
        when it is already what the plan needs (absent for no host endpoint, or identical), so a
        restart rewrites nothing."""
        mode, _ = self.table.sync(render_host_table(plan))
        return "applied" if mode == "full" else mode

    def _kernel_has(self, script: str) -> bool:
        if script == HOST_RESET:
            return list_table(FAMILY, HOST_TABLE, self.netns) is None  # no host endpoint: absent
        return kernel_matches(script, FAMILY, HOST_TABLE, self.netns)

    def remove(self) -> None:
        """Delete the table (absent is fine)."""
        self.table.remove()
