"""``podnet bench``: the seed article's benchmark table, reproduced on this machine's lab.

    podnet bench [--profiles calico-ipip,calico-ipip-crosssubnet,calico-bgp,cilium-vxlan,cilium-direct]
                 [--repeats N] [--duration S] [--quick] [--out DIR]
                 [--skip-footprint] [--skip-control-plane] [--skip-flows]
    podnet bench --scale [--sections cni,...] [--quick] [--out DIR]

1. Data path (:func:`podnet.bench.datapath.run`): a lab per profile and the hand-built kernel
   baselines (direct, VXLAN, IPIP), every scenario ``--repeats`` times.
2. Footprint and control plane (:func:`podnet.bench.footprint.run`): agent (and BIRD) memory idle
   and loaded, CNI ADD/DEL latency, IPAM allocations/s, policy change -> kernel, route convergence
   after a node joins.
3. Flow records on vs off (:func:`podnet.bench.flows.run`): one iperf3 stream and new connections/s
   with ClusterConfiguration ``flows`` on and off, per style; records per connection, events lost.
4. ``<out>/bench.json`` (every raw sample, the summaries, the seed's figures), one PNG bar chart
   per metric, and the table in the seed's layout on stdout.

``--scale`` runs the scale sections instead (:mod:`podnet.bench.scale`: CNI under concurrency and
the others of issue 18), each figure beside its goal, raw samples in ``<out>/bench.json``.

Progress goes to stderr: a one-line bar redrawn in place on a terminal, plain lines otherwise.
``--quick`` (CI smoke) shortens every phase: 1 repeat of 2 s, small workloads, and one footprint lab
per style (Calico, Cilium) instead of one per profile.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import TextIO

from podnet.errors import PodnetError

# podnet.bench.datapath.PROFILES' names, spelled out so that building the parser imports no bench code
PROFILES = ("calico-ipip", "calico-ipip-crosssubnet", "calico-bgp", "cilium-vxlan", "cilium-direct")
DEFAULTS = {"repeats": 3, "duration": 10.0}  # the same as podnet.bench.datapath's
QUICK_DEFAULTS = {"repeats": 1, "duration": 2.0}


def _profiles(text: str) -> list[str]:
    chosen = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in chosen if p not in PROFILES]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"unknown profile(s) {', '.join(unknown) or '(none given)'}; choose from {','.join(PROFILES)}"
        )
    return list(dict.fromkeys(chosen))


def _sections(text: str) -> list[str]:
    from podnet.bench.scale import SECTIONS

    chosen = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in chosen if p not in SECTIONS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"unknown section(s) {', '.join(unknown) or '(none given)'}; choose from {','.join(SECTIONS)}"
        )
    return list(dict.fromkeys(chosen))


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--profiles",
        type=_profiles,
        default=list(PROFILES),
        metavar="LIST",
        help=f"comma-separated profiles (default: all: {','.join(PROFILES)})",
    )
    parser.add_argument(
        "--repeats",
        type=_positive_int,
        default=None,
        metavar="N",
        help=f"runs per scenario (default {DEFAULTS['repeats']}; --quick {QUICK_DEFAULTS['repeats']})",
    )
    parser.add_argument(
        "--duration",
        type=_positive_float,
        default=None,
        metavar="S",
        help=f"seconds per run (default {DEFAULTS['duration']:g}; --quick {QUICK_DEFAULTS['duration']:g})",
    )
    parser.add_argument("--quick", action="store_true", help="CI smoke: a few minutes in all")
    parser.add_argument(
        "--out",
        metavar="DIR",
        default=None,
        help="where bench.json and the plots go (default ./bench-results/<timestamp>)",
    )
    parser.add_argument(
        "--scale",
        action="store_true",
        help="run the scale sections (figures beside their goals) instead of the seed's table",
    )
    parser.add_argument(
        "--sections",
        type=_sections,
        default=None,
        metavar="LIST",
        help="with --scale: comma-separated sections (default: all)",
    )
    parser.add_argument("--skip-footprint", action="store_true", help="no agent/BIRD memory readings")
    parser.add_argument(
        "--skip-flows", action="store_true", help="no flow records on vs off rows (podnet.bench.flows)"
    )
    parser.add_argument(
        "--skip-control-plane",
        action="store_true",
        help="no CNI, IPAM, policy-change and route-convergence figures",
    )


def settings(args: argparse.Namespace) -> dict:
    """Repeats and duration after ``--quick`` filled in what was not given."""
    defaults = QUICK_DEFAULTS if args.quick else DEFAULTS
    return {
        "profiles": list(args.profiles),
        "repeats": args.repeats if args.repeats is not None else defaults["repeats"],
        "duration": args.duration if args.duration is not None else defaults["duration"],
        "quick": bool(args.quick),
        "out": args.out or os.path.join("bench-results", time.strftime("%Y%m%d-%H%M%S")),
    }


class ProgressBar:
    """``progress(message, done, total)``: a ``\\r`` bar on a terminal, plain lines otherwise."""

    def __init__(self, stream: TextIO | None = None, width: int = 24) -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.phase = ""
        self._last_len = 0
        self._last_line = ""

    def phase_of(self, phase: str):  # type: ignore[no-untyped-def]
        """A callback that prefixes its messages with ``phase``."""

        def callback(message: str, done: int, total: int) -> None:
            self(f"{phase}: {message}", done, total)

        return callback

    def __call__(self, message: str, done: int, total: int) -> None:
        total = max(total, 1)
        done = max(0, min(done, total))
        if self.tty:
            filled = round(self.width * done / total)
            bar = "#" * filled + "." * (self.width - filled)
            text = f"[{bar}] {done}/{total} {message}"
            columns = _columns()
            if len(text) > columns - 1:
                text = text[: columns - 2] + "~"
            self.stream.write("\r" + text.ljust(self._last_len))
            self._last_len = len(text)
        else:
            line = f"[{done}/{total}] {message}"
            if line == self._last_line:
                return
            self._last_line = line
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self._last_len:
            self.stream.write("\n")
            self.stream.flush()
            self._last_len = 0


def _columns() -> int:
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns
    except (OSError, ValueError):
        return 120


def run(args: argparse.Namespace) -> int:
    from podnet.bench import report

    opts = settings(args)
    if args.sections is not None and not args.scale:
        raise PodnetError("--sections goes with --scale", hint="podnet bench --scale --sections cni")
    if os.geteuid() != 0:
        raise PodnetError(
            "podnet bench builds labs in network namespaces: it needs root", hint="sudo podnet bench ..."
        )
    out = opts["out"]
    os.makedirs(out, exist_ok=True)
    if args.scale:
        return _run_scale(args, out)
    bar = ProgressBar()
    started = time.monotonic()
    try:
        from podnet.bench import datapath  # written alongside; imported only when the bench runs

        result = datapath.run(
            opts["profiles"],
            opts["repeats"],
            opts["duration"],
            opts["quick"],
            progress=bar.phase_of("data path"),
        )
        report.write_json(result, os.path.join(out, "bench.json"))  # kept even if what follows fails
        if not (args.skip_footprint and args.skip_control_plane):
            from podnet.bench import footprint

            try:
                result["footprint"] = footprint.run(
                    opts["profiles"],
                    opts["quick"],
                    memory=not args.skip_footprint,
                    control_plane=not args.skip_control_plane,
                    progress=bar.phase_of("footprint"),
                )
            except Exception as exc:  # the data path's figures stand on their own: report, go on
                result["footprint_error"] = f"{type(exc).__name__}: {exc}"
                print(
                    f"podnet bench: footprint/control plane failed: {result['footprint_error']}",
                    file=sys.stderr,
                )
        if not args.skip_flows:
            from podnet.bench import flows

            styles = tuple(p for p in flows.PROFILES if any(name.startswith(p) for name in opts["profiles"]))
            size = flows.QUICK if opts["quick"] else flows.Options(repeats=opts["repeats"])
            phase = bar.phase_of("flows on/off")
            try:
                result["flows"] = flows.run(size, styles, step=lambda text: phase(text, 0, 1))
            except Exception as exc:  # as the footprint: reported, the rest stands
                result["flows_error"] = f"{type(exc).__name__}: {exc}"
                print(f"podnet bench: flows on/off failed: {result['flows_error']}", file=sys.stderr)
    finally:
        bar.close()
    result.setdefault("settings", {}).setdefault("wall_s", round(time.monotonic() - started, 1))
    json_path = report.write_json(result, os.path.join(out, "bench.json"))
    plots = report.write_plots(result, out)
    print(report.render_table(result))
    if "flows" in result:
        from podnet.bench import flows

        print("\n" + flows.render(result["flows"]))
    print(f"\nraw samples and summaries: {json_path}; {len(plots)} plots in {out}/")
    return 0


def _run_scale(args: argparse.Namespace, out: str) -> int:
    from podnet.bench import scale

    bar = ProgressBar()
    try:
        results = scale.run(
            args.sections or list(scale.SECTIONS), bool(args.quick), step=lambda text: bar(text, 0, 1)
        )
    finally:
        bar.close()
    path = scale.write(results, out)
    print(scale.render(results))
    print(f"\nraw samples: {path}")
    failed = [name for name in results["order"] if "error" in results[name]]
    return 1 if failed else 0
