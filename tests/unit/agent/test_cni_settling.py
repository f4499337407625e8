"""Which pod routes a route apply must leave alone while the CNI service wires pods
(the race behind a pod's /32 deleted by a plan computed just before its ADD)."""

from __future__ import annotations

from podnet.agent.cni_service import CNIService
from podnet.calc.endpoints import EndpointRecord
from podnet.calc.routes import node_routes


def record(ip: str, container: str) -> EndpointRecord:
    return EndpointRecord("n1", "default", f"p-{container}", container, "eth0", f"cali{container}", (ip,))


def service(endpoints: dict) -> CNIService:
    return CNIService(
        "n1",
        None,
        None,
        endpoints,
        lambda: None,
        lambda: 1450,  # type: ignore[arg-type]
        lambda: ("calico", "169.254.1.1"),
        lambda: True,
        lambda: ([], {}),
    )


def test_a_plan_knows_the_endpoints_it_was_computed_from():
    plan = node_routes("n1", {}, [], [record("10.244.1.5", "a"), record("10.244.1.6", "b")])
    assert plan.endpoint_dsts == {"10.244.1.5/32", "10.244.1.6/32"}


def test_settling_is_the_request_in_flight_and_what_changed_since_the_plan():
    endpoints = {"a": record("10.244.1.5", "a"), "gone": record("10.244.1.7", "gone")}
    cni = service(endpoints)
    planned = node_routes("n1", {}, [], list(endpoints.values())).endpoint_dsts
    assert cni.settling(planned) == set()  # nothing changed: the plan is right about every pod

    with cni._changing(["10.244.1.6"]):  # an ADD wiring 10.244.1.6 now
        assert cni.settling(planned) == {"10.244.1.6/32"}
        endpoints["b"] = record("10.244.1.6", "b")
    del endpoints["gone"]  # a DEL done since the plan
    assert cni.settling(planned) == {"10.244.1.6/32", "10.244.1.7/32"}
    assert cni.settling(node_routes("n1", {}, [], list(endpoints.values())).endpoint_dsts) == set()
