"""The datastore layer: one protocol (:mod:`.base`), etcd (:mod:`.etcd`) and in-memory
(:mod:`.memory`) backends with the same semantics, the key layout (:mod:`.keys`), list-and-watch
with resync (:mod:`.sync`) and typed resource storage (:mod:`.resources`)."""

from podnet.datastore.base import Datastore, EventType, KeyValue, WatchEvent, Write
from podnet.datastore.keys import KeyLayout

__all__ = ["Datastore", "EventType", "KeyLayout", "KeyValue", "WatchEvent", "Write", "connect"]


def connect(endpoints: str | None = None, **options: float) -> Datastore:
    """The etcd datastore at ``endpoints``, else ``PODNET_ETCD_ENDPOINTS``, else localhost
    (``options``: EtcdDatastore's ``timeout``, ``retry_deadline``)."""
    from podnet.datastore.etcd import EtcdDatastore

    return EtcdDatastore(endpoints, **options)
