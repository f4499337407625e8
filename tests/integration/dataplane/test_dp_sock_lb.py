"""Socket load balancing (bpf/sock_lb.c + dataplane/sock_lb.py) with real programs and real traffic.

Layout, all in throw-away namespaces and a test-owned cgroup tree::

    /sys/fs/cgroup/unified/pntest-socklb-<id>/          test-owned parent
        node/          <- lb_connect4, lb_sendmsg4, lb_recvmsg4, lb_getpeername4 (multi)
            pod/       <- the client process joins this FIRST, then setns()es into netns "cl"
    netns cl: v1 10.1.1.1/24 ─veth─ b1: eth0 10.1.1.2/24   server "b1" on :8080/TCP and :53/UDP
              v2 10.1.2.1/24 ─veth─ b2: eth0 10.1.2.2/24   server "b2"
              v3 10.1.3.1/24 ─veth─ b3: eth0 10.1.3.2/24   server "b3"
    pins: a bpffs mounted on a temporary directory (unmounted at the end)

Service 10.96.0.10:80/TCP -> :8080 and 10.96.0.10:53/UDP -> :53 of the backends. The client has no
route to 10.96.0.0/12 at all: anything that reaches a backend was translated at the socket. The
servers answer "<name> <their local address>", so the test sees which backend answered and that
the connection arrived addressed to the backend itself (no per-packet NAT on the way).

Everything is removed by finalizers, also when a test fails: client processes (killed with their
cgroup), programs (detached, and the cgroup removed), the bpffs mount, servers and namespaces.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import secrets
import selectors
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from podnet.calc.services import CLUSTER_IP, EXTERNAL_IP, Backend, Frontend, ServicePlan
from podnet.dataplane import bpf
from podnet.dataplane.netlink import Netlink
from podnet.dataplane.netns import run_in_netns, setns
from podnet.dataplane.sock_lb import HOOKS, SocketLB, is_cgroup2
from podnet.lab.netns import remove_cgroup

CGROUP2 = "/sys/fs/cgroup/unified"
VIP = "10.96.0.10"
BACKENDS = {"b1": "10.1.1.2", "b2": "10.1.2.2", "b3": "10.1.3.2"}
MNT_DETACH = 2

pytestmark = pytest.mark.skipif(
    not os.path.isdir(CGROUP2) or not is_cgroup2(CGROUP2), reason=f"needs cgroup v2 at {CGROUP2}"
)

_libc = ctypes.CDLL(None, use_errno=True)

# The client: joins the cgroup and the netns before Python starts (preexec), then answers JSON
# requests on stdin, one line each, so one process serves a whole test (its sockets are created
# inside the cgroup: that is what the hooks key on).
CLIENT = r"""
import json, socket, statistics, sys, time

def _read(s):
    data = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            return data.decode().strip()
        data += chunk

def tcp(ip, port, n):
    out = []
    for _ in range(n):
        s = socket.socket()
        s.settimeout(3)
        try:
            s.connect((ip, port))
            peer = s.getpeername()
            out.append({"answer": _read(s), "peer": list(peer)})
        except OSError as e:
            out.append({"errno": e.errno, "error": str(e)})
        finally:
            s.close()
    return out

def udp(ip, port, n):
    out = []
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    for i in range(n):
        try:
            s.sendto(b"hello %d" % i, (ip, port))
            data, src = s.recvfrom(4096)
            out.append({"answer": data.decode().strip(), "src": list(src)})
        except OSError as e:
            out.append({"errno": e.errno, "error": str(e)})
    s.close()
    return out

def udp_connected(ip, port, n):
    out = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(3)
        try:
            s.connect((ip, port))
            s.send(b"hello")
            data, src = s.recvfrom(4096)
            out.append({"answer": data.decode().strip(), "src": list(src), "peer": list(s.getpeername())})
        except OSError as e:
            out.append({"errno": e.errno, "error": str(e)})
        finally:
            s.close()
    return out

def connect_error(ip, port, proto):
    kind = socket.SOCK_STREAM if proto == "TCP" else socket.SOCK_DGRAM
    s = socket.socket(socket.AF_INET, kind)
    s.settimeout(5)
    start = time.monotonic()
    try:
        if proto == "UDP-sendto":
            s.sendto(b"x", (ip, port))
        else:
            s.connect((ip, port))
        return {"errno": 0, "seconds": time.monotonic() - start}
    except OSError as e:
        return {"errno": e.errno, "error": str(e), "seconds": time.monotonic() - start}
    finally:
        s.close()

def latency(ip, port, n):
    samples = []
    for _ in range(n):
        s = socket.socket()
        t0 = time.perf_counter_ns()
        s.connect((ip, port))
        samples.append(time.perf_counter_ns() - t0)
        s.close()
    return {"median_us": statistics.median(samples) / 1000, "p90_us": sorted(samples)[int(n * 0.9)] / 1000}

for line in sys.stdin:
    request = json.loads(line)
    op = request.pop("op")
    try:
        result = globals()[op](**request)
    except Exception as e:
        result = {"exception": repr(e)}
    print(json.dumps(result), flush=True)
"""


class Client:
    """A process in ``cgroup`` (joined first) and network namespace ``netns`` (entered second)."""

    def __init__(self, cgroup: str, netns: str) -> None:
        procs = os.path.join(cgroup, "cgroup.procs").encode()
        ns_fd = os.open(netns, os.O_RDONLY)

        def preexec() -> None:  # between fork and exec: the cgroup first, then the namespace
            fd = os.open(procs, os.O_WRONLY)
            os.write(fd, b"0")
            os.close(fd)
            setns(ns_fd)

        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-u", "-c", CLIENT],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                preexec_fn=preexec,
                pass_fds=(ns_fd,),
            )
        finally:
            os.close(ns_fd)

    def __call__(self, op: str, **kwargs: object) -> object:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"op": op, **kwargs}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"client died (rc={self.proc.poll()})"
        result = json.loads(line)
        assert not (isinstance(result, dict) and "exception" in result), result
        return result

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=5)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


@dataclass
class Server:
    """TCP :8080 and UDP :53 on ``ip`` in ``netns``; answers ``<name> <local address>``."""

    name: str
    ip: str
    netns: str
    seen: list[tuple[str, str]] = field(default_factory=list)  # (client address, local address)
    stop_event: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        def open_sockets() -> tuple[socket.socket, socket.socket]:
            tcp = socket.socket()
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.bind((self.ip, 8080))
            tcp.listen(1024)
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.bind((self.ip, 53))
            return tcp, udp

        self.tcp, self.udp = run_in_netns(self.netns, open_sockets)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.tcp, selectors.EVENT_READ)
        sel.register(self.udp, selectors.EVENT_READ)
        while not self.stop_event.is_set():
            for key, _ in sel.select(0.1):
                if key.fileobj is self.tcp:
                    conn, peer = self.tcp.accept()
                    local = conn.getsockname()
                    self.seen.append((peer[0], f"{local[0]}:{local[1]}"))
                    with contextlib.suppress(OSError):
                        conn.sendall(f"{self.name} {local[0]}:{local[1]}\n".encode())
                    conn.close()
                else:
                    _, src = self.udp.recvfrom(4096)
                    self.udp.sendto(f"{self.name} {self.ip}:53\n".encode(), src)
        sel.close()

    def close(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=5)
        self.tcp.close()
        self.udp.close()


@dataclass
class Env:
    lb: SocketLB
    node_cgroup: str
    pod_cgroup: str
    client_ns: str
    servers: dict[str, Server]
    new_client: Callable[[], Client]
    pin_dir: str


def backends(*names: str, port: int = 8080) -> tuple[Backend, ...]:
    return tuple(Backend(BACKENDS[n], port, "node-1", f"default/{n}") for n in names)


def plan(*frontends: Frontend) -> ServicePlan:
    return ServicePlan(node="node-1", frontends=tuple(sorted(frontends)))


def web(names=("b1", "b2", "b3"), affinity: int = 0, ip: str = VIP, kind: str = CLUSTER_IP) -> Frontend:
    return Frontend("default/web", "http", kind, ip, 80, "TCP", backends(*names), affinity)


def dns(names=("b1", "b2", "b3")) -> Frontend:
    return Frontend("default/web", "dns", CLUSTER_IP, VIP, 53, "UDP", backends(*names, port=53))


def name_of(answer: dict) -> str:
    assert "answer" in answer, answer
    return answer["answer"].split()[0]


@pytest.fixture(scope="session")
def bpf_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("socklb-cache"))


@pytest.fixture
def env(make_netns, tmp_path, bpf_cache: str) -> Iterator[Env]:
    parent = os.path.join(CGROUP2, f"pntest-socklb-{secrets.token_hex(3)}")
    node_cgroup = os.path.join(parent, "node")
    pod_cgroup = os.path.join(node_cgroup, "pod")
    bpffs = str(tmp_path / "bpffs")
    clients: list[Client] = []
    servers: dict[str, Server] = {}
    lb: SocketLB | None = None
    try:
        os.makedirs(pod_cgroup)
        bpf.ensure_bpffs(bpffs)
        client_ns = make_netns("cl")
        for index, (name, ip) in enumerate(BACKENDS.items(), start=1):
            ns = make_netns(name)
            with Netlink.open(client_ns) as nl:
                nl.link_add_veth(f"v{index}", "eth0", peer_netns=ns, mtu=1500, up=True)
                nl.addr_add(f"v{index}", f"10.1.{index}.1/24")
            with Netlink.open(ns) as nl:
                nl.link_set("eth0", up=True)
                nl.addr_add("eth0", f"{ip}/24")
            servers[name] = Server(name, ip, ns)
            servers[name].start()
        pin_dir = os.path.join(bpffs, "node-1", "sock_lb")
        lb = SocketLB(node_cgroup, pin_dir, bpf_cache)

        def new_client() -> Client:
            clients.append(Client(pod_cgroup, client_ns))
            return clients[-1]

        yield Env(lb, node_cgroup, pod_cgroup, client_ns, servers, new_client, pin_dir)
    finally:
        for client in clients:
            client.stop()
        for server in servers.values():
            server.close()
        if lb is not None:
            with contextlib.suppress(Exception):
                lb.detach()
        remove_cgroup(parent)  # kills what is left in it; rmdir drops any attached program
        if os.path.ismount(bpffs):
            _libc.umount2(os.fsencode(bpffs), MNT_DETACH)
    assert not os.path.exists(parent)


# ---------------------------------------------------------------------- traffic


def test_tcp_to_the_vip_spreads_over_every_backend_without_nat(env: Env, capsys) -> None:
    env.lb.ensure()
    result = env.lb.sync(plan(web(), dns()))
    assert result["services_added"] == 2 and result["backends_written"] == 6
    client = env.new_client()
    answers = client("tcp", ip=VIP, port=80, n=60)
    counts = Counter(name_of(a) for a in answers)
    # 60 random picks out of 3: all of them (on failure: the answers from elsewhere, whole)
    odd = [a for a in answers if name_of(a) not in BACKENDS]
    assert set(counts) == set(BACKENDS), f"{counts}; not from a backend: {odd}; lb stats {env.lb.stats()}"
    for a in answers:
        name, local = a["answer"].split()
        # The server accepted a connection addressed to its own address (not the VIP), and the
        # client's socket is connected to the backend: the translation happened once, at connect().
        assert local == f"{BACKENDS[name]}:8080"
        assert a["peer"] == [BACKENDS[name], 8080]
    for server in env.servers.values():
        assert server.seen and all(
            peer.startswith("10.1.") and peer.endswith(".1") for peer, _ in server.seen
        )
    # no NAT anywhere: the client's namespace has no conntrack NAT entry for the VIP
    nat = subprocess.run(
        ["ip", "netns", "exec", os.path.basename(env.client_ns), "cat", "/proc/net/nf_conntrack"],
        capture_output=True,
        text=True,
    )
    assert VIP not in nat.stdout
    stats = env.lb.stats()
    assert stats["lb_connect"] >= 60
    # the CLI reads the same pins
    from podnet.cli import cmd_bpf

    args = type("A", (), {"bpf_object": "lb", "node": None, "pin_dir": env.pin_dir, "output": "json"})
    capsys.readouterr()
    assert cmd_bpf.run(args) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [s["service"] for s in listed] == [f"{VIP}:53/UDP", f"{VIP}:80/TCP"]
    assert sorted(b["address"] for b in listed[1]["backends"]) == sorted(
        f"{ip}:8080" for ip in BACKENDS.values()
    )
    args.output = "text"
    assert cmd_bpf.run(args) == 0
    text = capsys.readouterr().out
    assert text.startswith("SERVICE ADDRESS") and f"{VIP}:80/TCP" in text
    with capsys.disabled():
        print(f"\nbpf lb list:\n{text}")


def test_unconnected_udp_answers_come_from_the_vip(env: Env) -> None:
    env.lb.ensure()
    env.lb.sync(plan(web(), dns()))
    answers = env.new_client()("udp", ip=VIP, port=53, n=45)
    assert all(a.get("src") == [VIP, 53] for a in answers), answers  # recvmsg4 rewrote the source
    assert set(Counter(name_of(a) for a in answers)) == set(BACKENDS)  # per datagram: spread
    assert env.lb.stats()["revnat_recv"] >= 45


def test_connected_udp_is_translated_and_shows_the_vip(env: Env) -> None:
    env.lb.ensure()
    env.lb.sync(plan(dns()))
    answers = env.new_client()("udp_connected", ip=VIP, port=53, n=30)
    for a in answers:
        assert a.get("src") == [VIP, 53] and a.get("peer") == [VIP, 53], a  # recvmsg4 + getpeername4
    assert set(Counter(name_of(a) for a in answers)) == set(BACKENDS)


def test_service_without_backend_refuses_at_once(env: Env) -> None:
    env.lb.ensure()
    env.lb.sync(plan(web(names=()), dns(names=())))
    client = env.new_client()
    for proto, port in (("TCP", 80), ("UDP", 53), ("UDP-sendto", 53)):
        result = client("connect_error", ip=VIP, port=port, proto=proto)
        assert result["errno"] == errno.ECONNREFUSED, (proto, result)
        assert result["seconds"] < 0.5, (proto, result)
    assert env.lb.stats()["no_backend"] >= 3
    # an address that is no service is left alone: no route to it from the client
    result = client("connect_error", ip="10.96.0.99", port=80, proto="TCP")
    assert result["errno"] == errno.ENETUNREACH


def test_affinity_keeps_a_client_on_one_backend(env: Env) -> None:
    env.lb.ensure()
    env.lb.sync(plan(web(affinity=60)))
    client = env.new_client()
    first = {name_of(a) for a in client("tcp", ip=VIP, port=80, n=30)}
    assert len(first) == 1, first
    (chosen,) = first
    assert env.lb.stats()["affinity_hit"] >= 29
    # the remembered backend leaves: the client moves to another one and stays there
    rest = tuple(n for n in BACKENDS if n != chosen)
    env.lb.sync(plan(web(names=rest, affinity=60)))
    moved = {name_of(a) for a in client("tcp", ip=VIP, port=80, n=20)}
    assert len(moved) == 1 and chosen not in moved, moved
    # without affinity the same client spreads again
    env.lb.sync(plan(web(names=rest)))
    assert {name_of(a) for a in client("tcp", ip=VIP, port=80, n=40)} == set(rest)


def test_backend_change_takes_effect_on_the_next_connect(env: Env) -> None:
    env.lb.ensure()
    env.lb.sync(plan(web(names=("b1",)), dns()))
    client = env.new_client()
    assert {name_of(a) for a in client("tcp", ip=VIP, port=80, n=10)} == {"b1"}
    result = env.lb.sync(plan(web(names=("b2", "b3")), dns()))
    assert result == {
        "services_added": 0,
        "services_updated": 1,
        "services_deleted": 0,
        "backends_written": 2,
        "backends_deleted": 0,
        "skipped": 0,
    }  # only the web service's entries: slot 1 rewritten, slot 2 added, then the count
    assert {name_of(a) for a in client("tcp", ip=VIP, port=80, n=30)} == {"b2", "b3"}
    # an ExternalIP frontend of the same service works the same way; removing it stops it
    env.lb.sync(plan(web(names=("b2", "b3")), web(names=("b3",), ip="192.0.2.7", kind=EXTERNAL_IP), dns()))
    assert {name_of(a) for a in client("tcp", ip="192.0.2.7", port=80, n=5)} == {"b3"}
    result = env.lb.sync(plan(web(names=("b2", "b3")), dns()))
    assert result["services_deleted"] == 1 and result["backends_deleted"] == 1
    assert client("connect_error", ip="192.0.2.7", port=80, proto="TCP")["errno"] == errno.ENETUNREACH


# ---------------------------------------------------------------------- lifecycle


def attached(cgroup: str) -> dict[str, int]:
    out = subprocess.run(
        ["bpftool", "-j", "cgroup", "show", cgroup], capture_output=True, text=True, check=True
    )
    return {row["name"]: row["id"] for row in json.loads(out.stdout.strip() or "[]")}


def test_ensure_is_idempotent_survives_restarts_and_detaches(env: Env) -> None:
    env.lb.ensure()
    env.lb.sync(plan(web(), dns()))
    progs = attached(env.node_cgroup)
    assert set(progs) == set(HOOKS)
    before = env.lb.entries()
    env.lb.ensure()  # same object: nothing reloaded, nothing re-attached
    assert attached(env.node_cgroup) == progs and env.lb.entries() == before

    # a restarted agent, started like the lab starts one (ip netns exec: /sys remounted, the
    # cgroup2 hierarchy invisible until ensure() mounts it in the agent's own mount namespace)
    code = (
        "import sys; from podnet.dataplane.sock_lb import SocketLB; "
        "lb = SocketLB(sys.argv[1], sys.argv[2], sys.argv[3]); lb.ensure(); print(len(lb.entries()))"
    )
    agent = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            os.path.basename(env.client_ns),
            sys.executable,
            "-c",
            code,
            env.node_cgroup,
            env.pin_dir,
            env.lb.cache_dir,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert agent.returncode == 0, agent.stderr
    assert agent.stdout.strip() == "2"
    assert attached(env.node_cgroup) == progs and env.lb.entries() == before

    # pins lost (bpffs remounted), programs still attached: the maps are adopted, not emptied
    bpf.unpin_tree(env.pin_dir)
    env.lb.ensure()
    assert env.lb.entries() == before
    assert set(attached(env.node_cgroup)) == set(HOOKS)  # the reloaded programs replaced the old ones
    assert len(attached(env.node_cgroup)) == len(HOOKS)
    assert {name_of(a) for a in env.new_client()("tcp", ip=VIP, port=80, n=30)} == set(BACKENDS)

    env.lb.detach()
    assert attached(env.node_cgroup) == {}
    assert not os.path.exists(env.pin_dir)
    result = env.new_client()("connect_error", ip=VIP, port=80, proto="TCP")
    assert result["errno"] == errno.ENETUNREACH  # no translation any more


def test_refuses_the_root_cgroup(tmp_path, bpf_cache: str) -> None:
    from podnet.dataplane.sock_lb import SockLBError

    with pytest.raises(SockLBError) as info:
        SocketLB(CGROUP2, str(tmp_path / "pins"), bpf_cache).ensure()
    assert "root" in info.value.message
    assert not (tmp_path / "pins").exists()


# ---------------------------------------------------------------------- measurements


def test_measure_connect_latency_and_map_sync(env: Env, capsys) -> None:
    env.lb.ensure()
    env.lb.sync(plan(web(names=("b1",))))
    client = env.new_client()
    client("latency", ip=VIP, port=80, n=50)  # warm up
    via_vip = client("latency", ip=VIP, port=80, n=500)
    direct = client("latency", ip=BACKENDS["b1"], port=8080, n=500)

    def three(i: int) -> tuple[Backend, ...]:
        return tuple(
            Backend(f"10.244.{i % 200}.{j + 1}", 8080, "node-1", f"default/p{i}-{j}") for j in range(3)
        )

    frontends = [
        Frontend(f"default/s{i}", "", CLUSTER_IP, f"10.97.{i // 250}.{i % 250 + 1}", 80, "TCP", three(i))
        for i in range(1000)
    ]
    big = plan(*frontends)
    start = time.perf_counter()
    full = env.lb.sync(big)
    full_s = time.perf_counter() - start
    start = time.perf_counter()
    noop = env.lb.sync(big)
    noop_s = time.perf_counter() - start
    start = time.perf_counter()
    resync = env.lb.sync(big, full=True)
    resync_s = time.perf_counter() - start
    changed = list(frontends)
    changed[500] = Frontend(
        "default/s500", "", CLUSTER_IP, frontends[500].ip, 80, "TCP", backends("b1", "b2")
    )
    start = time.perf_counter()
    one = env.lb.sync(plan(*changed))
    one_s = time.perf_counter() - start
    assert (
        full["services_added"] == 1000 and full["backends_written"] == 3000 and full["services_deleted"] == 1
    )
    assert (
        noop["backends_written"] == 0
        and resync["backends_written"] == 0
        and one["services_updated"] == 1
        and one["backends_deleted"] == 1
    )
    with capsys.disabled():
        print(
            f"\nconnect() median over 500: VIP {via_vip['median_us']:.1f} us (p90 {via_vip['p90_us']:.1f}), "
            f"backend IP {direct['median_us']:.1f} us (p90 {direct['p90_us']:.1f})"
            f"\nmap sync 1000 services x 3 backends: full {full_s * 1000:.0f} ms, "
            f"unchanged {noop_s * 1000:.0f} ms, unchanged re-reading the maps {resync_s * 1000:.0f} ms, "
            f"one service changed {one_s * 1000:.0f} ms"
        )
