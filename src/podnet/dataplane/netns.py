"""Network namespace targets, and running a function inside one without moving the process.

A *netns target* is what every dataplane call takes as ``netns``:

- ``None``: the calling thread's own namespace (the agent's node namespace);
- a bare name such as ``"pn-pod-x"``: ``/run/netns/pn-pod-x`` (what ``ip netns add`` creates);
- a path such as ``/run/netns/x`` or ``/proc/PID/ns/net`` (what a container runtime hands CNI).

``run_in_netns(target, fn)`` runs ``fn`` on a short-lived helper thread that has called
``setns(fd, CLONE_NEWNET)``. On Linux ``setns`` for the network namespace changes only the calling
*thread*, so the rest of the process never leaves its namespace, even if ``fn`` raises, and no helper
process is forked. Two things are bound to the namespace current at the moment they are created and
keep it afterwards, which is all the dataplane needs:

- sockets, including netlink sockets: a netlink socket opened on the helper thread talks to that
  namespace's kernel tables from any thread, for as long as it lives (``netlink.Netlink.open``);
- ``/proc/sys/net/...`` opened by that thread: the sysctl tree shows the opening thread's namespace
  (``sysctl.py``).

Measured on this machine (kernel 6.18): a helper thread that enters a namespace and opens a socket
costs about 0.1 ms; pyroute2 0.9's own ``IPRoute(netns=...)`` forks a child process to do the same
and costs about 6-7 ms per handle (and creates the namespace if it does not exist, which we never
want).
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from typing import TypeVar

from podnet.dataplane.errors import DataplaneError, NetnsNotFound

NETNS_RUN_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000

T = TypeVar("T")

_libc = ctypes.CDLL(None, use_errno=True)


def netns_path(target: str | None) -> str | None:
    """The filesystem path of a netns target (``None`` stays ``None``: the caller's namespace)."""
    if target is None:
        return None
    if not target:
        raise ValueError("empty netns target")
    if "/" in target:
        return target
    return f"{NETNS_RUN_DIR}/{target}"


def netns_exists(target: str | None) -> bool:
    path = netns_path(target)
    return path is None or os.path.exists(path)


def _setns(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NetnsNotFound(path) from None
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise DataplaneError(f"setns({path}): {os.strerror(err)}", hint="entering a netns needs root")
    finally:
        os.close(fd)


def run_in_netns(target: str | None, fn: Callable[[], T]) -> T:
    """Call ``fn()`` inside the netns ``target`` and return its result (re-raising its exception).

    With ``target=None`` ``fn`` runs directly on the calling thread. Otherwise it runs on a fresh
    helper thread that entered the namespace; the thread ends right after, so no thread is ever left
    in a foreign namespace.
    """
    path = netns_path(target)
    if path is None:
        return fn()
    result: list[T] = []
    error: list[BaseException] = []

    def body() -> None:
        try:
            _setns(path)
            result.append(fn())
        except BaseException as exc:  # handed back to the caller's thread below
            error.append(exc)

    thread = threading.Thread(target=body, name=f"netns:{path}", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]
