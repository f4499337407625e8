"""The CLI's tables, byte for byte: every command that aligns columns does it with
``printers.align``, and scripts read these outputs, so the expected text is spelled out here."""

from __future__ import annotations

import argparse
from types import SimpleNamespace as NS

import pytest

from podnet.cli import cmd_bpf, cmd_ipam, printers
from podnet.cli.cmd_node import render_table

PODS = [
    {
        "metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": "web", "tier": "front"}},
        "spec": {"nodeName": "node-1"},
        "status": {"phase": "Running", "podIP": "10.244.1.5"},
    },
    {"metadata": {"name": "db", "namespace": "data"}, "spec": {}},
]
POOLS = [
    {
        "metadata": {"name": "default-ipv4-ippool"},
        "spec": {
            "cidr": "10.244.0.0/16",
            "natOutgoing": True,
            "ipipMode": "Never",
            "vxlanMode": "Always",
            "blockSize": 26,
            "nodeSelector": "all()",
        },
    },
    {"metadata": {"name": "p2"}, "spec": {"cidr": "10.9.0.0/24", "disabled": False}},
]


def test_align_pads_to_the_widest_cell_and_strips_line_ends() -> None:
    assert printers.align([("A", "BB", "C"), ("aaa", "", "c")]) == ["A     BB   C", "aaa        c"]
    assert printers.align([("A", "B"), ("aaa", "b")], gap="  ") == ["A    B", "aaa  b"]
    assert printers.align([]) == []


def test_align_box_is_calicoctls_table() -> None:
    assert printers.align([("AB", "C"), ("x", "long")], box=True) == [
        "+----+------+",
        "| AB |  C   |",
        "+----+------+",
        "| x  | long |",
        "+----+------+",
    ]


@pytest.mark.parametrize(
    ("docs", "kind", "options", "expected"),
    [
        (
            PODS,
            "Pod",
            {"wide": False, "namespaced": True, "all_namespaces": False},
            "NAME    STATUS    IP           NODE     AGE\n"
            "web-1   Running   10.244.1.5   node-1   <unknown>\n"
            "db      Pending   <none>       <none>   <unknown>",
        ),
        (
            PODS,
            "Pod",
            {"wide": True, "namespaced": True, "all_namespaces": True},
            "NAMESPACE   NAME    STATUS    IP           NODE     AGE         LABELS\n"
            "shop        web-1   Running   10.244.1.5   node-1   <unknown>   app=web,tier=front\n"
            "data        db      Pending   <none>       <none>   <unknown>   <none>",
        ),
        (
            POOLS,
            "IPPool",
            {"wide": True, "namespaced": False, "all_namespaces": False},
            "NAME                  CIDR            NAT    IPIPMODE   VXLANMODE   DISABLED   BLOCKSIZE   SELECTOR\n"  # noqa: E501
            "default-ipv4-ippool   10.244.0.0/16   true   Never      Always                 26          all()\n"  # noqa: E501
            "p2                    10.9.0.0/24                                   false",
        ),
        (
            POOLS,
            "IPPool",
            {"wide": False, "namespaced": False, "all_namespaces": False},
            "NAME                  CIDR            SELECTOR\n"
            "default-ipv4-ippool   10.244.0.0/16   all()\n"
            "p2                    10.9.0.0/24",
        ),
        ([], "Foo", {"wide": False, "namespaced": False, "all_namespaces": False}, "NAME   AGE"),
        (
            [
                {"metadata": {"name": "security"}, "spec": {"order": 100, "defaultAction": "Deny"}},
                {"metadata": {"name": "last"}, "spec": {"defaultAction": "Pass"}},
            ],
            "Tier",
            {"wide": False, "namespaced": False, "all_namespaces": False},
            "NAME       ORDER   DEFAULTACTION\nsecurity   100     Deny\nlast               Pass",
        ),
        (
            [{"metadata": {"name": "gress-rules"}, "spec": {"priority": 15}}],
            "AdminNetworkPolicy",
            {"wide": False, "namespaced": False, "all_namespaces": False},
            "NAME          PRIORITY   AGE\ngress-rules   15         <unknown>",
        ),
        (
            [{"metadata": {"name": "default"}, "spec": {}}],
            "BaselineAdminNetworkPolicy",
            {"wide": False, "namespaced": False, "all_namespaces": False},
            "NAME      AGE\ndefault   <unknown>",
        ),
        (
            [{"metadata": {"name": "c"}, "spec": {"tier": "Baseline", "priority": 0}}],
            "ClusterNetworkPolicy",
            {"wide": False, "namespaced": False, "all_namespaces": False},
            "NAME   TIER       PRIORITY   AGE\nc      Baseline   0          <unknown>",
        ),
        (
            [{"metadata": {"name": "api", "namespace": "shop"}, "secrets": [{"name": "t"}]}],
            "ServiceAccount",
            {"wide": False, "namespaced": True, "all_namespaces": True},
            "NAMESPACE   NAME   SECRETS   AGE\nshop        api    1         <unknown>",
        ),
    ],
)
def test_get_table(docs, kind, options, expected) -> None:
    assert printers.table(docs, kind, **options) == expected


def test_bpf_list_table() -> None:
    progs = [
        {
            "device": "eth0",
            "direction": "ingress",
            "pref": 100,
            "name": "ipip_decap",
            "id": 126,
            "tag": "232da7186136976d",
            "maps": [
                {"id": 57, "name": "ipip_config", "pinned": []},
                {"id": 56, "name": "ipip_peers", "pinned": ["/p/ipip_peers"]},
            ],
        },
        {
            "device": "tunl0",
            "direction": "egress",
            "pref": None,
            "name": None,
            "id": 7,
            "tag": None,
            "maps": [],
        },
    ]
    assert cmd_bpf.render_table(progs) == (
        "DEVICE  DIRECTION  PREF  NAME        ID   TAG               MAPS\n"
        "eth0    ingress    100   ipip_decap  126  232da7186136976d  ipip_config(57), ipip_peers(56) /p/ipip_peers\n"  # noqa: E501
        "tunl0   egress     -     -           7    -                 -\n"
    )


def test_node_status_box_without_rows_is_the_header_alone() -> None:
    assert (
        render_table(("PEER", "INFO"), [])
        == "+------+------+\n| PEER | INFO |\n+------+------+\n+------+------+"
    )


class _IPAM:
    def __init__(self, usage: list) -> None:
        self._usage = usage

    def usage(self, pools: list) -> list:
        return self._usage


class _Resources:
    def list(self, kind) -> list:
        return []


USAGE = [
    NS(
        name="default",
        cidr="10.244.0.0/16",
        disabled=False,
        size=65536,
        allocated=3,
        free=65533,
        blocks=[
            NS(cidr="10.244.1.0/26", size=64, allocated=3, node="node-1"),
            NS(cidr="10.244.2.0/26", size=64, allocated=0, node=None),
        ],
    ),
    NS(name="off", cidr="10.9.0.0/24", disabled=True, size=256, allocated=0, free=256, blocks=[]),
]


@pytest.mark.parametrize(
    ("usage", "show_blocks", "expected"),
    [
        (
            USAGE,
            False,
            "GROUPING   CIDR            IPS TOTAL   IPS IN USE   IPS FREE       AFFINITY\n"
            "IP Pool    10.244.0.0/16   65536       3 (0%)       65533 (100%)\n"
            "IP Pool    10.9.0.0/24     256         0 (0%)       256 (100%)     (disabled)\n",
        ),
        (
            USAGE,
            True,
            "GROUPING   CIDR            IPS TOTAL   IPS IN USE   IPS FREE       AFFINITY\n"
            "IP Pool    10.244.0.0/16   65536       3 (0%)       65533 (100%)\n"
            "Block      10.244.1.0/26   64          3 (5%)       61 (95%)       node-1\n"
            "Block      10.244.2.0/26   64          0 (0%)       64 (100%)      (none)\n"
            "IP Pool    10.9.0.0/24     256         0 (0%)       256 (100%)     (disabled)\n",
        ),
        ([], False, "No IP pools found.\n"),
    ],
)
def test_ipam_show_table(usage, show_blocks, expected, capsys) -> None:
    args = argparse.Namespace(output="table", show_blocks=show_blocks)
    assert cmd_ipam._show(args, _IPAM(usage), _Resources()) == 0
    assert capsys.readouterr().out == expected
