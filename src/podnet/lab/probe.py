"""Connectivity probes between lab namespaces, all at once from one process.

A socket belongs to the network namespace its creating thread was in, and stays there. So one
thread can visit every source namespace in turn (:func:`podnet.dataplane.netns.in_netns`), open a
non-blocking socket there, come back, and then drive all sockets with one ``selectors`` loop::

    for each source netns:  setns(src) → socket() + connect() (non-blocking) … → setns(back)
    one loop:               connect done? → read the answer (TCP) / wait for the reply (UDP)
                            every probe ends with an answer, an error or its own deadline

so a 9x9 matrix takes about one timeout (when some targets are black holes), not 81.

- TCP: ok when the connection is established *and* the server's answer (the pod name, see
  :mod:`podnet.lab.podserver`) arrives; "refused" comes back at once, a drop ends in a timeout.
- UDP: a datagram is sent (and re-sent every third of the timeout, ARP may eat the first one);
  ok when an answer comes back; an ICMP port unreachable shows as "refused".
- ICMP: an echo request over a raw socket (root), ok on the matching echo reply (ping without the
  ``ping`` binary); ``port`` is ignored.
- With ``expect``, the answer must equal it (the right pod answered, not just some pod).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import random
import resource
import selectors
import socket
import struct
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from podnet.dataplane.netns import in_netns, netns_exists

PROBE_PAYLOAD = b"probe\n"
UDP_RESENDS = 3  # UDP datagrams and ICMP echo requests are sent up to this many times
PROTOCOLS = ("TCP", "UDP", "ICMP")
_ICMP_ECHO_REPLY, _ICMP_UNREACH, _ICMP_ECHO = 0, 3, 8
#: Echo identifiers, new for every probe: a repeated ping with the identifier of an earlier allowed
#: one would match that one's conntrack entry (30 s) and never meet the policy again.
_IDENTS = itertools.count(random.randrange(1 << 16))


def icmp_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def icmp_echo(ident: int, seq: int, payload: bytes = PROBE_PAYLOAD) -> bytes:
    header = struct.pack("!BBHHH", _ICMP_ECHO, 0, 0, ident, seq)
    return struct.pack("!BBHHH", _ICMP_ECHO, 0, icmp_checksum(header + payload), ident, seq) + payload


def parse_icmp_reply(packet: bytes, ident: int) -> str | None:
    """From a raw IPv4 packet: "reply", "unreachable" (for our echo), or None (not ours)."""
    if len(packet) < 20:
        return None
    ihl = (packet[0] & 0x0F) * 4
    icmp = packet[ihl:]
    if len(icmp) < 8:
        return None
    kind = icmp[0]
    if kind == _ICMP_ECHO_REPLY and struct.unpack("!H", icmp[4:6])[0] == ident:
        return "reply"
    if kind == _ICMP_UNREACH and len(icmp) >= 8 + 20 + 8:  # quotes our IP header + 8 bytes
        inner = icmp[8:]
        inner_icmp = inner[(inner[0] & 0x0F) * 4 :]
        if inner_icmp[:1] == bytes([_ICMP_ECHO]) and struct.unpack("!H", inner_icmp[4:6])[0] == ident:
            return "unreachable"
    return None


@dataclass(frozen=True)
class Probe:
    src_netns: str | None  # None: the caller's namespace
    dst_ip: str
    port: int
    proto: str = "TCP"
    expect: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "proto", self.proto.upper())


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str
    elapsed: float
    answer: str | None = None
    http_status: int | None = None  # an HTTP probe's status (None: no answer)


class _Flight:
    __slots__ = (
        "buf",
        "connected",
        "deadline",
        "ident",
        "index",
        "next_send",
        "probe",
        "sends",
        "sock",
        "started",
    )

    def __init__(self, index: int, probe: Probe, sock: socket.socket, started: float, timeout: float) -> None:
        self.index, self.probe, self.sock, self.started = index, probe, sock, started
        self.deadline = started + timeout
        self.buf = b""
        self.connected = False
        self.sends = 0
        self.next_send = started
        self.ident = 0


def _describe(err: int) -> str:
    return {
        errno.ECONNREFUSED: "refused",
        errno.EHOSTUNREACH: "host unreachable",
        errno.ENETUNREACH: "network unreachable",
        errno.ECONNRESET: "reset",
        errno.ETIMEDOUT: "timed out",
    }.get(err, os.strerror(err))


def _finish(flight: _Flight, ok: bool, detail: str, now: float) -> ProbeResult:
    answer = None
    if ok:
        answer = flight.buf.decode(errors="replace").split("\n", 1)[0].strip()
        expect = flight.probe.expect
        if expect is not None and answer != expect:
            ok, detail = False, f"answered by {answer!r}, expected {expect!r}"
        else:
            detail = f"answered {answer!r}"
    return ProbeResult(ok, detail, round(now - flight.started, 6), answer)


def _raise_nofile(need: int) -> None:
    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < need + 64 and soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, need + 1024), hard))


def run_probes(probes: Sequence[Probe], timeout: float = 1.0) -> list[ProbeResult]:
    """Run every probe concurrently; results in the order of ``probes``."""
    _raise_nofile(len(probes))
    results: list[ProbeResult | None] = [None] * len(probes)
    sel = selectors.DefaultSelector()
    flights: dict[int, _Flight] = {}
    by_ns: dict[str | None, list[int]] = defaultdict(list)
    for i, p in enumerate(probes):
        if p.proto not in PROTOCOLS:
            results[i] = ProbeResult(False, f"protocol {p.proto} is not probed", 0.0)
        else:
            by_ns[p.src_netns].append(i)

    def done(flight: _Flight, ok: bool, detail: str, now: float) -> None:
        with contextlib.suppress(KeyError, ValueError):
            sel.unregister(flight.sock)
        flight.sock.close()
        flights.pop(flight.index, None)
        results[flight.index] = _finish(flight, ok, detail, now)

    def launch(i: int) -> None:
        p = probes[i]
        if p.proto == "ICMP":  # raw socket (root); connected, so it sees only its peer's packets
            sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        else:
            family = socket.AF_INET6 if ":" in p.dst_ip else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM if p.proto == "UDP" else socket.SOCK_STREAM)
        sock.setblocking(False)
        flight = _Flight(i, p, sock, time.monotonic(), timeout)
        flight.ident = next(_IDENTS) & 0xFFFF
        flights[i] = flight
        err = sock.connect_ex((p.dst_ip, 0 if p.proto == "ICMP" else p.port))
        if err not in (0, errno.EINPROGRESS):
            done(flight, False, _describe(err), time.monotonic())
        elif p.proto != "TCP":  # datagrams: "connected" at once, the loop sends
            flight.connected = True
            sel.register(sock, selectors.EVENT_READ, flight)
        else:
            sel.register(sock, selectors.EVENT_WRITE, flight)

    # 1. open every socket inside its source namespace (one setns there and back per namespace)
    for ns, indexes in by_ns.items():
        if ns is not None and not netns_exists(ns):
            for i in indexes:
                results[i] = ProbeResult(False, f"source netns {ns} does not exist", 0.0)
            continue
        with in_netns(ns):
            for i in indexes:
                try:
                    launch(i)
                except OSError as exc:  # e.g. out of file descriptors
                    results[i] = ProbeResult(False, f"cannot open a socket: {exc}", 0.0)

    # 2. drive them all
    while flights:
        now = time.monotonic()
        for flight in list(flights.values()):
            proto = flight.probe.proto
            if now >= flight.deadline:
                stage = "no answer" if flight.connected else "connect"
                done(flight, False, f"timeout after {timeout:g}s ({stage})", now)
            elif proto != "TCP" and now >= flight.next_send and flight.sends < UDP_RESENDS:
                try:
                    flight.sock.send(
                        icmp_echo(flight.ident, flight.sends) if proto == "ICMP" else PROBE_PAYLOAD
                    )
                except OSError as exc:
                    if exc.errno != errno.EAGAIN:  # e.g. ECONNREFUSED left by an earlier ICMP error
                        done(flight, False, _describe(exc.errno or 0), now)
                        continue
                flight.sends += 1
                flight.next_send = now + timeout / UDP_RESENDS
        if not flights:
            break
        wake = min(
            min(f.deadline for f in flights.values()),
            min(
                (f.next_send for f in flights.values() if f.sends < UDP_RESENDS and f.probe.proto != "TCP"),
                default=float("inf"),
            ),
        )
        for key, mask in sel.select(max(0.0, wake - time.monotonic())):
            flight = key.data
            if flight.index not in flights:
                continue
            now = time.monotonic()
            try:
                if not flight.connected and mask & selectors.EVENT_WRITE:
                    err = flight.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        done(flight, False, _describe(err), now)
                        continue
                    flight.connected = True
                    sel.modify(flight.sock, selectors.EVENT_READ, flight)
                elif mask & selectors.EVENT_READ:
                    data = flight.sock.recv(4096)
                    if flight.probe.proto == "ICMP":
                        verdict = parse_icmp_reply(data, flight.ident)
                        if verdict == "reply":
                            flight.buf = b"echo reply"
                            done(flight, True, "", now)
                        elif verdict == "unreachable":
                            done(flight, False, "unreachable (ICMP)", now)
                    elif flight.probe.proto == "UDP":
                        flight.buf = data
                        done(flight, True, "", now)
                    elif data:
                        flight.buf += data
                        if b"\n" in flight.buf or len(flight.buf) >= 4096:
                            done(flight, True, "", now)
                    elif flight.buf:
                        done(flight, True, "", now)
                    else:
                        done(flight, False, "connected, closed without an answer", now)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as exc:
                done(flight, False, _describe(exc.errno or 0), now)
    sel.close()
    return [r if r is not None else ProbeResult(False, "not run", 0.0) for r in results]


def probe(
    src_netns: str | None,
    dst_ip: str,
    port: int,
    proto: str = "TCP",
    timeout: float = 1.0,
    expect: str | None = None,
) -> ProbeResult:
    """One probe: TCP connect and read the answer, or UDP request and wait for the answer."""
    return run_probes([Probe(src_netns, dst_ip, port, proto, expect)], timeout)[0]


def probe_matrix(
    pairs: Sequence[tuple[str | None, str]],
    port: int,
    proto: str = "TCP",
    timeout: float = 1.0,
    expects: Sequence[str | None] | None = None,
) -> list[ProbeResult]:
    """Probe every ``(src_netns, dst_ip)`` pair concurrently; results in the order of ``pairs``."""
    expects = expects or [None] * len(pairs)
    return run_probes(
        [Probe(s, d, port, proto, e) for (s, d), e in zip(pairs, expects, strict=True)], timeout
    )


def probe_all(
    sources: Mapping[str, str | None],
    targets: Mapping[str, str],
    port: int,
    proto: str = "TCP",
    timeout: float = 1.0,
    expect_names: bool = False,
) -> dict[str, dict[str, ProbeResult]]:
    """Every source label (→ netns) to every target label (→ IP): ``{src: {dst: result}}``.

    With ``expect_names`` the answer must be the target's label (the podserver ``--name``).
    """
    keys = [(s, d) for s in sources for d in targets]
    results = probe_matrix(
        [(sources[s], targets[d]) for s, d in keys],
        port,
        proto,
        timeout,
        [d if expect_names else None for _, d in keys],
    )
    table: dict[str, dict[str, ProbeResult]] = {s: {} for s in sources}
    for (s, d), result in zip(keys, results, strict=True):
        table[s][d] = result
    return table


def truth_table(table: Mapping[str, Mapping[str, ProbeResult]]) -> dict[str, dict[str, bool]]:
    return {s: {d: r.ok for d, r in row.items()} for s, row in table.items()}


def render_matrix(table: Mapping[str, Mapping[str, bool | ProbeResult]]) -> str:
    """A text grid: rows are sources, columns targets, ``✓``/``✗``."""
    sources = list(table)
    targets = list(dict.fromkeys(d for row in table.values() for d in row))
    width = max([len(s) for s in sources] + [4])
    head = " " * width + "  " + "  ".join(f"{i + 1:>2}" for i in range(len(targets)))
    lines = [head]
    for s in sources:
        cells = []
        for d in targets:
            v = table[s].get(d)
            ok = v.ok if isinstance(v, ProbeResult) else v
            cells.append(" -" if v is None else (" ✓" if ok else " ✗"))
        lines.append(f"{s:<{width}}  " + "  ".join(cells))
    lines += [f"{i + 1:>{width + 4}} = {d}" for i, d in enumerate(targets)]
    return "\n".join(lines)


# ------------------------------------------------------------------------ probes from inside a pod


@dataclass(frozen=True)
class HttpProbe:
    """An HTTP request instead of a bare connection: ``method`` ``path`` with ``headers``."""

    method: str
    path: str
    headers: tuple[tuple[str, str], ...] = ()

    def args(self) -> list[str]:
        return ["--http", self.method, self.path, *(f"{k}: {v}" for k, v in self.headers)]


def http_request(
    dst_ip: str, port: int, request: HttpProbe, timeout: float, attempts: int = 2
) -> ProbeResult:
    """One HTTP/1.1 request from this process: ok on a 2xx answer; the status either way. The lab's
    pod server takes a client silent for 50 ms as a plain TCP probe and answers with its name: a
    request that came later than that (a starved machine) gets no HTTP answer, and is sent again
    on a new connection (``attempts`` in all)."""
    import http.client

    started = time.monotonic()
    conn = http.client.HTTPConnection(dst_ip, port, timeout=timeout)
    try:
        conn.request(request.method, request.path, headers=dict(request.headers))
        response = conn.getresponse()
        body = response.read(4096).decode("utf-8", "replace")
    except http.client.BadStatusLine as exc:
        if attempts > 1:
            return http_request(dst_ip, port, request, timeout, attempts - 1)
        return ProbeResult(False, f"not an HTTP answer: {exc}", time.monotonic() - started)
    except TimeoutError:
        return ProbeResult(False, f"timeout after {timeout:g}s", time.monotonic() - started)
    except OSError as exc:
        return ProbeResult(False, f"{type(exc).__name__}: {exc}", time.monotonic() - started)
    finally:
        conn.close()
    elapsed = time.monotonic() - started
    detail = f"HTTP {response.status} {response.reason}"
    return ProbeResult(200 <= response.status < 300, detail, elapsed, body.strip()[:200], response.status)


def probe_in_pod(
    netns: str,
    cgroup: str | None,
    dst_ip: str,
    port: int,
    proto: str = "TCP",
    count: int = 1,
    timeout: float = 1.0,
    http: HttpProbe | None = None,
) -> list[ProbeResult]:
    """``count`` concurrent probes from a process that joined the pod's ``cgroup`` first and then
    entered its ``netns`` — as the pod's own processes do, so cgroup eBPF programs (socket load
    balancing) see its sockets; a probe from a thread that only entered the netns would bypass them.
    With ``http``, each probe is that HTTP request (TCP) and reports its status."""
    import json
    import subprocess
    import sys

    from podnet.lab.netns import IP, join_cgroup

    cmd = [
        IP,
        "netns",
        "exec",
        netns,
        sys.executable,
        "-m",
        "podnet.lab.probe",
        dst_ip,
        str(port),
        proto,
        str(count),
        str(timeout),
        *(http.args() if http else []),
    ]
    out = subprocess.run(
        cmd, capture_output=True, text=True, preexec_fn=join_cgroup(cgroup), timeout=timeout * 3 + 30
    )
    if out.returncode != 0:
        raise OSError(f"probe in {netns} failed: {out.stderr.strip()[-500:]}")
    return [ProbeResult(**r) for r in json.loads(out.stdout)]


def dns_lookup(name: str, timeout: float) -> ProbeResult:
    """``name``'s A records through this process's resolver (``/etc/resolv.conf``: in a lab pod,
    the cluster DNS with the pod's search list and ndots): ok with at least one address; the
    answer is the addresses, comma-separated; the detail the outcome (NXDOMAIN, REFUSED, ...)."""
    import dns.exception
    import dns.resolver

    started = time.monotonic()
    try:
        resolver = dns.resolver.Resolver()
        answer = resolver.resolve(name, "A", search=True, lifetime=timeout)
        addresses = sorted(r.address for r in answer)
        return ProbeResult(
            True, f"{answer.qname} A {' '.join(addresses)}", time.monotonic() - started, ",".join(addresses)
        )
    except dns.resolver.NXDOMAIN:
        return ProbeResult(False, "NXDOMAIN", time.monotonic() - started)
    except dns.resolver.NoAnswer:
        return ProbeResult(False, "NOERROR, no A record", time.monotonic() - started)
    except dns.resolver.NoNameservers as exc:
        codes = sorted({str(err[3]) for err in exc.kwargs.get("errors", [])})  # e.g. REFUSED, SERVFAIL
        return ProbeResult(False, ", ".join(codes) or "no nameserver answered", time.monotonic() - started)
    except dns.exception.Timeout:
        return ProbeResult(False, f"timeout after {timeout:g}s", time.monotonic() - started)
    except (dns.exception.DNSException, OSError) as exc:
        return ProbeResult(False, f"{type(exc).__name__}: {exc}", time.monotonic() - started)


def dns_in_pod(netns: str, cgroup: str | None, name: str, timeout: float = 2.0) -> ProbeResult:
    """:func:`dns_lookup` in a process of the pod (its cgroup, then ``ip netns exec``, which puts
    the pod's resolv.conf in place)."""
    import json
    import subprocess
    import sys

    from podnet.lab.netns import IP, join_cgroup

    cmd = [IP, "netns", "exec", netns, sys.executable, "-m", "podnet.lab.probe", "--dns", name, str(timeout)]
    out = subprocess.run(
        cmd, capture_output=True, text=True, preexec_fn=join_cgroup(cgroup), timeout=timeout * 3 + 30
    )
    if out.returncode != 0:
        raise OSError(f"DNS probe in {netns} failed: {out.stderr.strip()[-500:]}")
    return ProbeResult(**json.loads(out.stdout)[0])


def _main(argv: Sequence[str]) -> int:
    """``python -m podnet.lab.probe DST PORT PROTO COUNT TIMEOUT [--http METHOD PATH [HEADER...]]``
    or ``... --dns NAME TIMEOUT``: JSON results on stdout."""
    import json
    from concurrent.futures import ThreadPoolExecutor
    from dataclasses import asdict

    if argv[:1] == ["--dns"]:
        print(json.dumps([asdict(dns_lookup(argv[1], float(argv[2])))]))
        return 0
    dst, port, proto, count, timeout = argv[:5]
    if argv[5:6] == ["--http"]:
        method, path, *lines = argv[6:]
        headers = tuple((k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines))
        request = HttpProbe(method, path, headers)
        with ThreadPoolExecutor(max_workers=int(count)) as pool:
            one = (dst, int(port), request, float(timeout))
            jobs = [pool.submit(http_request, *one) for _ in range(int(count))]
        results = [job.result() for job in jobs]
    else:
        results = run_probes([Probe(None, dst, int(port), proto)] * int(count), float(timeout))
    print(json.dumps([asdict(r) for r in results]))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(_main(sys.argv[1:]))
