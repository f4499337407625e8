"""Shared fixtures: a real etcd server for the session (started and stopped by the tests)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from podnet.datastore.etcd_server import EtcdServer


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[EtcdServer]:
    if shutil.which("etcd") is None:
        pytest.skip("the etcd binary is not installed (apt-get install etcd-server)")
    with EtcdServer() as server:
        yield server
