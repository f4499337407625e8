"""``podnet-agent``: the per-node daemon (see :mod:`podnet.agent.daemon`)."""

from __future__ import annotations

import argparse
import socket
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from podnet.cni.agent_api import DEFAULT_SOCKET

    p = argparse.ArgumentParser(prog="podnet-agent", description="podnet node agent")
    p.add_argument("--node", default=socket.gethostname(), help="this node's name (default: hostname)")
    p.add_argument("--etcd-endpoints", default=None, help="default: $PODNET_ETCD_ENDPOINTS")
    p.add_argument("--socket", default=DEFAULT_SOCKET, help=f"CNI API socket (default {DEFAULT_SOCKET})")
    p.add_argument("--metrics", default="127.0.0.1:9099", help="HOST:PORT for /metrics and /healthz, or off")
    p.add_argument("--uplink", default="eth0", help="the node's interface towards other nodes")
    p.add_argument("--state-dir", default="/var/lib/podnet", help="cache of compiled BPF objects")
    p.add_argument("--bpf-dir", default="/sys/fs/bpf/podnet", help="where BPF maps and programs are pinned")
    p.add_argument(
        "--cgroup",
        default=None,
        help="cgroup v2 directory of the pods, for eBPF socket load balancing (Cilium profile); "
        "default: none, services then go through nftables only",
    )
    p.add_argument("--refresh-seconds", type=float, default=60.0, help="periodic full resync")
    p.add_argument(
        "--flow-ring-size",
        type=int,
        default=4096,
        help="flows kept for podnet observe: new connections, and apart from them drops, verdicts and L7",
    )
    p.add_argument("--log-level", default="info")
    p.add_argument("--log-file", default=None)
    p.add_argument(
        "--tracemalloc",
        metavar="FILE",
        default=None,
        help="trace allocations; SIGUSR2 writes RSS and the top sites to FILE (default: $PODNET_TRACEMALLOC)",
    )
    p.add_argument("--lab-prefix", default=None, help=argparse.SUPPRESS)  # marks lab processes
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from podnet.agent import memtrace

    memtrace.install(args.tracemalloc)  # first: the imports below are traced too (when asked)
    from podnet.agent import log
    from podnet.agent.daemon import Agent, AgentConfig
    from podnet.errors import PodnetError

    log.setup(args.log_level, args.log_file)
    metrics_address = None
    if args.metrics != "off":
        host, _, port = args.metrics.rpartition(":")
        metrics_address = (host or "127.0.0.1", int(port))
    config = AgentConfig(
        args.node,
        args.etcd_endpoints,
        args.socket,
        metrics_address,
        args.uplink,
        args.refresh_seconds,
        args.state_dir,
        args.bpf_dir,
        args.cgroup,
        args.flow_ring_size,
    )
    try:
        Agent(config).run_forever()
    except PodnetError as exc:
        print(f"podnet-agent: {exc.message}" + (f" ({exc.hint})" if exc.hint else ""), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
