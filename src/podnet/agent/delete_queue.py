"""Drain the deletion queue the CNI plugin fills while the agent is down (the agent's side of
:mod:`podnet.cni.delete_queue`): under an exclusive lock, each queued request is served as a DEL
and its file removed; entries that fail (e.g. etcd still unreachable) stay for the next pass.

A queued DEL comes before any later ADD of the same attachment (the runtime DELs, then ADDs again):
so an ADD first serves the entry of its attachment, if any (:func:`serve_queued`), and fails with
"try again later" if it cannot. Without that, an entry left by a drain that failed (the datastore
was down) was served by the next pass *after* the retried ADD had succeeded: it unwired the running
pod and released its address, free to be handed to another pod (found by ``podnet.lab.pod_churn``).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Callable

from podnet.agent.log import kv
from podnet.cni.agent_api import DELETE_QUEUE_LOCK, DELETE_QUEUE_SUFFIX, delete_queue_entry

log = logging.getLogger("podnet.agent.delete_queue")


class ExclusiveQueueLock:
    def __init__(self, queue_dir: str) -> None:
        self.queue_dir = queue_dir
        self.fd = -1

    def __enter__(self) -> ExclusiveQueueLock:
        os.makedirs(self.queue_dir, mode=0o700, exist_ok=True)
        self.fd = os.open(os.path.join(self.queue_dir, DELETE_QUEUE_LOCK), os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def _serve(path: str, handle: Callable[[dict], dict]) -> dict | None:
    """Serve one entry as a DEL, remove it once done; None when it was unreadable (dropped)."""
    try:
        with open(path, encoding="utf-8") as f:
            request = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        kv(log, logging.WARNING, "dropping unreadable queued DEL", file=path, error=str(exc))
        os.unlink(path)
        return None
    request["verb"] = "DEL"
    response = handle(request)
    if response.get("ok"):
        os.unlink(path)
    else:
        kv(
            log,
            logging.WARNING,
            "queued DEL failed; kept for later",
            file=os.path.basename(path),
            error=response.get("msg"),
        )
    return response


def serve_queued(queue_dir: str, request: dict, handle: Callable[[dict], dict]) -> dict | None:
    """Before an ADD: serve the DEL queued for the same attachment, if any (under the exclusive
    lock, so a drain pass cannot serve it after the ADD). Returns the DEL's response, None if none."""
    path = os.path.join(queue_dir, delete_queue_entry(request))
    if not os.path.exists(path):
        return None  # the common case: one stat, no lock
    with ExclusiveQueueLock(queue_dir):
        return _serve(path, handle)


def drain(queue_dir: str, handle: Callable[[dict], dict]) -> tuple[int, int]:
    """Serve every queued DEL; returns (done, left). Call with the exclusive lock held."""
    try:
        names = sorted(n for n in os.listdir(queue_dir) if n.endswith(DELETE_QUEUE_SUFFIX))
    except FileNotFoundError:
        return 0, 0
    done = left = 0
    for name in names:
        response = _serve(os.path.join(queue_dir, name), handle)
        if response is None:
            continue
        if response.get("ok"):
            done += 1
        else:
            left += 1
    if done or left:
        kv(log, logging.INFO, "deletion queue drained", done=done, left=left)
    return done, left
