"""Network namespace targets, and running code or a command inside one without moving the process.

The one netns helper module of podnet (the lab's ``podnet.lab.netns`` adds creating namespaces,
processes and cgroups on top of it). A *netns target* is what every call takes as ``netns``:

- ``None``: the calling thread's own namespace (the agent's node namespace);
- a bare name such as ``"pn-pod-x"``: ``/run/netns/pn-pod-x`` (what ``ip netns add`` creates);
- a path such as ``/run/netns/x`` or ``/proc/PID/ns/net`` (what a container runtime hands CNI).

On Linux ``setns(fd, CLONE_NEWNET)`` changes only the calling *thread*; everything here builds on it:

- ``run_in_netns(target, fn)`` calls ``fn`` on a short-lived helper thread that entered the
  namespace, so the rest of the process never leaves its namespace, even if ``fn`` raises, and no
  helper process is forked. ``run_in_netns(target, cmd)`` runs a command the same way: the child is
  forked by that thread and inherits its namespace (and this process's mounts, so bpffs pins stay
  visible: ``ip netns exec`` would remount ``/sys``). Use ``ip netns exec`` only where a process
  must see the namespace's own ``/sys`` (the lab's long-lived processes, ``podnet.lab.netns.spawn``).
- ``in_netns(target)`` moves the *current* thread for the duration of a block and back
  (``probe_matrix`` visits many namespaces on one thread); ``enter_netns`` moves it for good (a
  single-purpose process such as the etcd proxy).

Two things are bound to the namespace current at the moment they are created and keep it afterwards,
which is all the dataplane needs:

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

import contextlib
import ctypes
import os
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar, overload

from podnet.dataplane.errors import DataplaneError, NetnsNotFound

NETNS_RUN_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
COMMAND_TIMEOUT = 30.0  # seconds a command run by run_in_netns may take unless told otherwise

T = TypeVar("T")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = (ctypes.c_int, ctypes.c_int)


@overload
def netns_path(target: str) -> str: ...
@overload
def netns_path(target: None) -> None: ...
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


def setns(fd: int, nstype: int = CLONE_NEWNET) -> None:
    """``setns(2)`` for the calling thread (Python 3.11 has no ``os.setns``); OSError on failure."""
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def enter_netns(target: str) -> None:
    """Move the current thread into the namespace for good (NetnsNotFound if there is none)."""
    path = netns_path(target)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NetnsNotFound(path) from None
    try:
        setns(fd)
    except OSError as exc:
        raise DataplaneError(f"setns({path}): {exc.strerror}", hint="entering a netns needs root") from None
    finally:
        os.close(fd)


@contextlib.contextmanager
def in_netns(target: str | None) -> Iterator[None]:
    """Run the block with the current thread in the namespace (``None``: stay where we are)."""
    if target is None:
        yield
        return
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        enter_netns(target)
        try:
            yield
        finally:
            setns(own)  # if this fails the thread is stranded: let the error propagate
    finally:
        os.close(own)


@overload
def run_in_netns(target: str | None, fn: Callable[[], T], /) -> T: ...
@overload
def run_in_netns(
    target: str | None,
    cmd: Sequence[str],
    /,
    *,
    timeout: float | None = COMMAND_TIMEOUT,
    check: bool = False,
    **kwargs: Any,
) -> subprocess.CompletedProcess[Any]: ...
def run_in_netns(target: str | None, what: Any, /, **kwargs: Any) -> Any:
    """Run ``what`` inside the netns ``target`` and return its result (re-raising its exception).

    ``what`` is a function (called with no arguments; its return value is returned) or a command
    (an argument list, run by ``subprocess.run`` with ``kwargs``; output is captured as text unless
    ``capture_output``/``text`` say otherwise, ``timeout`` defaults to 30 s, ``check`` to False).
    With ``target=None`` it runs directly on the calling thread. Otherwise it runs on a fresh helper
    thread that entered the namespace; the thread ends right after, so no thread is ever left in a
    foreign namespace.
    """
    if callable(what):
        if kwargs:
            raise TypeError("run_in_netns: keyword arguments are for commands, not functions")
        fn = what
    else:
        fn = _command(what, kwargs)
    path = netns_path(target)
    if path is None:
        return fn()
    result: list[Any] = []
    error: list[BaseException] = []

    def body() -> None:
        try:
            enter_netns(path)
            result.append(fn())
        except BaseException as exc:  # handed back to the caller's thread below
            error.append(exc)

    thread = threading.Thread(target=body, name=f"netns:{path}", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def _command(cmd: Sequence[str], kwargs: dict[str, Any]) -> Callable[[], subprocess.CompletedProcess[Any]]:
    if isinstance(cmd, str):
        raise TypeError("run_in_netns: a command is an argument list, not a string")
    argv = list(cmd)
    kwargs.setdefault("timeout", COMMAND_TIMEOUT)
    kwargs.setdefault("check", False)
    if "stdout" not in kwargs and "stderr" not in kwargs:
        kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    return lambda: subprocess.run(argv, **kwargs)


def join_cgroup(cgroup: str | None):
    """A ``preexec_fn`` that moves the child into ``cgroup`` (None: stays where it is) before it
    execs: a process must join its pod's cgroup before it enters the pod's network namespace
    (``ip netns exec`` remounts /sys), so that cgroup eBPF programs see its sockets."""
    if cgroup is None:
        return None
    path = os.path.join(cgroup, "cgroup.procs").encode()

    def preexec() -> None:  # runs in the child between fork and exec: plain syscalls only
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, b"0")  # "0" moves the writing process itself
        finally:
            os.close(fd)

    return preexec
