"""The lab's etcd: one member, or a cluster of 3 or 5 (``podnet lab up --etcd-members N``).

    root netns                              lab namespaces
    CLI, kubelet ──127.0.0.1:P1,P2,P3──▶ etcd-proxy ═setns═▶ (member 1's netns; a cluster: ext's)
                                            │ listener i → member i, else the next ones
                   pn-etcd   10.77.0.2  ◀───┤   member "etcd"    peer :2380, client :2379
                   pn-etcd-2 10.77.0.6  ◀───┤   member "etcd-2"
                   pn-etcd-3 10.77.0.7  ◀───┘   member "etcd-3"
    agents (pn-node-N) ── --etcd-endpoints http://10.77.0.2:2379,http://10.77.0.6:2379,… ──▶ members

Every member bootstraps statically (``--initial-cluster`` naming all of them, ``--initial-cluster-
state new``, ``--initial-cluster-token`` = the lab's prefix) in its own namespace, with its data
under the state dir (removed by ``down``); each member process is recorded as soon as it is
spawned (``etcd``, ``etcd-2``, …), so a failing ``up`` removes it. With a cluster the CLI's proxy
sits in ``ext`` (a machine on the node LAN, as an operator's would be) rather than in a member's
namespace, so that any member — the proxy's included — can be cut off.

A member is asked about itself from inside its own namespace (a thread that entered it), where
it is reachable even when the scenario cut it off from the fabric: :func:`member_status`,
:func:`member_keys` (a serializable read: that member's own copy).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from podnet.datastore.etcd import EtcdDatastore, MemberStatus
from podnet.datastore.etcd_server import EtcdServer
from podnet.errors import PodnetError
from podnet.lab.etcd_proxy import start_etcd_proxy
from podnet.lab.naming import LabError, LabNames
from podnet.lab.netns import proc_start_time
from podnet.lab.state import LabState, ProcessRecord
from podnet.lab.topology import Topology

META_KEY = "etcd_members"


@dataclass(frozen=True)
class Member:
    """One etcd member of a lab, as its state recorded it."""

    name: str  # etcd, etcd-2, … (also its process's name in the state)
    netns: str
    ip: str
    endpoint: str  # its client URL, inside the lab


def members_meta(topo: Topology) -> list[dict]:
    return [
        {"name": h.name, "netns": h.netns, "ip": h.ip, "endpoint": f"http://{h.ip}:{topo.etcd_client_port}"}
        for h in topo.etcd_members
    ]


def members(names: LabNames) -> list[Member]:
    """The lab's members (a lab from before clusters: its one member from the topology)."""
    meta = LabState(names.state_dir).meta()
    docs = meta.get(META_KEY)
    if docs is None:
        etcd = (meta.get("topology") or {}).get("etcd")
        if not etcd:
            raise LabError("this lab recorded no etcd", hint="podnet lab status")
        docs = [{"name": "etcd", "netns": etcd["netns"], "ip": etcd["ip"], "endpoint": etcd["endpoint"]}]
    return [Member(**doc) for doc in docs]


def member(names: LabNames, name: str) -> Member:
    found = {m.name: m for m in members(names)}
    if name not in found:
        raise LabError(f"no etcd member {name!r} in this lab", hint=", ".join(found))
    return found[name]


def proxy_netns(topo: Topology) -> str:
    """Where the CLI's proxy runs: member 1's namespace, or with a cluster the ext host's."""
    if len(topo.etcd_members) == 1 or topo.external is None:
        return topo.etcd.netns
    return topo.external.netns


def start(names: LabNames, topo: Topology, state: LabState, timeout: float = 30.0) -> str:
    """Start every member and the CLI's proxy; wait until the cluster answers through the proxy
    and every member has a leader; return the proxy's endpoints (comma-separated)."""
    os.makedirs(names.log_dir, exist_ok=True)
    state.set_meta(**{META_KEY: members_meta(topo)})
    initial = topo.etcd_initial_cluster
    servers = []
    for host in topo.etcd_members:
        server = EtcdServer(
            host=host.ip,
            client_port=topo.etcd_client_port,
            peer_port=topo.etcd_peer_port,
            data_dir=os.path.join(names.state_dir, host.name),
            netns=host.netns,
            name=host.name,
            log_path=os.path.join(names.log_dir, f"{host.name}.log"),
            initial_cluster=initial,
            cluster_token=f"podnet-lab-{names.stem}",
        )
        server.start(wait=False)  # reachable only inside the lab: waited for through the proxy
        assert server.process is not None
        state.record_process(
            ProcessRecord(
                host.name,
                server.process.pid,
                proc_start_time(server.process.pid) or 0,
                host.netns,
                cmd=tuple(server.command()),
                log=server.log_path,
            )
        )
        servers.append(server)
    upstreams = ",".join(f"{h.ip}:{topo.etcd_client_port}" for h in topo.etcd_members)
    proxy, endpoint = start_etcd_proxy(
        upstream=upstreams,
        netns=proxy_netns(topo),
        lab_prefix=names.prefix,
        log=os.path.join(names.log_dir, "etcd-proxy.log"),
        listeners=len(topo.etcd_members),
    )
    state.record_process(ProcessRecord.of("etcd-proxy", proxy))
    deadline = time.monotonic() + timeout
    for server in servers:  # each member: alive (its log names the failure otherwise)
        server.wait_ready(max(1.0, deadline - time.monotonic()), endpoint)
    wait_healthy(names, max(1.0, deadline - time.monotonic()))
    return endpoint


def member_status(m: Member, timeout: float = 2.0) -> MemberStatus:
    """``m``'s own status, asked from inside its namespace (raises DatastoreUnavailable)."""
    from podnet.dataplane.netns import run_in_netns

    def ask() -> MemberStatus:
        store = EtcdDatastore([m.endpoint], timeout=timeout, retry_deadline=0.0, connect_timeout=timeout)
        try:
            return store.member_status(m.endpoint)
        finally:
            store.close()

    return run_in_netns(m.netns, ask)


def statuses(names: LabNames, timeout: float = 2.0) -> dict[str, MemberStatus | PodnetError]:
    """Every member's status, or the error that asking it gave."""
    out: dict[str, MemberStatus | PodnetError] = {}
    for m in members(names):
        try:
            out[m.name] = member_status(m, timeout)
        except PodnetError as exc:
            out[m.name] = exc
    return out


def leader_name(found: dict[str, MemberStatus | PodnetError]) -> str | None:
    """The member every answering member names as leader (None: no answer, or they disagree)."""
    ids = {s.member_id: name for name, s in found.items() if isinstance(s, MemberStatus)}
    leaders = {s.leader for s in found.values() if isinstance(s, MemberStatus)}
    if len(leaders) != 1:
        return None
    (leader,) = leaders
    return ids.get(leader)


def leader(names: LabNames, timeout: float = 10.0) -> str:
    """The current leader's member name, waiting up to ``timeout`` for the members to agree."""
    deadline = time.monotonic() + timeout
    while True:
        found = statuses(names)
        name = leader_name({k: v for k, v in found.items() if isinstance(v, MemberStatus)})
        if name is not None:
            return name
        if time.monotonic() > deadline:
            raise LabError(f"the etcd members agree on no leader after {timeout:g}s: {found}")
        time.sleep(0.1)


def wait_healthy(names: LabNames, timeout: float = 30.0) -> dict[str, MemberStatus]:
    """Until every member answers and all name the same leader, one of them."""
    deadline = time.monotonic() + timeout
    while True:
        found = statuses(names)
        if all(isinstance(s, MemberStatus) for s in found.values()) and leader_name(found):
            return {k: v for k, v in found.items() if isinstance(v, MemberStatus)}
        if time.monotonic() > deadline:
            detail = "; ".join(f"{k}: {v}" for k, v in found.items())
            raise LabError(
                f"the etcd cluster is not healthy after {timeout:g}s ({detail})",
                hint=f"see the member logs under {names.log_dir}",
            )
        time.sleep(0.1)


def member_keys(m: Member, prefix: str, timeout: float = 5.0) -> tuple[set[str], int]:
    """The keys under ``prefix`` that member ``m`` holds itself (a serializable read there) and
    the revision it answered at."""
    from podnet.dataplane.netns import run_in_netns

    def read() -> tuple[set[str], int]:
        store = EtcdDatastore([m.endpoint], timeout=timeout, retry_deadline=1.0)
        try:
            items, revision = store.list(prefix, serializable=True)
            return {kv.key for kv in items}, revision
        finally:
            store.close()

    return run_in_netns(m.netns, read)
