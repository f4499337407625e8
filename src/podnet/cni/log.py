"""A tiny logger for podnet-cni: stderr or the config's ``log_file``, never stdout.

stdout carries exactly one JSON document (the protocol); the runtime copies the plugin's stderr into
its own log. The standard ``logging`` package would cost more start-up time than the whole plugin.
"""

from __future__ import annotations

import os
import sys
import time

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


class Log:
    """Lines of ``time level podnet-cni[pid] context: message``, filtered by level."""

    def __init__(
        self, level: str = "info", path: str | None = None, stream: object = None, pid: int | None = None
    ) -> None:
        self.threshold = _LEVELS.get(level, 20)
        self.path = path
        self.stream = stream if stream is not None else sys.stderr
        self.context = ""
        self.pid = pid or os.getpid()  # the plugin process's, also when the agent serves it

    def configure(self, level: str, path: str | None) -> None:
        self.threshold = _LEVELS.get(level, self.threshold)
        self.path = path

    def log(self, level: str, message: str) -> None:
        if _LEVELS[level] < self.threshold:
            return
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        line = f"{stamp} {level.upper()} podnet-cni[{self.pid}] {self.context}{message}\n"
        if self.path:
            try:
                # backslashreplace: CNI_* values that were not UTF-8 arrive as lone surrogates.
                with open(self.path, "a", encoding="utf-8", errors="backslashreplace") as handle:
                    handle.write(line)
                return
            except OSError as exc:
                line += f"(log_file {self.path} not writable: {exc.strerror})\n"
        try:
            self.stream.write(line)  # type: ignore[attr-defined]
            self.stream.flush()  # type: ignore[attr-defined]
        except (OSError, ValueError):
            pass  # a closed stderr must not turn a result into a failure

    def debug(self, message: str) -> None:
        self.log("debug", message)

    def info(self, message: str) -> None:
        self.log("info", message)

    def warning(self, message: str) -> None:
        self.log("warning", message)

    def error(self, message: str) -> None:
        self.log("error", message)
