"""etcd unavailable: clear errors naming the endpoints, bounded waits, fail-over, no lost events."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator

import pytest

from podnet.datastore.etcd import EtcdDatastore
from podnet.datastore.etcd_server import EtcdServer, free_port
from podnet.datastore.sync import PrefixSync, Snapshot
from podnet.errors import DatastoreUnavailable

pytestmark = [pytest.mark.etcd, pytest.mark.slow]  # outages are waited out: seconds each


@pytest.fixture
def own_etcd() -> Iterator[EtcdServer]:
    if shutil.which("etcd") is None:
        pytest.skip("the etcd binary is not installed (apt-get install etcd-server)")
    server = EtcdServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


def test_dead_endpoint_fails_fast_naming_it():
    dead = f"http://127.0.0.1:{free_port()}"
    store = EtcdDatastore([dead], retry_deadline=1.0)
    started = time.monotonic()
    with pytest.raises(DatastoreUnavailable) as info:
        store.get("/x")
    assert time.monotonic() - started < 3
    assert dead in info.value.message and "PODNET_ETCD_ENDPOINTS" in info.value.hint


def test_fails_over_to_a_live_endpoint(own_etcd):
    dead = f"http://127.0.0.1:{free_port()}"
    store = EtcdDatastore([dead, own_etcd.endpoint], retry_deadline=2.0)
    store.put("/failover/a", b"1")
    assert store.get("/failover/a").value == b"1"


def test_frozen_etcd_times_out_instead_of_hanging(own_etcd):
    store = EtcdDatastore([own_etcd.endpoint], timeout=1.0, retry_deadline=1.0)
    store.put("/frozen/a", b"1")
    own_etcd.pause()
    try:
        started = time.monotonic()
        with pytest.raises(DatastoreUnavailable):
            store.get("/frozen/a")
        with pytest.raises(DatastoreUnavailable) as info:
            store.put("/frozen/a", b"2")
        assert "outcome is unknown" in info.value.message or own_etcd.endpoint in info.value.message
        assert time.monotonic() - started < 8
    finally:
        own_etcd.resume()
    assert store.get("/frozen/a") is not None


def test_watch_on_frozen_etcd_ends_with_an_error(own_etcd):
    store = EtcdDatastore([own_etcd.endpoint], timeout=1.0, retry_deadline=0.5, watch_idle_check=0.5)
    watch = store.watch("/w/", store.revision() + 1)
    errors: list[Exception] = []

    def run() -> None:
        try:
            list(watch)
        except DatastoreUnavailable as exc:
            errors.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    time.sleep(0.3)
    own_etcd.pause()
    try:
        t.join(6)
        assert not t.is_alive() and errors, "the watch must notice the frozen server"
    finally:
        own_etcd.resume()
        watch.close()


def test_prefix_sync_rides_through_a_restart_without_losing_events(own_etcd):
    store = EtcdDatastore([own_etcd.endpoint], timeout=1.0, retry_deadline=0.3, watch_idle_check=0.5)
    writer = EtcdDatastore([own_etcd.endpoint], retry_deadline=10.0)
    writer.put("/r/a", b"0")
    errors: list[Exception] = []
    sync = PrefixSync(store, "/r/", max_backoff=0.5, on_error=errors.append)
    seen: dict[str, bytes] = {}
    done = threading.Event()

    def run() -> None:
        for item in sync:
            if isinstance(item, Snapshot):
                seen.clear()
                seen.update({kv.key: kv.value for kv in item.items})
            else:
                seen[item.key] = item.value
            if seen.get("/r/end") == b"1":
                done.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    time.sleep(0.3)
    own_etcd.kill()
    time.sleep(1.5)
    own_etcd.start()
    writer.put("/r/a", b"1")
    writer.put("/r/end", b"1")
    try:
        assert done.wait(10), f"events after the restart never arrived (errors: {errors})"
        assert seen["/r/a"] == b"1"
        assert errors, "the outage should have been reported through on_error"
    finally:
        sync.close()
        t.join(3)
