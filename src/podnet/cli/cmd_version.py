"""``podnet version``."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", choices=["text", "json"], default="text")


def run(args: argparse.Namespace) -> int:
    import json
    import platform

    from podnet import __version__

    if args.output == "json":
        print(json.dumps({"version": __version__, "python": platform.python_version()}))
    else:
        print(f"podnet {__version__} (python {platform.python_version()})")
    return 0
