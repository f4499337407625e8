"""The agent's UNIX-socket API, with the client the CNI plugin uses."""

from __future__ import annotations

import pytest

from podnet.agent import api, api_server


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
