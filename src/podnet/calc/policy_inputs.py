"""From the watch cache to :func:`~podnet.calc.policy.compile_policies` (pure): one place that
decides which policy kinds a profile enforces and gathers what they refer to. The agent and
``podnet policy explain/test`` both compile through :func:`compile_cluster`, so they cannot
disagree.

    profile   kinds enforced
    --------  --------------------------------------------------------------------------------
    calico    NetworkPolicy (Kubernetes), Calico NetworkPolicy and GlobalNetworkPolicy in their
              Tiers, AdminNetworkPolicy, BaselineAdminNetworkPolicy, ClusterNetworkPolicy
    cilium    NetworkPolicy (Kubernetes) as nftables rules (:func:`compile_cluster`, what
              ``policy explain`` and the drop monitor read), and NetworkPolicy,
              CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy by identity into each local
              endpoint's eBPF policy map (:func:`compile_cilium`, what the kernel enforces);
              Cilium does not implement the admin kinds
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from podnet.calc.identity import pod_label_sets
from podnet.calc.ipcache import IpcacheEntry, cidr_identities, ipcache
from podnet.calc.memo import ObjectMemo
from podnet.calc.policy import HostSubject, PodInfo, PolicyPlan, compile_policies
from podnet.calc.policy_cilium import (
    EndpointMap,
    IdentityUniverse,
    ServiceTarget,
    compile_endpoint_maps,
    policy_cidrs,
)
from podnet.calc.policy_cnp import rule_cidrs, uses_services
from podnet.calc.services import ReadyPods, selected_endpoints
from podnet.model.identity import RESERVED, LabelSet

CALICO = "calico"


def policy_objects(cache: Any, profile: str) -> list[Any]:
    """Every policy object ``profile`` enforces, from the cache."""
    objects: list[Any] = list(cache.netpols.values())
    if profile != CALICO:
        return objects
    objects += cache.calico_policies.values()
    objects += cache.global_policies.values()
    objects += cache.admin_policies.values()
    if cache.baseline_policy is not None:
        objects.append(cache.baseline_policy)
    objects += cache.cluster_policies.values()
    return objects


def service_targets(cache: Any) -> tuple[ServiceTarget, ...]:
    """Every Service as ``toServices`` rules match it (sorted: part of the universe's memo key)."""
    out = []
    for service in cache.services.values():
        meta, spec = service.metadata, service.spec
        selector = tuple(sorted(spec.selector.items())) if spec.selector else None
        labels = tuple(sorted((meta.labels or {}).items()))
        out.append((meta.namespace or "default", meta.name, labels, selector))
    return tuple(
        ServiceTarget(ns, name, dict(labels), None if selector is None else dict(selector))
        for ns, name, labels, selector in sorted(out)
    )


def service_backends(
    cache: Any,
    memo: ObjectMemo[tuple[tuple[str, str, int], ...]] | None = None,
    names: Iterable[str] | None = None,
) -> dict[str, tuple[tuple[str, str, int], ...]]:
    """``ns/name`` -> (address, protocol, target port) of every ready endpoint of each Service
    (``names``: of those only; a name without a Service is left out). ``memo`` (kept between
    syncs, for one set of ``names``): computed again only for a service whose object or selected
    pods are not the same objects as last time."""
    pods = getattr(cache, "ready_pods", None) or ReadyPods(cache.pods.values())
    wanted = cache.services.items() if names is None else _present(cache.services, names)
    out: dict[str, tuple[tuple[str, str, int], ...]] = {}
    for key, service in wanted:
        chosen = pods.selected(service.metadata.namespace or "default", service.spec.selector)

        def compute(service: Any = service, chosen: tuple = chosen) -> tuple[tuple[str, str, int], ...]:  # type: ignore[type-arg]
            found = {
                (backend.ip, protocol, backend.port)
                for (_, protocol), backends in selected_endpoints(service, chosen).items()
                for backend in backends
            }
            return tuple(sorted(found))

        out[key] = compute() if memo is None else memo.get(key, service, chosen, compute)
    if memo is not None:
        memo.retain(set(out))
    return out


def _present(services: Mapping[str, Any], names: Iterable[str]) -> list[tuple[str, Any]]:
    return [(name, services[name]) for name in sorted(set(names)) if name in services]


def referenced_services(objects: Iterable[Any]) -> set[str]:
    """``ns/name`` of every Service a Calico rule's ``services`` names, resolved by the compiler's
    own :func:`~podnet.calc.policy_calico.service_ref`: the only Services whose endpoints a policy
    compile reads (a name missed here would leave a Deny on that Service matching nothing)."""
    from podnet.calc.policy_calico import service_ref

    out: set[str] = set()
    for policy in objects:
        spec = getattr(policy, "spec", None)
        namespace = getattr(policy.metadata, "namespace", None)
        for rule in [*(getattr(spec, "ingress", None) or ()), *(getattr(spec, "egress", None) or ())]:
            for entity in (getattr(rule, "source", None), getattr(rule, "destination", None)):
                service = getattr(entity, "services", None)
                if service is not None and getattr(service, "name", None):
                    out.add(service_ref(service, namespace))
    return out


def compile_cluster(
    cache: Any,
    local_pods: Iterable[PodInfo],
    profile: str,
    hosts: dict[str, HostSubject] | None = None,
    objects: list[Any] | None = None,
    memo: ObjectMemo[Any] | None = None,
) -> PolicyPlan:
    """The plan for ``local_pods`` under every policy ``profile`` enforces (or only ``objects``);
    with ``hosts`` (host endpoint subjects, :mod:`podnet.calc.host_policy`) also for those."""
    pods = cache.pod_infos()
    objects = policy_objects(cache, profile) if objects is None else objects
    if profile != CALICO:
        return compile_policies(local_pods, pods, cache.namespaces, objects, memo=memo)
    nodes = {name: (info.labels, tuple(a for a in (info.ip,) if a)) for name, info in cache.nodes.items()}
    host_endpoints = [
        (dict(hep.metadata.labels or {}), tuple(hep.spec.expected_ips or ()))
        for hep in cache.host_endpoints.values()
    ]
    return compile_policies(
        local_pods,
        pods,
        cache.namespaces,
        objects,
        tiers=list(cache.tiers.values()),
        service_accounts=cache.service_accounts,
        service_backends=service_backends(cache, names=referenced_services(objects)),
        nodes=nodes,
        host_endpoints=host_endpoints,
        hosts=hosts,
        memo=memo,
    )


def compile_hosts(
    cache: Any, hosts: dict[str, HostSubject], memo: ObjectMemo[Any] | None = None
) -> PolicyPlan:
    """The GlobalNetworkPolicies of the Calico profile for host endpoint subjects ``hosts`` only
    (the same compile as the pods'; no pod is a subject here)."""
    return compile_cluster(cache, (), CALICO, hosts, list(cache.global_policies.values()), memo)


@dataclass(frozen=True)
class CiliumPlan:
    """What the Cilium profile's datapath enforces on one node: each local pod's policy map, the
    ipcache, every pod's identity number (pods whose label set has none yet are missing), and
    the universe the peers were resolved against, every pod's identity label set."""

    maps: Mapping[str, EndpointMap]
    ipcache: Mapping[str, IpcacheEntry]
    pod_identity: Mapping[str, int]
    universe: IdentityUniverse
    label_sets: Mapping[str, LabelSet] = field(default_factory=dict)


@dataclass
class CiliumMemo:
    """What :func:`compile_cilium` keeps between syncs (the agent holds one): each pod's label set
    while the pod and its namespace's labels are the same, the identity universe while its inputs
    are (and with it every peer it resolved), the CIDRs' numbers while the CIDRs are, each
    endpoint's map while its inputs are, the ipcache while its inputs are."""

    labels: ObjectMemo[Any] = field(default_factory=ObjectMemo)
    universe: ObjectMemo[Any] = field(default_factory=ObjectMemo)
    maps: ObjectMemo[Any] = field(default_factory=ObjectMemo)
    selection: ObjectMemo[Any] = field(default_factory=ObjectMemo)
    cidrs: ObjectMemo[Any] = field(default_factory=ObjectMemo)
    cidr_numbers: ObjectMemo[Any] = field(default_factory=ObjectMemo)
    ipcache: ObjectMemo[Any] = field(default_factory=ObjectMemo)


def compile_cilium(
    cache: Any,
    local_pods: Iterable[PodInfo],
    node: str,
    apiserver: Iterable[str] = (),
    memo: CiliumMemo | None = None,
    l7_proxy: bool = False,
    fqdns: Mapping[str, tuple[str, ...]] | None = None,
) -> CiliumPlan:
    """The Cilium profile's plan for ``node`` from the watch cache (pure): identities by label set
    (:mod:`podnet.calc.identity`; numbers from the datastore's allocator), NetworkPolicy and
    CNP/CCNP compiled by identity (:func:`podnet.calc.policy_cilium.compile_endpoint_maps`), the
    ipcache of every pod, node, the API server (``apiserver``) and policy CIDR. ``l7_proxy``: the node
    runs the L7 proxy (ports with HTTP rules become redirect entries). ``fqdns``: what the node's DNS
    proxy learnt (name -> addresses), which ``toFQDNs`` selects."""
    settings = cache.config.effective() if cache.config else None
    cluster = settings.cluster_name if settings else "default"
    enforcement = settings.policy_enforcement_mode if settings else "default"
    pods = cache.pod_infos()
    if memo is None:
        label_sets = pod_label_sets(pods, cache.namespaces, cluster)
    else:
        contexts = {  # per namespace, not per pod
            name: (cluster, tuple(sorted(labels.items()))) for name, labels in cache.namespaces.items()
        }
        empty = (cluster, ())
        label_sets = {
            pod.key: memo.labels.get(
                pod.key,
                pod,
                contexts.get(pod.namespace, empty),
                lambda pod=pod: pod_label_sets([pod], cache.namespaces, cluster)[pod.key],
            )
            for pod in pods
        }
        memo.labels.retain(set(label_sets))
    pod_identity = {
        key: cache.identity_numbers[ls.digest]
        for key, ls in label_sets.items()
        if ls.digest in cache.identity_numbers
    }
    netpols = list(cache.netpols.values())
    cilium = [*cache.cilium_policies.values(), *cache.cilium_cluster_policies.values()]
    if memo is None:
        texts = [*policy_cidrs(netpols), *rule_cidrs(cilium)]
        services_used = uses_services(cilium)
    else:  # each policy's CIDRs (and whether it names Services) found once while it is the same object
        kinds = (
            ("knp", cache.netpols, lambda p: (policy_cidrs([p]), False)),
            ("cnp", cache.cilium_policies, lambda p: (rule_cidrs([p]), uses_services([p]))),
            ("ccnp", cache.cilium_cluster_policies, lambda p: (rule_cidrs([p]), uses_services([p]))),
        )
        texts = []
        services_used = False
        names = set()
        for kind, table, parse in kinds:
            for key, policy in table.items():
                names.add((kind, key))
                found, uses = memo.cidrs.get((kind, key), policy, None, lambda p=policy, f=parse: f(p))
                texts += found
                services_used |= uses
        memo.cidrs.retain(names)
    fqdns = dict(fqdns or {})
    texts += sorted({f"{a}/32" for addresses in fqdns.values() for a in addresses})
    if memo is None:
        cidrs = cidr_identities(texts)
    else:  # the same CIDRs sync after sync: numbered once
        cidrs = memo.cidr_numbers.get("cidrs", None, tuple(texts), lambda: cidr_identities(texts))
    services = service_targets(cache) if services_used else ()
    by_number: dict[int, list[PodInfo]] = {}
    for pod in pods:
        if pod.key in pod_identity:
            by_number.setdefault(pod_identity[pod.key], []).append(pod)
    addresses = {n: tuple(ip for p in members for ip in p.ips) for n, members in by_number.items()}
    primary = {name: info.ip for name, info in cache.nodes.items() if info.ip}
    addresses[RESERVED["host"]] = tuple(ip for name, ip in primary.items() if name == node)
    addresses[RESERVED["remote-node"]] = tuple(ip for name, ip in primary.items() if name != node)

    def build() -> tuple[IdentityUniverse, dict[int, list[PodInfo]]]:
        universe = IdentityUniverse(
            {number: ls.mapping() for number, ls in cache.identities.items()},
            {number: tuple(members) for number, members in by_number.items()},
            cidrs,
            addresses,
            services,
            fqdns,
        )
        return universe, by_number  # the pods kept alive: their ids are in the context

    if memo is None:
        universe = build()[0]
    else:
        context = (
            tuple(sorted((n, ls.digest) for n, ls in cache.identities.items())),
            tuple(sorted(cidrs.items())),
            tuple(sorted((n, tuple(map(id, members))) for n, members in by_number.items())),
            tuple(sorted(addresses.items())),
            services,
            tuple(sorted(fqdns.items())),
        )
        universe = memo.universe.get("universe", cache, context, build)[0]
    local = list(local_pods)
    maps = compile_endpoint_maps(
        local,
        netpols,
        universe,
        enforcement,
        cilium,
        {p.key: label_sets[p.key].mapping() for p in local if p.key in label_sets},
        memo.maps if memo is not None else None,
        memo.selection if memo is not None else None,
        l7_proxy,
    )
    nodes = {
        name: [a for a in (info.ip, info.vxlan_ip, info.router_ip) if a] for name, info in cache.nodes.items()
    }
    apiserver = tuple(apiserver)
    if memo is None:
        cache_entries = ipcache(pods, pod_identity, nodes, node, apiserver, cidrs)
    else:  # the same object while its inputs are (the datapath then skips re-encoding it)
        context = (
            tuple(map(id, pods)),
            tuple(pod_identity.items()),
            tuple((n, tuple(a)) for n, a in sorted(nodes.items())),
            node,
            apiserver,
            tuple(cidrs.items()),
        )
        cache_entries = memo.ipcache.get(
            "ipcache",
            None,
            context,
            # the pods kept alive with the value: their ids are in the context
            lambda: (ipcache(pods, pod_identity, nodes, node, apiserver, cidrs), pods),
        )[0]
    return CiliumPlan(maps, cache_entries, pod_identity, universe, label_sets)
