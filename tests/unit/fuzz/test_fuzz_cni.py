"""Fuzzing podnet-cni's inputs: the CNI_* environment and the JSON network configuration on stdin.

Properties:

* the parse/validate step (``parse_environment``, ``decode_config``, ``parse_config``) returns an
  invocation and a config, or raises ``CNIError`` with one of the spec's codes (never 999, never
  another exception) and a message; when one variable or one config key of a valid request was
  changed, the message (or its details) names that variable or key;
* a whole invocation, run in-process through ``podnet.cni.plugin.run`` exactly as ``podnet-cni``
  does, exits 0 or 1, prints one JSON document (or nothing) on stdout, a CNI error with a valid code
  and message when it exits 1, never a traceback; with no agent listening, a valid ADD, CHECK or
  GC answers code 11 ("try again later"), STATUS 50, DEL succeeds (queued) and VERSION answers.

Every path the plugin could write to (agent socket, deletion queue, log file) is kept inside a
temporary directory, and ``PODNET_AGENT_SOCKET`` points there too, so the node's real agent (if
one runs on this machine) is never contacted. Long mode: ``PODNET_FUZZ=long`` (see ``conftest.py``).
"""

from __future__ import annotations

import copy
import io
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from fuzz_common import JSON_VALUES, JUNK, fuzz_settings, mutated
from hypothesis import given
from hypothesis import strategies as st

from podnet.cni import agent_api as api
from podnet.cni import plugin
from podnet.cni.spec import (
    COMMANDS,
    ERR_INTERNAL,
    SUPPORTED_VERSIONS,
    CNIError,
    decode_config,
    parse_config,
    parse_environment,
)

# The codes podnet-cni may answer with when no agent runs (999 is "a bug in podnet-cni").
VALID_CODES = {1, 2, 4, 5, 6, 7, 8, 11, 50}
PATH_KEYS = ("agent_socket", "delete_queue_dir", "log_file")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private directory; the agent socket fallback points into it for the whole module."""
    root = str(tmp_path_factory.mktemp("cni-fuzz"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(api.ENV_SOCKET, os.path.join(root, "env", "agent.sock"))
        yield root


VALID_ENV = {
    "CNI_CONTAINERID": "0123456789abcdef",
    "CNI_NETNS": "/run/netns/fuzz-pod-that-does-not-exist",
    "CNI_IFNAME": "eth0",
    "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;"
    "K8S_POD_INFRA_CONTAINER_ID=0123456789abcdef;K8S_POD_UID=8d3b2c4e-1f2a-4b5c-9d6e-7f8a9b0c1d2e",
    "CNI_PATH": "/opt/cni/bin",
}

PREV_RESULT = {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "eth0", "mac": "0a:58:0a:63:00:05", "sandbox": "/run/netns/pod"}],
    "ips": [{"address": "10.99.0.5/32", "gateway": "169.254.1.1", "interface": 0}],
    "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}],
    "dns": {"nameservers": ["10.96.0.10"]},
}


def valid_config(version: str) -> dict[str, Any]:
    """Every key podnet-cni reads, with a valid value (paths are rewritten into the workdir)."""
    return {
        "cniVersion": version,
        "name": "k8s-pod-network",
        "type": "podnet",
        "agent_socket": "/agent.sock",
        "delete_queue_dir": "/queue",
        "log_file": "/cni.log",
        "log_level": "debug",
        "mtu": 1450,
        "timeout_seconds": 5,
        "ipam": {"type": "podnet-ipam", "ipv4_pools": ["default-ipv4-ippool", "10.244.0.0/16"]},
        "dns": {"nameservers": ["10.96.0.10"]},
        "runtimeConfig": {"portMappings": []},
        "args": {"cni": {}},
        "prevResult": copy.deepcopy(PREV_RESULT),
        "cni.dev/valid-attachments": [{"containerID": "0123456789abcdef", "ifname": "eth0"}],
    }


def confine(config: Any, root: str) -> Any:
    """Absolute paths in the keys that name files or sockets are moved under ``root``."""
    if isinstance(config, dict):
        for key in PATH_KEYS:
            value = config.get(key)
            if isinstance(value, str) and value.startswith("/"):
                safe = value.replace("\x00", "").replace("..", "__")
                config[key] = os.path.join(root, "cfg", safe.lstrip("/") or "root")
    return config


# --------------------------------------------------------------------------------- strategies

# Environment values as a process sees them: no NUL (execve cannot pass one), and bytes that are not
# UTF-8 arrive as lone surrogates (Python's surrogateescape).
ENV_TEXT = st.binary(max_size=40).map(lambda b: b.replace(b"\0", b"").decode("utf-8", "surrogateescape"))
ENV_JUNK = st.one_of(
    st.just(""),
    ENV_TEXT,
    st.text(max_size=30).map(lambda s: s.replace("\0", "")),
    st.sampled_from(
        [
            "ADD",
            "add",
            "DEL",
            "VERSION ",
            "0123456789abcdef" * 20,
            "-abc",
            "a b",
            "é",
            "eth0:1",
            "a/b",
            ".",
            "..",
            "e" * 16,
            "/proc/self/ns/net",
            "relative/netns",
            "/run/netns/x;rm",
            "/opt/cni/bin:",
            ":::",
            "IgnoreUnknown=1",
            "IgnoreUnknown=2",
            "K8S_POD_NAME=web-0",
            "K8S_POD_NAME=Web_0",
            "K8S_POD_NAMESPACE=-x;IgnoreUnknown=1",
            "A=B=C",
            ";;",
            "=",
            "K8S_POD_UID=" + "u" * 200,
            "FOO=bar",
            "IgnoreUnknown=1;FOO=bar",
            "K8S_POD_INFRA_CONTAINER_ID=.x",
        ]
    ),
)
ENV_VARS = ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH")


@st.composite
def environments(draw: st.DrawFn) -> tuple[dict[str, str], str | None]:
    """A valid environment for a command with at most one variable changed: ``(env, changed var)``."""
    command = draw(st.sampled_from(COMMANDS))
    env = dict(VALID_ENV, CNI_COMMAND=command)
    if draw(st.booleans()):
        return env, None
    var = draw(st.sampled_from(ENV_VARS))
    if draw(st.integers(0, 4)) == 0:
        del env[var]
    else:
        env[var] = draw(ENV_JUNK)
    if draw(st.booleans()):
        env["CNI_NETNS_OVERRIDE"] = draw(st.sampled_from(["1", "true", "0", ""]))
    return env, var


@st.composite
def configs(draw: st.DrawFn) -> tuple[bytes, str | None]:
    """stdin: a valid config with one place changed, arbitrary JSON, or bytes that are not JSON."""
    version = draw(st.sampled_from(SUPPORTED_VERSIONS))
    choice = draw(st.integers(0, 9))
    if choice <= 5:
        doc, blamed, _ = draw(mutated(valid_config(version)))
        return doc, blamed  # type: ignore[return-value]
    if choice == 6:
        return valid_config(version), None  # type: ignore[return-value]
    if choice == 7:
        return draw(JSON_VALUES | st.dictionaries(st.sampled_from(list(valid_config(version))), JUNK)), ""  # type: ignore[return-value]
    raw = draw(
        st.one_of(
            st.binary(max_size=64),
            st.sampled_from(
                [
                    b"",
                    b" ",
                    b"{",
                    b"null",
                    b"[]",
                    b'"x"',
                    b"\xff\xfe{}",
                    b"{}" * 2,
                    b"[" * 100_000,
                    b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
                    b"\xef\xbb\xbf{}",
                    b'{"name": NaN}',
                ]
            ),
        )
    )
    return raw, ""


def top_key(blamed: str) -> str:
    return blamed.split(".")[0].split("[")[0]


def to_stdin(config: Any, root: str) -> bytes:
    if isinstance(config, bytes):
        return config
    return json.dumps(confine(config, root)).encode()


def check_error(exc: CNIError) -> None:
    assert exc.code in VALID_CODES, f"code {exc.code}: {exc.msg} ({exc.details})"
    assert isinstance(exc.msg, str) and exc.msg.strip()
    assert isinstance(exc.details, str)
    json.dumps(exc.to_dict("1.0.0"))


# --------------------------------------------------------------------------------- properties


@fuzz_settings(quick=250, long=10000)
@given(env_case=environments(), config_case=configs())
def test_parse_step_gives_a_result_or_a_cni_error(
    workdir: str, env_case: tuple[dict[str, str], str | None], config_case: tuple[Any, str | None]
) -> None:
    env, changed_var = env_case
    config, blamed = config_case
    stage = "env"
    try:
        inv = parse_environment(env)
        if inv.command == "VERSION":
            return
        stage = "config"
        conf = parse_config(decode_config(to_stdin(config, workdir)), inv.command)
    except CNIError as exc:
        check_error(exc)
        text = f"{exc.msg} {exc.details}"
        if stage == "env" and changed_var:
            assert changed_var in text or exc.code == 4, text
            if changed_var != "CNI_COMMAND":
                assert changed_var in text, text
        if stage == "config" and blamed:
            key = top_key(blamed)
            if exc.code in (2, 7):
                named = key in text or (key == "cni.dev/valid-attachments" and "cni.dev/" in text)
                assert named or key in ("name", "type"), f"{blamed}: {text}"
        return
    assert inv.command in COMMANDS
    assert conf.cni_version in SUPPORTED_VERSIONS
    assert isinstance(conf.raw, dict)
    json.dumps(conf.raw)  # forwarded to the agent as JSON


def run_in_process(env: dict[str, str], stdin: bytes) -> tuple[int, Any, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    rc = plugin.run(env, io.BytesIO(stdin), stdout, stderr)  # type: ignore[arg-type]
    text = stdout.getvalue()
    doc = json.loads(text) if text.strip() else None  # exactly one JSON document, or nothing
    return rc, doc, stderr.getvalue()


@fuzz_settings(quick=200, long=10000)
@given(env_case=environments(), config_case=configs())
def test_invocation_answers_in_the_protocol(
    workdir: str, env_case: tuple[dict[str, str], str | None], config_case: tuple[Any, str | None]
) -> None:
    env, _ = env_case
    config, _ = config_case
    stdin = to_stdin(config, workdir)
    rc, doc, stderr = run_in_process(env, stdin)
    assert "Traceback" not in stderr, stderr
    assert rc in (0, 1)
    if rc == 1:
        assert isinstance(doc, dict), doc
        assert doc.get("code") != ERR_INTERNAL, doc
        assert doc.get("code") in VALID_CODES, doc
        assert isinstance(doc.get("msg"), str) and doc["msg"].strip(), doc
        return
    # Success without an agent: only VERSION, and DEL (queued for the agent).
    assert env.get("CNI_COMMAND") in ("VERSION", "DEL"), (env, doc)
    if env["CNI_COMMAND"] == "VERSION":
        assert isinstance(doc, dict) and "supportedVersions" in doc


EXPECTED_WITHOUT_AGENT = {"ADD": 11, "CHECK": 11, "GC": 11, "STATUS": 50}


@fuzz_settings(quick=40, long=2000)
@given(command=st.sampled_from(COMMANDS), version=st.sampled_from(SUPPORTED_VERSIONS))
def test_valid_request_without_agent(workdir: str, command: str, version: str) -> None:
    """The baseline the fuzzing departs from: a valid request meets no agent."""
    config = confine(valid_config(version), workdir)
    gate = {"CHECK": (0, 4, 0), "GC": (1, 1, 0), "STATUS": (1, 1, 0)}.get(command, (0, 0, 0))
    rc, doc, stderr = run_in_process(dict(VALID_ENV, CNI_COMMAND=command), json.dumps(config).encode())
    assert "Traceback" not in stderr
    if tuple(int(p) for p in version.split(".")) < gate:
        assert (rc, doc["code"]) == (1, 1), doc
    elif command in EXPECTED_WITHOUT_AGENT:
        assert (rc, doc["code"]) == (1, EXPECTED_WITHOUT_AGENT[command]), doc
        assert config["agent_socket"] in doc["msg"], doc  # names the socket it tried
    elif command == "DEL":
        assert (rc, doc) == (0, None), doc
    else:
        assert rc == 0 and doc["supportedVersions"]
