"""``null`` decodes as the Kubernetes API server decodes it: a required mapping is ``{}``, a required
list ``[]``, an optional field is absent (its default applies), a required scalar is missing."""

from __future__ import annotations

import pytest

from podnet.errors import ValidationError
from podnet.model import parse_yaml

NETPOL = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: t, labels: null, annotations: null}
spec:
  podSelector: null
  policyTypes: null
  ingress:
  - from: null
    ports:
    - {port: 80, protocol: null}
"""


def test_networkpolicy_with_null_pod_selector_selects_every_pod_as_empty_does():
    [policy] = parse_yaml(NETPOL)
    [as_empty] = parse_yaml(NETPOL.replace("podSelector: null", "podSelector: {}"))
    assert policy.spec.pod_selector.match_labels is None and policy.spec.pod_selector.matches({"any": "x"})
    assert policy == as_empty
    assert policy.to_dict()["spec"] == {
        "podSelector": {},
        "policyTypes": ["Ingress"],  # null policyTypes defaulted as if absent
        "ingress": [{"ports": [{"protocol": "TCP", "port": 80}]}],  # null protocol: the default, TCP
    }
    assert "labels" not in policy.to_dict()["metadata"]


def test_required_list_null_is_empty_and_reported_as_such():
    with pytest.raises(ValidationError) as err:
        parse_yaml("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: null}\n")
    assert "spec.containers: must have at least one container" in str(err.value)


def test_required_scalar_null_is_missing():
    with pytest.raises(ValidationError) as err:
        parse_yaml(
            "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: p}\nspec: {cidr: null}\n"
        )
    assert "spec.cidr: required" in str(err.value)


def test_optional_fields_null_are_absent_across_kinds():
    [svc, pool, cnp] = parse_yaml(
        """\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: t}
spec: {type: null, selector: null, ports: [{port: 80, targetPort: null, protocol: null}]}
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: p}
spec: {cidr: 10.1.0.0/16, blockSize: null, nodeSelector: null, ipipMode: null}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: c, namespace: t}
spec: {endpointSelector: {}, ingress: null, egress: null}
specs: null
status: null
"""
    )
    assert (svc.spec.type, svc.spec.selector, svc.spec.ports[0].target_port) == ("ClusterIP", None, 80)
    assert (pool.spec.block_size, pool.spec.node_selector, pool.spec.ipip_mode) == (26, "all()", "Never")
    assert cnp.specs is None and cnp.status is None and cnp.spec.ingress is None


def test_null_list_items_are_still_refused():
    """Only fields decode null to empty: an item of a list must be a mapping."""
    with pytest.raises(ValidationError, match="must be a mapping"):
        parse_yaml(NETPOL.replace("- from: null", "- null\n  - from: null"))
