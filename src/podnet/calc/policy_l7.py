"""The HTTP rules the node's L7 proxy enforces, from the local endpoints' policy maps (pure).

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

from podnet.calc.haproxy import HttpPolicy
from podnet.calc.l7_http import ALLOW_ALL, HttpRule, L7Part
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
            if entry.deny or not entry.proxy_port:
                continue
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
