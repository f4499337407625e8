"""The HTTP rules the node's L7 proxy enforces, and the DNS rules its DNS proxy enforces
(:func:`dns_policies`), from the local endpoints' policy maps (pure).

Each redirect entry of an endpoint's map (:mod:`podnet.calc.policymap`, ``proxy_port`` set) sends
its peer's connections on its ports to the proxy listener of its direction; the proxy must then
let through what the endpoint's HTTP rules for that peer and port allow
(:class:`podnet.calc.haproxy.HttpPolicy`). The rules that apply to a peer are those of the L7
sections naming it and of the L7 sections open to any peer, ORed. Cilium's rule: when an L4-only
rule allows the same peer (or any peer) on the same port, the L7 part has no effect — every
request passes (:data:`podnet.calc.l7_http.ALLOW_ALL`). A redirect entry no L7 section explains
(it cannot happen by construction) gets a rule that matches nothing: fail closed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from podnet.calc.haproxy import HttpPolicy
from podnet.calc.l7_dns import DNS_PROXY_PORT, DnsSelector
from podnet.calc.l7_http import ALLOW_ALL, PROXY_PORTS, HttpRule, L7Part
from podnet.calc.policy_cilium import EndpointMap
from podnet.calc.policymap import ANY_IDENTITY, PolicyKey

NOTHING = (HttpRule(unmatchable=True),)


def _last_port(port: int, prefix: int) -> int:
    return port | ((1 << (16 - prefix)) - 1) if prefix < 16 else port


def http_policies(maps: Mapping[str, EndpointMap], addresses: Mapping[str, str]) -> list[HttpPolicy]:
    """What the proxy enforces for these local endpoints (``addresses``: pod key -> its IPv4)."""
    out: list[HttpPolicy] = []
    for key in sorted(maps):
        endpoint = maps[key]
        address = addresses.get(key)
        if not endpoint.l7 or not address:
            continue
        parts: dict[tuple[str, int, int, int], list[L7Part]] = {}
        for part in endpoint.l7:
            parts.setdefault((part.direction, part.protocol, part.port, part.prefix), []).append(part)
        groups: dict[tuple[str, int, int, int, tuple[HttpRule, ...], tuple[str, ...]], set[int]] = {}
        for entry_key, entry in endpoint.entries.items():
            if entry.deny or entry.proxy_port != PROXY_PORTS[entry_key.direction]:
                continue  # not a redirect to the HTTP proxy (none, or to the DNS proxy)
            where = (entry_key.direction, entry_key.protocol, entry_key.port, entry_key.prefix)
            sections = parts.get(where, [])
            named = {p.provenance for p in sections}
            wildcard = endpoint.entries.get(PolicyKey(entry_key.direction, ANY_IDENTITY, *where[1:]))
            l4_too = any(p not in named for p in entry.provenance) or (
                wildcard is not None
                and not wildcard.deny
                and (not wildcard.proxy_port or any(p not in named for p in wildcard.provenance))
            )
            applying = [p for p in sections if p.peer in (entry_key.identity, ANY_IDENTITY)]
            if l4_too:
                rules, names = ALLOW_ALL, ("+".join(sorted(entry.provenance)),)
            elif applying:
                rules = tuple(r for p in applying for r in p.rules)
                names = tuple(f"{p.provenance}:http:{j}" for p in applying for j in range(len(p.rules)))
            else:
                rules, names = NOTHING, ("unexplained-redirect",)
            groups.setdefault((*where, rules, names), set()).add(entry_key.identity)
        for (direction, _protocol, port, prefix, rules, names), identities in sorted(
            groups.items(), key=lambda item: repr(item[0])
        ):
            label = "+".join(sorted({n.rsplit(":http:", 1)[0] for n in names}))
            out.append(
                HttpPolicy(
                    direction,
                    address,
                    port,
                    _last_port(port, prefix),
                    None if ANY_IDENTITY in identities else frozenset(identities),
                    rules,
                    label,
                    names if rules else (),
                )
            )
    return out


@dataclass(frozen=True)
class DnsPolicy:
    """Lookups from the local endpoint at ``endpoint`` to peers of ``identities`` (None: any) on
    ``protocol`` ports ``first``..``last``: allowed when a selector matches the name
    (``selectors`` None: every name, an L4-only rule covers the same port); ``name``: provenance."""

    endpoint: str
    protocol: int
    first: int
    last: int
    identities: frozenset[int] | None
    selectors: tuple[DnsSelector, ...] | None
    name: str


def dns_policies(maps: Mapping[str, EndpointMap], addresses: Mapping[str, str]) -> list[DnsPolicy]:
    """What the DNS proxy enforces for these local endpoints (``addresses``: pod key -> IPv4):
    per redirect entry to the DNS proxy, the DNS sections naming its peer or any peer, ORed; an
    L4-only rule on the same key (or the any-peer key) lets every name through, as for HTTP."""
    out: list[DnsPolicy] = []
    for key in sorted(maps):
        endpoint, address = maps[key], addresses.get(key)
        if not endpoint.dns or not address:
            continue
        for entry_key, entry in sorted(endpoint.entries.items(), key=lambda item: repr(item[0])):
            if entry.deny or entry.proxy_port != DNS_PROXY_PORT:
                continue
            where = (entry_key.protocol, entry_key.port, entry_key.prefix)
            sections = [
                p
                for p in endpoint.dns
                if (p.protocol, p.port, p.prefix) == where and p.peer in (entry_key.identity, ANY_IDENTITY)
            ]
            named = {p.provenance for p in endpoint.dns if (p.protocol, p.port, p.prefix) == where}
            wildcard = endpoint.entries.get(PolicyKey(entry_key.direction, ANY_IDENTITY, *where))
            l4_too = any(p not in named for p in entry.provenance) or (
                wildcard is not None and not wildcard.deny and wildcard.proxy_port != DNS_PROXY_PORT
            )
            selectors = None if l4_too else tuple(s for p in sections for s in p.selectors)
            out.append(
                DnsPolicy(
                    address,
                    entry_key.protocol,
                    entry_key.port,
                    _last_port(entry_key.port, entry_key.prefix),
                    None if entry_key.identity == ANY_IDENTITY else frozenset({entry_key.identity}),
                    selectors,
                    "+".join(sorted({p.provenance for p in sections})) or "+".join(sorted(entry.provenance)),
                )
            )
    return out
