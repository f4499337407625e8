"""EXEC: a CNI invocation forwarded whole by the plugin's fast path (:mod:`podnet.cni.shim`).

The agent runs the plugin's verbs (:func:`podnet.cni.plugin.run`: validation, version conversion,
``prevResult`` merging, the plugin's log) on the forwarded environment and stdin, with a direct
call to the CNI service in place of the socket round trip, and answers with what the plugin
would have printed and its exit code::

    {"verb": "EXEC", "env": {"CNI_COMMAND": "ADD", ...}, "stdin": "<config>", "netns": [dev, ino], "pid": N}
    {"ok": true, "exit": 0, "stdout": "<result JSON>\\n", "stderr": ""}
"""

from __future__ import annotations

import io
from collections.abc import Callable

from podnet.cni import plugin


def serve(doc: dict, handle: Callable[[dict], dict]) -> dict:
    """Run the forwarded invocation ``doc`` against ``handle`` (the CNI service's dispatch)."""
    env = doc.get("env")
    stdin = doc.get("stdin")
    netns = doc.get("netns")
    pid = doc.get("pid")
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        return {"ok": False, "code": 4, "msg": "EXEC: env must be an object of strings", "details": ""}
    if not isinstance(stdin, str):
        return {"ok": False, "code": 4, "msg": "EXEC: stdin must be a string", "details": ""}
    own = (int(netns[0]), int(netns[1])) if isinstance(netns, list) and len(netns) == 2 else None
    out, err = io.StringIO(), io.StringIO()
    code = plugin.run(
        env,
        io.BytesIO(stdin.encode("utf-8", "surrogateescape")),
        out,
        err,
        call=lambda _socket, request, _timeout: handle(request),
        netns=own,
        pid=pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
    )
    return {"ok": True, "exit": code, "stdout": out.getvalue(), "stderr": err.getvalue()}
