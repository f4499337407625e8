"""The lab kubelet: schedules Pods onto lab nodes and runs them the way kubelet + a runtime do.

For each Pod (``spec.nodeName``, else the node with the fewest pods):

    netns pn-p-<pod> + cgroup <node>/<pod uid>  →  CNI ADD through the node's conflist (podnet →
    portmap → bandwidth), plugins run inside the node's netns  →  podserver for the declared
    containerPorts (joins the pod's cgroup first, then enters its netns)  →  Pod status
    (Running, podIP, hostIP; SCTP ports noted in the status message)

It also runs each node's agent, as a DaemonSet's pod: started, and restarted with back-off when it
exits (:mod:`podnet.lab.supervisor`, a thread of its own). A failed ADD is followed by DEL (as
kubelet does) and retried with back-off. Deleting the Pod:
stop its processes, CNI DEL, remove the netns and the cgroup. What runs is recorded in the lab
state (``meta.pods``), so a restarted kubelet adopts its pods instead of wiring them twice.
One process for all nodes; pods are started by a small pool of workers, one operation at a time
per pod.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from podnet.agent.log import kv
from podnet.agent.log import setup as setup_logging
from podnet.dataplane.netns import netns_path
from podnet.datastore.etcd import EtcdDatastore
from podnet.datastore.resources import ResourceStore
from podnet.datastore.sync import PrefixSync, Snapshot
from podnet.errors import ConflictError, NotFoundError
from podnet.lab.cleanup import NETNS_ETC
from podnet.lab.cluster import cni_bin_dir
from podnet.lab.cluster_dns import DNS_IMAGE, DNS_NAMESPACE, DNS_SERVICE, resolv_conf
from podnet.lab.naming import LabNames
from podnet.lab.netns import create_cgroup, create_netns, delete_netns, remove_cgroup, spawn
from podnet.lab.podserver import podserver_command
from podnet.lab.state import LabState, ProcessRecord
from podnet.lab.supervisor import AgentSupervisor
from podnet.model import Pod, lookup, parse_resource

log = logging.getLogger("podnet.lab.kubelet")
IFNAME = "eth0"


@dataclass
class RunningPod:
    key: str  # namespace/name
    uid: str
    node: str
    netns: str | None  # None for hostNetwork pods
    container_id: str
    cgroup: str
    ip: str = ""
    server_pid: int = 0
    server_start: int = 0
    warnings: list[str] = field(default_factory=list)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Kubelet:
    def __init__(self, names: LabNames, resources: ResourceStore, workers: int = 8) -> None:
        self.names = names
        self.resources = resources
        self.state = LabState(names.state_dir)
        meta = self.state.meta()
        self.nodes: dict[str, dict] = meta["nodes"]  # name -> {"netns", "ip"}
        self.running: dict[str, RunningPod] = {
            k: RunningPod(**v) for k, v in (meta.get("pods") or {}).items()
        }
        self.desired: dict[str, Pod] = {}
        self.busy: set[str] = set()
        self.scheduled: dict[str, str] = {}  # pod -> node chosen, until the watch shows the patch
        self.failures: dict[str, tuple[int, float]] = {}  # key -> (attempts, retry at)
        self.lock = threading.Lock()
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="pod")
        self.wake = threading.Event()
        self.stop = threading.Event()
        self._runtimes: dict[str, object] = {}

    # -- the CNI runtime of a node --------------------------------------------------------------
    def runtime(self, node: str):
        from podnet.lab.cni_runtime import CNIRuntime

        if node not in self._runtimes:
            self._runtimes[node] = CNIRuntime(
                self.names.cni_conf_dir(node),
                [cni_bin_dir(self.names)],
                os.path.join(self.names.node_dir(node), "cni", "cache"),
                netns_exec=["ip", "netns", "exec", self.nodes[node]["netns"]],
            )
        return self._runtimes[node]

    # -- watching -------------------------------------------------------------------------------
    def watch(self) -> None:
        prefix = self.resources.layout.resource_type_prefix(lookup("pods").key_name)
        sync = PrefixSync(
            self.resources.store,
            prefix,
            on_error=lambda e: kv(log, logging.WARNING, "datastore", error=str(e)),
        )
        threading.Thread(target=lambda: (self.stop.wait(), sync.close()), daemon=True).start()
        import json

        for item in sync:
            with self.lock:
                if isinstance(item, Snapshot):
                    self.desired = {}
                    for kv_ in item.items:
                        pod = parse_resource(json.loads(kv_.value))
                        self.desired[f"{pod.metadata.namespace}/{pod.metadata.name}"] = pod
                else:
                    _, namespace, name = self.resources.layout.parse_resource(item.key)
                    key = f"{namespace}/{name}"
                    if item.value is None:
                        self.desired.pop(key, None)
                    else:
                        self.desired[key] = parse_resource(json.loads(item.value))
            self.wake.set()

    # -- reconciling ------------------------------------------------------------------------------
    def reconcile_forever(self) -> None:
        while not self.stop.is_set():
            self.wake.wait(1.0)
            self.wake.clear()
            self.reconcile()

    def reconcile(self) -> None:
        now = time.monotonic()
        with self.lock:
            for key, pod in self.desired.items():
                if key in self.busy:
                    continue
                running = self.running.get(key)
                if running and running.uid != pod.metadata.uid:
                    self._submit(key, self.stop_pod, running)
                elif not running:
                    if not pod.spec.node_name:
                        self._submit(key, self.schedule, pod)
                    elif pod.spec.node_name in self.nodes:
                        _attempts, retry_at = self.failures.get(key, (0, 0.0))
                        if now >= retry_at:
                            self._submit(key, self.start_pod, pod)
            for key, running in list(self.running.items()):
                if key not in self.desired and key not in self.busy:
                    self._submit(key, self.stop_pod, running)

    def _submit(self, key: str, fn, arg) -> None:
        self.busy.add(key)

        def run() -> None:
            try:
                fn(arg)
            except Exception as exc:
                kv(log, logging.ERROR, "pod operation failed", pod=key, op=fn.__name__, error=str(exc))
            finally:
                with self.lock:
                    self.busy.discard(key)
                self.wake.set()

        self.pool.submit(run)

    # -- operations -------------------------------------------------------------------------------
    def schedule(self, pod: Pod) -> None:
        """The node with the fewest pods, counting decisions whose patch the watch has not yet
        brought back (pods applied together are scheduled concurrently)."""
        key = f"{pod.metadata.namespace}/{pod.metadata.name}"
        with self.lock:
            self.scheduled = {
                k: n
                for k, n in self.scheduled.items()
                if k in self.desired and not self.desired[k].spec.node_name
            }
            load = {n: 0 for n in self.nodes}
            for other_key, other in self.desired.items():
                node_name = other.spec.node_name or self.scheduled.get(other_key)
                if node_name in load and other_key != key:
                    load[node_name] += 1
            node = min(sorted(load), key=lambda n: load[n])
            self.scheduled[key] = node
        with contextlib.suppress(NotFoundError, ConflictError):
            self.resources.patch(
                lookup("pods"), pod.metadata.name, {"spec": {"nodeName": node}}, pod.metadata.namespace
            )
            kv(log, logging.INFO, "scheduled", pod=f"{pod.metadata.namespace}/{pod.metadata.name}", node=node)

    def start_pod(self, pod: Pod) -> None:
        key = f"{pod.metadata.namespace}/{pod.metadata.name}"
        node = pod.spec.node_name
        started = time.monotonic()
        rp = RunningPod(
            key,
            pod.metadata.uid or "",
            node,
            None,
            uuid.uuid4().hex,
            self.names.pod_cgroup(node, pod.metadata.uid or uuid.uuid4().hex),
        )
        try:
            create_cgroup(rp.cgroup)
            if pod.spec.host_network:
                rp.ip = self.nodes[node]["ip"]
            else:
                rp.netns = self.names.pod_ns(pod.metadata.namespace, pod.metadata.name)
                create_netns(rp.netns)
                self._remember(rp)  # recorded before ADD: a crash now still gets cleaned up
                result = self.runtime(node).add(
                    rp.container_id,
                    netns_path(rp.netns),
                    IFNAME,
                    self._cni_args(pod, rp),
                    self._capabilities(pod),
                )
                rp.ip = result["ips"][0]["address"].split("/")[0]
                self._write_resolv_conf(pod, rp)
            self._start_server(pod, rp)
            self._remember(rp)
            self._set_status(pod, "Running", rp)
            self.failures.pop(key, None)
            kv(
                log,
                logging.INFO,
                "pod running",
                pod=key,
                node=node,
                ip=rp.ip,
                ms=round((time.monotonic() - started) * 1e3, 1),
            )
        except Exception as exc:
            attempts = self.failures.get(key, (0, 0.0))[0] + 1
            self.failures[key] = (attempts, time.monotonic() + min(0.5 * 2**attempts, 30.0))
            kv(log, logging.WARNING, "pod start failed", pod=key, attempt=attempts, error=str(exc))
            self._teardown(rp)
            with contextlib.suppress(Exception):
                self._set_status(pod, "Pending", rp, message=f"network setup failed: {exc}")

    def stop_pod(self, rp: RunningPod) -> None:
        self._teardown(rp)
        kv(log, logging.INFO, "pod stopped", pod=rp.key)

    def _teardown(self, rp: RunningPod) -> None:
        if rp.server_pid:
            from podnet.lab.netns import stop_processes

            stop_processes([(rp.server_pid, rp.server_start)], timeout=2.0)
            self.state.forget_process(f"pod-{rp.key}")
        if rp.netns:
            pod_ns, pod_name = rp.key.split("/", 1)
            try:
                self.runtime(rp.node).delete(
                    rp.container_id,
                    netns_path(rp.netns),
                    IFNAME,
                    {
                        "K8S_POD_NAMESPACE": pod_ns,
                        "K8S_POD_NAME": pod_name,
                        "K8S_POD_INFRA_CONTAINER_ID": rp.container_id,
                    },
                )
            except Exception as exc:
                kv(log, logging.WARNING, "CNI DEL failed", pod=rp.key, error=str(exc))
            delete_netns(rp.netns)
            shutil.rmtree(os.path.join(NETNS_ETC, rp.netns), ignore_errors=True)
        with contextlib.suppress(Exception):
            remove_cgroup(rp.cgroup)
        self._forget(rp)

    def _cni_args(self, pod: Pod, rp: RunningPod) -> dict:
        return {
            "K8S_POD_NAMESPACE": pod.metadata.namespace,
            "K8S_POD_NAME": pod.metadata.name,
            "K8S_POD_INFRA_CONTAINER_ID": rp.container_id,
            "K8S_POD_UID": pod.metadata.uid or "",
        }

    @staticmethod
    def _capabilities(pod: Pod) -> dict:
        caps: dict = {}
        mappings = [
            {"hostPort": p.host_port, "containerPort": p.container_port, "protocol": p.protocol.lower()}
            for c in pod.spec.containers
            for p in (c.ports or [])
            if p.host_port
        ]
        if mappings:
            caps["portMappings"] = mappings
        annotations = pod.metadata.annotations or {}
        bandwidth = {}
        for annotation, rate, burst in (
            ("kubernetes.io/ingress-bandwidth", "ingressRate", "ingressBurst"),
            ("kubernetes.io/egress-bandwidth", "egressRate", "egressBurst"),
        ):
            if annotation in annotations:
                bits = parse_quantity(annotations[annotation])
                bandwidth[rate] = bits
                # kubelet passes MaxInt32 bits (256 MiB), which lets a short transfer run unlimited;
                # the lab allows 100 ms worth of traffic so the limit is what a user observes.
                bandwidth[burst] = max(bits // 10, 100_000)
        if bandwidth:
            caps["bandwidth"] = bandwidth
        return caps

    def _write_resolv_conf(self, pod: Pod, rp: RunningPod) -> None:
        """``/etc/netns/<pod netns>/resolv.conf`` (``ip netns exec`` mounts it over the pod's
        /etc/resolv.conf) when the cluster has its DNS: its Service's ClusterIP, the pod
        namespace's search list (the kubelet's ``ClusterFirst``). The DNS pods themselves keep the
        node's (``Default``)."""
        if any(c.image == DNS_IMAGE for c in pod.spec.containers) or rp.netns is None:
            return
        try:
            service = self.resources.get(lookup("services"), DNS_SERVICE, DNS_NAMESPACE)
        except NotFoundError:
            return  # a lab without a cluster DNS
        cluster_ip = service.spec.cluster_ip
        if not cluster_ip or cluster_ip == "None":
            return
        directory = os.path.join(NETNS_ETC, rp.netns)
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "resolv.conf"), "w") as f:
            f.write(resolv_conf(pod.metadata.namespace, cluster_ip))

    def _server_command(
        self, pod: Pod, rp: RunningPod, ports: list[str], ready: str
    ) -> tuple[list[str], str]:
        """(the pod's process, the namespace it starts in). The lab's pod server answers on the
        declared ports; a cluster DNS pod (its image) runs the cluster DNS, which reads the datastore
        from the node's namespace and serves in the pod's."""
        dns = next((c for c in pod.spec.containers if c.image == DNS_IMAGE), None)
        node_ns = self.nodes[rp.node]["netns"]
        if dns is None or rp.netns is None:
            return podserver_command(rp.key, ports, self.names.prefix, ready_file=ready), rp.netns or node_ns
        etcd = self.state.meta().get("etcd_cluster_endpoint") or ""
        args = [str(a) for a in (dns.args or [])]
        command = [sys.executable, "-m", "podnet.lab.dns_server", "cluster", "--etcd", etcd]
        command += ["--netns", rp.netns, "--ready-file", ready, *args, f"--lab-prefix={self.names.prefix}"]
        return command, node_ns

    def _start_server(self, pod: Pod, rp: RunningPod, timeout: float = 15.0) -> None:
        """Run the pod's server and wait until every port is bound (the pod's readiness)."""
        ports, warnings = [], []
        for container in pod.spec.containers:
            for port in container.ports or []:
                if port.protocol == "SCTP":
                    warnings.append(
                        f"port {port.container_port}/SCTP not served: this kernel has no SCTP sockets"
                    )
                else:
                    ports.append(f"{port.container_port}/{port.protocol}")
        rp.warnings = warnings
        if not ports:
            return
        stem = os.path.join(self.names.node_log_dir(rp.node), f"pod-{rp.key.replace('/', '.')}")
        ready = f"{stem}.{rp.container_id[:8]}.ready"
        command, netns = self._server_command(pod, rp, ports, ready)
        spawned = spawn(
            command,
            netns=netns,
            cgroup=rp.cgroup,
            lab_prefix=self.names.prefix,
            log=f"{stem}.log",
        )
        rp.server_pid, rp.server_start = spawned.pid, spawned.start_time
        self.state.record_process(ProcessRecord.of(f"pod-{rp.key}", spawned, pod=rp.key))
        deadline = time.monotonic() + timeout
        while not os.path.exists(ready):
            if not spawned.alive():
                raise RuntimeError(f"the pod's server exited at start (see {stem}.log)")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the pod's server did not bind its ports in {timeout:g}s")
            time.sleep(0.01)
        os.unlink(ready)

    def _set_status(self, pod: Pod, phase: str, rp: RunningPod, message: str | None = None) -> None:
        namespace, name = pod.metadata.namespace, pod.metadata.name
        status: dict = {"phase": phase, "hostIP": self.nodes[rp.node]["ip"]}
        if phase == "Running":
            status.update(
                podIP=rp.ip,
                podIPs=[{"ip": rp.ip}],
                startTime=_now(),
                conditions=[{"type": "Ready", "status": "True", "lastTransitionTime": _now()}],
            )
            message = message or ("; ".join(rp.warnings) or None)
        if message:
            status["message"] = message
        for _ in range(10):
            try:
                current = self.resources.get(lookup("pods"), name, namespace)
            except NotFoundError:
                return
            if current.metadata.uid != pod.metadata.uid:
                return
            doc = current.to_dict()
            doc["status"] = status
            try:
                self.resources.update(parse_resource(doc))
                return
            except ConflictError:
                continue

    # -- lab state ----------------------------------------------------------------------------------
    def _remember(self, rp: RunningPod) -> None:
        """Record the pod (netns, cgroup, identity) in the lab state in one locked update."""
        with self.lock:
            self.running[rp.key] = rp
        with self.state.update() as doc:
            doc["meta"].setdefault("pods", {})[rp.key] = asdict(rp)
            if rp.netns and rp.netns not in {n["name"] for n in doc["namespaces"]}:
                doc["namespaces"].append({"name": rp.netns, "kind": "pod"})
            if rp.cgroup not in doc["cgroups"]:
                doc["cgroups"].append(rp.cgroup)

    def _forget(self, rp: RunningPod) -> None:
        with self.lock:
            current = self.running.get(rp.key)
            if current is not None and current.container_id == rp.container_id:
                self.running.pop(rp.key, None)
        with self.state.update() as doc:
            pods = doc["meta"].setdefault("pods", {})
            if pods.get(rp.key, {}).get("container_id") == rp.container_id:
                pods.pop(rp.key, None)
            doc["namespaces"] = [n for n in doc["namespaces"] if n["name"] != rp.netns]
            doc["cgroups"] = [c for c in doc["cgroups"] if c != rp.cgroup]


_UNITS = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


def parse_quantity(text: str) -> int:
    """A Kubernetes quantity as bits per second (``10M`` → 10,000,000)."""
    text = text.strip()
    for suffix in sorted(_UNITS, key=len, reverse=True):
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * _UNITS[suffix])
    return int(float(text))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="podnet-lab-kubelet")
    p.add_argument("--state-dir", required=True)
    p.add_argument("--etcd-endpoints", required=True)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--lab-prefix", required=True)
    args = p.parse_args(argv)
    setup_logging("info")
    import signal

    names = LabNames(args.lab_prefix)
    kubelet = Kubelet(names, ResourceStore(EtcdDatastore(args.etcd_endpoints)), args.workers)
    signal.signal(signal.SIGTERM, lambda *_: (kubelet.stop.set(), kubelet.wake.set()))
    threading.Thread(target=kubelet.watch, name="watch", daemon=True).start()
    agents = AgentSupervisor(names, kubelet.stop)
    threading.Thread(target=agents.run, name="agents", daemon=True).start()
    kubelet.reconcile_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
