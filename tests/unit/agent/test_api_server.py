"""The agent's UNIX-socket API, with the client the CNI plugin uses."""

from __future__ import annotations

import pytest

from podnet.agent import api_server
from podnet.cni import agent_api as api


def test_round_trip_and_bad_request(tmp_path):
    seen = []

    def dispatch(doc: dict) -> dict:
        seen.append(doc)
        return {"ok": True, "result": {"echo": doc["verb"]}}

    path = str(tmp_path / "agent.sock")
    server = api_server.serve(path, dispatch)
    try:
        assert api.call(path, {"verb": "STATUS"}) == {"ok": True, "result": {"echo": "STATUS"}}
        assert seen == [{"verb": "STATUS"}]
        import socket

        with socket.socket(socket.AF_UNIX) as s:
            s.connect(path)
            s.sendall(b"[1,2]\n")
            reply = s.makefile().readline()
        assert '"code":6' in reply
    finally:
        server.shutdown()
        server.server_close()


def test_missing_socket_is_agent_unavailable(tmp_path):
    with pytest.raises(api.AgentUnavailable) as info:
        api.call(str(tmp_path / "nope.sock"), {"verb": "ADD"})
    assert "nope.sock" in str(info.value)


def test_a_failing_handler_still_answers(tmp_path):
    def dispatch(doc: dict) -> dict:
        raise RuntimeError("boom")

    path = str(tmp_path / "agent.sock")
    server = api_server.serve(path, dispatch)
    try:
        reply = api.call(path, {"verb": "ADD"})
        assert reply["ok"] is False and reply["code"] == 999 and "RuntimeError: boom" in reply["msg"]
    finally:
        server.shutdown()
        server.server_close()


def test_a_full_listen_queue_is_waited_out(tmp_path):
    """EAGAIN from connect() (the agent's backlog is full during a burst) is not 'agent down'."""
    import json
    import socket
    import threading
    import time

    path = str(tmp_path / "busy.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(0)
    queued = []
    while True:  # fill the backlog
        extra = socket.socket(socket.AF_UNIX)
        extra.setblocking(False)
        try:
            extra.connect(path)
            queued.append(extra)
        except BlockingIOError:
            extra.close()
            break

    def serve() -> None:
        time.sleep(0.2)
        for _ in range(len(queued) + 1):
            conn, _ = listener.accept()
            if conn.recv(65536):
                conn.sendall(json.dumps({"ok": True}).encode() + b"\n")
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    for extra in queued:
        extra.close()  # their connections stay queued (empty requests) until accepted
    try:
        assert api.call(path, {"verb": "STATUS"}, timeout=5.0) == {"ok": True}
    finally:
        listener.close()


def test_socket_is_owner_only_whatever_the_umask(tmp_path):
    import os
    import stat

    before = os.umask(0o022)
    try:
        path = str(tmp_path / "agent.sock")
        server = api_server.serve(path, lambda doc: {"ok": True, "result": {}})
        try:
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        finally:
            server.shutdown()
            server.server_close()
    finally:
        os.umask(before)
