"""podnet-cni against a small REAL UNIX-socket server speaking ``podnet.cni.agent_api``'s format.

This checks the plugin's side of the contract exactly: the request it builds for each verb and how
it turns the agent's answers (1.1.0 results, CNI errors, silence, garbage) into what the runtime
sees, in every supported version. The agent's own behaviour (IPAM, netlink, idempotent DEL) is
tested with the agent, elsewhere. Also here: the runtime (``podnet.lab.cni_runtime``) driving
podnet-cni chained with a second plugin, and the start-up / ADD round-trip measurements.
"""

from __future__ import annotations

import fcntl
import json
import os
import statistics
import subprocess
import time

import pytest
from cni_harness import (
    ATTACHMENT_ENV,
    CLOSE,
    PLUGIN,
    FakeAgent,
    base_env,
    exec_plugin,
    read_calls,
    write_fake_plugin,
)

import podnet
from podnet.cni import delete_queue
from podnet.cni.versions import SUPPORTED_VERSIONS
from podnet.lab.cni_runtime import CNIRuntime, conflist_from_bytes, kubernetes_args

AGENT_RESULT = {
    "cniVersion": "1.1.0",
    "interfaces": [
        {"name": "calia1b2c3d4e5f", "mac": "ee:ee:ee:ee:ee:ee", "mtu": 1450},
        {"name": "eth0", "mac": "0a:58:0a:01:02:03", "mtu": 1450, "sandbox": "/run/netns/test-pod"},
    ],
    "ips": [{"address": "10.1.2.3/32", "gateway": "169.254.1.1", "interface": 1}],
    "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1", "mtu": 1450}],
    "dns": {},
}


def config(version: str = "1.0.0", **keys: object) -> dict:
    return {
        "cniVersion": version,
        "name": "k8s-pod-network",
        "type": "podnet",
        "mtu": 0,
        "ipam": {"type": "podnet-ipam"},
        **keys,
    }


def ok(result: dict | None = None) -> dict:
    return {"ok": True, "result": result if result is not None else {}}


# ------------------------------------------------------------------------------------------ ADD


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_add_request_and_converted_result(agent: FakeAgent, run_plugin, version: str) -> None:
    agent.responder = lambda request: ok(AGENT_RESULT)
    sent = config(version, runtimeConfig={"portMappings": []}, policy={"type": "k8s"})
    out = run_plugin("ADD", sent)
    assert out.rc == 0, out
    [request] = agent.requests
    assert request == {
        "verb": "ADD",
        "containerID": ATTACHMENT_ENV["CNI_CONTAINERID"],
        "netns": "/run/netns/test-pod",
        "ifname": "eth0",
        "args": {  # the known K8S_ keys of CNI_ARGS, IgnoreUnknown dropped
            "K8S_POD_NAMESPACE": "shop",
            "K8S_POD_NAME": "web-0",
            "K8S_POD_INFRA_CONTAINER_ID": "0123456789abcdef",
            "K8S_POD_UID": "8d3b2c4e-1f2a-4b5c-9d6e-7f8a9b0c1d2e",
        },
        "config": {"agent_socket": agent.path, **sent},  # verbatim
    }
    old = version < "1.0.0"
    new = version == "1.1.0"
    expected_intf = [
        {"name": "calia1b2c3d4e5f", "mac": "ee:ee:ee:ee:ee:ee"} | ({"mtu": 1450} if new else {}),
        {"name": "eth0", "mac": "0a:58:0a:01:02:03"}
        | ({"mtu": 1450} if new else {})
        | {"sandbox": "/run/netns/test-pod"},
    ]
    assert out.doc == {
        "cniVersion": version,
        "interfaces": expected_intf,
        "ips": [
            ({"version": "4"} if old else {})
            | {"address": "10.1.2.3/32", "gateway": "169.254.1.1", "interface": 1}
        ],
        "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"} | ({"mtu": 1450} if new else {})],
        "dns": {},
    }


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_chained_add_appends_to_prev_result(agent: FakeAgent, run_plugin, version: str) -> None:
    agent.responder = lambda request: ok(AGENT_RESULT)
    ip_extra = {"version": "4"} if version < "1.0.0" else {}
    prev = {
        "cniVersion": version,
        "interfaces": [{"name": "lo", "mac": "00:00:00:00:00:00", "sandbox": "/run/netns/test-pod"}],
        "ips": [ip_extra | {"address": "127.0.0.1/8", "interface": 0}],
        "dns": {"nameservers": ["10.96.0.10"]},
    }
    out = run_plugin("ADD", config(version, prevResult=prev))
    assert out.rc == 0, out
    assert agent.requests[0]["config"]["prevResult"] == prev  # the agent sees it too
    assert [i["name"] for i in out.doc["interfaces"]] == ["lo", "calia1b2c3d4e5f", "eth0"]
    assert out.doc["ips"] == [
        ip_extra | {"address": "127.0.0.1/8", "interface": 0},
        ip_extra | {"address": "10.1.2.3/32", "gateway": "169.254.1.1", "interface": 2},
    ]
    assert out.doc["dns"] == {"nameservers": ["10.96.0.10"]}


@pytest.mark.parametrize("code", [7, 11, 105])
def test_agent_errors_pass_through_with_their_code(agent: FakeAgent, run_plugin, code: int) -> None:
    agent.responder = lambda request: {
        "ok": False,
        "code": code,
        "msg": "no address",
        "details": "pool x full",
    }
    out = run_plugin("ADD", config("0.4.0"))
    assert out.rc == 1 and out.doc == {
        "cniVersion": "0.4.0",
        "code": code,
        "msg": "no address",
        "details": "pool x full",
    }


@pytest.mark.parametrize(
    ("reply", "words"),
    [
        (b"not json\n", "malformed response"),
        (b"[1, 2]\n", "malformed response"),
        ({"result": {}}, "malformed response"),
        ({"ok": False, "msg": "no code"}, "without a valid code"),
        ({"ok": True, "result": [1]}, "non-object result"),
        (ok({"ips": [{"address": "10.1.2.3"}]}), "invalid ADD result"),
        (ok({"interfaces": [], "ips": [{"address": "10.1.2.3/32", "interface": 0}]}), "invalid ADD result"),
    ],
)
def test_malformed_agent_answers_are_code_999(
    agent: FakeAgent, run_plugin, reply: object, words: str
) -> None:
    agent.responder = lambda request: reply
    out = run_plugin("ADD", config())
    assert out.rc == 1 and out.code == 999 and words in out.text, out
    assert agent.path in out.text


def test_agent_closing_without_answer_is_try_again_later(agent: FakeAgent, run_plugin) -> None:
    agent.responder = lambda request: CLOSE
    out = run_plugin("ADD", config())
    assert out.code == 11 and agent.path in out.text, out


def test_agent_timeout_is_try_again_later_and_quick(agent: FakeAgent, run_plugin) -> None:
    agent.responder = lambda request: ("sleep", 3.0, ok(AGENT_RESULT))
    started = time.monotonic()
    out = run_plugin("ADD", config(timeout_seconds=0.3))
    assert out.code == 11 and "did not answer within 0.3s" in out.text, out
    assert time.monotonic() - started < 2.5


# ------------------------------------------------------------------------------------------ DEL


def test_del_forwards_and_prints_nothing(agent: FakeAgent, run_plugin) -> None:
    prev = {"cniVersion": "1.0.0", "ips": [{"address": "10.1.2.3/32"}]}
    out = run_plugin("DEL", config(prevResult=prev), env={"CNI_NETNS": None})
    assert out.rc == 0 and out.stdout == "", out
    [request] = agent.requests
    assert (request["verb"], request["netns"], request["ifname"]) == ("DEL", "", "eth0")
    assert request["config"]["prevResult"] == prev


def test_del_passes_agent_errors_and_does_not_queue_when_the_agent_is_slow(
    agent: FakeAgent, run_plugin
) -> None:
    agent.responder = lambda request: {"ok": False, "code": 11, "msg": "datastore unavailable"}
    assert run_plugin("DEL", config()).code == 11
    agent.responder = lambda request: ("sleep", 2.0, ok())
    out = run_plugin("DEL", config(timeout_seconds=0.2))
    assert out.code == 11 and "did not answer" in out.text, out
    assert (
        delete_queue.pending(delete_queue.default_dir(agent.path)) == []
    )  # a running agent would never drain it


def test_del_waits_for_an_agent_that_is_starting_instead_of_queueing(tmp_path) -> None:
    """The queue protocol's race: the agent holds the exclusive lock while it drains and starts
    listening; a DEL that found no socket waits for the shared lock, then reaches the agent."""
    socket_path = str(tmp_path / "run" / "agent.sock")
    queue = delete_queue.default_dir(socket_path)
    os.makedirs(queue)
    lock = os.open(os.path.join(queue, delete_queue.LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)  # the agent, draining
    stdin = json.dumps(config(agent_socket=socket_path)).encode()
    proc = subprocess.Popen(
        [PLUGIN], env=base_env("DEL"), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    proc.stdin.write(stdin)
    proc.stdin.close()
    time.sleep(1.0)  # the plugin found no socket and now waits for the shared lock
    agent = FakeAgent(socket_path)  # the agent listens...
    try:
        os.close(lock)  # ... then releases the lock
        assert proc.wait(timeout=15) == 0, proc.stderr.read()
        assert proc.stdout.read() == b""
        assert [r["verb"] for r in agent.requests] == ["DEL"]
        assert delete_queue.pending(queue) == []
        assert b"while waiting for the deletion queue lock" in proc.stderr.read()
    finally:
        agent.close()


# --------------------------------------------------------------------------------- CHECK, GC, STATUS


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0", "1.1.0"])
def test_check_forwards_prev_result_and_prints_nothing(agent: FakeAgent, run_plugin, version: str) -> None:
    prev = {"cniVersion": version, "interfaces": [{"name": "eth0"}], "ips": [{"address": "10.1.2.3/32"}]}
    out = run_plugin("CHECK", config(version, prevResult=prev))
    assert out.rc == 0 and out.stdout == "", out
    assert agent.requests[0]["verb"] == "CHECK" and agent.requests[0]["config"]["prevResult"] == prev
    agent.responder = lambda request: {"ok": False, "code": 100, "msg": "route to 10.1.2.3 missing"}
    out = run_plugin("CHECK", config(version, prevResult=prev))
    assert out.code == 100 and out.doc["cniVersion"] == version


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (
            {"cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}]},
            [{"containerID": "c1", "ifname": "eth0"}],
        ),
        (
            {"cni.dev/attachments": [{"containerID": "c2", "ifname": "eth0"}]},
            [{"containerID": "c2", "ifname": "eth0"}],
        ),
        ({"cni.dev/valid-attachments": None}, []),
    ],
)
def test_gc_forwards_the_valid_attachments(agent: FakeAgent, run_plugin, keys: dict, expected: list) -> None:
    out = run_plugin("GC", config("1.1.0", **keys), env={"CNI_CONTAINERID": "", "CNI_IFNAME": ""})
    assert out.rc == 0 and out.stdout == "", out
    [request] = agent.requests
    assert request["verb"] == "GC" and request["containerID"] == "" and request["ifname"] == ""
    assert request["config"]["cni.dev/valid-attachments"] == expected


def test_status(agent: FakeAgent, run_plugin) -> None:
    out = run_plugin("STATUS", config("1.1.0"))
    assert out.rc == 0 and out.stdout == "" and agent.requests[0]["verb"] == "STATUS", out
    for code in (50, 51):
        agent.responder = lambda request, code=code: {"ok": False, "code": code, "msg": "etcd unreachable"}
        out = run_plugin("STATUS", config("1.1.0"))
        assert out.doc == {"cniVersion": "1.1.0", "code": code, "msg": "etcd unreachable"}


# --------------------------------------------------------------------------- through the runtime


def test_runtime_drives_podnet_cni_chained_with_a_second_plugin(agent: FakeAgent, tmp_path) -> None:
    """The lab's path: CNIRuntime → podnet-cni (→ fake agent) → a chained plugin; ADD, CHECK, DEL."""
    agent.responder = lambda request: ok(AGENT_RESULT) if request["verb"] == "ADD" else ok()
    bin_dir = str(tmp_path / "bin")
    record = str(tmp_path / "calls.jsonl")
    write_fake_plugin(bin_dir, "tail", record)
    os.symlink(PLUGIN, os.path.join(bin_dir, "podnet"))
    conflist = {
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "plugins": [
            {"type": "podnet", "agent_socket": agent.path, "mtu": 0, "ipam": {"type": "podnet-ipam"}},
            {"type": "tail", "capabilities": {"portMappings": True}},
        ],
    }
    rt = CNIRuntime(
        None, [bin_dir], str(tmp_path / "cache"), conflist=conflist_from_bytes(json.dumps(conflist).encode())
    )
    args = kubernetes_args("shop", "web-0", "c0ffee", "8d3b2c4e-1f2a-4b5c-9d6e-7f8a9b0c1d2e")
    result = rt.add("c0ffee", "/run/netns/pod", "eth0", args, {"portMappings": []})
    assert [i["name"] for i in result["interfaces"]] == ["calia1b2c3d4e5f", "eth0", "tail"]
    assert "mtu" not in result["interfaces"][0]  # 1.0.0 all the way
    assert (
        agent.requests[0]["args"]["K8S_POD_NAME"] == "web-0"
        and "runtimeConfig" not in agent.requests[0]["config"]
    )
    assert read_calls(record)[0]["config"]["prevResult"]["ips"][0]["address"] == "10.1.2.3/32"
    rt.check("c0ffee", "/run/netns/pod", "eth0", args)
    assert agent.requests[-1]["config"]["prevResult"] == dict(result)
    rt.delete("c0ffee", "/run/netns/pod", "eth0", args)
    assert [r["verb"] for r in agent.requests] == ["ADD", "CHECK", "DEL"]
    assert rt.cached_attachments() == []
    assert [c.plugin for c in result.calls] == ["podnet", "tail"]


# ---------------------------------------------------------------------------------- measurements


def _median_ms(run, n: int = 20) -> float:
    run()  # warm the page cache
    times = []
    for _ in range(n):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def test_measure_start_up_and_add_round_trip(agent: FakeAgent, capsys) -> None:
    """Medians of 20: bare interpreter, podnet-cni VERSION, and ADD against an agent that answers at
    once (what the plugin adds to every pod's start). Printed for the record; bounds are loose."""
    agent.responder = lambda request: ok(AGENT_RESULT)
    python = os.path.join(os.path.dirname(PLUGIN), "python")
    bare = _median_ms(lambda: subprocess.run([python, "-c", "pass"], check=True))
    version = _median_ms(lambda: exec_plugin(base_env("VERSION"), b""))
    stdin = json.dumps(config(agent_socket=agent.path)).encode()
    add_env = base_env("ADD")

    def add() -> None:
        assert exec_plugin(add_env, stdin).rc == 0

    add_ms = _median_ms(add)
    with capsys.disabled():
        print(f"\n[cni] bare python {bare:.1f} ms; VERSION {version:.1f} ms; ADD round trip {add_ms:.1f} ms")
    assert version < bare + 100 and add_ms < bare + 150


# ---------------------------------------------------------------------------- the fast path (EXEC)


@pytest.mark.parametrize("version", ["0.3.1", "1.1.0"])
def test_add_goes_through_exec_and_matches_the_full_plugin(tmp_path, version: str) -> None:
    """The same ADD against an agent serving EXEC (the fast path: the agent runs the verbs) and one
    that predates it (the plugin runs them itself): one CNI request each, the same stdout."""
    outs = []
    for serves_exec in (True, False):
        server = FakeAgent(str(tmp_path / f"exec-{serves_exec}" / "agent.sock"), serves_exec=serves_exec)
        try:
            server.responder = lambda request: ok(AGENT_RESULT)
            stdin = json.dumps(config(version, agent_socket=server.path)).encode()
            out = exec_plugin(base_env("ADD"), stdin)
            assert out.rc == 0, out
            assert server.exec_requests == 1  # the fast path was tried first, either way
            [request] = server.requests
            assert request["verb"] == "ADD" and request["containerID"] == ATTACHMENT_ENV["CNI_CONTAINERID"]
            outs.append(out.stdout)
        finally:
            server.close()
    assert outs[0] == outs[1]
    assert json.loads(outs[0])["cniVersion"] == version


def test_exec_refuses_the_plugins_own_netns(run_plugin, agent: FakeAgent) -> None:
    """skel's check runs in the agent on the plugin process's namespace, which the shim sends."""
    out = run_plugin("ADD", config(), {"CNI_NETNS": "/proc/self/ns/net"})
    assert out.code == 8 and agent.requests == [] and agent.exec_requests == 1, out


def test_fast_path_loads_no_json_module(agent: FakeAgent) -> None:
    """The reason for the shim: a forwarded ADD imports neither json nor re nor the spec module
    (each concurrent ADD pays the plugin's start-up on the node's cores)."""
    agent.responder = lambda request: ok(AGENT_RESULT)
    python = os.path.join(os.path.dirname(PLUGIN), "python")
    source = os.path.dirname(os.path.dirname(os.path.abspath(podnet.__file__)))
    probe = (
        f"import sys; sys.path.insert(0, {source!r})\n"  # as the lab's launcher (python -S) does
        "from podnet.cni.main import main\n"
        "rc = main()\n"
        "watched = ('json', 're', 'podnet.cni.spec', 'podnet.cni.plugin')\n"
        "heavy = sorted(m for m in watched if m in sys.modules)\n"
        "sys.stderr.write('LOADED=' + ','.join(heavy) + '\\n')\n"
        "sys.exit(rc)\n"
    )
    stdin = json.dumps(config(agent_socket=agent.path)).encode()
    proc = subprocess.run([python, "-S", "-c", probe], input=stdin, env=base_env("ADD"), capture_output=True)
    assert proc.returncode == 0, proc
    assert b"LOADED=\n" in proc.stderr, proc.stderr
    assert len(agent.requests) == 1
    # positive control: with the agent gone the full plugin runs (and loads them)
    agent.close()
    proc = subprocess.run([python, "-S", "-c", probe], input=stdin, env=base_env("ADD"), capture_output=True)
    assert proc.returncode == 1 and b"json" in proc.stderr, proc.stderr
