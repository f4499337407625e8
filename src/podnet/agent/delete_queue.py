"""Drain the deletion queue the CNI plugin fills while the agent is down (the agent's side of
:mod:`podnet.cni.delete_queue`): under an exclusive lock, each queued request is served as a DEL
and its file removed; entries that fail (e.g. etcd still unreachable) stay for the next pass."""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Callable

from podnet.agent.api import DELETE_QUEUE_LOCK, DELETE_QUEUE_SUFFIX
from podnet.agent.log import kv

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


def drain(queue_dir: str, handle: Callable[[dict], dict]) -> tuple[int, int]:
    """Serve every queued DEL; returns (done, left). Call with the exclusive lock held."""
    try:
        names = sorted(n for n in os.listdir(queue_dir) if n.endswith(DELETE_QUEUE_SUFFIX))
    except FileNotFoundError:
        return 0, 0
    done = left = 0
    for name in names:
        path = os.path.join(queue_dir, name)
        try:
            with open(path, encoding="utf-8") as f:
                request = json.load(f)
        except (OSError, ValueError) as exc:
            kv(log, logging.WARNING, "dropping unreadable queued DEL", file=path, error=str(exc))
            os.unlink(path)
            continue
        request["verb"] = "DEL"
        response = handle(request)
        if response.get("ok"):
            os.unlink(path)
            done += 1
        else:
            left += 1
            kv(
                log,
                logging.WARNING,
                "queued DEL failed; kept for later",
                file=name,
                error=response.get("msg"),
            )
    if done or left:
        kv(log, logging.INFO, "deletion queue drained", done=done, left=left)
    return done, left
