"""``apply`` of an existing object, as ``kubectl apply`` behaves: what the system wrote survives a
re-applied manifest that leaves it out, immutable fields are refused in Kubernetes' words, and an
unchanged manifest is ``unchanged``. Every kind gets an apply → system write → edit → apply round
trip on the in-memory datastore (tests/integration/test_cli_resources.py does it on etcd)."""

from __future__ import annotations

import copy

import pytest

from podnet.datastore.memory import MemoryDatastore
from podnet.datastore.resources import ResourceStore
from podnet.datastore.update_rules import POD_UPDATE_FORBIDDEN
from podnet.errors import ValidationError
from podnet.model import RESOURCE_TYPES, lookup, parse_resource


@pytest.fixture
def store() -> ResourceStore:
    return ResourceStore(MemoryDatastore())


def doc(
    api_version: str, kind: str, name: str, spec: dict | None = None, namespace: str | None = None
) -> dict:
    meta: dict = {"name": name, "labels": {"team": "a"}}
    if namespace:
        meta["namespace"] = namespace
    out = {"apiVersion": api_version, "kind": kind, "metadata": meta}
    if spec is not None:
        out["spec"] = spec
    return out


POD = doc(
    "v1",
    "Pod",
    "srv",
    {"containers": [{"name": "c", "image": "nginx:1", "ports": [{"containerPort": 80}]}]},
    "t",
)
SELECTOR = {"matchLabels": {"app": "x"}}
BANP_SPEC = {
    "subject": {"namespaces": {}},
    "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}],
}
ANP_SPEC = {"priority": 3, **BANP_SPEC}

# kind -> (manifest, the system's writes as a merge patch or None, what the user edits as a merge patch)
ROUND_TRIPS: dict[str, tuple[dict, dict | None, dict]] = {
    "namespaces": (
        doc("v1", "Namespace", "t"),
        {"status": {"phase": "Active"}},
        {"metadata": {"labels": {"b": "1"}}},
    ),
    "pods": (
        POD,
        {"spec": {"nodeName": "node-1"}, "status": {"phase": "Running", "podIP": "10.244.0.5"}},
        {"metadata": {"labels": {"role": "locked"}}},
    ),
    "nodes": (
        doc("v1", "Node", "node-1", {}),
        {
            "metadata": {
                "labels": {"kubernetes.io/hostname": "node-1", "podnet.io/subnet": "subnet-0"},
                "annotations": {
                    "projectcalico.org/IPv4Address": "10.0.0.11/24",
                    "projectcalico.org/IPv4VXLANTunnelAddr": "10.244.7.0",
                    "projectcalico.org/VXLANTunnelMACAddr": "66:aa:bb:cc:dd:ee",
                    "network.cilium.io/ipv4-cilium-host": "10.244.7.1",
                },
            },
            "spec": {"podCIDR": "10.244.7.0/24", "podCIDRs": ["10.244.7.0/24"]},
            "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.11"}]},
        },
        {"metadata": {"labels": {"role": "edge"}}},
    ),
    "services": (
        doc(
            "v1",
            "Service",
            "web",
            {"type": "NodePort", "selector": {"app": "x"}, "ports": [{"port": 80}]},
            "t",
        ),
        None,  # the allocator fills clusterIP and nodePort on the first apply
        {"spec": {"selector": {"app": "y"}}},
    ),
    "networkpolicies.networking.k8s.io": (
        doc("networking.k8s.io/v1", "NetworkPolicy", "deny", {"podSelector": SELECTOR}, "t"),
        None,
        {"spec": {"podSelector": {"matchLabels": {"role": "locked"}}}},
    ),
    "ippools.projectcalico.org": (
        doc("projectcalico.org/v3", "IPPool", "pool", {"cidr": "10.10.0.0/16"}),
        None,
        {"spec": {"natOutgoing": True}},
    ),
    "bgpconfigurations.projectcalico.org": (
        doc("projectcalico.org/v3", "BGPConfiguration", "default", {"asNumber": 64512}),
        None,
        {"spec": {"asNumber": 64513}},
    ),
    "bgppeers.projectcalico.org": (
        doc("projectcalico.org/v3", "BGPPeer", "tor", {"peerIP": "192.0.2.1", "asNumber": 64500}),
        None,
        {"spec": {"asNumber": 64501}},
    ),
    "networkpolicies.projectcalico.org": (
        doc("projectcalico.org/v3", "NetworkPolicy", "db", {"selector": "app == 'x'"}, "t"),
        None,
        {"spec": {"selector": "app == 'y'"}},
    ),
    "globalnetworkpolicies.projectcalico.org": (
        doc("projectcalico.org/v3", "GlobalNetworkPolicy", "g", {"selector": "all()"}),
        None,
        {"spec": {"order": 10}},
    ),
    "hostendpoints.projectcalico.org": (
        doc(
            "projectcalico.org/v3", "HostEndpoint", "node-1-eth0", {"node": "node-1", "interfaceName": "eth0"}
        ),
        None,
        {"spec": {"expectedIPs": ["10.0.0.11"]}},
    ),
    "ciliumnetworkpolicies.cilium.io": (
        doc("cilium.io/v2", "CiliumNetworkPolicy", "c", {"endpointSelector": SELECTOR}, "t"),
        {"status": {"derivativePolicies": {}}},
        {"spec": {"endpointSelector": {"matchLabels": {"app": "y"}}}},
    ),
    "ciliumclusterwidenetworkpolicies.cilium.io": (
        doc("cilium.io/v2", "CiliumClusterwideNetworkPolicy", "cc", {"endpointSelector": SELECTOR}),
        None,
        {"spec": {"endpointSelector": {"matchLabels": {"app": "y"}}}},
    ),
    "serviceaccounts": (
        doc("v1", "ServiceAccount", "api", None, "t"),
        None,
        {"automountServiceAccountToken": False, "metadata": {"labels": {"role": "backend"}}},
    ),
    "tiers.projectcalico.org": (
        doc("projectcalico.org/v3", "Tier", "security", {"order": 100}),
        {"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Ready"}]}},
        {"spec": {"order": 50, "defaultAction": "Pass"}},
    ),
    "adminnetworkpolicies.policy.networking.k8s.io": (
        doc("policy.networking.k8s.io/v1alpha1", "AdminNetworkPolicy", "a", ANP_SPEC),
        {"status": {"conditions": [{"type": "Ready", "status": "True"}]}},
        {"spec": {"priority": 7}},
    ),
    "baselineadminnetworkpolicies.policy.networking.k8s.io": (
        doc("policy.networking.k8s.io/v1alpha1", "BaselineAdminNetworkPolicy", "default", BANP_SPEC),
        {"status": {"conditions": [{"type": "Ready", "status": "True"}]}},
        {"spec": {"subject": {"namespaces": SELECTOR}}},
    ),
    "clusternetworkpolicies.policy.networking.k8s.io": (
        doc("policy.networking.k8s.io/v1alpha2", "ClusterNetworkPolicy", "c", {"tier": "Admin", **ANP_SPEC}),
        {"status": {"conditions": [{"type": "Ready", "status": "True"}]}},
        {"spec": {"tier": "Baseline", "priority": 7}},
    ),
    "clusterconfigurations.podnet.io": (
        doc("podnet.io/v1", "ClusterConfiguration", "default", {"profile": "calico"}),
        None,
        {"spec": {"profile": "cilium"}},
    ),
}


def merge(base: dict, patch: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in patch.items():
        out[key] = merge(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def test_every_kind_has_a_round_trip():
    assert {rt.key_name for rt in RESOURCE_TYPES} == set(ROUND_TRIPS)


@pytest.mark.parametrize("key_name", sorted(ROUND_TRIPS))
def test_apply_edit_apply_keeps_what_the_system_wrote(store, key_name):
    manifest, system, edit = ROUND_TRIPS[key_name]
    rtype = next(rt for rt in RESOURCE_TYPES if rt.key_name == key_name)
    name, namespace = manifest["metadata"]["name"], manifest["metadata"].get("namespace")
    [created] = store.apply([parse_resource(manifest)])
    assert created.action == "created"
    if system:
        store.patch(rtype, name, system, namespace)  # the scheduler, kubelet, agents
    before = store.get(rtype, name, namespace).to_dict()

    [again] = store.apply([parse_resource(manifest)])
    assert again.action == "unchanged"
    assert store.get(rtype, name, namespace).to_dict() == before

    [edited] = store.apply([parse_resource(merge(manifest, edit))])
    assert edited.action == "configured"
    after = store.get(rtype, name, namespace).to_dict()
    expected = merge(before, edit)
    for version in (after, expected):
        del version["metadata"]["resourceVersion"]
    assert after == expected
    [last] = store.apply([parse_resource(merge(manifest, edit))])
    assert last.action == "unchanged"


def test_reapplied_pod_keeps_its_node_and_status(store):
    """The issue's reproduction: a Pod manifest without nodeName, bound, then re-applied with a label."""
    store.apply([parse_resource(POD)])
    store.patch(lookup("pods"), "srv", {"spec": {"nodeName": "node-2"}}, "t")
    current = store.get(lookup("pods"), "srv", "t").to_dict()
    current["status"] = {"phase": "Running", "podIP": "10.244.1.9"}
    store.update(parse_resource(current))
    [result] = store.apply([parse_resource(merge(POD, {"metadata": {"labels": {"role": "locked"}}}))])
    assert result.action == "configured"
    got = store.get(lookup("pods"), "srv", "t")
    assert (got.spec.node_name, got.status.pod_ip) == ("node-2", "10.244.1.9")
    assert got.metadata.labels == {"team": "a", "role": "locked"}
    assert result.resource.spec.node_name == "node-2"


def test_user_annotations_and_labels_follow_the_manifest(store):
    """Only the declared system-owned keys are kept: what the user removes is removed."""
    node = doc("v1", "Node", "node-1", {})
    node["metadata"]["annotations"] = {"example.com/owner": "me"}
    store.apply([parse_resource(node)])
    store.patch(
        lookup("nodes"),
        "node-1",
        {"metadata": {"annotations": {"projectcalico.org/IPv4Address": "10.0.0.1/24"}}},
    )
    del node["metadata"]["annotations"], node["metadata"]["labels"]
    store.apply([parse_resource(node)])
    got = store.get(lookup("nodes"), "node-1").metadata
    assert got.annotations == {"projectcalico.org/IPv4Address": "10.0.0.1/24"} and got.labels is None


def test_a_patch_still_removes_a_system_owned_annotation(store):
    store.apply([parse_resource(doc("v1", "Node", "node-1", {}))])
    key = "projectcalico.org/IPv4VXLANTunnelAddr"
    store.patch(lookup("nodes"), "node-1", {"metadata": {"annotations": {key: "10.244.7.0"}}})
    store.patch(lookup("nodes"), "node-1", {"metadata": {"annotations": {key: None}}})
    assert key not in (store.get(lookup("nodes"), "node-1").metadata.annotations or {})


def bound_pod(store: ResourceStore) -> None:
    store.apply([parse_resource(POD)])
    store.patch(lookup("pods"), "srv", {"spec": {"nodeName": "node-1"}}, "t")


def refused(store: ResourceStore, manifest: dict) -> ValidationError:
    with pytest.raises(ValidationError) as err:
        store.apply([parse_resource(manifest)])
    return err.value


def test_pod_spec_change_is_refused_in_kubernetes_words(store):
    bound_pod(store)
    changed = copy.deepcopy(POD)
    changed["spec"]["containers"][0]["ports"][0]["containerPort"] = 8080
    error = refused(store, changed)
    assert str(error) == f'The Pod "srv" is invalid: spec: {POD_UPDATE_FORBIDDEN}'
    assert str(error).startswith(
        'The Pod "srv" is invalid: spec: Forbidden: pod updates may not change fields other than '
        "`spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,"
        "`spec.tolerations` (only additions to existing tolerations),"
        "`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)"
    )
    assert "spec.containers[0].ports[0].containerPort" in error.hint
    moved = merge(POD, {"spec": {"nodeName": "node-2"}})
    assert "spec.nodeName" in refused(store, moved).hint
    assert store.get(lookup("pods"), "srv", "t").spec.node_name == "node-1"


def test_pod_updates_kubernetes_allows(store):
    bound_pod(store)
    allowed = copy.deepcopy(POD)
    allowed["spec"]["containers"][0]["image"] = "nginx:2"
    allowed["spec"]["activeDeadlineSeconds"] = 600
    allowed["spec"]["tolerations"] = [{"key": "k", "operator": "Exists"}]
    allowed["metadata"]["annotations"] = {"a": "b"}
    assert store.apply([parse_resource(allowed)])[0].action == "configured"
    allowed["spec"]["activeDeadlineSeconds"] = 300  # down is allowed, up is not
    allowed["spec"]["tolerations"].append({"key": "k2", "operator": "Exists"})
    assert store.apply([parse_resource(allowed)])[0].action == "configured"
    got = store.get(lookup("pods"), "srv", "t")
    assert got.spec.containers[0].image == "nginx:2" and got.spec.node_name == "node-1"

    up = merge(allowed, {"spec": {"activeDeadlineSeconds": 900}})
    assert str(refused(store, up)).endswith(
        "spec.activeDeadlineSeconds: Invalid value: 900: must be less than or equal to previous value"
    )
    fewer = merge(allowed, {"spec": {"tolerations": [{"key": "k2", "operator": "Exists"}]}})
    assert "existing toleration can not be modified" in str(refused(store, fewer))
    more = merge(allowed, {"spec": {"containers": [*allowed["spec"]["containers"], {"name": "d"}]}})
    assert str(refused(store, more)).endswith(
        "spec.containers: Forbidden: pod updates may not add or remove containers"
    )


def test_node_pod_cidr_and_provider_id_only_go_from_unset_to_set(store):
    node = doc("v1", "Node", "node-1", {})
    store.apply([parse_resource(node)])
    set_once = merge(node, {"spec": {"podCIDR": "10.244.1.0/24", "providerID": "lab://node-1"}})
    assert store.apply([parse_resource(set_once)])[0].action == "configured"
    changed = merge(node, {"spec": {"podCIDR": "10.244.2.0/24", "providerID": "lab://other"}})
    assert str(refused(store, changed)) == (
        'The Node "node-1" is invalid: spec.podCIDRs: Forbidden: node updates may not change podCIDR '
        'except from "" to valid; spec.providerID: Forbidden: node updates may not change providerID '
        'except from "" to valid'
    )
    with pytest.raises(ValidationError, match="may not change podCIDR"):
        store.patch(lookup("nodes"), "node-1", {"spec": {"podCIDR": None}})


def test_ippool_cidr_and_block_size_are_immutable_as_calico_has_them(store):
    pool = doc("projectcalico.org/v3", "IPPool", "pool", {"cidr": "10.10.0.0/16"})
    store.apply([parse_resource(pool)])
    error = refused(store, merge(pool, {"spec": {"cidr": "10.11.0.0/16", "blockSize": 24}}))
    assert str(error) == (
        'The IPPool "pool" is invalid: spec.cidr: IPPool CIDR cannot be modified (it is 10.10.0.0/16); '
        "spec.blockSize: IPPool BlockSize cannot be modified (it is 26)"
    )
    assert error.hint
    with pytest.raises(ValidationError, match="IPPool CIDR cannot be modified"):
        store.patch(lookup("ippools"), "pool", {"spec": {"cidr": "10.12.0.0/16"}})


def test_service_cluster_ip_is_kept_and_immutable(store):
    svc = ROUND_TRIPS["services"][0]
    [created] = store.apply([parse_resource(svc)])
    ip = created.resource.spec.cluster_ip
    assert store.apply([parse_resource(svc)])[0].action == "unchanged"
    other = merge(svc, {"spec": {"clusterIP": "10.96.0.77" if ip != "10.96.0.77" else "10.96.0.78"}})
    with pytest.raises(ValidationError, match=r"spec\.clusterIP: field is immutable"):
        store.apply([parse_resource(other)])


def test_a_refused_update_in_a_batch_writes_nothing(store):
    bound_pod(store)
    ns = doc("v1", "Namespace", "fresh")
    changed = merge(POD, {"spec": {"nodeName": "node-9"}})
    with pytest.raises(ValidationError):
        store.apply([parse_resource(ns), parse_resource(changed)])
    assert store.list(lookup("namespaces")) == []


def test_status_in_a_reapplied_manifest_is_ignored_as_the_api_server_does(store):
    """A re-applied ``get -o yaml`` (resourceVersion removed) cannot put an old pod IP back."""
    bound_pod(store)
    store.patch(lookup("pods"), "srv", {"status": {"phase": "Pending"}}, "t")
    snapshot = store.get(lookup("pods"), "srv", "t").to_dict()
    del snapshot["metadata"]["resourceVersion"]
    store.patch(lookup("pods"), "srv", {"status": {"phase": "Running", "podIP": "10.244.0.9"}}, "t")
    snapshot["metadata"]["labels"]["role"] = "locked"
    assert store.apply([parse_resource(snapshot)])[0].action == "configured"
    got = store.get(lookup("pods"), "srv", "t")
    assert (got.status.phase, got.status.pod_ip, got.metadata.labels["role"]) == (
        "Running",
        "10.244.0.9",
        "locked",
    )
    snapshot["metadata"]["labels"]["role"] = "open"
    snapshot["status"] = {"phase": "Failed"}
    store.update(parse_resource(snapshot))  # the kubelet's write (update) sets status
    assert store.get(lookup("pods"), "srv", "t").status.phase == "Failed"


def test_a_networkpolicy_status_is_computed_never_stored(store):
    policy = ROUND_TRIPS["networkpolicies.networking.k8s.io"][0]
    status = {"conditions": [{"type": "Accepted", "status": "True", "reason": "Programmed"}]}
    [created] = store.apply([parse_resource(policy | {"status": status})])
    assert created.action == "created" and created.resource.status is None
    assert store.get(lookup("netpol"), "deny", "t").status is None
    assert store.apply([parse_resource(policy | {"status": status})])[0].action == "unchanged"
