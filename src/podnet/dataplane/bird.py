"""Running BIRD 2 for one node: write its config, start it, reload it only on change, read its status.

``BirdManager(config_dir, netns)`` owns three files in ``config_dir``: ``bird.conf`` (the rendered
text of :func:`podnet.calc.bird.render_bird_config`), ``bird.ctl`` (the control socket) and
``bird.pid``. ``apply(text)`` is the one verb the agent needs::

    text == bird.conf and BIRD answers   → "unchanged"   (nothing is written, nothing reloaded)
    BIRD answers                         → write bird.conf.new, "configure check" it over the socket;
                                           an error keeps the old file and BIRD as they were and
                                           raises BirdError; else rename over bird.conf and
                                           "configure" → "reconfigured"
    BIRD is not running                  → "bird -p" parse check, rename, start → "started"

BIRD runs in the foreground (``bird -f``) as a child of the caller, in its own session, in the
node's namespace (``ip netns exec NAME`` or ``nsenter --net=PATH``): no daemon fork escapes, and the
pid (plus its start time) is known at once. A ``spawn`` callable can replace the default launcher,
so the lab starts BIRD with :func:`podnet.lab.netns.spawn` and records it like every lab process.
A BIRD left running by a previous manager (an agent restart) is adopted through the pid file when
that process's command line names our control socket.

Reloads keep sessions: BIRD 2 restarts a protocol only when its own options change; a changed
filter (a new local block, a new pool) is applied with a route refresh, and the rendered text keeps
every peering's block independent of the others. Restarts keep routes: the kernel protocol has
``persist`` and ``graceful restart``; ``stop(graceful=True)`` sends ``graceful restart`` (BIRD exits
without telling its peers, who keep its routes as stale for the graceful restart time), and
``start`` runs ``bird -R`` (graceful restart recovery: no kernel sync until the peers are back)
whenever routes of a previous BIRD (``proto bird``) are still in the kernel table.

The control socket speaks BIRD's line protocol (``show protocols all`` answered by ``1002-``/
``1006-`` lines, ending in a line whose code is followed by a space); :class:`BirdControl` talks it
directly (no ``birdc`` process) and returns text as ``birdc`` prints it, which
:func:`podnet.calc.bird.parse_protocols` reads.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from podnet.calc.bird import parse_protocols
from podnet.dataplane.errors import DataplaneError

log = logging.getLogger(__name__)

RTPROT_BIRD = 12
BIRD = "bird"
CONFIG_FILE = "bird.conf"
SOCKET_FILE = "bird.ctl"
PID_FILE = "bird.pid"
LOG_FILE = "bird.log"


class BirdError(DataplaneError):
    """BIRD refused a command or a configuration, or could not be started or reached."""

    code = "bird"


# -- the control socket ---------------------------------------------------------------------------
@dataclass(frozen=True)
class BirdReply:
    lines: list[tuple[int, str]]  # (code, text) per line; continuation lines carry the code before

    @property
    def code(self) -> int:
        """The code of the last line (0 ok, 1-999 ok with a message, 8000+ / 9000+ errors)."""
        return self.lines[-1][0] if self.lines else 0

    @property
    def ok(self) -> bool:
        return self.code < 8000

    @property
    def text(self) -> str:
        """The reply as ``birdc`` prints it (codes stripped)."""
        return "\n".join(t for _, t in self.lines) + "\n"


class BirdControl:
    """One command per connection to BIRD's control socket (``birdc -s PATH CMD``, without birdc)."""

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout

    def command(self, cmd: str) -> BirdReply:
        """Send ``cmd`` and return the full reply; raises :class:`BirdError` if BIRD cannot be reached."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                sock.connect(self.path)
                stream = sock.makefile("rwb")
                hello = stream.readline()
                if not hello.startswith(b"0001 "):
                    raise BirdError(f"unexpected greeting from BIRD at {self.path}: {hello!r}")
                stream.write(cmd.encode() + b"\n")
                stream.flush()
                return BirdReply(self._read_reply(stream))
        except (OSError, TimeoutError) as exc:
            raise BirdError(
                f"cannot talk to BIRD at {self.path}: {exc}", hint="is BIRD running? (podnet node status)"
            ) from exc

    @staticmethod
    def _read_reply(stream: Any) -> list[tuple[int, str]]:
        lines: list[tuple[int, str]] = []
        code = 0
        while True:
            raw = stream.readline()
            if not raw:
                raise BirdError("BIRD closed the control connection in the middle of a reply")
            line = raw.decode(errors="replace").rstrip("\n")
            if len(line) >= 5 and line[:4].isdigit() and line[4] in "- ":
                code = int(line[:4])
                lines.append((code, line[5:]))
                if line[4] == " ":
                    return lines
            elif line.startswith(" "):  # continuation: same code as the line before
                lines.append((code, line[1:]))
            else:
                lines.append((code, line))

    def check(self, cmd: str) -> BirdReply:
        """Like :meth:`command`, raising :class:`BirdError` on an error reply."""
        reply = self.command(cmd)
        if not reply.ok:
            raise BirdError(f"BIRD refused {cmd!r}: {reply.text.strip()}")
        return reply

    def alive(self) -> bool:
        try:
            return self.command("show status").ok
        except BirdError:
            return False


def show_protocols(socket_path: str) -> list[dict]:
    """``show protocols all`` over the socket, parsed (see :func:`podnet.calc.bird.parse_protocols`)."""
    return parse_protocols(BirdControl(socket_path).check("show protocols all").text)


# -- processes ------------------------------------------------------------------------------------
def _start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode(errors="replace")
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0")[:-1]]
    except OSError:
        return []


def netns_command(netns: str | None, cmd: Sequence[str]) -> list[str]:
    """``cmd`` run in ``netns``: a name via ``ip netns exec``, a path via ``nsenter --net=``."""
    if netns is None:
        return list(cmd)
    if "/" in netns:
        return ["nsenter", f"--net={netns}", "--", *cmd]
    return ["ip", "netns", "exec", netns, *cmd]


SpawnFn = Callable[[list[str]], Any]
"""Starts BIRD's argv (in the manager's netns) and returns an object with ``pid`` (and optionally
``start_time``, ``popen``): e.g. a wrapper around :func:`podnet.lab.netns.spawn`."""


class BirdManager:
    """BIRD for one node: config file, process, reloads and status (see the module notes)."""

    def __init__(
        self,
        config_dir: str,
        netns: str | None = None,
        *,
        socket_path: str | None = None,
        bird: str = BIRD,
        log_path: str | None = None,
        spawn: SpawnFn | None = None,
        kernel_table: int = 254,
        start_timeout: float = 10.0,
    ) -> None:
        self.config_dir = config_dir
        self.netns = netns
        self.config_path = os.path.join(config_dir, CONFIG_FILE)
        self.socket_path = socket_path or os.path.join(config_dir, SOCKET_FILE)
        self.pid_path = os.path.join(config_dir, PID_FILE)
        self.log_path = log_path or os.path.join(config_dir, LOG_FILE)
        self.bird = bird
        self.spawn_fn = spawn
        self.kernel_table = kernel_table
        self.start_timeout = start_timeout
        self.control = BirdControl(self.socket_path)
        self.pid: int | None = None
        self.start_time: int | None = None
        self._popen: subprocess.Popen | None = None

    # -- state ----------------------------------------------------------------------------------
    def _ours(self, pid: int) -> bool:
        """``pid`` is a BIRD serving our control socket (not a reused pid)."""
        cmd = _cmdline(pid)
        return bool(cmd) and os.path.basename(cmd[0]).startswith("bird") and self.socket_path in cmd

    def _adopt(self) -> bool:
        """Take over a running BIRD of ours from the pid file (e.g. after an agent restart)."""
        try:
            with open(self.pid_path) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            return False
        start = _start_time(pid)
        if start is None or not self._ours(pid):
            return False
        self.pid, self.start_time, self._popen = pid, start, None
        return True

    def process_alive(self) -> bool:
        if self._popen is not None and self._popen.poll() is not None:
            return False
        if self.pid is None and not self._adopt():
            return False
        assert self.pid is not None
        return _start_time(self.pid) == self.start_time

    def running(self) -> bool:
        """BIRD's process is alive and its control socket answers."""
        return self.process_alive() and self.control.alive()

    def current_config(self) -> str | None:
        try:
            with open(self.config_path) as f:
                return f.read()
        except FileNotFoundError:
            return None

    # -- the verbs ------------------------------------------------------------------------------
    def apply(self, text: str) -> str:
        """Make BIRD run ``text``: ``"unchanged"``, ``"reconfigured"`` or ``"started"``."""
        os.makedirs(self.config_dir, exist_ok=True)
        running = self.running()
        if running and self.current_config() == text:
            return "unchanged"
        new = self._write_atomic(text, rename=False)
        try:
            if running:
                reply = self.control.command(f'configure check "{new}"')
                if not reply.ok:
                    raise BirdError(
                        f"BIRD rejected the new configuration: {reply.text.strip()}",
                        hint=f"the running configuration ({self.config_path}) was kept",
                    )
            else:
                self.parse_check(new)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(new)
            raise
        previous = self.current_config()
        os.replace(new, self.config_path)
        if not running:
            self.start()
            return "started"
        reply = self.control.command(f'configure "{self.config_path}"')
        if not reply.ok:
            if previous is not None:  # the file must say what BIRD runs, or "unchanged" would lie
                self._write_atomic(previous)
            raise BirdError(f"BIRD could not apply {self.config_path}: {reply.text.strip()}")
        log.info("BIRD reconfigured: %s", reply.text.strip().splitlines()[-1])
        return "reconfigured"

    def _write_atomic(self, text: str, rename: bool = True) -> str:
        """Write ``bird.conf.new`` (synced); with ``rename``, move it over ``bird.conf``."""
        new = self.config_path + ".new"
        with open(new, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if rename:
            os.replace(new, self.config_path)
        return new

    def parse_check(self, path: str) -> None:
        """``bird -p -c PATH`` (parse only, no process left); raises :class:`BirdError` on errors."""
        proc = subprocess.run([self.bird, "-p", "-c", path], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise BirdError(f"invalid BIRD configuration {path}: {(proc.stderr or proc.stdout).strip()}")

    def recovery_needed(self) -> bool:
        """Routes of an earlier BIRD (proto bird) are in the kernel: start with ``-R``."""
        from podnet.dataplane.netlink import Netlink

        with Netlink.open(self.netns) as nl:
            return bool(nl.routes(table=self.kernel_table, protocol=RTPROT_BIRD))

    def command(self, recover: bool) -> list[str]:
        """BIRD's argv (without the netns wrapper)."""
        cmd = [self.bird, "-f", "-c", self.config_path, "-s", self.socket_path, "-P", self.pid_path]
        return [*cmd, "-R"] if recover else cmd

    def start(self) -> None:
        """Start BIRD with the current config file (no-op if it runs); waits until its socket answers."""
        if self.running():
            return
        if self.process_alive():  # alive but not answering: replace it
            self._kill()
        if self.current_config() is None:
            raise BirdError(f"no configuration at {self.config_path}", hint="apply() a rendered config first")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)  # a stale socket of a dead BIRD
        cmd = self.command(self.recovery_needed())
        if self.spawn_fn is not None:
            proc = self.spawn_fn(cmd)
            self.pid = proc.pid
            self.start_time = getattr(proc, "start_time", None) or _start_time(proc.pid)
            self._popen = getattr(proc, "popen", None)
        else:
            with open(self.log_path, "ab") as out:
                self._popen = subprocess.Popen(
                    netns_command(self.netns, cmd),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self.pid = self._popen.pid
            self.start_time = _start_time(self.pid)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if not self.process_alive():
                raise BirdError(f"BIRD exited at start: {self._log_tail()}", hint=f"see {self.log_path}")
            if self.control.alive():
                log.info("BIRD started (pid %s%s)", self.pid, ", recovering" if "-R" in cmd else "")
                return
            time.sleep(0.02)
        self._kill()
        raise BirdError(f"BIRD did not answer on {self.socket_path} within {self.start_timeout}s")

    def _log_tail(self, n: int = 5) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return " | ".join(f.read().strip().splitlines()[-n:])
        except OSError:
            return "(no log)"

    def protocols(self) -> list[dict]:
        """``show protocols all``, parsed: name, proto, state, since, info, neighbor_address, ..."""
        return show_protocols(self.socket_path)

    def stop(self, graceful: bool = False, timeout: float = 5.0) -> None:
        """Shut BIRD down (``down``), or with ``graceful`` for a restart (``graceful restart``).

        Either way the kernel keeps BIRD's routes (``persist``). SIGTERM, then SIGKILL, if BIRD
        does not exit within ``timeout``.
        """
        if not self.process_alive():
            self._forget()
            return
        with contextlib.suppress(BirdError):
            self.control.command("graceful restart" if graceful else "down")
        if not self._wait_gone(timeout):
            self._kill()
        self._forget()

    def _wait_gone(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.process_alive():
            if self._popen is None and self.pid is not None:
                with contextlib.suppress(ChildProcessError, OSError):
                    os.waitpid(self.pid, os.WNOHANG)
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def _kill(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.pid is None or _start_time(self.pid) != self.start_time:
                return
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)
            if self._wait_gone(2.0):
                return

    def _forget(self) -> None:
        if self._popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._popen.wait(timeout=1)
        self.pid = self.start_time = self._popen = None
        for path in (self.socket_path, self.pid_path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
