"""Queued deletions: how DEL succeeds while the node agent is not running, without leaking the IP.

Why: the spec makes DEL best effort but requires the IPAM release. Failing DEL while the agent is
down blocks every pod teardown on the node (pods stuck Terminating; with a full node even the agent's
own pod may not get room: the deadlock Azure CNI's "async delete" was built for). Succeeding without
releasing leaks the address. So, after Cilium's deletion queue (``plugins/cilium-cni/lib/
deletion_queue.go``), DEL writes its request to a directory the agent drains when it starts:
deferred but durable.

Protocol (``<dir>`` defaults to ``delete-queue/`` next to the agent socket)::

    plugin (only when connect() failed: socket missing or refused)
      1. take a SHARED flock on <dir>/lock (wait up to 10 s)
      2. try the agent again      (it may have started while we waited)
      3. still down: write <dir>/<network>-<containerID>-<ifname>.delete atomically
         (the exact request the agent would have received), release the lock, exit 0
    agent at start-up
      1. take an EXCLUSIVE flock on <dir>/lock
      2. handle every *.delete as a DEL request, remove each file once done
      3. listen on the socket, then release the lock

Holding the exclusive lock from before the drain until after ``listen()`` closes the race: a plugin
that gets the shared lock either finds the socket, or its file is written before the drain starts.
A timeout talking to a *running* agent is not queued (that agent would never drain it): it is code
11 and the runtime retries. More than 256 queued entries is also code 11 (something is badly wrong).
"""

from __future__ import annotations

import fcntl
import json
import os
import time

from podnet.cni.agent_api import DELETE_QUEUE_LOCK as LOCK_NAME
from podnet.cni.agent_api import DELETE_QUEUE_SUFFIX as SUFFIX
from podnet.cni.agent_api import delete_queue_dir, delete_queue_entry

MAX_ENTRIES = 256
default_dir = delete_queue_dir  # one rule for the plugin and the agent
LOCK_TIMEOUT_SECONDS = 10.0


class SharedLock:
    """``with SharedLock(dir):`` holds a shared flock on ``dir/lock`` (creating ``dir``)."""

    def __init__(self, queue_dir: str, timeout: float = LOCK_TIMEOUT_SECONDS) -> None:
        self.queue_dir = queue_dir
        self.timeout = timeout
        self.fd = -1

    def __enter__(self) -> SharedLock:
        os.makedirs(self.queue_dir, mode=0o700, exist_ok=True)
        self.fd = os.open(os.path.join(self.queue_dir, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(self.fd)
                    raise TimeoutError(
                        f"the deletion queue {self.queue_dir} stayed locked for {self.timeout:g}s"
                    ) from None
                time.sleep(0.02)

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)  # closing drops the flock


def enqueue(queue_dir: str, request: dict) -> str:
    """Write ``request`` as a queue entry (caller holds :class:`SharedLock`); return its path."""
    entries = [n for n in os.listdir(queue_dir) if n.endswith(SUFFIX)]
    path = os.path.join(queue_dir, delete_queue_entry(request))
    if len(entries) >= MAX_ENTRIES and not os.path.exists(path):
        raise OSError(f"the deletion queue {queue_dir} already holds {len(entries)} entries")
    tmp = f"{path}.{os.getpid()}.tmp"
    entry = dict(request, queuedAt=time.time())
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(entry, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)  # the agent never sees half a file
    return path


def pending(queue_dir: str) -> list[str]:
    """The queued entries, oldest name first (for tests and diagnostics)."""
    try:
        return sorted(os.path.join(queue_dir, n) for n in os.listdir(queue_dir) if n.endswith(SUFFIX))
    except FileNotFoundError:
        return []
