"""The agent's side of CNI: ADD, DEL, CHECK, GC and STATUS for pods on this node.

ADD, in order, each step undone if a later one fails (Cilium's and Calico's rule: an address is
never left allocated for a pod that did not come up):

    IPAM (handle = <network>.<containerID>.<ifname>; re-used if the handle already holds addresses,
    so a retried ADD does not leak)  →  wire the veth (dataplane.endpoint)  →  write the endpoint
    record to the datastore  →  register it with the route syncer  →  CNI 1.1.0 result

Before an ADD, a DEL of the same attachment that the plugin queued while the agent was down is
served first (:func:`podnet.agent.delete_queue.serve_queued`): queued earlier, it must not run
after the ADD (it would unwire the new pod and free its address); if it cannot be served, the ADD
fails with 11.

DEL is idempotent: a missing netns, veth, record or handle is success.

Concurrency (a burst of ADDs on one node is the normal case at scale). Requests run side by side,
each in its API thread; what must not overlap is locked on its own, for as short as it can be:

- one request per attachment (containerID + ifname) at a time: a DEL never overtakes the ADD it
  undoes;
- IPAM's allocations and releases of this node, one at a time (Calico's host lock: it keeps the
  per-host block limit exact, and spares the node's own requests conflicts on its block);
- the datapath attach (``on_wired``: the Cilium profile's tc programs), one at a time;
- wiring and unwiring veths, a few at a time (``NETLINK_PARALLEL``);
- GC alone: it waits for the requests in flight and holds new ones back.

Wiring the veth, the datastore reads and the endpoint record run outside all of them.
Errors carry CNI codes: 11 (try again later) when the datastore is unreachable, 7 for bad input,
100+ for podnet's own failures; the message names what failed.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from podnet.agent.cni_concurrency import Gate, GroupCommit, KeyedLocks
from podnet.agent.log import kv
from podnet.calc.endpoints import EndpointRecord
from podnet.datastore.resources import ResourceStore
from podnet.errors import DatastoreUnavailable, NotFoundError, PodnetError, ValidationError
from podnet.ipam import (
    IPAM,
    HandleInUse,
    handle_id,
    requested_addresses,
    requested_pools,
    select_pools,
)
from podnet.model import lookup

log = logging.getLogger("podnet.agent.cni")

ERR_TRY_AGAIN = 11
ERR_INVALID_CONFIG = 7
ERR_IPAM = 100
ERR_WIRING = 101
ERR_CHECK = 102
ERR_INTERNAL = 199
CALICO_GATEWAY = "169.254.1.1"
NETLINK_PARALLEL = 4  # veths wired or unwired at once


class CNIFailure(Exception):
    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details


@dataclass
class Request:
    verb: str
    container_id: str
    netns: str
    ifname: str
    args: dict
    config: dict

    @classmethod
    def parse(cls, doc: dict) -> Request:
        return cls(
            verb=str(doc.get("verb", "")).upper(),
            container_id=str(doc.get("containerID") or ""),
            netns=str(doc.get("netns") or ""),
            ifname=str(doc.get("ifname") or "eth0"),
            args=dict(doc.get("args") or {}),
            config=dict(doc.get("config") or {}),
        )

    @property
    def network(self) -> str:
        return str(self.config.get("name") or "podnet")

    @property
    def namespace(self) -> str:
        return self.args.get("K8S_POD_NAMESPACE") or "default"

    @property
    def pod(self) -> str:
        return self.args.get("K8S_POD_NAME") or self.container_id[:12]

    @property
    def handle(self) -> str:
        return handle_id(self.network, self.container_id, self.ifname)


def _host_net(address: str) -> str:
    """``10.244.1.5`` -> ``10.244.1.5/32``: the destination of a pod's route, as calc writes it
    (IPAM's addresses are canonical, so no parse: this runs for every endpoint on each route apply)."""
    return f"{address}/128" if ":" in address else f"{address}/32"


class CNIService:
    """Serves CNI verbs. ``dataplane`` is the module-like object with the endpoint functions."""

    def __init__(
        self,
        node: str,
        resources: ResourceStore,
        ipam: IPAM,
        endpoints: dict[str, EndpointRecord],
        on_change: Callable[[], None],
        pod_mtu: Callable[[], int],
        scheme: Callable[[], tuple[str, str]],  # -> (scheme, gateway)
        ready: Callable[[], bool],
        pools_and_labels: Callable[[], tuple[list, dict]],
        queue_dir: str | None = None,
        on_wired: Callable[[Any], None] | None = None,  # dataplane.endpoint.WiredEndpoint
        cached_pod: Callable[[str, str], Any] | None = None,  # (namespace, name) -> Pod | None
        cached_namespace: Callable[[str], dict | None] | None = None,  # name -> IPAM annotations
    ) -> None:
        self.node = node
        self.resources = resources
        self.ipam = ipam
        self.endpoints = endpoints  # key -> record, shared with the syncer (the local truth)
        self.on_change = on_change
        self.pod_mtu = pod_mtu
        self.scheme = scheme
        self.ready = ready
        self.pools_and_labels = pools_and_labels  # from the agent's watch cache: no datastore read
        self.queue_dir = queue_dir  # the deletion queue; None: where the request's plugin queues
        self.on_wired = on_wired  # called with each new veth before ADD answers (eBPF attach)
        # The agent's watch cache, read before the datastore (a miss, or a Pod whose UID is not the
        # runtime's K8S_POD_UID, is read from the datastore).
        self.cached_pod = cached_pod
        self.cached_namespace = cached_namespace
        self._ipam_lock = threading.Lock()  # this node's allocations and releases, one at a time
        self._attach_lock = threading.Lock()  # on_wired, one at a time
        # Wiring is netlink work the kernel does under one lock (rtnl): a few at once overlap the
        # Python side with the kernel's; fifty at once only queue on the GIL and rtnl together.
        self._netlink_slots = threading.BoundedSemaphore(NETLINK_PARALLEL)
        self._gate = Gate()  # requests share it, GC holds it alone
        self._attachments = KeyedLocks()  # one request per attachment at a time
        self._allocations = GroupCommit(self._ipam_lock, self._allocate_batch)  # a burst: one txn
        self._releases = GroupCommit(self._ipam_lock, lambda handles: self.ipam.release_handles(handles))
        self._state = threading.Lock()  # guards _wiring
        self._wiring: Counter[str] = Counter()  # pod /32s requests in flight are changing
        self._in_flight = 0  # ADDs and DELs being served (guarded by _state)

    # -- dispatch --------------------------------------------------------------------------
    def handle(self, doc: dict) -> dict:
        started = time.monotonic()
        req = Request.parse(doc)
        try:
            method = {
                "ADD": self.add,
                "DEL": self.delete,
                "CHECK": self.check,
                "GC": self.gc,
                "STATUS": self.status,
            }.get(req.verb)
            if method is None:
                raise CNIFailure(4, f"unknown verb {req.verb!r}")
            if req.verb in ("ADD", "DEL", "CHECK") and not req.container_id:
                raise CNIFailure(4, "containerID is required")
            if req.verb == "ADD":
                self._serve_queued_delete(doc, req)
            timings: dict[str, float] = {}
            with contextlib.ExitStack() as held:
                if req.verb in ("ADD", "DEL"):
                    held.enter_context(self._counted())
                if req.verb == "GC":
                    held.enter_context(self._gate.alone())
                else:
                    held.enter_context(self._gate.shared())
                    if req.container_id:
                        held.enter_context(self._attachments.hold(f"{req.container_id}/{req.ifname}"))
                waited = time.monotonic() - started
                result = method(req, timings) if req.verb == "ADD" else method(req)
            kv(
                log,
                logging.INFO,
                "cni",
                verb=req.verb,
                container=req.container_id[:12],
                pod=f"{req.namespace}/{req.pod}",
                ms=round((time.monotonic() - started) * 1000, 1),
                queued_ms=round(waited * 1e3, 1),
                **timings,
                ok=True,
            )
            return {"ok": True, "result": result}
        except CNIFailure as exc:
            failure = exc
        except DatastoreUnavailable as exc:
            failure = CNIFailure(ERR_TRY_AGAIN, f"datastore unavailable: {exc.message}", exc.hint or "")
        except ValidationError as exc:
            failure = CNIFailure(ERR_INVALID_CONFIG, exc.message, exc.hint or "")
        except PodnetError as exc:
            failure = CNIFailure(ERR_INTERNAL, exc.message, exc.hint or "")
        except Exception as exc:  # a bug must still answer the runtime, not hang it
            log.exception("CNI %s failed", req.verb)
            failure = CNIFailure(ERR_INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
        kv(
            log,
            logging.WARNING,
            "cni",
            verb=req.verb,
            container=req.container_id[:12],
            code=failure.code,
            error=failure.msg,
            ms=round((time.monotonic() - started) * 1000, 1),
            ok=False,
        )
        return {"ok": False, "code": failure.code, "msg": failure.msg, "details": failure.details}

    def _serve_queued_delete(self, doc: dict, req: Request) -> None:
        """A DEL of this attachment queued while we were down comes before this ADD: serve it now."""
        from podnet.agent.delete_queue import serve_queued
        from podnet.cni.agent_api import delete_queue_dir, socket_path

        queue_dir = (
            self.queue_dir
            or req.config.get("delete_queue_dir")
            or delete_queue_dir(socket_path(req.config.get("agent_socket")))
        )
        response = serve_queued(str(queue_dir), {**doc, "ifname": req.ifname}, self.handle)
        if response is not None and not response.get("ok"):
            raise CNIFailure(
                ERR_TRY_AGAIN,
                f"a DEL of {req.ifname} of container {req.container_id} queued while the agent was down "
                f"cannot be served yet: {response.get('msg')}",
                "the ADD is retried by the runtime; the queued DEL must be served first",
            )

    def endpoint_key(self, req: Request) -> str:
        return self.resources.layout.endpoint(self.node, req.container_id, req.ifname)

    def settling(self, planned: frozenset[str]) -> set[str]:
        """Pod /32s whose kernel routes a route plan built from ``planned`` may be stale about:
        those an ADD or DEL is wiring now, and those wired or unwired since (their next apply,
        which the ADD or DEL triggers, knows them). See ``RouteManager.apply(settling=...)``."""
        with self._state:  # read first: a request clears its part only after updating endpoints
            wiring = set(self._wiring)
        now = {_host_net(a) for record in list(self.endpoints.values()) for a in record.addresses}
        return wiring | (now ^ planned)

    def busy(self) -> bool:
        """ADDs or DELs are being served (the syncer holds an apply for the burst: Syncer.hold)."""
        return self._in_flight > 0

    @contextlib.contextmanager
    def _counted(self) -> Iterator[None]:
        with self._state:
            self._in_flight += 1
        try:
            yield
        finally:
            with self._state:
                self._in_flight -= 1

    @contextlib.contextmanager
    def _changing(self, addresses: tuple[str, ...] | list[str]) -> Iterator[None]:
        """Mark ``addresses`` as being wired or unwired by this request (see ``settling``)."""
        nets = [_host_net(a) for a in addresses]
        with self._state:
            self._wiring.update(nets)
        try:
            yield
        finally:
            with self._state:
                self._wiring.subtract(nets)
                for net in nets:
                    if self._wiring[net] <= 0:
                        del self._wiring[net]

    # -- ADD -------------------------------------------------------------------------------
    def add(self, req: Request, timings: dict[str, float] | None = None) -> dict:
        from podnet.dataplane import endpoint as dp

        if not req.netns:
            raise CNIFailure(4, "netns is required for ADD")
        if not self.ready():
            raise CNIFailure(
                ERR_TRY_AGAIN, "the podnet agent has not synced with the datastore yet", "retry in a moment"
            )
        key = self.endpoint_key(req)
        if key in self.endpoints:
            raise CNIFailure(
                ERR_WIRING,
                f"{req.ifname} of container {req.container_id} is already set up",
                "the runtime must DEL before a second ADD",
            )
        t0 = time.monotonic()
        pod = self._pod(req)
        t_lock = time.monotonic()
        addresses = self._allocate(req, pod)
        t1 = time.monotonic()
        scheme, gateway = self.scheme()
        host_ifname = dp.host_ifname_for("lxc" if scheme == "cilium" else "cali", req.namespace, req.pod)
        spec = dp.EndpointSpec(
            netns=req.netns,
            ifname=req.ifname,
            host_ifname=host_ifname,
            addresses=tuple(addresses),
            mtu=int(req.config.get("mtu") or 0) or self.pod_mtu(),
            scheme=scheme,
            gateway=gateway,
        )
        with self._changing(addresses):  # a route apply meanwhile leaves these alone
            try:
                with self._netlink_slots:
                    wired = dp.wire_endpoint(spec)
            except Exception as exc:
                self._release(req.handle)
                raise CNIFailure(ERR_WIRING, f"wiring {req.ifname} in {req.netns} failed: {exc}") from exc
            try:
                if self.on_wired is not None:
                    with self._attach_lock:
                        self.on_wired(wired)
                t2 = time.monotonic()
            except Exception as exc:
                dp.unwire_endpoint(wired.host_ifname, req.netns, req.ifname)
                self._release(req.handle)
                raise CNIFailure(
                    ERR_WIRING, f"attaching {wired.host_ifname}'s datapath failed: {exc}"
                ) from exc
            record = EndpointRecord(
                node=self.node,
                namespace=req.namespace,
                pod=req.pod,
                container_id=req.container_id,
                ifname=req.ifname,
                host_ifname=wired.host_ifname,
                addresses=tuple(addresses),
                mac=wired.mac,
                handle=req.handle,
                network=req.network,
                netns=req.netns,
                scheme=scheme,
                labels=dict(pod.metadata.labels or {}) if pod is not None else {},
            )
            try:
                self.resources.store.put(key, record.to_json())
            except Exception:
                dp.unwire_endpoint(wired.host_ifname, req.netns, req.ifname)
                self._release(req.handle)
                raise
            self.endpoints[key] = record
        self.on_change()
        (timings if timings is not None else {}).update(
            {
                "pod_ms": round((t_lock - t0) * 1e3, 1),
                "ipam_ms": round((t1 - t_lock) * 1e3, 1),  # with the wait for the batch it joins
                "wire_ms": round((t2 - t1) * 1e3, 1),
                "record_ms": round((time.monotonic() - t2) * 1e3, 1),
            }
        )
        return {
            "cniVersion": "1.1.0",
            "interfaces": [
                {"name": wired.host_ifname, "mac": wired.host_mac},
                {"name": wired.ifname, "mac": wired.mac, "mtu": wired.mtu, "sandbox": req.netns},
            ],
            "ips": [{"address": f"{ip}/32", "gateway": gateway, "interface": 1} for ip in addresses],
            "routes": [{"dst": "0.0.0.0/0", "gw": gateway}],
            "dns": {},
        }

    def _pod(self, req: Request):  # type: ignore[no-untyped-def]
        """The Pod being wired, or None when the datastore has no such object."""
        if self.cached_pod is not None:
            pod = self.cached_pod(req.namespace, req.pod)
            uid = req.args.get("K8S_POD_UID")
            if pod is not None and (not uid or pod.metadata.uid == uid):
                return pod
        try:
            return self.resources.get(lookup("pods"), req.pod, req.namespace)
        except NotFoundError:
            return None

    def _namespace_annotations(self, namespace: str) -> dict:
        cached = self.cached_namespace(namespace) if self.cached_namespace is not None else None
        if cached is not None:
            return cached
        try:
            return self.resources.get(lookup("namespaces"), namespace).metadata.annotations or {}
        except NotFoundError:
            return {}

    def _allocate(self, req: Request, pod) -> list[str]:  # type: ignore[no-untyped-def]
        """The attachment's addresses. A retried ADD (after a timeout: same handle) gets the ones
        its handle holds: ``new_handle`` has the allocation's own transaction check that."""
        pod_annotations: dict = (pod.metadata.annotations or {}) if pod is not None else {}
        ns_annotations = self._namespace_annotations(req.namespace)
        pools, node_labels = self.pools_and_labels()
        attrs = {
            "node": self.node,
            "namespace": req.namespace,
            "pod": req.pod,
            "containerID": req.container_id,
        }
        try:
            wanted = requested_addresses(pod_annotations)
            if wanted:
                with self._ipam_lock:
                    held = self.ipam.handle_ips(req.handle)
                    if held:
                        return held
                    return [self.ipam.assign_ip(ip, req.handle, self.node, pools, attrs) for ip in wanted]
            requested = requested_pools(pod_annotations, ns_annotations)
            config_pools = (req.config.get("ipam") or {}).get("ipv4_pools")
            chosen = select_pools(pools, node_labels, requested=requested or config_pools)
            return self._allocations.submit((req.handle, tuple(chosen), attrs))
        except HandleInUse as held:
            return held.addresses
        except DatastoreUnavailable:
            raise
        except PodnetError as exc:
            self._release(req.handle)
            raise CNIFailure(ERR_IPAM, f"IPAM: {exc.message}", exc.hint or "") from exc

    def _allocate_batch(self, items: Sequence[tuple[str, tuple, dict]]) -> list:
        """A group commit of allocations (under the IPAM lock): requests for the same pools go in
        one transaction when their block has room (``IPAM.auto_assign_many``)."""
        results: list = [None] * len(items)
        groups: dict[tuple, list[int]] = {}
        for i, (_handle, pools, _attrs) in enumerate(items):
            groups.setdefault(pools, []).append(i)
        for pools, members in groups.items():
            done = self.ipam.auto_assign_many([(items[i][0], items[i][2]) for i in members], self.node, pools)
            for i, result in zip(members, done, strict=True):
                results[i] = result
        return results

    def _release(self, handle: str) -> list[str]:
        return self._releases.submit(handle)

    # -- DEL -------------------------------------------------------------------------------
    def delete(self, req: Request) -> dict:
        from podnet.dataplane import endpoint as dp

        key = self.endpoint_key(req)
        record = self.endpoints.get(key)
        if record is None:
            kv_ = self.resources.store.get(key)
            record = EndpointRecord.from_json(kv_.value) if kv_ else None
        if record is not None:
            host_ifname, handle = record.host_ifname, record.handle
        else:
            scheme, _ = self.scheme()
            host_ifname = dp.host_ifname_for("lxc" if scheme == "cilium" else "cali", req.namespace, req.pod)
            handle = req.handle
        with self._changing(record.addresses if record is not None else ()):
            with self._netlink_slots:
                dp.unwire_endpoint(host_ifname, req.netns or None, req.ifname)
            self._release(handle)
            with contextlib.suppress(NotFoundError):
                self.resources.store.delete(key)
            popped = self.endpoints.pop(key, None) is not None
        if popped:
            self.on_change()
        return {}

    # -- CHECK -----------------------------------------------------------------------------
    def check(self, req: Request) -> dict:
        from podnet.dataplane import endpoint as dp

        record = self.endpoints.get(self.endpoint_key(req))
        if record is None:
            raise CNIFailure(ERR_CHECK, f"no endpoint for {req.ifname} of container {req.container_id}")
        _scheme, gateway = self.scheme()
        spec = dp.EndpointSpec(
            netns=req.netns or record.netns,
            ifname=req.ifname,
            host_ifname=record.host_ifname,
            addresses=record.addresses,
            mtu=int(req.config.get("mtu") or 0) or self.pod_mtu(),
            scheme=record.scheme,
            gateway=gateway,
        )
        problems = dp.check_endpoint(spec)
        held = set(self.ipam.handle_ips(record.handle))
        missing = set(record.addresses) - held
        if missing:
            problems.append(f"IPAM no longer holds {', '.join(sorted(missing))} for handle {record.handle}")
        prev = req.config.get("prevResult") or {}
        prev_ips = {ip.get("address", "").split("/")[0] for ip in prev.get("ips") or []}
        if prev_ips and prev_ips != set(record.addresses):
            problems.append(f"prevResult addresses {sorted(prev_ips)} differ from {list(record.addresses)}")
        if problems:
            raise CNIFailure(ERR_CHECK, "; ".join(problems))
        return {}

    # -- GC --------------------------------------------------------------------------------
    def gc(self, req: Request) -> dict:
        valid = req.config.get("cni.dev/valid-attachments")
        if valid is None:
            valid = req.config.get("cni.dev/attachments") or []
        keep = {(a.get("containerID"), a.get("ifname")) for a in valid}
        removed = []
        for key, record in list(self.endpoints.items()):
            if record.network == req.network and (record.container_id, record.ifname) not in keep:
                self.delete(
                    Request(
                        "DEL",
                        record.container_id,
                        record.netns,
                        record.ifname,
                        {"K8S_POD_NAMESPACE": record.namespace, "K8S_POD_NAME": record.pod},
                        {"name": record.network},
                    )
                )
                removed.append(key)
        # Addresses this node holds for the network without an endpoint (an ADD that died midway).
        prefix = f"{req.network}."
        valid_handles = {handle_id(req.network, c, i) for c, i in keep}
        for alloc in self.ipam.snapshot().allocations():
            if (
                alloc.node == self.node
                and alloc.handle_id.startswith(prefix)
                and alloc.handle_id not in valid_handles
            ):
                self._release(alloc.handle_id)
        kv(log, logging.INFO, "cni gc", removed=len(removed))
        return {}

    # -- STATUS ----------------------------------------------------------------------------
    def status(self, req: Request) -> dict:
        """CNI 1.1 STATUS: 50 when ADD cannot be served (not synced, datastore unreachable)."""
        if not self.ready():
            raise CNIFailure(50, "podnet agent is not in sync with the datastore yet")
        try:
            self.resources.store.revision()
        except DatastoreUnavailable as exc:
            raise CNIFailure(50, f"datastore unavailable: {exc.message}", exc.hint or "") from exc
        return {}
