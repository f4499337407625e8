"""netlink.pyroute2_module: the submodules without the package's __init__, which still runs for
whoever asks the package for one of its names."""

from __future__ import annotations

import os
import subprocess
import sys

CODE = """
import sys
from podnet.dataplane.netlink import pyroute2_module
pyroute2_module("pyroute2.iproute.linux").IPRoute
print("ndb" if "pyroute2.ndb" in sys.modules else "lean")
from pyroute2 import IPRoute, NDB  # the package as usual for everyone else
print(IPRoute.__module__, NDB.__module__)
"""


def test_lean_then_whole() -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split("\n")[:2] == ["lean", "pyroute2.iproute.linux pyroute2.ndb.main"]
