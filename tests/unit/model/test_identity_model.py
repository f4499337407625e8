"""Identity label sets and numbers as data (model.identity)."""

from __future__ import annotations

import pytest

from podnet.model.identity import LabelSet, describe, parse_label_set


def test_label_set_canonical_digest_and_round_trip():
    one = LabelSet.of({"b": "2", "a": "1"})
    assert one.labels == ("k8s:a=1", "k8s:b=2")
    assert one == LabelSet.of({"a": "1", "b": "2"})
    assert one.digest == LabelSet.of({"a": "1", "b": "2"}).digest != LabelSet.of({"a": "1"}).digest
    assert parse_label_set(["k8s:b=2", "k8s:a=1"]) == one
    assert one.mapping() == {"a": "1", "b": "2"}
    assert LabelSet.reserved("host").labels == ("reserved:host",)
    assert LabelSet.reserved("host").mapping() == {"reserved:host": ""}
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
