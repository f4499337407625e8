"""The IPAM rate benchmark's function, on the in-memory datastore (the etcd run is an integration test)."""

from __future__ import annotations

import pytest

from podnet.bench.ipam_rate import measure_allocation_rate
from podnet.datastore.memory import MemoryDatastore


def test_measure_allocation_rate_reports_and_cleans_up() -> None:
    store = MemoryDatastore()
    result = measure_allocation_rate(store, n=60, concurrency=3, nodes=2)
    assert result["n"] == 60 and result["concurrency"] == 3 and result["nodes"] == 2
    assert result["allocations_per_s"] > 0 and result["releases_per_s"] > 0
    assert 0 < result["assign_p50_ms"] <= result["assign_p99_ms"]
    assert 0 < result["release_p50_ms"] <= result["release_p99_ms"]
    assert result["blocks_claimed"] == 2
    assert store.list("/")[0] == []  # its private prefix is gone


def test_measure_allocation_rate_validates_arguments() -> None:
    with pytest.raises(ValueError):
        measure_allocation_rate(MemoryDatastore(), n=0)
    with pytest.raises(ValueError, match="per node exceed"):
        measure_allocation_rate(MemoryDatastore(), n=2000, concurrency=1)
