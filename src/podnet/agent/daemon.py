"""The podnet agent: the one place where a node's components are constructed and wired.

etcd ──▶ Syncer (PrefixSync → ClusterCache → calc → RouteManager) ──▶ kernel routes
  ▲                                        ▲ local endpoints
  └── CNIService (IPAM, endpoint wiring) ◀─┴── api_server (UNIX socket) ◀── podnet-cni
metrics + /healthz on HTTP
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

from podnet.agent import api_server, metrics
from podnet.agent.cni_service import CALICO_GATEWAY, CNIService
from podnet.agent.delete_queue import ExclusiveQueueLock, drain
from podnet.agent.identities import IdentityKeeper
from podnet.agent.idle_gc import IdleCollector
from podnet.agent.log import kv
from podnet.agent.policy_status import PolicyStatusWriter, invalid_policies
from podnet.agent.syncer import Syncer
from podnet.calc.cluster import VXLAN_ADDRESS_ANNOTATION, VXLAN_MAC_ANNOTATION, ClusterCache
from podnet.calc.endpoints import EndpointRecord
from podnet.calc.local_pods import local_pods
from podnet.calc.memo import ObjectMemo
from podnet.calc.mtu import IPIP_OVERHEAD, VXLAN_OVERHEAD, pod_mtu
from podnet.calc.policy import BGP_PORT, ControlPlane, control_plane
from podnet.calc.policy_inputs import CiliumMemo
from podnet.calc.routes import VXLAN_DEVICES, RoutePlan, encap_policy
from podnet.cni.agent_api import DROPS, EXEC, FLOWS, PROXY_METRICS_PORT, delete_queue_dir
from podnet.datastore import connect
from podnet.datastore.keys import KeyLayout
from podnet.datastore.resources import ResourceStore
from podnet.errors import PodnetError
from podnet.ipam import IPAM, pool_from_resource, select_pools
from podnet.model import lookup
from podnet.model.core import ANNOTATION_CILIUM_HOST

log = logging.getLogger("podnet.agent")

ROUTER_DEVICE = "cilium_host"
# How long one datastore request retries unreachable endpoints: a CNI ADD while etcd is down must
# fail (code 11, "try again later") within 5 s, as kubelet then retries.
DATASTORE_RETRY_SECONDS = 3.0
SLOW_APPLY_SECONDS = 0.1  # a partial apply at least this long is logged with its phases


@dataclass
class AgentConfig:
    node: str
    etcd_endpoints: str | None
    socket: str
    metrics_address: tuple[str, int] | None
    uplink: str = "eth0"
    refresh_seconds: float = 60.0
    state_dir: str = "/var/lib/podnet"  # compiled BPF objects are cached here
    bpf_dir: str = "/sys/fs/bpf/podnet"  # pins (on a bpffs that outlives the agent)
    cgroup: str | None = None  # the pods' cgroup v2 directory (eBPF socket load balancing)
    flow_ring_size: int = 4096  # records of each event ring (new connections; drops, verdicts, L7)

    def bpf_dirs(self) -> dict:
        import os

        return {
            "cache_dir": os.path.join(self.state_dir, "bpf"),
            "pin_dir": os.path.join(self.bpf_dir, self.node, "ipip"),
        }

    def sock_lb_pin_dir(self) -> str:
        """Where the socket load balancer's programs and maps are pinned (``podnet bpf lb list``)."""
        import os

        return os.path.join(self.bpf_dir, self.node, "sock_lb")


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        from podnet.dataplane.host_policy import HostEndpointManager
        from podnet.dataplane.nat import NatManager
        from podnet.dataplane.policy import PolicyManager
        from podnet.dataplane.routes import RouteManager
        from podnet.dataplane.services_nft import ServiceProxy

        self.config = config
        self.layout = KeyLayout.from_env()
        self.store = connect(config.etcd_endpoints, retry_deadline=DATASTORE_RETRY_SECONDS)
        self.resources = ResourceStore(self.store, self.layout)
        self.ipam = IPAM(self.store, self.layout)
        self.metrics = metrics.AgentMetrics()
        self.cache = ClusterCache(self.layout)
        self.endpoints: dict[str, EndpointRecord] = {}
        self._last_local: dict = {}  # "ns/name" -> PodInfo last enforced for a wired endpoint
        self.endpoint_conflicts: dict[str, str] = {}  # "ns/name" -> why its Pod disagrees
        self.routes = RouteManager()
        self.nat = NatManager()
        self.policy = PolicyManager()
        # compiled policies kept between syncs (calc.policy.compile_policies): pods, host endpoints
        self._compiled: ObjectMemo[Any] = ObjectMemo()
        self._compiled_hosts: ObjectMemo[Any] = ObjectMemo()
        self._service_memo: ObjectMemo[Any] = ObjectMemo()  # calc.services.service_plan's, per service
        self._backends_memo: ObjectMemo[Any] = ObjectMemo()  # policy_inputs.service_backends', per service
        self.host_endpoints = HostEndpointManager()  # Calico HostEndpoints: default deny + failsafe
        self.services = ServiceProxy()
        self._services_on = False  # the services table exists (created with the first service)
        self._sock_lb = None  # SocketLB while the Cilium profile balances at connect()
        self.policy_status = PolicyStatusWriter(self.store, self.layout, config.node)
        self.identities = IdentityKeeper(self.store, self.layout, config.node)  # Cilium profile
        self.syncer = Syncer(
            config.node,
            self.store,
            self.cache,
            self.endpoints,
            self._apply_routes,
            self.metrics,
            uplink=config.uplink,
            refresh_seconds=config.refresh_seconds,
            apply_partial=self._apply_partial,
        )
        self.syncer.on_synced.append(self._on_first_sync)
        self.idle_gc = IdleCollector(self.syncer.idle_seconds)  # full gc when quiet, not mid-sync
        self.syncer.bgp = self._bgp_enabled
        self.cni = CNIService(
            config.node,
            self.resources,
            self.ipam,
            self.endpoints,
            lambda: self.syncer.trigger("endpoints"),  # a pod wired or unwired: its policy
            pod_mtu=self._pod_mtu,
            scheme=self._scheme,
            ready=self._ready,
            pools_and_labels=self._pools_and_labels,
            queue_dir=delete_queue_dir(config.socket),
            on_wired=self._on_wired,
            cached_pod=lambda namespace, name: self.cache.pods.get(f"{namespace}/{name}"),
            cached_namespace=lambda name: self.cache.namespace_ipam.get(name),
        )
        self.syncer.hold = self.cni.busy  # a burst of pods starting: one apply for it
        self._router_ip: str | None = None
        self._vxlan = None  # VXLANTunnel once this node has a VTEP
        self._bird = None  # BirdManager while BGP is on
        self._ipip = None  # IPIPTunnel once some node is reached over IPIP
        self._underlay_mtu: int | None = None
        self.policy_plan = None  # the PolicyPlan last applied (the drop monitor explains drops by it)
        self.cilium = None  # CiliumDatapath (agent.cilium_datapath) once the Cilium profile runs here
        self.cilium_plan = None  # the CiliumPlan last written to its maps
        self.bpf_events = None  # BpfEvents (agent.bpf_events): the Cilium datapath's drops and verdicts
        self.l7 = None  # NodeL7 (agent.l7): the node's L7 proxy, from the first redirect entry on
        self.fqdn = None  # FqdnTracker (agent.fqdn): what the DNS proxy learnt, for toFQDNs
        self._nft_policy_on = True  # the nftables policy table may exist (removed on Cilium nodes)
        self._cilium_memo = CiliumMemo()  # compile_cilium's memo between syncs
        self.drops = None  # DropMonitor, from start()
        self.flows = None  # FlowService (agent.flows) over the drop monitor's ring, from start()
        self._counting = ""  # which profile's kernel counters the flow metrics read
        self.ct_flows = None  # ConntrackFlows (agent.ct_flows): the Calico profile's flow source
        self._tracks_all = False  # Calico: the policy table in force leaves no pod traffic untracked
        self._stop = threading.Event()
        self._servers: list = []

    # -- state the CNI service asks for -----------------------------------------------------
    def _ready(self) -> bool:
        return self.syncer.in_sync.is_set() and (self._profile() != "cilium" or self._router_ip is not None)

    def _pools_and_labels(self) -> tuple[list, dict]:
        with self.syncer.lock:
            node = self.cache.nodes.get(self.config.node)
            return [pool_from_resource(p) for p in self.cache.pools.values()], dict(
                node.labels
            ) if node else {}

    def _profile(self) -> str:
        return self.cache.config.effective().profile if self.cache.config else "calico"

    def _scheme(self) -> tuple[str, str]:
        if self._profile() == "cilium":
            return "cilium", self._router_ip or ""
        return "calico", CALICO_GATEWAY

    def _pod_mtu(self) -> int:
        from podnet.dataplane.mtu import detect_underlay_mtu

        if self._underlay_mtu is None:
            self._underlay_mtu = detect_underlay_mtu()
        with self.syncer.lock:
            return pod_mtu(self._underlay_mtu, list(self.cache.pools.values()), self.cache.config)

    def _on_first_sync(self) -> None:
        if self._profile() == "cilium":
            threading.Thread(target=self._ensure_router, name="router-ip", daemon=True).start()

    def _ensure_router(self) -> None:
        """Cilium scheme: a router address from this node's pool, on a ``cilium_host`` device."""
        from podnet.dataplane.endpoint import ensure_router_device

        handle = f"router-{self.config.node}"
        ips = self.ipam.handle_ips(handle)
        if not ips:
            pools = [pool_from_resource(p) for p in self.cache.pools.values()]
            node = self.cache.nodes.get(self.config.node)
            chosen = select_pools(pools, node.labels if node else {})
            ips = self.ipam.auto_assign(handle, self.config.node, chosen, {"node": self.config.node})
        ensure_router_device(ROUTER_DEVICE, ips[0])
        self._router_ip = ips[0]
        self.syncer.trigger()  # the next apply publishes it (_publish_router_ip)
        kv(log, logging.INFO, "router address", device=ROUTER_DEVICE, address=ips[0])

    # -- dataplane ---------------------------------------------------------------------------
    def _wants_vxlan(self) -> bool:
        """Does this cluster use VXLAN towards any node (so this node must have a VTEP)?"""
        with self.syncer.lock:
            policy = encap_policy(self.cache.pools.values(), self.cache.config)
        if policy.profile == "cilium":
            return policy.cilium_tunnel == "vxlan"
        return any(vxlan != "Never" for _, _, vxlan in policy.pools)

    def _ensure_vxlan(self) -> None:
        """This node's VTEP: a tunnel address from IPAM, the device, and the Node annotations that
        tell the other nodes where it is (as Calico publishes them)."""
        from podnet.dataplane.vxlan import VXLANTunnel, vtep_mac

        node = self.config.node
        name, vni, port = VXLAN_DEVICES[self._profile()]
        me = self.cache.nodes.get(node)
        if me is None or me.ip is None:
            raise RuntimeError(f"node {node} has no address in the datastore yet")
        handle = f"vxlan-tunnel-addr-{node}"
        ips = self.ipam.handle_ips(handle)
        if not ips:
            pools, labels = self._pools_and_labels()
            chosen = select_pools(pools, labels, use="Tunnel")
            ips = self.ipam.auto_assign(handle, node, chosen, {"node": node}, use="Tunnel")
        mac = vtep_mac(node)
        if self._underlay_mtu is None:
            self._pod_mtu()
        tunnel = VXLANTunnel(
            name,
            vni=vni,
            port=port,
            uplink=self.config.uplink,
            local_ip=me.ip,
            mtu=(self._underlay_mtu or 1500) - VXLAN_OVERHEAD,
        )
        tunnel.ensure(ips[0], mac)
        if (me.vxlan_ip, me.vxlan_mac) != (ips[0], mac):
            self.resources.patch(
                lookup("nodes"),
                node,
                {"metadata": {"annotations": {VXLAN_ADDRESS_ANNOTATION: ips[0], VXLAN_MAC_ANNOTATION: mac}}},
            )
        self._vxlan = tunnel

    def _publish_router_ip(self) -> None:
        """Cilium scheme: this node's router IP as a Node annotation, as Cilium publishes it, so
        every node closes it to pods with the rest of the control plane. Retried by each full apply
        until the datastore has it."""
        me = self.cache.nodes.get(self.config.node)
        if self._router_ip is None or me is None or me.router_ip == self._router_ip:
            return
        try:
            patch = {"metadata": {"annotations": {ANNOTATION_CILIUM_HOST: self._router_ip}}}
            self.resources.patch(lookup("nodes"), self.config.node, patch)
        except PodnetError as exc:
            kv(log, logging.WARNING, "router address not published yet", error=str(exc))

    def _bgp_enabled(self) -> bool:
        """Calico profile with a ``default`` BGPConfiguration: BIRD distributes the routes."""
        return self._profile() == "calico" and self.cache.bgp_config is not None

    def _apply_bgp(self, plan: RoutePlan) -> None:
        """Render this node's BIRD configuration and apply it (start, reload or nothing)."""
        from podnet.calc.bird import BgpNode, BirdOptions, render_bird_config
        from podnet.dataplane.bird import BirdManager

        if not self._bgp_enabled():
            if self._bird is not None:
                self._bird.stop()
                self._bird = None
            return
        with self.syncer.lock:
            nodes = [
                BgpNode.from_info(info, self.cache.node_annotations.get(name))
                for name, info in self.cache.nodes.items()
                if info.ip
            ]
            text = render_bird_config(
                self.config.node,
                nodes,
                list(self.cache.blocks.values()),
                self.cache.bgp_config.spec,
                list(self.cache.bgp_peers.values()),
                list(self.cache.pools.values()),
                no_kernel=sorted(set(plan.ipip_map) | {r.dst for r in plan.routes if r.onlink}),
                options=BirdOptions(uplink=self.config.uplink),
            )
        if self._bird is None:
            self._bird = BirdManager(os.path.dirname(os.path.abspath(self.config.socket)))
        outcome = self._bird.apply(text)
        if outcome != "unchanged":
            kv(log, logging.INFO, "bird", outcome=outcome)

    def _apply_policy(self) -> None:
        """Policy: compile every kind this profile enforces for this node's pods (pure, with
        provenance) and apply the difference to the nftables table in one transaction; a failure
        leaves the previous ruleset in force and the next sync resyncs it in full (the syncer
        retries). The same transaction keeps the ``notrack`` sets (calc.conntrack): pool-to-pool
        traffic of no isolated local endpoint, no Service backend, no node or control-plane address
        skips conntrack."""
        from podnet.calc.conntrack import forward_policy_here, notrack_plan
        from podnet.calc.policy import datastore_address
        from podnet.calc.policy_inputs import compile_cilium, compile_cluster, service_backends

        with self.syncer.lock:
            pods = self.cache.pod_infos()
            records = list(self.endpoints.values())  # one snapshot (CNI requests change the dict)
            local = local_pods(self.config.node, pods, records, self._last_local)
            plan = compile_cluster(self.cache, local.pods, self._profile(), memo=self._compiled)
            endpoints = {r.pod_key: (r.host_ifname, r.addresses, r.mac) for r in records}
            control = self._control_plane()
            cilium_profile = self._profile() == "cilium"
            # the notrack sets are the nftables table's; the Cilium profile has no such table
            forward_policy = forward_policy_here(
                self.config.node, self.cache.host_endpoints.values(), self.cache.global_policies.values()
            )
            flows = self._settings().flows
            notrack = (
                None
                if cilium_profile
                else notrack_plan(
                    plan,
                    [p.spec.cidr for p in self.cache.pools.values()],
                    # read only when something may go untracked (not with flow records on)
                    () if forward_policy or flows else service_backends(self.cache, self._backends_memo),
                    [a for n in self.cache.nodes.values() for a in (n.ip, n.vxlan_ip, n.router_ip)]
                    + [ip for ip, _protocol, _port in control.remote],
                    forward_policy=forward_policy,
                    flows=flows,
                )
            )
            revision = self.cache.revision
            invalid = invalid_policies(self.cache.errors, self.layout)
            namespaces = dict(self.cache.namespaces)
            cluster = self._settings().cluster_name
            cilium = None
            if cilium_profile:
                apiserver = [
                    found[0]
                    for found in map(datastore_address, getattr(self.store, "endpoints", []))
                    if found is not None
                ]
                cilium = compile_cilium(
                    self.cache,
                    local.pods,
                    self.config.node,
                    apiserver,
                    self._cilium_memo,
                    l7_proxy=True,
                    fqdns=self._fqdn().view(),
                )
        for policy, error in plan.errors.items():
            kv(log, logging.WARNING, "policy not compiled; it allows nothing", policy=policy, error=error)
        self._note_conflicts(local.conflicts)
        try:
            if cilium is not None:
                self._apply_cilium(cilium, records, control)
            else:
                self.policy.apply(plan, endpoints, control, notrack)
                self._nft_policy_on = True
                self._tracks_all = notrack is not None and not notrack.pools
                self._count_calico()
            self.policy_plan = plan  # in force now (the drop monitor explains drops by it)
            self._last_local = {p.key: p for p in local.pods if p.key in endpoints}
            self._apply_host_endpoints()
        except Exception as exc:
            self.policy_status.report(
                revision, str(exc), plan.errors, invalid, local.conflicts, **self._l7_report()
            )
            raise
        full = self.cilium.lxc.overflow if cilium is not None and self.cilium is not None else ()
        self.policy_status.report(
            revision, None, plan.errors, invalid, local.conflicts, full, **self._l7_report()
        )
        self._apply_identities(local.pods, namespaces, cluster, cilium)  # after the policy: datastore I/O

    def _cilium_datapath(self):  # type: ignore[no-untyped-def]
        from podnet.agent.cilium_datapath import CiliumDatapath, pin_dir_for

        if self.cilium is None:
            self.cilium = CiliumDatapath(
                pin_dir_for(self.config.bpf_dir, self.config.node), self.config.bpf_dirs()["cache_dir"]
            )
        return self.cilium

    def _on_wired(self, wired) -> None:  # type: ignore[no-untyped-def]
        """CNI ADD, the veth just made: on a Cilium node its tc programs are attached before the
        ADD answers, with a "not ready" record (agent.cilium_datapath), so no packet passes
        unjudged; the sync this ADD triggers writes its policy."""
        if self._profile() == "cilium":
            self._cilium_datapath().attach(wired.host_ifname, wired.addresses, wired.mac)

    def _apply_cilium(self, plan, records: list, control: ControlPlane) -> None:  # type: ignore[no-untyped-def]
        """Cilium profile: the eBPF datapath enforces ``plan``; the nftables policy table goes."""
        if self._nft_policy_on:
            self.policy.remove()
            self._nft_policy_on = False
        netdevs = [self.config.uplink]
        if self._wants_vxlan():
            netdevs.append(VXLAN_DEVICES["cilium"][0])
        self._node_l7().apply(plan, records)  # before the maps point at it
        counts = self._cilium_datapath().apply(plan, records, control, netdevs)
        self.cilium_plan = plan
        self._start_bpf_events()
        if any(counts.values()):
            kv(
                log,
                logging.INFO,
                "cilium maps synced",
                **{k.removeprefix("pn_"): n for k, n in counts.items()},
            )
        overflow = self.cilium.lxc.overflow if self.cilium else ()
        if overflow:
            kv(
                log,
                logging.WARNING,
                "policy map full: endpoints keep their previous policy",
                pods=",".join(overflow),
            )

    def _node_l7(self):  # type: ignore[no-untyped-def]
        from podnet.agent.l7 import NodeL7

        if self.l7 is None:
            self.l7 = NodeL7(
                self.config.node,
                os.path.join(self.config.state_dir, "l7", self.config.node),
                self.config.cgroup,
                self._pod_infos,
                self._add_records,
                on_answer=self._fqdn().learn,
                exporter=self._proxy_exporter(),
            )
        return self.l7

    def _proxy_exporter(self) -> str | None:
        """The L7 proxy's Prometheus exporter: beside the agent's metrics (same address), port
        :data:`PROXY_METRICS_PORT`; none when the agent serves no metrics."""
        if self.config.metrics_address is None:
            return None
        return f"{self.config.metrics_address[0]}:{PROXY_METRICS_PORT}"

    def _fqdn(self):  # type: ignore[no-untyped-def]
        from podnet.agent.fqdn import HOLD_SECONDS, FqdnTracker

        if self.fqdn is None:
            self.fqdn = FqdnTracker(
                os.path.join(self.config.state_dir, "fqdn", f"{self.config.node}.json"),
                lambda: self._settings().to_fqdns_min_ttl,
                lambda: [*self.cache.cilium_policies.values(), *self.cache.cilium_cluster_policies.values()],
                lambda wait: self.syncer.apply_and_wait("policy", HOLD_SECONDS if wait else 0.0),
            )
            self.fqdn.start()
        return self.fqdn

    def _add_records(self, records) -> None:  # type: ignore[no-untyped-def]
        if self.drops is not None:
            self.drops.add_records(records)

    def _l7_report(self) -> dict:
        """What the policy report says of the L7 proxy (PolicyReport.l7_proxy, l7_error) and of
        toFQDNs rules that can learn nothing (fqdn_without_dns)."""
        from podnet.calc.policy_cnp import fqdn_without_dns

        out: dict = {}
        if self.cilium_plan is not None:
            kinds = {"cnp": "CiliumNetworkPolicy", "ccnp": "CiliumClusterwideNetworkPolicy"}
            blind = fqdn_without_dns(self.cilium_plan.maps)
            out["fqdn_without_dns"] = {
                f"{kinds[name.split(':', 1)[0]]}:{name.split(':', 1)[1]}": keys
                for name, keys in blind.items()
            }
        if self.l7 is not None:
            out.update(l7_proxy=self.l7.running, l7_error=self.l7.last_error)
        return out

    def _start_bpf_events(self) -> None:
        """The datapath's ring buffer read into the drop monitor (once its maps exist)."""
        from podnet.agent.bpf_events import BpfEvents

        if self.bpf_events is not None or self.drops is None or self.cilium is None:
            return
        lxc = self.cilium.lxc

        def endpoint_map(endpoint_id: int):  # type: ignore[no-untyped-def]
            plan = self.cilium_plan
            key = lxc.pod_of(endpoint_id)
            return plan.maps.get(key) if plan is not None and key else None

        self.drops.other_sources = True
        self.bpf_events = BpfEvents(
            self.config.node,
            lxc.events_path(),
            self._pod_infos,
            endpoint_map,
            lxc.entry,
            self.drops.add_records,
            lxc.set_events,
            lambda: lxc.stats()["events_lost"],
            lambda: self._settings().flows,
        )
        self.bpf_events.start()
        self.metrics.watch_datapath(lxc.stats)  # events_lost and the other counters, scraped

        def forwarded() -> dict[str, tuple[int, int]]:
            return {direction: n for (reason, direction), n in lxc.metrics().items() if reason == 0}

        def dropped() -> dict[tuple[int, str], tuple[int, int]]:
            return {key: n for key, n in lxc.metrics().items() if key[0] != 0}

        self.metrics.flows.use_kernel(
            forwarded,
            dropped,
            cilium=True,
            lost=lambda: lxc.stats()["events_lost"],
            parse_errors=lambda: self.l7.records.bad if self.l7 is not None and self.l7.records else 0,
        )
        self._counting = "cilium"

    def _apply_identities(self, pods: list, namespaces: dict, cluster: str, plan=None) -> None:  # type: ignore[no-untyped-def]
        """Cilium profile: every local pod's identity allocated cluster-wide and referenced by this
        node (agent.identities, its own thread: the datastore I/O never holds up this loop); in
        another profile this node references none. The label sets are the Cilium ``plan``'s."""
        from podnet.calc.identity import pod_label_sets

        if self._profile() != "cilium":
            wanted = {}
        elif plan is not None and all(p.key in plan.label_sets for p in pods):
            wanted = {p.key: plan.label_sets[p.key] for p in pods}
        else:
            wanted = pod_label_sets(pods, namespaces, cluster)
        self.identities.request(wanted)

    def _note_conflicts(self, conflicts: dict[str, str]) -> None:
        """Log each endpoint whose Pod object disagrees with this node (once per change) and count
        them in ``podnet_endpoint_conflicts``; enforcement does not depend on it (calc.local_pods)."""
        for pod, why in conflicts.items():
            if self.endpoint_conflicts.get(pod) != why:
                kv(log, logging.WARNING, "endpoint conflict", pod=pod, problem=why)
        for pod in set(self.endpoint_conflicts) - set(conflicts):
            kv(log, logging.INFO, "endpoint conflict resolved", pod=pod)
        self.endpoint_conflicts = dict(conflicts)
        self.metrics.endpoint_conflicts.set(len(conflicts))

    def _apply_host_endpoints(self) -> None:
        """Calico HostEndpoints of this node: their default deny with the failsafe ports, tunnel
        traffic of known nodes and local pods let through (calc.host_endpoints), and the
        GlobalNetworkPolicies selecting them in between (calc.host_policy), as one transaction."""
        from dataclasses import replace

        from podnet.calc.host_endpoints import host_endpoint_plan
        from podnet.calc.host_policy import host_policy_plan, with_hosts
        from podnet.calc.policy_inputs import compile_hosts

        with self.syncer.lock:
            heps = list(self.cache.host_endpoints.values())
            settings = self._settings()
            nodes = [n.ip for n in self.cache.nodes.values() if n.name != self.config.node]
            pods = [a for r in self.endpoints.values() for a in r.addresses]
        mine = [h for h in heps if h.spec.node == self.config.node]
        interfaces = self._interface_addresses() if any(not h.spec.interface_name for h in mine) else None
        plan = host_endpoint_plan(
            self.config.node,
            mine,
            settings.failsafe_inbound,
            settings.failsafe_outbound,
            nodes,
            pods,
            interfaces,
        )
        if self._profile() == "calico":
            labels = {h.metadata.name or "": dict(h.metadata.labels or {}) for h in mine}
            with self.syncer.lock:
                policy = host_policy_plan(
                    plan.interfaces, labels, lambda h: compile_hosts(self.cache, h, self._compiled_hosts)
                )
            plan = replace(plan, policy=policy)
        for name, error in plan.errors.items():
            kv(log, logging.WARNING, "host endpoint not enforced", hostEndpoint=name, error=error)
        outcome = self.host_endpoints.apply(plan)
        if self.policy_plan is not None:  # host endpoint drops explained too (pnd/pnx/pne of hep:<if>)
            self.policy_plan = with_hosts(self.policy_plan, plan.policy)
        if outcome == "applied":
            covered = ",".join(sorted(plan.interfaces)) or "-"
            kv(log, logging.INFO, "host endpoints applied", interfaces=covered)

    @staticmethod
    def _interface_addresses() -> dict[str, list[str]]:
        """This node's interfaces and their addresses (HostEndpoints by expectedIPs)."""
        from podnet.dataplane.netlink import Netlink

        with Netlink.open() as nl:
            names = {link.index: link.name for link in nl.links()}
            out: dict[str, list[str]] = {}
            for address in nl.addrs():
                out.setdefault(names.get(address.index, ""), []).append(address.address)
        return out

    def _control_plane(self) -> ControlPlane:
        """What no pod may reach (calc.policy.control_plane): BGP's listen port, this agent's metrics
        port and its L7 proxy's exporter (every agent gets the same flags), every node's addresses,
        the datastore endpoints."""
        bgp_spec = getattr(self.cache.bgp_config, "spec", None)
        addresses = [a for n in self.cache.nodes.values() for a in (n.ip, n.vxlan_ip, n.router_ip)]
        metrics_port = self.config.metrics_address[1] if self.config.metrics_address else None
        return control_plane(
            addresses,
            getattr(self.store, "endpoints", []),
            getattr(bgp_spec, "listen_port", BGP_PORT),
            metrics_port,
            PROXY_METRICS_PORT if metrics_port else None,
        )

    def _apply_services(self) -> None:
        """Services: backends per frontend for this node (pure), then the Calico profile's
        nftables proxier, or (Cilium profile, ``kubeProxyReplacement``) eBPF socket load balancing
        at ``connect()`` for ClusterIPs with the nftables table for NodePorts from outside."""
        from podnet.calc.services import service_plan

        with self.syncer.lock:
            settings = self._settings()
            me = self.cache.nodes.get(self.config.node)
            plan = service_plan(
                self.config.node,
                list(self.cache.services.values()),
                self.cache.ready_pods,
                [me.ip] if me and me.ip else [],
                settings.service_cluster_ip_range,
                memo=self._service_memo,
            )
            pod_cidrs = [p.spec.cidr for p in self.cache.pools.values()]
        for service, why in plan.errors.items():
            kv(log, logging.WARNING, "service not served", service=service, error=why)
        socket_lb = settings.kube_proxy_replacement and self.config.cgroup is not None
        self._apply_socket_lb(plan if socket_lb else None)
        if not plan.frontends and not self._services_on:
            return  # no service yet: no table, no hooks
        outcome = self.services.apply(plan, pod_cidrs, nodeport_only=socket_lb)
        self._services_on = True
        if outcome["mode"] != "noop":
            kv(
                log,
                logging.INFO,
                "services applied",
                mode=outcome["mode"],
                statements=outcome["statements"],
                ms=round(outcome["seconds"] * 1e3, 1),
            )

    def _apply_socket_lb(self, plan) -> None:  # type: ignore[no-untyped-def]
        """eBPF socket load balancing for ``plan`` (None: off; detached if it was on). The programs
        and maps outlive the agent: a restart re-adopts them without a flush."""
        from podnet.dataplane.sock_lb import SocketLB

        if plan is None:
            if self._sock_lb is not None:
                self._sock_lb.detach()
                self._sock_lb = None
            return
        if self._sock_lb is None:
            cache_dir = self.config.bpf_dirs()["cache_dir"]
            lb = SocketLB(self.config.cgroup, self.config.sock_lb_pin_dir(), cache_dir)
            lb.ensure()
            self._sock_lb = lb
        changed = self._sock_lb.sync(plan)
        if any(n for what, n in changed.items() if what != "skipped"):
            kv(log, logging.INFO, "socket load balancer synced", **changed)

    def _settings(self):  # type: ignore[no-untyped-def]
        from podnet.model.cluster import ClusterConfigurationSpec

        return self.cache.config.effective() if self.cache.config else ClusterConfigurationSpec().effective()

    def _apply_partial(self, kinds: set[str]) -> dict:
        """Only pods, endpoint records, namespaces, policies or services changed: no route, tunnel
        or BGP work. A
        Service change recompiles policy too: Calico ``services`` rules stand for its endpoints (a
        stale Deny would let its new endpoints through), and its backends stay tracked (notrack)."""
        started = time.perf_counter()
        if kinds & {"pods", "namespaces", "policy", "services", "endpoints"} or (
            "identities" in kinds and self._profile() == "cilium"
        ):
            self._apply_policy()  # identity numbers: the Cilium profile's ipcache and maps
        policy_done = time.perf_counter()
        if kinds & {"pods", "services"}:
            self._apply_services()
        done = time.perf_counter()
        if done - started >= SLOW_APPLY_SECONDS:  # where a slow one went (the benches read it)
            kv(
                log,
                logging.INFO,
                "partial apply",
                kinds=",".join(sorted(kinds)),
                policy_ms=round((policy_done - started) * 1e3, 1),
                services_ms=round((done - policy_done) * 1e3, 1),
            )
        return {}

    def _apply_routes(self, plan: RoutePlan) -> dict:
        from podnet.dataplane.routes import Route

        self._apply_bgp(plan)
        if self._wants_vxlan() and self._vxlan is None:
            self._ensure_vxlan()
        if self._vxlan is not None:
            self._vxlan.sync(plan.vxlan_peers)
        with self.syncer.lock:
            pools = [p for p in self.cache.pools.values()]
        cilium_tunnel = self._profile() == "cilium" and self._wants_vxlan()
        self.nat.apply(
            [p.spec.cidr for p in pools if p.spec.nat_outgoing and not p.spec.disabled],
            [p.spec.cidr for p in pools],
            [VXLAN_DEVICES["cilium"][2]] if cilium_tunnel else (),  # eBPF pod path: its tunnel untracked
        )
        if plan.ipip_map or "ipip" in plan.modes:
            if self._ipip is None:
                self._ipip = self._make_ipip()
                self._ipip.ensure()
            with self.syncer.lock:
                peers = sorted(n.ip for n in self.cache.nodes.values() if n.ip and n.name != self.config.node)
            self._ipip.sync(plan.ipip_map, peers=peers)  # only nodes may send us IPIP

        desired = [
            Route(
                dst=r.dst,
                gateway=r.gateway,
                dev=r.dev,
                kind=r.kind,
                onlink=r.onlink,
                scope="link" if r.dev and not r.gateway and r.kind == "unicast" else None,
            )
            for r in plan.routes
        ]
        diff = self.routes.apply(desired, settling=lambda: self.cni.settling(plan.endpoint_dsts))
        self._publish_router_ip()
        self._apply_policy()
        self._apply_services()
        counts = {
            "added": len(diff.added),
            "replaced": len(diff.replaced),
            "deleted": len(diff.deleted),
            "failed": len(diff.failed),
        }
        for route, error in diff.failed:
            kv(log, logging.WARNING, "route not applied", dst=route.dst, error=str(error))
        for op, n in counts.items():
            if n:
                self.metrics.route_ops.labels(op).inc(n)
        return counts

    # -- lifecycle ---------------------------------------------------------------------------
    def health(self) -> tuple[bool, dict]:
        ok = self.syncer.in_sync.is_set() and self.syncer.last_error is None
        return ok, {
            "node": self.config.node,
            "inSync": self.syncer.in_sync.is_set(),
            "revision": self.cache.revision,
            "endpoints": len(self.endpoints),
            "lastError": self.syncer.last_error,
            "unreachable": self.syncer.last_plan.unreachable if self.syncer.last_plan else {},
            "invalidKeys": self.cache.errors,
            "endpointConflicts": self.endpoint_conflicts,
            "dropMonitor": self.drops.status() if self.drops else None,
            "l7Proxy": self.l7.status() if self.l7 is not None else None,
            "flows": self._flows_status(),
        }

    def _flows_status(self) -> dict:
        """What the flow records rest on now: Cilium, whether the tc programs send a trace per
        new connection; Calico, whether the policy table in force tracks every connection and
        conntrack's events are read (``on``: the setting as the datapath applies it)."""
        if self.bpf_events is not None and self._profile() == "cilium":
            return {"on": self.bpf_events.traces_on, "source": "tc trace events", "lost": self._events_lost()}
        reading = self.ct_flows is not None and self.ct_flows.error is None
        return {
            "on": bool(self._tracks_all and reading),
            "source": "conntrack events",
            "lost": self.ct_flows.lost if self.ct_flows is not None else None,
        }

    def _dispatch(self, doc: dict) -> dict:
        """The API: DROPS to the drop monitor, FLOWS to the flows API, EXEC (an invocation the
        plugin forwarded whole) to the plugin's verbs, the CNI verbs (and anything else) to the CNI
        service."""
        verb = str(doc.get("verb", "")).upper()
        if verb == EXEC:
            from podnet.agent import cni_exec

            return cni_exec.serve(doc, self.cni.handle)
        if verb == DROPS and self.drops is not None:
            if "policy-verdict" in (doc.get("types") or ()) and self.bpf_events is not None:
                self.bpf_events.want_verdicts()  # the tc programs send them while someone asks
            return self.drops.handle(doc)
        if verb == FLOWS and self.flows is not None:
            asked = [t for t in doc.get("filters") or () if isinstance(t, list) and t[1:2] == ["type"]]
            if any(t[2:3] == ["policy-verdict"] for t in asked) and self.bpf_events is not None:
                self.bpf_events.want_verdicts()
            return self.flows.handle(doc)
        return self.cni.handle(doc)

    def _count_calico(self) -> None:
        """Calico profile: the forwarding counters table and the metrics read from it (once), and
        conntrack's events read for flows while flows are on."""
        from podnet.dataplane import forward_counters

        drops = self.drops
        if self.ct_flows is None and self._settings().flows and drops is not None:
            from podnet.agent.ct_flows import ConntrackFlows

            self.ct_flows = ConntrackFlows(
                self.config.node,
                self._pod_infos,
                self._service_ips,
                drops.add_records,
                lambda: self.policy_plan,
                lambda: self._settings().flows,
            )
            self.ct_flows.start()
        if self._counting == "calico":
            return
        forward_counters.ensure()

        def lost() -> int | None:
            if drops is None:
                return None
            return drops.read_errors + (self.ct_flows.lost if self.ct_flows is not None else 0)

        self.metrics.flows.use_kernel(forward_counters.read, None, cilium=False, lost=lost)
        self._counting = "calico"

    def _service_ips(self) -> dict[tuple[str, str, int], str]:
        """(ClusterIP, protocol, port) -> ``ns/name``: which Service a connection went through."""
        out = {}
        for svc in list(self.cache.services.values()):
            spec = svc.spec
            for ip in {*(spec.cluster_ips or ()), *((spec.cluster_ip,) if spec.cluster_ip else ())}:
                for port in spec.ports or ():
                    out[(ip, str(port.protocol or "TCP"), int(port.port))] = (
                        f"{svc.metadata.namespace}/{svc.metadata.name}"
                    )
        return out

    def _refresh_traffic(self, records: list) -> None:
        """Flows' bytes from conntrack: the Cilium datapath's entries (the Calico profile's come
        with conntrack's events)."""
        from podnet.agent.flows import traffic_from_ct

        try:
            if self.cilium is not None and self.bpf_events is not None:
                traffic_from_ct(records, self.cilium.lxc.ct_entries())
            if self.ct_flows is not None:
                self.ct_flows.refresh(records)
        except Exception as exc:  # the flows are answered without bytes, never not at all
            kv(log, logging.DEBUG, "conntrack not readable for flows", error=str(exc))

    def _flows_counted(self) -> None:
        """Before conntrack entries go: the flows in the ring take their last counts."""
        if self.drops is not None:
            self._refresh_traffic(self.drops.query(0, 0.0, self.drops.capacity)["drops"])

    def _events_lost(self) -> int | None:
        return self.bpf_events.status().get("lost") if self.bpf_events is not None else None

    def _pod_infos(self) -> list:
        with self.syncer.lock:
            return self.cache.pod_infos()

    def start(self) -> None:
        kv(
            log,
            logging.INFO,
            "starting",
            node=self.config.node,
            socket=self.config.socket,
            etcd=",".join(getattr(self.store, "endpoints", [])),
        )
        from podnet.dataplane import sysctl

        sysctl.write_many(sysctl.NODE_SYSCTLS)  # a node forwards pod traffic
        from podnet.agent.drops import DropMonitor

        self.drops = DropMonitor(
            self.config.node, self._pod_infos, lambda: self.policy_plan, capacity=self.config.flow_ring_size
        )
        self.drops.start()  # a group it cannot bind is a warning, not a failure
        self.drops.observers.append(self.metrics.flows.observe)
        from podnet.agent.flows import FlowService

        self.flows = FlowService(
            self.drops.query, self._pod_infos, self._refresh_traffic, self._events_lost, self.drops.capacity
        )
        self.policy_status.start()
        self.identities.start()
        self.syncer.start()
        self.idle_gc.start()
        # DELs queued by the plugin while we were down: drain them, and start listening before
        # the lock is released, so a plugin either reaches us or its entry is seen (see cni.delete_queue).
        queue_dir = delete_queue_dir(self.config.socket)
        with ExclusiveQueueLock(queue_dir):
            self.syncer.in_sync.wait(5.0)
            _, left = drain(queue_dir, self.cni.handle)
            self._servers.append(api_server.serve(self.config.socket, self._dispatch))
        if left:
            threading.Thread(
                target=self._retry_queue, args=(queue_dir,), name="delete-queue", daemon=True
            ).start()
        if self.config.metrics_address:
            self._servers.append(metrics.serve(self.config.metrics_address, self.metrics, self.health))
        threading.Thread(target=self._watch_bird, name="bird-watch", daemon=True).start()
        threading.Thread(target=self._collect_ct, name="ct-gc", daemon=True).start()

    def _watch_bird(self, interval: float = 1.0) -> None:
        """BIRD is the agent's child: if it exits (a crash, a graceful restart), the next apply
        starts it again (with ``-R``, graceful restart recovery, while its routes are in the kernel)."""
        while not self._stop.wait(interval):
            bird = self._bird
            if bird is not None and not bird.process_alive():
                kv(log, logging.WARNING, "BIRD is not running; starting it again")
                self.syncer.trigger()

    def _collect_ct(self, interval: float = 5.0) -> None:
        """The Cilium datapath's expired conntrack entries, removed now and then (the LRU map
        evicts only when full)."""
        import time

        while not self._stop.wait(interval):
            cilium = self.cilium
            if cilium is not None:
                try:
                    cilium.maybe_gc(time.monotonic(), self._flows_counted)
                except Exception as exc:  # the next round tries again
                    kv(log, logging.WARNING, "conntrack gc failed", error=str(exc))

    def _retry_queue(self, queue_dir: str) -> None:
        while not self._stop.wait(5.0):
            with ExclusiveQueueLock(queue_dir):
                if drain(queue_dir, self.cni.handle)[1] == 0:
                    return

    def _make_ipip(self):
        from podnet.dataplane.ipip import IPIPTunnel

        me = self.cache.nodes.get(self.config.node)
        if me is None or me.ip is None:
            raise RuntimeError(f"node {self.config.node} has no address in the datastore yet")
        if self._underlay_mtu is None:
            self._pod_mtu()
        mtu = (self._underlay_mtu or 1500) - IPIP_OVERHEAD
        return IPIPTunnel(uplink=self.config.uplink, local_ip=me.ip, mtu=mtu, **self.config.bpf_dirs())

    def stop(self) -> None:
        self._stop.set()
        self.syncer.stop()
        self.idle_gc.stop()
        self.policy_status.stop()
        self.identities.stop()
        if self.bpf_events is not None:
            self.bpf_events.stop()
        if self.ct_flows is not None:
            self.ct_flows.stop()
        if self.l7 is not None:
            self.l7.close()
        if self.fqdn is not None:
            self.fqdn.stop()
        if self.drops is not None:
            self.drops.stop()  # answers the long polls before the server goes
        for server in self._servers:
            server.shutdown()
            server.server_close()

    def run_forever(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        signal.signal(signal.SIGINT, lambda *_: self._stop.set())
        self.start()
        self._stop.wait()
        kv(log, logging.INFO, "stopping (routes and pods stay as they are)")
        self.stop()
