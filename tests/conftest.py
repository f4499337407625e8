"""Shared fixtures (a real etcd server for the session) and the markers of the test tiers.

Markers (declared in pyproject.toml) are put on automatically, so a new test cannot forget them:

- ``lab`` and ``root``: every test under a directory of :data:`LAB_DIRS` (they build network
  namespaces: labs, BGP labs, benches, the dataplane tests' nodes);
- ``etcd``: every test that uses the ``etcd_server`` fixture (directly or through another fixture);
  a test that starts etcd without the marker fails (:func:`_etcd_needs_its_marker`);
- ``root``: a test so marked is skipped when not run as root.

``slow`` is put by hand on tests that take seconds on their own without a lab. ``./test.sh
--quick`` runs ``-m "not lab and not slow"``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from podnet.datastore.etcd_server import EtcdServer

TESTS = Path(__file__).parent
LAB_DIRS = tuple(TESTS / "integration" / name for name in ("lab", "bgp", "bench", "reliability", "dataplane"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if any(item.path.is_relative_to(d) for d in LAB_DIRS):
            item.add_marker(pytest.mark.lab)
            item.add_marker(pytest.mark.root)
        if "etcd_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.etcd)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("root") is not None and os.geteuid() != 0:
        pytest.skip("needs root (marked root)")


@pytest.fixture(autouse=True)
def _etcd_needs_its_marker(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A test that is not marked ``etcd`` cannot start an etcd server (a lab's included)."""
    if request.node.get_closest_marker("etcd") is None:

        def refuse(self: EtcdServer, *args: object, **kwargs: object) -> None:
            pytest.fail(f"{request.node.nodeid} starts etcd: mark it etcd (pytest.mark.etcd)")

        monkeypatch.setattr(EtcdServer, "start", refuse)


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[EtcdServer]:
    if shutil.which("etcd") is None:
        pytest.skip("the etcd binary is not installed (apt-get install etcd-server)")
    with EtcdServer() as server:
        yield server
