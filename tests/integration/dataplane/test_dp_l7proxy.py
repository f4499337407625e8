"""The node's L7 proxy in real namespaces (dataplane.l7proxy, calc.haproxy): a client, a "node" that
forwards between two subnets and runs the proxy, and a server that reports who connected.

Packets the tc programs would mark for the ingress listener are marked here by a stand-in nftables
rule (the only thing the test adds); everything else is the module's: the ``tproxy`` table, the
proxy route, HAProxy's configuration, process and reloads. Checked: an allowed request reaches the
server from the client's own address; a refused one gets 403 ``Access denied``; HAProxy's verdicts
equal the reference matcher's (calc.l7_http) request by request; each request leaves a record
naming its rule; a reload in the middle of a request does not break it; with the proxy killed the
redirected port fails closed (no request reaches the server) until it is started again.
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from podnet.agent.l7_records import L7Records
from podnet.calc.haproxy import HttpPolicy
from podnet.calc.l7_http import HttpRequest, HttpRule, allowed
from podnet.calc.policy import PodInfo
from podnet.dataplane import sysctl
from podnet.dataplane.l7proxy import TO_EGRESS_PROXY, TO_INGRESS_PROXY, L7Proxy
from podnet.dataplane.netlink import Netlink
from podnet.dataplane.netns import in_netns

pytestmark = [pytest.mark.root]

CLIENT, SERVER = "10.98.0.2", "10.98.1.2"
CGROUP2 = "/sys/fs/cgroup/unified"
RULES = (
    HttpRule(method="PUT", path="/api/v1/*"),
    HttpRule(method="GET", path="/public/.*", headers=(("x-token", None),)),
    HttpRule(method="DELETE", host="api(:80)?", headers=(("x-env", "prod"),)),
)
POLICY = HttpPolicy("ingress", SERVER, 80, 80, frozenset({300}), RULES, "cnp:shop/l7:ingress:0")


@dataclass
class Net:
    client: str
    node: str
    server: str
    seen: list[tuple[str, str, str]]  # (client address, method, path) as the server saw them


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _any(self) -> None:
        if self.path.startswith("/slow"):
            time.sleep(1.0)
        self.server.seen.append((self.client_address[0], self.command, self.path))  # type: ignore[attr-defined]
        body = json.dumps({"client": self.client_address[0]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def net(make_netns) -> Iterator[Net]:  # type: ignore[no-untyped-def]
    client, node, server = make_netns("l7c"), make_netns("l7n"), make_netns("l7s")
    with Netlink.open(node) as nl:
        nl.link_add_veth("c0", "eth0", peer_netns=client, mtu=1500, up=True)
        nl.link_add_veth("s0", "eth0", peer_netns=server, mtu=1500, up=True)
        nl.addr_add("c0", "10.98.0.1/24")
        nl.addr_add("s0", "10.98.1.1/24")
    for ns, ip, gateway in ((client, CLIENT, "10.98.0.1"), (server, SERVER, "10.98.1.1")):
        with Netlink.open(ns) as nl:
            nl.link_set("eth0", up=True)
            nl.addr_add("eth0", f"{ip}/24")
            nl.route_add("0.0.0.0/0", gateway=gateway)
    sysctl.write_many(sysctl.NODE_SYSCTLS, node)
    with in_netns(server):
        httpd = http.server.ThreadingHTTPServer((SERVER, 80), Handler)
    httpd.seen = []  # type: ignore[attr-defined]
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    # the stand-in for the tc programs: connections to the server's port 80 go to the ingress proxy
    subprocess.run(
        ["nsenter", f"--net={node}", "nft", "-f", "-"],
        input=(
            "table ip pntest_redirect {\n"
            "  chain pre {\n"
            "    type filter hook prerouting priority mangle - 1; policy accept;\n"
            f"    ip daddr {SERVER} tcp dport 80 meta mark set {TO_INGRESS_PROXY:#x}\n"
            "  }\n"
            "}\n"
        ),
        text=True,
        check=True,
    )
    try:
        yield Net(client, node, server, httpd.seen)  # type: ignore[attr-defined]
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def proxy(net: Net, tmp_path) -> Iterator[L7Proxy]:  # type: ignore[no-untyped-def]
    the_proxy = L7Proxy(str(tmp_path / "l7"), f"{CGROUP2}/pntest-l7-{secrets.token_hex(3)}")
    os.makedirs(the_proxy.state_dir)
    try:
        with in_netns(net.node):
            the_proxy.ensure_plumbing()
        yield the_proxy
    finally:
        the_proxy.stop()
        assert not os.path.exists(the_proxy.cgroup)


def records(proxy: L7Proxy) -> tuple[L7Records, list[dict]]:
    """The agent's reader of the records socket (bound before HAProxy starts), into a list."""
    got: list[dict] = []
    pods = [PodInfo("shop", "client", {}, (CLIENT,)), PodInfo("shop", "api", {}, (SERVER,))]
    reader = L7Records(proxy.settings.log_socket, "node-x", lambda: pods, got.extend)
    reader.start()
    return reader, got


def request(net: Net, method: str, path: str, headers: dict[str, str] | None = None, timeout: float = 2.0):  # type: ignore[no-untyped-def]
    """(status, body) of one request from the client's namespace; None on a timeout or reset."""
    conn = http.client.HTTPConnection(SERVER, 80, timeout=timeout)
    try:
        with in_netns(net.client):
            conn.sock = socket.create_connection((SERVER, 80), timeout=timeout)
        conn.request(method, path, headers={"Host": "api", **(headers or {})})
        response = conn.getresponse()
        return response.status, response.read().decode()
    except (TimeoutError, ConnectionError, OSError):
        return None
    finally:
        conn.close()


def apply(net: Net, proxy: L7Proxy, policy: HttpPolicy = POLICY) -> bool:
    with in_netns(net.node):
        return proxy.apply([policy], {"10.98.0.0/24": 300, "0.0.0.0/0": 2})


def test_verdicts_addresses_and_records(net: Net, proxy: L7Proxy) -> None:
    reader, logged = records(proxy)
    assert apply(net, proxy)
    assert not apply(net, proxy)  # unchanged: nothing reloaded
    cases = [
        ("PUT", "/api/v1", {}),
        ("PUT", "/api/v1//", {}),
        ("PUT", "/api/v1/x", {}),
        ("PUT", "/api/v1?q=1", {}),
        ("GET", "/api/v1", {}),
        ("GET", "/public/a", {"X-Token": "1"}),
        ("GET", "/public/a", {}),
        ("DELETE", "/x", {"X-Env": "prod"}),
        ("DELETE", "/x", {"X-Env": "dev"}),
    ]
    for method, path, headers in cases:
        want = allowed(RULES, HttpRequest(method, path, "api", headers)) is not None
        got = request(net, method, path, headers)
        assert got is not None, (method, path)
        if want:
            assert got[0] == 200 and json.loads(got[1]) == {"client": CLIENT}, (method, path, got)
        else:
            assert got == (403, "Access denied"), (method, path, got)
    reached = [(method, path) for _, method, path in net.seen]
    assert all(client == CLIENT for client, _, _ in net.seen)  # transparent: the client's own address
    assert reached == [(m, p) for m, p, h in cases if allowed(RULES, HttpRequest(m, p, "api", h)) is not None]
    deadline = time.monotonic() + 5.0
    while len(logged) < len(cases) and time.monotonic() < deadline:
        time.sleep(0.05)
    reader.stop()
    assert reader.bad == 0
    expected = [allowed(RULES, HttpRequest(m, p, "api", h)) is not None for m, p, h in cases]
    assert [(r["method"], r["url"], r["status"], r["verdict"]) for r in logged] == [
        (m, p, 200 if ok else 403, "FORWARDED" if ok else "DENIED")
        for (m, p, _), ok in zip(cases, expected, strict=True)
    ]
    first = logged[0]
    assert (first["srcPod"], first["src"], first["dstPod"], first["dst"], first["dport"]) == (
        "shop/client",
        CLIENT,
        "shop/api",
        SERVER,
        80,
    )
    assert first["direction"] == "ingress" and first["peerIdentity"] == 300
    assert first["rule"] == "cnp:shop/l7:ingress:0:http:0" and logged[4]["rule"] == "default-deny"


def test_a_peer_of_another_identity_is_refused(net: Net, proxy: L7Proxy) -> None:
    apply(
        net, proxy, HttpPolicy("ingress", SERVER, 80, 80, frozenset({301}), RULES, "cnp:shop/other:ingress:0")
    )
    assert request(net, "PUT", "/api/v1") == (403, "Access denied")
    assert net.seen == []


def test_a_reload_mid_request_and_a_killed_proxy_fails_closed(net: Net, proxy: L7Proxy) -> None:
    slow = HttpPolicy("ingress", SERVER, 80, 80, None, (HttpRule(path="/slow"),), "cnp:shop/slow:ingress:0")
    apply(net, proxy, slow)
    result: list[object] = []
    worker = threading.Thread(target=lambda: result.append(request(net, "GET", "/slow", timeout=5.0)))
    worker.start()
    time.sleep(0.3)  # the request is at the server (it answers after 1 s)
    both = HttpPolicy("ingress", SERVER, 80, 80, None, (HttpRule(path="/slow"), HttpRule(path="/fast")), "x")
    assert apply(net, proxy, both)  # a reload while the request is in flight
    worker.join(10)
    assert result and result[0] is not None and result[0][0] == 200  # type: ignore[index]
    assert request(net, "GET", "/fast")[0] == 200  # type: ignore[index]  # the new configuration
    # the proxy killed: the redirected port fails closed, nothing reaches the server
    assert proxy._process is not None
    os.killpg(proxy._process.pid, 9)
    proxy._process.wait(5)
    before = len(net.seen)
    assert request(net, "GET", "/fast", timeout=1.0) is None
    assert len(net.seen) == before
    with in_netns(net.node):
        assert proxy.restart_if_dead()
    assert request(net, "GET", "/fast")[0] == 200  # type: ignore[index]


def test_the_egress_listener_also_applies_a_local_destinations_ingress_rules(
    net: Net, proxy: L7Proxy
) -> None:
    """An egress-redirected request to a local endpoint with ingress HTTP rules passes only if both
    rule sets allow it: the proxy's own connection reaches that endpoint past the routing step,
    where the tc programs let it through instead of redirecting it a second time."""
    subprocess.run(
        ["nsenter", f"--net={net.node}", "nft", "-f", "-"],
        input=(
            "flush chain ip pntest_redirect pre\n"
            f"add rule ip pntest_redirect pre ip saddr {CLIENT} tcp dport 80"
            f" meta mark set {TO_EGRESS_PROXY:#x}\n"
        ),
        text=True,
        check=True,
    )
    egress = HttpPolicy(
        "egress", CLIENT, 80, 80, None, (HttpRule(method="PUT|GET"),), "cnp:shop/out:egress:0"
    )
    ingress = HttpPolicy(
        "ingress", SERVER, 80, 80, frozenset({300}), (HttpRule(method="PUT"),), "cnp:shop/in:ingress:0"
    )
    reader, logged = records(proxy)
    with in_netns(net.node):
        assert proxy.apply([egress, ingress], {"10.98.0.0/24": 300, "0.0.0.0/0": 2})
    assert request(net, "PUT", "/a")[0] == 200  # type: ignore[index]
    assert request(net, "GET", "/b") == (403, "Access denied")  # the destination's rules refuse it
    assert request(net, "POST", "/c") == (403, "Access denied")  # the client's rules refuse it
    assert [(m, p) for _, m, p in net.seen] == [("PUT", "/a")]
    deadline = time.monotonic() + 5.0
    while len(logged) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    reader.stop()
    assert [(r["direction"], r["status"], r["rule"]) for r in logged] == [
        ("egress", 200, "cnp:shop/out:egress:0:http:0&cnp:shop/in:ingress:0:http:0"),
        ("egress", 403, "default-deny"),
        ("egress", 403, "default-deny"),
    ]


def test_a_policy_change_reaches_an_open_keep_alive_connection(net: Net, proxy: L7Proxy) -> None:
    """After a change, no request on a connection opened before it is judged by the old rules: the
    old worker finishes what is in flight and closes the connection; the client's next connection
    meets the new rules."""
    apply(net, proxy, HttpPolicy("ingress", SERVER, 80, 80, None, (HttpRule(path="/a"),), "old"))
    conn = http.client.HTTPConnection(SERVER, 80, timeout=2.0)
    with in_netns(net.client):
        conn.sock = socket.create_connection((SERVER, 80), timeout=2.0)
    conn.request("GET", "/a", headers={"Host": "api"})
    first = conn.getresponse()
    assert first.status == 200 and not first.will_close
    first.read()
    assert apply(net, proxy, HttpPolicy("ingress", SERVER, 80, 80, None, (HttpRule(path="/b"),), "new"))
    outcomes = []
    for _ in range(20):  # the same connection, as long as it stays open
        try:
            conn.request("GET", "/a", headers={"Host": "api"})
            response = conn.getresponse()
            outcomes.append(response.status)
            response.read()
            if response.will_close:
                break
        except (http.client.HTTPException, ConnectionError, OSError):
            outcomes.append("closed")
            break
        time.sleep(0.05)
    conn.close()
    assert 200 not in outcomes, outcomes
    assert request(net, "GET", "/a") == (403, "Access denied") and request(net, "GET", "/b")[0] == 200  # type: ignore[index]
