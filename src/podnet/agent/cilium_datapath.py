"""The Cilium profile's eBPF datapath, as the agent drives it: loaded on first use, attached to each
pod as the CNI wires it and to the node's uplink and VXLAN device, synced from the watch cache.

    CNI ADD ── wired veth ──▶ attach(): "not ready" record + tc hooks, before the ADD answers
    agent sync ── calc.policy_inputs.compile_cilium ──▶ apply(): every local endpoint's map,
                  the ipcache and the closed control plane, by difference (dataplane.lxc)

Interfaces are looked up once by name (netlink dump) and remembered with their ifindex and MAC;
a veth the CNI wires again under the same name (a new sandbox) is remembered anew by attach().
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any

from podnet.agent.log import kv
from podnet.calc.endpoints import EndpointRecord
from podnet.calc.policy import ControlPlane
from podnet.calc.policy_inputs import CiliumPlan
from podnet.model.identity import RESERVED

log = logging.getLogger("podnet.agent.cilium")

GC_SECONDS = 60.0  # expired conntrack entries are removed this often


def _ipv4(addresses: Iterable[str]) -> str:
    return next((a for a in addresses if ":" not in a), "")


class CiliumDatapath:
    """One node's :class:`podnet.dataplane.lxc.LxcDatapath` and what the agent knows of its links."""

    def __init__(self, pin_dir: str, cache_dir: str) -> None:
        from podnet.dataplane.lxc import LxcDatapath

        self.lxc = LxcDatapath(pin_dir, cache_dir)
        self._links: dict[str, tuple[int, str]] = {}  # interface name -> (ifindex, MAC)
        self._netdevs: dict[str, int] = {}  # device with from_netdev -> its ifindex
        self._hooked: dict[str, int] = {}  # host veth -> ifindex, hooked by this process's programs
        self._lock = threading.Lock()
        self._loaded = False
        self._last_gc = 0.0

    def ensure(self) -> None:
        with self._lock:
            if not self._loaded:
                self.lxc.ensure()
                self._loaded = True

    def _link(self, name: str, refresh: bool = False) -> tuple[int, str] | None:
        if refresh or name not in self._links:
            from podnet.dataplane.netlink import Netlink

            with Netlink.open() as nl:
                links = {link.name: (link.index, link.mac or "") for link in nl.links()}
            with self._lock:
                self._links.update(links)
                return links.get(name)
        return self._links.get(name)

    def attach(self, host_ifname: str, addresses: Iterable[str], mac: str) -> None:
        """A pod just wired: not ready until the next sync computes its policy."""
        from podnet.dataplane.netlink import Netlink

        self.ensure()
        with Netlink.open() as nl:
            link = nl.link_find(host_ifname)
        if link is None:
            raise RuntimeError(f"host veth {host_ifname} not found after wiring")
        ifindex, host_mac = link.index, link.mac or ""
        with self._lock:
            self._links[host_ifname] = (ifindex, host_mac)
            self._hooked[host_ifname] = ifindex

        self.lxc.attach_endpoint(host_ifname, ifindex, _ipv4(addresses) or "0.0.0.0", mac, host_mac)

    def _attach_netdevs(self, netdevs: Iterable[str]) -> None:
        """from_netdev on each of ``netdevs`` that exists (once per device and ifindex)."""
        for dev in netdevs:
            found = self._link(dev, refresh=dev not in self._netdevs)
            if found is None or self._netdevs.get(dev) == found[0]:
                continue
            self.lxc.attach_netdev(dev)
            self._netdevs[dev] = found[0]
            kv(log, logging.INFO, "from_netdev attached", device=dev, ifindex=found[0])

    def apply(
        self,
        plan: CiliumPlan,
        records: Iterable[EndpointRecord],
        control: ControlPlane,
        netdevs: Iterable[str],
    ) -> dict[str, Any]:
        """Every local endpoint as ``plan`` says (an endpoint with no map stays not ready); the
        node's ``netdevs`` (uplink, VXLAN device) deliver to local pods past the stack."""
        from podnet.dataplane.lxc import LxcEndpoint

        self.ensure()
        self._attach_netdevs(netdevs)
        records = list(records)
        missing = [r.host_ifname for r in records if r.host_ifname not in self._links]
        if missing:
            self._link(missing[0], refresh=True)
        endpoints, hooks = [], []
        for record in records:
            found = self._links.get(record.host_ifname)
            if found is None:
                continue  # its veth is gone: DEL is on its way
            ifindex, host_mac = found
            endpoints.append(
                LxcEndpoint(
                    record.pod_key,
                    ifindex,
                    _ipv4(record.addresses),
                    record.mac,
                    host_mac,
                    plan.pod_identity.get(record.pod_key, RESERVED["init"]),
                    plan.maps.get(record.pod_key),
                )
            )
            if self._hooked.get(record.host_ifname) != ifindex:
                hooks.append((record, endpoints[-1]))
        counts = self.lxc.sync(endpoints, plan.ipcache, control)
        for record, endpoint in hooks:  # after a restart or upgrade: this version's programs
            self.lxc.hook(record.host_ifname)
            with self._lock:
                self._hooked[record.host_ifname] = endpoint.ifindex
        self._forget_gone(set(self._links) - {r.host_ifname for r in records} - set(self._netdevs))
        return counts

    def _forget_gone(self, names: set[str]) -> None:
        """Forget the veths among ``names`` that the kernel no longer has (their pods were
        deleted). One a CNI ADD hooked while this apply ran is not in its records yet, but it
        exists: forgetting it would have the next apply hook it again."""
        if not names:
            return
        from podnet.dataplane.netlink import Netlink

        with Netlink.open() as nl:
            present = {link.name for link in nl.links()}
        with self._lock:
            for name in names - present:
                self._links.pop(name, None)
                self._hooked.pop(name, None)

    def maybe_gc(self, now: float, before: Callable[[], None] = lambda: None) -> int:
        """Expired conntrack entries removed, at most every :data:`GC_SECONDS` (``before``: the
        flows take their last counts from them first)."""
        if not self._loaded or now - self._last_gc < GC_SECONDS:
            return 0
        self._last_gc = now
        before()
        removed = self.lxc.ct_gc()
        if removed:
            kv(log, logging.INFO, "conntrack gc", removed=removed)
        return removed


def pin_dir_for(bpf_dir: str, node: str) -> str:
    """Where node ``node``'s Cilium datapath is pinned (``podnet bpf`` reads it there)."""
    return os.path.join(bpf_dir, node, "lxc")
