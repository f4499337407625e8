"""Namespace-aware sysctls: read and write ``/proc/sys`` as seen from a given network namespace.

``/proc/sys/net`` shows the network namespace of the *thread* that opens the file, so writing a
sysctl "in" a namespace means opening the file on a thread that has entered it. ``write_many`` does
all the writes of one namespace on one helper thread (``netns.run_in_netns``): the four per-interface
settings of a Calico workload cost one thread start (~0.1 ms), not four. With ``netns=None`` the
files are written directly from the calling thread.

Keys are given either dotted (``net.ipv4.ip_forward``) or as a path below ``/proc/sys``
(``net/ipv4/conf/vxlan.calico/forwarding``). Interface names may contain dots, so per-interface keys
are best built with ``iface_key(ifname, setting)``, which returns the unambiguous path form.
"""

from __future__ import annotations

import errno
from collections.abc import Mapping

from podnet.dataplane.errors import kernel_error
from podnet.dataplane.netns import run_in_netns

PROC_SYS = "/proc/sys"

#: What the node namespace needs for pods to be reachable at all (routing between veths).
NODE_SYSCTLS: dict[str, str] = {"net/ipv4/ip_forward": "1"}


def iface_key(ifname: str, setting: str, family: str = "ipv4") -> str:
    """``net/<family>/conf/<ifname>/<setting>``, e.g. ``iface_key("cali12", "proxy_arp")``."""
    if not ifname or "/" in ifname or ifname in (".", ".."):
        raise ValueError(f"invalid interface name {ifname!r}")
    return f"net/{family}/conf/{ifname}/{setting}"


def _path(key: str) -> str:
    rel = key if "/" in key else key.replace(".", "/")
    rel = rel.lstrip("/")
    if rel.startswith("proc/sys/"):
        rel = rel[len("proc/sys/") :]
    if ".." in rel.split("/"):
        raise ValueError(f"invalid sysctl key {key!r}")
    return f"{PROC_SYS}/{rel}"


def _write_all(items: list[tuple[str, str]], netns: str | None) -> None:
    for key, value in items:
        path = _path(key)
        try:
            with open(path, "w") as f:
                f.write(value)
        except OSError as exc:
            raise kernel_error(f"write sysctl {key}={value}", exc.errno or errno.EIO, netns=netns) from exc


def write_many(values: Mapping[str, str | int], netns: str | None = None) -> None:
    """Write several sysctls in ``netns`` (``None``: the caller's), in order, stopping at the first error."""
    items = [(k, str(v)) for k, v in values.items()]
    if items:
        run_in_netns(netns, lambda: _write_all(items, netns))


def write(key: str, value: str | int, netns: str | None = None) -> None:
    write_many({key: value}, netns)


def read_many(keys: list[str], netns: str | None = None) -> dict[str, str]:
    def body() -> dict[str, str]:
        out = {}
        for key in keys:
            try:
                with open(_path(key)) as f:
                    out[key] = f.read().strip()
            except OSError as exc:
                raise kernel_error(f"read sysctl {key}", exc.errno or errno.EIO, netns=netns) from exc
        return out

    return run_in_netns(netns, body)


def read(key: str, netns: str | None = None) -> str:
    return read_many([key], netns)[key]
