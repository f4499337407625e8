"""Flows in both profiles, as a user reads them with ``podnet observe`` (issue 17's done-when):

- ``podnet observe --type drop --follow`` shows a policy drop as it happens, naming its policy;
- ``podnet observe --from-pod demo/frontend -o json`` shows the forwarded connections with their
  bytes, which agree with what the client really received (curl's own count);
- the node's metrics count what was forwarded (bytes of a known transfer, both directions) and
  dropped (by reason and direction), with Cilium's names beside podnet's on Cilium nodes;
- ``podnet observe map`` of the three tiers (frontend → api → db, frontend → db denied) draws
  them: the graph's nodes and edges (``-o json``) and a PNG;
- filters combine as Hubble's (``--not``, ``--to-pod``, ``--verdict``), and a node whose agent
  does not answer is named while the other node's flows are still shown.

One 2-node lab per profile: ``demo/frontend``, ``demo/other`` and ``demo/db`` on node-1, ``demo/api``
on node-2 behind Service ``demo/api`` and under a NetworkPolicy that admits frontend only; db admits
api only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from lab_support import agent_metric, pod_doc, podnet, until

from podnet.datastore.etcd import EtcdDatastore
from podnet.datastore.resources import ResourceStore
from podnet.lab import cluster
from podnet.lab.cleanup import clean
from podnet.lab.naming import LabNames
from podnet.lab.topology import LabSpec, random_underlay
from podnet.model import lookup, parse_resource

pytestmark = [pytest.mark.root, pytest.mark.etcd, pytest.mark.lab]

if os.geteuid() != 0:
    pytest.skip("lab tests need root", allow_module_level=True)

POLICY = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "api-from-frontend", "namespace": "demo"},
    "spec": {
        "podSelector": {"matchLabels": {"app": "api"}},
        "ingress": [
            {"from": [{"podSelector": {"matchLabels": {"app": "frontend"}}}], "ports": [{"port": 8080}]}
        ],
    },
}

DB_POLICY = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "db-from-api", "namespace": "demo"},
    "spec": {
        "podSelector": {"matchLabels": {"app": "db"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "api"}}}]}],
    },
}
API_SERVICE = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "api", "namespace": "demo"},
    "spec": {"selector": {"app": "api"}, "ports": [{"port": 80, "targetPort": 8080}]},
}


@pytest.fixture(params=["calico", "cilium"], scope="module")
def lab(request) -> Iterator[tuple[LabNames, ResourceStore, dict[str, str]]]:  # type: ignore[no-untyped-def]
    names = LabNames(f"pnw{os.urandom(2).hex()}-")
    try:
        info = cluster.up(LabSpec(nodes=2, profile=request.param, underlay=random_underlay()), names)
        store = ResourceStore(EtcdDatastore([info.etcd_endpoint]))
        docs = [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}},
            pod_doc("demo/frontend", "node-1", {"app": "frontend"}, ()),
            pod_doc("demo/other", "node-1", {"app": "other"}, ()),
            pod_doc("demo/api", "node-2", {"app": "api"}, (("http", 8080, "TCP"),)),
            pod_doc("demo/db", "node-1", {"app": "db"}, (("pg", 8080, "TCP"),)),
            POLICY,
            DB_POLICY,
            API_SERVICE,
        ]
        store.apply([parse_resource(d) for d in docs])

        def running() -> dict[str, str] | None:
            pods = {f"demo/{p.metadata.name}": p for p in store.list(lookup("pods"), "demo")}
            ok = len(pods) == 4 and all(p.status and p.status.phase == "Running" for p in pods.values())
            return {k: p.status.pod_ip for k, p in pods.items()} if ok else None

        ips = until("the pods Running", running, timeout=60)
        until("the policy in force", lambda: _probe(names, "demo/other", False), timeout=30)
        yield names, store, ips
    finally:
        cluster.remove(names)
        clean(names)


def _probe(names: LabNames, src: str, ok: bool) -> bool:
    out = podnet(names, "lab", "probe", src, "demo/api", "8080/TCP", "--timeout", "1", check=False)
    return (out.returncode == 0) == ok


def observe(names: LabNames, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return podnet(names, "observe", *args, check=check)


def flows(names: LabNames, *args: str) -> list[dict]:
    out = observe(names, *args, "-o", "json")
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_a_policy_drop_is_followed_as_it_happens_naming_its_policy(lab) -> None:  # type: ignore[no-untyped-def]
    names, _, ips = lab
    env = {**os.environ, "PODNET_LAB_PREFIX": names.prefix}
    cmd = [sys.executable, "-m", "podnet.cli.main", "observe", "--type", "drop", "--follow", "--since", "1s"]
    follower = subprocess.Popen([*cmd, "-o", "json"], stdout=subprocess.PIPE, text=True, env=env)
    lines: list[dict] = []
    reader = threading.Thread(
        target=lambda: lines.extend(json.loads(x) for x in follower.stdout), daemon=True
    )  # type: ignore[union-attr]
    reader.start()
    try:
        # the follower is live once a drop made after it started reaches it: probe until one does
        def seen() -> dict | None:
            assert _probe(names, "demo/other", False), "other must not reach api"
            return next((f for f in lines if f["flow"]["IP"]["source"] == ips["demo/other"]), None)

        drop = until("the drop on the follower", seen, timeout=30, interval=0.5)
    finally:
        follower.send_signal(signal.SIGINT)
        follower.wait(10)
    f = drop["flow"]
    assert f["verdict"] == "DROPPED" and f["event_type"] == {"type": "drop"}
    assert f["drop_reason_desc"] == "POLICY_DENIED" and f["traffic_direction"] == "INGRESS"
    assert (f["source"]["pod_name"], f["destination"]["pod_name"]) == ("other", "api")
    assert [p["name"] for p in f["policies"]] == ["api-from-frontend"]
    assert f["l4"]["TCP"]["destination_port"] == 8080
    assert follower.returncode == 0  # Ctrl-C ends a follow quietly
    # compact, Hubble's line
    line = observe(names, "--type", "drop", "--from-pod", "demo/other", "--last", "1").stdout.strip()
    assert (
        line.endswith("demo/api:8080 Policy denied DROPPED (TCP Flags: SYN)")
        or "Policy denied DROPPED" in line
    ), line


def test_forwarded_flows_carry_the_bytes_the_client_received(lab) -> None:  # type: ignore[no-untyped-def]
    names, _, ips = lab
    url = f"http://{ips['demo/api']}:8080/flows-test"
    out = podnet(names, "lab", "exec", "demo/frontend", "--", "curl", "-s", "-o", "/dev/null", "-w",
                 "%{local_port} %{size_download} %{size_header}", url)  # fmt: skip
    port, body, headers = (int(x) for x in out.stdout.split())

    def counted() -> list[dict] | None:
        got = [f for f in flows(names, "--from-pod", "demo/frontend", "--to-port", "8080", "--last", "50")
               if f["flow"]["l4"]["TCP"]["source_port"] == port and f["flow"].get("traffic")]  # fmt: skip
        return got if {f["node_name"] for f in got} == {"node-1", "node-2"} else None

    seen = until("the connection's flows with bytes on both nodes", counted, timeout=20)
    for response in seen:
        f = response["flow"]
        assert f["verdict"] == "FORWARDED" and f["event_type"] == {"type": "trace"}
        assert (f["source"]["pod_name"], f["destination"]["pod_name"]) == ("frontend", "api")
        t = f["traffic"]
        # what the client received is the HTTP answer plus each packet's headers (Ethernet where
        # the profile counts it, IP, TCP with options: at most 14 + 20 + 60 bytes)
        assert body + headers <= t["bytes_received"] <= body + headers + 94 * t["packets_received"], t
        assert t["packets_sent"] >= 3 and t["bytes_sent"] > len("GET /flows-test HTTP/1.1"), t
    ingress = next(r["flow"] for r in seen if r["flow"]["traffic_direction"] == "INGRESS")
    assert [p["name"] for p in ingress["policies"]] == ["api-from-frontend"]  # the rule that allowed it


def test_filters_combine_and_negate_as_hubble(lab) -> None:  # type: ignore[no-untyped-def]
    names, _, _ = lab
    assert _probe(names, "demo/frontend", True) and _probe(names, "demo/other", False)
    to_api = flows(names, "--to-pod", "demo/api", "--since", "5m")
    assert {f["flow"]["verdict"] for f in to_api} >= {"FORWARDED", "DROPPED"}
    forwarded = flows(names, "--to-pod", "demo/api", "--not", "--verdict", "DROPPED", "--since", "5m")
    assert forwarded and all(f["flow"]["verdict"] != "DROPPED" for f in forwarded)
    either = flows(names, "--from-pod", "demo/other", "--from-pod", "demo/frontend", "--since", "5m")
    assert {f["flow"]["source"]["pod_name"] for f in either} == {"other", "frontend"}
    assert flows(names, "--node-name", "node-2", "--since", "5m")
    assert all(f["node_name"] == "node-2" for f in flows(names, "--node-name", "node-2", "--since", "5m"))
    bad = observe(names, "--verdict", "MAYBE", check=False)
    assert bad.returncode != 0 and "--verdict MAYBE" in bad.stderr


def test_a_node_that_does_not_answer_is_named_and_the_others_shown(lab) -> None:  # type: ignore[no-untyped-def]
    names, _, _ = lab
    socket = names.agent_socket("node-1")
    moved = socket + ".away"
    os.rename(socket, moved)  # node-1's agent is unreachable for the CLI (the agent itself runs on)
    try:
        out = observe(names, "--since", "5m", check=False)
    finally:
        os.rename(moved, socket)
    assert out.returncode == 1
    assert "node-1" in out.stderr and "its flows are not shown" in out.stderr
    assert out.stdout.strip() and "node-2" not in out.stderr  # node-2's flows are there
    assert observe(names, "--since", "5m").returncode == 0  # and node-1 answers again


def test_metrics_count_forwarded_bytes_and_policy_drops(lab) -> None:  # type: ignore[no-untyped-def]
    names, store, ips = lab
    node2 = names.node_ns("node-2")
    fwd = 'podnet_forward_bytes_total{direction="ingress"}'
    before = agent_metric(node2, fwd)
    size = 2_000_000  # the api pod answers a POST with its body's size; the body is what we count
    out = podnet(names, "lab", "exec", "demo/frontend", "--", "sh", "-c",
                 f"head -c {size} /dev/zero | curl -s -o /dev/null -w '%{{size_upload}}' "
                 f"--data-binary @- http://{ips['demo/api']}:8080/upload")  # fmt: skip
    assert int(out.stdout) == size
    grown = agent_metric(node2, fwd) - before
    assert size <= grown <= size * 1.05, grown  # the body plus headers, within 5 %
    denied = 'podnet_drop_count_total{direction="ingress",reason="POLICY_DENIED"}'
    drops = agent_metric(node2, denied)
    assert _probe(names, "demo/other", False)
    until("the drop counted", lambda: agent_metric(node2, denied) > drops, timeout=10)
    profile = store.get(lookup("clusterconfigurations"), "default")
    cilium = profile is not None and profile.spec.effective().profile == "cilium"
    alias = agent_metric(node2, 'cilium_forward_bytes_total{direction="INGRESS"}')
    assert (alias > 0) == cilium  # Cilium's name on Cilium nodes only


def test_the_service_map_of_three_tiers_shows_the_denied_edge(lab, tmp_path) -> None:  # type: ignore[no-untyped-def]
    names, store, _ = lab
    vip = store.get(lookup("services"), "api", "demo").spec.cluster_ip
    until("frontend -> Service api", lambda: podnet(names, "lab", "exec", "demo/frontend", "--", "curl", "-s",
          "-m", "2", "-o", "/dev/null", "-w", "%{http_code}", f"http://{vip}/", check=False).stdout == "200",
          timeout=20)  # fmt: skip
    assert podnet(names, "lab", "probe", "demo/api", "demo/db", "8080/TCP").returncode == 0
    assert _probe_to(names, "demo/frontend", "demo/db") is False  # denied: db admits api only

    graph = json.loads(observe(names, "map", "-n", "demo", "--since", "2m", "-o", "json").stdout)
    workloads = {n["name"] for n in graph["nodes"] if n["kind"] == "workload"}
    assert {"frontend", "api", "db"} <= workloads
    edges = {(e["source"], e["destination"]): e for e in graph["edges"]}
    denied = edges[("workload:demo/frontend", "workload:demo/db")]
    assert denied["status"] == "dropped" and denied["connections"].get("DROPPED", 0) >= 1
    assert edges[("workload:demo/api", "workload:demo/db")]["status"] == "forwarded"
    through = edges.get(("workload:demo/frontend", "service:demo/api"))  # the ClusterIP seen (Calico)
    direct = edges.get(("workload:demo/frontend", "workload:demo/api"))  # translated at connect (Cilium)
    assert (through or direct) and (through or direct)["connections"].get("FORWARDED", 0) >= 1
    picture = tmp_path / "map.png"
    out = observe(names, "map", "-n", "demo", "--since", "2m", "-o", "png", "--file", str(picture))
    data = picture.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000, out.stderr
    svg = observe(names, "map", "-n", "demo", "--since", "2m", "-o", "svg").stdout
    assert "frontend" in svg and "db" in svg and "stroke-dasharray" in svg  # the denied edge, dashed


def _probe_to(names: LabNames, src: str, dst: str) -> bool:
    out = podnet(names, "lab", "probe", src, dst, "8080/TCP", "--timeout", "1", check=False)
    return out.returncode == 0
