"""Fault scenarios on a running lab, with the traffic witness running (``podnet lab chaos``).

Every scenario runs the same way::

    workload (namespace "chaos": echo servers on node-2 and node-3, clients on node-1 and node-3,
              a ClusterIP over the servers)          — created once, re-used
    witness flows: pod→pod across nodes, and through the ClusterIP (a request every 50 ms each)
    snapshot of podnet's BPF maps; kernel change monitors on every node (routes, FDB, nft, …),
              each of which reported a marker change before the fault starts
    THE FAULT
    settle; a marker change again, which each monitor must report (and be alive); stop them,
    the witness; compare

and returns a report: the witness's longest gap and interrupted flows, every kernel change seen on
each node, the BPF maps that differ, and scenario figures (restart times, agent CPU, …).

Scenarios:

- ``kill-agent``: ``kill -9`` the agent of one node (default: the servers' node-2), start it again.
- ``kill-all-agents``: the same on every node at once.
- ``agent-upgrade``: restart every agent, one by one, with a changed configuration (the same code
  with another ``--refresh-seconds``: what an in-place upgrade exercises).
- ``agent-downgrade-upgrade``: every agent, one by one, stopped (SIGTERM, as a rollout does) and
  started on another version of podnet (``--version REF``, a git commit of this checkout, default
  the last commit of the previous release :data:`PREVIOUS_VERSION`; its ``src`` exported under the
  lab's state dir and put first on ``PYTHONPATH``; a shallow clone fetches that commit from its
  origin), then back to this checkout the same way. No flow interrupted; routes, neighbour and
  FDB entries and BPF maps untouched; the two versions render the policy table and the services
  table differently, so each replaces them (in one transaction each): those nft events are
  reported as ``policy_changes`` and ``services_table_changes``.
- ``etcd-outage``: stop etcd for ``seconds`` (default 10; the issue's figure is 60), then start it;
  reports the agents' CPU use meanwhile.
- ``etcd-blackhole``: etcd black-holed for the agents for ``seconds`` (their packets to it
  dropped inside etcd's namespace; the API side — CLI, kubelet — still reaches it, as in Calico's
  test); meanwhile a NetworkPolicy denying the ``guarded`` pod is applied. Reports that the
  agents kept the last good state (the pod still answered at the end of the outage), their CPU,
  a CNI ADD meanwhile, and how long after etcd came back the policy was enforced (real probes).
- ``kill-agent-mid-policy-sync``: apply a batch of policies (``--policies``, default 300, two rules
  each, all on the ``guarded`` pod); a first round times apply → the node's kernel, then three
  rounds ``kill -9`` the guarded pod's node agent at 0.5, 0.9 and 1.2 times that; report what
  the kernel held at the kill — it must be a state the datastore had (``apply`` writes a batch in
  transactions of 128; each sync is one atomic nft transaction), every policy whole — and when,
  after the restart, it held every rule. The Cilium profile's maps are written entry by entry
  (never allowing more than the old or the new content at any step), so at the kill they hold any
  subset of the batch, each policy's entry whole (found through the node's ipcache).
- ``bird-restart`` (a lab with ``--bgp``): BIRD on one node (default node-2) stops with ``graceful
  restart``; its agent starts it again (``bird -R``); its peers keep its routes meanwhile. Reports
  when BIRD answered again and when every BGP session was up; the routes must never be deleted
  (BIRD re-announcing them is expected, so for this scenario only deletions count).

The etcd member scenarios of a lab with an etcd cluster (``etcd-member-kill``,
``etcd-leader-kill``, ``etcd-member-partition``) live in :mod:`podnet.lab.etcd_chaos`: they churn
pods through IPAM during the fault, which changes node kernels on purpose, so they run the witness
without the kernel monitors; they reuse this module's workload, guarded-pod probe and policy helpers.

The two policy scenarios change podnet's policy table on purpose; for them (and the downgrade)
the events of that table are reported as ``policy_changes``, everything else counts. A kernel
monitor that died, went deaf or reported an error fails every scenario, named: its silence proves
nothing (:mod:`podnet.lab.kernel_watch`).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from podnet.lab import cluster
from podnet.lab.kernel_watch import KernelWatch, bpf_maps
from podnet.lab.naming import LabError, LabNames
from podnet.lab.state import LabState, cpu_seconds
from podnet.lab.witness import Flow, Witness, summarize

NAMESPACE = "chaos"
PORT = 8080
SCENARIOS = (
    "kill-agent",
    "kill-all-agents",
    "agent-upgrade",
    "agent-downgrade-upgrade",
    "etcd-outage",
    "etcd-blackhole",
    "kill-agent-mid-policy-sync",
    "bird-restart",
)
# the agent as it was at the end of the services/bench issues; a full id, so that a shallow clone
# can fetch it from its origin
PREVIOUS_VERSION = "afc4f76e6023f1bf9118017383cf0bf28af68e08"
POLICY_SCENARIOS = ("etcd-blackhole", "kill-agent-mid-policy-sync")
REWRITES_POLICY_TABLE = (*POLICY_SCENARIOS, "agent-downgrade-upgrade")
# the previous release picks a service's backend with a verdict map, this one with a numgen
# cascade: a version change replaces the services table too (one transaction, conntrack keeps
# every established translation: the witness's flows through the Service say whether it held)
REWRITES_SERVICES_TABLE = ("agent-downgrade-upgrade",)
GUARDED = "guarded"
ENFORCE_WITHIN = 5.0  # seconds from etcd's return to a policy written meanwhile being enforced
POLICY_TABLE = "podnet_policy"

FLOW_FIELDS = ("replies", "interrupted", "max_gap_ms", "gaps_over_limit", "errors")
FIGURES = (
    "restart_seconds",
    "version",
    "downgrade_seconds",
    "upgrade_seconds",
    "agents_ran_from",
    "outage_seconds",
    "agent_cpu_percent_during_outage",
    "back_in_sync_seconds",
    "cni_add_during_outage",
    "policy_open_at_end_of_outage",
    "policy_enforced_seconds",
    "batch_to_kernel_seconds",
    "rounds",
    "policy_changes",
    "services_table_changes",
    "bird_back_seconds",
    "sessions_up_seconds",
    "routes_deleted",
)


def workload_docs(nodes: list[str]) -> list[dict]:
    """Servers on the second and third node, clients on the first and last (cross-node flows),
    and a ``guarded`` pod beside the first server that the policy scenarios put policies on."""
    server_nodes = nodes[1:3] or nodes[:1]
    client_nodes = [nodes[0], nodes[-1]] if len(nodes) > 1 else nodes[:1]
    ports = [{"name": "http", "containerPort": PORT}]
    docs: list[dict] = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}]
    for i, node in enumerate(server_nodes, start=1):
        meta = {"name": f"echo-{i}", "namespace": NAMESPACE, "labels": {"app": "echo"}}
        spec = {"nodeName": node, "containers": [{"name": "c", "ports": ports}]}
        docs.append({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec})
    meta = {"name": GUARDED, "namespace": NAMESPACE, "labels": {"app": GUARDED}}
    spec = {"nodeName": server_nodes[0], "containers": [{"name": "c", "ports": ports}]}
    docs.append({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec})
    for i, node in enumerate(dict.fromkeys(client_nodes), start=1):
        meta = {"name": f"client-{i}", "namespace": NAMESPACE}
        spec = {"nodeName": node, "containers": [{"name": "c"}]}
        docs.append({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec})
    spec = {"selector": {"app": "echo"}, "ports": [{"port": 80, "targetPort": "http"}]}
    docs.append(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "echo", "namespace": NAMESPACE},
            "spec": spec,
        }
    )
    return docs


@dataclass
class ChaosLab:
    names: LabNames
    store: Any  # ResourceStore

    @property
    def nodes(self) -> list[str]:
        return sorted(LabState(self.names.state_dir).meta()["nodes"])

    @cached_property
    def profile(self) -> str:
        """The ClusterConfiguration's profile (calico when unset), read once: polling loops ask."""
        from podnet.model import lookup

        try:
            config = self.store.get(lookup("clusterconfigurations"), "default")
        except Exception:  # absent: the default profile
            return "calico"
        return str(config.spec.profile or "calico")

    def ensure_workload(self, timeout: float = 60.0) -> None:
        from podnet.model import lookup, parse_resource

        self.store.apply([parse_resource(d) for d in workload_docs(self.nodes)])
        deadline = time.monotonic() + timeout
        while True:
            pods = self.store.list(lookup("pods"), NAMESPACE)
            if pods and all(p.status and p.status.phase == "Running" for p in pods):
                return
            if time.monotonic() > deadline:
                hint = "podnet get pods -n chaos"
                raise LabError(f"the chaos workload is not Running after {timeout:g}s", hint=hint)
            time.sleep(0.1)

    def flows(self) -> list[Flow]:
        from podnet.model import lookup

        pods = {p.metadata.name: p for p in self.store.list(lookup("pods"), NAMESPACE)}
        vip = self.store.get(lookup("services"), "echo", NAMESPACE).spec.cluster_ip
        out = []
        for client in sorted(n for n in pods if n.startswith("client-")):
            c = pods[client]
            netns = self.names.pod_ns(NAMESPACE, client)
            cgroup = self.names.pod_cgroup(c.spec.node_name, c.metadata.uid)
            for server in sorted(n for n in pods if n.startswith("echo-")):
                s = pods[server]
                if s.spec.node_name != c.spec.node_name:
                    label = f"{client}({c.spec.node_name})→{server}({s.spec.node_name})"
                    out.append(Flow(label, netns, cgroup, s.status.pod_ip, PORT))
            out.append(Flow(f"{client}({c.spec.node_name})→svc/echo", netns, cgroup, vip, 80))
        return out


def _cpu_meter(names: LabNames) -> Callable[[], dict[str, float]]:
    """From now on: the returned function gives each agent's CPU use since, in % of one core."""
    pids = cluster.agent_pids(names)
    before = {node: cpu_seconds(pid) for node, pid in pids.items()}
    started = time.monotonic()

    def percent() -> dict[str, float]:
        elapsed = time.monotonic() - started
        return {
            node: round((cpu_seconds(pid) - before[node]) / elapsed * 100, 1) for node, pid in pids.items()
        }

    return percent


def _kill_agents(lab: ChaosLab, nodes: list[str], extra_args: tuple[str, ...] = ()) -> dict[str, Any]:
    seconds = {node: cluster.restart_agent(lab.names, node, signal.SIGKILL, extra_args) for node in nodes}
    return {"restart_seconds": {node: round(s, 2) for node, s in seconds.items()}}


class Sandbox:
    """A pod sandbox wired by hand through the node's real CNI chain (as kubelet would)."""

    def __init__(self, names: LabNames, node: str) -> None:
        import uuid

        from podnet.dataplane.netns import netns_path
        from podnet.lab.cni_runtime import CNIRuntime
        from podnet.lab.netns import create_netns

        meta = LabState(names.state_dir).meta()["nodes"][node]
        self.runtime = CNIRuntime(
            names.cni_conf_dir(node),
            [cluster.cni_bin_dir(names)],
            os.path.join(names.node_dir(node), "cni", "chaos-cache"),
            netns_exec=meta["netns"],
        )
        self.names, self.id = names, uuid.uuid4().hex
        self.netns = names.pod_ns(NAMESPACE, f"sandbox-{self.id[:8]}")
        LabState(names.state_dir).record_netns(self.netns, "pod")
        create_netns(self.netns)
        self.path = netns_path(self.netns)
        self.args = {"K8S_POD_NAMESPACE": NAMESPACE, "K8S_POD_NAME": f"sandbox-{self.id[:8]}"}

    def add(self) -> tuple[float, int, str]:
        """Seconds, CNI error code (0: success) and message of one ADD."""
        from podnet.lab.cni_runtime import CNIError

        started = time.monotonic()
        try:
            self.runtime.add(self.id, self.path, "eth0", self.args)
            return time.monotonic() - started, 0, ""
        except CNIError as exc:
            return time.monotonic() - started, exc.code, exc.msg

    def remove(self) -> None:
        from podnet.lab.netns import delete_netns

        try:
            self.runtime.delete(self.id, self.path, "eth0", self.args)
        finally:
            delete_netns(self.netns)
            LabState(self.names.state_dir).forget_netns(self.netns)


def agent_source(state_dir: str, ref: str, checkout: str | None = None) -> str:
    """The ``src`` directory of podnet at git ``ref`` (exported once under ``state_dir``): what
    ``PYTHONPATH`` needs to run that version's agent. ``ref`` comes from the git history of
    ``checkout`` (default: this one); a commit a shallow clone lacks is fetched by its full id from
    the clone's ``origin``, into a repository of its own (the checkout is left as it is)."""
    import re
    import subprocess

    import podnet

    repo = checkout or os.path.dirname(podnet.__file__)

    def git(*args: str, where: str = repo) -> str:
        proc = subprocess.run(["git", "-C", where, *args], capture_output=True, text=True)
        if proc.returncode != 0:
            raise LabError(
                f"git {' '.join(args)}: {proc.stderr.strip()}",
                hint="agent versions come from this checkout's git history (or, a shallow clone, its origin)",
            )
        return proc.stdout.strip()

    source = git("rev-parse", "--show-toplevel")
    try:
        commit = git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    except LabError:
        if not re.fullmatch(r"[0-9a-f]{40}", ref):
            raise LabError(
                f"{ref} is not a commit of this checkout",
                hint="a shallow clone lacks older commits: name a full commit id to fetch it from origin",
            ) from None
        source = os.path.join(state_dir, "versions", "fetched.git")
        if not os.path.isdir(source):
            git("init", "--quiet", "--bare", source)
        git("fetch", "--quiet", "--depth", "1", git("remote", "get-url", "origin"), ref, where=source)
        commit = ref
    dest = os.path.join(state_dir, "versions", commit[:12])
    if not os.path.isdir(os.path.join(dest, "src", "podnet")):
        os.makedirs(dest, exist_ok=True)
        archive = subprocess.run(
            ["git", "-C", source, "archive", commit, "--", "src"], capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", dest], input=archive, check=True)
    return os.path.join(dest, "src")


def _switch_agents(lab: ChaosLab, source: str | None) -> dict[str, float]:
    """Every agent, one by one: SIGTERM, then started on ``source`` (None: this checkout)."""
    seconds = {}
    for node in lab.nodes:
        record = cluster.stop_process(lab.names, f"agent-{node}", signal.SIGTERM)
        started = time.monotonic()
        cmd = list(record.cmd[2:] if record.cmd[0] == "env" else record.cmd)
        cluster.start_process(lab.names, record, ["env", f"PYTHONPATH={source}", *cmd] if source else cmd)
        cluster.wait_agent(lab.names, node)
        seconds[node] = round(time.monotonic() - started, 2)
    return seconds


def _downgrade_upgrade(lab: ChaosLab, ref: str, dwell: float = 3.0) -> dict[str, Any]:
    source = agent_source(lab.names.state_dir, ref)
    down = _switch_agents(lab, source)
    running = {node: _pythonpath(pid) for node, pid in cluster.agent_pids(lab.names).items()}
    time.sleep(dwell)  # the other version syncs, and rewrites what it renders differently
    up = _switch_agents(lab, None)
    after = {node: _pythonpath(pid) for node, pid in cluster.agent_pids(lab.names).items()}
    return {
        "version": ref,
        "downgrade_seconds": down,
        "upgrade_seconds": up,
        "agents_ran_from": {"downgraded": running, "upgraded": after},
    }


def _pythonpath(pid: int) -> str:
    """Where a running agent imports podnet from: its PYTHONPATH, or "" (this checkout)."""
    with open(f"/proc/{pid}/environ", "rb") as f:
        env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
    return env.get(b"PYTHONPATH", b"").decode()


def _etcd_outage(lab: ChaosLab, seconds: float) -> dict[str, Any]:
    agent_cpu = _cpu_meter(lab.names)
    sandbox = Sandbox(lab.names, lab.nodes[0])
    try:
        with cluster.etcd_down(lab.names):
            started = time.monotonic()
            time.sleep(min(1.0, seconds / 2))
            add_seconds, add_code, add_message = sandbox.add()  # kubelet creating a pod meanwhile
            time.sleep(max(0.0, seconds - (time.monotonic() - started)))
            outage = time.monotonic() - started
            cpu = agent_cpu()
    finally:
        for node in lab.nodes:
            cluster.wait_agent(lab.names, node, timeout=60.0)
        sandbox.remove()
    return {
        "outage_seconds": round(outage, 1),
        "agent_cpu_percent_during_outage": cpu,
        "back_in_sync_seconds": round(time.monotonic() - started - outage, 2),
        "cni_add_during_outage": {
            "seconds": round(add_seconds, 2),
            "code": add_code,
            "message": add_message[:200],
        },
    }


def _bird_restart(lab: ChaosLab, node: str, timeout: float = 60.0) -> dict[str, Any]:
    from podnet.dataplane.bird import BirdControl, BirdError, show_protocols

    sock = os.path.join(lab.names.node_dir(node), "bird.ctl")
    if not os.path.exists(sock):
        raise LabError(f"no BIRD on {node}", hint="bird-restart needs a BGP lab: podnet lab up --bgp")
    started = time.monotonic()
    BirdControl(sock).command("graceful restart")
    time.sleep(0.2)
    back = None
    while True:
        now = time.monotonic() - started
        try:
            sessions = [p for p in show_protocols(sock) if p.get("proto") == "BGP"]
        except (BirdError, OSError):
            sessions = []
        else:
            back = back if back is not None else now
        if sessions and all(p.get("state") == "up" for p in sessions):
            return {"bird_back_seconds": round(back or now, 2), "sessions_up_seconds": round(now, 2)}
        if now > timeout:
            raise LabError(f"BIRD on {node} did not bring its sessions up within {timeout:g}s")
        time.sleep(0.1)


def _guarded_probe(lab: ChaosLab) -> Callable[[], bool]:
    """A probe from ``client-1`` (another node) to the guarded pod: True if it answered."""
    from podnet.lab.probe import probe
    from podnet.model import lookup

    ip = lab.store.get(lookup("pods"), GUARDED, NAMESPACE).status.pod_ip
    netns = lab.names.pod_ns(NAMESPACE, "client-1")
    return lambda: probe(netns, ip, PORT, "TCP", timeout=0.3).ok


def _wait(condition: Callable[[], bool], timeout: float, interval: float = 0.05) -> float | None:
    """Seconds until ``condition()`` held (polled), or None after ``timeout``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            return None
        time.sleep(interval)
    return time.monotonic() - started


def _policy_doc(name: str, ingress: list[dict]) -> dict:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "podSelector": {"matchLabels": {"app": GUARDED}},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }


def _delete_policies(lab: ChaosLab, names: list[str]) -> None:
    """Delete NetworkPolicies in a few transactions (one event burst, as ``kubectl delete -f``)."""
    from podnet.datastore.base import Write
    from podnet.datastore.resources import MAX_TXN_OPS
    from podnet.model import lookup

    keys = [lab.store.key(lookup("networkpolicies"), n, NAMESPACE) for n in names]
    for start in range(0, len(keys), MAX_TXN_OPS):
        lab.store.store.commit([Write(k, None) for k in keys[start : start + MAX_TXN_OPS]])


def _blackhole(names: LabNames, on: bool) -> None:
    """Drop every packet to and from etcd's client port except on loopback (the CLI's proxy)."""
    from urllib.parse import urlsplit

    from podnet.dataplane.nft import run_nft

    port = urlsplit(LabState(names.state_dir).meta()["etcd_cluster_endpoint"]).port or 2379
    table = "table inet podnet_chaos_blackhole"
    script = (
        (
            f"{table} {{\n chain input {{ type filter hook input priority -10; policy accept;\n"
            f'  iifname != "lo" tcp dport {port} drop\n }}\n'
            f" chain output {{ type filter hook output priority -10; policy accept;\n"
            f'  oifname != "lo" tcp sport {port} drop\n }}\n}}\n'
        )
        if on
        else ""
    )
    run_nft(f"{table}\ndelete {table}\n{script}", names.etcd_ns, "black-hole")


def _etcd_blackhole(lab: ChaosLab, seconds: float) -> dict[str, Any]:
    from podnet.model import parse_resource

    answers = _guarded_probe(lab)
    if _wait(answers, 10.0) is None:
        raise LabError("the guarded pod does not answer before the fault", hint="podnet get netpol -n chaos")
    agent_cpu = _cpu_meter(lab.names)
    sandbox = Sandbox(lab.names, lab.nodes[0])
    _blackhole(lab.names, True)
    started = time.monotonic()
    try:
        time.sleep(min(1.0, seconds / 2))
        lab.store.apply([parse_resource(_policy_doc("deny-guarded", []))])  # the API server is up
        add_seconds, add_code, add_message = sandbox.add()
        time.sleep(max(0.0, seconds - (time.monotonic() - started)))
        still_open = answers()  # the agents cannot know: the last good state is in force
        outage = time.monotonic() - started
        cpu = agent_cpu()
    finally:
        _blackhole(lab.names, False)
    enforced = _wait(lambda: not answers(), 60.0)
    _delete_policies(lab, ["deny-guarded"])
    reopened = _wait(answers, 30.0)
    sandbox.remove()
    if reopened is None:
        raise LabError("the guarded pod stayed closed after its policy was deleted")
    return {
        "outage_seconds": round(outage, 1),
        "agent_cpu_percent_during_outage": cpu,
        "cni_add_during_outage": {
            "seconds": round(add_seconds, 2),
            "code": add_code,
            "message": add_message[:200],
        },
        "policy_open_at_end_of_outage": still_open,
        "policy_enforced_seconds": None if enforced is None else round(enforced, 2),
    }


def _kernel_policy_rules(lab: ChaosLab, node: str, prefix: str, policies: int = 0) -> dict[str, int]:
    """Rules in the node's policy table per policy named ``prefix…`` (from the rules' provenance);
    the Cilium profile: its guarded endpoint's policy-map entries per policy (policy ``k`` is the
    one allowing ``_sync_cidr(k)`` on ``8000 + k % 1000``, found through the node's ipcache)."""
    from collections import Counter

    from podnet.dataplane.nft import list_table

    if lab.profile == "cilium":
        return _map_policy_entries(lab, node, prefix, policies)

    listing = list_table("inet", POLICY_TABLE, lab.names.node_ns(node)) or {"nftables": []}
    origin = f"knp:{NAMESPACE}/{prefix}"
    comments = (item["rule"].get("comment", "") for item in listing["nftables"] if "rule" in item)
    return Counter(c.split(":")[1].split("/", 1)[1] for c in comments if c.startswith(origin))


def _sync_cidr(k: int) -> str:
    """The address block policy ``k`` of a mid-sync batch allows (a /32 of its own)."""
    return f"172.16.{k // 250}.{k % 250 + 1}/32"


def _map_policy_entries(lab: ChaosLab, node: str, prefix: str, policies: int) -> dict[str, int]:
    """The Cilium profile's kernel state of a mid-sync batch: per policy ``prefix<k>``, 1 when the
    guarded endpoint's map allows its CIDR's identity on its port, else nothing."""
    import os

    from podnet.calc.policymap import INGRESS
    from podnet.dataplane.lxc import pinned_endpoints, pinned_ipcache, pinned_policy
    from podnet.model import lookup

    pins = os.path.join(lab.names.state_dir, "bpf", node, "lxc")
    guarded = lab.store.get(lookup("pods"), GUARDED, NAMESPACE)
    ip = guarded.status.pod_ip if guarded and guarded.status else None
    endpoint = next((e.endpoint for e in pinned_endpoints(pins).values() if e.ipv4 == ip), None)
    ipcache = pinned_ipcache(pins)
    entries = {
        (e.key.identity, e.key.port)
        for e in pinned_policy(pins)
        if e.endpoint == endpoint and e.key.direction == INGRESS and e.key.protocol == 6 and not e.deny
    }
    out = {}
    for k in range(policies):
        identity = ipcache.get(_sync_cidr(k), (None, 0))[0]
        if identity is not None and (identity, 8000 + k % 1000) in entries:
            out[f"{prefix}{k}"] = 1
    return out


def _whole_states(policies: int) -> set[int]:
    """How many of a batch's policies the datastore held at some revision (it is written in
    transactions of MAX_TXN_OPS): the kernel may hold only one of these, each policy whole."""
    from podnet.datastore.resources import MAX_TXN_OPS

    return {min(n, policies) for n in range(0, policies + MAX_TXN_OPS, MAX_TXN_OPS)}


def _kill_mid_policy_sync(
    lab: ChaosLab, node: str | None, policies: int, fractions: tuple[float, ...] = (0.5, 0.9, 1.2)
) -> dict[str, Any]:
    """A calibration round measures how long a batch takes from ``apply`` to the node's kernel;
    then one round per fraction kills the agent that far into that time (inside the sync)."""
    from podnet.model import lookup, parse_resource

    node = node or lab.store.get(lookup("pods"), GUARDED, NAMESPACE).spec.node_name
    per_policy = 1 if lab.profile == "cilium" else 2  # map entries (the podSelector matches no pod) or rules
    expected = per_policy * policies
    rounds: list[dict[str, Any]] = []
    sync_seconds = 0.0
    for i, fraction in enumerate((None, *fractions)):
        prefix = f"sync-{i}-"
        names = [f"{prefix}{k}" for k in range(policies)]
        docs = [
            _policy_doc(
                n,
                [
                    {
                        "from": [{"ipBlock": {"cidr": _sync_cidr(k)}}],
                        "ports": [{"port": 8000 + k % 1000}],
                    },
                    {"from": [{"podSelector": {"matchLabels": {"policy": n}}}]},
                ],
            )
            for k, n in enumerate(names)
        ]
        started = time.monotonic()
        lab.store.apply([parse_resource(d) for d in docs])
        complete = lambda p=prefix: sum(_kernel_policy_rules(lab, node, p, policies).values()) == expected  # noqa: E731
        if fraction is None:
            took = _wait(complete, 60.0, 0.02)
            if took is None:
                raise LabError(f"{policies} policies did not reach {node}'s kernel within 60 s")
            sync_seconds = time.monotonic() - started
        else:
            time.sleep(max(0.0, started + fraction * sync_seconds - time.monotonic()))
            record = cluster.stop_process(lab.names, f"agent-{node}", signal.SIGKILL)
            killed_at = time.monotonic() - started
            time.sleep(0.2)  # an nft child of the killed agent finishes (or not) its transaction
            held = _kernel_policy_rules(lab, node, prefix, policies)
            whole = all(n == per_policy for n in held.values())
            # nftables: one transaction, so a prefix of the batch; the maps are written entry by
            # entry, so any subset (each entry whole, never more allowed than old or new)
            whole = whole and (lab.profile == "cilium" or set(held) == set(names[: len(held)]))
            restarted = time.monotonic()
            cluster.start_process(lab.names, record)
            cluster.wait_agent(lab.names, node)
            took = _wait(complete, 60.0, 0.1)
            rounds.append(
                {
                    "killed_after_seconds": round(killed_at, 3),
                    "policies_in_kernel_at_kill": len(held),
                    # nftables: a state the datastore had (whole transactions); the maps: any
                    # subset of the batch, each policy's entry whole
                    "whole_datastore_state_at_kill": whole
                    and (lab.profile == "cilium" or len(held) in _whole_states(policies)),
                    "rules_expected": expected,
                    "complete_after_restart_seconds": None
                    if took is None
                    else round(time.monotonic() - restarted, 2),
                }
            )
        _delete_policies(lab, names)
        if _wait(lambda p=prefix: not _kernel_policy_rules(lab, node, p, policies), 60.0, 0.1) is None:
            raise LabError(f"the {prefix}* policies stayed in {node}'s kernel after their deletion")
    return {"batch_to_kernel_seconds": round(sync_seconds, 3), "rounds": rounds}


def run_scenario(
    lab: ChaosLab,
    scenario: str,
    node: str | None = None,
    seconds: float = 10.0,
    settle: float = 1.5,
    policies: int = 300,
    version: str = PREVIOUS_VERSION,
    before_fault: Callable[[KernelWatch], None] | None = None,
) -> dict[str, Any]:
    """Run one scenario with the witness and the kernel monitors (see the module docstring).
    ``before_fault`` is called with the started watch (tests break a monitor there)."""
    nodes = lab.nodes
    faults: dict[str, Callable[[], dict[str, Any]]] = {
        "kill-agent": lambda: _kill_agents(lab, [node or nodes[min(1, len(nodes) - 1)]]),
        "kill-all-agents": lambda: _kill_agents(lab, nodes),
        "agent-upgrade": lambda: _kill_agents(lab, nodes, ("--refresh-seconds", "45")),
        "agent-downgrade-upgrade": lambda: _downgrade_upgrade(lab, version),
        "etcd-outage": lambda: _etcd_outage(lab, seconds),
        "etcd-blackhole": lambda: _etcd_blackhole(lab, seconds),
        "kill-agent-mid-policy-sync": lambda: _kill_mid_policy_sync(lab, node, policies),
        "bird-restart": lambda: _bird_restart(lab, node or nodes[min(1, len(nodes) - 1)]),
    }
    if scenario not in faults:
        raise LabError(f"unknown scenario {scenario!r}", hint=", ".join(SCENARIOS))
    lab.ensure_workload()
    witness = Witness(os.path.join(lab.names.state_dir, "witness", scenario), lab.names.prefix)
    witness.start(lab.flows())
    try:
        witness.settle(1.0)
        bpf_dir = os.path.join(lab.names.state_dir, "bpf")
        maps_before = bpf_maps(bpf_dir)
        watch = KernelWatch([lab.names.node_ns(n) for n in nodes]).start()
        try:
            if before_fault is not None:
                before_fault(watch)
            figures = faults[scenario]()
            time.sleep(settle)  # late changes of the fault's aftermath are seen too
            watched = watch.stop()
        finally:
            watch.close()
        maps_after = bpf_maps(bpf_dir)
    finally:
        flows = witness.stop()
    events = watched.events
    changed = sorted(k for k in set(maps_before) | set(maps_after) if maps_before.get(k) != maps_after.get(k))
    if scenario in REWRITES_POLICY_TABLE:  # the policy table changes on purpose, nothing else may
        figures["policy_changes"] = sum(1 for lines in events.values() for line in lines if _policy(line))
        events = {ns: [line for line in lines if not _policy(line)] for ns, lines in events.items()}
        # the Cilium profile's policy lives in maps, not in nftables: they change on purpose too
        # (policy entries, CIDR identities, enforcement flags), and what the rounds saw there counts
        policy_maps = [
            k for k in changed if k.rsplit("/", 1)[-1] in ("pn_policy", "pn_ipcache", "pn_endpoints")
        ]
        changed = [k for k in changed if k not in policy_maps]
        figures["policy_changes"] += len(policy_maps) + sum(
            r.get("policies_in_kernel_at_kill", 0)
            for r in figures.get("rounds", [])
            if lab.profile == "cilium"
        )
    if scenario in REWRITES_SERVICES_TABLE:  # the versions render the services table differently too
        figures["services_table_changes"] = sum(
            1 for lines in events.values() for line in lines if _services(line)
        )
        events = {ns: [line for line in lines if not _services(line)] for ns, lines in events.items()}
    if scenario == "bird-restart":  # re-announced routes are expected; deleted ones are not
        figures["routes_deleted"] = sum(
            1 for lines in events.values() for line in lines if line.startswith("route: Deleted")
        )
    return {
        "scenario": scenario,
        "witness": summarize(flows),
        "flows": {label: {k: r.get(k) for k in FLOW_FIELDS} for label, r in flows.items()},
        "kernel_changes": {ns.removeprefix(lab.names.prefix): lines for ns, lines in events.items()},
        "bpf_maps_changed": changed,
        "bpf_maps_checked": len(maps_before),
        "kernel_monitors": {
            "monitors": watched.monitors,
            "ready_seconds": watched.ready_seconds,
            "closing_control_seconds": watched.closing_seconds,
            "stderr": watched.stderr,
        },
        "monitor_failures": watched.failures,
        **figures,
    }


def _policy(event: str) -> bool:
    """Is this kernel event about podnet's policy table?"""
    return event.startswith("nft:") and POLICY_TABLE in event.split()


def _services(event: str) -> bool:
    """Is this kernel event about podnet's services table?"""
    from podnet.dataplane.services_nft import TABLE

    return event.startswith("nft:") and TABLE in event.split()


def problems(report: dict[str, Any]) -> list[str]:
    """What in a report breaks the scenario's promise (empty: it held) — the CLI's exit status."""
    out = [f"kernel monitor: {failure}" for failure in report["monitor_failures"]]
    w = report["witness"]
    if w["interrupted_flows"]:
        out.append(f"{w['interrupted_flows']} flow(s) interrupted")
    if report["scenario"] == "bird-restart":  # BIRD re-announces its routes: only deletions count
        if report.get("routes_deleted", 0):
            out.append(f"{report['routes_deleted']} route(s) deleted")
    elif any(report["kernel_changes"].values()):
        out.append("podnet's kernel state changed")
    if report["bpf_maps_changed"]:
        out.append(f"BPF maps changed: {', '.join(report['bpf_maps_changed'])}")
    if report["scenario"] == "etcd-blackhole":
        if not report["policy_open_at_end_of_outage"]:
            out.append("the agents dropped their last good state during the outage")
        enforced = report["policy_enforced_seconds"]
        if enforced is None or enforced > ENFORCE_WITHIN:
            out.append(
                f"the policy written during the outage was enforced after {enforced} s "
                f"(promise: {ENFORCE_WITHIN:g} s)"
            )
    for r in report.get("rounds", []):
        if not r["whole_datastore_state_at_kill"]:
            out.append(f"the kernel held a state the datastore never had at the kill: {r}")
        if r["complete_after_restart_seconds"] is None:
            out.append(f"the ruleset was not complete after the restart: {r}")
    return out


def render(report: dict[str, Any]) -> str:
    w = report["witness"]
    lines = [
        f"scenario {report['scenario']}: {w['flows']} flows, {w['replies']} replies, "
        f"longest gap {w['max_gap_ms']:.0f} ms, interrupted flows {w['interrupted_flows']}"
    ]
    for label, flow in report["flows"].items():
        lines.append(
            f"  {label:38} replies {flow['replies']:5}  longest gap {flow['max_gap_ms']:7.1f} ms  "
            f"interrupted {flow['interrupted']}"
        )
    mon = report["kernel_monitors"]
    lines.append(
        f"kernel monitors: {mon['monitors']}, each saw a marker change before the fault "
        f"({mon['ready_seconds']:.2f} s) and after it ({mon['closing_control_seconds']:.2f} s)"
        if not report["monitor_failures"]
        else "kernel monitors FAILED (their silence proves nothing):"
        + "".join(f"\n  {f}" for f in report["monitor_failures"])
    )
    changes = sum(len(v) for v in report["kernel_changes"].values())
    shown = [f"\n  {node}: {line}" for node, v in report["kernel_changes"].items() for line in v[:10]]
    lines.append(f"kernel changes to podnet's state: {changes}" + "".join(shown))
    lines.append(
        f"BPF maps changed: {len(report['bpf_maps_changed'])} of {report['bpf_maps_checked']}"
        + "".join(f"\n  {m}" for m in report["bpf_maps_changed"])
    )
    for key in FIGURES:
        if key in report:
            lines.append(f"{key.replace('_', ' ')}: {report[key]}")
    return "\n".join(lines)
