"""bpf.py without root: the compile cache, tc/bpftool output parsing, the CLI table."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from podnet.cli import cmd_bpf
from podnet.dataplane import bpf


def test_cache_key_covers_source_headers_compiler_and_flags():
    base = bpf.cache_key(b"int x;", [("a.h", b"1")], "clang 14", ["-O2"])
    assert len(base) == 16 and base == bpf.cache_key(b"int x;", [("a.h", b"1")], "clang 14", ["-O2"])
    variants = [
        bpf.cache_key(b"int y;", [("a.h", b"1")], "clang 14", ["-O2"]),
        bpf.cache_key(b"int x;", [("a.h", b"2")], "clang 14", ["-O2"]),
        bpf.cache_key(b"int x;", [("b.h", b"1")], "clang 14", ["-O2"]),
        bpf.cache_key(b"int x;", [], "clang 14", ["-O2"]),
        bpf.cache_key(b"int x;", [("a.h", b"1")], "clang 15", ["-O2"]),
        bpf.cache_key(b"int x;", [("a.h", b"1")], "clang 14", ["-O1"]),
        bpf.cache_key(b"int x;", [("a.h", b"1")], "clang 14", ["-O", "2"]),
    ]
    assert len({base, *variants}) == len(variants) + 1
    # header order does not matter
    assert bpf.cache_key(b"", [("a.h", b"1"), ("b.h", b"2")], "c", []) == bpf.cache_key(
        b"", [("b.h", b"2"), ("a.h", b"1")], "c", []
    )


def test_compile_flags_include_the_multiarch_directory():
    flags = bpf.clang_flags()
    assert flags[:2] == ["-O2", "-g"] and "-target" in flags and "bpf" in flags
    assert any(f.startswith("-I/usr/include/") and f.endswith("-linux-gnu") for f in flags)


@pytest.fixture
def fake_clang(monkeypatch):
    calls: list[list[str]] = []

    def run_tool(argv, netns=None, *, check=True):
        calls.append(list(argv))
        Path(argv[argv.index("-o") + 1]).write_bytes(b"\x7fELF fake")
        return ""

    monkeypatch.setattr(bpf, "run_tool", run_tool)
    monkeypatch.setattr(bpf, "clang_version", lambda: "clang 14 (fake)")
    return calls


def test_compile_program_is_cached_by_content(tmp_path, fake_clang):
    src = tmp_path / "prog.c"
    src.write_text("int x;")
    cache = tmp_path / "cache"
    first = bpf.compile_program(str(src), str(cache))
    assert Path(first).read_bytes() == b"\x7fELF fake" and Path(first).name.startswith("prog-")
    assert bpf.compile_program(str(src), str(cache)) == first
    assert len(fake_clang) == 1
    (tmp_path / "common.h").write_text("#define X 1")  # a header beside the source changes the key
    second = bpf.compile_program(str(src), str(cache))
    assert second != first and len(fake_clang) == 2
    src.write_text("int y;")
    assert bpf.compile_program(str(src), str(cache)) not in (first, second)
    assert sorted(p.name.startswith(".") for p in cache.iterdir()) == [False, False, False]  # no temp files


def test_compile_failure_leaves_no_object(tmp_path, monkeypatch):
    def run_tool(argv, netns=None, *, check=True):
        Path(argv[argv.index("-o") + 1]).write_bytes(b"partial")
        raise bpf.BpfError("clang failed")

    monkeypatch.setattr(bpf, "run_tool", run_tool)
    monkeypatch.setattr(bpf, "clang_version", lambda: "clang")
    (tmp_path / "p.c").write_text("x")
    with pytest.raises(bpf.BpfError):
        bpf.compile_program(str(tmp_path / "p.c"), str(tmp_path / "cache"))
    assert list((tmp_path / "cache").iterdir()) == []


@pytest.mark.skipif(shutil.which("clang") is None, reason="needs clang")
def test_the_real_ipip_program_compiles(tmp_path):
    obj = bpf.compile_program(bpf.source_path("ipip.c"), str(tmp_path))
    assert Path(obj).read_bytes()[:4] == b"\x7fELF"
    assert bpf.compile_program(bpf.source_path("ipip.c"), str(tmp_path)) == obj


def test_is_bpffs_on_other_filesystems(tmp_path):
    assert not bpf.is_bpffs(str(tmp_path))
    assert not bpf.is_bpffs(str(tmp_path / "missing"))


TC_JSON = [
    {"protocol": "all", "pref": 100, "kind": "bpf", "chain": 0},
    {
        "protocol": "all",
        "pref": 100,
        "kind": "bpf",
        "chain": 0,
        "options": {
            "handle": "0x1",
            "bpf_name": "ipip_decap:[*fsobj]",
            "direct-action": True,
            "not_in_hw": True,
            "prog": {"id": 126, "name": "ipip_decap", "tag": "232da7186136976d", "jited": 1},
        },
    },
]


def test_tc_filters_parses_tc_json(monkeypatch):
    monkeypatch.setattr(bpf, "_json", lambda argv, netns=None: TC_JSON)
    [flt] = bpf.tc_filters("eth0", "ingress")
    assert flt == bpf.TcFilter(
        "eth0", "ingress", 100, 1, 126, "ipip_decap", "232da7186136976d", "ipip_decap:[*fsobj]"
    )
    with pytest.raises(ValueError):
        bpf.tc_filters("eth0", "sideways")


def test_list_programs_joins_bpftool_and_tc(monkeypatch):
    outputs = {
        ("net", "show"): [
            {
                "xdp": [],
                "tc": [
                    {
                        "devname": "eth0",
                        "ifindex": 2,
                        "kind": "clsact/ingress",
                        "name": "x:[*fsobj]",
                        "id": 126,
                    }
                ],
                "flow_dissector": [],
            }
        ],
        ("prog", "show"): [
            {
                "id": 126,
                "name": "ipip_decap",
                "tag": "232da7186136976d",
                "map_ids": [57, 56],
                "pinned": ["/p/d"],
            }
        ],
        ("map", "show"): [
            {"id": 56, "name": "ipip_peers", "type": "hash", "pinned": ["/p/ipip_peers"]},
            {"id": 57, "name": "ipip_config", "type": "array"},
        ],
    }

    def fake_json(argv, netns=None):
        if argv[0] == bpf.TC:
            return TC_JSON
        return outputs[tuple(a for a in argv[1:] if not a.startswith("-"))]

    monkeypatch.setattr(bpf, "_json", fake_json)
    [prog] = bpf.list_programs("somewhere")
    assert prog == {
        "device": "eth0",
        "ifindex": 2,
        "direction": "ingress",
        "name": "ipip_decap",
        "id": 126,
        "tag": "232da7186136976d",
        "section": "ipip_decap:[*fsobj]",
        "pref": 100,
        "handle": 1,
        "pinned": ["/p/d"],
        "maps": [
            {"id": 57, "name": "ipip_config", "type": "array", "pinned": []},
            {"id": 56, "name": "ipip_peers", "type": "hash", "pinned": ["/p/ipip_peers"]},
        ],
    }
    table = cmd_bpf.render_table([prog])
    header, row = table.splitlines()
    assert header.split() == ["DEVICE", "DIRECTION", "PREF", "NAME", "ID", "TAG", "MAPS"]
    assert row.split()[:6] == ["eth0", "ingress", "100", "ipip_decap", "126", "232da7186136976d"]
    assert "ipip_peers(56) /p/ipip_peers" in row
    assert cmd_bpf.render_table([]) == "no BPF programs on tc hooks\n"


def test_cli_arguments():
    import argparse

    parser = argparse.ArgumentParser()
    cmd_bpf.add_arguments(parser)
    args = parser.parse_args(["prog", "list", "--node", "node-1", "-o", "json"])
    assert (args.bpf_object, args.bpf_verb, args.node, args.output) == ("prog", "list", "node-1", "json")
    with pytest.raises(SystemExit):
        parser.parse_args(["prog"])


def test_ensure_pin_dir_refuses_a_directory_off_bpffs_with_the_callers_error(tmp_path):
    from podnet.dataplane.sock_lb import SockLBError

    pins = tmp_path / "pins"
    with pytest.raises(bpf.BpfError, match="not on a bpf filesystem") as info:
        bpf.ensure_pin_dir(str(pins))
    assert type(info.value) is bpf.BpfError and pins.is_dir()  # created, then refused
    with pytest.raises(SockLBError):
        bpf.ensure_pin_dir(str(pins), SockLBError)
