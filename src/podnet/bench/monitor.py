"""A kernel event monitor for the benches: ``ip monitor route`` or ``nft monitor rules`` running in
one node's namespace, each line time-stamped as it is read, and waiters woken when it matters."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


class LineMonitor:
    """Runs ``cmd`` in ``netns`` (None: here); a subclass says what a line means (``parse``) and
    how to keep it (``record``, called with the lock held and the line's ``time.perf_counter()``)."""

    def __init__(self, netns: str | None, cmd: Sequence[str]) -> None:
        self.netns = netns
        self.cond = threading.Condition()
        argv = ["ip", "netns", "exec", netns, *cmd] if netns else list(cmd)
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def parse(self, line: str) -> Any:
        """What the line is about, or None to ignore it."""
        raise NotImplementedError

    def record(self, item: Any, at: float) -> None:
        raise NotImplementedError

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            now = time.perf_counter()
            item = self.parse(line)
            if item is not None:
                with self.cond:
                    self.record(item, now)
                    self.cond.notify_all()

    def wait_until(self, found: Callable[[], T | None], timeout: float) -> T | None:
        """``found()`` (called with the lock held) once it is not None; None after ``timeout`` or
        when the monitor has exited."""
        deadline = time.perf_counter() + timeout
        with self.cond:
            while True:
                hit = found()
                if hit is not None:
                    return hit
                left = deadline - time.perf_counter()
                if left <= 0 or self.proc.poll() is not None:
                    return None
                self.cond.wait(min(left, 0.5))

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
