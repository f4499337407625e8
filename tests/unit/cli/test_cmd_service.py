"""``podnet service list`` over an in-memory datastore."""

from __future__ import annotations

from podnet.calc.services import service_plan
from podnet.cli import cmd_service
from podnet.cli.context import cluster_cache
from podnet.datastore.memory import MemoryDatastore
from podnet.datastore.resources import ResourceStore
from podnet.model import parse_resource


def test_list_shows_frontends_backends_and_empty_services() -> None:
    store = ResourceStore(MemoryDatastore())
    docs = [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": "np"},
            "spec": {
                "type": "NodePort",
                "selector": {"app": "web"},
                "sessionAffinity": "ClientIP",
                "ports": [{"port": 80, "targetPort": 8080, "nodePort": 30080}],
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "empty", "namespace": "np"},
            "spec": {"selector": {"app": "none"}, "ports": [{"port": 53, "protocol": "UDP"}]},
        },
    ]
    for i in (1, 2):
        meta = {"name": f"web-{i}", "namespace": "np", "labels": {"app": "web"}}
        spec = {"nodeName": f"node-{i}", "containers": [{"name": "c"}]}
        status = {"phase": "Running", "podIP": f"10.244.{i}.2"}
        docs.append({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec, "status": status})
    store.apply([parse_resource(d) for d in docs])
    cache = cluster_cache(store)
    rows = cmd_service.frontend_rows(service_plan(None, cache.services.values(), cache.pods.values()))
    web = [r for r in rows if r["service"] == "np/web"]
    assert sorted(r["type"] for r in web) == ["ClusterIP", "NodePort"]
    assert all(r["flags"] == ["affinity"] for r in web)
    assert [b["address"] for b in web[0]["backends"]] == ["10.244.1.2:8080", "10.244.2.2:8080"]
    text = cmd_service.render(rows, {})
    assert "*:30080/TCP" in text and "1 => 10.244.1.2:8080 (np/web-1)" in text
    assert "2 => 10.244.2.2:8080 (np/web-2)" in text
    assert "(no backends: connections are refused)" in text
