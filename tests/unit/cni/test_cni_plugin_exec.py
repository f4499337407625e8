"""The real ``podnet-cni`` executable, driven with the spec's own kind of inputs (no agent running).

Every case checks the protocol's form too: exit status 0/1 and stdout holding exactly one JSON
document (or nothing), logs only on stderr. Success paths against an agent are in
``tests/integration/cni/test_plugin_agent.py``.
"""

from __future__ import annotations

import json
import os

import pytest
from cni_harness import ATTACHMENT_ENV, REQUIRED, base_env, exec_plugin

from podnet.cni import delete_queue
from podnet.cni.versions import SUPPORTED_VERSIONS

EXPECTED_VERSION = {"cniVersion": "1.1.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]}


def assert_error(out, code: int, *words: str) -> None:
    assert out.rc == 1, out
    assert out.code == code, out
    for word in words:
        assert word in out.text, (word, out)


# ---------------------------------------------------------------------------------------- VERSION


@pytest.mark.parametrize(
    "stdin", [*(json.dumps({"cniVersion": v}) for v in SUPPORTED_VERSIONS), "", "not json", "{}"]
)
def test_version_answers_locally_whatever_stdin_says(stdin: str) -> None:
    out = exec_plugin(base_env("VERSION"), stdin.encode())
    assert out.rc == 0, out
    assert out.doc == EXPECTED_VERSION
    assert out.stdout.count("\n") == 1


def test_version_with_libcni_dummy_values() -> None:
    env = base_env(
        "VERSION", {"CNI_NETNS": "dummy", "CNI_IFNAME": "dummy", "CNI_PATH": "dummy", "CNI_CONTAINERID": ""}
    )
    out = exec_plugin(env, b'{"cniVersion":"1.1.0"}')
    assert out.rc == 0 and out.doc == EXPECTED_VERSION


# ------------------------------------------------------------------------------------ environment


def test_missing_cni_command_is_code_4_with_about_on_stderr(run_plugin) -> None:
    out = run_plugin(None)
    assert_error(out, 4, "CNI_COMMAND")
    assert "podnet-cni" in out.stderr and "1.1.0" in out.stderr
    assert "cniVersion" not in out.doc  # before the config is read the version is unknown


@pytest.mark.parametrize("command", ["FOO", "add", "Version", "DELETE"])
def test_unknown_command_is_code_4_naming_it(run_plugin, command: str) -> None:
    assert_error(run_plugin(command), 4, "CNI_COMMAND", command)


@pytest.mark.parametrize(("command", "var"), [(c, v) for c, vars_ in REQUIRED.items() for v in vars_])
def test_each_required_variable_is_named_when_missing(run_plugin, command: str, var: str) -> None:
    version = "1.1.0" if command in ("GC", "STATUS") else "1.0.0"
    assert_error(run_plugin(command, env={var: None}, version=version), 4, var)
    assert_error(run_plugin(command, env={var: ""}, version=version), 4, var)  # libcni sets empty ones


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
@pytest.mark.parametrize("command", ["ADD", "CHECK", "DEL", "GC", "STATUS"])
def test_environment_is_checked_before_the_config_in_every_version(
    run_plugin, command: str, version: str
) -> None:
    out = run_plugin(command, env={"CNI_PATH": None}, version=version)
    assert_error(out, 4, "CNI_PATH")
    assert "cniVersion" not in out.doc  # stdin not read yet: the version is not known


@pytest.mark.parametrize("command", ["ADD", "CHECK", "DEL"])
def test_every_bad_variable_is_named_at_once(run_plugin, command: str) -> None:
    env = {"CNI_CONTAINERID": "-bad", "CNI_IFNAME": "eth0:1", "CNI_ARGS": "K8S_POD_NAME", "CNI_PATH": None}
    out = run_plugin(command, env=env)
    assert_error(out, 4, "CNI_CONTAINERID", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH")


def test_netns_is_optional_on_del_only(run_plugin, tmp_path) -> None:
    assert_error(run_plugin("ADD", env={"CNI_NETNS": None}), 4, "CNI_NETNS")
    assert_error(run_plugin("CHECK", env={"CNI_NETNS": None}), 4, "CNI_NETNS")
    out = run_plugin("DEL", env={"CNI_NETNS": None})
    assert out.rc == 0 and out.doc is None, out  # queued: no agent here


@pytest.mark.parametrize("container_id", ["-abc", "_abc", "a b", "a/b", "abc;rm", "ü"])
def test_invalid_container_id(run_plugin, container_id: str) -> None:
    assert_error(run_plugin("ADD", env={"CNI_CONTAINERID": container_id}), 4, "CNI_CONTAINERID")


@pytest.mark.parametrize("ifname", [".", "..", "a/b", "a:b", "a b", "x" * 16, "ä" * 8])
def test_invalid_interface_name(run_plugin, ifname: str) -> None:
    assert_error(run_plugin("ADD", env={"CNI_IFNAME": ifname}), 4, "CNI_IFNAME")


def test_longest_interface_name_is_accepted(run_plugin, agent_socket: str) -> None:
    assert_error(run_plugin("ADD", env={"CNI_IFNAME": "x" * 15}), 11, agent_socket)


@pytest.mark.parametrize(
    ("cni_args", "words"),
    [
        ("FOO=bar", ["CNI_ARGS", "unknown args", "FOO=bar"]),
        ("K8S_POD_NAME", ["CNI_ARGS", "invalid pair"]),
        ("IgnoreUnknown=perhaps", ["CNI_ARGS", "IgnoreUnknown"]),
        ("K8S_POD_NAMESPACE=Not_A_Label", ["CNI_ARGS", "K8S_POD_NAMESPACE"]),
    ],
)
def test_invalid_cni_args(run_plugin, cni_args: str, words: list[str]) -> None:
    assert_error(run_plugin("ADD", env={"CNI_ARGS": cni_args}), 4, *words)


def test_unknown_cni_args_pass_with_ignore_unknown(run_plugin, agent_socket: str) -> None:
    assert_error(
        run_plugin("ADD", env={"CNI_ARGS": "IgnoreUnknown=1;FOO=bar;K8S_POD_NAME=x"}), 11, agent_socket
    )
    assert_error(run_plugin("ADD", env={"CNI_ARGS": ""}), 11, agent_socket)  # CNI_ARGS is optional


def test_own_netns_is_refused_unless_overridden(run_plugin, agent_socket: str) -> None:
    # /proc/self/ns/net, opened by the plugin, is the plugin's own network namespace
    out = run_plugin("ADD", env={"CNI_NETNS": "/proc/self/ns/net"})
    assert_error(out, 8, "CNI_NETNS")
    out = run_plugin("ADD", env={"CNI_NETNS": "/proc/self/ns/net", "CNI_NETNS_OVERRIDE": "1"})
    assert_error(out, 11, agent_socket)


# ------------------------------------------------------------------------------------------ stdin


@pytest.mark.parametrize("stdin", [b"", b"{", b"not json", b"[]", b'"podnet"', b"null", b"\xff\xfe"])
def test_stdin_that_is_not_a_json_object_is_code_6(run_plugin, stdin: bytes) -> None:
    assert_error(run_plugin("ADD", stdin=stdin), 6, "network config")


@pytest.mark.parametrize(
    ("config", "code", "words"),
    [
        ({"cniVersion": "1.0.0", "type": "podnet"}, 7, ["missing network name"]),
        ({"cniVersion": "1.0.0", "name": "", "type": "podnet"}, 7, ["missing network name"]),
        ({"cniVersion": "1.0.0", "name": "my net", "type": "podnet"}, 7, ["network name", "my net"]),
        ({"cniVersion": "1.0.0", "name": ["n"], "type": "podnet"}, 7, ["name"]),
        ({"cniVersion": "1.0.0", "name": "n"}, 7, ["missing plugin type"]),
        ({"cniVersion": "1.0.0", "name": "n", "type": 1}, 7, ["type"]),
        ({"name": "n", "type": "podnet"}, 1, ["0.1.0", "cniVersion missing"]),
        ({"cniVersion": "0.2.0", "name": "n", "type": "podnet"}, 1, ["0.2.0", "1.1.0"]),
        ({"cniVersion": "1.2.0", "name": "n", "type": "podnet"}, 1, ["1.2.0"]),
        ({"cniVersion": "latest", "name": "n", "type": "podnet"}, 1, ["latest"]),
        ({"cniVersion": 1.0, "name": "n", "type": "podnet"}, 7, ["cniVersion"]),
    ],
)
def test_invalid_network_config(run_plugin, config: dict, code: int, words: list[str]) -> None:
    out = run_plugin("ADD", config)
    assert_error(out, code, *words)
    assert out.doc.get("cniVersion") in (None, config.get("cniVersion"))


@pytest.mark.parametrize(
    ("keys", "code", "words"),
    [
        ({"mtu": "1450"}, 7, ["mtu"]),
        ({"mtu": 20}, 2, ["mtu", "20"]),
        ({"ipam": {"type": "host-local", "subnet": "10.0.0.0/24"}}, 2, ["ipam.type", "host-local"]),
        ({"ipam": ["podnet-ipam"]}, 7, ["ipam"]),
        ({"ipam": {"type": "podnet-ipam", "ipv4_pools": "default"}}, 7, ["ipam.ipv4_pools"]),
        ({"log_level": "chatty"}, 2, ["log_level", "chatty"]),
        ({"timeout_seconds": -1}, 2, ["timeout_seconds", "-1"]),
        ({"timeout_seconds": "30"}, 7, ["timeout_seconds"]),
        ({"agent_socket": "relative.sock"}, 2, ["agent_socket", "relative.sock"]),
        ({"agent_socket": 7}, 7, ["agent_socket"]),
        ({"runtimeConfig": "x"}, 7, ["runtimeConfig"]),
        ({"prevResult": {"ips": [{"address": "10.0.0.1"}]}}, 7, ["prevResult.ips[0].address"]),
    ],
)
def test_invalid_podnet_keys(run_plugin, keys: dict, code: int, words: list[str]) -> None:
    config = {"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "podnet", **keys}
    out = run_plugin("ADD", config)
    assert_error(out, code, *words)
    assert out.doc["cniVersion"] == "1.0.0"  # the request's version is known by now


def test_unknown_keys_pass_through(run_plugin, agent_socket: str) -> None:
    config = {"cniVersion": "1.0.0", "name": "n", "type": "podnet", "policy": {"type": "k8s"}, "cni.dev/x": 1}
    assert_error(run_plugin("ADD", config), 11, agent_socket)


# ------------------------------------------------------------------------------ version gates


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1"])
def test_check_needs_0_4_0(run_plugin, version: str) -> None:
    assert_error(run_plugin("CHECK", version=version), 1, "CHECK")


@pytest.mark.parametrize("command", ["GC", "STATUS"])
@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0", "1.0.0"])
def test_gc_and_status_need_1_1_0(run_plugin, command: str, version: str) -> None:
    assert_error(run_plugin(command, version=version), 1, command)


def test_check_needs_prev_result(run_plugin) -> None:
    assert_error(run_plugin("CHECK", version="0.4.0"), 7, "prevResult")


def test_gc_needs_the_valid_attachments(run_plugin) -> None:
    assert_error(run_plugin("GC", version="1.1.0"), 7, "cni.dev/valid-attachments")
    config = {
        "cniVersion": "1.1.0",
        "name": "n",
        "type": "podnet",
        "cni.dev/valid-attachments": [{"ifname": 1}],
    }
    assert_error(run_plugin("GC", config), 7, "cni.dev/valid-attachments[0]")


# --------------------------------------------------------------------------- agent unreachable


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_add_without_agent_is_try_again_later_naming_the_socket(
    run_plugin, agent_socket: str, version: str
) -> None:
    out = run_plugin("ADD", version=version)
    assert_error(out, 11, agent_socket, "podnet-agent")
    assert out.doc["cniVersion"] == version
    assert "ERROR" in out.stderr  # the log line goes to stderr, never stdout


def test_check_and_gc_without_agent_are_code_11(run_plugin, agent_socket: str) -> None:
    prev = {"cniVersion": "1.0.0", "ips": [{"address": "10.1.2.3/32"}]}
    config = {"cniVersion": "1.0.0", "name": "n", "type": "podnet", "prevResult": prev}
    assert_error(run_plugin("CHECK", config), 11, agent_socket)
    gc = {"cniVersion": "1.1.0", "name": "n", "type": "podnet", "cni.dev/valid-attachments": []}
    assert_error(run_plugin("GC", gc), 11, agent_socket)


def test_status_without_agent_is_code_50_naming_the_socket(run_plugin, agent_socket: str) -> None:
    out = run_plugin("STATUS", version="1.1.0")
    assert_error(out, 50, agent_socket)
    assert out.doc["cniVersion"] == "1.1.0"


def test_socket_from_environment_when_config_has_none(tmp_path) -> None:
    socket = str(tmp_path / "env-agent.sock")
    env = base_env("ADD", {"PODNET_AGENT_SOCKET": socket})
    out = exec_plugin(env, b'{"cniVersion":"1.0.0","name":"n","type":"podnet"}')
    assert_error(out, 11, socket)


def test_del_without_agent_is_queued_and_succeeds(run_plugin, agent_socket: str) -> None:
    config = {
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "type": "podnet",
        "mtu": 1,
    }  # bad mtu: ignored
    out = run_plugin("DEL", config)
    assert out.rc == 0 and out.stdout == "", out
    assert "queued" in out.stderr
    queue = delete_queue.default_dir(agent_socket)
    [entry] = delete_queue.pending(queue)
    assert os.path.basename(entry) == f"k8s-pod-network-{ATTACHMENT_ENV['CNI_CONTAINERID']}-eth0.delete"
    with open(entry) as handle:
        queued = json.load(handle)
    assert queued["verb"] == "DEL" and queued["containerID"] == ATTACHMENT_ENV["CNI_CONTAINERID"]
    assert queued["args"]["K8S_POD_NAME"] == "web-0" and queued["config"]["mtu"] == 1
    assert isinstance(queued["queuedAt"], float)
    assert run_plugin("DEL", config).rc == 0  # DEL again: still one entry for the attachment
    assert delete_queue.pending(queue) == [entry]


def test_del_queue_dir_from_config(run_plugin, tmp_path) -> None:
    queue = str(tmp_path / "q")
    out = run_plugin("DEL", {"cniVersion": "0.3.1", "name": "n", "type": "podnet", "delete_queue_dir": queue})
    assert out.rc == 0 and len(delete_queue.pending(queue)) == 1


def test_del_that_cannot_be_queued_is_code_11(run_plugin, tmp_path, agent_socket: str) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    config = {"cniVersion": "1.0.0", "name": "n", "type": "podnet", "delete_queue_dir": str(blocker / "q")}
    assert_error(run_plugin("DEL", config), 11, agent_socket, "could not be queued")


@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION", "BOGUS", None])
def test_nothing_but_one_json_document_on_stdout(run_plugin, command: str | None) -> None:
    out = run_plugin(command, {"cniVersion": "1.1.0", "name": "n", "type": "podnet", "log_level": "debug"})
    assert out.stdout == "" or (out.stdout.endswith("\n") and out.stdout.count("\n") == 1)
    assert out.doc is None or isinstance(out.doc, dict)


def test_log_file_gets_the_log_lines(run_plugin, tmp_path) -> None:
    log_file = tmp_path / "cni.log"
    out = run_plugin("ADD", {"cniVersion": "1.0.0", "name": "n", "type": "podnet", "log_file": str(log_file)})
    assert out.code == 11 and "ERROR" not in out.stderr
    assert "code 11" in log_file.read_text()
