"""``podnet``: the command line. kubectl-like resource verbs plus the diagnostics of both worlds.

This module only builds the argument parser and maps errors to exit codes; each verb lives in its
own module and is imported when it runs, so ``podnet version`` does not pay for YAML or etcd.

Exit codes: 0 ok; a :class:`podnet.errors.PodnetError` exits with its ``exit_code`` (2 invalid
input, 3 not found, 4 already exists, 5 conflict, 6 datastore, 7 IPAM, 1 other) after printing
one ``error:`` line and, when there is one, one ``hint:`` line; 70 for a bug (with a traceback
when ``PODNET_DEBUG=1``); 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

# verb -> (module, help). Each module has ``add_arguments(parser)`` and ``run(args) -> int``.
COMMANDS: dict[str, tuple[str, str]] = {
    "apply": ("podnet.cli.cmd_apply", "create or update resources from files (-f FILE|DIR|-)"),
    "get": ("podnet.cli.cmd_get", "show resources (-o yaml|json|wide)"),
    "delete": ("podnet.cli.cmd_delete", "delete resources by kind and name, or from files"),
    "patch": ("podnet.cli.cmd_patch", "merge-patch a resource (-p JSON|YAML)"),
    "ipam": ("podnet.cli.cmd_ipam", "IP address management: show, check, release, gc"),
    "lab": ("podnet.cli.cmd_lab", "an emulated cluster in network namespaces (up, down, probe, exec)"),
    "node": ("podnet.cli.cmd_node", "BGP status of a node's BIRD, like calicoctl node status"),
    "bpf": (
        "podnet.cli.cmd_bpf",
        "BPF programs and maps (prog, lb, endpoint, ipcache, policy, ct), like cilium bpf",
    ),
    "capture": ("podnet.cli.cmd_capture", "tcpdump on a lab node's uplink or tunnel device"),
    "policy": ("podnet.cli.cmd_policy", "NetworkPolicy: explain a verdict, test the lab against explain"),
    "identity": ("podnet.cli.cmd_identity", "security identities (list, get), like cilium-dbg identity list"),
    "service": ("podnet.cli.cmd_service", "services and their backends (list), like cilium service list"),
    "monitor": ("podnet.cli.cmd_monitor", "policy drops on lab nodes, like cilium monitor -t drop"),
    "observe": (
        "podnet.cli.cmd_observe",
        "flows of every lab node and their service map, like hubble observe",
    ),
    "metrics": (
        "podnet.cli.cmd_metrics",
        "the lab's Prometheus (lab up --prometheus): query PromQL, compare nodes' figures at two times",
    ),
    "bench": ("podnet.cli.cmd_bench", "the seed article's benchmark table, measured on this machine's lab"),
    "etcd": ("podnet.cli.cmd_etcd", "run a private etcd server for trying podnet out"),
    "demo": ("podnet.cli.cmd_demo", "start an etcd, apply example resources, allocate addresses"),
    "version": ("podnet.cli.cmd_version", "print the podnet version"),
}


class _Parser(argparse.ArgumentParser):
    """Lets options and names mix, as kubectl does (``get netpol -n np NAME``): a verb without
    sub-commands parses its arguments intermixed (argparse would stop at the first option)."""

    _intermixing = False

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[no-untyped-def]
        simple = self._subparsers is None and all(
            a.nargs not in (argparse.REMAINDER, argparse.PARSER) for a in self._actions
        )
        if not simple or self._intermixing:
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="podnet",
        description="podnet: Kubernetes pod networking, Calico style or Cilium style.",
    )
    parser.add_argument(
        "--etcd-endpoints",
        metavar="URLS",
        default=None,
        help="comma-separated etcd endpoints (default: $PODNET_ETCD_ENDPOINTS or http://127.0.0.1:2379)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for verb, (module, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(verb, help=help_text, description=help_text)
        sub_parser.set_defaults(_module=module)
        _load(module).add_arguments(sub_parser)
    return parser


def _load(module: str):
    return importlib.import_module(module)


def _argv_command(argv: Sequence[str]) -> str | None:
    for arg in argv:
        if not arg.startswith("-"):
            return arg
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from podnet.errors import PodnetError

    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        return int(_load(args._module).run(args) or 0)
    except PodnetError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # a bug: say so plainly
        if os.environ.get("PODNET_DEBUG"):
            raise
        print(f"error: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        print("hint: run again with PODNET_DEBUG=1 for a traceback, and report it", file=sys.stderr)
        return 70


if __name__ == "__main__":
    sys.exit(main())
