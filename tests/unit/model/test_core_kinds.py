"""v1 Namespace, Pod, Node, Service: network fields in depth, the rest accepted by name."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from podnet.calc.bird import BgpNode
from podnet.errors import ValidationError
from podnet.model import Node, Pod, Service, ServiceAccount, parse_resource


def problems(doc: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as info:
        parse_resource(doc)
    return info.value.problems


POD: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "web", "namespace": "default"},
    "spec": {"containers": [{"name": "web", "image": "nginx", "ports": [{"containerPort": 80}]}]},
}


def pod(**spec: Any) -> dict[str, Any]:
    doc = copy.deepcopy(POD)
    doc["spec"].update(spec)
    return doc


def test_pod_defaults_protocol_tcp() -> None:
    resource = parse_resource(POD)
    assert isinstance(resource, Pod)
    assert resource.spec.containers[0].ports[0].protocol == "TCP"  # type: ignore[index]
    assert resource.to_dict()["spec"]["containers"][0]["ports"] == [{"containerPort": 80, "protocol": "TCP"}]


def test_pod_accepts_known_kubernetes_fields_as_opaque_values() -> None:
    doc = pod(
        restartPolicy="Never",
        volumes=[{"name": "v", "emptyDir": {}}],
        securityContext={"runAsUser": 1000},
    )
    doc["spec"]["containers"][0].update(
        {"env": [{"name": "A", "value": "1"}], "resources": {"limits": {"cpu": "1"}}, "tty": True}
    )
    resource = parse_resource(doc)
    assert resource.to_dict()["spec"]["volumes"] == [{"name": "v", "emptyDir": {}}]


def test_pod_rejects_a_misspelt_opaque_field() -> None:
    assert problems(pod(restartPolicyy="Never")) == [
        ("spec.restartPolicyy", "unknown field (did you mean restartPolicy?)")
    ]
    doc = pod()
    doc["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    assert problems(doc) == [
        ("spec.containers[0].imagePullPolicyy", "unknown field (did you mean imagePullPolicy?)")
    ]


def test_container_port_rules() -> None:
    doc = pod()
    doc["spec"]["containers"][0]["ports"] = [
        {"containerPort": 0},
        {"containerPort": 80, "protocol": "HTTP"},
        {"containerPort": 81, "name": "HTTP_port"},
        {"containerPort": 82, "name": "web-port-number-16"},
        {"containerPort": 83, "hostIP": "not-an-ip"},
    ]
    found = problems(doc)
    assert ("spec.containers[0].ports[0].containerPort", "must be between 1 and 65535") in found
    assert ("spec.containers[0].ports[1].protocol", "must be one of TCP, UDP, SCTP") in found
    assert found[2][0] == "spec.containers[0].ports[2].name"
    assert found[3] == (
        "spec.containers[0].ports[3].name",
        "a port name must be no more than 15 characters",
    )
    assert found[4] == ("spec.containers[0].ports[4].hostIP", "must be an IP address (got 'not-an-ip')")


def test_container_needs_a_name_and_pod_needs_a_container() -> None:
    doc = pod(containers=[{"image": "nginx"}])
    assert problems(doc) == [("spec.containers[0].name", "required")]
    assert problems(pod(containers=[])) == [("spec.containers", "must have at least one container")]


def test_duplicate_container_and_port_names() -> None:
    ports = [{"containerPort": 80, "name": "http"}, {"containerPort": 81, "name": "http"}]
    assert problems(pod(containers=[{"name": "a", "ports": ports}])) == [
        ("spec.containers[0].ports[1].name", "duplicate port name 'http'")
    ]
    assert problems(pod(containers=[{"name": "a"}], initContainers=[{"name": "a"}])) == [
        ("spec.containers[0].name", "duplicate container name 'a'")
    ]


def test_host_network_host_port_must_equal_container_port() -> None:
    doc = pod(hostNetwork=True)
    doc["spec"]["containers"][0]["ports"] = [{"containerPort": 80, "hostPort": 8080}]
    assert problems(doc) == [
        ("spec.containers[0].ports[0].hostPort", "must equal containerPort when hostNetwork is true")
    ]


def test_pod_status_ips() -> None:
    doc = pod()
    doc["status"] = {"phase": "Running", "podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.2"}]}
    assert problems(doc) == [("status.podIPs[0].ip", "must equal podIP (10.0.0.1)")]
    doc["status"] = {"phase": "Sleeping"}
    assert problems(doc) == [("status.phase", "must be one of Pending, Running, Succeeded, Failed, Unknown")]
    doc["status"] = {"podIPs": [{"ip": "10.0.0.2"}, {"ip": "10.0.0.3"}]}
    assert problems(doc) == [("status.podIPs", "may hold at most one address per IP family")]


# --- Node ---------------------------------------------------------------------------------------

NODE: dict[str, Any] = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}}


def node(annotations: dict[str, str] | None = None, **rest: Any) -> dict[str, Any]:
    doc = copy.deepcopy(NODE)
    if annotations:
        doc["metadata"]["annotations"] = annotations
    doc.update(rest)
    return doc


def test_node_minimal_and_internal_ip() -> None:
    resource = parse_resource(node(status={"addresses": [{"type": "InternalIP", "address": "10.0.0.5"}]}))
    assert isinstance(resource, Node)
    assert resource.internal_ip() == "10.0.0.5"
    assert resource.namespace is None


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("projectcalico.org/IPv4Address", "10.0.0.1", "with prefix length such as 10.0.0.1/24"),
        ("projectcalico.org/IPv4Address", "fd00::1/64", "must be an IPv4 address"),
        ("projectcalico.org/ASNumber", "0", "between 1 and 4294967295"),
        ("projectcalico.org/ASNumber", "4294967296", "between 1 and 4294967295"),
        ("projectcalico.org/ASNumber", "AS65000", "between 1 and 4294967295"),
        ("projectcalico.org/RouteReflectorClusterID", "244.0.0", "dotted IPv4"),
        ("projectcalico.org/RouteReflectorClusterID", "fd00::1", "dotted IPv4"),
    ],
)
def test_node_calico_annotations(key: str, value: str, fragment: str) -> None:
    found = problems(node({key: value}))
    assert len(found) == 1
    assert found[0][0] == f"metadata.annotations[{key}]"
    assert fragment in found[0][1]


def test_node_calico_annotations_valid() -> None:
    annotations = {
        "projectcalico.org/IPv4Address": "10.0.0.1/24",
        "projectcalico.org/ASNumber": "4294967295",
        "projectcalico.org/RouteReflectorClusterID": "244.0.0.1",
    }
    resource = parse_resource(node(annotations))
    assert isinstance(resource, Node)
    assert resource.metadata.annotations == annotations
    bgp = BgpNode.from_node(resource)  # what the BGP configuration reads from them
    assert (bgp.ip, bgp.subnet, bgp.as_number, bgp.rr_cluster_id) == (
        "10.0.0.1",
        "10.0.0.0/24",
        4294967295,
        "244.0.0.1",
    )


def test_node_spec_and_addresses() -> None:
    found = problems(
        node(
            spec={
                "podCIDR": "10.1.0.0/24",
                "podCIDRs": ["10.2.0.0/24"],
                "taints": [{"key": "k", "effect": "Never"}],
            },
            status={
                "addresses": [{"type": "InternalIP", "address": "node-1"}, {"type": "Public", "address": "x"}]
            },
        )
    )
    assert ("spec.podCIDRs[0]", "must equal podCIDR (10.1.0.0/24)") not in found  # field errors first
    assert ("spec.taints[0].effect", "must be one of NoSchedule, PreferNoSchedule, NoExecute") in found
    assert ("status.addresses[0].address", "must be an IP address (got 'node-1')") in found
    assert found[-1][0] == "status.addresses[1].type"
    assert problems(node(spec={"podCIDR": "10.1.0.0/24", "podCIDRs": ["10.2.0.0/24"]})) == [
        ("spec.podCIDRs[0]", "must equal podCIDR (10.1.0.0/24)")
    ]
    assert problems(node(spec={"podCIDR": "10.1.0.0"}))[0][0] == "spec.podCIDR"


# --- Service ------------------------------------------------------------------------------------


def service(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}, "spec": spec}


def test_service_defaults() -> None:
    resource = parse_resource(service(selector={"app": "web"}, ports=[{"port": 80}]))
    assert isinstance(resource, Service)
    spec = resource.to_dict()["spec"]
    assert spec == {
        "type": "ClusterIP",
        "selector": {"app": "web"},
        "ports": [{"protocol": "TCP", "port": 80, "targetPort": 80}],
        "sessionAffinity": "None",
        "internalTrafficPolicy": "Cluster",
    }


def test_service_nodeport_defaults_external_traffic_policy_and_client_ip_timeout() -> None:
    resource = parse_resource(
        service(type="NodePort", ports=[{"port": 80, "nodePort": 30080}], sessionAffinity="ClientIP")
    )
    assert isinstance(resource, Service)
    assert resource.spec.external_traffic_policy == "Cluster"
    assert resource.spec.session_affinity_config is not None
    assert resource.spec.session_affinity_config.client_ip is not None
    assert resource.spec.session_affinity_config.client_ip.timeout_seconds == 10800


def test_service_names_are_dns1035_labels() -> None:
    doc = service(ports=[{"port": 80}])
    doc["metadata"]["name"] = "1web"
    assert problems(doc)[0][0] == "metadata.name"


def test_service_port_rules() -> None:
    found = problems(
        service(
            ports=[
                {"port": 80, "targetPort": "8080"},
                {"port": 80, "name": "b", "protocol": "TCP"},
                {"port": 70000, "name": "c"},
                {"port": 81, "name": "d", "nodePort": 30001},
            ]
        )
    )
    assert found[0] == (
        "spec.ports[0].targetPort",
        "a port name must contain at least one letter (write a port number without quotes)",
    )
    assert ("spec.ports[2].port", "must be between 1 and 65535") in found


def test_service_several_ports_need_unique_names() -> None:
    found = problems(service(ports=[{"port": 80}, {"port": 81, "name": "x"}, {"port": 82, "name": "x"}]))
    assert found == [
        ("spec.ports[0].name", "required when a service has more than one port"),
        ("spec.ports[2].name", "duplicate port name 'x'"),
    ]


def test_service_cross_field_rules() -> None:
    assert problems(service(ports=[{"port": 80, "nodePort": 30001}])) == [
        ("spec.ports[0].nodePort", "may not be set when type is ClusterIP")
    ]
    assert problems(service(type="NodePort", clusterIP="None", ports=[{"port": 80}])) == [
        ("spec.clusterIP", "may not be None (headless) when type is NodePort")
    ]
    assert problems(service(type="ExternalName")) == [
        ("spec.externalName", "required when type is ExternalName")
    ]
    assert problems(service()) == [
        ("spec.ports", "required (at least one port) unless the service is headless")
    ]
    assert problems(service(ports=[{"port": 80}], externalTrafficPolicy="Local")) == [
        ("spec.externalTrafficPolicy", "may only be set when type is NodePort or LoadBalancer")
    ]
    assert problems(
        service(ports=[{"port": 80}], sessionAffinityConfig={"clientIP": {"timeoutSeconds": 10}})
    ) == [("spec.sessionAffinityConfig", "may only be set when sessionAffinity is ClientIP")]
    assert problems(service(ports=[{"port": 80}], clusterIP="10.96.0.300")) == [
        ("spec.clusterIP", "must be an IP address (got '10.96.0.300'), or None for a headless service")
    ]
    assert problems(service(ports=[{"port": 80}], clusterIP="10.96.0.1", clusterIPs=["10.96.0.2"])) == [
        ("spec.clusterIPs[0]", "must equal clusterIP (10.96.0.1)")
    ]


def test_service_session_affinity_timeout_range() -> None:
    assert problems(
        service(
            ports=[{"port": 80}],
            sessionAffinity="ClientIP",
            sessionAffinityConfig={"clientIP": {"timeoutSeconds": 86401}},
        )
    ) == [("spec.sessionAffinityConfig.clientIP.timeoutSeconds", "must be between 1 and 86400")]


def test_service_enums() -> None:
    found = problems(service(type="Internal", sessionAffinity="Sticky", ports=[{"port": 80}]))
    assert found == [
        ("spec.type", "must be one of ClusterIP, NodePort, LoadBalancer, ExternalName"),
        ("spec.sessionAffinity", "must be one of None, ClientIP"),
    ]


def test_headless_service_needs_no_ports() -> None:
    resource = parse_resource(service(clusterIP="None", selector={"app": "db"}))
    assert isinstance(resource, Service)
    assert resource.spec.is_headless()


def test_namespace_carries_its_name_label_like_the_api_server():
    ns = parse_resource({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})
    assert ns.metadata.labels == {"kubernetes.io/metadata.name": "shop"}
    forged = parse_resource(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": "shop", "labels": {"kubernetes.io/metadata.name": "other", "team": "a"}},
        }
    )
    assert forged.metadata.labels == {"kubernetes.io/metadata.name": "shop", "team": "a"}


# --- ServiceAccount ----------------------------------------------------------------------------


def test_service_account_keeps_labels_and_accepts_kubectls_fields() -> None:
    doc = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": "api", "namespace": "shop", "labels": {"role": "backend"}},
        "automountServiceAccountToken": False,
        "secrets": [{"name": "api-token"}],
    }
    account = parse_resource(doc)
    assert isinstance(account, ServiceAccount)
    assert account.metadata.labels == {"role": "backend"}
    assert account.to_dict() == doc
    assert problems({**doc, "spec": {}}) == [("spec", "unknown field")]
    assert problems({**doc, "automountServiceAccountToken": "no"}) == [
        ("automountServiceAccountToken", "must be true or false")
    ]


def test_pod_service_account_is_a_name_and_defaults_to_default() -> None:
    assert parse_resource(pod()).spec.effective_service_account() == "default"
    assert parse_resource(pod(serviceAccountName="api")).spec.effective_service_account() == "api"
    assert parse_resource(pod(serviceAccount="old")).spec.effective_service_account() == "old"
    assert problems(pod(serviceAccountName="Bad_Name"))[0][0] == "spec.serviceAccountName"
    assert problems(pod(serviceAccountName=7)) == [
        ("spec.serviceAccountName", "must be a string (quote the value in YAML)")
    ]
