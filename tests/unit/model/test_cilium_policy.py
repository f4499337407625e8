"""cilium.io/v2 CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from podnet.errors import ValidationError
from podnet.model import (
    CiliumClusterwideNetworkPolicy,
    CiliumNetworkPolicy,
    load_documents,
    parse_resource,
)

# Section 4 of the seed article, exactly as printed (no metadata).
SEED_CNP = """\
apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
spec:
  endpointSelector:
    matchLabels:
      app: sensitive-api
  ingress:
  - fromEndpoints:
    - matchLabels:
        app: frontend
    toPorts:
    - ports:
      - port: "80"
        protocol: TCP
      rules:
        http:
        - method: "PUT"
          path: "/api/v1/*"
"""

PORT_NAME_RULE = (
    "a port name must contain only lowercase letters, digits and '-', "
    "starting and ending with a letter or digit"
)


def problems(doc: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as info:
        parse_resource(doc)
    return info.value.problems


def cnp(spec: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "p", "namespace": "default"},
    }
    if spec is not None:
        doc["spec"] = {"endpointSelector": {}, **spec}
    doc.update(extra)
    return doc


def test_seed_cnp_needs_only_a_name() -> None:
    (doc,) = load_documents(SEED_CNP)
    with pytest.raises(ValidationError) as info:
        parse_resource(doc)
    assert info.value.problems == [("metadata.name", "required")]
    assert info.value.hint is not None
    assert "podnet patch ciliumnetworkpolicy <name> -p" in info.value.hint

    doc["metadata"] = {"name": "sensitive-api-put-only"}
    resource = parse_resource(doc)
    assert isinstance(resource, CiliumNetworkPolicy)
    (rule,) = resource.rules()
    assert rule.endpoint_selector is not None
    assert rule.endpoint_selector.matches({"app": "sensitive-api"})
    assert rule.ingress is not None
    port_rule = rule.ingress[0].to_ports[0]  # type: ignore[index]
    assert port_rule.ports is not None and port_rule.ports[0].port == "80"
    assert port_rule.rules is not None and port_rule.rules.http is not None
    assert port_rule.rules.http[0].method == "PUT"
    assert port_rule.rules.http[0].path == "/api/v1/*"
    assert rule.default_deny() == (True, False)


def test_port_protocol_defaults_to_any_and_numbers_become_strings() -> None:
    resource = parse_resource(cnp({"ingress": [{"toPorts": [{"ports": [{"port": 8080}]}]}]}))
    assert resource.to_dict()["spec"]["ingress"][0]["toPorts"][0]["ports"] == [
        {"port": "8080", "protocol": "ANY"}
    ]


def test_spec_or_specs_required() -> None:
    assert problems(cnp()) == [("spec", "required: set spec (one rule) or specs (a list of rules)")]
    resource = parse_resource(
        cnp(specs=[{"endpointSelector": {}}, {"endpointSelector": {"matchLabels": {"a": "b"}}}])
    )
    assert isinstance(resource, CiliumNetworkPolicy)
    assert len(resource.rules()) == 2


def test_endpoint_selector_or_node_selector() -> None:
    doc = cnp({})
    del doc["spec"]["endpointSelector"]
    assert problems(doc) == [("spec.endpointSelector", "required: set endpointSelector (or nodeSelector)")]
    assert problems(cnp({"nodeSelector": {}}))[0] == (
        "spec.nodeSelector",
        "cannot be combined with endpointSelector",
    )


def test_node_selector_only_in_clusterwide_policies() -> None:
    doc = cnp()
    doc["specs"] = [{"endpointSelector": {}}, {"nodeSelector": {"matchLabels": {"role": "worker"}}}]
    assert problems(doc) == [
        ("specs[1].nodeSelector", "only a CiliumClusterwideNetworkPolicy may select nodes")
    ]
    ccnp = {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumClusterwideNetworkPolicy",
        "metadata": {"name": "host"},
        "spec": {
            "nodeSelector": {"matchLabels": {"role": "worker"}},
            "ingress": [{"fromEntities": ["cluster"]}],
        },
    }
    resource = parse_resource(ccnp)
    assert isinstance(resource, CiliumClusterwideNetworkPolicy)
    bad = copy.deepcopy(ccnp)
    bad["metadata"]["namespace"] = "default"
    assert problems(bad) == [
        ("metadata.namespace", "must not be set: CiliumClusterwideNetworkPolicy is cluster-scoped")
    ]


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        (
            {"ingress": [{"fromEntities": ["world", "internet"]}]},
            (
                "spec.ingress[0].fromEntities[1]",
                (
                    "must be one of all, world, world-ipv4, world-ipv6, cluster, host, remote-node, "
                    "kube-apiserver, ingress, init, health, unmanaged, none"
                ),
            ),
        ),
        (
            {"ingress": [{"fromEndpoints": [{}], "fromCIDR": ["10.0.0.0/8"]}]},
            (
                "spec.ingress[0].fromCIDR",
                "cannot be combined with fromEndpoints in one rule; write two rules",
            ),
        ),
        (
            {
                "egress": [
                    {
                        "toServices": [{"k8sService": {"serviceName": "db"}}],
                        "toPorts": [{"ports": [{"port": "5432"}]}],
                    }
                ]
            },
            ("spec.egress[0].toPorts", "cannot be combined with toServices"),
        ),
        (
            {"egress": [{"toServices": [{}]}]},
            ("spec.egress[0].toServices[0]", "set exactly one of k8sService or k8sServiceSelector"),
        ),
        (
            {"ingress": [{"icmps": [{"fields": [{"type": 8}]}], "toPorts": [{"ports": [{"port": "80"}]}]}]},
            ("spec.ingress[0].icmps", "cannot be combined with toPorts in one rule; write two rules"),
        ),
        (
            {"ingress": [{"icmps": [{"fields": [{"type": 256}]}]}]},
            ("spec.ingress[0].icmps[0].fields[0].type", "must be between 0 and 255"),
        ),
        (
            {"ingress": [{"icmps": [{"fields": [{"type": "echo request"}]}]}]},
            (
                "spec.ingress[0].icmps[0].fields[0].type",
                "must be an ICMP type number 0-255 or a name such as EchoRequest",
            ),
        ),
        (
            {"ingress": [{"icmps": [{"fields": [{"type": 8, "family": "IPv5"}]}]}]},
            ("spec.ingress[0].icmps[0].fields[0].family", "must be one of IPv4, IPv6"),
        ),
        (
            {"ingress": [{"toPorts": [{"ports": [{"port": "70000"}]}]}]},
            ("spec.ingress[0].toPorts[0].ports[0].port", "must be between 0 and 65535"),
        ),
        (
            {"ingress": [{"toPorts": [{"ports": [{"port": "Web_Port"}]}]}]},
            (
                "spec.ingress[0].toPorts[0].ports[0].port",
                "must be a port number 0-65535 or a port name: " + PORT_NAME_RULE,
            ),
        ),
        (
            {"ingress": [{"toPorts": [{"ports": [{"port": "80", "protocol": "ICMP"}]}]}]},
            ("spec.ingress[0].toPorts[0].ports[0].protocol", "must be one of TCP, UDP, SCTP, ANY"),
        ),
        (
            {"ingress": [{"toPorts": [{"ports": [{"port": "http", "endPort": 90}]}]}]},
            ("spec.ingress[0].toPorts[0].ports[0].endPort", "requires a numeric port"),
        ),
        (
            {"ingress": [{"toPorts": [{"ports": [{"port": "100", "endPort": 90}]}]}]},
            ("spec.ingress[0].toPorts[0].ports[0].endPort", "must be greater than or equal to port (100)"),
        ),
        (
            {
                "ingress": [
                    {
                        "toPorts": [
                            {
                                "ports": [{"port": "80", "protocol": "TCP"}],
                                "rules": {"http": [{}], "kafka": [{}]},
                            }
                        ]
                    }
                ]
            },
            ("spec.ingress[0].toPorts[0].rules", "only one L7 type per toPorts entry (found http, kafka)"),
        ),
        (
            {"ingress": [{"toPorts": [{"ports": [{"port": "80"}], "rules": {"http": [{"method": "GET"}]}}]}]},
            (
                "spec.ingress[0].toPorts[0].ports[0].protocol",
                "L7 rules apply to TCP only (DNS rules excepted)",
            ),
        ),
        (
            {
                "ingress": [
                    {"toPorts": [{"ports": [{"port": "0", "protocol": "TCP"}], "rules": {"http": [{}]}}]}
                ]
            },
            ("spec.ingress[0].toPorts[0].ports[0].port", "L7 rules cannot be used with port 0"),
        ),
        (
            {
                "ingress": [
                    {
                        "toPorts": [
                            {
                                "ports": [{"port": "53", "protocol": "UDP"}],
                                "rules": {"dns": [{"matchPattern": "*"}]},
                            }
                        ]
                    }
                ]
            },
            ("spec.ingress[0].toPorts[0].rules.dns", "DNS rules are not allowed on ingress"),
        ),
        (
            {"egress": [{"toPorts": [{"rules": {"dns": [{"matchPattern": "*"}]}}]}]},
            ("spec.egress[0].toPorts[0].rules.dns", "needs a port (53) in ports"),
        ),
        (
            {
                "ingress": [
                    {
                        "toPorts": [
                            {
                                "ports": [{"port": "80", "protocol": "TCP"}],
                                "rules": {"http": [{"path": "/api/(v1"}]},
                            }
                        ]
                    }
                ]
            },
            (
                "spec.ingress[0].toPorts[0].rules.http[0].path",
                "must be a valid regular expression (missing ), unterminated subpattern at position 5)",
            ),
        ),
        (
            {
                "ingressDeny": [
                    {
                        "fromEntities": ["world"],
                        "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}], "rules": {"http": [{}]}}],
                    }
                ]
            },
            (
                "spec.ingressDeny[0].toPorts[0].rules",
                "deny rules cannot have L7 rules (deny works at L3/L4 only)",
            ),
        ),
        (
            {"egressDeny": [{"toFQDNs": [{"matchName": "example.com"}]}]},
            ("spec.egressDeny[0].toFQDNs", "not allowed in deny rules"),
        ),
        (
            {"egress": [{"toFQDNs": [{"matchName": "a.com", "matchPattern": "*.a.com"}]}]},
            ("spec.egress[0].toFQDNs[0]", "set exactly one of matchName or matchPattern"),
        ),
        (
            {"egress": [{"toFQDNs": [{"matchName": "bad name.com"}]}]},
            ("spec.egress[0].toFQDNs[0].matchName", "must be a DNS name such as api.example.com"),
        ),
        (
            {"egress": [{"toCIDRSet": [{"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}]}]},
            ("spec.egress[0].toCIDRSet[0].except[0]", "must lie inside cidr 10.0.0.0/8"),
        ),
        (
            {"egress": [{"toCIDRSet": [{"except": ["10.0.0.0/16"]}]}]},
            ("spec.egress[0].toCIDRSet[0]", "set exactly one of cidr, cidrGroupRef or cidrGroupSelector"),
        ),
        (
            {"egress": [{"toCIDR": ["10.0.0.0/40"]}]},
            ("spec.egress[0].toCIDR[0]", "must be a CIDR such as 10.0.0.0/16 (got '10.0.0.0/40')"),
        ),
        (
            {"ingress": [{"fromEndpoints": [{"matchLabels": {"k8s:app": 1}}]}]},
            (
                "spec.ingress[0].fromEndpoints[0].matchLabels[k8s:app]",
                "must be a string (quote the value in YAML)",
            ),
        ),
        (
            {"ingress": [{"fromEndpoint": [{}]}]},
            ("spec.ingress[0].fromEndpoint", "unknown field (did you mean fromEndpoints?)"),
        ),
        (
            {"enableDefaultDeny": {"ingress": "yes"}},
            ("spec.enableDefaultDeny.ingress", "must be true or false"),
        ),
    ],
)
def test_cilium_rules(spec: dict[str, Any], problem: tuple[str, str]) -> None:
    assert problems(cnp(spec)) == [problem]


def test_dns_rules_on_egress_and_fqdns() -> None:
    resource = parse_resource(
        cnp(
            {
                "egress": [
                    {
                        "toEndpoints": [{"matchLabels": {"k8s:k8s-app": "kube-dns"}}],
                        "toPorts": [
                            {
                                "ports": [{"port": "53", "protocol": "ANY"}],
                                "rules": {"dns": [{"matchPattern": "*"}]},
                            }
                        ],
                    },
                    {
                        "toFQDNs": [{"matchPattern": "*.example.com"}],
                        "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}],
                    },
                ]
            }
        )
    )
    assert isinstance(resource, CiliumNetworkPolicy)
    assert resource.rules()[0].default_deny() == (False, True)


def test_enable_default_deny_overrides() -> None:
    resource = parse_resource(cnp({"ingress": [{}], "enableDefaultDeny": {"ingress": False}}))
    assert isinstance(resource, CiliumNetworkPolicy)
    assert resource.rules()[0].default_deny() == (False, False)


def test_host_policies_have_no_l7() -> None:
    doc = {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumClusterwideNetworkPolicy",
        "metadata": {"name": "host"},
        "spec": {
            "nodeSelector": {},
            "ingress": [
                {"toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}], "rules": {"http": [{}]}}]}
            ],
        },
    }
    assert problems(doc) == [
        ("spec.ingress[0].toPorts", "host policies (nodeSelector) do not support L7 rules")
    ]
