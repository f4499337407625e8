"""IPIPTunnel on one scratch node: map sync (diff, timing), remove(), safety checks, the CLI listing.

The node is a namespace ``pntm<hex>-node`` whose ``eth0`` is a veth to ``pntm<hex>-peer``; pins go
under ``/sys/fs/bpf/pntm<hex>-pins``. Both are removed after each test, also on failure.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from podnet.cli import cmd_bpf
from podnet.dataplane import bpf
from podnet.dataplane.errors import DataplaneError
from podnet.dataplane.ipip import PEERS_MAP, ROUTES_MAP, TC_PREF, IPIPTunnel
from podnet.dataplane.netlink import Netlink
from podnet.dataplane.sysctl import read as read_sysctl
from podnet.dataplane.sysctl import write as write_sysctl
from podnet.lab.netns import create_netns, delete_netns, list_netns

pytestmark = pytest.mark.root

TOOLS = ("ip", "tc", "bpftool", "clang")


@dataclass
class Scratch:
    prefix: str
    node: str
    pin_dir: str
    cache_dir: str

    def tunnel(self, **kwargs) -> IPIPTunnel:
        return IPIPTunnel(
            uplink="eth0",
            netns=self.node,
            pin_dir=self.pin_dir,
            cache_dir=self.cache_dir,
            mode="bpf",
            **kwargs,
        )


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("bpf-cache"))


@pytest.fixture
def scratch(cache_dir: str) -> Iterator[Scratch]:
    if os.geteuid() != 0:
        pytest.skip("needs root: network namespaces, tc and BPF")
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (scripts/setup.sh installs them)")
    prefix = f"pntm{secrets.token_hex(2)}-"
    node, peer = f"{prefix}node", f"{prefix}peer"
    pin_dir = f"{bpf.BPFFS}/{prefix}pins"
    try:
        for ns in (node, peer):
            create_netns(ns)
        with Netlink.open(node) as nl:
            nl.link_set(1, up=True)
            nl.link_add_veth("eth0", "eth0", peer_netns=peer, mtu=1500, up=True)
            nl.addr_add("eth0", "10.0.7.2/24")
        with Netlink.open(peer) as nl:
            nl.link_set("eth0", up=True)
        yield Scratch(prefix, node, pin_dir, cache_dir)
    finally:
        for ns in list_netns(prefix):
            delete_netns(ns)
        bpf.unpin_tree(pin_dir)
    assert not list_netns(prefix) and not os.path.exists(pin_dir)


def _routes(nodes: int, blocks_per_node: int, *, offset: int = 0) -> dict[str, str]:
    """``nodes`` x ``blocks_per_node`` /26 blocks of 10.128.0.0/10, node i at 10.1.x.y."""
    base = int(ipaddress.IPv4Address("10.128.0.0"))
    out = {}
    for i in range(nodes):
        node_ip = str(ipaddress.IPv4Address(int(ipaddress.IPv4Address("10.1.0.1")) + i + offset))
        for j in range(blocks_per_node):
            out[f"{ipaddress.IPv4Address(base + (i * blocks_per_node + j) * 64)}/26"] = node_ip
    return out


def test_sync_writes_only_the_differences_and_is_fast(scratch: Scratch) -> None:
    tunnel = scratch.tunnel()
    tunnel.ensure()
    desired = _routes(250, 2)  # 500 blocks of 250 nodes

    start = time.perf_counter()
    first = tunnel.sync(desired)
    full = time.perf_counter() - start
    assert first == {"added": 500, "updated": 0, "deleted": 0, "peers_added": 250, "peers_deleted": 0}
    assert tunnel.entries() == desired and tunnel.peers() == set(desired.values())

    start = time.perf_counter()
    again = tunnel.sync(desired)
    resync = time.perf_counter() - start
    assert again == dict.fromkeys(first, 0)

    changed = dict(desired)
    blocks = sorted(changed)
    for cidr in blocks[:10]:
        changed[cidr] = "10.2.0.1"  # moved to a new node
    for cidr in blocks[10:20]:
        del changed[cidr]
    changed.update({f"10.200.{i}.0/26": "10.2.0.2" for i in range(10)})
    start = time.perf_counter()
    partial = tunnel.sync(changed)
    delta = time.perf_counter() - start
    assert (partial["added"], partial["updated"], partial["deleted"]) == (10, 10, 10)
    assert tunnel.entries() == changed and tunnel.peers() == set(changed.values())

    big = _routes(2500, 2)
    start = time.perf_counter()
    tunnel.sync(big)
    large = time.perf_counter() - start
    assert tunnel.entries() == big
    print(
        f"\nipip map sync: 500 new entries {full * 1000:.1f} ms, unchanged resync {resync * 1000:.1f} ms, "
        f"30 changes {delta * 1000:.1f} ms, 5000 entries (from 500) {large * 1000:.1f} ms"
    )
    assert full < 1.0 and resync < 1.0


def test_maps_of_an_old_layout_are_replaced_by_new_empty_ones(scratch: Scratch, caplog) -> None:
    """A pinned map that no longer fits the program (an upgrade changed its layout): ensure loads
    with new maps instead of failing, pins them in place, and leaves no scratch directory."""
    tunnel = scratch.tunnel()
    tunnel.ensure()
    tunnel.sync({"10.244.9.0/26": "10.0.7.3"})
    routes_pin = os.path.join(scratch.pin_dir, ROUTES_MAP)
    right = bpf.map_info(pinned=routes_pin)
    os.unlink(routes_pin)
    bpf.run_tool(
        [
            bpf.BPFTOOL,
            "map",
            "create",
            routes_pin,
            "type",
            "hash",
            "key",
            "4",
            "value",
            "4",
            "entries",
            "8",
            "name",
            ROUTES_MAP,
        ]
    )
    assert bpf.map_info(pinned=routes_pin).key_size == 4 != right.key_size

    [key] = [n[5:] for n in os.listdir(scratch.pin_dir) if n.startswith("prog-")]
    peers_id = bpf.map_info(pinned=os.path.join(scratch.pin_dir, PEERS_MAP)).id
    scratch.tunnel().ensure()
    assert bpf.map_info(pinned=os.path.join(scratch.pin_dir, PEERS_MAP)).id == peers_id  # kept: it fits
    assert tunnel.peers() == {"10.0.7.3"}
    now = bpf.map_info(pinned=routes_pin)
    assert (now.key_size, now.value_size, now.type) == (right.key_size, right.value_size, right.type)
    assert "do not fit" in caplog.text
    assert [n for n in os.listdir(scratch.pin_dir) if n.startswith(("prog-", "load-"))] == [f"prog-{key}"]
    attached = [f for f in bpf.tc_filters("tunl0", "egress", scratch.node) if f.pref == TC_PREF]
    assert attached and now.id in bpf.prog_info(prog_id=attached[0].prog_id).map_ids
    assert tunnel.entries() == {}  # new, empty: the next sync refills them
    tunnel.sync({"10.244.9.0/26": "10.0.7.3"})
    assert tunnel.entries() == {"10.244.9.0/26": "10.0.7.3"}


def _snapshot(ns: str) -> dict[str, str]:
    def run(*cmd: str) -> str:
        return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True).stdout

    return {
        "links": run("ip", "-d", "link", "show"),
        "addrs": run("ip", "addr", "show"),
        "routes": run("ip", "route", "show", "table", "all"),
        "qdiscs": run("tc", "qdisc", "show"),
        "filters": run("tc", "filter", "show", "dev", "eth0", "ingress"),
        "rp_filter": run("sysctl", "-n", "net.ipv4.conf.eth0.rp_filter"),
    }


def test_remove_leaves_the_namespace_as_before(scratch: Scratch) -> None:
    before = _snapshot(scratch.node)
    tunnel = scratch.tunnel()
    tunnel.ensure()
    tunnel.sync({"10.244.9.0/26": "10.0.7.3"})
    with Netlink.open(scratch.node) as nl:
        nl.route_add("10.244.9.0/26", gateway="10.0.7.3", dev="tunl0", onlink=True)
        tunl0 = nl.link_get("tunl0")
    assert tunl0.kind in ("dummy", "ifb") and tunl0.mtu == 1480 and tunl0.up
    assert tunnel.config() == ("10.0.7.2", Netlink.open(scratch.node).link_get("eth0").index)
    assert os.listdir(scratch.pin_dir)
    tunnel.remove()
    assert _snapshot(scratch.node) == before
    assert not os.path.exists(scratch.pin_dir)
    tunnel.remove()  # idempotent


def test_strict_rp_filter_on_the_uplink_becomes_loose(scratch: Scratch) -> None:
    write_sysctl("net.ipv4.conf.eth0.rp_filter", 1, scratch.node)
    scratch.tunnel().ensure()
    assert read_sysctl("net.ipv4.conf.eth0.rp_filter", scratch.node) == "2"


FOREIGN_PROGRAM = """
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
SEC("tc") int someone_else(struct __sk_buff *skb) { return TC_ACT_UNSPEC; }
char LICENSE[] SEC("license") = "GPL";
"""


def test_ensure_refuses_a_foreign_tunl0_and_a_foreign_filter(scratch: Scratch, tmp_path) -> None:
    with Netlink.open(scratch.node) as nl:
        nl.link_add_veth("tunl0", "tunl0p")
    with pytest.raises(DataplaneError, match="tunl0 exists as a veth"):
        scratch.tunnel().ensure()
    with Netlink.open(scratch.node) as nl:
        nl.link_del("tunl0")
    # someone else's program at our tc pref on the uplink is not overwritten
    (tmp_path / "other.c").write_text(FOREIGN_PROGRAM)
    obj = bpf.compile_program(str(tmp_path / "other.c"), str(tmp_path))
    # loaded by bpftool into our pin dir (tc's own loader would create /sys/fs/bpf/tc/globals)
    os.makedirs(scratch.pin_dir, exist_ok=True)
    bpf.load_object(obj, f"{scratch.pin_dir}/foreign", f"{scratch.pin_dir}/foreign-maps")
    bpf.attach_tc(
        "eth0", "ingress", f"{scratch.pin_dir}/foreign/someone_else", pref=TC_PREF, netns=scratch.node
    )
    foreign = bpf.tc_filters("eth0", "ingress", scratch.node)
    assert [f.prog_name for f in foreign] == ["someone_else"]
    with pytest.raises(bpf.BpfError, match="foreign program 'someone_else'"):
        scratch.tunnel().ensure()
    assert [f.prog_name for f in bpf.tc_filters("eth0", "ingress", scratch.node)] == ["someone_else"]


def test_bpf_prog_list_shows_both_hooks(scratch: Scratch, monkeypatch, capsys) -> None:
    tunnel = scratch.tunnel()
    tunnel.ensure()
    progs = bpf.list_programs(scratch.node)
    where = {(p["device"], p["direction"]): p for p in progs}
    assert set(where) == {("tunl0", "egress"), ("eth0", "ingress")}
    encap, decap = where[("tunl0", "egress")], where[("eth0", "ingress")]
    assert (encap["name"], decap["name"]) == ("ipip_encap", "ipip_decap")
    assert encap["pref"] == decap["pref"] == TC_PREF
    assert len(encap["tag"]) == 16 and encap["pinned"][0].startswith(scratch.pin_dir)
    assert {m["name"] for m in encap["maps"]} == {"ipip_routes", "ipip_config", "ipip_stats"}
    assert {m["name"] for m in decap["maps"]} == {"ipip_peers", "ipip_config", "ipip_stats"}
    assert all(m["pinned"] == [f"{scratch.pin_dir}/{m['name']}"] for m in encap["maps"])

    monkeypatch.setenv("PODNET_LAB_PREFIX", scratch.prefix)
    parser = argparse.ArgumentParser()
    cmd_bpf.add_arguments(parser)
    assert cmd_bpf.run(parser.parse_args(["prog", "list", "--node", "node", "-o", "json"])) == 0
    assert json.loads(capsys.readouterr().out) == progs
    assert cmd_bpf.run(parser.parse_args(["prog", "list", "--node", "node"])) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == ["DEVICE", "DIRECTION", "PREF", "NAME", "ID", "TAG", "MAPS"]
    assert "ipip_encap" in table and "ipip_decap" in table


def test_attach_programs_through_netlink_on_a_new_device_and_again(scratch: Scratch, tmp_path) -> None:
    """``attach_tc_programs``: the clsact and both hooks in one rtnetlink write on a device without
    a clsact, annotated as tc's ``object-pinned``; again on one that has it (a detached hook comes
    back, an attached one is replaced in place); a missing device is a clear error."""
    (tmp_path / "other.c").write_text(FOREIGN_PROGRAM)
    obj = bpf.compile_program(str(tmp_path / "other.c"), str(tmp_path))
    os.makedirs(scratch.pin_dir, exist_ok=True)
    bpf.load_object(obj, f"{scratch.pin_dir}/prog", f"{scratch.pin_dir}/prog-maps")
    pinned = f"{scratch.pin_dir}/prog/someone_else"
    with Netlink.open(scratch.node) as nl:
        nl.link_add_veth("lxcnew", "lxcnewp", up=True)
    both = {"ingress": pinned, "egress": pinned}
    bpf.attach_tc_programs("lxcnew", both, pref=TC_PREF, netns=scratch.node)
    first = {}
    for direction in ("ingress", "egress"):
        [attached] = bpf.tc_filters("lxcnew", direction, scratch.node)
        assert (attached.prog_name, attached.pref, attached.handle) == ("someone_else", TC_PREF, 1)
        assert attached.bpf_name == "someone_else:[*fsobj]"
        first[direction] = attached.prog_id
    # a second time: the clsact is kept, the detached hook is back, the other replaced in place
    bpf.detach_tc("lxcnew", "egress", pref=TC_PREF, netns=scratch.node)
    assert bpf.tc_filters("lxcnew", "egress", scratch.node) == []
    bpf.attach_tc_programs("lxcnew", both, pref=TC_PREF, netns=scratch.node)
    for direction in ("ingress", "egress"):
        [attached] = bpf.tc_filters("lxcnew", direction, scratch.node)
        assert attached.prog_id == first[direction] and attached.pref == TC_PREF
    with pytest.raises(bpf.BpfError, match="nosuchdev"):
        bpf.attach_tc_programs("nosuchdev", both, pref=TC_PREF, netns=scratch.node)
