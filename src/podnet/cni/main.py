"""``podnet-cni``: the executable a container runtime runs (``type: "podnet"`` in the CNI config).

Start-up time is the plugin's latency floor, so this module imports nothing of its own until it
knows the command: VERSION is answered from :mod:`podnet.cni.versions` alone; the other verbs load
:mod:`podnet.cni.plugin` (standard library plus ``podnet.agent.api``: ``json``, ``socket``).
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
    from podnet.cni.plugin import run

    return run(os.environ, sys.stdin.buffer, sys.stdout, sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
