"""The one place that knows how podnet lays out its keys in the datastore.

    <root>resources/<type>/<name>                 cluster-scoped resource (Node, IPPool, ...)
    <root>resources/<type>/<namespace>/<name>     namespaced resource (Pod, NetworkPolicy, ...)
    <root>ipam/blocks/<cidr>                      an IPAM block, "10.244.0.64-26"
    <root>ipam/affinities/<node>/<cidr>           a node's claim on a block
    <root>ipam/handles/<handle>                   the addresses held by one handle
    <root>ipam/config                             the IPAM configuration singleton
    <root>endpoints/<node>/<containerID>.<ifname>  a pod interface wired by a node's agent
    <root>status/policy/<node>                    what a node's agent last did with NetworkPolicy
    <root>identities/id/<number>                  a security identity's labels (identity_alloc)
    <root>identities/labels/<digest>              a label set's identity number
    <root>identities/refs/<number>/<node>         a node using that identity

``<type>`` is the resource type's stable ``key_name`` (``ippools.projectcalico.org``).
``<root>`` defaults to ``/podnet/`` so several clusters can share one etcd (``PODNET_ETCD_PREFIX``).
Values are JSON.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

DEFAULT_ROOT = "/podnet/"


def cidr_to_token(cidr: str) -> str:
    """``10.0.0.64/26`` → ``10.0.0.64-26`` (``/`` is the key separator; IPv6 ``:`` is kept)."""
    return str(ipaddress.ip_network(cidr)).replace("/", "-")


def token_to_cidr(token: str) -> str:
    addr, _, length = token.rpartition("-")
    return f"{addr}/{length}"


@dataclass(frozen=True)
class KeyLayout:
    root: str = DEFAULT_ROOT

    @classmethod
    def from_env(cls) -> KeyLayout:
        root = os.environ.get("PODNET_ETCD_PREFIX", DEFAULT_ROOT)
        return cls(root if root.endswith("/") else root + "/")

    # -- resources -------------------------------------------------------------------------
    def resources_prefix(self) -> str:
        return f"{self.root}resources/"

    def resource_type_prefix(self, type_key: str, namespace: str | None = None) -> str:
        base = f"{self.root}resources/{type_key}/"
        return f"{base}{namespace}/" if namespace else base

    def resource(self, type_key: str, name: str, namespace: str | None = None) -> str:
        return f"{self.resource_type_prefix(type_key, namespace)}{name}"

    def parse_resource(self, key: str) -> tuple[str, str | None, str]:
        """Inverse of :meth:`resource`: ``(type_key, namespace or None, name)``."""
        rest = key.removeprefix(self.resources_prefix()).split("/")
        if len(rest) == 2:
            return rest[0], None, rest[1]
        if len(rest) == 3:
            return rest[0], rest[1], rest[2]
        raise ValueError(f"not a resource key: {key}")

    # -- IPAM ------------------------------------------------------------------------------
    def ipam_prefix(self) -> str:
        return f"{self.root}ipam/"

    def blocks_prefix(self) -> str:
        return f"{self.root}ipam/blocks/"

    def block(self, cidr: str) -> str:
        return f"{self.blocks_prefix()}{cidr_to_token(cidr)}"

    def affinities_prefix(self, node: str | None = None) -> str:
        base = f"{self.root}ipam/affinities/"
        return f"{base}{node}/" if node else base

    def affinity(self, node: str, cidr: str) -> str:
        return f"{self.affinities_prefix(node)}{cidr_to_token(cidr)}"

    def handles_prefix(self) -> str:
        return f"{self.root}ipam/handles/"

    def handle(self, handle_id: str) -> str:
        return f"{self.handles_prefix()}{handle_id}"

    def ipam_config(self) -> str:
        return f"{self.root}ipam/config"

    # -- endpoints (pod interfaces wired by the agents) -------------------------------------
    def endpoints_prefix(self, node: str | None = None) -> str:
        base = f"{self.root}endpoints/"
        return f"{base}{node}/" if node else base

    def endpoint(self, node: str, container_id: str, ifname: str) -> str:
        return f"{self.endpoints_prefix(node)}{container_id}.{ifname}"

    # -- status (written by the agents, read by the CLI; never an input of calculation) -------
    def status_prefix(self) -> str:
        return f"{self.root}status/"

    def policy_status(self, node: str) -> str:
        return f"{self.root}status/policy/{node}"

    def policy_status_prefix(self) -> str:
        return f"{self.root}status/policy/"

    # -- identities (datastore.identity_alloc: Cilium's kvstore allocator) -------------------
    def identities_prefix(self) -> str:
        return f"{self.root}identities/id/"

    def identity(self, number: int) -> str:
        return f"{self.identities_prefix()}{number}"

    def identity_labels(self, digest: str) -> str:
        return f"{self.root}identities/labels/{digest}"

    def identity_refs_prefix(self) -> str:
        return f"{self.root}identities/refs/"

    def identity_ref(self, number: int, node: str) -> str:
        """``node``'s reference to ``number`` (``node=""``: the prefix of the number's references)."""
        return f"{self.identity_refs_prefix()}{number}/{node}"
