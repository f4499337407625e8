"""podnet.lab.cni_runtime: the libcni side, exercised with real executables.

Plugins are small scripts written by the tests (they record env and stdin, then answer as told) and,
as root, Debian's own ``loopback`` and ``portmap`` in network namespaces the tests create.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import uuid

import pytest
from cni_harness import plugin_error, read_calls, write_fake_plugin

from podnet.lab.cni_runtime import (
    CACHE_KIND,
    CNIError,
    CNIResult,
    CNIRuntime,
    ConfListError,
    conflist_from_bytes,
    install_podnet_plugin,
    kubernetes_args,
    load_conflist,
)

MAIN_RESULT = {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "eth0", "mac": "0a:58:0a:63:00:05", "sandbox": "/run/netns/pod"}],
    "ips": [{"address": "10.99.0.5/32", "gateway": "169.254.1.1", "interface": 0}],
    "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}],
    "dns": {},
}
ARGS = kubernetes_args("shop", "web-0", "c0ffee", "8d3b2c4e-1f2a-4b5c-9d6e-7f8a9b0c1d2e")


class Env:
    def __init__(self, tmp_path) -> None:
        self.conf_dir = str(tmp_path / "net.d")
        self.bin_dir = str(tmp_path / "bin")
        self.cache_dir = str(tmp_path / "cache")
        self.record = str(tmp_path / "calls.jsonl")
        os.makedirs(self.conf_dir)

    def conflist(
        self, plugins: list[dict], version: str = "1.0.0", name: str = "podnet", **top: object
    ) -> None:
        doc = {"cniVersion": version, "name": name, "plugins": plugins, **top}
        with open(os.path.join(self.conf_dir, "10-podnet.conflist"), "w") as handle:
            json.dump(doc, handle)

    def plugin(self, name: str, **behaviour: object) -> None:
        write_fake_plugin(self.bin_dir, name, self.record, **behaviour)

    def runtime(self, **kwargs: object) -> CNIRuntime:
        return CNIRuntime(self.conf_dir, ["/nonexistent", self.bin_dir], self.cache_dir, **kwargs)

    def calls(self) -> list[dict]:
        return read_calls(self.record)


@pytest.fixture
def env(tmp_path) -> Env:
    return Env(tmp_path)


def chain(env: Env, version: str = "1.0.0", **top: object) -> None:
    """main → tuner (declares portMappings and bandwidth) → last (declares nothing)."""
    env.plugin("main", result=dict(MAIN_RESULT, cniVersion=version))
    env.plugin("tuner")
    env.plugin("last")
    env.conflist(
        [
            {"type": "main", "mtu": 1450, "ipam": {"type": "podnet-ipam"}, "cni.dev/secret": 1},
            {"type": "tuner", "capabilities": {"portMappings": True, "bandwidth": True, "mac": False}},
            {"type": "last", "runtimeConfig": {"from": "file"}},
        ],
        version=version,
        **top,
    )


# ---------------------------------------------------------------------------------------- loading


def write(path: str, doc: object) -> None:
    with open(path, "w") as handle:
        handle.write(doc if isinstance(doc, str) else json.dumps(doc))


def test_conflist_files_win_over_conf_files_then_lexical_order(tmp_path) -> None:
    d = str(tmp_path)
    write(f"{d}/00-single.conf", {"cniVersion": "0.4.0", "name": "single", "type": "bridge"})
    write(f"{d}/20-b.conflist", {"cniVersion": "1.0.0", "name": "b", "plugins": [{"type": "x"}]})
    write(f"{d}/10-a.conflist", {"cniVersion": "1.0.0", "name": "a", "plugins": [{"type": "x"}]})
    write(f"{d}/05-ignored.txt", "not a config")
    assert load_conflist(d)["name"] == "a"
    assert load_conflist(d, "b")["name"] == "b"
    single = load_conflist(d, "single")
    assert single["cniVersion"] == "0.4.0"
    assert single["plugins"] == [{"cniVersion": "0.4.0", "name": "single", "type": "bridge"}]
    with pytest.raises(FileNotFoundError, match="nope"):
        load_conflist(d, "nope")
    with pytest.raises(FileNotFoundError):
        load_conflist(str(tmp_path / "empty"))


def test_json_single_config_is_wrapped(tmp_path) -> None:
    write(f"{tmp_path}/99-x.json", {"cniVersion": "1.0.0", "name": "j", "type": "loopback"})
    assert load_conflist(str(tmp_path))["plugins"][0]["type"] == "loopback"


@pytest.mark.parametrize(
    ("top", "expected"),
    [
        ({"cniVersion": "1.0.0"}, "1.0.0"),
        ({"cniVersion": "0.4.0", "cniVersions": ["1.0.0"]}, "1.0.0"),
        ({"cniVersions": ["0.4.0", "1.1.0", "1.0.0"]}, "1.1.0"),
        ({"cniVersion": "1.0.0", "cniVersions": ["1.1.0", "2.0.0"]}, "1.1.0"),  # newer than libcni: dropped
        ({"cniVersion": "1.1.0", "cniVersions": ["0.3.1"]}, "1.1.0"),
        ({"cniVersion": "9.0.0"}, "9.0.0"),  # without cniVersions libcni leaves it to the plugins
    ],
)
def test_version_negotiation(top: dict, expected: str) -> None:
    doc = {"name": "n", "plugins": [{"type": "x"}], **top}
    assert conflist_from_bytes(json.dumps(doc).encode())["cniVersion"] == expected


@pytest.mark.parametrize(
    ("doc", "words"),
    [
        ("{", "parsing"),
        ({"plugins": [{"type": "x"}]}, "no name"),
        ({"name": 1, "plugins": [{"type": "x"}]}, "name type"),
        ({"name": "n", "plugins": []}, "no plugins"),
        ({"name": "n", "plugins": [{"mtu": 1}]}, "missing 'type'"),
        ({"name": "n", "plugins": [{"type": "x"}], "disableCheck": "yes"}, "disableCheck"),
        ({"name": "n", "plugins": [{"type": "x"}], "cniVersions": ["1.0"]}, "invalid version"),
        ({"name": "n", "loadOnlyInlinedPlugins": True}, "loadOnlyInlinedPlugins"),
    ],
)
def test_invalid_conflists(doc: object, words: str) -> None:
    with pytest.raises(ConfListError, match=words):
        conflist_from_bytes((doc if isinstance(doc, str) else json.dumps(doc)).encode())


def test_booleans_accept_strings_and_drop_in_plugins_are_appended(tmp_path) -> None:
    d = str(tmp_path)
    doc = {"cniVersion": "1.1.0", "name": "net", "disableCheck": "True", "plugins": [{"type": "a"}]}
    write(f"{d}/10.conflist", doc)
    os.makedirs(f"{d}/net")
    write(f"{d}/net/20-b.conf", {"type": "b"})
    write(f"{d}/net/10-c.conf", {"type": "c"})
    loaded = load_conflist(d)
    assert loaded["disableCheck"] is True and loaded["disableGC"] is False
    assert [p["type"] for p in loaded["plugins"]] == ["a", "c", "b"]
    write(f"{d}/10.conflist", dict(doc, loadOnlyInlinedPlugins=True))
    assert [p["type"] for p in load_conflist(d)["plugins"]] == ["a"]


# -------------------------------------------------------------------------------------------- ADD


def test_add_runs_the_list_in_order_and_builds_each_request_like_libcni(env: Env) -> None:
    chain(env)
    caps = {
        "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
        "mac": "c2:11:22:33:44:55",
    }
    result = env.runtime().add("c0ffee", "/run/netns/pod", "eth0", ARGS, caps)
    calls = env.calls()
    assert [c["plugin"] for c in calls] == ["main", "tuner", "last"]
    for call in calls:
        assert call["env"] == {
            "CNI_COMMAND": "ADD",
            "CNI_CONTAINERID": "c0ffee",
            "CNI_NETNS": "/run/netns/pod",
            "CNI_IFNAME": "eth0",
            "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;"
            "K8S_POD_INFRA_CONTAINER_ID=c0ffee;K8S_POD_UID=8d3b2c4e-1f2a-4b5c-9d6e-7f8a9b0c1d2e",
            "CNI_PATH": f"/nonexistent:{env.bin_dir}",
        }
    first, second, third = (c["config"] for c in calls)
    assert first == {
        "type": "main",
        "mtu": 1450,
        "ipam": {"type": "podnet-ipam"},
        "name": "podnet",
        "cniVersion": "1.0.0",
    }
    assert second["prevResult"] == MAIN_RESULT
    assert second["runtimeConfig"] == {"portMappings": caps["portMappings"]}  # declared ∩ given; mac is false
    assert "capabilities" not in second
    assert third["runtimeConfig"] == {"from": "file"}  # no capability matched: left alone, as libcni
    assert [i["name"] for i in third["prevResult"]["interfaces"]] == ["eth0", "tuner"]
    assert isinstance(result, CNIResult) and isinstance(result, dict)
    assert [i["name"] for i in result["interfaces"]] == ["eth0", "tuner", "last"]
    assert [(c.plugin, c.command, c.exit_status) for c in result.calls] == [
        ("main", "ADD", 0),
        ("tuner", "ADD", 0),
        ("last", "ADD", 0),
    ]
    assert all(0 < c.seconds < 10 for c in result.calls)


def test_add_caches_the_final_result_as_libcni_does(env: Env) -> None:
    chain(env)
    rt = env.runtime()
    result = rt.add("c0ffee", "/run/netns/pod", "eth0", ARGS, {"bandwidth": {"ingressRate": 1000}})
    path = os.path.join(env.cache_dir, "results", "podnet-c0ffee-eth0")
    with open(path) as handle:
        cached = json.load(handle)
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    assert cached["kind"] == CACHE_KIND and cached["containerId"] == "c0ffee" and cached["ifName"] == "eth0"
    assert cached["networkName"] == "podnet" and cached["netns"] == "/run/netns/pod"
    assert cached["result"] == dict(result)
    assert cached["cniArgs"][1] == ["K8S_POD_NAMESPACE", "shop"]
    assert cached["capabilityArgs"] == {"bandwidth": {"ingressRate": 1000}}
    assert json.loads(base64.b64decode(cached["config"]))["name"] == "podnet"
    assert rt.cached_result("c0ffee", "eth0") == dict(result)
    assert [a["containerId"] for a in rt.cached_attachments()] == ["c0ffee"]


def test_add_stops_at_the_first_error_and_caches_nothing(env: Env) -> None:
    chain(env)
    env.plugin("tuner", errors={"ADD": plugin_error(7, "bad config", "sysctl x")})
    with pytest.raises(CNIError) as info:
        env.runtime().add("c0ffee", "/run/netns/pod", "eth0", ARGS)
    err = info.value
    assert (err.code, err.msg, err.details, err.plugin, err.command) == (
        7,
        "bad config",
        "sysctl x",
        "tuner",
        "ADD",
    )
    assert "tuner" in str(err) and "bad config" in str(err)
    assert [c.plugin for c in err.calls] == ["main", "tuner"]
    assert [c["plugin"] for c in env.calls()] == ["main", "tuner"]
    assert not os.path.exists(os.path.join(env.cache_dir, "results", "podnet-c0ffee-eth0"))


@pytest.mark.parametrize(
    ("error", "code", "words"),
    [
        ({"stdout": "", "stderr": "", "exit": 2}, 0, "no error message: exit status 2"),
        ({"stdout": "", "stderr": "panic: boom", "exit": 2}, 0, "panic: boom"),
        ({"stdout": "garbage", "exit": 1}, 0, "error parsing its diagnostic message"),
        ({"stdout": '{"code": 11, "msg": "later"}', "exit": 1}, 11, "later"),
    ],
)
def test_plugin_failures_are_read_like_libcni(env: Env, error: dict, code: int, words: str) -> None:
    env.plugin("main", errors={"ADD": error})
    env.conflist([{"type": "main"}])
    with pytest.raises(CNIError, match=words) as info:
        env.runtime().add("c0ffee", "/run/netns/pod", "eth0")
    assert info.value.code == code


def test_result_without_version_takes_the_configs_and_bad_output_is_an_error(env: Env) -> None:
    env.plugin("main", result={"ips": [{"address": "10.0.0.1/32"}]})
    env.conflist([{"type": "main"}], version="0.4.0")
    assert env.runtime().add("c1", "/run/netns/p", "eth0")["cniVersion"] == "0.4.0"
    env.plugin("main", errors={"ADD": {"stdout": "not json", "exit": 0}})
    with pytest.raises(CNIError, match="unmarshal"):
        env.runtime().add("c1", "/run/netns/p", "eth0")


@pytest.mark.parametrize(
    ("container_id", "ifname", "code"),
    [("", "eth0", 3), ("-x", "eth0", 4), ("c1", "eth0:1", 4), ("c1", "x" * 16, 4)],
)
def test_add_validates_the_attachment_before_running_anything(env: Env, container_id, ifname, code) -> None:
    chain(env)
    with pytest.raises(CNIError) as info:
        env.runtime().add(container_id, "/run/netns/p", ifname)
    assert info.value.code == code and env.calls() == []


def test_missing_plugin_binary(env: Env) -> None:
    env.conflist([{"type": "ghost"}])
    with pytest.raises(CNIError, match='failed to find plugin "ghost"'):
        env.runtime().add("c1", "/run/netns/p", "eth0")
    env.conflist([{"type": "../bin/x"}])
    with pytest.raises(CNIError, match="invalid plugin name"):
        env.runtime().add("c1", "/run/netns/p", "eth0")


def test_plugin_timeout(env: Env) -> None:
    env.plugin("main", result=MAIN_RESULT, sleep=5)
    env.conflist([{"type": "main"}])
    with pytest.raises(CNIError, match="did not finish"):
        env.runtime(timeout=0.5).add("c1", "/run/netns/p", "eth0")


def test_netns_exec_prefix_wraps_every_exec(env: Env) -> None:
    chain(env)
    env.runtime(netns_exec=["env", "FAKE_WRAPPED=yes"]).add("c1", "/run/netns/p", "eth0")
    assert {c["env"].get("FAKE_WRAPPED") for c in env.calls()} == {"yes"}
    assert CNIRuntime(env.conf_dir, [env.bin_dir], env.cache_dir, "node-1").prefix == [
        "ip",
        "netns",
        "exec",
        "node-1",
    ]


# ---------------------------------------------------------------------------------------- DEL


def test_del_runs_in_reverse_with_the_cached_result_and_drops_the_cache(env: Env) -> None:
    chain(env)
    rt = env.runtime()
    added = rt.add("c0ffee", "/run/netns/pod", "eth0", ARGS, {"portMappings": [{"hostPort": 1}]})
    open(env.record, "w").close()
    calls = rt.delete("c0ffee", "/run/netns/pod", "eth0")  # args left out: taken from the cache
    recorded = env.calls()
    assert [c["plugin"] for c in recorded] == ["last", "tuner", "main"]
    assert [c.command for c in calls] == ["DEL", "DEL", "DEL"]
    for call in recorded:
        assert call["config"]["prevResult"] == dict(added)
        assert call["env"]["CNI_COMMAND"] == "DEL" and "K8S_POD_NAME=web-0" in call["env"]["CNI_ARGS"]
    assert recorded[1]["config"]["runtimeConfig"] == {"portMappings": [{"hostPort": 1}]}
    assert rt.cached_attachments() == []
    # DEL again (the spec allows it): no cache, so no prevResult, empty netns is fine
    open(env.record, "w").close()
    rt.delete("c0ffee", "", "eth0", ARGS)
    assert all("prevResult" not in c["config"] and c["env"]["CNI_NETNS"] == "" for c in env.calls())


def test_del_below_0_4_0_sends_no_prev_result(env: Env) -> None:
    chain(env, version="0.3.1")
    rt = env.runtime()
    rt.add("c1", "/run/netns/p", "eth0")
    open(env.record, "w").close()
    rt.delete("c1", "/run/netns/p", "eth0")
    assert all("prevResult" not in c["config"] for c in env.calls())


def test_del_error_keeps_the_cache_for_the_retry(env: Env) -> None:
    chain(env)
    rt = env.runtime()
    rt.add("c1", "/run/netns/p", "eth0")
    env.plugin("tuner", errors={"DEL": plugin_error(11, "busy")})
    with pytest.raises(CNIError) as info:
        rt.delete("c1", "/run/netns/p", "eth0")
    assert info.value.code == 11 and [c.plugin for c in info.value.calls] == ["last", "tuner"]
    assert rt.cached_result("c1", "eth0") is not None


def test_cached_result_is_converted_to_the_lists_version(env: Env) -> None:
    chain(env, version="1.0.0")
    rt = env.runtime()
    rt.add("c1", "/run/netns/p", "eth0")
    chain(env, version="0.4.0")  # the config changed while the pod ran
    rt.reload()
    assert rt.cached_result("c1", "eth0")["ips"][0] == {
        "version": "4",
        "address": "10.99.0.5/32",
        "gateway": "169.254.1.1",
        "interface": 0,
    }


# -------------------------------------------------------------------------------------- CHECK


def test_check_runs_in_order_with_the_cached_result(env: Env) -> None:
    chain(env)
    rt = env.runtime()
    added = rt.add("c1", "/run/netns/p", "eth0", ARGS)
    open(env.record, "w").close()
    calls = rt.check("c1", "/run/netns/p", "eth0", ARGS)
    assert [c.plugin for c in calls] == ["main", "tuner", "last"]
    assert all(c["config"]["prevResult"] == dict(added) for c in env.calls())
    env.plugin("tuner", errors={"CHECK": plugin_error(100, "qdisc missing")})
    with pytest.raises(CNIError, match="qdisc missing"):
        rt.check("c1", "/run/netns/p", "eth0", ARGS)


def test_check_needs_0_4_0_and_honours_disable_check(env: Env) -> None:
    chain(env, version="0.3.1")
    with pytest.raises(CNIError, match="does not support the CHECK command") as info:
        env.runtime().check("c1", "/run/netns/p", "eth0")
    assert info.value.code == 1
    chain(env, disableCheck=True)
    assert env.runtime().check("c1", "/run/netns/p", "eth0") == [] and env.calls() == []


# ----------------------------------------------------------------------------------- GC, STATUS


def test_gc_deletes_stale_cached_attachments_then_gcs_each_plugin(env: Env) -> None:
    chain(env, version="1.1.0")
    env.plugin("last", versions=["0.4.0", "1.0.0"])  # no 1.1.0: not sent GC
    rt = env.runtime()
    rt.add("keep", "/run/netns/a", "eth0", kubernetes_args("shop", "a", "keep", "u1"))
    rt.add("stale", "/run/netns/b", "eth0", kubernetes_args("shop", "b", "stale", "u2"))
    open(env.record, "w").close()
    calls = rt.gc([{"containerID": "keep", "ifname": "eth0"}])
    recorded = [c for c in env.calls() if c["command"] != "VERSION"]
    dels = [c for c in recorded if c["command"] == "DEL"]
    assert [c["plugin"] for c in dels] == ["last", "tuner", "main"]
    assert {c["env"]["CNI_CONTAINERID"] for c in dels} == {"stale"}
    assert all(
        c["env"]["CNI_NETNS"] == "/run/netns/b" and "K8S_POD_NAME=b" in c["env"]["CNI_ARGS"] for c in dels
    )
    gcs = [c for c in recorded if c["command"] == "GC"]
    assert [c["plugin"] for c in gcs] == ["main", "tuner"]
    for call in gcs:
        valid = [{"containerID": "keep", "ifname": "eth0"}]
        assert (
            call["config"]["cni.dev/valid-attachments"] == valid
            and call["config"]["cni.dev/attachments"] == valid
        )
        assert "prevResult" not in call["config"] and "runtimeConfig" not in call["config"]
        assert (
            call["env"]["CNI_CONTAINERID"] == "" and call["env"]["CNI_PATH"] == f"/nonexistent:{env.bin_dir}"
        )
    assert [a["containerId"] for a in rt.cached_attachments()] == ["keep"]
    assert {c.command for c in calls} == {"DEL", "GC", "VERSION"}


def test_gc_continues_past_errors_and_reports_them_all(env: Env) -> None:
    chain(env, version="1.1.0")
    rt = env.runtime()
    rt.add("stale", "/run/netns/b", "eth0")
    env.plugin("main", errors={"DEL": plugin_error(11, "agent busy"), "GC": plugin_error(11, "agent busy")})
    with pytest.raises(CNIError) as info:
        rt.gc([("other", "eth0")])
    assert len(info.value.errors) == 2 and info.value.command == "GC"
    assert [c["plugin"] for c in env.calls() if c["command"] == "GC"] == ["main", "tuner", "last"]


def test_gc_below_1_1_0_only_deletes_and_disable_gc_does_nothing(env: Env) -> None:
    chain(env, version="1.0.0")
    rt = env.runtime()
    rt.add("stale", "/run/netns/b", "eth0")
    open(env.record, "w").close()
    rt.gc([])
    assert {c["command"] for c in env.calls()} == {"DEL"}
    chain(env, version="1.1.0", disableGC=True)
    rt = env.runtime()
    rt.add("stale2", "/run/netns/b", "eth0")
    open(env.record, "w").close()
    assert rt.gc([]) == [] and env.calls() == []


def test_status(env: Env) -> None:
    chain(env, version="1.1.0")
    calls = env.runtime().status()
    statuses = [c for c in env.calls() if c["command"] == "STATUS"]
    assert [c["plugin"] for c in statuses] == ["main", "tuner", "last"]
    assert statuses[0]["env"]["CNI_CONTAINERID"] == "" and statuses[0]["config"]["name"] == "podnet"
    assert len([c for c in calls if c.command == "STATUS"]) == 3
    env.plugin("tuner", errors={"STATUS": plugin_error(50, "agent down")})
    with pytest.raises(CNIError) as info:
        env.runtime().status()
    assert info.value.code == 50
    chain(env, version="1.0.0")
    open(env.record, "w").close()
    assert env.runtime().status() == [] and env.calls() == []


def test_version_query(env: Env) -> None:
    env.plugin("main", versions=["0.4.0", "1.0.0"])
    env.conflist([{"type": "main"}])
    assert env.runtime().version("main") == {"cniVersion": "1.1.0", "supportedVersions": ["0.4.0", "1.0.0"]}
    [call] = env.calls()
    assert call["config"] == {"cniVersion": "1.1.0"}
    assert (call["env"]["CNI_NETNS"], call["env"]["CNI_IFNAME"], call["env"]["CNI_PATH"]) == ("dummy",) * 3
    # a plugin too old to know VERSION: libcni assumes 0.1.0
    env.plugin("main", errors={"VERSION": plugin_error(4, "unknown CNI_COMMAND: VERSION")})
    assert env.runtime().version("main") == {"cniVersion": "0.1.0", "supportedVersions": ["0.1.0"]}


def test_version_of_debian_plugins() -> None:
    if not os.path.exists("/usr/lib/cni/loopback"):
        pytest.skip("containernetworking-plugins is not installed")
    rt = CNIRuntime(
        None, ["/usr/lib/cni"], "/nonexistent", conflist={"name": "x", "cniVersion": "1.0.0", "plugins": []}
    )
    info = rt.version("loopback")
    assert "1.0.0" in info["supportedVersions"] and "1.1.0" not in info["supportedVersions"]


def test_install_podnet_plugin_launcher(tmp_path) -> None:
    path = install_podnet_plugin(str(tmp_path / "bin"))
    out = subprocess.run([path], env={"CNI_COMMAND": "VERSION"}, capture_output=True, timeout=30)
    assert out.returncode == 0 and json.loads(out.stdout)["cniVersion"] == "1.1.0"
    assert os.stat(path).st_mode & 0o111


# ------------------------------------------------------------- Debian's plugins in real netns (root)

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("ip") or not os.path.exists("/usr/lib/cni/loopback"),
    reason="needs root, iproute2 and containernetworking-plugins",
)


@pytest.fixture
def netns():
    names: list[str] = []

    def make() -> str:
        name = f"pncni-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        names.append(name)
        return name

    yield make
    for name in names:
        subprocess.run(["ip", "netns", "del", name], check=False)


def ns_run(ns: str, *cmd: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *cmd], check=True, capture_output=True, text=True
    ).stdout


@pytest.mark.root
@needs_root
def test_debian_loopback_in_a_pod_namespace(tmp_path, netns) -> None:
    pod = netns()
    conflist = {"cniVersion": "1.0.0", "name": "lo-net", "plugins": [{"type": "loopback"}]}
    rt = CNIRuntime(
        None,
        ["/usr/lib/cni"],
        str(tmp_path / "cache"),
        conflist=conflist_from_bytes(json.dumps(conflist).encode()),
    )
    result = rt.add("lo1", f"/run/netns/{pod}", "eth0")
    assert result["interfaces"] == [
        {"name": "lo", "mac": "00:00:00:00:00:00", "sandbox": f"/run/netns/{pod}"}
    ]
    assert {ip["address"] for ip in result["ips"]} == {"127.0.0.1/8", "::1/128"}
    assert "UP" in ns_run(pod, "ip", "-o", "link", "show", "lo")
    rt.check("lo1", f"/run/netns/{pod}", "eth0")
    rt.delete("lo1", f"/run/netns/{pod}", "eth0")
    assert "UP" not in ns_run(pod, "ip", "-o", "link", "show", "lo").split("<")[1].split(">")[0]
    rt.delete("lo1", "", "eth0")  # again, without a netns: still success


@pytest.mark.root
@needs_root
def test_debian_portmap_chained_in_the_node_namespace(env: Env, netns) -> None:
    if not shutil.which("iptables"):
        pytest.skip("portmap needs iptables")
    node, pod = netns(), netns()
    result = dict(
        MAIN_RESULT, interfaces=[{"name": "eth0", "mac": "0a:58:0a:63:00:05", "sandbox": f"/run/netns/{pod}"}]
    )
    env.plugin("main", result=result)
    os.symlink("/usr/lib/cni/portmap", os.path.join(env.bin_dir, "portmap"))
    env.conflist(
        [{"type": "main"}, {"type": "portmap", "snat": True, "capabilities": {"portMappings": True}}]
    )
    rt = env.runtime(netns_exec=node)  # as the kubelet runs plugins: in the node's namespace
    caps = {"portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]}
    out = rt.add("pm1", f"/run/netns/{pod}", "eth0", ARGS, caps)
    assert out["ips"][0]["address"] == "10.99.0.5/32"
    rules = ns_run(node, "iptables", "-t", "nat", "-S")
    assert "--dport 18080" in rules and "10.99.0.5:80" in rules
    try:
        rt.check("pm1", f"/run/netns/{pod}", "eth0", ARGS, caps)
    except CNIError as exc:
        # Debian's portmap 1.1.1 CHECK also looks for the IPv4 rules in ip6tables whenever
        # ip6tables works, and fails (fixed upstream by containernetworking/plugins fb5d195f).
        assert (exc.plugin, exc.code) == ("portmap", 999) and "could not check ipv6 dnat" in exc.msg
    rt.delete("pm1", f"/run/netns/{pod}", "eth0", ARGS, caps)
    assert "--dport 18080" not in ns_run(node, "iptables", "-t", "nat", "-S")


def test_install_compiles_the_front_and_falls_back_to_the_launcher(tmp_path, monkeypatch) -> None:
    """With a C compiler the plugin is the compiled front (an ELF that answers VERSION through the
    Python launcher beside it); without one, the launcher itself is the plugin."""
    if shutil.which("cc") is None:
        pytest.skip("no C compiler")
    path = install_podnet_plugin(str(tmp_path / "compiled"))
    with open(path, "rb") as handle:
        assert handle.read(4) == b"\x7fELF"
    assert os.path.exists(os.path.join(tmp_path, "compiled", ".podnet-python"))
    out = subprocess.run([path], env={"CNI_COMMAND": "VERSION"}, capture_output=True, timeout=30)
    assert out.returncode == 0 and json.loads(out.stdout)["cniVersion"] == "1.1.0"

    monkeypatch.setattr(shutil, "which", lambda name: None)
    path = install_podnet_plugin(str(tmp_path / "script"))
    with open(path, "rb") as handle:
        assert handle.read(2) == b"#!"
    out = subprocess.run([path], env={"CNI_COMMAND": "VERSION"}, capture_output=True, timeout=30)
    assert out.returncode == 0 and json.loads(out.stdout)["cniVersion"] == "1.1.0"
