"""ClusterIP and NodePort allocation, done when a Service is written (the API server's job).

Each allocated address or port is a key, created in the SAME transaction as the Service, so two
writers can never take the same one (the second transaction fails on ``MUST_NOT_EXIST``)::

    <root>services/clusterips/<ip>       {"service": "ns/name"}
    <root>services/nodeports/<port>      {"service": "ns/name"}

- ``spec.clusterIP`` empty: a free address of ``serviceClusterIPRange`` (ClusterConfiguration
  ``default``; 10.96.0.0/12 without one), chosen at random; given: it must be in the range and free.
  It is immutable afterwards, as in Kubernetes. ``None`` (headless) allocates nothing.
- NodePort / LoadBalancer: every port without ``nodePort`` gets a free one of ``nodePortRange``;
  a given one must be in the range and free (the same service may use one number for TCP and UDP).
- A changed Service keeps what it had; nodePorts it no longer uses are released (keys deleted in the
  same transaction); deleting the Service releases everything.
"""

from __future__ import annotations

import ipaddress
import json
import random
from collections.abc import Callable

from podnet.datastore.base import MUST_NOT_EXIST, Datastore, Write
from podnet.datastore.keys import KeyLayout
from podnet.errors import ValidationError

DEFAULT_SERVICE_RANGE = "10.96.0.0/12"
DEFAULT_NODE_PORTS = (30000, 32767)


def _value(service: str) -> bytes:
    return json.dumps({"service": service}, separators=(",", ":")).encode()


class ServiceAllocator:
    """Allocations for one batch of writes (what it hands out is remembered across the batch)."""

    def __init__(
        self,
        store: Datastore,
        layout: KeyLayout,
        ranges: Callable[[], tuple[str, tuple[int, int]]],
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.layout = layout
        self._ranges = ranges
        self._loaded: tuple[dict[str, str], dict[int, str]] | None = None
        self.rng = rng or random.SystemRandom()

    def _prefix(self, what: str) -> str:
        return f"{self.layout.root}services/{what}/"

    def _taken(self) -> tuple[dict[str, str], dict[int, str]]:
        """``(ip -> service, port -> service)`` as stored, plus this batch's allocations."""
        if self._loaded is None:
            ips, ports = {}, {}
            for kv in self.store.list(self._prefix("clusterips"))[0]:
                ips[kv.key.rsplit("/", 1)[1]] = json.loads(kv.value).get("service", "")
            for kv in self.store.list(self._prefix("nodeports"))[0]:
                ports[int(kv.key.rsplit("/", 1)[1])] = json.loads(kv.value).get("service", "")
            self._loaded = (ips, ports)
        return self._loaded

    def admit(self, doc: dict, old: dict | None) -> list[Write]:
        """Fill in ``doc``'s clusterIP and nodePorts (``old``: the stored version) and return the
        allocation writes to commit with it. Raises ValidationError naming the field."""
        meta, spec = doc["metadata"], doc.setdefault("spec", {})
        service = f"{meta.get('namespace') or 'default'}/{meta['name']}"
        old_spec = (old or {}).get("spec") or {}
        ips, ports = self._taken()
        service_range, (low, high) = self._ranges()
        writes: list[Write] = []
        problems: list[tuple[str, str]] = []

        if spec.get("type") != "ExternalName":
            had = old_spec.get("clusterIP")
            wanted = spec.get("clusterIP")
            if had and wanted and wanted != had:
                problems.append(("spec.clusterIP", f"field is immutable (it is {had})"))
            elif had:
                spec["clusterIP"] = had
            elif wanted != "None":
                network = ipaddress.ip_network(service_range)
                if wanted:
                    if ipaddress.ip_address(wanted) not in network:
                        problems.append(("spec.clusterIP", f"{wanted} is not in the service range {network}"))
                    elif ips.get(wanted, service) != service:
                        problems.append(("spec.clusterIP", f"{wanted} is already allocated to {ips[wanted]}"))
                else:
                    wanted = self._free_ip(network, ips)
                    spec["clusterIP"] = wanted
                if wanted and not problems and wanted not in ips:
                    ips[wanted] = service
                    key = f"{self._prefix('clusterips')}{wanted}"
                    writes.append(Write(key, _value(service), MUST_NOT_EXIST))
            if spec.get("clusterIP") and spec.get("clusterIPs") is None and spec["clusterIP"] != "None":
                spec["clusterIPs"] = [spec["clusterIP"]]

        kept = {
            (p.get("port"), p.get("protocol", "TCP")): p.get("nodePort") for p in old_spec.get("ports") or []
        }
        wants_node_ports = spec.get("type") in ("NodePort", "LoadBalancer")
        using: set[int] = set()
        for i, port in enumerate(spec.get("ports") or [] if wants_node_ports else []):
            number = port.get("nodePort") or kept.get((port.get("port"), port.get("protocol", "TCP")))
            if number is None:
                number = self._free_port(low, high, ports, using)
            elif not low <= number <= high:
                problems.append((f"spec.ports[{i}].nodePort", f"{number} is not in the range {low}-{high}"))
                continue
            elif ports.get(number, service) != service:
                owner = ports[number]
                problems.append((f"spec.ports[{i}].nodePort", f"{number} is already allocated to {owner}"))
                continue
            port["nodePort"] = number
            using.add(number)
        if problems:
            raise ValidationError(problems, subject=f"Service {service}")
        for number in sorted(using):
            if number not in ports:
                ports[number] = service
                writes.append(Write(f"{self._prefix('nodeports')}{number}", _value(service), MUST_NOT_EXIST))
        for number in sorted({n for n in kept.values() if n} - using):
            if ports.get(number) == service:
                del ports[number]
                writes.append(Write(f"{self._prefix('nodeports')}{number}", None))
        return writes

    def release(self, doc: dict) -> list[Write]:
        """The deletes that free everything the stored Service ``doc`` holds."""
        meta, spec = doc.get("metadata") or {}, doc.get("spec") or {}
        service = f"{meta.get('namespace') or 'default'}/{meta.get('name')}"
        ips, ports = self._taken()
        writes = []
        ip = spec.get("clusterIP")
        if ip and ips.get(ip) == service:
            writes.append(Write(f"{self._prefix('clusterips')}{ip}", None))
        for port in spec.get("ports") or []:
            number = port.get("nodePort")
            if number and ports.get(number) == service:
                writes.append(Write(f"{self._prefix('nodeports')}{number}", None))
        return list({w.key: w for w in writes}.values())

    def _free_ip(self, network: ipaddress.IPv4Network | ipaddress.IPv6Network, taken: dict[str, str]) -> str:
        size = network.num_addresses
        if size - 2 <= len(taken):
            raise ValidationError([("spec.clusterIP", f"the service range {network} is full")])
        for _ in range(1000):
            candidate = network[self.rng.randrange(1, size - 1)]  # not the network nor the last address
            if str(candidate) not in taken:
                return str(candidate)
        for candidate in network.hosts():  # nearly full: walk it
            if str(candidate) not in taken:
                return str(candidate)
        raise ValidationError([("spec.clusterIP", f"the service range {network} is full")])

    def _free_port(self, low: int, high: int, taken: dict[int, str], using: set[int]) -> int:
        free = [n for n in range(low, high + 1) if n not in taken and n not in using]
        if not free:
            raise ValidationError([("spec.ports.nodePort", f"the NodePort range {low}-{high} is full")])
        return self.rng.choice(free)
