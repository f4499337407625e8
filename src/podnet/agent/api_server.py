"""The agent's UNIX-socket server for :mod:`podnet.cni.agent_api` (one JSON line in, one out)."""

from __future__ import annotations

import json
import os
import socketserver
import threading
from collections.abc import Callable


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        line = self.rfile.readline(1 << 20)
        try:
            doc = json.loads(line)
            if not isinstance(doc, dict):
                raise ValueError("request must be a JSON object")
            response = self.server.dispatch(doc)  # type: ignore[attr-defined]
        except ValueError as exc:
            response = {"ok": False, "code": 6, "msg": f"bad request: {exc}", "details": ""}
        except Exception as exc:  # a bug in a handler: answer it rather than drop the connection
            response = {
                "ok": False,
                "code": 999,
                "msg": f"agent error: {type(exc).__name__}: {exc}",
                "details": "see the agent log",
            }
        self.wfile.write(json.dumps(response, separators=(",", ":")).encode() + b"\n")


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    # socketserver otherwise keeps every request thread in a list, reaped (joined one by one) on
    # each new connection: a third of the agent's CPU during a burst of CNI ADDs.
    block_on_close = False
    request_queue_size = 128  # socketserver's default of 5 refuses a burst of CNI calls (EAGAIN)


def serve(path: str, dispatch: Callable[[dict], dict]) -> _Server:
    """Listen on ``path`` (root-only permissions) in a daemon thread; ``shutdown()`` stops it."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if os.path.exists(path):
        os.unlink(path)  # a previous agent's socket: we are its successor
    server = _Server(path, _Handler, bind_and_activate=False)
    try:
        server.server_bind()
        os.chmod(path, 0o600)  # before listen(): nobody can connect while it is wider
        server.server_activate()
    except BaseException:
        server.server_close()
        raise
    server.dispatch = dispatch  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, name="cni-api", daemon=True).start()
    return server
