"""What an update keeps from the stored object, and what it may not change: one table per kind.

The API server's rules for writing an object over the one it stores, in three declarations that
:class:`podnet.datastore.resources.ResourceStore` reads:

``SERVER_SET`` (every kind, every write)
    ``metadata.uid`` and ``metadata.creationTimestamp`` are the stored ones, whatever is written;
    ``status`` is kept when the write leaves it out (it belongs to the controllers: the lab
    kubelet, agents).
``SYSTEM_OWNED`` (per kind, ``apply`` only)
    Fields the system writes into objects users also write. ``kubectl apply`` removes only what
    the previous apply set, so these survive a re-applied manifest that leaves them out; podnet
    keeps them the same way. (``update`` and ``patch`` write the object as given: a merge patch
    with ``null`` still removes such an annotation.) ``status`` is the stored one whatever the
    manifest says, as the API server ignores status in an update of the object itself: a
    re-applied ``get -o yaml`` cannot put an old pod IP back.
``COMPUTED_STATUS`` (every write)
    Kinds whose status is computed when read and never stored (a NetworkPolicy's conditions come
    from the agents' reports), so ``get -o yaml | apply`` does not store a snapshot of it.
``IMMUTABLE`` (per kind, every write)
    What an update may not change, refused with Kubernetes' (or Calico's) own message.

Audited kinds (what podnet's own components write into stored objects, and what is immutable):

    Pod        spec.nodeName (the lab scheduler binds it), status (the lab kubelet)
               immutable: spec, except images, activeDeadlineSeconds (down), tolerations (added),
               schedulingGates (removed), terminationGracePeriodSeconds (negative to 1), and
               nodeName from unset (the binding)
    Node       kubelet labels (hostname, os, arch; the lab writes them, and podnet.io/subnet),
               Calico's and Cilium's node annotations (the lab and the agents write them),
               spec.podCIDR(s), spec.providerID; status (addresses)
               immutable: podCIDR(s) and providerID once set
    Service    spec.clusterIP(s) and each port's nodePort: allocated, kept and made immutable by
               :mod:`podnet.datastore.service_alloc` on every write (they depend on the type)
    IPPool     immutable: cidr and blockSize (Calico's messages)
    Namespace  its ``kubernetes.io/metadata.name`` label is derived from the name on every parse
    NetworkPolicy, Calico policies, GlobalNetworkPolicy, HostEndpoint, BGPConfiguration, BGPPeer,
    Tier, AdminNetworkPolicy, BaselineAdminNetworkPolicy, ClusterNetworkPolicy, ServiceAccount,
    Cilium policies, ClusterConfiguration: nothing beyond SERVER_SET (a NetworkPolicy's status is
    computed from the agents' reports, never stored; neither Calico's Tier nor the
    network-policy-api kinds have an immutable field: no ``oldSelf`` rule in their CRDs)
"""

from __future__ import annotations

import copy
import ipaddress
from collections.abc import Callable
from typing import Any

from podnet.errors import ValidationError

Path = tuple[str, ...]
Problem = tuple[str, str]

# -- what apply keeps ----------------------------------------------------------------------------

NODE_LABELS = ("kubernetes.io/hostname", "kubernetes.io/os", "kubernetes.io/arch", "podnet.io/subnet")
NODE_ANNOTATIONS = (
    "projectcalico.org/IPv4Address",
    "projectcalico.org/IPv6Address",
    "projectcalico.org/IPv4IPIPTunnelAddr",
    "projectcalico.org/IPv4VXLANTunnelAddr",
    "projectcalico.org/VXLANTunnelMACAddr",
    "network.cilium.io/ipv4-cilium-host",
    "io.cilium.network.ipv4-cilium-host",
)

SYSTEM_OWNED: dict[str, tuple[Path, ...]] = {
    "Pod": (("spec", "nodeName"),),
    "Node": (
        ("spec", "podCIDR"),
        ("spec", "podCIDRs"),
        ("spec", "providerID"),
        *(("metadata", "labels", key) for key in NODE_LABELS),
        *(("metadata", "annotations", key) for key in NODE_ANNOTATIONS),
    ),
}


COMPUTED_STATUS = (
    "NetworkPolicy",
    "GlobalNetworkPolicy",
    "AdminNetworkPolicy",
    "BaselineAdminNetworkPolicy",
    "ClusterNetworkPolicy",
)


def drop_computed_status(kind: str, doc: dict) -> None:
    """Every write: a status computed on read is not stored."""
    if kind in COMPUTED_STATUS:
        doc.pop("status", None)


def keep_server_set(doc: dict, old: dict) -> None:
    """Every write: uid and creationTimestamp are the stored ones; status is kept if left out."""
    meta, old_meta = doc.setdefault("metadata", {}), old.get("metadata") or {}
    for kept in ("uid", "creationTimestamp"):
        if old_meta.get(kept):
            meta[kept] = old_meta[kept]
    if "status" not in doc and "status" in old:
        doc["status"] = old["status"]


def keep_system_owned(kind: str, doc: dict, old: dict) -> list[str]:
    """``apply``: copy each of the kind's system-owned fields the manifest leaves out from the
    stored object into ``doc``, and the stored status over the manifest's; return the paths
    copied or replaced."""
    kept = []
    if doc.get("status") != old.get("status"):
        doc.pop("status", None)
        if "status" in old:
            doc["status"] = copy.deepcopy(old["status"])
        kept.append("status")
    for path in SYSTEM_OWNED.get(kind, ()):
        value = _get(old, path)
        if value is not None and _get(doc, path) is None:
            _set(doc, path, copy.deepcopy(value))
            kept.append(".".join(path))
    return kept


def _get(doc: Any, path: Path) -> Any:
    for part in path:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(part)
    return doc


def _set(doc: dict, path: Path, value: Any) -> None:
    for part in path[:-1]:
        doc = doc.setdefault(part, {})
    doc[path[-1]] = value


# -- what an update may not change ---------------------------------------------------------------

UPDATABLE_POD_SPEC_FIELDS = (
    "`spec.containers[*].image`",
    "`spec.initContainers[*].image`",
    "`spec.activeDeadlineSeconds`",
    "`spec.tolerations` (only additions to existing tolerations)",
    "`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
)
# Kubernetes' ValidatePodUpdate (pkg/apis/core/validation/validation.go) joins them with ",".
POD_UPDATE_FORBIDDEN = (
    f"Forbidden: pod updates may not change fields other than {','.join(UPDATABLE_POD_SPEC_FIELDS)}"
)
NODE_POD_CIDR_FORBIDDEN = 'Forbidden: node updates may not change podCIDR except from "" to valid'
NODE_PROVIDER_ID_FORBIDDEN = 'Forbidden: node updates may not change providerID except from "" to valid'


def _pod_update(old: dict, new: dict) -> tuple[list[Problem], str | None]:
    """Kubernetes' ValidatePodUpdate on the spec: munge what may change back to the stored
    values, then the rest must be equal."""
    before, after = old.get("spec") or {}, new.get("spec") or {}
    for field in ("containers", "initContainers"):
        if len(before.get(field) or []) != len(after.get(field) or []):
            return [(f"spec.{field}", "Forbidden: pod updates may not add or remove containers")], None
    problems: list[Problem] = []
    munged = copy.deepcopy(after)
    for field in ("containers", "initContainers"):
        for mine, stored in zip(munged.get(field) or [], before.get(field) or [], strict=True):
            mine.pop("image", None)
            if "image" in stored:
                mine["image"] = stored["image"]
    problems += _active_deadline(before.get("activeDeadlineSeconds"), after.get("activeDeadlineSeconds"))
    _restore(munged, before, "activeDeadlineSeconds")
    if _only_added_tolerations(before.get("tolerations") or [], after.get("tolerations") or []):
        _restore(munged, before, "tolerations")
    else:
        problems.append(
            (
                "spec.tolerations",
                "Forbidden: existing toleration can not be modified except its tolerationSeconds",
            )
        )
    gates = {g.get("name") for g in after.get("schedulingGates") or [] if isinstance(g, dict)}
    added = gates - {g.get("name") for g in before.get("schedulingGates") or [] if isinstance(g, dict)}
    if added:
        problems.append(
            (
                "spec.schedulingGates",
                f"Forbidden: only deletion is allowed, but found new scheduling gate '{sorted(added)[0]}'",
            )
        )
    _restore(munged, before, "schedulingGates")
    grace = before.get("terminationGracePeriodSeconds")
    if isinstance(grace, int) and grace < 0 and munged.get("terminationGracePeriodSeconds") == 1:
        munged["terminationGracePeriodSeconds"] = grace
    if not before.get("nodeName"):  # binding an unscheduled pod (the lab scheduler's patch)
        _restore(munged, before, "nodeName")
    if munged != before:
        changed = _changed_paths(before, munged, "spec")
        problems.append(("spec", POD_UPDATE_FORBIDDEN))
        shown = ", ".join(changed[:4]) + (f" and {len(changed) - 4} more" if len(changed) > 4 else "")
        hint = f"this update changes {shown}; to change them, delete the Pod and apply it again"
        return problems, hint
    return problems, None


def _restore(munged: dict, before: dict, field: str) -> None:
    munged.pop(field, None)
    if field in before:
        munged[field] = copy.deepcopy(before[field])


def _active_deadline(before: Any, after: Any) -> list[Problem]:
    """From unset to a value, or down to a lesser non-negative value (Kubernetes' rule)."""
    path = "spec.activeDeadlineSeconds"
    if after is None:
        if before is not None:
            return [(path, "Invalid value: null: must not update from a positive integer to nil value")]
        return []
    if not isinstance(after, int) or not 0 <= after <= 2**31 - 1:
        return [(path, f"Invalid value: {after}: must be between 0 and 2147483647, inclusive")]
    if isinstance(before, int) and before < after:
        return [(path, f"Invalid value: {after}: must be less than or equal to previous value")]
    return []


def _only_added_tolerations(before: list, after: list) -> bool:
    """Every stored toleration is still there (its tolerationSeconds may change)."""

    def plain(toleration: Any) -> Any:
        return (
            {k: v for k, v in toleration.items() if k != "tolerationSeconds"}
            if isinstance(toleration, dict)
            else toleration
        )

    remaining = [plain(t) for t in after]
    return all(plain(t) in remaining for t in before)


def _changed_paths(before: Any, after: Any, path: str) -> list[str]:
    """The paths at which two JSON values differ (a list of differing length is one path)."""
    if isinstance(before, dict) and isinstance(after, dict):
        out: list[str] = []
        for key in sorted(set(before) | set(after)):
            out += _changed_paths(before.get(key), after.get(key), f"{path}.{key}")
        return out
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        out = []
        for i, (b, a) in enumerate(zip(before, after, strict=True)):
            out += _changed_paths(b, a, f"{path}[{i}]")
        return out
    return [] if before == after else [path]


def _cidrs(spec: dict) -> list[str]:
    return list(spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else []))


def _node_update(old: dict, new: dict) -> tuple[list[Problem], str | None]:
    """Kubernetes' ValidateNodeUpdate: podCIDR(s) and providerID may only go from unset to set."""
    before, after = old.get("spec") or {}, new.get("spec") or {}
    problems = []
    if _cidrs(before) and _cidrs(after) != _cidrs(before):
        problems.append(("spec.podCIDRs", NODE_POD_CIDR_FORBIDDEN))
    if before.get("providerID") and after.get("providerID") != before["providerID"]:
        problems.append(("spec.providerID", NODE_PROVIDER_ID_FORBIDDEN))
    return problems, None


def _ippool_update(old: dict, new: dict) -> tuple[list[Problem], str | None]:
    """Calico's IPPool update validation (libcalico-go): cidr and blockSize are fixed."""
    before, after = old.get("spec") or {}, new.get("spec") or {}
    problems = []
    if ipaddress.ip_network(before["cidr"], strict=False) != ipaddress.ip_network(
        after["cidr"], strict=False
    ):
        problems.append(("spec.cidr", f"IPPool CIDR cannot be modified (it is {before['cidr']})"))
    if before.get("blockSize") != after.get("blockSize"):
        problems.append(
            ("spec.blockSize", f"IPPool BlockSize cannot be modified (it is {before.get('blockSize')})")
        )
    hint = None
    if problems:
        hint = "create a pool with the new CIDR or block size, disable this one and delete it once empty"
    return problems, hint


IMMUTABLE: dict[str, Callable[[dict, dict], tuple[list[Problem], str | None]]] = {
    "Pod": _pod_update,
    "Node": _node_update,
    "IPPool": _ippool_update,
}


def check_update(kind: str, old: dict, new: dict) -> None:
    """Raise ValidationError, as Kubernetes words it (``The Pod "srv" is invalid: spec:
    Forbidden: ...``), if ``new`` changes what the kind's IMMUTABLE rule forbids."""
    rule = IMMUTABLE.get(kind)
    if rule is None:
        return
    problems, hint = rule(old, new)
    if problems:
        name = (new.get("metadata") or {}).get("name")
        raise ValidationError(problems, hint=hint, subject=f'The {kind} "{name}" is invalid')
