"""``podnet demo``: the README's main job. Starts a private etcd, applies the examples, shows
validation at work (the seed article's IPPool snippet), patches the pool as the seed tunes it,
allocates pod addresses through IPAM on three nodes, creates a leak on purpose and lets
``ipam check`` find it and ``ipam gc`` collect it, then stops etcd and removes its data.

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
    parser.add_argument("--keep", action="store_true", help="leave etcd running at the end (Ctrl-C stops it)")


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
    import sys
    import time

    from podnet.datastore.etcd_server import EtcdServer

    examples = pkg_resources.files("podnet") / "examples"
    with pkg_resources.as_file(examples) as folder:
        folder = str(folder)
        _step("start a private etcd (podnet's datastore)")
        with EtcdServer() as etcd:
            print(f"etcd {etcd.endpoint}, data in {etcd.data_dir}")
            os.environ["PODNET_ETCD_ENDPOINTS"] = etcd.endpoint
            sys.stderr = sys.stdout  # keep errors in order with the rest of the story

            _step("the seed article's IPPool snippet, as printed, is refused with what to fix")
            _podnet("apply", "-f", f"{folder}/seed-ippool-as-written.yaml.txt", expect=2)

            _step("apply the example cluster: nodes, namespaces, pool, BGP, policies, pods")
            _podnet("apply", "-f", folder)
            _podnet("get", "nodes", "-o", "wide")
            _podnet("get", "pods", "-A", "-o", "wide")
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

            _step("allocate pod addresses as the CNI plugin will: one per pod, from its node's block")
            pods = [
                ("shop/web-1", "node-1"),
                ("shop/frontend-1", "node-2"),
                ("shop/sensitive-api-1", "node-3"),
            ]
            for i, (pod, node) in enumerate(pods, 1):
                _podnet("ipam", "assign", "--node", node, "--pod", pod, "--handle", f"podnet.demo{i}.eth0")
            _podnet("ipam", "show", "--show-blocks")

            _step("leak an address on purpose (its pod does not exist); check finds it, gc collects it")
            _podnet(
                "ipam",
                "assign",
                "--node",
                "node-1",
                "--pod",
                "shop/deleted-pod",
                "--handle",
                "podnet.leaked.eth0",
            )
            _podnet("ipam", "check", expect=1)
            _podnet("ipam", "gc", "--interval", "0.5")
            _podnet("ipam", "check")

            if args.keep:
                print(
                    f"\netcd keeps running at {etcd.endpoint}; try: PODNET_ETCD_ENDPOINTS={etcd.endpoint} "
                    ".venv/bin/podnet get pods -A   (Ctrl-C to stop)"
                )
                try:
                    while True:
                        time.sleep(3600)
                except KeyboardInterrupt:
                    pass
            _step("stop etcd and remove its data")
    print("demo finished: every step did what it should")
    return 0
