"""The nftables rendering of a ServicePlan (kube-proxy's nftables layout): full table, diffs, traces.

No kernel needed, except the last tests: they check the scripts with nft itself, inside a throw-away
network namespace of their own (``unshare -n``), when run as root with nft installed.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import socket
import struct
import subprocess
import tempfile

import pytest

from podnet.calc.services import CLUSTER_IP, EXTERNAL_IP, NODE_PORT, Backend, Frontend, ServicePlan
from podnet.dataplane.services_nft import (
    CASCADE_MAX,
    CLUSTER_IPS,
    NO_ENDPOINT_NODEPORTS,
    NO_ENDPOINT_SERVICES,
    SERVICE_IPS,
    SERVICE_NODEPORTS,
    Rendering,
    StaleFlow,
    _matches,
    _nla,
    _tuple,
    affinity_set,
    build_rendering,
    endpoint_chain,
    render_diff,
    render_full,
    service_chain,
    stale_udp_flows,
)

CIDRS = ("10.244.0.0/16",)


def be(i: int, port: int = 8080) -> Backend:
    return Backend(f"10.244.1.{i}", port, "node-1", f"default/pod-{i}")


def web(*backends: Backend, **kw: object) -> Frontend:
    return Frontend("default/web", "http", CLUSTER_IP, "10.96.0.10", 80, "TCP", tuple(backends), **kw)  # type: ignore[arg-type]


def nodeport(*backends: Backend, local_only: bool = False) -> Frontend:
    return Frontend(
        "default/web", "http", NODE_PORT, None, 30080, "TCP", tuple(backends), local_only=local_only
    )


def plan(*frontends: Frontend) -> ServicePlan:
    return ServicePlan("node-1", tuple(sorted(frontends)), ("192.168.50.1",))


def many(n: int, backends: int = 3) -> ServicePlan:
    fronts = []
    for i in range(n):
        bs = tuple(
            Backend(f"10.244.{i // 200}.{(i % 200) + j}", 8080, "node-1", f"default/s{i}-{j}")
            for j in range(backends)
        )
        fronts.append(
            Frontend(f"default/s{i}", "", CLUSTER_IP, f"10.96.{i // 250}.{i % 250 + 1}", 80, "TCP", bs)
        )
    return plan(*fronts)


# ------------------------------------------------------------------------- a tiny packet tracer

_GOTO = re.compile(r"goto ([^\s,]+)")


def trace(
    r: Rendering, saddr: str, daddr: str, proto: str, dport: int, local: tuple[str, ...] = ("192.168.50.1",)
) -> dict:
    """Follow a first packet through the nat chains: which backends it may reach, masquerade or not,
    or that the filter chains reject it. A miniature of kube-proxy's unit-test tracer."""
    p = proto.lower()
    key = f"{daddr} . {p} . {dport}"
    port_key = f"{p} . {dport}"
    is_local = daddr in local
    if key in r.maps[NO_ENDPOINT_SERVICES] or (is_local and port_key in r.maps[NO_ENDPOINT_NODEPORTS]):
        return {"verdict": "reject"}
    verdict = r.maps[SERVICE_IPS].get(key) or (r.maps[SERVICE_NODEPORTS].get(port_key) if is_local else None)
    if verdict is None:
        return {"verdict": "reject" if daddr in r.cluster_ips else "untouched"}
    chain = r.chains[_GOTO.match(verdict).group(1)]  # type: ignore[union-attr]
    masq = False
    for rule in chain:
        if rule == "jump mark-for-masquerade":
            masq = True
        elif rule.startswith("ip saddr != @cluster-cidrs"):
            masq = masq or not any(saddr.startswith(c.split(".0.0/")[0] + ".") for c in r.cluster_cidrs)
    targets = [
        t
        for rule in chain
        if "goto " in rule and not rule.startswith("ip saddr @")
        for t in _GOTO.findall(rule)
    ]
    out = {"verdict": "dnat", "backends": set(), "masquerade": set()}
    for target in targets:
        rules = r.chains[target]
        dnat = next(x for x in rules if " dnat to " in x).split(" dnat to ")[1]
        hairpin = rules[0].startswith(f"ip saddr {saddr} ")
        out["backends"].add(dnat)
        out["masquerade"].add(masq or hairpin)
    return out


# ------------------------------------------------------------------------------------ rendering


def test_cluster_ip_spreads_over_every_backend_through_one_map_entry() -> None:
    f = web(be(11), be(12), be(13))
    r = build_rendering(plan(f), CIDRS)
    assert r.maps[SERVICE_IPS] == {"10.96.0.10 . tcp . 80": f"goto {service_chain(f)}"}
    assert r.cluster_ips == frozenset({"10.96.0.10"})
    rules = r.chains[service_chain(f)]
    assert rules[0] == "ip saddr != @cluster-cidrs jump mark-for-masquerade"
    assert rules[1:] == (  # the cascade: 1 in 3, then 1 in 2 of the rest, then the last
        f"numgen random mod 3 0 goto {endpoint_chain(f, be(11))}",
        f"numgen random mod 2 0 goto {endpoint_chain(f, be(12))}",
        f"goto {endpoint_chain(f, be(13))}",
    )
    for b in (be(11), be(12), be(13)):
        assert r.chains[endpoint_chain(f, b)] == (
            f"ip saddr {b.ip} jump mark-for-masquerade",
            f"meta l4proto tcp dnat to {b.ip}:8080",
        )
    t = trace(r, "10.244.1.50", "10.96.0.10", "TCP", 80)
    assert t == {
        "verdict": "dnat",
        "backends": {"10.244.1.11:8080", "10.244.1.12:8080", "10.244.1.13:8080"},
        "masquerade": {False},
    }
    # from outside the pod CIDRs (a host-network process): masqueraded
    assert trace(r, "192.168.50.1", "10.96.0.10", "TCP", 80)["masquerade"] == {True}
    # hairpin: the backend reaching its own service is masqueraded on that path only
    hair = trace(r, "10.244.1.11", "10.96.0.10", "TCP", 80)
    assert hair["masquerade"] == {False, True}
    # another port of the ClusterIP is refused, other addresses untouched
    assert trace(r, "10.244.1.50", "10.96.0.10", "TCP", 81) == {"verdict": "reject"}
    assert trace(r, "10.244.1.50", "10.96.0.11", "TCP", 80) == {"verdict": "untouched"}
    text = render_full(r)
    assert "table ip podnet_services {" in text
    assert "type nat hook prerouting priority dstnat" in text
    assert "type nat hook output priority -100" in text
    assert "masquerade fully-random" in text


def test_without_cluster_cidrs_only_hairpin_and_external_traffic_is_masqueraded() -> None:
    f = web(be(11))
    r = build_rendering(plan(f))
    assert r.chains[service_chain(f)] == (f"goto {endpoint_chain(f, be(11))}",)
    assert trace(r, "192.168.50.1", "10.96.0.10", "TCP", 80)["masquerade"] == {False}


def test_nodeport_listens_on_every_local_address_and_masquerades_unless_local_only() -> None:
    cluster = nodeport(be(11), be(12))
    r = build_rendering(plan(cluster), CIDRS)
    assert r.maps[SERVICE_NODEPORTS] == {"tcp . 30080": f"goto {service_chain(cluster)}"}
    assert r.maps[SERVICE_IPS] == {}
    assert r.chains[service_chain(cluster)][0] == "jump mark-for-masquerade"
    t = trace(r, "203.0.113.9", "192.168.50.1", "TCP", 30080)
    assert t["backends"] == {"10.244.1.11:8080", "10.244.1.12:8080"} and t["masquerade"] == {True}
    assert trace(r, "203.0.113.9", "192.168.50.7", "TCP", 30080) == {"verdict": "untouched"}  # not local
    assert (
        "fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports"
        in render_full(r)
    )

    local = nodeport(be(11), local_only=True)
    r = build_rendering(plan(local), CIDRS)
    assert not any("mark-for-masquerade" in x for x in r.chains[service_chain(local)])
    assert trace(r, "203.0.113.9", "192.168.50.1", "TCP", 30080)["masquerade"] == {False}  # client kept


def test_external_ip_is_a_service_ips_entry_and_masqueraded() -> None:
    f = Frontend("default/web", "http", EXTERNAL_IP, "192.0.2.10", 80, "TCP", (be(11),))
    r = build_rendering(plan(f, web(be(11))), CIDRS)
    assert r.maps[SERVICE_IPS]["192.0.2.10 . tcp . 80"] == f"goto {service_chain(f)}"
    assert r.cluster_ips == frozenset({"10.96.0.10"})  # external IPs are not cluster IPs
    assert trace(r, "203.0.113.9", "192.0.2.10", "TCP", 80) == {
        "verdict": "dnat",
        "backends": {"10.244.1.11:8080"},
        "masquerade": {True},
    }
    # the ClusterIP and the ExternalIP share the backend's chain (one per service port and backend)
    assert endpoint_chain(f, be(11)) == endpoint_chain(web(be(11)), be(11))
    assert service_chain(f) != service_chain(web(be(11)))


def test_session_affinity_checks_the_sets_first_and_updates_them_in_the_endpoint_chain() -> None:
    f = web(be(11), be(12), affinity_seconds=600)
    r = build_rendering(plan(f), CIDRS)
    names = {affinity_set(f, b) for b in (be(11), be(12))}
    assert r.affinity_sets == frozenset((n, 600) for n in names)
    rules = r.chains[service_chain(f)]
    assert rules[1:3] == tuple(
        f"ip saddr @{affinity_set(f, b)} goto {endpoint_chain(f, b)}" for b in (be(11), be(12))
    )
    assert rules[3:] == (
        f"numgen random mod 2 0 goto {endpoint_chain(f, be(11))}",
        f"goto {endpoint_chain(f, be(12))}",
    )
    assert r.chains[endpoint_chain(f, be(12))][1] == f"update @{affinity_set(f, be(12))} {{ ip saddr }}"
    text = render_full(r)
    for n in names:
        assert f"set {n} {{ type ipv4_addr; flags dynamic,timeout; timeout 600s; }}" in text


def test_a_frontend_without_backends_is_rejected_by_the_filter_chains() -> None:
    cluster = Frontend("default/empty", "", CLUSTER_IP, "10.96.0.99", 80, "TCP", ())
    udp = Frontend("default/empty", "dns", CLUSTER_IP, "10.96.0.99", 53, "UDP", ())
    node = Frontend("default/empty", "", NODE_PORT, None, 30099, "TCP", (), local_only=True)
    r = build_rendering(plan(cluster, udp, node), CIDRS)
    assert r.chains == {}
    assert r.maps[NO_ENDPOINT_SERVICES] == {
        "10.96.0.99 . tcp . 80": "goto reject-chain",
        "10.96.0.99 . udp . 53": "goto reject-chain",
    }
    assert r.maps[NO_ENDPOINT_NODEPORTS] == {"tcp . 30099": "goto reject-chain"}
    assert trace(r, "10.244.1.50", "10.96.0.99", "UDP", 53) == {"verdict": "reject"}
    assert trace(r, "203.0.113.9", "192.168.50.1", "TCP", 30099) == {"verdict": "reject"}
    text = render_full(r)
    assert "meta l4proto tcp reject with tcp reset\n        reject\n" in text
    for hook in ("prerouting", "output"):  # before routing: no route to the VIP is needed
        assert re.search(
            rf"type filter hook {hook} priority -110; policy accept;\n\s+ct state new jump "
            r"service-endpoints-check",
            text,
        )


def test_cost_per_packet_does_not_grow_with_the_number_of_services() -> None:
    small, big = build_rendering(many(3)), build_rendering(many(1000))
    assert small.base == big.base  # the hooks and dispatch chains are fixed
    assert len(big.maps[SERVICE_IPS]) == 1000
    assert {len(rules) for name, rules in big.chains.items() if name.startswith("service-")} == {3}
    assert {len(rules) for name, rules in big.chains.items() if name.startswith("endpoint-")} == {2}


def test_the_pick_is_a_uniform_cascade_up_to_its_limit_and_one_map_above() -> None:
    """Rule i of n matches 1 in (n - i) of what reaches it: each backend gets 1/n. Above
    CASCADE_MAX backends, one numgen over an anonymous verdict map."""
    from fractions import Fraction

    for n in (2, 5, CASCADE_MAX):
        f = web(*(be(10 + i) for i in range(n)))
        rules = build_rendering(plan(f), CIDRS).chains[service_chain(f)][1:]
        assert len(rules) == n and all(f"goto {endpoint_chain(f, be(10 + i))}" in rules[i] for i in range(n))
        reaching, shares = Fraction(1), []
        for rule in rules:
            found = re.match(r"numgen random mod (\d+) 0 goto ", rule)
            share = reaching / int(found.group(1)) if found else reaching
            shares.append(share)
            reaching -= share
        assert shares == [Fraction(1, n)] * n and reaching == 0
    f = web(*(be(10 + i) for i in range(CASCADE_MAX + 1)))
    (pick,) = build_rendering(plan(f), CIDRS).chains[service_chain(f)][1:]
    assert pick.startswith(f"numgen random mod {CASCADE_MAX + 1} vmap {{ 0 : goto ")
    assert trace(build_rendering(plan(f), CIDRS), "10.244.1.50", "10.96.0.10", "TCP", 80)["backends"] == {
        f"10.244.1.{10 + i}:8080" for i in range(CASCADE_MAX + 1)
    }


def test_nodeport_only_renders_node_ports_and_nothing_of_cluster_ips() -> None:
    r = build_rendering(plan(web(be(11)), nodeport(be(11))), CIDRS, nodeport_only=True)
    assert r.maps[SERVICE_IPS] == {} and r.cluster_ips == frozenset()
    assert list(r.maps[SERVICE_NODEPORTS]) == ["tcp . 30080"]
    text = render_full(r)
    assert "cluster-ips-check" not in text and "filter-output-post-dnat" not in text
    assert render_diff(build_rendering(plan(web(be(11)))), r) is None  # other fixed chains: full resync


def test_non_ipv4_frontends_and_backends_are_skipped() -> None:
    v6 = Frontend("default/v6", "", CLUSTER_IP, "fd00::10", 80, "TCP", (be(11),))
    mixed = web(be(11), Backend("fd00::11", 8080, "node-1", "default/x"))
    r = build_rendering(plan(v6, mixed))
    assert len(r.skipped) == 1 and "fd00::10" in r.skipped[0]
    assert r.chains[service_chain(mixed)] == (f"goto {endpoint_chain(mixed, be(11))}",)


# ---------------------------------------------------------------------------------------- diffs


def _statements(script: str) -> list[str]:
    return [line for line in script.splitlines() if line]


def test_diff_of_equal_renderings_is_empty() -> None:
    assert render_diff(build_rendering(many(20)), build_rendering(many(20))) == ""


def test_adding_a_backend_touches_only_that_services_chain_and_one_endpoint_chain() -> None:
    others = [
        Frontend(f"default/o{i}", "", CLUSTER_IP, f"10.96.1.{i}", 80, "TCP", (be(100 + i),)) for i in range(5)
    ]
    before = build_rendering(plan(web(be(11), be(12)), nodeport(be(11), be(12)), *others), CIDRS)
    after = build_rendering(
        plan(web(be(11), be(12), be(13)), nodeport(be(11), be(12), be(13)), *others), CIDRS
    )
    script = render_diff(before, after)
    assert script
    new_endpoint = endpoint_chain(web(), be(13))
    touched = {m.group(1) for m in re.finditer(r"(?:chain|rule) ip podnet_services (\S+)", script)}
    assert touched == {new_endpoint, service_chain(web()), service_chain(nodeport())}
    assert "element" not in script  # the map entries do not change
    assert "delete" not in script
    assert _statements(script)[0] == f"add chain ip podnet_services {new_endpoint}"
    # and back: the endpoint chain goes, after the service chains stop jumping to it
    back = _statements(render_diff(after, before) or "")
    assert back[-2:] == [
        f"flush chain ip podnet_services {new_endpoint}",
        f"delete chain ip podnet_services {new_endpoint}",
    ]
    assert back.index(f"flush chain ip podnet_services {service_chain(web())}") < back.index(back[-1])


def test_last_backend_gone_moves_the_frontend_to_the_reject_map() -> None:
    before = build_rendering(plan(web(be(11))))
    after = build_rendering(plan(web()))
    lines = _statements(render_diff(before, after) or "")
    assert lines[:2] == [
        f"delete element ip podnet_services {SERVICE_IPS} {{ 10.96.0.10 . tcp . 80 }}",
        f"add element ip podnet_services {NO_ENDPOINT_SERVICES} "
        "{ 10.96.0.10 . tcp . 80 : goto reject-chain }",
    ]
    assert sorted(lines[-2:]) == [
        f"delete chain ip podnet_services {endpoint_chain(web(), be(11))}",
        f"delete chain ip podnet_services {service_chain(web())}",
    ]
    assert "cluster-ips" not in "\n".join(lines)  # still a cluster IP
    removed = _statements(render_diff(before, build_rendering(plan())) or "")
    assert removed[-1] == f"delete element ip podnet_services {CLUSTER_IPS} {{ 10.96.0.10 }}"


def test_affinity_timeout_change_is_a_new_set() -> None:
    before = build_rendering(plan(web(be(11), affinity_seconds=60)))
    after = build_rendering(plan(web(be(11), affinity_seconds=120)))
    lines = _statements(render_diff(before, after) or "")
    assert lines[0].startswith(
        f"add set ip podnet_services {affinity_set(web(be(11), affinity_seconds=120), be(11))} "
    )
    assert (
        lines[-1] == f"delete set ip podnet_services {affinity_set(web(be(11), affinity_seconds=60), be(11))}"
    )


def test_stale_udp_flows_after_backend_changes() -> None:
    def dns(*bs: Backend) -> Frontend:
        return Frontend("kube-system/dns", "dns", CLUSTER_IP, "10.96.0.53", 53, "UDP", bs)

    a, b = be(11, 53), be(12, 53)
    r0 = build_rendering(plan(dns()))
    r1 = build_rendering(plan(dns(a, b)))
    r2 = build_rendering(plan(dns(a)))
    assert stale_udp_flows(r0, r1) == [StaleFlow("10.96.0.53", 53, None)]  # first backend: untranslated go
    assert stale_udp_flows(r1, r2) == [StaleFlow("10.96.0.53", 53, (b.ip, 53))]
    assert stale_udp_flows(r2, build_rendering(plan())) == [StaleFlow("10.96.0.53", 53, (a.ip, 53))]
    assert stale_udp_flows(r1, build_rendering(plan(web(be(11))))) == [
        StaleFlow("10.96.0.53", 53, (a.ip, 53)),
        StaleFlow("10.96.0.53", 53, (b.ip, 53)),
    ]
    assert stale_udp_flows(r1, r1) == []


def test_ctnetlink_tuple_parsing_and_matching() -> None:
    def tup(src: str, dst: str, sport: int, dport: int) -> bytes:
        ip = _nla(1, socket.inet_aton(src)) + _nla(2, socket.inet_aton(dst))
        proto = _nla(1, bytes([17])) + _nla(2, struct.pack("!H", sport)) + _nla(3, struct.pack("!H", dport))
        return _nla(1 | 0x8000, ip) + _nla(2 | 0x8000, proto)

    orig = _tuple(tup("10.244.1.50", "10.96.0.53", 40000, 53))
    reply = _tuple(tup("10.244.1.12", "10.244.1.50", 53, 40000))
    plain = _tuple(tup("10.96.0.53", "10.244.1.50", 53, 40000))
    assert orig == ("10.244.1.50", "10.96.0.53", 17, 40000, 53)
    assert orig and reply and plain
    assert _matches(StaleFlow("10.96.0.53", 53, ("10.244.1.12", 53)), orig, reply, set())
    assert not _matches(StaleFlow("10.96.0.53", 53, ("10.244.1.11", 53)), orig, reply, set())
    assert not _matches(StaleFlow("10.96.0.53", 53, None), orig, reply, set())
    assert _matches(StaleFlow("10.96.0.53", 53, None), orig, plain, set())
    node = _tuple(tup("203.0.113.9", "192.168.50.1", 40000, 30053))
    node_reply = _tuple(tup("10.244.1.12", "203.0.113.9", 53, 40000))
    assert node and node_reply
    assert _matches(StaleFlow(None, 30053, ("10.244.1.12", 53)), node, node_reply, {"192.168.50.1"})
    assert not _matches(StaleFlow(None, 30053, ("10.244.1.12", 53)), node, node_reply, set())


# ------------------------------------------------------------------------- checked by nft itself

needs_nft = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("nft") is None or shutil.which("unshare") is None,
    reason="needs root, nft and unshare (nft checks scripts against the kernel)",
)


def _nft(script_steps: list[str], listing: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the scripts one after the other with ``nft -f`` in a private netns (gone when it exits)."""
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i, script in enumerate(script_steps):
            path = os.path.join(tmp, f"step{i}.nft")
            with open(path, "w") as f:
                f.write(script)
            files.append(path)
        shell = " && ".join(f"nft -f {path}" for path in files)
        if listing:
            shell += " && nft list table ip podnet_services"
        return subprocess.run(["unshare", "-n", "sh", "-c", shell], capture_output=True, text=True)


def _blocks(listing: str) -> dict[str, list[str]]:
    """``nft list table`` as {"chain x" / "set y" / "map z": sorted lines} (nft orders blocks freely)."""
    blocks: dict[str, list[str]] = {}
    current = None
    for line in listing.splitlines():
        stripped = line.strip()
        m = re.match(r"(chain|set|map) (\S+) \{$", stripped)
        if m:
            current = f"{m.group(1)} {m.group(2)}"
            blocks[current] = []
        elif current and stripped and stripped != "}":
            blocks[current].append(stripped)
    return {k: sorted(v) for k, v in blocks.items()}


@pytest.mark.root
@needs_nft
def test_full_script_is_accepted_by_nft() -> None:
    full = render_full(
        build_rendering(
            plan(
                web(be(11), be(12), affinity_seconds=30),
                nodeport(be(11), local_only=True),
                Frontend("default/web", "http", EXTERNAL_IP, "192.0.2.10", 80, "TCP", (be(11),)),
                Frontend("default/dns", "", CLUSTER_IP, "10.96.0.53", 53, "UDP", (be(11, 53),)),
                Frontend("default/empty", "", CLUSTER_IP, "10.96.0.99", 80, "TCP", ()),
                Frontend("default/empty", "", NODE_PORT, None, 30099, "UDP", ()),
            ),
            CIDRS,
        )
    )
    proc = subprocess.run(
        ["unshare", "-n", "nft", "-c", "-f", "-"], input=full, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    for nodeport_only in (False, True):
        text = render_full(build_rendering(many(50), CIDRS, nodeport_only=nodeport_only))
        proc = subprocess.run(
            ["unshare", "-n", "nft", "-c", "-f", "-"], input=text, capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr


@pytest.mark.root
@needs_nft
def test_diffs_applied_by_nft_give_the_same_table_as_a_full_apply() -> None:
    a = plan(
        web(be(11), be(12)),
        nodeport(be(11), be(12)),
        Frontend("default/e", "", CLUSTER_IP, "10.96.0.99", 80, "TCP", ()),
    )
    b = plan(
        web(be(12), be(13), affinity_seconds=60),
        nodeport(be(13), local_only=True),
        Frontend("default/e", "", CLUSTER_IP, "10.96.0.99", 80, "TCP", (be(14),)),
        Frontend("default/dns", "", CLUSTER_IP, "10.96.0.53", 53, "UDP", ()),
    )
    ra, rb = build_rendering(a, CIDRS), build_rendering(b, ("10.244.0.0/15", "10.250.0.0/16"))
    forward, back = render_diff(ra, rb), render_diff(rb, ra)
    assert forward and back
    via_diff = _nft([render_full(ra), forward], listing=True)
    assert via_diff.returncode == 0, via_diff.stderr
    direct = _nft([render_full(rb)], listing=True)
    assert _blocks(via_diff.stdout) == _blocks(direct.stdout)
    round_trip = _nft([render_full(ra), forward, back], listing=True)
    assert round_trip.returncode == 0, round_trip.stderr
    assert _blocks(round_trip.stdout) == _blocks(_nft([render_full(ra)], listing=True).stdout)
    # and a diff after a change of many services at once
    big_a, big_b = build_rendering(many(200)), build_rendering(many(150, backends=2))
    proc = _nft([render_full(big_a), render_diff(big_a, big_b) or ""], listing=True)
    assert proc.returncode == 0, proc.stderr
    assert _blocks(proc.stdout) == _blocks(_nft([render_full(big_b)], listing=True).stdout)


def test_frontend_dataclass_replace_keeps_ids() -> None:
    f = web(be(11))
    assert service_chain(dataclasses.replace(f, backends=())) == service_chain(f)
