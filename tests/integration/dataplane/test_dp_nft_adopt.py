"""A restarted agent adopts the nftables tables it finds instead of rebuilding them: the first
sync of a new manager writes nothing when the kernel already holds exactly what it would write
(checked with ``nft monitor``: no event at all), and rebuilds when the table was changed."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable

import pytest

from podnet.calc.policy import PodInfo, compile_policies
from podnet.calc.services import CLUSTER_IP, NODE_PORT, Backend, Frontend, ServicePlan
from podnet.dataplane.nat import NatManager
from podnet.dataplane.policy import PolicyManager
from podnet.dataplane.services_nft import ServiceProxy
from podnet.model import parse_resource

pytestmark = pytest.mark.root

if os.geteuid() != 0:
    pytest.skip("needs root", allow_module_level=True)

PODS = [
    PodInfo("default", "web", {"app": "web"}, ("10.244.0.2",), "n1", (("http", 8080, "TCP"),)),
    PodInfo("default", "db", {"app": "db"}, ("10.244.0.3",), "n1"),
]
ENDPOINTS = {
    "default/web": ("cali0000000001", ("10.244.0.2",)),
    "default/db": ("cali0000000002", ("10.244.0.3",)),
}
POLICY = parse_resource(
    {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [
                {"from": [{"podSelector": {"matchLabels": {"app": "db"}}}], "ports": [{"port": "http"}]}
            ],
        },
    }
)
BACKENDS = (Backend("10.244.0.2", 8080, "n1", "default/web"), Backend("10.244.0.3", 8080, "n1", "default/db"))
SERVICES = ServicePlan(
    "n1",
    (
        Frontend("default/web", "", CLUSTER_IP, "10.96.0.10", 80, "TCP", BACKENDS, affinity_seconds=60),
        Frontend("default/web", "", NODE_PORT, None, 30080, "TCP", BACKENDS),
    ),
)


class Monitor:
    """``nft monitor`` in a namespace: every change made while it runs."""

    def __init__(self, netns: str) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, "nft", "monitor"], stdout=subprocess.PIPE, text=True
        )
        time.sleep(0.3)

    def stop(self) -> list[str]:
        time.sleep(0.3)
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=5)
        return [line for line in out.splitlines() if line.strip()]


def test_policy_services_and_nat_tables_are_adopted_not_rebuilt(make_netns: Callable[[str], str]) -> None:
    netns = os.path.basename(make_netns("adopt"))
    plan = compile_policies(PODS, PODS, {}, [POLICY])
    assert PolicyManager(netns).apply(plan, ENDPOINTS)["mode"] == "full"
    assert ServiceProxy(netns).apply(SERVICES, ["10.244.0.0/16"])["mode"] == "full"
    assert NatManager(netns).apply(["10.244.0.0/16"], ["10.244.0.0/16"]) is True
    # traffic state that must not count as a difference: an affinity entry
    affinity = subprocess.run(
        ["ip", "netns", "exec", netns, "nft", "-j", "list", "sets", "ip"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    name = next(
        s for s in json.loads(affinity)["nftables"] if "set" in s and s["set"]["name"].startswith("affinity-")
    )["set"]["name"]
    subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            netns,
            "nft",
            "add",
            "element",
            "ip",
            "podnet_services",
            name,
            "{ 10.244.0.9 }",
        ],
        check=True,
    )

    monitor = Monitor(netns)
    policy, services, nat = PolicyManager(netns), ServiceProxy(netns), NatManager(netns)  # "restarted"
    assert policy.apply(plan, ENDPOINTS)["mode"] == "adopted"
    assert services.apply(SERVICES, ["10.244.0.0/16"])["mode"] == "adopted"
    assert nat.apply(["10.244.0.0/16"], ["10.244.0.0/16"]) is False
    assert monitor.stop() == []
    # after adoption, changes are partial as usual
    fewer = ServicePlan("n1", (SERVICES.frontends[0],))
    assert services.apply(fewer, ["10.244.0.0/16"])["mode"] == "partial"

    # a table changed behind the agent's back is rebuilt, not adopted
    subprocess.run(
        ["ip", "netns", "exec", netns, "nft", "add", "rule", "inet", "podnet_policy", "forward", "counter"],
        check=True,
    )
    assert PolicyManager(netns).apply(plan, ENDPOINTS)["mode"] == "full"
