"""The lab's cluster DNS, in both profiles: pods resolve Services, pods and outside names through
``kube-system/kube-dns`` with their namespace's search list (``/etc/netns/<pod>/resolv.conf``), as
a user does with ``podnet lab probe --dns`` and with curl in ``podnet lab exec``; names that do not
exist are NXDOMAIN; the lab leaves no resolv.conf behind.

One 2-node lab per profile (``LabSpec(dns=True)``): ``shop/web`` on node-1 behind Service
``shop/web``, ``shop/client`` on node-2; the test zone on ``ext`` answers ``*.example.test``. The
Cilium profile reaches the DNS ClusterIP over UDP through its socket LB (sendmsg/recvmsg), the
Calico profile through nftables DNAT.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator

import pytest
import yaml
from lab_support import agent_metric, pod_doc, podnet, until

from podnet.dataplane.netlink import Netlink
from podnet.datastore.etcd import EtcdDatastore
from podnet.datastore.resources import ResourceStore
from podnet.lab import cluster
from podnet.lab.cleanup import clean, netns_etc_dirs
from podnet.lab.cluster_dns import DNS_LABEL, DNS_NAMESPACE, DNS_SERVICE
from podnet.lab.naming import LabNames
from podnet.lab.netns import spawn
from podnet.lab.podserver import podserver_command
from podnet.lab.probe import Probe, run_probes
from podnet.lab.topology import LabSpec, random_underlay
from podnet.model import lookup, parse_resource

pytestmark = [pytest.mark.root, pytest.mark.etcd, pytest.mark.lab]

if os.geteuid() != 0:
    pytest.skip("lab tests need root", allow_module_level=True)

WEB, CLIENT = "shop/web", "shop/client"


@pytest.fixture(params=["calico", "cilium"], scope="module")
def lab(request) -> Iterator[tuple[LabNames, ResourceStore, dict[str, str]]]:  # type: ignore[no-untyped-def]
    names = LabNames(f"pnd{os.urandom(2).hex()}-")
    try:
        info = cluster.up(
            LabSpec(nodes=2, profile=request.param, underlay=random_underlay(), dns=True), names
        )
        store = ResourceStore(EtcdDatastore([info.etcd_endpoint]))
        docs = [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}},
            pod_doc(WEB, "node-1", {"app": "web"}, (("http", 80, "TCP"),)),
            pod_doc(CLIENT, "node-2", {"app": "client"}, ()),
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "web", "namespace": "shop"},
                "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 80}]},
            },
        ]
        store.apply([parse_resource(d) for d in docs])

        def running() -> dict[str, str] | None:
            pods = {f"shop/{p.metadata.name}": p for p in store.list(lookup("pods"), "shop")}
            ok = len(pods) == 2 and all(p.status and p.status.phase == "Running" for p in pods.values())
            return {k: p.status.pod_ip for k, p in pods.items()} if ok else None

        ips = until("the pods Running", running, timeout=60)
        assert info.topology.external is not None
        ips["ext"] = info.topology.external.ip
        ips["ext2"] = ips["ext"].rsplit(".", 1)[0] + ".4"  # web.example.test's second address
        with Netlink.open(names.ext_ns) as nl:
            nl.addr_add("eth0", f"{ips['ext2']}/24")
        server = spawn(
            podserver_command("ext", ["8080/TCP"], names.prefix), netns=names.ext_ns, lab_prefix=names.prefix
        )
        ips["svc"] = store.get(lookup("services"), "web", "shop").spec.cluster_ip
        yield names, store, ips
        server.stop()
    finally:
        cluster.remove(names)
        clean(names)
    assert netns_etc_dirs(names.prefix) == []  # no pod's resolv.conf left behind


def resolve(names: LabNames, name: str) -> tuple[int, dict]:
    out = podnet(names, "lab", "probe", CLIENT, "--dns", name, "-o", "json", "--timeout", "2", check=False)
    return out.returncode, json.loads(out.stdout)


def test_pods_resolve_services_pods_and_outside_names(lab) -> None:  # type: ignore[no-untyped-def]
    names, store, ips = lab
    dns = store.get(lookup("services"), DNS_SERVICE, DNS_NAMESPACE)
    assert dns.spec.cluster_ip == "10.96.0.10"
    server = store.get(lookup("pods"), "coredns", DNS_NAMESPACE)
    assert server.metadata.labels[DNS_LABEL[0]] == DNS_LABEL[1]  # a pod policies can select
    ext_other = ips["ext"].rsplit(".", 1)[0] + ".4"
    dashed = ips[WEB].replace(".", "-")
    cases = {
        "web": [ips["svc"]],  # the search list: web.shop.svc.cluster.local
        "web.shop": [ips["svc"]],
        "web.shop.svc.cluster.local": [ips["svc"]],
        f"{dashed}.shop.pod.cluster.local": [ips[WEB]],
        "web.example.test": sorted([ips["ext"], ext_other]),  # forwarded to the test zone on ext
        "api.example.test": [ips["ext"]],
    }
    for name, want in cases.items():
        code, doc = until(
            f"{name} resolves", lambda name=name: (r := resolve(names, name))[0] == 0 and r, timeout=15
        )
        assert doc["ok"] and doc["addresses"] == want, (name, doc)
        assert doc["latency_ms"] > 0
    for name in ("nope.shop.svc.cluster.local", "nope.example.test"):
        code, doc = resolve(names, name)
        assert code == 1 and not doc["ok"] and doc["detail"] == "NXDOMAIN", (name, doc)
    # a program in the pod resolves with its search list too (glibc, /etc/resolv.conf)
    curl = podnet(names, "lab", "exec", CLIENT, "--", "curl", "-s", "-m", "5", "http://web.shop/hello")
    assert json.loads(curl.stdout)["pod"] == WEB, curl.stdout
    with open(os.path.join("/etc/netns", names.pod_ns("shop", "client"), "resolv.conf")) as f:
        conf = f.read()
    assert conf.splitlines() == [
        "nameserver 10.96.0.10",
        "search shop.svc.cluster.local svc.cluster.local cluster.local",
        "options ndots:5",
    ]


def test_dns_rules_through_the_dns_proxy(lab) -> None:  # type: ignore[no-untyped-def]
    """Cilium profile: ``rules.dns`` sends the client's lookups to its node's DNS proxy; a name the
    rules allow is answered (UDP and TCP), another gets REFUSED; each lookup is an L7 record naming
    the rule; the policy's status says its L7 rules are enforced. As in Cilium, the search list's
    expansions are names like any other (``api.example.test.shop.svc.cluster.local`` is REFUSED
    here, which stops a resolver): the outside names are asked fully qualified."""
    names, store, ips = lab
    if store.get(lookup("clusterconfigurations"), "default").spec.profile != "cilium":
        pytest.skip("DNS rules go through the Cilium profile's DNS proxy")
    policy = {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "client-dns", "namespace": "shop"},
        "spec": {
            "endpointSelector": {"matchLabels": {"app": "client"}},
            "egress": [
                {
                    "toEndpoints": [
                        {
                            "matchLabels": {
                                "k8s:io.kubernetes.pod.namespace": DNS_NAMESPACE,
                                DNS_LABEL[0]: DNS_LABEL[1],
                            }
                        }
                    ],
                    "toPorts": [
                        {
                            "ports": [{"port": "53", "protocol": "UDP"}, {"port": "53", "protocol": "TCP"}],
                            "rules": {
                                "dns": [
                                    {"matchPattern": "*.example.test"},
                                    {"matchName": "web.shop.svc.cluster.local"},
                                ]
                            },
                        }
                    ],
                }
            ],
        },
    }
    store.apply([parse_resource(policy)])
    try:
        code, doc = until(
            "api.example.test through the proxy",
            lambda: (r := resolve(names, "api.example.test."))[0] == 0 and r,
            timeout=20,
        )
        assert doc["addresses"] == [ips["ext"]]
        code, doc = resolve(names, "web")  # the search list's first name: allowed by matchName
        assert code == 0 and doc["addresses"] == [ips["svc"]], doc
        code, doc = resolve(names, "other.shop.svc.cluster.local.")
        assert code == 1 and doc["detail"] == "REFUSED", doc
        tcp = podnet(
            names,
            "lab",
            "exec",
            CLIENT,
            "--",
            sys.executable,
            "-c",
            "import dns.resolver; r = dns.resolver.Resolver(); "
            "print(sorted(a.address for a in r.resolve('api.example.test.', 'A', tcp=True, lifetime=3)))",
        )
        assert tcp.stdout.strip() == repr([ips["ext"]]), tcp.stdout + tcp.stderr
        denied_tcp = podnet(
            names,
            "lab",
            "exec",
            CLIENT,
            "--",
            sys.executable,
            "-c",
            "import dns.resolver, sys\n"
            "try: dns.resolver.Resolver().resolve('x.other.test.', 'A', tcp=True, lifetime=3)\n"
            "except dns.resolver.NoNameservers as e: print([err[3] for err in e.kwargs['errors']])",
        )
        assert "REFUSED" in denied_tcp.stdout, denied_tcp.stdout + denied_tcp.stderr

        def records() -> list[dict]:
            out = podnet(names, "monitor", "--type", "l7", "-o", "json").stdout
            return [r for r in map(json.loads, out.splitlines()) if r.get("protocol") == "dns"]

        seen = until(
            "the lookups in podnet monitor --type l7", lambda: len(records()) >= 4 and records(), timeout=10
        )
        forwarded = next(r for r in seen if r["query"] == "api.example.test." and r["transport"] == "udp")
        assert forwarded["verdict"] == "FORWARDED" and forwarded["rcode"] == "NOERROR"
        assert forwarded["rule"].startswith("cnp:shop/client-dns:egress:0") and forwarded["srcPod"] == CLIENT
        assert forwarded["addresses"] == [ips["ext"]]
        refused = next(r for r in seen if r["query"] == "other.shop.svc.cluster.local.")
        assert (refused["verdict"], refused["rcode"], refused["rule"]) == (
            "DENIED",
            "REFUSED",
            "default-deny",
        )
        shown = yaml.safe_load(podnet(names, "get", "cnp", "client-dns", "-n", "shop", "-o", "yaml").stdout)
        conditions = {c["type"]: c for c in shown["status"]["conditions"]}
        assert conditions["L7Enforced"]["reason"] == "ProxyRedirect", conditions
    finally:
        store.delete(lookup("ciliumnetworkpolicies"), "client-dns", "shop")


def connects(names: LabNames, address: str) -> bool:
    """A TCP connection from the client to ``address``:8080 (ext's server answers "ext")."""
    (result,) = run_probes([Probe(names.pod_ns("shop", "client"), address, 8080, "TCP", "ext")], 0.7)
    return result.ok


def test_to_fqdns_allows_what_the_dns_proxy_learnt(lab) -> None:  # type: ignore[no-untyped-def]
    """Cilium profile: toFQDNs allows the addresses the node's DNS proxy learnt from allowed
    answers, from before the answer reaches the pod; another address of the same host stays
    dropped; an address goes when its TTL ends; the learnt addresses survive an agent restart."""
    names, store, ips = lab
    if store.get(lookup("clusterconfigurations"), "default").spec.profile != "cilium":
        pytest.skip("toFQDNs goes through the Cilium profile's DNS proxy")
    kube_dns = {"matchLabels": {"k8s:io.kubernetes.pod.namespace": DNS_NAMESPACE, DNS_LABEL[0]: DNS_LABEL[1]}}
    policy = {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "client-fqdn", "namespace": "shop"},
        "spec": {
            "endpointSelector": {"matchLabels": {"app": "client"}},
            "egress": [
                {
                    "toEndpoints": [kube_dns],
                    "toPorts": [
                        {
                            "ports": [{"port": "53", "protocol": "ANY"}],
                            "rules": {"dns": [{"matchPattern": "*"}]},
                        }
                    ],
                },
                {
                    "toFQDNs": [{"matchName": "api.example.test"}],
                    "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}]}],
                },
            ],
        },
    }
    # first without the DNS rule: the status says toFQDNs can learn nothing (cilium#28427)
    blind = {**policy, "spec": {**policy["spec"], "egress": policy["spec"]["egress"][1:]}}
    store.apply([parse_resource(blind)])
    node_ns = names.node_ns("node-2")
    try:

        def learnable() -> dict | None:
            shown = yaml.safe_load(
                podnet(names, "get", "cnp", "client-fqdn", "-n", "shop", "-o", "yaml").stdout
            )
            found = {c["type"]: c for c in shown["status"]["conditions"]}.get("FQDNLearnable")
            return found

        condition = until("the FQDNLearnable condition", learnable, timeout=10)
        assert condition["reason"] == "NoDNSRule" and "shop/client" in condition["message"], condition
        store.apply([parse_resource(policy)])
        until("the condition gone with the DNS rule", lambda: learnable() is None, timeout=10)
        until("the policy isolates the client", lambda: not connects(names, ips["ext"]), timeout=10)
        code, doc = resolve(names, "api.example.test.")
        assert code == 0 and doc["addresses"] == [ips["ext"]], doc
        assert connects(names, ips["ext"])  # at once: the answer waited for the policy
        assert not connects(names, ips["ext2"])  # the same host's other address: never learnt for it
        code, doc = resolve(names, "web.example.test.")  # allowed by the DNS rule, selected by no toFQDNs
        assert code == 0 and sorted(doc["addresses"]) == sorted([ips["ext"], ips["ext2"]])
        assert not connects(names, ips["ext2"])
        # the TTL (3 s, no minimum): the address goes, new connections are dropped again
        until("the learnt address expired", lambda: not connects(names, ips["ext"]), timeout=15)
        # an agent restart keeps what was learnt (a minimum TTL long enough to see it)
        config = store.get(lookup("clusterconfigurations"), "default")
        store.patch(lookup("clusterconfigurations"), "default", {"spec": {"toFQDNsMinTTL": 60}})
        code, doc = until(
            "api.example.test again", lambda: (r := resolve(names, "api.example.test."))[0] == 0 and r
        )
        assert connects(names, ips["ext"])
        pid = cluster.agent_pids(names)["node-2"]
        os.kill(pid, 9)
        until(
            "the agent restarted",
            lambda: cluster.agent_pids(names).get("node-2") not in (None, pid),
            timeout=20,
        )
        cluster.wait_agent(names, "node-2")
        until(
            "its first policy sync",
            lambda: agent_metric(node_ns, 'podnet_dataplane_syncs_total{result="ok"}') >= 1,
            timeout=20,
        )
        assert connects(names, ips["ext"])  # the new agent's maps still allow it
        assert not connects(names, ips["ext2"])
        store.patch(
            lookup("clusterconfigurations"),
            "default",
            {"spec": {"toFQDNsMinTTL": config.spec.to_fqdns_min_ttl}},
        )
    finally:
        store.delete(lookup("ciliumnetworkpolicies"), "client-fqdn", "shop")
