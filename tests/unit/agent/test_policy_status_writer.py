"""The agent's policy status writer: coalesced, written only when it changes, retried after an outage."""

from __future__ import annotations

from podnet.agent.policy_status import PolicyStatusWriter, invalid_policies
from podnet.calc.policy_status import PolicyReport
from podnet.datastore.keys import KeyLayout
from podnet.datastore.memory import MemoryDatastore

LAYOUT = KeyLayout("/t/")


def stored(store: MemoryDatastore) -> PolicyReport:
    kv = store.get(LAYOUT.policy_status("node-1"))
    assert kv is not None
    return PolicyReport.from_json(kv.value)


def test_reports_are_written_when_they_change_and_remember_the_last_good_revision() -> None:
    store = MemoryDatastore()
    writer = PolicyStatusWriter(store, LAYOUT, "node-1")
    writer.report(5, None, {}, {})
    assert writer.flush()
    assert (stored(store).revision, stored(store).applied_revision, stored(store).error) == (5, 5, None)
    before = store.revision()
    writer.report(5, None, {}, {})  # the same outcome again: nothing written
    assert writer.flush() and store.revision() == before
    writer.report(8, "nft rejected", {"a/p": "x"}, {})
    assert writer.flush()
    assert (stored(store).revision, stored(store).applied_revision) == (8, 5)
    assert stored(store).error == "nft rejected" and stored(store).compile_errors == {"a/p": "x"}


class Down(MemoryDatastore):
    up = False

    def put(self, key: str, value: bytes) -> int:
        if not self.up:
            raise ConnectionError("etcd unreachable")
        return super().put(key, value)


def test_an_outage_keeps_the_report_for_later() -> None:
    store = Down()
    writer = PolicyStatusWriter(store, LAYOUT, "node-1")
    writer.report(3, None, {}, {})
    assert not writer.flush()
    store.up = True
    assert writer.flush() and stored(store).revision == 3


def test_the_thread_writes_and_stops() -> None:
    store = MemoryDatastore()
    writer = PolicyStatusWriter(store, LAYOUT, "node-1", interval=0.01)
    writer.start()
    try:
        writer.report(4, None, {}, {})
        import time

        deadline = time.monotonic() + 5
        while store.get(LAYOUT.policy_status("node-1")) is None:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        writer.stop()
        writer._thread.join(2)  # type: ignore[union-attr]
    assert not writer._thread.is_alive()  # type: ignore[union-attr]


def test_invalid_policies_picks_the_network_policy_keys() -> None:
    errors = {
        LAYOUT.resource("networkpolicies.networking.k8s.io", "p", "np"): "spec.podSelector: required",
        LAYOUT.resource("pods", "x", "np"): "bad pod",
        "/t/ipam/blocks/10.0.0.0-26": "bad block",
    }
    assert invalid_policies(errors, LAYOUT) == {"np/p": "spec.podSelector: required"}
