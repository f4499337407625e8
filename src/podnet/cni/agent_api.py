"""The node agent's local API, spoken over a UNIX stream socket by the CNI plugin (and the lab).

Standard library only: the CNI plugin imports this module and must start in milliseconds.

Wire format: one JSON object per line each way, one request per connection.

Request (plugin → agent)::

    {"verb": "ADD" | "DEL" | "CHECK" | "GC" | "STATUS",
     "containerID": "...", "netns": "/run/netns/x" | "", "ifname": "eth0",
     "args": {"K8S_POD_NAMESPACE": "...", "K8S_POD_NAME": "...", ...},   # from CNI_ARGS
     "config": {...}}      # the plugin's network configuration as received on stdin
                           # (name, cniVersion, prevResult, runtimeConfig, ipam, mtu, ...)

Response (agent → plugin)::

    {"ok": true, "result": {...}}    # ADD: a CNI 1.1.0 result; CHECK/DEL/GC/STATUS: {}
    {"ok": false, "code": 11, "msg": "...", "details": "..."}   # CNI error codes

The plugin converts the 1.1.0 result to the cniVersion the runtime asked for.

``EXEC`` carries a whole invocation (the CNI_* environment and stdin) from the plugin's fast path,
and the agent runs the plugin's verbs on it (:mod:`podnet.cni.shim`, :mod:`podnet.agent.cni_exec`).

One verb is not a CNI verb (and not in :data:`VERBS`): ``DROPS``, asked by ``podnet monitor --type
drop``, answered by the agent's drop monitor (:mod:`podnet.agent.drops`), never by the CNI service::

    {"verb": "DROPS", "since": N, "wait": S, "limit": L}    # drops with seq > N; wait <= 30 s for one
    {"ok": true, "drops": [{"seq": 1, "time": "...Z", "node": ..., "src": ..., "srcPod": ..., ...}],
     "next": N, "missed": M}                                 # next: the ``since`` of the next request
"""

from __future__ import annotations

import json
import os
import socket

from podnet.cni.shim import DEFAULT_SOCKET, ENV_SOCKET, EXEC, read_line  # noqa: F401  (EXEC: re-exported)

VERBS = ("ADD", "DEL", "CHECK", "GC", "STATUS")
DROPS = "DROPS"  # the drop monitor's verb (not a CNI verb)
FLOWS = "FLOWS"  # the flows API's verb (agent.flows; podnet observe)
PROXY_METRICS_PORT = 8405  # the node L7 proxy's Prometheus exporter (HAProxy's PROMEX), beside the agent's


# The deletion queue (see podnet.cni.delete_queue): DELs the plugin could not hand to a stopped
# agent, drained by the agent when it starts.
DELETE_QUEUE_LOCK = "lock"
DELETE_QUEUE_SUFFIX = ".delete"


def delete_queue_entry(request: dict) -> str:
    """One entry per attachment (``<network>-<containerID>-<ifname>.delete``): a repeated DEL
    replaces the earlier one. The plugin writes under this name, an ADD looks for it."""
    network = (request.get("config") or {}).get("name", "")
    return f"{network}-{request['containerID']}-{request['ifname']}{DELETE_QUEUE_SUFFIX}"


def delete_queue_dir(agent_socket: str) -> str:
    """``/run/podnet/agent.sock`` → ``/run/podnet/delete-queue``."""
    return os.path.join(os.path.dirname(agent_socket), "delete-queue")


class AgentUnavailable(Exception):
    """The agent's socket is missing, refuses, or the agent did not answer in time."""


def socket_path(config_value: str | None = None) -> str:
    return config_value or os.environ.get(ENV_SOCKET) or DEFAULT_SOCKET


def _connect(sock: socket.socket, path: str, timeout: float) -> None:
    """Connect; a full listen queue (EAGAIN on a UNIX socket: the agent is busy with a burst of
    requests) is waited out with short pauses, up to ``timeout``."""
    import time

    deadline = time.monotonic() + timeout
    pause = 0.005
    while True:
        try:
            sock.connect(path)
            return
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise AgentUnavailable(f"podnet agent not reachable at {path}: {exc.strerror}") from exc
        except BlockingIOError as exc:
            if time.monotonic() + pause > deadline:
                why = f"podnet agent at {path} is too busy to accept: {exc.strerror}"
                raise AgentUnavailable(why) from exc
            time.sleep(pause)
            pause = min(pause * 2, 0.2)


def call(path: str, request: dict, timeout: float = 30.0) -> dict:
    """Send one request and return the agent's response object."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        _connect(sock, path, timeout)
        sock.sendall(json.dumps(request, separators=(",", ":")).encode() + b"\n")
        raw = read_line(sock)
    except TimeoutError as exc:
        raise AgentUnavailable(f"podnet agent at {path} did not answer within {timeout:g}s") from exc
    except OSError as exc:
        raise AgentUnavailable(f"podnet agent at {path}: {exc}") from exc
    finally:
        sock.close()
    if not raw:
        raise AgentUnavailable(f"podnet agent at {path} closed the connection without answering")
    return json.loads(raw)
