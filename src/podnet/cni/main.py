"""``podnet-cni``: the executable a container runtime runs (``type: "podnet"`` in the CNI config).

Start-up time is the plugin's latency floor (and its CPU, times every concurrent ADD), so this
module imports nothing of its own until it knows the command: VERSION is answered from
:mod:`podnet.cni.versions` alone; the other verbs go to :mod:`podnet.cni.shim`, which forwards the
invocation to the agent with C built-ins only and loads :mod:`podnet.cni.plugin` only when the
agent cannot serve it.
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> int:
    """Entry point: environment and stdin in, one JSON document on stdout, exit code 0 or 1."""
    del argv  # CNI passes everything through the environment and stdin
    if os.environ.get("CNI_COMMAND") == "VERSION":
        from podnet.cni.versions import VERSION_JSON

        sys.stdout.write(VERSION_JSON + "\n")
        return 0
    from podnet.cni.shim import main as forward

    return forward()


if __name__ == "__main__":
    sys.exit(main())
