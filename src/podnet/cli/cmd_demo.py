"""``podnet demo``: the README's main job, in two parts.

1. Resources and IPAM: start a private etcd, apply the examples, show validation at work (the seed
   article's IPPool snippet), patch the pool as the seed tunes it, allocate pod addresses through
   IPAM on three nodes, create a leak on purpose and let ``ipam check`` find it and ``ipam gc``
   collect it, then stop etcd and remove its data.
2. A lab cluster (root): ``podnet lab up`` (3 nodes, 1 subnet), apply ordinary Pod YAML, wait for
   Running, show the pods, and probe every pod from every pod over TCP and UDP (the connectivity
   matrix) and the flows of one connection as both nodes recorded them, then ``podnet lab down``
   (``--keep`` leaves the lab up to explore).

Every step is a real ``podnet`` command, printed before it runs, so the output doubles as a
tutorial. Exits non-zero if any step does not do what it should.
"""

from __future__ import annotations

import argparse
import os
import shlex
from importlib import resources as pkg_resources

from podnet.errors import PodnetError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keep", action="store_true", help="leave the lab cluster up at the end")
    parser.add_argument("--skip-lab", action="store_true", help="only part 1 (no root needed)")


def _step(title: str) -> None:
    import sys

    bold, plain = ("\033[1m", "\033[0m") if sys.stdout.isatty() else ("", "")
    print(f"\n{bold}== {title}{plain}", flush=True)


def _podnet(*argv: str, expect: int = 0) -> None:
    from podnet.cli.main import main

    print(f"$ podnet {shlex.join(argv)}", flush=True)
    code = main(list(argv))
    if code != expect:
        raise PodnetError(f"demo step `podnet {shlex.join(argv)}` exited {code}, expected {expect}")


def run(args: argparse.Namespace) -> int:
    resources_and_ipam()
    if args.skip_lab:
        pass
    elif os.geteuid() != 0:
        print("\n(part 2, the lab cluster, needs root: run as root to see pods talk across nodes)")
    else:
        lab_cluster(keep=args.keep)
    print("\ndemo finished: every step did what it should")
    return 0


def resources_and_ipam() -> None:
    import sys

    from podnet.datastore.etcd_server import EtcdServer

    examples = pkg_resources.files("podnet") / "examples"
    saved_env, saved_stderr = os.environ.get("PODNET_ETCD_ENDPOINTS"), sys.stderr
    with pkg_resources.as_file(examples) as folder:
        folder = str(folder)
        _step("part 1: start a private etcd (podnet's datastore)")
        with EtcdServer() as etcd:
            print(f"etcd {etcd.endpoint}, data in {etcd.data_dir}")
            os.environ["PODNET_ETCD_ENDPOINTS"] = etcd.endpoint
            sys.stderr = sys.stdout  # keep errors in order with the rest of the story
            try:
                _story(folder)
            finally:
                sys.stderr = saved_stderr
                if saved_env is None:
                    os.environ.pop("PODNET_ETCD_ENDPOINTS", None)
                else:
                    os.environ["PODNET_ETCD_ENDPOINTS"] = saved_env
            _step("stop etcd and remove its data")


def _story(folder: str) -> None:
    _step("the seed article's IPPool snippet, as printed, is refused with what to fix")
    _podnet("apply", "-f", f"{folder}/seed-ippool-as-written.yaml.txt", expect=2)

    _step("apply the example cluster: nodes, namespaces, pool, BGP, policies, pods")
    _podnet("apply", "-f", folder)
    _podnet("get", "nodes", "-o", "wide")
    _podnet("get", "ippools", "-o", "wide")

    _step("tune the pool as the seed does (IPIP only across subnets, NAT outgoing)")
    _podnet(
        "patch",
        "ippool",
        "default-ipv4-ippool",
        "-p",
        '{"spec": {"ipipMode": "CrossSubnet", "natOutgoing": true}}',
    )
    _podnet("get", "ippool", "default-ipv4-ippool", "-o", "yaml")

    _step("allocate pod addresses as the CNI plugin does: one per pod, from its node's block")
    pods = [("shop/web-1", "node-1"), ("shop/frontend-1", "node-2"), ("shop/sensitive-api-1", "node-3")]
    for i, (pod, node) in enumerate(pods, 1):
        _podnet("ipam", "assign", "--node", node, "--pod", pod, "--handle", f"podnet.demo{i}.eth0")
    _podnet("ipam", "show", "--show-blocks")

    _step("leak an address on purpose (its pod does not exist); check finds it, gc collects it")
    _podnet(
        "ipam", "assign", "--node", "node-1", "--pod", "shop/deleted-pod", "--handle", "podnet.leaked.eth0"
    )
    _podnet("ipam", "check", expect=1)
    _podnet("ipam", "gc", "--interval", "0.5")
    _podnet("ipam", "check")


def lab_cluster(keep: bool) -> None:
    from podnet.lab.cluster import running_endpoint

    examples = pkg_resources.files("podnet") / "examples" / "lab"
    with pkg_resources.as_file(examples) as folder:
        _step("part 2: a 3-node lab cluster in network namespaces (etcd, an agent per node, a kubelet)")
        if running_endpoint():
            print("a lab from an earlier run is up: removing it first")
            _podnet("lab", "down")
        _podnet("lab", "up", "--nodes", "3")
        try:
            _step("ordinary Pod YAML: the kubelet creates each pod's netns and calls podnet-cni")
            _podnet("apply", "-f", f"{folder}/pods.yaml")
            _podnet("lab", "wait", "--timeout", "60")
            _podnet("get", "pods", "-A", "-o", "wide")
            _step("every pod probes every pod, across nodes: TCP, then UDP")
            _podnet("lab", "probe", "--matrix", "8080/TCP")
            _podnet("lab", "probe", "--matrix", "5353/UDP")
            _step("one pod to one pod, and a look inside a pod")
            _podnet("lab", "probe", "demo/echo-1", "demo/echo-5", "8080/TCP")
            _podnet("lab", "exec", "demo/echo-1", "--", "ip", "-4", "-brief", "address", "show", "eth0")
            _podnet("lab", "exec", "demo/echo-1", "--", "ip", "route")
            _step("the flows every node recorded of that last connection, merged by time (hubble observe)")
            _podnet("observe", "--from-pod", "demo/echo-1", "--to-pod", "demo/echo-5", "--last", "2")
        finally:
            if not keep:
                _step("remove the lab: namespaces, processes, cgroups, files")
                _podnet("lab", "down")
    if keep:
        print(
            "\nthe lab is still up: try `.venv/bin/podnet get pods -A -o wide` or "
            "`.venv/bin/podnet lab exec demo/echo-1 -- ip route`;\n"
            "`.venv/bin/podnet lab down` removes it"
        )
