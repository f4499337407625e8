"""``podnet bpf endpoint|ipcache|policy|ct``: argument parsing, the pure renderers, and the commands
over fake pins (no root: the pinned-map readers are replaced, the pin files are empty stand-ins)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from podnet.calc.policymap import PolicyKey
from podnet.cli import cmd_bpf
from podnet.cli.main import build_parser, main
from podnet.dataplane import lxc
from podnet.dataplane.cilium_maps import CtEntry, EndpointValue
from podnet.dataplane.lxc import PinnedEntry

EP1 = EndpointValue(1, 48213, "10.244.1.2", "6a:1f:00:00:00:0e", "3e:0c:00:00:00:a1", True, False, True)
EP2 = EndpointValue(2, 0, "10.244.1.3", "6a:1f:00:00:00:0f", "3e:0c:00:00:00:a2", True, True, False)


def _ct(**kw) -> CtEntry:
    base = dict(
        endpoint=1,
        direction="egress",
        protocol=6,
        saddr="10.244.1.2",
        sport=40112,
        daddr="10.244.2.5",
        dport=8080,
        packets_fwd=6,
        bytes_fwd=412,
        packets_rev=4,
        bytes_rev=290,
        expires=1000,
        created=900,
        peer_identity=50112,
        entry_id=3,
        flags=("SEEN_REPLY",),
        tcp_flags_fwd=0x1B,
        tcp_flags_rev=0x1A,
    )
    base.update(kw)
    return CtEntry(**base)


# ------------------------------------------------------------------------------------ parsing


def test_parse_endpoint_ipcache_policy_ct() -> None:
    p = build_parser()
    a = p.parse_args(["bpf", "endpoint", "list", "--node", "node-1", "-o", "json"])
    assert (a.bpf_object, a.bpf_verb, a.node, a.pin_dir, a.output) == (
        "endpoint",
        "list",
        "node-1",
        None,
        "json",
    )
    a = p.parse_args(["bpf", "ipcache", "list", "--pin-dir", "/x/lxc"])
    assert (a.bpf_object, a.node, a.pin_dir, a.output, a.lab_prefix) == (
        "ipcache",
        None,
        "/x/lxc",
        "table",
        None,
    )
    a = p.parse_args(["bpf", "policy", "get", "np/api", "--node", "node-2", "--lab-prefix", "pnb-"])
    assert (a.bpf_object, a.bpf_verb, a.pod, a.node, a.lab_prefix) == (
        "policy",
        "get",
        "np/api",
        "node-2",
        "pnb-",
    )
    a = p.parse_args(["bpf", "ct", "list", "node-1", "-o", "json"])
    assert (a.bpf_object, a.node, a.output) == ("ct", "node-1", "json")
    a = p.parse_args(["bpf", "ct", "list"])
    assert a.node is None


@pytest.mark.parametrize(
    "argv",
    [
        ["bpf", "policy", "get"],  # NS/POD is required
        ["bpf", "endpoint"],  # a verb is required
        ["bpf", "ipcache", "list", "-o", "yaml"],
    ],
)
def test_parse_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(argv)


# --------------------------------------------------------------------------------- renderers


def test_port_proto_and_protocols() -> None:
    assert cmd_bpf.port_proto(0, 0, 0) == "ANY"
    assert cmd_bpf.port_proto(6, 0, 0) == "ANY/TCP"
    assert cmd_bpf.port_proto(6, 80, 16) == "80/TCP"
    assert cmd_bpf.port_proto(17, 8000, 14) == "8000-8003/UDP"
    assert cmd_bpf.port_proto(132, 1024, 6) == "1024-2047/SCTP"
    assert cmd_bpf.port_proto(99, 7, 16) == "7/99"
    assert cmd_bpf.protocol_name(1) == "ICMP"
    assert cmd_bpf.identity_text(1) == "1 (reserved:host)"
    assert cmd_bpf.identity_text(48213) == "48213"
    assert cmd_bpf.identity_text((1 << 24) + 5) == f"{(1 << 24) + 5} (cidr)"


def test_endpoint_table_and_json_rows() -> None:
    rows = cmd_bpf.endpoint_rows("node-1", {12: EP2, 9: EP1})
    assert [r["endpoint"] for r in rows] == [1, 2]
    assert rows[0] == {
        "node": "node-1",
        "ifindex": 9,
        "endpoint": 1,
        "identity": 48213,
        "ipv4": "10.244.1.2",
        "mac": "6a:1f:00:00:00:0e",
        "host_mac": "3e:0c:00:00:00:a1",
        "ingress_enforced": True,
        "egress_enforced": False,
        "ready": True,
    }
    json.dumps(rows)
    assert cmd_bpf.render_endpoint_table(rows) == (
        "NODE    ENDPOINT  IFINDEX  IPV4        MAC                HOST MAC           IDENTITY  "
        "INGRESS POLICY  EGRESS POLICY  STATUS\n"
        "node-1  1         9        10.244.1.2  6a:1f:00:00:00:0e  3e:0c:00:00:00:a1  48213     "
        "Enabled         Disabled       ready\n"
        "node-1  2         12       10.244.1.3  6a:1f:00:00:00:0f  3e:0c:00:00:00:a2  0         "
        "Enabled         Enabled        not-ready\n"
    )
    # this host's pins (no node): no NODE column
    assert cmd_bpf.render_endpoint_table(cmd_bpf.endpoint_rows(None, {9: EP1})).startswith(
        "ENDPOINT  IFINDEX"
    )
    assert cmd_bpf.render_endpoint_table([]) == "no endpoints in the endpoint map\n"


def test_ipcache_rows_sorted_by_address_and_flags() -> None:
    cache = {"10.244.1.2/32": (48213, 1), "10.0.0.0/8": ((1 << 24) + 7, 0), "10.77.0.11/32": (1, 0)}
    rows = cmd_bpf.ipcache_rows(None, cache)
    assert [r["prefix"] for r in rows] == ["10.0.0.0/8", "10.77.0.11/32", "10.244.1.2/32"]
    assert rows[2] == {"node": None, "prefix": "10.244.1.2/32", "identity": 48213, "flags": 1, "pod": True}
    assert cmd_bpf.render_ipcache_table(rows) == (
        "PREFIX         IDENTITY           FLAGS\n"
        "10.0.0.0/8     16777223 (cidr)    -\n"
        "10.77.0.11/32  1 (reserved:host)  -\n"
        "10.244.1.2/32  48213              pod\n"
    )
    assert cmd_bpf.render_ipcache_table(cmd_bpf.ipcache_rows("node-2", cache)).startswith("NODE    PREFIX")
    assert cmd_bpf.render_ipcache_table([]) == "no entries in the ipcache\n"


def _policy_entries() -> list[PinnedEntry]:
    return [
        PinnedEntry(1, PolicyKey("egress", 0, 6, 8000, 14), True, 0, 4),
        PinnedEntry(1, PolicyKey("ingress", 48213, 6, 8080, 16), False, 0, 3),
        PinnedEntry(1, PolicyKey("ingress", 1), False, 0, 1),
        PinnedEntry(1, PolicyKey("ingress", (1 << 24) + 7, 17, 53, 16), False, 15001, 0),
    ]


def test_identity_labels() -> None:
    labels = cmd_bpf.identity_labels({48213: ["k8s:app=web"]}, {(1 << 24) + 7: ["10.0.0.0/8"]})
    assert labels(0) == []
    assert labels(2) == ["reserved:world"]
    assert labels(48213) == ["k8s:app=web"]
    assert labels(4000) == ["(unknown identity)"]
    assert labels((1 << 24) + 7) == ["cidr:10.0.0.0/8"]
    assert labels((1 << 24) + 8) == ["cidr"]


def test_policy_doc_and_table() -> None:
    labels = cmd_bpf.identity_labels(
        {48213: ["k8s:app=web", "k8s:io.kubernetes.pod.namespace=np"]}, {(1 << 24) + 7: ["10.0.0.0/8"]}
    )
    doc = cmd_bpf.policy_doc(
        "np/api", "node-1", 9, EP1, _policy_entries(), labels, {3: (12, 888), 1: (2, 120)}
    )
    assert [(e["direction"], e["identity"]) for e in doc["entries"]] == [
        ("ingress", 1),
        ("ingress", 48213),
        ("ingress", (1 << 24) + 7),
        ("egress", 0),
    ]
    deny = doc["entries"][3]
    assert deny == {
        "direction": "egress",
        "identity": 0,
        "labels": [],
        "protocol": 6,
        "port": 8000,
        "prefix": 14,
        "ports": [8000, 8003],
        "deny": True,
        "proxy_port": 0,
        "entry_id": 4,
        "packets": None,  # no counters for entry 4 in this map
        "bytes": None,
    }
    assert doc["entries"][0]["ports"] == [0, 65535]
    assert (doc["pod"], doc["node"], doc["endpoint"], doc["ifindex"]) == ("np/api", "node-1", 1, 9)
    json.dumps(doc)
    assert cmd_bpf.render_policy(doc) == (
        "np/api on node-1: endpoint 1, 10.244.1.2, identity 48213, ingress enforced, "
        "egress not enforced (allows all)\n"
        "POLICY  DIRECTION  IDENTITY  LABELS (source:key[=value])         PORT/PROTO     PROXY PORT  "
        "ENTRY  PACKETS  BYTES\n"
        "Allow   Ingress    1         reserved:host                       ANY            NONE        "
        "1      2        120\n"
        "Allow   Ingress    48213     k8s:app=web                         8080/TCP       NONE        "
        "3      12       888\n"
        "                             k8s:io.kubernetes.pod.namespace=np\n"
        "Allow   Ingress    16777223  cidr:10.0.0.0/8                     53/UDP         15001       "
        "-      -        -\n"
        "Deny    Egress     ANY       -                                   8000-8003/TCP  NONE        "
        "4      -        -\n"
    )
    empty = cmd_bpf.policy_doc("np/x", None, 12, EP2, [], labels, None)
    assert cmd_bpf.render_policy(empty) == (
        "np/x: endpoint 2, 10.244.1.3, identity 0, ingress enforced, egress enforced, NOT READY "
        "(every new connection refused)\nno policy map entries\n"
    )


def test_ct_rows_and_table() -> None:
    entries = [
        _ct(),
        _ct(endpoint=1, direction="ingress", protocol=17, saddr="10.244.2.5", sport=53, daddr="10.244.1.2",
            dport=5353, expires=990, flags=(), entry_id=0, peer_identity=6),
    ]  # fmt: skip
    rows = cmd_bpf.ct_rows("node-1", entries, now=995)
    assert [r["direction"] for r in rows] == ["egress", "ingress"]
    assert rows[0]["expires_in"] == 5 and not rows[0]["expired"]
    assert rows[1]["expires_in"] == -5 and rows[1]["expired"]
    assert rows[0]["flags"] == ["SEEN_REPLY"] and rows[0]["tcp_flags_fwd"] == 0x1B
    json.dumps(rows)
    assert cmd_bpf.render_ct_table(rows) == (
        "NODE    PROTO  SOURCE -> DESTINATION                ENDPOINT  DIRECTION  EXPIRES  "
        "PACKETS FWD/REV  BYTES FWD/REV  FLAGS       PEER IDENTITY             ENTRY\n"
        "node-1  TCP    10.244.1.2:40112 -> 10.244.2.5:8080  1         egress     5s       "
        "6/4              412/290        SEEN_REPLY  50112                     3\n"
        "node-1  UDP    10.244.2.5:53 -> 10.244.1.2:5353     1         ingress    expired  "
        "6/4              412/290        -           6 (reserved:remote-node)  -\n"
    )
    assert cmd_bpf.expires_text(0) == "0s"
    assert cmd_bpf.render_ct_table([]) == "no entries in the conntrack map\n"


# ------------------------------------------------------------------------------ pin directories


def test_pin_dirs(monkeypatch: pytest.MonkeyPatch) -> None:
    from podnet.lab.naming import LabError

    assert cmd_bpf.lxc_pin_dir("node-1", "/given") == "/given"
    with pytest.raises(LabError, match="no lab with prefix pnzq- is up"):  # --lab-prefix of no lab
        cmd_bpf.targets(None, None, "pnzq-")
    monkeypatch.setattr(cmd_bpf, "_lab_nodes", lambda prefix: None)
    assert cmd_bpf.lxc_pin_dir("node-1") == "/sys/fs/bpf/podnet/node-1/lxc"
    monkeypatch.setattr(cmd_bpf, "_lab_nodes", lambda prefix: (prefix or "pn-", ["node-1", "node-2"]))
    assert cmd_bpf.lxc_pin_dir("node-2") == "/run/podnet-lab/pn/bpf/node-2/lxc"
    assert cmd_bpf.lxc_pin_dir("node-2", prefix="pnb-") == "/run/podnet-lab/pnb/bpf/node-2/lxc"
    every = cmd_bpf.targets(None, None, None)
    assert [(t.node, t.pin_dir, t.lab) for t in every] == [
        ("node-1", "/run/podnet-lab/pn/bpf/node-1/lxc", "pn-"),
        ("node-2", "/run/podnet-lab/pn/bpf/node-2/lxc", "pn-"),
    ]
    with pytest.raises(LabError, match="no node node-9 in the lab with prefix pn-"):
        cmd_bpf.targets("node-9", None, None)


def test_missing_pins_error_names_the_path_and_hints() -> None:
    lab = cmd_bpf.Target("node-1", "/run/podnet-lab/pn/bpf/node-1/lxc", "pn-")
    exc = cmd_bpf.missing_pins_error(lab.pin_dir, "pn_endpoints", lab)
    assert isinstance(exc, lxc.LxcError)
    assert (
        exc.message
        == "node-1: no Cilium datapath pinned in /run/podnet-lab/pn/bpf/node-1/lxc (pn_endpoints is missing)"
    )
    assert "--profile cilium" in (exc.hint or "") and "podnet lab status" in (exc.hint or "")
    host = cmd_bpf.missing_pins_error("/p", "pn_ct", None, root=False)
    assert host.message == "no Cilium datapath pinned in /p (pn_ct is missing)"
    assert (host.hint or "").startswith("reading pinned BPF maps needs root")
    assert "--pin-dir" in (host.hint or "")


def test_list_without_pins_exits_with_the_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["endpoint", "list"], ["ipcache", "list"], ["ct", "list"]):
        assert main(["bpf", *argv, "--pin-dir", str(tmp_path)]) == lxc.LxcError.exit_code
        err = capsys.readouterr().err
        assert f"error: no Cilium datapath pinned in {tmp_path}" in err
        assert "hint: " in err


# ------------------------------------------------------------------------- commands on fake pins


def _fake_pins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in (lxc.ENDPOINTS, lxc.IPCACHE, lxc.POLICY, lxc.CT):
        (tmp_path / name).touch()
    monkeypatch.setattr(lxc, "pinned_endpoints", lambda d: {9: EP1, 12: EP2})
    monkeypatch.setattr(
        lxc, "pinned_ipcache", lambda d: {"10.244.1.2/32": (48213, 1), "10.0.0.0/8": ((1 << 24) + 7, 0)}
    )
    monkeypatch.setattr(
        lxc,
        "pinned_policy",
        lambda d: [*_policy_entries(), PinnedEntry(2, PolicyKey("egress", 2), False, 0, 9)],
    )
    monkeypatch.setattr(lxc, "pinned_ct", lambda d: [_ct()])
    return tmp_path


def test_lists_on_fake_pins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pins = str(_fake_pins(tmp_path, monkeypatch))
    assert main(["bpf", "endpoint", "list", "--pin-dir", pins, "-o", "json"]) == 0
    assert [r["ipv4"] for r in json.loads(capsys.readouterr().out)] == ["10.244.1.2", "10.244.1.3"]
    assert main(["bpf", "ipcache", "list", "--pin-dir", pins]) == 0
    assert "10.244.1.2/32  48213" in capsys.readouterr().out
    assert main(["bpf", "ct", "list", "--pin-dir", pins]) == 0
    assert "10.244.1.2:40112 -> 10.244.2.5:8080" in capsys.readouterr().out


def test_lists_every_lab_node_and_report_a_failing_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a").mkdir()
    good = _fake_pins(tmp_path / "a", monkeypatch)
    monkeypatch.setattr(
        cmd_bpf,
        "targets",
        lambda node, pin_dir, prefix: [
            cmd_bpf.Target("node-1", str(good), "pn-"),
            cmd_bpf.Target("node-2", str(tmp_path / "missing"), "pn-"),
        ],
    )
    assert main(["bpf", "endpoint", "list"]) == 1
    out, err = capsys.readouterr()
    assert out.startswith("NODE ") and out.count("node-1") == 2
    assert f"error: node-2: no Cilium datapath pinned in {tmp_path / 'missing'}" in err


def _store_with_pods():
    from podnet.datastore.identity_alloc import IdentityAllocator
    from podnet.datastore.memory import MemoryDatastore
    from podnet.datastore.resources import ResourceStore
    from podnet.model import parse_resource
    from podnet.model.identity import LabelSet

    store = ResourceStore(MemoryDatastore())
    docs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "np"}}]
    for name, ip, host in (
        ("api", "10.244.1.2", False),
        ("other", "10.244.9.9", False),
        ("hn", "10.77.0.11", True),
    ):
        spec = {"nodeName": "node-1", "containers": [{"name": "c"}], "hostNetwork": host}
        meta = {"name": name, "namespace": "np", "labels": {"app": name}}
        status = {"phase": "Running", "podIP": ip}
        docs.append({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec, "status": status})
    store.apply([parse_resource(d) for d in docs])
    number = IdentityAllocator(store.store, store.layout, "node-1").allocate(LabelSet.of({"app": "web"}))
    return store, number


def test_policy_get_on_fake_pins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import podnet.cli.context

    pins = str(_fake_pins(tmp_path, monkeypatch))
    store, number = _store_with_pods()
    entries = [PinnedEntry(1, PolicyKey("ingress", number, 6, 8080, 16), False, 0, 3)]
    monkeypatch.setattr(
        lxc, "pinned_policy", lambda d: [*entries, PinnedEntry(2, PolicyKey("egress", 2), False, 0, 9)]
    )
    monkeypatch.setattr(podnet.cli.context, "resource_store", lambda args: store)
    assert main(["bpf", "policy", "get", "np/api", "--pin-dir", pins, "-o", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["pod"], doc["node"], doc["endpoint"]) == ("np/api", "node-1", 1)
    assert [(e["identity"], e["labels"], e["entry_id"]) for e in doc["entries"]] == [
        (number, ["k8s:app=web"], 3)
    ]
    assert main(["bpf", "policy", "get", "np/api", "--pin-dir", pins]) == 0
    out = capsys.readouterr().out
    assert out.startswith("np/api on node-1: endpoint 1, 10.244.1.2")
    assert re.search(rf"^Allow +Ingress +{number} +k8s:app=web ", out, re.MULTILINE)  # any number width
    # an IP that is no endpoint's, a host-network pod, an unknown pod
    assert main(["bpf", "policy", "get", "np/other", "--pin-dir", pins]) == 3
    assert "no endpoint with IP 10.244.9.9 (pod np/other) on node node-1" in capsys.readouterr().err
    assert main(["bpf", "policy", "get", "np/hn", "--pin-dir", pins]) == 1
    assert "uses the host's network" in capsys.readouterr().err
    assert main(["bpf", "policy", "get", "np/nope", "--pin-dir", pins]) == 3
