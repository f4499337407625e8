"""Fixtures of the BGP integration tests (root); the lab itself is in :mod:`bgplab`."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator

import pytest
from bgplab import BgpLab, new_lab, remove_lab


@pytest.fixture(autouse=True)
def _need_root_and_tools() -> None:
    if os.geteuid() != 0:
        pytest.skip("BGP lab tests need root (network namespaces)")
    for tool in ("ip", "bird"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (scripts/setup.sh installs bird2)")


@pytest.fixture
def make_bgp_lab() -> Iterator[Callable[..., BgpLab]]:
    """``make_bgp_lab(nodes=3) -> BgpLab``: fabric, pod addresses, blackholes and pod servers."""
    made: list[BgpLab] = []

    def make(nodes: int = 3) -> BgpLab:
        made.append(new_lab(nodes))
        return made[-1]

    yield make
    for lab in made:
        remove_lab(lab)
