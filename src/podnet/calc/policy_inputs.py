"""From the watch cache to :func:`~podnet.calc.policy.compile_policies` (pure): one place that
decides which policy kinds a profile enforces and gathers what they refer to. The agent and
``podnet policy explain/test`` both compile through :func:`compile_cluster`, so they cannot
disagree.

    profile   kinds enforced
    --------  --------------------------------------------------------------------------------
    calico    NetworkPolicy (Kubernetes), Calico NetworkPolicy and GlobalNetworkPolicy in their
              Tiers, AdminNetworkPolicy, BaselineAdminNetworkPolicy, ClusterNetworkPolicy
    cilium    NetworkPolicy (Kubernetes) only (Cilium does not implement the admin kinds;
              CiliumNetworkPolicy is the eBPF issue's)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from podnet.calc.memo import ObjectMemo
from podnet.calc.policy import HostSubject, PodInfo, PolicyPlan, compile_policies
from podnet.calc.services import service_endpoints

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


def service_backends(cache: Any) -> dict[str, tuple[tuple[str, str, int], ...]]:
    """``ns/name`` -> (address, protocol, target port) of every ready endpoint of each Service."""
    pods = list(cache.pods.values())
    out: dict[str, tuple[tuple[str, str, int], ...]] = {}
    for key, service in cache.services.items():
        found = {
            (backend.ip, protocol, backend.port)
            for (_, protocol), backends in service_endpoints(service, pods).items()
            for backend in backends
        }
        out[key] = tuple(sorted(found))
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
        service_backends=service_backends(cache),
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
