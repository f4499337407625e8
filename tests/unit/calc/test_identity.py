"""Identity labels the Cilium way (calc.identity): what counts, the derived labels, the numbers."""

from __future__ import annotations

import pytest

from podnet.calc.identity import (
    CLUSTER_LABEL,
    LabelSet,
    describe,
    identity_labels,
    parse_label_set,
    relevant,
)


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


def test_label_set_canonical_digest_and_round_trip():
    one = LabelSet.of({"b": "2", "a": "1"})
    assert one.labels == ("k8s:a=1", "k8s:b=2")
    assert one == LabelSet.of({"a": "1", "b": "2"})
    assert one.digest == LabelSet.of({"a": "1", "b": "2"}).digest != LabelSet.of({"a": "1"}).digest
    assert parse_label_set(["k8s:b=2", "k8s:a=1"]) == one
    assert one.mapping() == {"a": "1", "b": "2"}
    assert LabelSet.reserved("host").labels == ("reserved:host",)
    with pytest.raises(ValueError, match="unknown reserved identity"):
        LabelSet.reserved("nobody")
    with pytest.raises(ValueError, match="not source:key=value"):
        parse_label_set(["app=web"])


def test_numbers_described():
    assert describe(1) == "reserved:host"
    assert describe(6) == "reserved:remote-node"
    assert describe(7) == "reserved:kube-apiserver"
    assert describe(256) == describe(65535) == "cluster"
    assert describe((1 << 24) + 1) == "cidr"
    assert describe(0) == "unknown"
