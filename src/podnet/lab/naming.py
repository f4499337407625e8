"""Every name the lab gives to something it creates, in one place (pure, no I/O).

One prefix (``pn-`` by default, ``pnt1a2b-`` style in tests) starts every network namespace the lab
creates, names its state directory and cgroup tree, and is carried by every lab process as the
marker argument ``--lab-prefix=<prefix>``. That is what makes ``down`` and ``clean`` exact::

    netns                        what lives there
    pn-fabric                    the "switch": bridges br0 (and br1), one port per attached host
    pn-router                    only with 2 subnets: eth0 = 10.77.0.1, eth1 = 10.77.1.1
    pn-etcd                      the cluster's etcd: eth0 = 10.77.0.2
    pn-etcd-2 … pn-etcd-N        only with --etcd-members N: the other members, eth0 = 10.77.0.(4+i)
    pn-prometheus                only with --prometheus: Prometheus, eth0 = 10.77.0.5
    pn-node-1 … pn-node-N        one per node: eth0 = 10.77.<subnet>.<10+i>
    pn-p-<ns>.<pod>-<hash>       one per pod (readable slug + a hash that makes it unique)

    /run/podnet-lab/pn/                          state dir: state.json, state.lock, logs
    /run/podnet-lab/pn/nodes/node-1/             agent.sock, cni/net.d/, log/
    /sys/fs/cgroup/unified/podnet-lab-pn/node-1/<pod-uid>    cgroup v2 tree

A prefix is a lowercase letter, 1-7 lowercase letters or digits and a final ``-``; since it has no
other dash, no lab's names can start with another lab's prefix (``pn-`` vs ``pnt1a2b-``).
Interface names inside the lab need no prefix (they live in the lab's own namespaces) but must fit
the kernel's 15 characters.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass

from podnet.errors import PodnetError

DEFAULT_PREFIX = "pn-"
RUN_ROOT = "/run/podnet-lab"
CGROUP2_ROOT = "/sys/fs/cgroup/unified"
MARKER_FLAG = "--lab-prefix"
MARKER_ENV = "PODNET_LAB_MARKER"
IFNAMSIZ = 15  # the kernel's limit, without the trailing NUL

_PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{1,7}-$")
_SLUG_RE = re.compile(r"[^a-z0-9.-]+")


class LabError(PodnetError):
    """A lab operation failed (namespace, process, cgroup, state). Lives here, the lowest lab module."""

    code = "lab"
    exit_code = 8


def check_prefix(prefix: str) -> str:
    if not _PREFIX_RE.match(prefix):
        raise LabError(
            f"bad lab prefix {prefix!r}",
            hint="a prefix is a lowercase letter, 1-7 lowercase letters or digits, and a final '-', "
            "e.g. 'pn-' or 'pnt1a2b-'",
        )
    return prefix


def link_name(name: str) -> str:
    """Return ``name`` if it is a valid interface name (≤ 15 chars, no '/', ':' or blanks)."""
    if not name or len(name) > IFNAMSIZ or any(c in name for c in "/: \t\n") or name in (".", ".."):
        raise LabError(f"bad interface name {name!r}", hint=f"at most {IFNAMSIZ} characters, no '/', ':'")
    return name


def node_name(index: int) -> str:
    """``node-1`` … (1-based)."""
    return f"node-{index}"


@dataclass(frozen=True)
class LabNames:
    """Names of one lab. ``run_root`` and ``cgroup_root`` are overridable for tests."""

    prefix: str = DEFAULT_PREFIX
    run_root: str = RUN_ROOT
    cgroup_root: str = CGROUP2_ROOT

    def __post_init__(self) -> None:
        check_prefix(self.prefix)

    @property
    def stem(self) -> str:
        """The prefix without its dash: ``pn``."""
        return self.prefix[:-1]

    # -- network namespaces ------------------------------------------------------------------
    @property
    def fabric_ns(self) -> str:
        return f"{self.prefix}fabric"

    @property
    def router_ns(self) -> str:
        return f"{self.prefix}router"

    @property
    def etcd_ns(self) -> str:
        return f"{self.prefix}etcd"

    def etcd_member_ns(self, index: int) -> str:
        """Etcd member ``index`` (1-based): member 1 is ``pn-etcd``, the others ``pn-etcd-<i>``."""
        return self.etcd_ns if index == 1 else f"{self.etcd_ns}-{index}"

    @property
    def ext_ns(self) -> str:
        """A client outside the cluster (NodePort tests, like a user's machine on the node LAN)."""
        return f"{self.prefix}ext"

    @property
    def prometheus_ns(self) -> str:
        """The lab's Prometheus server (``podnet lab up --prometheus``)."""
        return f"{self.prefix}prometheus"

    def node_ns(self, node: str) -> str:
        return f"{self.prefix}{node}"

    @property
    def pod_ns_prefix(self) -> str:
        return f"{self.prefix}p-"

    def pod_ns(self, namespace: str, name: str) -> str:
        """``pn-p-default.web-1-3f2a1c9e``: readable slug (≤ 40 chars) + 8 hex of sha1(ns/name)."""
        digest = hashlib.sha1(f"{namespace}/{name}".encode()).hexdigest()[:8]
        slug = _SLUG_RE.sub("-", f"{namespace}.{name}".lower()).strip("-.")[:40].rstrip("-.")
        return f"{self.pod_ns_prefix}{slug}-{digest}" if slug else f"{self.pod_ns_prefix}{digest}"

    def owns_netns(self, netns: str) -> bool:
        return netns.startswith(self.prefix)

    def netns_kind(self, netns: str) -> str | None:
        """``pod``, ``node``, ``router``, ``etcd``, ``ext``, ``fabric``, ``other``; None if not ours."""
        if not self.owns_netns(netns):
            return None
        rest = netns[len(self.prefix) :]
        if rest.startswith("p-"):
            return "pod"
        if rest.startswith("node-"):
            return "node"
        if rest == "etcd" or (rest.startswith("etcd-") and rest[5:].isdigit()):
            return "etcd"
        return rest if rest in ("router", "ext", "fabric") else "other"

    # -- processes ---------------------------------------------------------------------------
    @property
    def marker(self) -> str:
        """The argument every lab process gets on its command line: ``--lab-prefix=pn-``."""
        return f"{MARKER_FLAG}={self.prefix}"

    # -- files -------------------------------------------------------------------------------
    @property
    def state_dir(self) -> str:
        return os.path.join(self.run_root, self.stem)

    @property
    def state_file(self) -> str:
        return os.path.join(self.state_dir, "state.json")

    @property
    def log_dir(self) -> str:
        return os.path.join(self.state_dir, "log")

    def node_dir(self, node: str) -> str:
        return os.path.join(self.state_dir, "nodes", node)

    def agent_socket(self, node: str) -> str:
        return os.path.join(self.node_dir(node), "agent.sock")

    def cni_conf_dir(self, node: str) -> str:
        return os.path.join(self.node_dir(node), "cni", "net.d")

    def node_log_dir(self, node: str) -> str:
        return os.path.join(self.node_dir(node), "log")

    # -- cgroup v2 ---------------------------------------------------------------------------
    @property
    def cgroup_dir(self) -> str:
        return os.path.join(self.cgroup_root, f"podnet-lab-{self.stem}")

    def node_cgroup(self, node: str) -> str:
        return os.path.join(self.cgroup_dir, node)

    def pod_cgroup(self, node: str, pod_uid: str) -> str:
        if not pod_uid or "/" in pod_uid or pod_uid in (".", ".."):
            raise LabError(f"bad pod uid {pod_uid!r} for a cgroup name")
        return os.path.join(self.node_cgroup(node), pod_uid)
