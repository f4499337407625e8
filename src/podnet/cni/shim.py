"""podnet-cni's fast path: forward the raw invocation to the agent, which runs the verbs warm.

A CNI plugin is a new process per call, so its start-up is paid by every pod, and paid again by
each of N concurrent ADDs on the node's cores. Loading the verbs (``json``, ``re``, the spec module)
costs ~30 ms of CPU a call; this module loads nothing beyond C built-ins (``_json``, ``_socket``)::

    runtime ─env+stdin─▶ shim ─{"verb":"EXEC","env":{CNI_*},"stdin":"…","netns":[dev,ino],"pid":N}─▶ agent
            ◀─stdout, exit─  ◀─{"ok":true,"exit":0|1,"stdout":"…","stderr":"…"}──────────────────┘

The same fast path compiled (``forward.c``, the lab's ``podnet`` binary when a C compiler is
there) skips the interpreter's start too; it execs this module for everything else.

The agent answers with exactly what :func:`podnet.cni.plugin.run` would have printed had it run
here (:mod:`podnet.agent.cni_exec` runs it, with a direct call in place of the socket). When the
agent cannot be reached before anything was sent (not running: DEL must be queued; socket missing)
or does not know EXEC, the full plugin runs in this process, so every spec behaviour stays as
:mod:`podnet.cni.plugin` defines it; when it fails after the request was sent, the full plugin
answers code 11 ("try again later") without sending it twice.
"""

from __future__ import annotations

import _json
import _socket
import os
import sys

from podnet.cni.versions import DEFAULT_TIMEOUT_SECONDS, MAX_TIMEOUT_SECONDS

EXEC = "EXEC"
DEFAULT_SOCKET = "/run/podnet/agent.sock"  # defined here, not in agent_api (which loads json, socket)
ENV_SOCKET = "PODNET_AGENT_SOCKET"
SENT_ENV = "PODNET_CNI_SENT"  # set by forward.c: sent, no answer (why)
MALFORMED_ENV = "PODNET_CNI_MALFORMED"  # set by forward.c: sent, an answer that is not one (why)
NO_EXEC_ENV = "PODNET_CNI_NO_EXEC"  # set by forward.c: the agent does not serve EXEC


class _Decoding:
    """The context ``_json.make_scanner`` reads: the standard decoder's settings (no ``re``)."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = None  # NaN/Infinity are not JSON: the scanner raises, the full plugin reports it
    memo: dict = {}


_scan = _json.make_scanner(_Decoding())
_quote = _json.encode_basestring_ascii  # lone surrogates (undecodable bytes) survive as \udcXX


def loads(text: str) -> object:
    """One JSON document (``ValueError`` or ``TypeError`` when it is not one)."""
    start = len(text) - len(text.lstrip())
    try:
        value, end = _scan(text, start)
    except StopIteration:
        raise ValueError(f"not a JSON document at character {start}") from None
    if text[end:].strip():
        raise ValueError("extra data after the JSON document")
    return value


def dumps(doc: dict) -> str:
    """A JSON object of strings, ints, [int] lists and {str: str} objects (the EXEC request)."""
    parts = []
    for key, value in doc.items():
        if isinstance(value, str):
            encoded = _quote(value)
        elif isinstance(value, bool) or not isinstance(value, int | list | dict):
            raise TypeError(f"{key}: {type(value).__name__} is not forwarded")
        elif isinstance(value, int):
            encoded = str(value)
        elif isinstance(value, list):
            encoded = "[" + ",".join(str(int(v)) for v in value) + "]"
        else:
            encoded = "{" + ",".join(f"{_quote(k)}:{_quote(v)}" for k, v in value.items()) + "}"
        parts.append(f"{_quote(key)}:{encoded}")
    return "{" + ",".join(parts) + "}"


def _settings(stdin: str) -> tuple[str, float]:
    """The agent socket and the timeout from the network configuration (defaults when absent or
    not valid: the agent's run of the verbs then reports what is wrong)."""
    try:
        conf = loads(stdin)
    except Exception:
        conf = None
    conf = conf if isinstance(conf, dict) else {}
    path = conf.get("agent_socket")
    if not isinstance(path, str) or not path.startswith("/"):
        path = os.environ.get(ENV_SOCKET) or DEFAULT_SOCKET
    timeout = conf.get("timeout_seconds")
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not 0 < timeout <= MAX_TIMEOUT_SECONDS
    ):
        timeout = DEFAULT_TIMEOUT_SECONDS
    return path, float(timeout)


def read_line(sock: _socket.socket) -> bytes:
    """The agent's answer: bytes up to the newline that ends it, or to the end of the stream."""
    chunks = []
    while True:
        data = sock.recv(65536)
        if not data:
            break
        chunks.append(data)
        if data.endswith(b"\n"):
            break
    return b"".join(chunks)


class NotSent(Exception):
    """The request never reached the agent (so the full plugin may send it)."""


def forward(env: dict[str, str], stdin: str, path: str, timeout: float) -> dict:
    """One EXEC round trip; :class:`NotSent` if connecting failed, ``OSError``/``ValueError`` after."""
    st = os.stat("/proc/self/ns/net")
    request = dumps(
        {"verb": EXEC, "env": env, "stdin": stdin, "netns": [st.st_dev, st.st_ino], "pid": os.getpid()}
    )
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError as exc:  # missing, refused, or a full listen queue: the full plugin handles each
            raise NotSent(str(exc)) from None
        sock.sendall(request.encode("utf-8", "surrogateescape") + b"\n")
        answer = read_line(sock)
    finally:
        sock.close()
    if not answer:
        raise ConnectionResetError("closed the connection without answering")
    response = loads(answer.decode("utf-8", "surrogateescape"))
    if not isinstance(response, dict):
        raise ValueError("the agent's answer is not an object")
    return response


def _full_plugin(
    env: dict[str, str], data: bytes, failure: str | None = None, malformed: bool = False
) -> int:
    """The verbs in this process. ``failure``: the request was sent and got no answer (code 11,
    try again) or, ``malformed``, an answer that is not one (code 999, as the plugin's own call)."""
    import io

    from podnet.cni import plugin

    call = plugin.call_agent
    if failure is not None:

        def call(socket: str, request: dict, timeout: float) -> object:
            if malformed:
                raise plugin.CNIError(
                    plugin.ERR_INTERNAL, f"podnet agent at {socket} sent a malformed response", failure
                )
            raise plugin.api.AgentUnavailable(f"podnet agent at {socket}: {failure}")

    return plugin.run(env, io.BytesIO(data), sys.stdout, sys.stderr, call=call, netns=plugin.own_netns())


def main() -> int:
    """Every verb but VERSION (:func:`podnet.cni.main.main`): forwarded, else the full plugin here."""
    env = dict(os.environ)
    if not env.get("CNI_COMMAND"):
        return _full_plugin(env, b"")  # the spec's error, with what this plugin is
    data = sys.stdin.buffer.read()
    # The compiled front (podnet/cni/forward.c) sent the request and got no usable answer.
    if env.get(SENT_ENV):
        return _full_plugin(env, data, env[SENT_ENV])
    if env.get(MALFORMED_ENV):
        return _full_plugin(env, data, env[MALFORMED_ENV], malformed=True)
    if env.get(NO_EXEC_ENV):  # forward.c found an agent without EXEC
        return _full_plugin(env, data)
    stdin = data.decode("utf-8", "surrogateescape")
    path, timeout = _settings(stdin)
    forwarded = {k: v for k, v in env.items() if k.startswith("CNI_") or k == ENV_SOCKET}
    try:
        response = forward(forwarded, stdin, path, timeout)
    except NotSent:
        return _full_plugin(env, data)
    except TimeoutError:
        return _full_plugin(env, data, f"did not answer within {timeout:g}s")
    except OSError as exc:  # the connection broke after the request went out
        return _full_plugin(env, data, str(exc))
    except Exception as exc:  # an answer that is not a JSON object
        return _full_plugin(env, data, f"{type(exc).__name__}: {exc}", malformed=True)
    code = response.get("exit")
    if not isinstance(code, int) or isinstance(code, bool):  # an agent without EXEC: not served
        return _full_plugin(env, data)
    out, err = response.get("stdout"), response.get("stderr")
    if isinstance(err, str) and err:
        sys.stderr.write(err)
    if isinstance(out, str):
        sys.stdout.write(out)
    return code
