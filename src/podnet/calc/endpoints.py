"""An endpoint: one pod interface wired by a node's agent (Calico's WorkloadEndpoint).

The agent writes one record per interface at ``KeyLayout.endpoint(node, containerID, ifname)``
after CNI ADD and deletes it on DEL; other agents read them (policy and services later).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class EndpointRecord:
    node: str
    namespace: str
    pod: str
    container_id: str
    ifname: str
    host_ifname: str
    addresses: tuple[str, ...]  # plain IPs ("10.244.1.5")
    mac: str = ""
    handle: str = ""
    network: str = ""
    netns: str = ""
    scheme: str = "calico"
    labels: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> EndpointRecord:
        doc = json.loads(raw)
        doc["addresses"] = tuple(doc.get("addresses") or ())
        return cls(**doc)

    @property
    def pod_key(self) -> str:
        return f"{self.namespace}/{self.pod}"
