"""podnet.cni.spec in-process: environment and CNI_ARGS rules, config validation, result conversion."""

from __future__ import annotations

import ipaddress
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from podnet.cni import spec
from podnet.cni.spec import CNIError
from podnet.cni.versions import NEWEST_VERSION, SUPPORTED_VERSIONS, VERSION_JSON

# A 1.1.0 result with every field the spec defines, as the agent might send it.
FULL_RESULT = {
    "cniVersion": "1.1.0",
    "interfaces": [
        {"name": "cali1234", "mac": "ee:ee:ee:ee:ee:ee", "mtu": 1450, "sandbox": ""},
        {
            "name": "eth0",
            "mac": "0a:58:0a:01:02:03",
            "mtu": 1450,
            "sandbox": "/run/netns/pod",
            "socketPath": "/run/x.sock",
            "pciID": "0000:00:1f.0",
        },
    ],
    "ips": [
        {"address": "10.1.2.3/32", "gateway": "169.254.1.1", "interface": 1},
        {"address": "fd00::3/128", "interface": 1},
        {"address": "::ffff:10.9.9.9/128", "interface": 1},
    ],
    "routes": [
        {
            "dst": "0.0.0.0/0",
            "gw": "169.254.1.1",
            "mtu": 1400,
            "advmss": 1360,
            "priority": 5,
            "table": 100,
            "scope": 0,
        },
        {"dst": "::/0"},
    ],
    "dns": {
        "nameservers": ["10.96.0.10"],
        "domain": "cluster.local",
        "search": ["a.svc"],
        "options": ["ndots:5"],
    },
}


# ------------------------------------------------------------------------------------ versions


def test_version_json_lists_every_supported_version() -> None:
    assert json.loads(VERSION_JSON) == {"cniVersion": "1.1.0", "supportedVersions": list(SUPPORTED_VERSIONS)}
    assert spec.version_json() == VERSION_JSON
    assert NEWEST_VERSION == "1.1.0"


@pytest.mark.parametrize(
    ("version", "minimum", "expected"),
    [
        ("0.4.0", "0.4.0", True),
        ("1.0.0", "0.4.0", True),
        ("0.3.1", "0.4.0", False),
        ("0.10.0", "0.4.0", True),
    ],
)
def test_version_at_least_compares_numerically(version: str, minimum: str, expected: bool) -> None:
    assert spec.version_at_least(version, minimum) is expected


@pytest.mark.parametrize("bad", ["", "1.0", "1.0.0.0", "a.b.c", "1.0.x", None, 1])
def test_parse_version_rejects_non_versions(bad: object) -> None:
    assert spec.parse_version(bad) is None


# --------------------------------------------------------------------------------- environment


def env_for(command: str, **overrides: str | None) -> dict[str, str]:
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": "abc123",
        "CNI_NETNS": "/run/netns/pod",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": "/opt/cni/bin:/usr/lib/cni",
    }
    env.update({k: v for k, v in overrides.items() if v is not None})
    for k, v in overrides.items():
        if v is None:
            env.pop(k, None)
    return env


def test_parse_environment_reads_every_variable() -> None:
    inv = spec.parse_environment(
        env_for("ADD", CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;FOO=bar")
    )
    assert (inv.command, inv.container_id, inv.netns, inv.ifname) == (
        "ADD",
        "abc123",
        "/run/netns/pod",
        "eth0",
    )
    assert inv.args == {"K8S_POD_NAMESPACE": "shop", "K8S_POD_NAME": "web-0"}
    assert inv.path == ["/opt/cni/bin", "/usr/lib/cni"]


def test_parse_environment_names_every_bad_variable_at_once() -> None:
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "-bad", "CNI_IFNAME": "a/b", "CNI_ARGS": "nopair"}
    with pytest.raises(CNIError) as info:
        spec.parse_environment(env)
    assert info.value.code == spec.ERR_INVALID_ENVIRONMENT
    for var in ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH", "CNI_ARGS"):
        assert var in info.value.msg


def test_empty_variables_count_as_missing_as_libcni_sets_them_all() -> None:
    with pytest.raises(CNIError, match="CNI_NETNS"):
        spec.parse_environment(env_for("CHECK", CNI_NETNS=""))
    inv = spec.parse_environment(env_for("DEL", CNI_NETNS=""))  # optional on DEL
    assert inv.netns == ""


def test_relative_netns_is_made_absolute_for_the_agent(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert spec.parse_environment(env_for("ADD", CNI_NETNS="ns/pod")).netns == str(tmp_path / "ns" / "pod")


@pytest.mark.parametrize("command", ["GC", "STATUS"])
def test_gc_and_status_need_only_cni_path(command: str) -> None:
    inv = spec.parse_environment({"CNI_COMMAND": command, "CNI_PATH": "/x", "CNI_IFNAME": "not/checked"})
    assert inv.command == command
    with pytest.raises(CNIError, match=r"CNI_PATH"):
        spec.parse_environment({"CNI_COMMAND": command, "CNI_PATH": ""})


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("eth0", True),
        ("x" * 15, True),
        ("x" * 16, False),
        ("ä" * 8, False),  # 16 bytes
        ("", False),
        (".", False),
        ("..", False),
        ("a/b", False),
        ("a:b", False),
        ("a b", False),
        ("a\tb", False),
        ("a\u00a0b", False),  # unicode whitespace, as Go's unicode.IsSpace
    ],
)
def test_interface_name_rules(name: str, ok: bool) -> None:
    assert (spec.interface_name_problem(name) is None) is ok


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("abc", True),
        ("0a_b.c-d", True),
        ("A", True),
        ("-a", False),
        ("_a", False),
        ("a b", False),
        ("ä", False),
    ],
)
def test_container_id_and_network_name_rule(name: str, ok: bool) -> None:
    assert spec.valid_name(name) is ok


@pytest.mark.parametrize(
    ("text", "values", "problem"),
    [
        ("", {}, None),
        (
            "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=a.b-c",
            {"K8S_POD_NAMESPACE": "ns", "K8S_POD_NAME": "a.b-c"},
            None,
        ),
        ("K8S_POD_UID=", {}, None),
        ("FOO=1", {}, "unknown args"),
        ("FOO=1;IgnoreUnknown=1", {}, None),
        ("IgnoreUnknown=true;FOO=1", {}, None),
        ("IgnoreUnknown=0;FOO=1", {}, "unknown args"),
        ("IgnoreUnknown=maybe", {}, "IgnoreUnknown"),
        ("K8S_POD_NAME", {}, "invalid pair"),
        ("K8S_POD_NAME=a=b", {}, "invalid pair"),
        ("K8S_POD_NAME=x;", {"K8S_POD_NAME": "x"}, "invalid pair"),  # Go rejects the empty pair too
        ("K8S_POD_NAMESPACE=Bad_NS", {}, "DNS-1123 label"),
        ("K8S_POD_NAME=" + "a" * 64, {}, "DNS-1123 subdomain"),
        ("K8S_POD_INFRA_CONTAINER_ID=-x", {}, "container ID"),
    ],
)
def test_parse_cni_args_follows_go_load_args(text: str, values: dict, problem: str | None) -> None:
    got, problems = spec.parse_cni_args(text)
    assert got == values
    if problem is None:
        assert problems == []
    else:
        assert any(problem in p for p in problems), problems


# -------------------------------------------------------------------------------- configuration


def conf(**keys: object) -> dict:
    raw = {"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "podnet"}
    raw.update(keys)
    return {k: v for k, v in raw.items() if v is not None}


def test_parse_config_defaults() -> None:
    c = spec.parse_config(conf(), "ADD")
    assert (c.name, c.cni_version, c.type, c.mtu, c.ipam, c.timeout_seconds) == (
        "k8s-pod-network",
        "1.0.0",
        "podnet",
        0,
        None,
        30.0,
    )
    assert c.agent_socket is None and c.log_level == "info" and c.prev_result is None


def test_parse_config_reads_podnet_keys() -> None:
    c = spec.parse_config(
        conf(
            agent_socket="/run/x/agent.sock",
            mtu=1450,
            ipam={"type": "podnet-ipam", "ipv4_pools": ["default-ipv4-ippool", "10.0.0.0/16"]},
            log_level="WARN",
            log_file="/var/log/podnet-cni.log",
            timeout_seconds=2.5,
        ),
        "ADD",
    )
    assert (c.agent_socket, c.mtu, c.log_level, c.log_file, c.timeout_seconds) == (
        "/run/x/agent.sock",
        1450,
        "warning",
        "/var/log/podnet-cni.log",
        2.5,
    )
    assert c.ipam == {"type": "podnet-ipam", "ipv4_pools": ["default-ipv4-ippool", "10.0.0.0/16"]}


@pytest.mark.parametrize(
    ("keys", "code", "words"),
    [
        ({"name": None}, 7, ["missing network name"]),
        ({"name": 5}, 7, ["name"]),
        ({"name": "bad name"}, 7, ["network name", "bad name"]),
        ({"type": None}, 7, ["missing plugin type"]),
        ({"type": ["podnet"]}, 7, ["type"]),
        ({"cniVersion": None}, 1, ["0.1.0", "cniVersion missing"]),
        ({"cniVersion": ""}, 1, ["0.1.0"]),
        ({"cniVersion": "0.2.0"}, 1, ["0.2.0"]),
        ({"cniVersion": "1.2.0"}, 1, ["1.2.0"]),
        ({"cniVersion": 1}, 7, ["cniVersion"]),
        ({"mtu": "1500"}, 7, ["mtu"]),
        ({"mtu": True}, 7, ["mtu"]),
        ({"mtu": 10}, 2, ["mtu", "10"]),
        ({"mtu": 70000}, 2, ["mtu", "70000"]),
        ({"ipam": "podnet-ipam"}, 7, ["ipam"]),
        ({"ipam": {}}, 7, ["ipam.type"]),
        ({"ipam": {"type": "host-local"}}, 2, ["ipam.type", "host-local"]),
        ({"ipam": {"type": "podnet-ipam", "ipv4_pools": "p"}}, 7, ["ipam.ipv4_pools"]),
        ({"ipam": {"type": "podnet-ipam", "ipv4_pools": [" "]}}, 2, ["ipam.ipv4_pools"]),
        ({"log_level": 3}, 7, ["log_level"]),
        ({"log_level": "loud"}, 2, ["log_level", "loud"]),
        ({"log_file": "cni.log"}, 2, ["log_file", "cni.log"]),
        ({"agent_socket": 5}, 7, ["agent_socket"]),
        ({"agent_socket": "agent.sock"}, 2, ["agent_socket", "agent.sock"]),
        ({"timeout_seconds": "30"}, 7, ["timeout_seconds"]),
        ({"timeout_seconds": 0}, 2, ["timeout_seconds", "0"]),
        ({"timeout_seconds": 1e9}, 2, ["timeout_seconds"]),
        ({"runtimeConfig": []}, 7, ["runtimeConfig"]),
        ({"args": "x"}, 7, ["args"]),
        ({"dns": []}, 7, ["dns"]),
        ({"prevResult": []}, 7, ["prevResult"]),
        ({"prevResult": {"ips": [{"address": "10.0.0.1"}]}}, 7, ["prevResult.ips[0].address"]),
        ({"prevResult": {"interfaces": [{}]}}, 7, ["prevResult.interfaces[0].name"]),
        (
            {"prevResult": {"ips": [{"address": "10.0.0.1/32", "interface": 3}]}},
            7,
            ["prevResult.ips[0].interface"],
        ),
        ({"prevResult": {"routes": [{"gw": "1.1.1.1"}]}}, 7, ["prevResult.routes[0].dst"]),
    ],
)
def test_parse_config_errors_name_the_key(keys: dict, code: int, words: list[str]) -> None:
    raw = conf()
    raw.update(keys)
    raw = {k: v for k, v in raw.items() if v is not None}
    with pytest.raises(CNIError) as info:
        spec.parse_config(raw, "ADD")
    assert info.value.code == code
    text = info.value.msg + " " + info.value.details
    for word in words:
        assert word in text


@pytest.mark.parametrize(
    ("command", "version"),
    [
        ("CHECK", "0.3.0"),
        ("CHECK", "0.3.1"),
        ("GC", "1.0.0"),
        ("GC", "0.4.0"),
        ("STATUS", "1.0.0"),
        ("STATUS", "0.3.1"),
    ],
)
def test_version_gates(command: str, version: str) -> None:
    with pytest.raises(CNIError) as info:
        spec.parse_config(conf(cniVersion=version), command)
    assert info.value.code == 1 and command in info.value.msg


def test_check_requires_prev_result() -> None:
    with pytest.raises(CNIError, match="prevResult") as info:
        spec.parse_config(conf(cniVersion="0.4.0"), "CHECK")
    assert info.value.code == 7
    c = spec.parse_config(conf(cniVersion="0.4.0", prevResult={"cniVersion": "0.4.0"}), "CHECK")
    assert c.prev_result == {"cniVersion": "1.1.0", "interfaces": [], "ips": [], "routes": [], "dns": {}}


@pytest.mark.parametrize("command", ["DEL", "GC"])
def test_cleanup_verbs_ignore_bad_add_only_keys(command: str) -> None:
    raw = conf(cniVersion="1.1.0", mtu=5, ipam={"type": "host-local"}, log_level="loud")
    raw["cni.dev/valid-attachments"] = []
    c = spec.parse_config(raw, command)
    assert c.warnings and "mtu" in c.warnings[0]
    # ... but not the keys they need to reach the agent
    with pytest.raises(CNIError, match="agent_socket"):
        spec.parse_config(dict(raw, agent_socket="rel"), command)


def test_del_ignores_a_malformed_prev_result() -> None:
    c = spec.parse_config(conf(prevResult={"ips": "x"}), "DEL")
    assert c.prev_result is None and "prevResult" in c.warnings[0]


def test_gc_attachments_accepts_both_keys_and_null() -> None:
    item = {"containerID": "c1", "ifname": "eth0"}
    assert spec.gc_attachments({"cni.dev/valid-attachments": [item]}) == [item]
    assert spec.gc_attachments({"cni.dev/attachments": [item]}) == [item]
    assert spec.gc_attachments({"cni.dev/valid-attachments": None}) == []
    raw = conf(cniVersion="1.1.0")
    raw["cni.dev/attachments"] = [dict(item, extra=1)]
    assert spec.parse_config(raw, "GC").raw["cni.dev/valid-attachments"] == [item]  # normalised for the agent
    for bad in ({}, {"cni.dev/valid-attachments": {}}, {"cni.dev/valid-attachments": [{"containerID": 1}]}):
        with pytest.raises(CNIError) as info:
            spec.gc_attachments(bad)
        assert info.value.code == 7 and "attachments" in info.value.msg


def test_error_json_has_cni_version_only_when_known() -> None:
    err = CNIError(11, "try later", "because")
    assert err.to_dict("1.0.0") == {
        "cniVersion": "1.0.0",
        "code": 11,
        "msg": "try later",
        "details": "because",
    }
    assert err.to_dict(None) == {"code": 11, "msg": "try later", "details": "because"}
    assert CNIError(4, "x").to_dict() == {"code": 4, "msg": "x"}
    assert spec.config_version({"cniVersion": "0.4.0"}) == "0.4.0"
    assert spec.config_version({"cniVersion": "9.9.9"}) is None


# -------------------------------------------------------------------------------------- results


def test_downgrade_to_1_1_0_keeps_every_field() -> None:
    out = spec.downgrade_result(spec.upgrade_result(FULL_RESULT), "1.1.0")
    assert out == FULL_RESULT


def test_downgrade_to_1_0_0_drops_the_1_1_fields() -> None:
    out = spec.downgrade_result(spec.upgrade_result(FULL_RESULT), "1.0.0")
    assert out == {
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "cali1234", "mac": "ee:ee:ee:ee:ee:ee", "sandbox": ""},
            {"name": "eth0", "mac": "0a:58:0a:01:02:03", "sandbox": "/run/netns/pod"},
        ],
        "ips": [
            {"address": "10.1.2.3/32", "gateway": "169.254.1.1", "interface": 1},
            {"address": "fd00::3/128", "interface": 1},
            {"address": "::ffff:10.9.9.9/128", "interface": 1},
        ],
        "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}, {"dst": "::/0"}],
        "dns": FULL_RESULT["dns"],
    }


@pytest.mark.parametrize("version", ["0.4.0", "0.3.1", "0.3.0"])
def test_downgrade_to_0_x_adds_ip_versions(version: str) -> None:
    out = spec.downgrade_result(spec.upgrade_result(FULL_RESULT), version)
    assert out["cniVersion"] == version
    assert out["ips"] == [
        {"version": "4", "address": "10.1.2.3/32", "gateway": "169.254.1.1", "interface": 1},
        {"version": "6", "address": "fd00::3/128", "interface": 1},
        {"version": "4", "address": "::ffff:10.9.9.9/128", "interface": 1},  # Go's To4() != nil
    ]
    assert out["interfaces"][1] == {"name": "eth0", "mac": "0a:58:0a:01:02:03", "sandbox": "/run/netns/pod"}
    assert out["routes"] == [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}, {"dst": "::/0"}]


def test_upgrade_drops_ip_version_and_fills_missing_lists() -> None:
    old = {"cniVersion": "0.4.0", "ips": [{"version": "4", "address": "10.0.0.5/24"}]}
    assert spec.upgrade_result(old) == {
        "cniVersion": "1.1.0",
        "interfaces": [],
        "ips": [{"address": "10.0.0.5/24"}],
        "routes": [],
        "dns": {},
    }


def test_merge_appends_and_reindexes_own_interfaces() -> None:
    prev = spec.upgrade_result(
        {
            "cniVersion": "0.4.0",
            "interfaces": [{"name": "lo", "mac": "00:00:00:00:00:00", "sandbox": "/run/netns/pod"}],
            "ips": [{"version": "4", "address": "127.0.0.1/8", "interface": 0}],
            "dns": {"nameservers": ["1.1.1.1"], "domain": "prev.local"},
        }
    )
    own = spec.upgrade_result(
        {
            "interfaces": [{"name": "cali1"}, {"name": "eth0", "sandbox": "/run/netns/pod"}],
            "ips": [
                {"address": "10.1.2.3/32", "gateway": "169.254.1.1", "interface": 1},
                {"address": "10.9.0.1/32"},
            ],
            "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}],
            "dns": {"domain": "cluster.local", "search": []},
        }
    )
    merged = spec.merge_results(prev, own)
    assert [i["name"] for i in merged["interfaces"]] == ["lo", "cali1", "eth0"]
    assert merged["ips"] == [
        {"address": "127.0.0.1/8", "interface": 0},
        {"address": "10.1.2.3/32", "gateway": "169.254.1.1", "interface": 2},
        {"address": "10.9.0.1/32"},
    ]
    assert merged["routes"] == [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}]
    assert merged["dns"] == {"nameservers": ["1.1.1.1"], "domain": "cluster.local"}
    assert spec.downgrade_result(merged, "0.4.0")["ips"][1]["interface"] == 2


def test_convert_result_between_any_two_versions() -> None:
    for a in SUPPORTED_VERSIONS:
        written = spec.downgrade_result(spec.upgrade_result(FULL_RESULT), a)
        for b in SUPPORTED_VERSIONS:
            out = spec.convert_result(written, b)
            assert out["cniVersion"] == b
            assert [ip["address"] for ip in out["ips"]] == [ip["address"] for ip in FULL_RESULT["ips"]]
            assert ("version" in out["ips"][0]) is (b < "1.0.0")
            assert ("mtu" in out["interfaces"][0]) is (a == b == "1.1.0")


addresses = st.one_of(
    st.ip_addresses(v=4).map(lambda a: f"{a}/32"), st.ip_addresses(v=6).map(lambda a: f"{a}/128")
)


@st.composite
def results(draw: st.DrawFn) -> dict:
    n = draw(st.integers(0, 3))
    interfaces = [
        {
            "name": f"if{i}",
            "mac": f"aa:bb:cc:dd:ee:0{i}",
            "sandbox": draw(st.sampled_from(["", "/run/netns/p"])),
        }
        | draw(
            st.fixed_dictionaries(
                {}, optional={"mtu": st.integers(68, 9000), "pciID": st.just("0000:01:00.0")}
            )
        )
        for i in range(n)
    ]
    ips = [
        {"address": draw(addresses)}
        | ({"interface": draw(st.integers(0, n - 1))} if n and draw(st.booleans()) else {})
        | draw(st.fixed_dictionaries({}, optional={"gateway": st.just("169.254.1.1")}))
        for _ in range(draw(st.integers(0, 3)))
    ]
    routes = [
        {"dst": draw(st.sampled_from(["0.0.0.0/0", "::/0", "10.0.0.0/8"]))}
        | draw(
            st.fixed_dictionaries({}, optional={"gw": st.just("169.254.1.1"), "table": st.integers(0, 255)})
        )
        for _ in range(draw(st.integers(0, 2)))
    ]
    return {"cniVersion": "1.1.0", "interfaces": interfaces, "ips": ips, "routes": routes, "dns": {}}


@given(results(), st.sampled_from(SUPPORTED_VERSIONS))
def test_conversion_is_stable_and_exact(result: dict, version: str) -> None:
    """Writing a result as any version, reading it back and writing it again changes nothing, and
    the written document carries only keys that version defines."""
    written = spec.downgrade_result(spec.upgrade_result(result), version)
    assert spec.downgrade_result(spec.upgrade_result(written), version) == written
    allowed_intf = {"name", "mac", "sandbox"} | (
        {"mtu", "socketPath", "pciID"} if version == "1.1.0" else set()
    )
    assert all(set(i) <= allowed_intf for i in written["interfaces"])
    for ip, original in zip(written["ips"], result["ips"], strict=True):
        assert ip["address"] == original["address"]
        if version < "1.0.0":
            parsed = ipaddress.ip_interface(original["address"]).ip
            v4 = parsed.version == 4 or parsed.ipv4_mapped is not None  # Go's To4() != nil
            assert ip["version"] == ("4" if v4 else "6")
        else:
            assert "version" not in ip
    assert all(
        set(r) <= ({"dst", "gw", "table"} if version == "1.1.0" else {"dst", "gw"}) for r in written["routes"]
    )
