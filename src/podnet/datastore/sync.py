"""List-then-watch with a resync path: the one way podnet follows a key prefix.

``PrefixSync`` yields a :class:`Snapshot` (the whole prefix at one revision), then every change
as a :class:`WatchEvent`. When the watch falls behind a compaction it lists again and yields a
fresh Snapshot (the consumer replaces its state: that is the resync). When the datastore is
unavailable it backs off (capped) and resumes the watch from the last revision it saw, so no
event is lost and no busy loop burns CPU during an outage; ``on_error`` hears about each failure.

    sync = PrefixSync(store, "/podnet/resources/")
    for item in sync:                # blocks; sync.close() from another thread ends it
        if isinstance(item, Snapshot): state = {kv.key: kv for kv in item.items}
        else: apply(item)
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from podnet.datastore.base import Datastore, KeyValue, Watch, WatchEvent
from podnet.errors import CompactedError, DatastoreError


@dataclass(frozen=True)
class Snapshot:
    items: list[KeyValue]
    revision: int


class PrefixSync:
    def __init__(
        self,
        store: Datastore,
        prefix: str,
        *,
        min_backoff: float = 0.1,
        max_backoff: float = 2.0,
        on_error: Callable[[Exception], None] | None = None,
    ) -> None:
        self.store = store
        self.prefix = prefix
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.on_error = on_error
        self.revision = 0  # last revision fully delivered to the consumer
        self._stop = threading.Event()
        self._watch: Watch | None = None
        self._lock = threading.Lock()

    def __iter__(self) -> Iterator[Snapshot | WatchEvent]:
        backoff = self.min_backoff
        need_list = True
        while not self._stop.is_set():
            try:
                if need_list:
                    items, rev = self.store.list(self.prefix)
                    self.revision = rev
                    need_list = False
                    snapshot = Snapshot(items, rev)
                    del items  # this frame outlives the snapshot: it must not keep every value
                    yield snapshot
                    del snapshot
                watch = self.store.watch(self.prefix, self.revision + 1)
                with self._lock:
                    self._watch = watch
                if self._stop.is_set():
                    watch.close()
                backoff = self.min_backoff
                for event in watch:
                    if event.last_of_revision:  # a watch resumed mid-revision replays all of it
                        self.revision = max(self.revision, event.revision)
                    yield event
                    backoff = self.min_backoff
            except CompactedError as exc:
                self._report(exc)
                need_list = True
            except DatastoreError as exc:
                if self._stop.is_set():
                    return
                self._report(exc)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff)

    def _report(self, exc: Exception) -> None:
        if self.on_error is not None:
            self.on_error(exc)

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            if self._watch is not None:
                self._watch.close()
