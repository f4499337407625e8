"""Fixtures of the lab integration tests (root): labs with their own prefix and underlay.

Every lab a test makes gets a fresh ``pnt<4 hex>-`` prefix and a random 10.x.0.0/16 underlay, so
it never meets a user's ``pn-`` lab, and is removed by ``down`` and then ``clean`` (by prefix)
whatever the test did.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from podnet.lab.cleanup import clean, down
from podnet.lab.fabric import FabricReport, fabric_up
from podnet.lab.naming import LabNames
from podnet.lab.state import LabState
from podnet.lab.topology import LabSpec, Topology, random_underlay


@pytest.fixture(autouse=True)
def _need_root():
    if os.geteuid() != 0:
        pytest.skip("lab tests need root (network namespaces, cgroups)")
    if shutil.which("ip") is None:
        pytest.skip("iproute2 is not installed")


@dataclass
class Lab:
    names: LabNames
    topo: Topology
    state: LabState
    report: FabricReport


def new_names() -> LabNames:
    return LabNames(f"pnt{secrets.token_hex(2)}-")


def new_spec(**kwargs) -> LabSpec:
    return LabSpec(underlay=random_underlay(), **kwargs)


@pytest.fixture
def lab_names() -> Iterator:
    """``lab_names() -> LabNames`` with a fresh test prefix; ``clean`` runs on each at the end."""
    made: list[LabNames] = []

    def make() -> LabNames:
        made.append(new_names())
        return made[-1]

    yield make
    for names in made:
        clean(names)


@pytest.fixture
def lab_spec():
    """``lab_spec(nodes=, subnets=) -> LabSpec`` on a random 10.x.0.0/16 underlay."""
    return new_spec


@pytest.fixture
def make_lab() -> Iterator:
    """``make_lab(nodes=, subnets=) -> Lab``; every lab made is removed at the end."""
    made: list[LabNames] = []

    def make(**kwargs) -> Lab:
        names = new_names()
        made.append(names)
        topo, state, report = fabric_up(new_spec(**kwargs), names)
        return Lab(names, topo, state, report)

    yield make
    for names in made:
        down(names.state_dir)
        clean(names)


@pytest.fixture(scope="module")
def lab4() -> Iterator[Lab]:
    """A 2-subnet, 4-node lab shared by a module's tests."""
    if os.geteuid() != 0:
        pytest.skip("lab tests need root")
    names = new_names()
    try:
        topo, state, report = fabric_up(new_spec(nodes=4, subnets=2), names)
        yield Lab(names, topo, state, report)
    finally:
        down(names.state_dir)
        clean(names)
