"""``podnet lab up`` / ``down``: a whole cluster on one machine.

    root netns                         lab namespaces (prefix pn-)
    ───────────                        ───────────────────────────────────────────────────────
    podnet CLI ──127.0.0.1:P──▶ etcd-proxy ══setns══▶ pn-etcd: etcd 10.77.0.2:2379 (--etcd-members 3:
                                                       pn-etcd-2, pn-etcd-3 too; lab/etcd_cluster.py)
    lab kubelet (pods: netns, cgroup,                      ▲ fabric (pn-fabric: br0 [br1 + pn-router])
       CNI via `ip netns exec pn-node-N`)                  │
                                          pn-node-N: eth0 10.77.s.(10+N), podnet-agent,
                                                     agent.sock ◀── podnet-cni (type "podnet")
                                          pn-p-<pod>: eth0 <pod IP>/32, podserver

Order of ``up``: fabric → etcd (+ proxy for the CLI, the only way in from the root namespace) →
cluster resources (ClusterConfiguration, IPPool, Nodes, Namespaces) → CNI configuration per node
→ the kubelet → one agent per node, started by the kubelet as a DaemonSet's pod (and restarted with
back-off when it exits: lab/supervisor.py); ``up`` waits until each answers STATUS; then the
cluster DNS, and with ``--prometheus`` a Prometheus scraping the agents (lab/prometheus.py, its own
proxy for the CLI). Any failure tears down what was made. Everything is recorded in the lab state,
so ``down`` removes exactly that.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

from podnet.cni import agent_api as api
from podnet.datastore.etcd import EtcdDatastore
from podnet.datastore.resources import ResourceStore
from podnet.lab import etcd_cluster, prometheus, supervisor
from podnet.lab.cleanup import CleanupReport, clean, down
from podnet.lab.cni_runtime import install_podnet_plugin
from podnet.lab.fabric import fabric_up
from podnet.lab.naming import LabError, LabNames
from podnet.lab.netns import (
    create_cgroup,
    proc_alive,
    signal_process,
    spawn,
    stop_processes,
    wait_gone,
)
from podnet.lab.state import LabState, ProcessRecord
from podnet.lab.topology import LabSpec, Topology
from podnet.model import parse_resource

POD_CIDR = "10.244.0.0/16"
NETWORK_NAME = "k8s-pod-network"
DEBIAN_CNI_DIR = "/usr/lib/cni"
CHAINED_PLUGINS = ("portmap", "bandwidth", "loopback")

# --encapsulation → (ipipMode, vxlanMode) of the default pool (Calico profile) or tunnel (Cilium).
ENCAPSULATION_MODES = {
    "none": ("Never", "Never"),
    "ipip": ("Always", "Never"),
    "ipip-crosssubnet": ("CrossSubnet", "Never"),
    "vxlan": ("Never", "Always"),
}
SUPPORTED_ENCAPSULATIONS = ("none", "vxlan", "ipip", "ipip-crosssubnet")


@dataclass(frozen=True)
class LabInfo:
    names: LabNames
    topology: Topology
    etcd_endpoint: str  # for the CLI, on root loopback through the proxy (a cluster: one per member)
    seconds: float
    prometheus_endpoint: str | None = None  # LabSpec.prometheus: for the CLI, through its proxy


def lab_names(prefix: str | None = None) -> LabNames:
    return LabNames(prefix or os.environ.get("PODNET_LAB_PREFIX", "pn-"))


def running_endpoint(names: LabNames | None = None) -> str | None:
    """The CLI's etcd endpoint of the lab that is up, if one is."""
    names = names or lab_names()
    state = LabState(names.state_dir)
    if not state.exists():
        return None
    try:
        return state.meta().get("etcd_endpoint")
    except LabError:
        return None


def pod_netns(pod, names: LabNames | None = None) -> str:
    """The network namespace a lab Pod runs in: its own, or its node's for hostNetwork pods."""
    names = names or lab_names()
    if pod.spec.host_network:
        return LabState(names.state_dir).meta()["nodes"][pod.spec.node_name]["netns"]
    return names.pod_ns(pod.metadata.namespace, pod.metadata.name)


def cluster_resources(topo: Topology) -> list[dict]:
    spec = topo.spec
    ipip, vxlan = ENCAPSULATION_MODES[spec.encapsulation]
    config: dict = {"profile": spec.profile}
    if not spec.flows:
        config["flows"] = False
    if spec.profile == "cilium":
        config["tunnel"] = "disabled" if spec.encapsulation == "none" else "vxlan"
    else:
        config.update(defaultIPIPMode=ipip, defaultVXLANMode=vxlan)
    docs: list[dict] = [
        {
            "apiVersion": "podnet.io/v1",
            "kind": "ClusterConfiguration",
            "metadata": {"name": "default"},
            "spec": config,
        },
        {
            "apiVersion": "projectcalico.org/v3",
            "kind": "IPPool",
            "metadata": {"name": "default-ipv4-ippool"},
            "spec": {
                "cidr": POD_CIDR,
                "ipipMode": ipip if spec.profile == "calico" else "Never",
                "vxlanMode": vxlan if spec.profile == "calico" else "Never",
                "natOutgoing": True,
            },
        },
    ]
    if spec.bgp:
        docs.append(
            {
                "apiVersion": "projectcalico.org/v3",
                "kind": "BGPConfiguration",
                "metadata": {"name": "default"},
                "spec": {"nodeToNodeMeshEnabled": True, "asNumber": 64512},
            }
        )
    for ns in ("default", "kube-system"):
        docs.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    for host in topo.nodes:
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": host.name,
                    "labels": {
                        "kubernetes.io/hostname": host.name,
                        "kubernetes.io/os": "linux",
                        "podnet.io/subnet": f"subnet-{host.subnet}",
                    },
                    "annotations": {"projectcalico.org/IPv4Address": host.attachments[0].address},
                },
                "status": {
                    "addresses": [
                        {"type": "InternalIP", "address": host.ip},
                        {"type": "Hostname", "address": host.name},
                    ]
                },
            }
        )
    return docs


def cni_bin_dir(names: LabNames) -> str:
    return os.path.join(names.state_dir, "cni", "bin")


def write_cni_files(names: LabNames, topo: Topology, state: LabState) -> None:
    """A CNI_PATH directory (``podnet`` → podnet-cni, Debian's plugins) and each node's conflist."""
    bin_dir = cni_bin_dir(names)
    os.makedirs(bin_dir, exist_ok=True)
    install_podnet_plugin(bin_dir, "podnet")  # the plugin's type is its binary's name
    for name in CHAINED_PLUGINS:
        if os.path.exists(os.path.join(DEBIAN_CNI_DIR, name)):
            os.symlink(os.path.join(DEBIAN_CNI_DIR, name), os.path.join(bin_dir, name))
    state.record_dir(os.path.join(names.state_dir, "cni"))
    for host in topo.nodes:
        conf_dir = names.cni_conf_dir(host.name)
        os.makedirs(conf_dir, exist_ok=True)
        os.makedirs(names.node_log_dir(host.name), exist_ok=True)
        plugins: list[dict] = [
            {
                "type": "podnet",
                "agent_socket": names.agent_socket(host.name),
                "mtu": 0,
                "ipam": {"type": "podnet-ipam"},
                "log_file": os.path.join(names.node_log_dir(host.name), "cni.log"),
            }
        ]
        if os.path.exists(os.path.join(bin_dir, "portmap")):
            plugins.append({"type": "portmap", "snat": True, "capabilities": {"portMappings": True}})
        if os.path.exists(os.path.join(bin_dir, "bandwidth")):
            plugins.append({"type": "bandwidth", "capabilities": {"bandwidth": True}})
        conflist = {"cniVersion": "1.0.0", "name": NETWORK_NAME, "plugins": plugins}
        with open(os.path.join(conf_dir, "10-podnet.conflist"), "w") as f:
            json.dump(conflist, f, indent=2)
        state.record_dir(names.node_dir(host.name))


def zone_records(topo: Topology) -> list[str]:
    """The test zone ``ext`` serves (``NAME=IP[,IP...]/TTL``): names with several addresses and
    short TTLs on ``ext``'s subnet (.3 is ext's own address; .4 is free for a test to add)."""
    assert topo.external is not None
    own = topo.external.ip
    other = own.rsplit(".", 1)[0] + ".4"
    return [
        f"web.example.test={own},{other}/3",
        f"api.example.test={own}/3",
        f"other.example.test={other}/30",
    ]


def _start_dns(
    names: LabNames, topo: Topology, state: LabState, store: ResourceStore, timeout: float = 30.0
) -> None:
    """The test zone's server on ``ext`` (port 53), then the cluster DNS: Service
    ``kube-system/kube-dns`` (the service range's tenth address) and its pod on the first node,
    forwarding other names to ``ext``; returns once the pod is Running (it answers)."""
    import ipaddress

    from podnet.lab.cluster_dns import DNS_NAMESPACE, dns_docs
    from podnet.model import lookup

    if topo.external is None:
        raise LabError("the cluster DNS needs the lab's external host (its upstream)")
    ready = os.path.join(names.log_dir, "dns-upstream.ready")
    records = [arg for r in zone_records(topo) for arg in ("--record", r)]
    command = [sys.executable, "-m", "podnet.lab.dns_server", "zone", "--listen", topo.external.ip, *records]
    spawned = spawn(
        [*command, "--ready-file", ready, f"--lab-prefix={names.prefix}"],
        netns=topo.external.netns,
        lab_prefix=names.prefix,
        log=os.path.join(names.log_dir, "dns-upstream.log"),
    )
    state.record_process(ProcessRecord.of("dns-upstream", spawned))
    config = parse_resource(cluster_resources(topo)[0]).spec
    cluster_ip = str(ipaddress.ip_network(config.service_cluster_ip_range)[10])
    store.apply(
        [parse_resource(d) for d in dns_docs(cluster_ip, topo.nodes[0].name, f"{topo.external.ip}:53")]
    )
    deadline = time.monotonic() + timeout
    while True:
        pod = store.get(lookup("pods"), "coredns", DNS_NAMESPACE)
        if pod.status and pod.status.phase == "Running" and os.path.exists(ready):
            os.unlink(ready)
            return
        if time.monotonic() > deadline:
            raise LabError(f"the cluster DNS did not start in {timeout:g}s", hint=f"see {names.log_dir}")
        time.sleep(0.1)


def _start_agents(names: LabNames, topo: Topology, state: LabState, timeout: float = 30.0) -> None:
    """Hand every node's agent to the kubelet (it starts them and restarts them: a DaemonSet) and
    wait until each answers."""
    from podnet.dataplane.bpf import ensure_bpffs

    # The agents' BPF pins live on a bpffs mounted here, in the root mount namespace: an agent's own
    # /sys (``ip netns exec`` remounts it) dies with it, and pins must outlive an agent restart.
    bpf_dir = os.path.join(names.state_dir, "bpf")
    state.record_mount(bpf_dir)
    ensure_bpffs(bpf_dir)
    agents = {}
    for host in topo.nodes:
        cgroup = create_cgroup(names.node_cgroup(host.name))  # exists already when the fabric made it
        cmd = [
            sys.executable,
            "-m",
            "podnet.agent.main",
            "--node",
            host.name,
            "--etcd-endpoints",
            topo.etcd_endpoints,
            "--socket",
            names.agent_socket(host.name),
            "--metrics",
            # with Prometheus on the fabric, on the node's addresses too (closed to pods all the
            # same: the control plane); else on loopback, where nothing outside the node looks
            f"{'0.0.0.0' if topo.spec.prometheus else '127.0.0.1'}:{prometheus.AGENT_METRICS_PORT}",
            "--bpf-dir",
            bpf_dir,
            "--cgroup",
            cgroup,
            "--state-dir",
            os.path.join(names.state_dir, "agent-cache"),
            "--log-file",
            os.path.join(names.node_log_dir(host.name), "agent.log"),
            names.marker,
        ]
        log = os.path.join(names.node_log_dir(host.name), "agent.stderr")
        os.makedirs(os.path.dirname(log), exist_ok=True)
        spec = {"cmd": cmd, "netns": host.netns, "cgroup": cgroup, "log": log}
        agents[host.name] = supervisor.new_entry(spec)
    state.set_meta(**{supervisor.META_KEY: agents})
    for host in topo.nodes:
        wait_agent(names, host.name, timeout)


def wait_agent(names: LabNames, node: str, timeout: float = 30.0) -> None:
    """Until the node's agent answers STATUS (it is in sync with the datastore)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if api.call(names.agent_socket(node), {"verb": "STATUS"}, timeout=2.0).get("ok"):
                return
        except api.AgentUnavailable:
            pass
        if time.monotonic() > deadline:
            log = os.path.join(names.node_log_dir(node), "agent.stderr")
            kubelet = os.path.join(names.log_dir, "kubelet.log")  # it starts the agents
            raise LabError(
                f"the agent on {node} did not become ready in {timeout:g}s", hint=f"see {log} and {kubelet}"
            )
        time.sleep(0.05)


def stop_process(names: LabNames, name: str, sig: int = signal.SIGTERM) -> ProcessRecord:
    """Stop a recorded lab process (``agent-node-1``, ``etcd``, …) and return its record, so that
    :func:`start_process` can start it again. An agent's supervision by the kubelet is held first
    (it stays down until :func:`start_process`)."""
    state = LabState(names.state_dir)
    record = next((p for p in state.processes() if p.name == name), None)
    if record is None:
        raise LabError(f"no process {name!r} recorded in this lab", hint="podnet lab status")
    if name.startswith("agent-"):
        supervisor.hold(state, name.removeprefix("agent-"))
    signal_process(record.pid, record.start_time, sig, group=True)
    if not wait_gone([(record.pid, record.start_time)], 5.0):
        stop_processes([(record.pid, record.start_time)], timeout=2.0)
    return record


def start_process(names: LabNames, record: ProcessRecord, cmd: list[str] | None = None) -> None:
    """Start a stopped lab process again as recorded (or with ``cmd``), and record the new one.

    A supervised agent is started by the kubelet (its child, so its exits are known) and its hold
    lifted; with no kubelet running, it is started here."""
    state = LabState(names.state_dir)
    node = record.name.removeprefix("agent-")
    if record.name.startswith("agent-") and supervisor.supervised(state, node):
        supervisor.release(state, node, cmd)
        _wait_started(names, state, record, 10.0)
        return
    process = spawn(
        cmd or list(record.cmd),
        netns=record.netns,
        cgroup=record.cgroup,
        lab_prefix=names.prefix,
        log=record.log,
    )
    state.record_process(ProcessRecord.of(record.name, process, **record.meta))
    if record.name.startswith("agent-"):
        supervisor.release(state, node, cmd, start=False)


def _wait_started(names: LabNames, state: LabState, old: ProcessRecord, timeout: float) -> None:
    """Until the kubelet has recorded a new, live process in place of ``old``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rec = next((p for p in state.processes() if p.name == old.name), None)
        if rec is not None and rec.pid != old.pid and proc_alive(rec.pid, rec.start_time):
            return
        time.sleep(0.02)
    raise LabError(
        f"the kubelet did not start {old.name} within {timeout:g}s",
        hint=f"see {os.path.join(names.log_dir, 'kubelet.log')} and podnet lab status",
    )


@contextlib.contextmanager
def etcd_down(names: LabNames) -> Iterator[None]:
    """The datastore out inside the block: every etcd member stopped (one member of three down
    is no outage), all started again afterwards, whatever the block raised."""
    records = [stop_process(names, member.name) for member in etcd_cluster.members(names)]
    try:
        yield
    finally:
        for record in records:
            start_process(names, record)


@contextlib.contextmanager
def held_agent(names: LabNames, node: str) -> Iterator[None]:
    """The kubelet leaves ``node``'s agent alone inside the block (for a scenario that stops or
    changes it by other means than :func:`stop_process`); afterwards it starts it if it is down."""
    state = LabState(names.state_dir)
    supervisor.hold(state, node)
    try:
        yield
    finally:
        supervisor.release(state, node)


def restart_agent(
    names: LabNames,
    node: str,
    sig: int = signal.SIGKILL,
    extra_args: tuple[str, ...] = (),
    timeout: float = 30.0,
) -> float:
    """Kill a node's agent (``kill -9`` by default) and start it again with the same command line
    (plus ``extra_args``: a changed configuration); returns the seconds until it answers STATUS
    (at most ``timeout``)."""
    record = stop_process(names, f"agent-{node}", sig)
    started = time.monotonic()
    start_process(names, record, [*record.cmd, *extra_args] if extra_args else None)
    wait_agent(names, node, timeout)
    return time.monotonic() - started


def _start_kubelet(names: LabNames, endpoint: str, state: LabState) -> None:
    kubelet = spawn(
        [
            sys.executable,
            "-m",
            "podnet.lab.kubelet",
            "--state-dir",
            names.state_dir,
            "--etcd-endpoints",
            endpoint,
            names.marker,
        ],
        lab_prefix=names.prefix,
        log=os.path.join(names.log_dir, "kubelet.log"),
    )
    state.record_process(ProcessRecord.of(supervisor.KUBELET, kubelet))


def up(spec: LabSpec, names: LabNames | None = None) -> LabInfo:
    names = names or lab_names()
    if spec.encapsulation not in SUPPORTED_ENCAPSULATIONS:
        raise LabError(
            f"--encapsulation {spec.encapsulation} is not available yet",
            hint=f"use one of {', '.join(SUPPORTED_ENCAPSULATIONS)} (tunnels arrive with the routing work)",
        )
    if LabState(names.state_dir).exists():
        raise LabError(
            f"a lab with prefix {names.prefix} is already up",
            hint="podnet lab down (or podnet lab clean after a crash)",
        )
    started = time.monotonic()
    topo, state, _ = fabric_up(spec, names)
    try:
        endpoint = etcd_cluster.start(names, topo, state)
        state.set_meta(
            etcd_endpoint=endpoint,
            etcd_cluster_endpoint=topo.etcd_endpoints,
            nodes={h.name: {"netns": h.netns, "ip": h.ip} for h in topo.nodes},
        )
        store = ResourceStore(EtcdDatastore([endpoint]))
        store.apply([parse_resource(doc) for doc in cluster_resources(topo)])
        write_cni_files(names, topo, state)
        _start_kubelet(names, endpoint, state)  # first: it starts the agents
        _start_agents(names, topo, state)
        if spec.dns:
            _start_dns(names, topo, state, store)
        metrics = prometheus.start(names, topo, state) if spec.prometheus else None
    except BaseException:
        down(names.state_dir)
        raise
    return LabInfo(names, topo, endpoint, time.monotonic() - started, metrics)


def teardown(names: LabNames | None = None) -> CleanupReport:
    names = names or lab_names()
    if not LabState(names.state_dir).exists():
        raise LabError(
            f"no lab with prefix {names.prefix} is up",
            hint="podnet lab clean removes leftovers of a crashed lab",
        )
    return down(names.state_dir)


def remove(names: LabNames) -> None:
    """Everything of the lab ``names``, whatever state it is in: what it recorded (teardown),
    then whatever carries its prefix (clean: also what a half-made lab left)."""
    try:
        if LabState(names.state_dir).exists():
            teardown(names)
    finally:
        clean(names)


def agent_pids(names: LabNames) -> dict[str, int]:
    """Node name -> PID of its agent, as the lab recorded them."""
    return {
        p.name.removeprefix("agent-"): p.pid
        for p in LabState(names.state_dir).processes()
        if p.name.startswith("agent-")
    }
