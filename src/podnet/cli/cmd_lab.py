"""``podnet lab``: an emulated cluster in network namespaces on this machine (needs root).

podnet lab up [--nodes N] [--profile calico|cilium] [--encapsulation none|vxlan|ipip|ipip-crosssubnet]
              [--subnets 1|2] [--prometheus] [--etcd-members 1|3|5]
podnet lab down | clean | status                status: every process; each etcd member's health, the leader
podnet lab wait [--timeout S]                  until every pod is Running
podnet lab exec NS/POD -- CMD...               run a command inside a pod (its netns and cgroup)
podnet lab probe NS/POD|ext|NODE  NS/POD|svc/NS/NAME|[node/]NODE|IP  PORT/PROTO|ICMP [--timeout S]
                 [--http METHOD PATH [-H 'Name: value']...] [-o json]
podnet lab probe NS/POD --dns NAME [-o json]   resolve through the pod's resolver (cluster DNS)
                                               exit 0 if it got through (--http: a 2xx answer), 1 if
                                               not; -o json: {"ok", "detail", "http_status", "latency_ms"}
podnet lab probe --matrix PORT/PROTO [-o json] [--timeout S]
podnet lab chaos SCENARIO [--node N] [--seconds S] [--policies N] [--version REF] [-o json]
                 kill-agent | kill-all-agents | agent-upgrade | agent-downgrade-upgrade |
                 etcd-outage | etcd-blackhole |
                 kill-agent-mid-policy-sync | bird-restart      (with the traffic witness)
                 etcd-member-kill | etcd-leader-kill | etcd-member-partition   (a lab with
                 --etcd-members 3: writes, a policy and IPAM under fire while a member is away;
                 [--pods N] for the IPAM part, [--member NAME] which one)
podnet lab chaos kill-agent-mid-cni [--node N] [--pods 30] [--outage-seconds S]
podnet lab chaos ipam-under-fire [--pods 1000] [--fault kill:NODE|kill-all|etcd:S|kill-in-outage:NODE:S]...
"""

from __future__ import annotations

import argparse
import contextlib
import sys

from podnet.errors import PodnetError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="lab_command", metavar="SUBCOMMAND")
    sub.required = True
    up = sub.add_parser("up", help="bring up a lab cluster")
    up.add_argument("--nodes", type=int, default=3)
    up.add_argument("--profile", choices=["calico", "cilium"], default="calico")
    up.add_argument("--encapsulation", choices=["none", "vxlan", "ipip", "ipip-crosssubnet"], default="none")
    up.add_argument("--subnets", type=int, choices=[1, 2], default=1)
    up.add_argument(
        "--bgp",
        action="store_true",
        help="calico profile: BIRD on every node distributes the pod blocks (node-to-node mesh)",
    )
    up.add_argument(
        "--no-dns",
        dest="dns",
        action="store_false",
        help="no cluster DNS (kube-system/kube-dns) and no test zone *.example.test on ext",
    )
    up.add_argument(
        "--no-flows",
        dest="flows",
        action="store_false",
        help="no flow record per new connection (ClusterConfiguration flows: false); drops still are",
    )
    up.add_argument(
        "--prometheus",
        action="store_true",
        help="a Prometheus (Debian's) in its own namespace scraping every agent every 5 s; "
        "query it with podnet metrics",
    )
    up.add_argument(
        "--etcd-members",
        type=int,
        choices=[1, 3, 5],
        default=1,
        help="etcd as a cluster of this many members, each in its own namespace (default 1)",
    )
    sub.add_parser("down", help="remove exactly what the lab created")
    sub.add_parser("clean", help="remove leftovers of a lab that crashed (by name prefix)")
    sub.add_parser("status", help="what the lab runs")
    wait = sub.add_parser("wait", help="wait until every pod is Running")
    wait.add_argument("--timeout", type=float, default=60.0)
    exec_ = sub.add_parser("exec", help="run a command in a pod")
    exec_.add_argument("pod", metavar="NS/POD")
    exec_.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD")
    probe = sub.add_parser("probe", help="connect from one pod to another (or all pairs with --matrix)")
    probe.add_argument("args", nargs="+", metavar="NS/POD NS/POD PORT/PROTO | --matrix PORT/PROTO")
    probe.add_argument("--matrix", action="store_true")
    probe.add_argument("--timeout", type=float, default=1.0)
    probe.add_argument("-o", "--output", choices=["table", "json"], default="table")
    probe.add_argument(
        "--http", nargs=2, metavar=("METHOD", "PATH"), help="an HTTP request: exit 0 on a 2xx answer only"
    )
    probe.add_argument(
        "-H", "--header", action="append", default=[], metavar="'Name: value'", help="with --http, repeatable"
    )
    probe.add_argument(
        "--dns",
        metavar="NAME",
        help="resolve NAME through SRC's resolver instead (podnet lab probe SRC --dns NAME)",
    )
    from podnet.lab import chaos as witnessed
    from podnet.lab import etcd_chaos, pod_churn

    chaos = sub.add_parser("chaos", help="a fault scenario on the lab (kill-agent, ipam-under-fire, ...)")
    chaos.add_argument(
        "scenario", choices=[*witnessed.SCENARIOS, *pod_churn.SCENARIOS, *etcd_chaos.SCENARIOS]
    )
    chaos.add_argument("--node", help="kill-agent: the node (default: node-2)")
    chaos.add_argument(
        "--member", help="etcd-member-kill, etcd-member-partition: the member (default: a follower)"
    )
    chaos.add_argument(
        "--seconds", type=float, default=10.0, help="etcd-outage, etcd-blackhole: how long etcd is away"
    )
    chaos.add_argument("--policies", type=int, default=300, help="kill-agent-mid-policy-sync: batch size")
    chaos.add_argument(
        "--version",
        default=witnessed.PREVIOUS_VERSION,
        help="agent-downgrade-upgrade: the other version (a git commit of this checkout)",
    )
    chaos.add_argument(
        "--pods", type=int, help="kill-agent-mid-cni (default 30), ipam-under-fire (1000), etcd-* (60)"
    )
    chaos.add_argument(
        "--outage-seconds",
        type=float,
        default=0.0,
        help="kill-agent-mid-cni: the last kill inside an etcd outage this long",
    )
    chaos.add_argument(
        "--fault", action="append", help=f"ipam-under-fire, repeatable: {pod_churn.FAULT_HINT}"
    )
    chaos.add_argument("-o", "--output", choices=["text", "json"], default="text")


def run(args: argparse.Namespace) -> int:
    return {
        "up": _up,
        "down": _down,
        "clean": _clean,
        "status": _status,
        "wait": _wait,
        "exec": _exec,
        "probe": _probe,
        "chaos": _chaos,
    }[args.lab_command](args)


def _up(args) -> int:
    from podnet.lab.cluster import up
    from podnet.lab.topology import LabSpec

    info = up(
        LabSpec(
            nodes=args.nodes,
            subnets=args.subnets,
            profile=args.profile,
            encapsulation=args.encapsulation,
            bgp=args.bgp,
            dns=args.dns,
            flows=args.flows,
            prometheus=args.prometheus,
            etcd_members=args.etcd_members,
        )
    )
    topo = info.topology
    bgp = ", BGP mesh" if args.bgp else ""
    print(
        f"lab up in {info.seconds:.1f}s: {len(topo.nodes)} nodes, profile {args.profile}, "
        f"encapsulation {args.encapsulation}, {args.subnets} subnet(s){bgp}"
    )
    for host in topo.nodes:
        print(f"  {host.name:10} netns {host.netns:14} {host.attachments[0].address}")
    for host in topo.etcd_members:
        print(f"  {host.name:10} netns {host.netns:14} http://{host.ip}:{topo.etcd_client_port}")
    print(f"  the CLI reaches etcd at {info.etcd_endpoint}")
    if topo.prometheus is not None:
        print(
            f"  prometheus http://{topo.prometheus.ip}:9090 in netns {topo.prometheus.netns}; the CLI "
            f"reaches it at {info.prometheus_endpoint} (podnet metrics query 'up')"
        )
    print("apply pods with `podnet apply -f FILE`; `podnet lab down` removes everything")
    return 0


def _down(args) -> int:
    from podnet.lab.cluster import teardown

    report = teardown()
    print("\n".join(report.lines()))
    return 0 if report.ok else 1


def _clean(args) -> int:
    from podnet.lab.cleanup import clean
    from podnet.lab.cluster import lab_names

    report = clean(lab_names())
    print("\n".join(report.lines()))
    return 0 if report.ok else 1


def _status(args) -> int:
    from podnet.lab.cluster import lab_names
    from podnet.lab.netns import proc_alive
    from podnet.lab.state import LabState

    state = LabState(lab_names().state_dir)
    if not state.exists():
        print("no lab is up")
        return 1
    meta = state.meta()
    print(f"etcd (for the CLI): {meta.get('etcd_endpoint')}")
    if meta.get("prometheus_endpoint"):
        print(f"prometheus (for the CLI): {meta['prometheus_endpoint']}")
    for proc in state.processes():
        alive = "running" if proc_alive(proc.pid, proc.start_time) else "DEAD"
        print(f"  {proc.name:28} pid {proc.pid:<8} {alive:8} {proc.netns or '(root netns)'}")
    _print_etcd(lab_names())
    _print_agents(state)
    return 0


def _print_etcd(names) -> None:
    """Each etcd member: its health (it answered its status, from inside its namespace), the
    leader it knows, its raft term and revision."""
    from podnet.datastore.etcd import MemberStatus
    from podnet.lab import etcd_cluster

    found = etcd_cluster.statuses(names)
    leader = etcd_cluster.leader_name({k: v for k, v in found.items() if isinstance(v, MemberStatus)})
    print(f"etcd members ({len(found)}; leader: {leader or 'NONE agreed'}):")
    for m in etcd_cluster.members(names):
        s = found[m.name]
        if isinstance(s, MemberStatus):
            role = "leader" if s.is_leader else ("follower" if s.leader else "NO LEADER")
            print(
                f"  {m.name:10} {m.endpoint:26} healthy    {role:9} id {s.member_id} term {s.raft_term} "
                f"revision {s.revision}"
            )
        else:
            print(f"  {m.name:10} {m.endpoint:26} UNHEALTHY  {s.message}")


def _print_agents(state) -> None:
    """The kubelet's supervision of each node's agent: state, restarts, last exit, back-off."""
    from podnet.cli.cmd_monitor import _natural
    from podnet.lab import supervisor

    agents = sorted(supervisor.agent_status(state), key=lambda a: _natural(a.node))
    if not agents:
        return
    print(
        f"agents (run by the lab kubelet; back-off {supervisor.BACKOFF_BASE:g}s doubling to "
        f"{supervisor.BACKOFF_CAP:g}s, reset after {supervisor.BACKOFF_RESET:g}s running):"
    )
    if not supervisor.supervised(state, agents[0].node):
        print("  the kubelet is not running: nothing restarts an agent that exits")
    rows = [("NODE", "STATE", "RESTARTS", "LAST EXIT", "BACK-OFF")]
    for a in agents:
        what = f"back-off {a.next_start_in:.1f}s" if a.next_start_in is not None else a.state
        last = f"{a.last_exit}, {a.exited_ago:.0f}s ago" if a.last_exit and a.exited_ago is not None else "-"
        rows.append((a.node, what, str(a.restarts), last, f"{a.backoff:g}s"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1])


def _pods(args):
    from podnet.cli.context import resource_store
    from podnet.model import lookup

    return resource_store(args).list(lookup("pods"))


def _find_pod(args, ref: str):
    namespace, _, name = ref.rpartition("/")
    namespace = namespace or "default"
    for pod in _pods(args):
        if (pod.metadata.namespace, pod.metadata.name) == (namespace, name):
            return pod
    raise PodnetError(f'pod "{namespace}/{name}" not found', hint="podnet get pods -A")


def _netns_of(pod) -> str:
    from podnet.lab.cluster import pod_netns

    return pod_netns(pod)


def _wait(args) -> int:
    import time

    deadline = time.monotonic() + args.timeout
    while True:
        pods = _pods(args)
        pending = [
            f"{p.metadata.namespace}/{p.metadata.name}"
            for p in pods
            if not (p.status and p.status.phase == "Running")
        ]
        if not pending:
            print(f"{len(pods)} pods Running")
            return 0
        if time.monotonic() > deadline:
            raise PodnetError(
                f"{len(pending)} pods not Running after {args.timeout:g}s: {', '.join(pending[:10])}",
                hint="podnet get pods -A -o wide; logs under /run/podnet-lab/",
            )
        time.sleep(0.1)


def _exec(args) -> int:
    """Run CMD in the pod: joins the pod's cgroup first (``ip netns exec`` remounts /sys), then its
    network namespace; stdin/stdout/stderr are the caller's; the exit code is CMD's."""
    import os
    import subprocess

    from podnet.lab.netns import IP, join_cgroup

    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise PodnetError("no command given", hint="podnet lab exec NS/POD -- CMD ARGS...")
    pod = _find_pod(args, args.pod)
    from podnet.lab.cluster import lab_names

    names = lab_names()
    cgroup = names.pod_cgroup(pod.spec.node_name, pod.metadata.uid) if pod.metadata.uid else None
    cgroup = cgroup if cgroup and os.path.isdir(cgroup) else None
    return subprocess.call([IP, "netns", "exec", _netns_of(pod), *cmd], preexec_fn=join_cgroup(cgroup))


def _probe(args) -> int:
    import json

    from podnet.cli.context import parse_port
    from podnet.lab.probe import HttpProbe, probe_all, probe_in_pod, render_matrix, truth_table

    if args.matrix:
        if len(args.args) != 1:
            raise PodnetError("--matrix takes one PORT/PROTO", hint="podnet lab probe --matrix 80/TCP")
        port, proto = parse_port(args.args[0])
        pods = [  # the workloads: kube-system's pods (the cluster DNS) serve the cluster, not the probe
            p for p in _pods(args) if p.status and p.status.pod_ip and p.metadata.namespace != "kube-system"
        ]
        sources = {f"{p.metadata.namespace}/{p.metadata.name}": _netns_of(p) for p in pods}
        targets = {f"{p.metadata.namespace}/{p.metadata.name}": p.status.pod_ip for p in pods}
        table = truth_table(probe_all(sources, targets, port, proto, args.timeout))
        if args.output == "json":
            print(json.dumps({"port": port, "protocol": proto, "results": table}, indent=2))
        else:
            print(render_matrix(table))
        return 0 if all(all(row.values()) for row in table.values()) else 1
    if args.dns:
        return _probe_dns(args)
    if len(args.args) != 3:
        hint = "podnet lab probe ns/a ns/b 80/TCP (DST: NS/POD, svc/NS/NAME, node/NAME or an IP; ICMP)"
        raise PodnetError("probe takes SRC DST PORT/PROTO", hint=hint)
    address = _destination(args, args.args[1])
    if args.args[2].upper() == "ICMP":
        port, proto = 0, "ICMP"
    else:
        port, proto = parse_port(args.args[2])
    http = None
    if args.http:
        if proto != "TCP":
            raise PodnetError("--http needs a TCP port", hint="podnet lab probe a b 80/TCP --http GET /")
        headers = []
        for text in args.header:
            name, colon, value = text.partition(":")
            if not colon or not name.strip():
                raise PodnetError(f"bad header {text!r}", hint="-H 'Name: value'")
            headers.append((name.strip(), value.strip()))
        http = HttpProbe(args.http[0].upper(), args.http[1], tuple(headers))
    netns, cgroup = _source(args, args.args[0])
    result = probe_in_pod(netns, cgroup, address, port, proto, 1, args.timeout, http)[0]
    if args.output == "json":
        print(
            json.dumps(
                {
                    "ok": result.ok,
                    "detail": result.detail,
                    "http_status": result.http_status,
                    "latency_ms": round(result.elapsed * 1000, 3),
                }
            )
        )
    else:
        what = "ICMP" if proto == "ICMP" else f"{port}/{proto}"
        print(
            f"{args.args[0]} -> {args.args[1]} ({address} {what}): "
            f"{'ok' if result.ok else 'FAILED'} {result.detail} ({result.elapsed * 1000:.1f} ms)"
        )
    return 0 if result.ok else 1


def _probe_dns(args) -> int:
    """``podnet lab probe SRC --dns NAME``: exit 0 if NAME has addresses; -o json adds them."""
    import json

    from podnet.lab.probe import dns_in_pod

    if len(args.args) != 1:
        raise PodnetError("--dns takes only the source", hint="podnet lab probe shop/web --dns api.shop")
    netns, cgroup = _source(args, args.args[0])
    result = dns_in_pod(netns, cgroup, args.dns, args.timeout)
    addresses = result.answer.split(",") if result.answer else []
    if args.output == "json":
        latency = round(result.elapsed * 1000, 3)
        doc = {"ok": result.ok, "detail": result.detail, "http_status": None, "latency_ms": latency}
        print(json.dumps({**doc, "addresses": addresses}))
    else:
        print(
            f"{args.args[0]} resolves {args.dns}: {'ok' if result.ok else 'FAILED'} {result.detail} "
            f"({result.elapsed * 1000:.1f} ms)"
        )
    return 0 if result.ok else 1


def _source(args, ref: str) -> tuple[str, str | None]:
    """Where a probe starts: a pod (its netns, after joining its cgroup, as its own processes do),
    ``ext`` (the lab's client outside the cluster) or a node name (its netns)."""
    from podnet.lab.cluster import lab_names
    from podnet.lab.state import LabState

    names = lab_names()
    if ref == "ext":
        return names.ext_ns, None
    if ref in (LabState(names.state_dir).meta().get("nodes") or {}):
        return names.node_ns(ref), None
    pod = _find_pod(args, ref)
    uid = pod.metadata.uid
    return _netns_of(pod), names.pod_cgroup(pod.spec.node_name, uid) if uid and pod.spec.node_name else None


def _destination(args, ref: str) -> str:
    """The address to probe: a pod's, a service's ClusterIP (``svc/NS/NAME``), a lab node's, or an IP."""
    import ipaddress

    from podnet.cli.context import resource_store
    from podnet.model import lookup

    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(ref))
    from podnet.lab.cluster import lab_names
    from podnet.lab.state import LabState

    nodes = LabState(lab_names().state_dir).meta().get("nodes") or {}
    if ref in nodes or ref.removeprefix("node/") in nodes:
        return nodes[ref.removeprefix("node/")]["ip"]
    if ref.startswith("svc/"):
        namespace, _, name = ref.removeprefix("svc/").rpartition("/")
        service = resource_store(args).get(lookup("services"), name, namespace or "default")
        if not service.spec.cluster_ip or service.spec.cluster_ip == "None":
            raise PodnetError(f"service {ref} has no ClusterIP", hint="headless services are not probed")
        return service.spec.cluster_ip
    dst = _find_pod(args, ref)
    if not (dst.status and dst.status.pod_ip):
        raise PodnetError(f"{ref} has no IP yet", hint="podnet lab wait")
    return dst.status.pod_ip


def _chaos(args) -> int:
    """Run a fault scenario on the lab that is up; exit 1 (each failure printed) if its promise
    broke: a flow interrupted, podnet's kernel state changed, a policy late or incomplete."""
    import json

    from podnet.cli.context import resource_store
    from podnet.lab import chaos, etcd_chaos, pod_churn
    from podnet.lab.cluster import lab_names

    lab = chaos.ChaosLab(lab_names(), resource_store(args))
    if args.scenario in etcd_chaos.SCENARIOS:
        report = etcd_chaos.run_scenario(lab, args.scenario, args.member, pods=args.pods or 60)
        module = etcd_chaos
    elif args.scenario in pod_churn.SCENARIOS:
        report = pod_churn.run_scenario(
            lab, args.scenario, args.node, args.pods, args.outage_seconds, args.fault
        )
        module = pod_churn
    else:
        report = chaos.run_scenario(
            lab, args.scenario, args.node, args.seconds, policies=args.policies, version=args.version
        )
        module = chaos  # type: ignore[assignment]
    print(json.dumps(report, indent=2, default=str) if args.output == "json" else module.render(report))
    failed = module.problems(report)
    for line in failed:
        print(f"FAILED: {line}", file=sys.stderr)
    return 1 if failed else 0
