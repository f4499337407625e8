"""Test harness for podnet's CNI code (imported by the unit and the integration CNI tests).

* :func:`exec_plugin` runs the real ``podnet-cni`` executable the way a container runtime does:
  env + stdin in, stdout out (:class:`Outcome` insists stdout is one JSON document or nothing).
* :func:`write_fake_plugin` writes small real plugin executables that record their calls.
* :class:`FakeAgent` is a real UNIX-socket server speaking ``podnet.cni.agent_api``'s wire format.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import pytest

PLUGIN = os.path.join(os.path.dirname(sys.executable), "podnet-cni")  # the console script (Python)
# What exec_plugin runs: PLUGIN, or the lab's compiled front (see :func:`plugin_variants`).
ACTIVE = {"plugin": PLUGIN}


def plugin_variants(tmp_dir: str) -> dict[str, str]:
    """The plugin executables to run every test against: the Python console script, and the
    compiled front (``podnet/cni/forward.c``, as the lab installs it) when a C compiler is there."""
    from podnet.lab.cni_runtime import install_podnet_plugin

    variants = {"python": PLUGIN}
    path = install_podnet_plugin(tmp_dir, "podnet")
    with open(path, "rb") as handle:
        if not handle.read(2).startswith(b"#!"):
            variants["compiled"] = path
    return variants


ATTACHMENT_ENV = {
    "CNI_CONTAINERID": "0123456789abcdef",
    "CNI_NETNS": "/run/netns/test-pod",
    "CNI_IFNAME": "eth0",
    "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;"
    "K8S_POD_INFRA_CONTAINER_ID=0123456789abcdef;K8S_POD_UID=8d3b2c4e-1f2a-4b5c-9d6e-7f8a9b0c1d2e",
    "CNI_PATH": "/opt/cni/bin",
}
REQUIRED = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
    "GC": ("CNI_PATH",),
    "STATUS": ("CNI_PATH",),
}


class Outcome:
    """What the runtime sees: exit status, stdout (one JSON document or nothing), stderr."""

    def __init__(self, proc: subprocess.CompletedProcess) -> None:
        self.rc = proc.returncode
        self.stdout = proc.stdout.decode()
        self.stderr = proc.stderr.decode()
        # The whole of stdout must be one JSON document (or empty): json.loads refuses trailing data.
        self.doc = json.loads(self.stdout) if self.stdout.strip() else None

    @property
    def code(self) -> int | None:
        return self.doc.get("code") if isinstance(self.doc, dict) else None

    @property
    def text(self) -> str:
        return f"{self.doc.get('msg', '')} {self.doc.get('details', '')}" if self.doc else ""

    def __repr__(self) -> str:
        return f"Outcome(rc={self.rc}, stdout={self.stdout!r}, stderr={self.stderr[-300:]!r})"


def base_env(command: str | None, extra: dict[str, str | None] | None = None) -> dict[str, str]:
    """A runtime-like environment: PATH plus the CNI variables this command needs."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    for key in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX"):
        if key in os.environ:
            env[key] = os.environ[key]
    if command:
        env["CNI_COMMAND"] = command
        for var in REQUIRED.get(command, ()):
            env[var] = ATTACHMENT_ENV[var]
        if command in ("ADD", "CHECK", "DEL"):
            env["CNI_ARGS"] = ATTACHMENT_ENV["CNI_ARGS"]
    for key, value in (extra or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def exec_plugin(env: dict[str, str], stdin: bytes, timeout: float = 30.0) -> Outcome:
    return Outcome(
        subprocess.run([ACTIVE["plugin"]], input=stdin, env=env, capture_output=True, timeout=timeout)
    )


# ------------------------------------------------------------------------------ fake plugins
#
# Small real executables for the runtime tests: each records its environment and stdin, then
# behaves as its JSON behaviour file (next to it, re-read on every run) says.

FAKE_PLUGIN = """#!{python} -S
import json, os, sys, time
path = os.path.abspath(__file__)
with open(path + ".json") as f:
    behaviour = json.load(f)
command = os.environ.get("CNI_COMMAND", "")
stdin = sys.stdin.read()
env = {{k: v for k, v in os.environ.items() if k.startswith(("CNI_", "FAKE_"))}}
call = {{"plugin": os.path.basename(path), "command": command, "env": env, "stdin": stdin}}
with open(behaviour["record"], "a") as f:
    f.write(json.dumps(call) + "\\n")
if behaviour.get("sleep"):
    time.sleep(behaviour["sleep"])
error = behaviour.get("errors", {{}}).get(command)
if error is not None:
    sys.stdout.write(error.get("stdout", ""))
    sys.stderr.write(error.get("stderr", ""))
    sys.exit(error.get("exit", 1))
if command == "VERSION":
    print(json.dumps({{"cniVersion": "1.1.0", "supportedVersions": behaviour["versions"]}}))
    sys.exit(0)
if command == "ADD":
    conf = json.loads(stdin)
    prev = conf.get("prevResult")
    if prev is not None:
        out = dict(prev)
        out["interfaces"] = prev.get("interfaces", []) + [{{"name": os.path.basename(path)}}]
    else:
        out = behaviour["result"]
    sys.stdout.write(json.dumps(out))
"""


def write_fake_plugin(
    bin_dir: str,
    name: str,
    record: str,
    *,
    result: dict | None = None,
    errors: dict[str, dict] | None = None,
    versions: list[str] | None = None,
    sleep: float = 0.0,
) -> str:
    """A plugin that records every call to ``record`` (JSON lines). ADD prints ``result`` when it is
    first in the chain, else its ``prevResult`` with one interface (named after it) appended;
    ``errors[COMMAND]`` = ``{"stdout", "stderr", "exit"}`` makes that command fail."""
    os.makedirs(bin_dir, exist_ok=True)
    path = os.path.join(bin_dir, name)
    with open(path, "w") as handle:
        handle.write(FAKE_PLUGIN.format(python=sys.executable))
    os.chmod(path, 0o755)
    behaviour = {
        "record": record,
        "result": result or {},
        "errors": errors or {},
        "versions": versions or ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"],
        "sleep": sleep,
    }
    with open(path + ".json", "w") as handle:
        json.dump(behaviour, handle)
    return path


def read_calls(record: str) -> list[dict]:
    """The recorded calls, with ``config`` = the parsed stdin (None for empty stdin)."""
    try:
        with open(record) as handle:
            calls = [json.loads(line) for line in handle]
    except FileNotFoundError:
        return []
    for call in calls:
        call["config"] = json.loads(call["stdin"]) if call["stdin"].strip() else None
    return calls


def plugin_error(code: int, msg: str, details: str = "") -> dict:
    """An ``errors`` entry printing the spec's error JSON on stdout."""
    return {"stdout": json.dumps({"code": code, "msg": msg, "details": details}), "exit": 1}


# ------------------------------------------------------------------------------------ fake agent


CLOSE = object()  # responder verdict: close the connection without answering


class _Verbatim(BaseException):  # BaseException: passes through the plugin's catch-all
    """A responder's CLOSE or raw bytes, met while serving an EXEC: they are the agent's answer."""

    def __init__(self, reply: object) -> None:
        self.reply = reply


class FakeAgent:
    """Accepts connections on ``path``; each request (one JSON line) is recorded in ``requests`` and
    answered with ``responder(request)``: a dict (sent as one JSON line), ``bytes`` (sent raw),
    :data:`CLOSE`, or ``("sleep", seconds, reply)``. Default: ``{"ok": true, "result": {}}``.

    As the real agent does, it serves EXEC (the plugin's fast path forwarding a whole invocation)
    by running the plugin's verbs (``podnet.agent.cni_exec``) against the same recording responder,
    so ``requests`` holds the CNI requests either way. ``serves_exec=False``: an agent that predates
    EXEC (it answers with an error, and the plugin falls back to its own verbs)."""

    def __init__(self, path: str, serves_exec: bool = True) -> None:
        self.path = path
        self.serves_exec = serves_exec
        self.exec_requests = 0
        self.requests: list[dict] = []
        self.responder: Callable[[dict], object] = lambda request: {"ok": True, "result": {}}
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(64)
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while not data.endswith(b"\n"):
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            request = json.loads(data)
            reply = self._exec(request) if request.get("verb") == "EXEC" else self._answer(request)
            if reply is CLOSE:
                return
            payload = reply if isinstance(reply, bytes) else json.dumps(reply).encode() + b"\n"
            with contextlib.suppress(OSError):  # the plugin may have given up waiting
                conn.sendall(payload)

    def _answer(self, request: dict) -> object:
        self.requests.append(request)
        reply = self.responder(request)
        if isinstance(reply, tuple) and reply[0] == "sleep":
            time.sleep(reply[1])
            reply = reply[2]
        return reply

    def _exec(self, request: dict) -> object:
        from podnet.agent import cni_exec

        self.exec_requests += 1
        if not self.serves_exec:
            return {"ok": False, "code": 4, "msg": "unknown verb 'EXEC'", "details": ""}

        def handle(inner: dict) -> dict:
            reply = self._answer(inner)
            if reply is CLOSE or isinstance(reply, bytes):
                raise _Verbatim(reply)
            return reply  # type: ignore[return-value]

        try:
            return cni_exec.serve(request, handle)
        except _Verbatim as verbatim:
            return verbatim.reply

    def close(self) -> None:
        self.closed = True
        self.sock.close()
        if os.path.exists(self.path):
            os.unlink(self.path)


# ------------------------------------------------------------------- fixtures (both conftests)


@pytest.fixture(scope="session")
def cni_plugins(tmp_path_factory) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return plugin_variants(str(tmp_path_factory.mktemp("cni-bin")))


@pytest.fixture(autouse=True, params=["python", "compiled"])
def plugin_variant(request, cni_plugins):  # type: ignore[no-untyped-def]
    """Every test of a conftest that imports this runs against the Python plugin and the
    compiled front."""
    if request.param not in cni_plugins:
        pytest.skip("no C compiler: the compiled front is not built")
    ACTIVE["plugin"] = cni_plugins[request.param]
    yield request.param
    ACTIVE["plugin"] = PLUGIN
