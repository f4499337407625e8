"""The L7 proxy's configuration (calc.haproxy): HAProxy itself accepts what is rendered, with
regexes and header values that need quoting, and the order of the input does not change it."""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

from podnet.calc.haproxy import HttpPolicy, ProxySettings, ipcache_map, quote, render_haproxy
from podnet.calc.l7_http import ALLOW_ALL, HttpRule

TRICKY = HttpRule(
    method="GET|HEAD",
    path='/it\'s/\\$HOME/(a b)?"q"',
    host="api\\.shop(:80)?",
    headers=(("x-a", None), ("x-b", "1 2 'three'")),
)
POLICIES = [
    HttpPolicy(
        "ingress",
        "10.0.0.5",
        80,
        80,
        frozenset({300, 301}),
        (HttpRule("PUT", "/api/v1/*"), TRICKY),
        "cnp:shop/l7:ingress:0",
    ),
    HttpPolicy("ingress", "10.0.0.6", 8080, 8095, None, ALLOW_ALL, "knp-free:any"),
    HttpPolicy("egress", "10.0.0.5", 443, 443, frozenset(), (HttpRule("GET"),), "cnp:shop/none:egress:0"),
    HttpPolicy("egress", "10.0.0.7", 80, 80, frozenset({2}), (HttpRule(path="/ok"),), "ccnp:world:egress:1"),
]


def settings(tmp: Path) -> ProxySettings:
    (tmp / "ipcache.map").write_text(ipcache_map({"10.0.0.0/24": 300, "0.0.0.0/0": 2, "10.0.0.7/32": 301}))
    return ProxySettings(
        {"ingress": 15001, "egress": 15002},
        str(tmp / "ipcache.map"),
        str(tmp / "admin.sock"),
        str(tmp / "log.sock"),
        str(tmp / "haproxy.pid"),
    )


def test_haproxy_accepts_the_rendered_configuration(tmp_path: Path):
    assert shutil.which("haproxy"), "scripts/setup.sh installs haproxy"
    text = render_haproxy(POLICIES, settings(tmp_path))
    path = tmp_path / "haproxy.cfg"
    path.write_text(text)
    check = subprocess.run(["haproxy", "-c", "-f", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    # negative control: a broken line is refused, so the check above can fail
    path.write_text(text.replace("set-var(txn.passed) bool(1) if", "set-var(txn.passed) bool(1) iff", 1))
    assert subprocess.run(["haproxy", "-c", "-f", str(path)], capture_output=True).returncode != 0


def test_structure_and_order(tmp_path: Path):
    conf = settings(tmp_path)
    text = render_haproxy(POLICIES, conf)
    shuffled = list(POLICIES)
    random.Random(3).shuffle(shuffled)
    assert render_haproxy(shuffled, conf) == text
    ingress = text[text.index("frontend ingress") : text.index("\nfrontend egress")]
    egress = text[text.index("\nfrontend egress") : text.index("\nbackend original")]
    assert "bind 0.0.0.0:15001 transparent" in ingress and "src,map_ip(" in ingress
    assert "bind 0.0.0.0:15002 transparent" in egress and "dst,map_ip(" in egress
    assert "acl p0_peer var(txn.peer) -m int 300 301" in ingress
    assert (
        "str(cnp:shop/l7:ingress:0:http:0)" in ingress
        and "str(knp-free:any) if p1_ep p1_port !passed\n" in ingress
    )
    assert "src 10.0.0.5" not in egress  # a policy no peer can match adds nothing
    deny = '    http-request deny deny_status 403 content-type text/plain string "Access denied"'
    assert ingress.strip().splitlines()[-2] == f"{deny} if !passed"  # refused unless allowed
    # the egress listener also judges requests to local endpoints by their ingress rules
    assert (
        f"{deny} if !passed\n" in egress
        and egress.strip().splitlines()[-2] == f"{deny} if inbound !passed_in"
    )
    assert "acl q0_ep dst 10.0.0.5" in egress and "acl q0_peer var(txn.client) -m int 300 301" in egress
    assert "usesrc client\n" in text and "http-reuse never" in text and "server original 0.0.0.0:0" in text


def test_quote_keeps_every_character():
    assert quote("a b") == "'a b'"
    assert quote('it\'s $x \\ "y"') == '"it\'s \\$x \\\\ \\"y\\""'


def test_the_exporter_frontend_is_accepted_and_serves_only_metrics(tmp_path: Path):
    import dataclasses

    conf = dataclasses.replace(settings(tmp_path), exporter="10.0.0.1:8405")
    text = render_haproxy(POLICIES, conf)
    exporter = text[text.index("frontend prometheus") : text.index("\nbackend original")]
    assert (
        "bind 10.0.0.1:8405" in exporter
        and "use-service prometheus-exporter if { path /metrics }" in exporter
    )
    assert "no log" in exporter  # scrapes are not L7 records
    path = tmp_path / "haproxy.cfg"
    path.write_text(text)
    check = subprocess.run(["haproxy", "-c", "-f", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "frontend prometheus" not in render_haproxy(POLICIES, settings(tmp_path))  # none unless asked
