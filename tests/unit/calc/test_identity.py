"""Identity labels the Cilium way (calc.identity): what counts, the derived labels, the numbers."""

from __future__ import annotations

from podnet.calc.identity import CLUSTER_LABEL, identity_labels, pod_label_sets, relevant
from podnet.calc.policy import PodInfo
from podnet.model.identity import LabelSet


def test_default_exclusions_and_what_stays():
    for key in (
        "io.kubernetes.container.name",
        "kubernetes.io/hostname",
        "topology.beta.kubernetes.io/zone",
        "k8s.io/x",
        "pod-template-hash",
        "controller-revision-hash",
        "pod-template-generation",
        "annotation.foo",
        "etcd_node",
    ):
        assert not relevant(key), key
    for key in ("app", "app.kubernetes.io/name", "tier", "team", "my.kubernetes.io.like"):
        assert relevant(key), key


def test_derived_labels_namespace_serviceaccount_cluster():
    labels = identity_labels(
        {"app": "web", "pod-template-hash": "5d8f", "io.kubernetes.pod.namespace": "forged"},
        "shop",
        {"kubernetes.io/metadata.name": "shop", "team": "blue"},
        "",
        "lab",
    )
    assert labels == {
        "app": "web",
        "io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name": "shop",
        "io.cilium.k8s.namespace.labels.team": "blue",
        "io.cilium.k8s.policy.cluster": "lab",
        "io.cilium.k8s.policy.serviceaccount": "default",
        "io.kubernetes.pod.namespace": "shop",  # a pod cannot claim another namespace
    }
    assert identity_labels({}, "a", {}, "api")[CLUSTER_LABEL] == "default"


def test_pods_with_the_same_relevant_labels_share_a_label_set():
    pods = [
        PodInfo("shop", "web-1", {"app": "web", "pod-template-hash": "a1"}),
        PodInfo("shop", "web-2", {"app": "web", "pod-template-hash": "b2"}),
        PodInfo("shop", "web-3", {"app": "web"}, service_account="web"),
        PodInfo("other", "web-4", {"app": "web"}),
    ]
    sets = pod_label_sets(pods, {"shop": {"team": "blue"}})
    assert sets["shop/web-1"] == sets["shop/web-2"]  # per-rollout labels do not count
    assert len({sets[k] for k in ("shop/web-1", "shop/web-3", "other/web-4")}) == 3
    assert "k8s:io.cilium.k8s.namespace.labels.team=blue" in sets["shop/web-1"].labels
    assert sets["other/web-4"] == LabelSet.of(identity_labels({"app": "web"}, "other", {}))


def test_the_watch_cache_decodes_identity_keys():
    import json

    from podnet.calc.cluster import ClusterCache
    from podnet.datastore.keys import KeyLayout

    layout = KeyLayout()
    cache = ClusterCache(layout)
    web = LabelSet.of({"app": "web"})
    assert (
        cache.update(layout.identity(300), json.dumps({"labels": list(web.labels)}).encode()) == "identities"
    )
    assert cache.update(layout.identity_labels(web.digest), b'{"id":300}') == "identities"
    assert cache.update(layout.identity_ref(300, "node-1"), b"{}") is None  # references: no input
    assert cache.identities == {300: web}
    assert cache.identity_numbers == {web.digest: 300}
    assert cache.update(layout.identity(301), b'{"labels":["no-source"]}') is None  # refused, recorded
    assert layout.identity(301) in cache.errors
    cache.update(layout.identity_labels(web.digest), None)
    cache.update(layout.identity(300), None)
    assert cache.identities == {} and cache.identity_numbers == {}
