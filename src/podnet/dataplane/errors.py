"""Errors raised by the dataplane: they keep the errno and say what failed, where.

    PodnetError
    └── DataplaneError                 code "dataplane"
        ├── KernelError         a netlink request or sysctl access failed (``errno``, ``op``, ``netns``)
        │   ├── KernelExists    ... with EEXIST                        (also an AlreadyExistsError)
        │   └── KernelNotFound  ... with ENOENT/ENODEV/ESRCH/EADDRNOTAVAIL (also a NotFoundError)
        ├── NetnsNotFound       the network namespace path does not exist (also a NotFoundError)
        └── EndpointError       wiring a pod failed for a reason that is not one kernel call
            └── EndpointExists  CNI ADD found the interface already in the pod (also AlreadyExistsError)

``KernelExists`` and ``KernelNotFound`` subclass the generic podnet errors, so a caller may catch
``AlreadyExistsError`` / ``NotFoundError`` without knowing about netlink.
"""

from __future__ import annotations

import errno as errno_mod
import os

from podnet.errors import AlreadyExistsError, NotFoundError, PodnetError


class DataplaneError(PodnetError):
    code = "dataplane"
    exit_code = 8


class KernelError(DataplaneError):
    """A kernel request failed. ``errno`` is the kernel's error number, ``op`` what was asked."""

    code = "kernel"

    def __init__(
        self,
        op: str,
        err: int,
        *,
        netns: str | None = None,
        detail: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.op = op
        self.errno = err
        self.netns = netns
        name = errno_mod.errorcode.get(err, str(err))
        where = f" in netns {netns}" if netns else ""
        text = detail or os.strerror(err)
        super().__init__(f"{op}{where}: {text} ({name})", hint)


class KernelExists(KernelError, AlreadyExistsError):
    code = "kernel-exists"


class KernelNotFound(KernelError, NotFoundError):
    code = "kernel-not-found"


class NetnsNotFound(DataplaneError, NotFoundError):
    code = "netns-not-found"

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(f"network namespace {path} does not exist", hint="is the pod sandbox still running?")


class EndpointError(DataplaneError):
    code = "endpoint"


class EndpointExists(EndpointError, AlreadyExistsError):
    code = "endpoint-exists"


_NOT_FOUND = {errno_mod.ENOENT, errno_mod.ENODEV, errno_mod.ESRCH, errno_mod.EADDRNOTAVAIL}


def kernel_error(op: str, err: int, *, netns: str | None = None, detail: str | None = None) -> KernelError:
    """The ``KernelError`` subclass that fits ``err`` (EEXIST, not-found family, or the base)."""
    if err == errno_mod.EEXIST:
        return KernelExists(op, err, netns=netns, detail=detail)
    if err in _NOT_FOUND:
        return KernelNotFound(op, err, netns=netns, detail=detail)
    hint = None
    if err == errno_mod.EPERM:
        hint = "netlink writes need CAP_NET_ADMIN (run as root)"
    elif err == errno_mod.ENETUNREACH:
        hint = (
            "the gateway is not reachable through a connected route; use onlink or add the link route first"
        )
    return KernelError(op, err, netns=netns, detail=detail, hint=hint)
