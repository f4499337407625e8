"""CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy at L3/L4 (pure), into the per-endpoint
policy maps Kubernetes NetworkPolicy also compiles to (:mod:`podnet.calc.policy_cilium`).

**Selection.** A rule's ``endpointSelector`` matches an endpoint's identity labels; in a CNP only
endpoints of the policy's namespace (Cilium adds ``k8s:io.kubernetes.pod.namespace``), in a CCNP
any. ``nodeSelector`` rules (host policies) select no pod here.

**Enforcement** (policy enforcement mode ``default``): a rule with ``ingress``/``ingressDeny``
enforces ingress on the endpoints it selects, likewise egress; ``enableDefaultDeny: {ingress:
false}`` makes the rule add its allows without enforcing (Cilium's per-direction default deny).

**Peers**, per rule section (``ingress[i]`` …), the union of its L3 fields:

- ``from/toEndpoints``: identities whose labels match (pod identities only), in a CNP scoped to
  its namespace unless the selector names ``io.kubernetes.pod.namespace``; ``{}``: every endpoint
  (of the namespace, in a CNP);
- ``from/toEntities``: ``host`` 1, ``world`` 2, ``unmanaged`` 3, ``health`` 4, ``init`` 5,
  ``remote-node`` 6, ``kube-apiserver`` 7, ``ingress`` 8; ``cluster``: every pod identity and the
  reserved in-cluster ones (host, remote-node, init, health, unmanaged, kube-apiserver, ingress);
  ``all``: any (0); ``none``: nothing;
- ``from/toCIDR``, ``from/toCIDRSet`` (``except``): the node-local CIDR identities inside and not
  excepted, and ``world`` for ``0.0.0.0/0`` (Cilium: world = 0.0.0.0/0); pods and nodes keep their
  own identities, so CIDR rules never select them;
- ``toServices`` (egress; never with ``toPorts``): the identities of the pods behind each Service
  it names (``k8sService`` by name, ``k8sServiceSelector`` by the Service's labels; ``namespace``
  omitted: any), i.e. the Service's selector in its namespace, as current Cilium translates a
  Service with a selector into ``toEndpoints``; the socket LB has already turned the ClusterIP
  into a backend's address when the programs judge the connection. A Service without a selector
  has no endpoints in podnet, so it adds nothing (Cilium turns its Endpoints into ``toCIDRSet``);
- no L3 field: any peer (a ports-only rule).

**Ports**: ``toPorts[].ports[]`` by number (``0``: all), range (``endPort``) or name (ingress: the
endpoint's container port; egress: the peers' pods'), ``protocol`` TCP/UDP/SCTP or ANY (each of
the three); ``icmps``: ICMP (IPv4) or ICMPv6 types, by number or Cilium's names, in the port field
of the key as Cilium does; neither: any protocol. A ``toPorts`` entry with HTTP ``rules`` (TCP
only: the model refuses others) becomes, where the node runs the L7 proxy (``add_policy``'s
``l7``), a redirect entry to the direction's proxy listener, its rules kept for the proxy
(:mod:`podnet.calc.policy_l7`); elsewhere it allows its ports at L4 and the policy's status says
its rules are not enforced (:func:`l7_sections`): the L3/L4 part isolates as written, never a
silent allow. ``from/toNodes`` and ``toFQDNs`` are not compiled yet: a section using them allows nothing
(and :func:`unsupported` names them), as does an unknown ICMP name.

**Requirements**: the ``from/toRequires`` selectors of every rule that selects an endpoint apply to
all of that endpoint's allows in that direction, whichever policy (NetworkPolicy too) gave them:
a peer must also match each of them (:func:`apply_requires`); they never allow anything themselves.

**Deny**: ``ingressDeny``/``egressDeny`` sections give deny entries (deny wins over every allow of
every kind, :func:`podnet.calc.policymap.materialize`).

Provenance: ``cnp:<ns>/<name>:<section>:<index>`` (``ccnp:<name>:…`` for a CCNP).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from podnet.calc.identity import NAMESPACE_LABEL
from podnet.calc.l7_dns import DNS_PROXY_PORT, DnsPart, dns_selectors
from podnet.calc.l7_dns import matches as dns_matches
from podnet.calc.l7_http import PROXY_PORTS, L7Part, http_rules
from podnet.calc.policy import PodInfo
from podnet.calc.policy_cilium import (
    PROTOCOL_NUMBERS,
    IdentityUniverse,
    ServiceTarget,
    cidr_identities_within,
)
from podnet.calc.policymap import (
    ANY_IDENTITY,
    EGRESS,
    INGRESS,
    PolicyEntry,
    PolicyKey,
    PolicyMap,
    add_entry,
    port_prefixes,
)
from podnet.model.cilium import CiliumClusterwideNetworkPolicy, CiliumRule, PortRule, ServiceRef
from podnet.model.identity import RESERVED
from podnet.model.selectors import EndpointSelector

#: The reserved identities Cilium's ``cluster`` entity includes besides every pod.
CLUSTER_RESERVED = ("host", "remote-node", "init", "health", "unmanaged", "kube-apiserver", "ingress")
UNSUPPORTED_FIELDS = (
    ("from_nodes", "fromNodes"),
    ("to_nodes", "toNodes"),
    ("from_groups", "fromGroups"),
    ("to_groups", "toGroups"),
)


#: Cilium's ICMP type names (``pkg/policy/api/icmp.go``), per family.
ICMP_TYPES = {
    "IPv4": {
        "EchoReply": 0,
        "DestinationUnreachable": 3,
        "Redirect": 5,
        "Echo": 8,
        "EchoRequest": 8,
        "RouterAdvertisement": 9,
        "RouterSelection": 10,
        "TimeExceeded": 11,
        "ParameterProblem": 12,
        "Timestamp": 13,
        "TimestampReply": 14,
        "Photuris": 40,
        "ExtendedEchoRequest": 42,
        "ExtendedEchoReply": 43,
    },
    "IPv6": {
        "DestinationUnreachable": 1,
        "PacketTooBig": 2,
        "TimeExceeded": 3,
        "ParameterProblem": 4,
        "EchoRequest": 128,
        "EchoReply": 129,
        "MulticastListenerQuery": 130,
        "MulticastListenerReport": 131,
        "MulticastListenerDone": 132,
        "RouterSolicitation": 133,
        "RouterAdvertisement": 134,
        "NeighborSolicitation": 135,
        "NeighborAdvertisement": 136,
        "RedirectMessage": 137,
        "RouterRenumbering": 138,
        "ICMPNodeInformationQuery": 139,
        "ICMPNodeInformationResponse": 140,
        "InverseNeighborDiscoverySolicitation": 141,
        "InverseNeighborDiscoveryAdvertisement": 142,
        "HomeAgentAddressDiscoveryRequest": 144,
        "HomeAgentAddressDiscoveryReply": 145,
        "MobilePrefixSolicitation": 146,
        "MobilePrefixAdvertisement": 147,
        "DuplicateAddressRequestCodeSuffix": 157,
        "DuplicateAddressConfirmationCodeSuffix": 158,
        "ExtendedEchoRequest": 160,
        "ExtendedEchoReply": 161,
    },
}
ICMP_PROTOCOLS = {"IPv4": 1, "IPv6": 58}


def icmp_type(value: int | str, family: str) -> int | None:
    """An ICMP type by number or by Cilium's name for ``family`` (None: an unknown name)."""
    return value if isinstance(value, int) else ICMP_TYPES[family].get(value)


def policy_name(policy: Any) -> str:
    """``cnp:<ns>/<name>`` or ``ccnp:<name>``: the provenance prefix of a policy's entries."""
    if isinstance(policy, CiliumClusterwideNetworkPolicy):
        return f"ccnp:{policy.name}"
    return f"cnp:{policy.namespace or 'default'}/{policy.name}"


def _namespace(policy: Any) -> str | None:
    return None if isinstance(policy, CiliumClusterwideNetworkPolicy) else (policy.namespace or "default")


def _names_namespace(selector: EndpointSelector) -> bool:
    keys = [*(selector.match_labels or {}), *(e.key for e in selector.match_expressions or [])]
    return any(key.split(":", 1)[-1] == NAMESPACE_LABEL for key in keys)


def selects(policy: Any, rule: CiliumRule, labels: dict[str, str]) -> bool:
    """Whether ``rule`` of ``policy`` selects an endpoint with identity ``labels``."""
    if rule.endpoint_selector is None:
        return False  # a host policy (nodeSelector): no pod
    namespace = _namespace(policy)
    if namespace is not None and labels.get(NAMESPACE_LABEL) != namespace:
        return False
    return rule.endpoint_selector.matches(labels)


def endpoint_identities(
    selector: EndpointSelector, namespace: str | None, universe: IdentityUniverse
) -> set[int]:
    """Pod identities ``selector`` matches, scoped to ``namespace`` unless it names one."""
    scope = None if namespace is None or _names_namespace(selector) else namespace
    return {
        number
        for number, labels in universe.labels.items()
        if NAMESPACE_LABEL in labels
        and (scope is None or labels[NAMESPACE_LABEL] == scope)
        and selector.matches(labels)
    }


def entity_identities(entity: str, universe: IdentityUniverse) -> set[int]:
    if entity == "all":
        return {ANY_IDENTITY}
    if entity == "none":
        return set()
    if entity == "cluster":
        pods = {n for n, labels in universe.labels.items() if NAMESPACE_LABEL in labels}
        return pods | {RESERVED[name] for name in CLUSTER_RESERVED}
    if entity in ("world-ipv4", "world-ipv6"):
        return {RESERVED["world"]}
    return {RESERVED[entity]}


def rule_cidrs(policies: Iterable[Any]) -> list[str]:
    """Every CIDR the policies' CIDR fields name (excepts included): each needs an identity."""
    out: set[str] = set()
    for policy in policies:
        for rule in policy.rules():
            for section in (rule.ingress, rule.ingress_deny, rule.egress, rule.egress_deny):
                for part in section or []:
                    cidrs = getattr(part, "from_cidr", None) or getattr(part, "to_cidr", None) or []
                    sets = getattr(part, "from_cidr_set", None) or getattr(part, "to_cidr_set", None) or []
                    texts = [*cidrs, *(c.cidr for c in sets if c.cidr)]
                    texts += [e for c in sets for e in c.except_ or []]
                    out.update(str(ipaddress.ip_network(text, strict=False)) for text in texts)
    return sorted(out)


def _peers(part: Any, direction: str, namespace: str | None, universe: IdentityUniverse) -> set[int] | None:
    """The identities of a section's L3 fields (None: it has none, any peer); once per section
    and universe (:meth:`IdentityUniverse.memo`)."""
    return universe.memo(part, direction, namespace, lambda: _resolve(part, direction, namespace, universe))


def _resolve(part: Any, direction: str, namespace: str | None, universe: IdentityUniverse) -> set[int] | None:
    prefix = "from" if direction == INGRESS else "to"
    endpoints = getattr(part, f"{prefix}_endpoints")
    entities = getattr(part, f"{prefix}_entities")
    cidrs = getattr(part, f"{prefix}_cidr")
    cidr_sets = getattr(part, f"{prefix}_cidr_set")
    services = getattr(part, "to_services", None) if direction == EGRESS else None
    fqdns = getattr(part, "to_fqdns", None) if direction == EGRESS else None
    fields = (endpoints, entities, cidrs, cidr_sets, services, fqdns)
    if all(field is None for field in fields):
        return None
    out: set[int] = set()
    for selector in fqdns or []:  # the addresses the DNS proxy learnt for the names it matches
        for name, addresses in universe.fqdns.items():
            if dns_matches(selector, name):
                for address in addresses:
                    out |= cidr_identities_within(f"{address}/32", (), universe)
    for ref in services or []:
        out |= service_identities(ref, universe)
    for selector in endpoints or []:
        out |= endpoint_identities(selector, namespace, universe)
    for entity in entities or []:
        out |= entity_identities(entity, universe)
    for cidr in cidrs or []:
        out |= cidr_identities_within(cidr, (), universe)
    for cidr_set in cidr_sets or []:
        if cidr_set.cidr:
            out |= cidr_identities_within(cidr_set.cidr, cidr_set.except_ or (), universe)
    return out


def service_matches(ref: ServiceRef, service: ServiceTarget) -> bool:
    """Whether a ``toServices`` entry names ``service``: by name, or by a selector on the Service's
    labels; in its ``namespace``, or in any when that is omitted (as Cilium matches them)."""
    if ref.k8s_service is not None:
        named, namespace = ref.k8s_service.service_name, ref.k8s_service.namespace
        return named == service.name and namespace in (None, "", service.namespace)
    assert ref.k8s_service_selector is not None
    namespace = ref.k8s_service_selector.namespace
    return namespace in (None, "", service.namespace) and ref.k8s_service_selector.selector.matches(
        service.labels
    )


def service_identities(ref: ServiceRef, universe: IdentityUniverse) -> set[int]:
    """The identities behind the Services a ``toServices`` entry names: those of the pods each
    Service's selector matches in its namespace (Cilium's translation to ``toEndpoints``). A Service
    without a selector has no endpoints here (podnet keeps no EndpointSlices): it adds nothing."""
    out: set[int] = set()
    for service in universe.services:
        if service.selector is None or not service_matches(ref, service):
            continue
        wanted = {**service.selector, NAMESPACE_LABEL: service.namespace}
        out |= {
            number
            for number, labels in universe.labels.items()
            if all(labels.get(k) == v for k, v in wanted.items())
        }
    return out


def uses_services(policies: Iterable[Any]) -> bool:
    """Whether any rule of ``policies`` has a ``toServices`` peer (then the Services are an input)."""
    return any(
        part.to_services
        for policy in policies
        for rule in policy.rules()
        for part in (*(rule.egress or []), *(rule.egress_deny or []))
    )


#: (protocol, port, prefix, the L7 rules of its toPorts entry: ("http", HttpRule...) or ("dns",
#: DnsSelector...), or None)
PortKey = tuple[int, int, int, tuple[str, tuple[Any, ...]] | None]


def _port_keys(
    port_rules: list[PortRule] | None, direction: str, pod: PodInfo, peer: int, universe: IdentityUniverse
) -> list[PortKey] | None:
    """(protocol, port, prefix, the HTTP rules of its ``toPorts`` entry or None) of a section's
    ``toPorts`` for ``peer``; None: any protocol."""
    if not port_rules:
        return None
    out: list[PortKey] = []
    for port_rule in port_rules:
        rules = port_rule.rules
        http: tuple[str, tuple[Any, ...]] | None = None
        if rules is not None and rules.http:
            http = ("http", http_rules(rules.http))
        elif rules is not None and rules.dns is not None:
            http = ("dns", dns_selectors(rules.dns))
        for port in port_rule.ports or []:
            protocols = ("TCP", "UDP", "SCTP") if port.protocol == "ANY" else (port.protocol,)
            for protocol in protocols:
                number = PROTOCOL_NUMBERS[protocol]
                if port.port.isdigit():
                    first = int(port.port)
                    if first == 0:
                        out.append((number, 0, 0, http))
                        continue
                    for start, prefix in port_prefixes(first, max(first, port.end_port or first)):
                        out.append((number, start, prefix, http))
                    continue
                if direction == INGRESS:
                    found = {pod.named_port(port.port, protocol)}
                else:
                    found = {p.named_port(port.port, protocol) for p in universe.pods.get(peer, ())}
                out += [(number, n, 16, http) for n in sorted(f for f in found if f is not None)]
    return list(dict.fromkeys(out))


def _names_ports(port_rules: list[PortRule] | None) -> bool:
    """Whether a ``toPorts`` names a port (by name, not number)."""
    return any(not port.port.isdigit() for rule in port_rules or [] for port in rule.ports or [])


def _icmp_keys(icmps: list[Any]) -> list[PortKey]:
    """(ICMP protocol, type, 16, None) per field; an unknown name adds nothing (fail closed)."""
    out: list[PortKey] = []
    for icmp_rule in icmps:
        for field in icmp_rule.fields:
            number = icmp_type(field.type, field.family)
            if number is not None:
                out.append((ICMP_PROTOCOLS[field.family], number, 16, None))
    return list(dict.fromkeys(out))


def add_policy(
    policy: Any,
    pod: PodInfo,
    labels: dict[str, str],
    universe: IdentityUniverse,
    entries: PolicyMap,
    l7: list[L7Part | DnsPart] | None = None,
) -> dict[str, bool]:
    """Add the entries ``policy`` gives endpoint ``pod`` (identity ``labels``) to ``entries``;
    returns the directions it enforces. With ``l7`` (the node runs the L7 proxy), a port with
    HTTP rules becomes a redirect entry to the direction's proxy listener and its rules are
    appended to ``l7``; without, it is a plain allow (the rules unenforced, said in the status)."""
    enforced = {INGRESS: False, EGRESS: False}
    namespace = _namespace(policy)
    name = policy_name(policy)
    for rule in policy.rules():
        if not selects(policy, rule, labels):
            continue
        default_ingress, default_egress = rule.default_deny()
        enforced[INGRESS] |= default_ingress
        enforced[EGRESS] |= default_egress
        sections = (
            ("ingress", INGRESS, False, rule.ingress),
            ("ingressDeny", INGRESS, True, rule.ingress_deny),
            ("egress", EGRESS, False, rule.egress),
            ("egressDeny", EGRESS, True, rule.egress_deny),
        )
        for section, direction, deny, parts in sections:
            for index, part in enumerate(parts or []):
                if any(getattr(part, attr, None) for attr, _ in UNSUPPORTED_FIELDS):
                    continue  # not compiled yet: allows (denies) nothing; unsupported() says so
                entry = PolicyEntry(deny, 0, (f"{name}:{section}:{index}",))
                peers = _peers(part, direction, namespace, universe)
                requires = part.from_requires if direction == INGRESS else part.to_requires
                if peers is None and requires:
                    continue  # requirements only: they never allow by themselves
                # the keys depend on the peer only through egress named ports (the peer's pods')
                shared = part.icmps or not (direction == EGRESS and _names_ports(part.to_ports))
                same = None
                if part.icmps:
                    same = _icmp_keys(part.icmps)
                elif shared:
                    same = _port_keys(part.to_ports, direction, pod, ANY_IDENTITY, universe)
                for peer in sorted({ANY_IDENTITY} if peers is None else peers):
                    keys = same if shared else _port_keys(part.to_ports, direction, pod, peer, universe)
                    if keys is None:
                        add_entry(entries, PolicyKey(direction, peer), entry)
                        continue
                    for protocol, port, prefix, rules in keys:
                        key = PolicyKey(direction, peer, protocol, port, prefix)
                        kind = rules[0] if rules is not None else None
                        if kind is None or l7 is None or deny or (kind == "dns" and direction != EGRESS):
                            add_entry(entries, key, entry)
                            continue
                        origin = entry.provenance[0]
                        if kind == "dns":
                            add_entry(entries, key, replace(entry, proxy_port=DNS_PROXY_PORT))
                            l7.append(DnsPart(peer, protocol, port, prefix, rules[1], origin))
                            continue
                        add_entry(entries, key, replace(entry, proxy_port=PROXY_PORTS[direction]))
                        l7.append(L7Part(direction, peer, protocol, port, prefix, rules[1], origin))
    return enforced


def unsupported(policy: Any) -> list[str]:
    """Fields of ``policy`` this profile does not compile yet (their sections allow nothing)."""
    found = []
    for r, rule in enumerate(policy.rules()):
        for section in ("ingress", "ingress_deny", "egress", "egress_deny"):
            for i, part in enumerate(getattr(rule, section) or []):
                for attr, field_name in UNSUPPORTED_FIELDS:
                    if getattr(part, attr, None):
                        found.append(f"specs[{r}].{section}[{i}].{field_name}")
                for j, icmp_rule in enumerate(part.icmps or []):
                    for k, field in enumerate(icmp_rule.fields):
                        if icmp_type(field.type, field.family) is None:
                            found.append(
                                f"specs[{r}].{section}[{i}].icmps[{j}].fields[{k}].type {field.type}"
                            )
    return found


def uses_fqdns(policy: Any, labels: dict[str, str]) -> bool:
    """Whether a rule of ``policy`` that selects the endpoint with ``labels`` has toFQDNs."""
    return any(
        selects(policy, rule, labels) and any(part.to_fqdns for part in rule.egress or [])
        for rule in policy.rules()
    )


def fqdn_without_dns(maps: Any) -> dict[str, list[str]]:
    """Policy name -> the local endpoints its toFQDNs applies to while no DNS rule sends their
    lookups to the DNS proxy: nothing can ever be learnt for them (cilium#28427's footgun)."""
    out: dict[str, list[str]] = {}
    for key, endpoint in sorted(maps.items()):
        if endpoint.fqdn_policies and not endpoint.dns:
            for name in endpoint.fqdn_policies:
                out.setdefault(name, []).append(key)
    return out


def l7_sections(policy: Any) -> dict[str, list[str]]:
    """``toPorts`` entries with L7 rules, by protocol (``http``, ``dns``): their paths in the object."""
    found: dict[str, list[str]] = {}
    for r, rule in enumerate(policy.rules()):
        for section in ("ingress", "egress"):
            for i, part in enumerate(getattr(rule, section) or []):
                for j, port_rule in enumerate(part.to_ports or []):
                    if port_rule.rules is not None:
                        for kind in port_rule.rules.types():
                            found.setdefault(kind, []).append(f"specs[{r}].{section}[{i}].toPorts[{j}].rules")
    return found


#: direction -> (selector, namespace scope) of each from/toRequires that applies
Requirements = dict[str, list[tuple[EndpointSelector, str | None]]]


def requirements(policies: Iterable[Any], labels: dict[str, str]) -> Requirements:
    """direction -> the (selector, namespace scope) of every from/toRequires of the rules that
    select an endpoint with identity ``labels``."""
    out: Requirements = {INGRESS: [], EGRESS: []}
    for policy in policies:
        namespace = _namespace(policy)
        for rule in policy.rules():
            if not selects(policy, rule, labels):
                continue
            for part in rule.ingress or []:
                out[INGRESS] += [(s, namespace) for s in part.from_requires or []]
            for part in rule.egress or []:
                out[EGRESS] += [(s, namespace) for s in part.to_requires or []]
    return out


def apply_requires(
    entries: PolicyMap,
    required: Requirements,
    universe: IdentityUniverse,
) -> PolicyMap:
    """``entries`` with every allow of a direction that has requirements narrowed to the peers
    that meet all of them (an any-peer allow becomes one allow per such peer); denies untouched."""
    allowed = {
        direction: set.intersection(*(endpoint_identities(s, ns, universe) for s, ns in selectors))
        for direction, selectors in required.items()
        if selectors
    }
    out: PolicyMap = {}
    for key, entry in entries.items():
        if entry.deny or key.direction not in allowed:
            add_entry(out, key, entry)
            continue
        peers = allowed[key.direction]
        if key.identity == ANY_IDENTITY:
            for peer in sorted(peers):
                add_entry(out, PolicyKey(key.direction, peer, key.protocol, key.port, key.prefix), entry)
        elif key.identity in peers:
            add_entry(out, key, entry)
    return out
