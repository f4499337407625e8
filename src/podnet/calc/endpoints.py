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
        """Read a stored record; a value of the wrong shape raises ValueError (the cache reports it)."""
        doc = json.loads(raw)
        if not isinstance(doc, dict):
            raise ValueError(f"endpoint record must be a JSON object, not {type(doc).__name__}")
        doc["addresses"] = doc.get("addresses") or ()
        checks = {"addresses": _is_str_list, "labels": _is_str_map}
        for name, value in doc.items():
            if not checks.get(name, _is_str)(value):
                raise ValueError(f"endpoint record field {name!r} has the wrong type")
        doc["addresses"] = tuple(doc["addresses"])
        return cls(**doc)

    @property
    def pod_key(self) -> str:
        return f"{self.namespace}/{self.pod}"


def _is_str(value: object) -> bool:
    return isinstance(value, str)


def _is_str_list(value: object) -> bool:
    return isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)


def _is_str_map(value: object) -> bool:
    return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
