"""The verbs of podnet-cni: validate, hand the request to the node agent, answer in the spec's terms.

The plugin is thin by design: IPAM and netlink live in the agent (warm etcd and netlink connections,
one writer per node), so an ADD costs one UNIX-socket round trip (``podnet.cni.agent_api``)::

    runtime ──env+stdin──▶ podnet-cni ──{"verb","containerID","netns","ifname","args","config"}──▶ agent
            ◀──result/err── (convert)  ◀──{"ok":true,"result":<1.1.0 result>} / {"ok":false,code,msg}──

What each verb does here (the agent's side is specified in its own module):

* ADD: forward; convert the agent's 1.1.0 result to the request's version, after appending it to
  ``prevResult`` when podnet is chained behind another plugin. Refuses (code 8) a CNI_NETNS that is
  the plugin's own namespace, as ``skel`` does (``CNI_NETNS_OVERRIDE=1`` skips the check).
* DEL: forward (netns optional; the agent must succeed when everything is already gone). Agent not
  running → queue the request (:mod:`podnet.cni.delete_queue`) and succeed; agent running but not
  answering → code 11 so the runtime retries.
* CHECK: forward with ``prevResult`` (required, cniVersion ≥ 0.4.0); no output on success.
* GC: forward ``cni.dev/valid-attachments`` (normalised in the config; ``cni.dev/attachments``
  accepted too); 1.1.0 only.
* STATUS: forward; 1.1.0 only; agent not reachable → code 50 naming the socket.

Agent unreachable or timing out on ADD, CHECK or GC → code 11 ("try again later") naming the socket.
An agent error passes through with its own code; a malformed agent answer is code 999.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from io import BufferedIOBase, TextIOBase

from podnet.cni import agent_api as api
from podnet.cni import delete_queue
from podnet.cni.log import Log
from podnet.cni.spec import (
    ERR_INTERNAL,
    ERR_INVALID_NETNS,
    ERR_IO,
    ERR_NOT_AVAILABLE,
    ERR_TRY_AGAIN_LATER,
    SUPPORTED_VERSIONS,
    CNIError,
    Invocation,
    NetConf,
    config_version,
    decode_config,
    downgrade_result,
    merge_results,
    parse_config,
    parse_environment,
    upgrade_result,
    version_json,
)

ABOUT = "podnet-cni: the CNI plugin of podnet (hands every request to the node's podnet agent)"
HINT = (
    "is podnet-agent running on this node? Its socket is set by agent_socket in the CNI config, "
    f"else ${api.ENV_SOCKET}, else {api.DEFAULT_SOCKET}"
)


def build_request(verb: str, inv: Invocation, conf: NetConf) -> dict:
    """The agent request (``podnet.cni.agent_api`` format)."""
    return {
        "verb": verb,
        "containerID": inv.container_id,
        "netns": inv.netns,
        "ifname": inv.ifname,
        "args": dict(inv.args),
        "config": conf.raw,
    }


def socket_of(conf: NetConf) -> str:
    return api.socket_path(conf.agent_socket)


def interpret(response: object, socket: str) -> dict:
    """An agent response → its result, or the agent's CNI error raised as :class:`CNIError`."""
    if not isinstance(response, dict) or not isinstance(response.get("ok"), bool):
        raise CNIError(
            ERR_INTERNAL, f"podnet agent at {socket} sent a malformed response", repr(response)[:300]
        )
    if response["ok"]:
        result = response.get("result")
        if result is None:
            return {}
        if not isinstance(result, dict):
            raise CNIError(
                ERR_INTERNAL, f"podnet agent at {socket} sent a non-object result", repr(result)[:300]
            )
        return result
    code = response.get("code")
    if not isinstance(code, int) or isinstance(code, bool) or code < 0:
        raise CNIError(
            ERR_INTERNAL, f"podnet agent at {socket} sent an error without a valid code", repr(response)[:300]
        )
    msg = response.get("msg")
    details = response.get("details")
    raise CNIError(
        code,
        msg if isinstance(msg, str) and msg else f"podnet agent error {code}",
        details if isinstance(details, str) else "",
    )


def _agent_not_running(exc: api.AgentUnavailable) -> bool:
    """connect() failed (socket missing or refused), as opposed to a running agent not answering."""
    return isinstance(exc.__cause__, FileNotFoundError | ConnectionRefusedError)


# One round trip to the agent: (socket, request, timeout) -> the agent's response object. Over the
# socket in this process (:func:`call_agent`); a direct call when the verbs run in the agent itself.
Call = Callable[[str, dict, float], object]


def call_agent(socket: str, request: dict, timeout: float) -> object:
    """One round trip; an answer that is not JSON is code 999 (``AgentUnavailable`` propagates)."""
    try:
        return api.call(socket, request, timeout)
    except ValueError as exc:
        raise CNIError(
            ERR_INTERNAL, f"podnet agent at {socket} sent a malformed response", str(exc)
        ) from None


def ask_agent(
    verb: str, inv: Invocation, conf: NetConf, call: Call, unavailable_code: int = ERR_TRY_AGAIN_LATER
) -> dict:
    socket = socket_of(conf)
    try:
        response = call(socket, build_request(verb, inv, conf), conf.timeout_seconds)
    except api.AgentUnavailable as exc:
        raise CNIError(unavailable_code, str(exc), HINT) from None
    return interpret(response, socket)


def own_netns() -> tuple[int, int]:
    """(device, inode) of the network namespace this process runs in."""
    st = os.stat("/proc/self/ns/net")
    return st.st_dev, st.st_ino


def _check_netns(inv: Invocation, own: tuple[int, int] | None) -> None:
    """``skel``'s ErrInvalidNetNS: configuring the plugin's own namespace (``own``: the invoked
    process's, see :func:`own_netns`) would wire the node, not a pod."""
    if inv.netns_override or own is None:
        return
    try:
        target = os.stat(inv.netns)
    except OSError:
        return  # a missing namespace is the agent's to report, with the netlink error
    if (target.st_dev, target.st_ino) == own:
        raise CNIError(
            ERR_INVALID_NETNS,
            "plugin's netns and netns from CNI_NETNS should not be the same",
            f"CNI_NETNS={inv.netns} is the namespace podnet-cni runs in (CNI_NETNS_OVERRIDE=1 allows it)",
        )


def cmd_add(inv: Invocation, conf: NetConf, log: Log, call: Call, netns: tuple[int, int] | None) -> dict:
    _check_netns(inv, netns)
    result = ask_agent("ADD", inv, conf, call)
    try:
        own = upgrade_result(result, where="result")
    except CNIError as exc:
        raise CNIError(
            ERR_INTERNAL, f"podnet agent at {socket_of(conf)} sent an invalid ADD result", exc.msg
        ) from None
    if conf.prev_result is not None:
        own = merge_results(conf.prev_result, own)
    return downgrade_result(own, conf.cni_version)


def cmd_del(inv: Invocation, conf: NetConf, log: Log, call: Call, netns: tuple[int, int] | None) -> None:
    socket = socket_of(conf)
    request = build_request("DEL", inv, conf)
    try:
        response = call(socket, request, conf.timeout_seconds)
    except api.AgentUnavailable as exc:
        if not _agent_not_running(exc):
            raise CNIError(ERR_TRY_AGAIN_LATER, str(exc), HINT) from None
        response = _queue_delete(socket, request, conf, log, call, exc)
        if response is None:
            return None
    interpret(response, socket)
    return None


def _queue_delete(
    socket: str, request: dict, conf: NetConf, log: Log, call: Call, first: api.AgentUnavailable
) -> object:
    """The agent is not running: queue the DEL (see :mod:`podnet.cni.delete_queue`).

    Returns the agent's response if it came up while we waited for the queue lock, else None.
    """
    queue_dir = conf.delete_queue_dir or delete_queue.default_dir(socket)
    try:
        with delete_queue.SharedLock(queue_dir, min(delete_queue.LOCK_TIMEOUT_SECONDS, conf.timeout_seconds)):
            try:
                response = call(socket, request, conf.timeout_seconds)
                log.info("the agent came up while waiting for the deletion queue lock: DEL delivered")
                return response
            except api.AgentUnavailable as exc:
                if not _agent_not_running(exc):
                    raise CNIError(ERR_TRY_AGAIN_LATER, str(exc), HINT) from None
            path = delete_queue.enqueue(queue_dir, request)
    except (OSError, TimeoutError) as exc:
        raise CNIError(
            ERR_TRY_AGAIN_LATER,
            f"{first}; and the deletion could not be queued in {queue_dir}: {exc}",
            HINT,
        ) from None
    log.warning(f"{first}: DEL queued as {path}; the agent releases it when it starts")
    return None


def cmd_check(inv: Invocation, conf: NetConf, log: Log, call: Call, netns: tuple[int, int] | None) -> None:
    ask_agent("CHECK", inv, conf, call)
    return None


def cmd_gc(inv: Invocation, conf: NetConf, log: Log, call: Call, netns: tuple[int, int] | None) -> None:
    ask_agent("GC", inv, conf, call)
    return None


def cmd_status(inv: Invocation, conf: NetConf, log: Log, call: Call, netns: tuple[int, int] | None) -> None:
    ask_agent("STATUS", inv, conf, call, unavailable_code=ERR_NOT_AVAILABLE)
    return None


VERBS = {"ADD": cmd_add, "DEL": cmd_del, "CHECK": cmd_check, "GC": cmd_gc, "STATUS": cmd_status}


def run(
    env: Mapping[str, str],
    stdin: BufferedIOBase,
    stdout: TextIOBase,
    stderr: TextIOBase,
    *,
    call: Call = call_agent,
    netns: tuple[int, int] | None = None,
    pid: int | None = None,
) -> int:
    """One invocation: exactly one JSON document (or nothing) on ``stdout``; exit code 0 or 1.

    In the plugin's process the defaults hold; the agent, serving a forwarded invocation
    (:mod:`podnet.agent.cni_exec`), passes a direct ``call``, the invoked process's ``netns``
    (:func:`own_netns`) and ``pid`` (for the log).
    """
    started = time.monotonic()
    log = Log(stream=stderr, pid=pid)
    version: str | None = None
    command = env.get("CNI_COMMAND", "")
    try:
        inv = parse_environment(env)
        log.context = f"{inv.command} {inv.container_id[:16]} {inv.ifname} ".replace("  ", " ")
        if inv.command == "VERSION":
            stdout.write(version_json() + "\n")
            return 0
        try:
            data = stdin.read()
        except OSError as exc:
            raise CNIError(ERR_IO, f"error reading from stdin: {exc}") from None
        raw = decode_config(data)
        version = config_version(raw)
        conf = parse_config(raw, inv.command)
        log.configure(conf.log_level, conf.log_file)
        for warning in conf.warnings:
            log.warning(warning)
        if netns is None and call is call_agent:
            netns = own_netns()
        result = VERBS[inv.command](inv, conf, log, call, netns)
        if result is not None:
            stdout.write(json.dumps(result) + "\n")
        pod = "/".join(filter(None, (inv.args.get("K8S_POD_NAMESPACE"), inv.args.get("K8S_POD_NAME"))))
        log.info(f"{pod + ': ' if pod else ''}ok in {(time.monotonic() - started) * 1000:.1f} ms")
        return 0
    except CNIError as exc:
        stdout.write(json.dumps(exc.to_dict(version)) + "\n")
        if not command:
            stderr.write(f"{ABOUT}\nCNI protocol versions supported: {', '.join(SUPPORTED_VERSIONS)}\n")
        log.error(f"code {exc.code}: {exc.msg}{' (' + exc.details + ')' if exc.details else ''}")
        return 1
    except Exception as exc:  # a bug: still answer in the protocol, with the traceback in the log
        import traceback

        log.error(traceback.format_exc())
        stdout.write(
            json.dumps(CNIError(ERR_INTERNAL, f"podnet-cni internal error: {exc!r}").to_dict(version)) + "\n"
        )
        return 1
