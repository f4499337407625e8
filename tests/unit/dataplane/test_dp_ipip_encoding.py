"""IPIP map encodings, the sync diff, kernel-mode bookkeeping and their agreement with bpf/ipip.c."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from podnet.dataplane import bpf, ipip
from podnet.dataplane.ipip import (
    MapPlan,
    decode_addr,
    decode_config,
    decode_route_key,
    encode_addr,
    encode_config,
    encode_route_key,
    normalize_routes,
    plan_map_sync,
)
from podnet.errors import ValidationError

C_SOURCE = Path(bpf.source_path(ipip.SOURCE)).read_text()


def test_route_key_is_struct_lpm_v4_key():
    # prefixlen: u32 host order (little-endian here); addr: network order
    assert encode_route_key("10.244.2.0/26") == bytes([26, 0, 0, 0, 10, 244, 2, 0])
    assert encode_route_key("0.0.0.0/0") == bytes(8)
    for cidr in ("10.244.2.0/26", "192.168.0.0/16", "10.1.2.3/32"):
        assert decode_route_key(encode_route_key(cidr)) == cidr


def test_route_key_rejects_host_bits_and_ipv6():
    with pytest.raises(ValueError):
        encode_route_key("10.244.2.1/26")
    with pytest.raises(ValueError):
        encode_route_key("fd00::/64")


def test_addresses_and_config():
    assert encode_addr("10.0.2.2") == bytes([10, 0, 2, 2])
    assert decode_addr(bytes([10, 0, 2, 2])) == "10.0.2.2"
    raw = encode_config("10.0.1.2", 7)
    assert raw == bytes([10, 0, 1, 2, 7, 0, 0, 0]) and len(raw) == 8
    assert decode_config(raw) == ("10.0.1.2", 7)


def test_normalize_routes_canonicalises_and_names_every_problem():
    assert normalize_routes({"10.244.2.0/26": "10.0.2.2", "10.244.3.7": "10.0.2.3"}) == {
        "10.244.2.0/26": "10.0.2.2",
        "10.244.3.7/32": "10.0.2.3",
    }
    with pytest.raises(ValidationError) as exc:
        normalize_routes({"10.244.2.1/26": "10.0.2.2", "fd00::/64": "10.0.0.1", "10.244.4.0/26": "node-b"})
    paths = [p for p, _ in exc.value.problems]
    assert paths == ["10.244.2.1/26", "fd00::/64", "10.244.4.0/26"]


def test_plan_map_sync():
    current = {"a": "1", "b": "2", "c": "3"}
    desired = {"b": "2", "c": "9", "d": "4"}
    assert plan_map_sync(current, desired) == MapPlan(add=("d",), update=("c",), delete=("a",))
    assert plan_map_sync(desired, desired) == MapPlan()


def test_stats_and_maps_match_the_c_source():
    enum = re.search(r"enum \{(.*?)STAT_MAX,", C_SOURCE, re.S)
    assert enum
    names = [n.strip().removeprefix("STAT_").lower() for n in enum.group(1).split(",") if n.strip()]
    assert tuple(names) == ipip.STATS
    for name in ipip.MAPS:
        assert re.search(rf"\}} {name} SEC\(\"\.maps\"\);", C_SOURCE), name
    for prog in (ipip.ENCAP_PROG, ipip.DECAP_PROG):
        assert f"int {prog}(struct __sk_buff *skb)" in C_SOURCE
    assert "(1ULL << 7)" in C_SOURCE  # BPF_F_ADJ_ROOM_DECAP_L3_IPV4, missing from older uapi headers


def test_kernel_mode_sync_only_remembers(monkeypatch):
    monkeypatch.setattr(ipip, "kernel_has_ipip", lambda: True)
    tunnel = ipip.IPIPTunnel(local_ip="10.0.1.2", pin_dir="/nonexistent", cache_dir="/nonexistent")
    assert tunnel.mode == "kernel" and tunnel.device == "tunl0"
    assert tunnel.sync({"10.244.2.0/26": "10.0.2.2"}) == {"added": 1, "updated": 0, "deleted": 0}
    assert tunnel.sync({"10.244.2.0/26": "10.0.2.3"}) == {"added": 0, "updated": 1, "deleted": 0}
    assert tunnel.entries() == {"10.244.2.0/26": "10.0.2.3"} and tunnel.peers() == {"10.0.2.3"}
    assert tunnel.stats() == {} and tunnel.config() is None


def test_auto_mode_picks_bpf_without_the_module(monkeypatch):
    monkeypatch.setattr(ipip, "kernel_has_ipip", lambda: False)
    assert ipip.IPIPTunnel().mode == "bpf"
    with pytest.raises(ValueError):
        ipip.IPIPTunnel(mode="gre")


def test_kernel_has_ipip(monkeypatch):
    import subprocess

    monkeypatch.setattr(ipip.os.path, "isdir", lambda p: p == "/sys/module/ipip")
    assert ipip.kernel_has_ipip()
    monkeypatch.setattr(ipip.os.path, "isdir", lambda p: False)
    monkeypatch.setattr("builtins.open", lambda *a, **k: (_ for _ in ()).throw(OSError()))
    calls = []

    def fake_run(argv, **kw):
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 1)

    monkeypatch.setattr(ipip.subprocess, "run", fake_run)
    assert not ipip.kernel_has_ipip()
    assert calls == [["modprobe", "-n", "-q", "ipip"]]
