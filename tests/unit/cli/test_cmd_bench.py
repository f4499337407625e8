"""``podnet bench``: its arguments, the --quick defaults, and that it runs the pieces and writes the
JSON, the plots and the table (with fake data path and footprint modules: no lab, no root)."""

from __future__ import annotations

import io
import json
import sys
import types

import pytest

from podnet.cli import cmd_bench
from podnet.cli.main import build_parser, main

sys.path.insert(0, __file__.rsplit("/tests/", 1)[0] + "/tests/unit/bench")
from test_report import fake_result


def _parse(*argv: str):
    return build_parser().parse_args(["bench", *argv])


def test_defaults_and_quick_defaults() -> None:
    args = _parse()
    opts = cmd_bench.settings(args)
    assert opts["profiles"] == list(cmd_bench.PROFILES)
    assert (opts["repeats"], opts["duration"], opts["quick"]) == (3, 10.0, False)
    assert opts["out"].startswith("bench-results/")
    quick = cmd_bench.settings(_parse("--quick"))
    assert (quick["repeats"], quick["duration"], quick["quick"]) == (1, 2.0, True)
    # explicit values win over --quick
    mixed = cmd_bench.settings(_parse("--quick", "--repeats", "3", "--duration", "1.5", "--out", "/tmp/x"))
    assert (mixed["repeats"], mixed["duration"], mixed["out"]) == (3, 1.5, "/tmp/x")


def test_the_profiles_and_defaults_are_the_data_path_bench_s() -> None:
    from podnet.bench import datapath

    assert list(cmd_bench.PROFILES) == list(datapath.PROFILES)
    assert cmd_bench.DEFAULTS == datapath.DEFAULTS and cmd_bench.QUICK_DEFAULTS == datapath.QUICK


def test_profiles_are_checked_and_deduplicated(capsys) -> None:
    args = _parse("--profiles", "cilium-vxlan, calico-bgp,cilium-vxlan")
    assert args.profiles == ["cilium-vxlan", "calico-bgp"]
    with pytest.raises(SystemExit):
        _parse("--profiles", "calico-ipip,flannel")
    assert "flannel" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parse("--repeats", "0")


def test_progress_bar_plain_lines_and_tty() -> None:
    plain = io.StringIO()
    bar = cmd_bench.ProgressBar(plain)
    cb = bar.phase_of("data path")
    cb("calico-ipip: tcp_1", 1, 4)
    cb("calico-ipip: tcp_1", 1, 4)  # the same line is not repeated
    cb("calico-ipip: tcp_4", 2, 4)
    bar.close()
    assert plain.getvalue().splitlines() == [
        "[1/4] data path: calico-ipip: tcp_1",
        "[2/4] data path: calico-ipip: tcp_4",
    ]

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    bar = cmd_bench.ProgressBar(tty, width=10)
    bar("one", 5, 10)
    bar("two", 10, 10)
    bar.close()
    text = tty.getvalue()
    assert text.startswith("\r[#####.....] 5/10 one") and "\r[##########] 10/10 two" in text
    assert text.endswith("\n") and text.count("\n") == 1


@pytest.fixture
def fakes(monkeypatch):
    """Fake podnet.bench.datapath and podnet.bench.footprint recording their calls."""
    calls: dict[str, list] = {"datapath": [], "footprint": []}
    result = fake_result()
    footprint_result = result.pop("footprint")

    def datapath_run(profiles, repeats, duration, quick, progress=None):
        calls["datapath"].append((list(profiles), repeats, duration, quick))
        progress("calico-bgp: tcp_1", 1, 2)
        progress("done", 2, 2)
        return json.loads(json.dumps(result))

    def footprint_run(profiles, quick=False, *, memory=True, control_plane=True, progress=None):
        calls["footprint"].append((list(profiles), quick, memory, control_plane))
        progress("calico-bgp: lab up", 0, 1)
        return footprint_result

    import podnet.bench
    import podnet.bench.footprint  # before the fake data path: it reads the real one's profiles

    monkeypatch.setitem(sys.modules, "podnet.bench.datapath", types.SimpleNamespace(run=datapath_run))

    monkeypatch.setattr(podnet.bench, "datapath", sys.modules["podnet.bench.datapath"], raising=False)
    monkeypatch.setattr("podnet.bench.footprint.run", footprint_run)
    monkeypatch.setattr(cmd_bench.os, "geteuid", lambda: 0)
    return calls


def test_bench_runs_the_pieces_and_writes_everything(fakes, tmp_path, capsys) -> None:
    out = tmp_path / "results"
    code = main(["bench", "--quick", "--profiles", "calico-bgp,cilium-vxlan", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert fakes["datapath"] == [(["calico-bgp", "cilium-vxlan"], 1, 2.0, True)]
    assert fakes["footprint"] == [(["calico-bgp", "cilium-vxlan"], True, True, True)]
    assert "[1/2] data path: calico-bgp: tcp_1" in captured.err  # plain progress lines: not a TTY
    assert "[0/1] footprint: calico-bgp: lab up" in captured.err
    assert "TCP bandwidth, 1 stream" in captured.out and "Seed (10 Gbit NICs, elsewhere)" in captured.out
    assert "Control plane" in captured.out
    doc = json.loads((out / "bench.json").read_text())
    assert doc["profiles"]["calico-bgp"]["scenarios"]["tcp_1"]["samples"] == [16.0, 17.0, 16.5]
    assert "footprint" in doc and "summary" in doc
    assert (out / "tcp_1.png").exists() and (out / "agent_memory.png").exists()


def test_skips(fakes, tmp_path, capsys) -> None:
    assert main(["bench", "--skip-footprint", "--out", str(tmp_path / "a")]) == 0
    assert fakes["footprint"][-1][2:] == (False, True)
    capsys.readouterr()
    assert main(["bench", "--skip-footprint", "--skip-control-plane", "--out", str(tmp_path / "b")]) == 0
    assert len(fakes["footprint"]) == 1  # both skipped: no footprint labs at all
    assert fakes["datapath"][-1][1:] == (3, 10.0, False)
    assert "Control plane" not in capsys.readouterr().out


def test_needs_root(monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.setattr(cmd_bench.os, "geteuid", lambda: 1000)
    assert main(["bench", "--out", str(tmp_path)]) == 1
    assert "needs root" in capsys.readouterr().err
