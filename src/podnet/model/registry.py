"""The one table of every kind podnet knows, and the name lookups built on it.

    kind                            group                     namespaced  short names
    ------------------------------  ------------------------  ----------  -----------------------------
    Namespace                       (core) v1                 no          ns
    Pod                             (core) v1                 yes         po
    Node                            (core) v1                 no          no
    Service                         (core) v1                 yes         svc
    ServiceAccount                  (core) v1                 yes         sa
    NetworkPolicy                   networking.k8s.io         yes         netpol
    IPPool                          projectcalico.org         no          ippool, ipp, pool
    BGPConfiguration                projectcalico.org         no          bgpconfig, bgpconfigs
    BGPPeer                         projectcalico.org         no          bgppeer, bgpp
    NetworkPolicy                   projectcalico.org         yes         cnetpol, calicopolicy
    GlobalNetworkPolicy             projectcalico.org         no          gnp, globalnetpol, globalpolicy
    HostEndpoint                    projectcalico.org         no          hep, heps
    Tier                            projectcalico.org         no
    CiliumNetworkPolicy             cilium.io                 yes         cnp, ciliumnp
    CiliumClusterwideNetworkPolicy  cilium.io                 no          ccnp
    AdminNetworkPolicy              policy.networking.k8s.io  no          anp
    BaselineAdminNetworkPolicy      policy.networking.k8s.io  no          banp
    ClusterNetworkPolicy            policy.networking.k8s.io  no
    ClusterConfiguration            podnet.io                 no          clusterconfig

``resource_type_for(apiVersion, kind)`` dispatches a document; ``lookup(name)`` resolves what a user
types on the command line the way kubectl does: kind (any case), singular, plural, short name, or
``plural.group`` / ``singular.group`` / ``Kind.group``. A bare name two groups share
(``networkpolicy``) means the Kubernetes one, as in kubectl; ``networkpolicies.projectcalico.org``
names Calico's. ``cnp`` stays CiliumNetworkPolicy's (the ClusterNetworkPolicy CRD claims it too):
ClusterNetworkPolicy goes by ``clusternetworkpolicy``, ``clusternetworkpolicies`` and those with the
group. ``key_name`` (``ippools.projectcalico.org``, ``namespaces``) is the stable name the datastore
uses in its keys.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from podnet.errors import ValidationError
from podnet.model.admin_policy import AdminNetworkPolicy, BaselineAdminNetworkPolicy
from podnet.model.calico import (
    BGPConfiguration,
    BGPPeer,
    CalicoNetworkPolicy,
    GlobalNetworkPolicy,
    HostEndpoint,
    IPPool,
)
from podnet.model.cilium import CiliumClusterwideNetworkPolicy, CiliumNetworkPolicy
from podnet.model.cluster import ClusterConfiguration
from podnet.model.cluster_network_policy import ClusterNetworkPolicy
from podnet.model.core import Namespace, Node, Pod, Service, ServiceAccount
from podnet.model.k8s_policy import NetworkPolicy
from podnet.model.resource import Resource
from podnet.model.tier import Tier


@dataclass(frozen=True)
class ResourceType:
    """What podnet knows about one kind: names, group, versions, scope and model class."""

    kind: str
    group: str  # "" for the core group
    versions: tuple[str, ...]  # accepted apiVersions, preferred first
    plural: str
    singular: str
    short_names: tuple[str, ...]
    namespaced: bool
    model_cls: type[Resource] = field(repr=False)

    @property
    def api_version(self) -> str:
        """The apiVersion podnet writes."""
        return self.versions[0]

    @property
    def key_name(self) -> str:
        """``plural.group`` (``plural`` for the core group): stable, used in datastore keys."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def names(self) -> tuple[str, ...]:
        """Every lowercase name ``lookup`` accepts for this type."""
        bare = (self.kind.lower(), self.singular, self.plural, *self.short_names)
        qualified = (
            tuple(f"{n}.{self.group}" for n in (self.kind.lower(), self.singular, self.plural))
            if self.group
            else ()
        )
        return bare + qualified


def _type(
    model_cls: type[Resource], plural: str, short_names: tuple[str, ...] = (), singular: str | None = None
) -> ResourceType:
    api_version = model_cls.API_VERSIONS[0]
    group = api_version.rpartition("/")[0]
    return ResourceType(
        kind=model_cls.KIND,
        group=group,
        versions=model_cls.API_VERSIONS,
        plural=plural,
        singular=singular or model_cls.KIND.lower(),
        short_names=short_names,
        namespaced=model_cls.NAMESPACED,
        model_cls=model_cls,
    )


# Order matters where a bare name is shared: the first entry wins (Kubernetes before Calico).
RESOURCE_TYPES: list[ResourceType] = [
    _type(Namespace, "namespaces", ("ns",)),
    _type(Pod, "pods", ("po",)),
    _type(Node, "nodes", ("no",)),
    _type(Service, "services", ("svc",)),
    _type(ServiceAccount, "serviceaccounts", ("sa",)),
    _type(NetworkPolicy, "networkpolicies", ("netpol",)),
    _type(IPPool, "ippools", ("ipp", "pool", "pools")),
    _type(BGPConfiguration, "bgpconfigurations", ("bgpconfig", "bgpconfigs")),
    _type(BGPPeer, "bgppeers", ("bgpp",)),
    _type(CalicoNetworkPolicy, "networkpolicies", ("cnetpol", "calicopolicy", "calicopolicies")),
    _type(
        GlobalNetworkPolicy,
        "globalnetworkpolicies",
        ("gnp", "globalnetpol", "globalpolicy", "globalpolicies"),
    ),
    _type(HostEndpoint, "hostendpoints", ("hep", "heps")),
    _type(Tier, "tiers"),
    _type(CiliumNetworkPolicy, "ciliumnetworkpolicies", ("cnp", "ciliumnp")),
    _type(CiliumClusterwideNetworkPolicy, "ciliumclusterwidenetworkpolicies", ("ccnp",)),
    _type(AdminNetworkPolicy, "adminnetworkpolicies", ("anp",)),
    _type(BaselineAdminNetworkPolicy, "baselineadminnetworkpolicies", ("banp",)),
    _type(ClusterNetworkPolicy, "clusternetworkpolicies"),  # its CRD's short name cnp is Cilium's here
    _type(ClusterConfiguration, "clusterconfigurations", ("clusterconfig", "clusterconfigs")),
]

_BY_NAME: dict[str, ResourceType] = {}
for _rt in RESOURCE_TYPES:
    for _name in _rt.names():
        _BY_NAME.setdefault(_name, _rt)

_BY_VERSION_KIND: dict[tuple[str, str], ResourceType] = {
    (version, rt.kind): rt for rt in RESOURCE_TYPES for version in rt.versions
}
API_VERSIONS: tuple[str, ...] = tuple(dict.fromkeys(v for rt in RESOURCE_TYPES for v in rt.versions))


def _did_you_mean(word: str, candidates: list[str]) -> str | None:
    by_lower = {c.lower(): c for c in candidates}
    if word.lower() in by_lower:
        return by_lower[word.lower()]
    close = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[close[0]] if close else None


def resource_type_for(api_version: str, kind: str) -> ResourceType:
    """The type a document with this ``apiVersion`` and ``kind`` belongs to.

    Raises ValidationError naming what is accepted: the known apiVersions, the kinds of that
    apiVersion (with a suggestion), or the apiVersion a kind really belongs to.
    """
    found = _BY_VERSION_KIND.get((api_version, kind))
    if found is not None:
        return found
    if api_version not in API_VERSIONS:
        serving = [rt.api_version for rt in RESOURCE_TYPES if rt.kind == kind]
        hint = f"kind {kind} uses apiVersion {' or '.join(serving)}" if serving else None
        raise ValidationError(
            [("apiVersion", f"unknown apiVersion {api_version!r}; podnet accepts {', '.join(API_VERSIONS)}")],
            hint=hint,
        )
    kinds = [rt.kind for rt in RESOURCE_TYPES if api_version in rt.versions]
    guess = _did_you_mean(kind, kinds)
    message = f'apiVersion: {api_version} has no kind "{kind}"'
    message += f"; did you mean {guess}?" if guess else f"; its kinds are {', '.join(kinds)}"
    elsewhere = [rt.api_version for rt in RESOURCE_TYPES if rt.kind == kind]
    hint = f"kind {kind} uses apiVersion {' or '.join(elsewhere)}" if elsewhere else None
    raise ValidationError([("kind", message)], hint=hint)


def lookup(name: str) -> ResourceType:
    """Resolve a CLI resource name: ``IPPool``, ``ippools``, ``gnp``, ``networkpolicies.projectcalico.org``.

    Raises ValidationError listing close matches when the name is unknown.
    """
    key = name.strip().lower()
    found = _BY_NAME.get(key)
    if found is not None:
        return found
    close: dict[ResourceType, str] = {}
    for candidate in difflib.get_close_matches(key, list(_BY_NAME), n=10, cutoff=0.6):
        close.setdefault(_BY_NAME[candidate], candidate)
    message = f'unknown resource type "{name}"'
    if close:
        message += f"; did you mean {' or '.join(list(close.values())[:3])}?"
    known = ", ".join(rt.plural if not rt.group else f"{rt.plural}.{rt.group}" for rt in RESOURCE_TYPES)
    raise ValidationError([("", message)], hint=f"known types: {known}")


def lookup_kind(kind: str) -> list[ResourceType]:
    """All types with this kind name (``NetworkPolicy`` has two)."""
    return [rt for rt in RESOURCE_TYPES if rt.kind == kind]


def type_of(resource: Resource) -> ResourceType:
    """The ResourceType of a parsed resource."""
    for rt in RESOURCE_TYPES:
        if rt.model_cls is type(resource):
            return rt
    raise KeyError(type(resource).__name__)
