"""Drawing the service map with the real Graphviz ``dot`` (cli.service_map_render): SVG, PNG, HTML.

The map is the three-tier demo of ``tests/unit/calc/test_service_map.py`` (loaded from there, so
both tests read one demo). ``dot`` is a test dependency (scripts/setup.sh installs graphviz).
"""

from __future__ import annotations

import html
import importlib.util
import re
import struct
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

from podnet.calc.service_map import COLOURS, build, to_dot
from podnet.cli import service_map_render
from podnet.cli.service_map_render import render
from podnet.errors import PodnetError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _demo_module() -> ModuleType:
    path = Path(__file__).parents[1] / "calc" / "test_service_map.py"
    spec = importlib.util.spec_from_file_location("service_map_demo", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DEMO = _demo_module()


@pytest.fixture(scope="module")
def demo_dot() -> str:
    return to_dot(build(DEMO.demo_flows()))


def _edge_groups(svg: str) -> list[str]:
    """Each edge's SVG: its path, arrow head, label and tooltip (up to the next node or edge)."""
    parts = re.split(r'(?=<g id="(?:node|edge|clust)\d+" class=")', svg)
    return [part for part in parts if part.startswith('<g id="edge')]


def test_svg_shows_the_workloads_and_the_denied_edge_red_and_dashed(demo_dot: str) -> None:
    svg = render(demo_dot, "svg").decode()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    texts = [html.unescape(t) for t in re.findall(r"<text[^>]*>(.*?)</text>", svg)]
    for name in ("frontend", "api", "db", "coredns", "kube-dns", "world", DEMO.OUTSIDE, "namespace demo"):
        assert name in texts
    assert "2 pods" in texts
    (denied,) = [g for g in _edge_groups(svg) if f'stroke="{COLOURS["dropped"]}"' in g]
    assert "stroke-dasharray" in denied and ">2 dropped<" in denied and ">5432/TCP<" in denied
    dashed = [g for g in _edge_groups(svg) if "stroke-dasharray" in g]
    assert dashed == [denied]
    assert "HTTP 40 req, 2.0/s, err 25%" in texts
    assert "decided by NetworkPolicy demo/db" in denied  # the tooltip


def test_png_is_a_picture_of_sensible_size(demo_dot: str, tmp_path: Path) -> None:
    png = render(demo_dot, "png")
    assert png.startswith(PNG_SIGNATURE) and png[12:16] == b"IHDR"
    width, height = struct.unpack(">II", png[16:24])
    assert 800 <= width <= 4000 and 200 <= height <= 2000
    assert width > height  # left to right: the tiers side by side
    (tmp_path / "service_map.png").write_bytes(png)


def test_html_is_the_svg_in_a_page_with_a_legend(demo_dot: str) -> None:
    page = render(demo_dot, "html", title="demo <map>").decode()
    assert page.startswith("<!DOCTYPE html>") and "<title>demo &lt;map&gt;</title>" in page
    assert "<svg" in page and ">frontend<" in page and "<?xml" not in page
    assert "every connection dropped" in page and COLOURS["redirected"] in page
    assert not re.search(r"<script|<link|<img|src=|@import", page)


def test_hostile_names_reach_the_picture_as_text() -> None:
    svg = render(to_dot(build(DEMO.hostile_flows())), "svg").decode()
    texts = [html.unescape(t) for t in re.findall(r"<text[^>]*>(.*?)</text>", svg)]
    tooltips = [html.unescape(t) for t in re.findall(r'xlink:title="([^"]*)"', svg)]
    assert DEMO.HOSTILE in texts  # 'we"ird\\app<b>&\\N', not the node's name for \\N
    assert 'namespace ns"x' in texts and '1.2.3.4"<x>' in texts
    assert f'K"ind ns"x/{DEMO.HOSTILE}\npods: p\\1' in tooltips
    assert f"{DEMO.HOSTILE} → db 5432/TCP\nforwarded: 1" in tooltips


def test_a_missing_dot_names_the_package_to_install(monkeypatch: pytest.MonkeyPatch, demo_dot: str) -> None:
    monkeypatch.setattr(service_map_render.shutil, "which", lambda name: None)
    with pytest.raises(PodnetError, match="dot is not installed") as caught:
        render(demo_dot, "png")
    assert "apt-get install graphviz" in (caught.value.hint or "")


def test_dot_failures_and_timeouts_are_podnet_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(PodnetError, match=r"dot failed \(exit 1\)"):
        render("digraph {", "svg")
    with pytest.raises(PodnetError, match="cannot draw the service map as 'pdf'"):
        render("digraph {}", "pdf")

    def slow(*args: object, **kwargs: object) -> None:
        raise subprocess.TimeoutExpired("dot", 0.5)

    monkeypatch.setattr(service_map_render.subprocess, "run", slow)
    with pytest.raises(PodnetError, match=r"within 0\.5 s"):
        render("digraph {}", "svg", timeout=0.5)
