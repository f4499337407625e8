"""Fixtures of the bench integration tests: they build whole labs, so they need root and the tools."""

from __future__ import annotations

import os
import shutil

import pytest


@pytest.fixture(autouse=True)
def _need_root_and_tools():
    if os.geteuid() != 0:
        pytest.skip("bench tests build labs: they need root (network namespaces, cgroups, nftables)")
    for tool in ("ip", "nft", "iperf3", "etcd", "curl"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
