"""The lab's state file: everything the lab created, so ``down`` removes exactly that.

``<state_dir>/state.json`` (``/run/podnet-lab/pn/state.json`` by default)::

    {"version": 1, "prefix": "pn-", "created": 1718000000.0,
     "namespaces": [{"name": "pn-fabric", "kind": "fabric"}, {"name": "pn-node-1", "kind": "node"}, …],
     "processes":  [{"name": "agent:node-1", "pid": 4242, "start_time": 123456, "netns": "pn-node-1",
                     "cgroup": null, "cmd": [...], "log": "..."}, …],
     "files": [...], "dirs": [...], "cgroups": ["/sys/fs/cgroup/unified/podnet-lab-pn"],
     "meta": {"topology": {...}, "etcd_endpoint": "http://127.0.0.1:40123", ...}}

Writes are atomic (temporary file + ``rename``) and serialised by ``flock`` on ``state.lock``, so a
few writers (lab up, the kubelet, concurrent pod setups, in threads or processes) can each do a
read-modify-write with :meth:`LabState.update`. Readers never see a half-written file.
Record *before* creating where possible: ``down`` ignores items that are already gone, so an
intent recorded but never carried out costs nothing, while a creation never recorded would leak.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from podnet.lab.naming import LabError

STATE_VERSION = 1
STATE_FILE = "state.json"
LOCK_FILE = "state.lock"
LISTS = ("namespaces", "processes", "files", "dirs", "cgroups", "mounts")
# ``down`` deletes namespaces in this order: pods before the nodes that route them, fabric last.
NETNS_ORDER = ("pod", "other", "node", "router", "etcd", "ext", "fabric")


class StateCorrupt(LabError):
    code = "lab-state-corrupt"


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds process ``pid`` has used (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcessRecord:
    name: str
    pid: int
    start_time: int
    netns: str | None = None
    cgroup: str | None = None
    cmd: tuple[str, ...] = ()
    log: str | None = None
    meta: dict = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict:
        return asdict(self) | {"cmd": list(self.cmd)}

    @classmethod
    def from_dict(cls, doc: dict) -> ProcessRecord:
        known = {k: doc[k] for k in cls.__dataclass_fields__ if k in doc}
        known["cmd"] = tuple(known.get("cmd") or ())
        return cls(**known)

    @classmethod
    def of(cls, name: str, spawned: Any, **meta: Any) -> ProcessRecord:
        """From a :class:`podnet.lab.netns.Spawned` (or anything with the same attributes)."""
        return cls(
            name=name,
            pid=spawned.pid,
            start_time=spawned.start_time,
            netns=getattr(spawned, "netns", None),
            cgroup=getattr(spawned, "cgroup", None),
            cmd=tuple(getattr(spawned, "cmd", ()) or ()),
            log=getattr(spawned, "log", None),
            meta=meta,
        )


def empty_state(prefix: str, meta: dict | None = None) -> dict:
    return (
        {"version": STATE_VERSION, "prefix": prefix, "created": time.time()}
        | {k: [] for k in LISTS}
        | {"meta": dict(meta or {})}
    )


class LabState:
    """Handle on ``<state_dir>/state.json``; every method takes the lock and re-reads the file."""

    def __init__(self, state_dir: str) -> None:
        self.dir = str(state_dir)
        self.path = os.path.join(self.dir, STATE_FILE)
        self.lock_path = os.path.join(self.dir, LOCK_FILE)

    # -- lifecycle ---------------------------------------------------------------------------
    @classmethod
    def create(cls, state_dir: str, prefix: str, meta: dict | None = None) -> LabState:
        """Make the state dir and an empty state; an existing state means the lab is up."""
        state = cls(state_dir)
        os.makedirs(state.dir, mode=0o755, exist_ok=True)
        with state._locked():
            if os.path.exists(state.path):
                raise LabError(
                    f"a lab already has state in {state.dir}",
                    hint="podnet lab down (or podnet lab clean if it crashed)",
                )
            state._write(empty_state(prefix, meta))
        return state

    def exists(self) -> bool:
        return os.path.exists(self.path)

    # -- raw access --------------------------------------------------------------------------
    def load(self) -> dict:
        """The current state document (no lock needed: writes are atomic renames)."""
        try:
            with open(self.path) as f:
                doc = json.load(f)
        except FileNotFoundError:
            raise LabError(f"no lab state in {self.dir}", hint="podnet lab up") from None
        except (OSError, ValueError) as exc:
            raise StateCorrupt(
                f"lab state {self.path} is unreadable: {exc}", hint="podnet lab clean removes the lab"
            ) from exc
        if not isinstance(doc, dict) or doc.get("version") != STATE_VERSION:
            raise StateCorrupt(f"lab state {self.path} has an unknown format", hint="podnet lab clean")
        for key in LISTS:
            doc.setdefault(key, [])
        doc.setdefault("meta", {})
        return doc

    @contextlib.contextmanager
    def update(self) -> Iterator[dict]:
        """Read-modify-write under the lock: mutate the yielded document in place."""
        with self._locked():
            doc = self.load()
            yield doc
            self._write(doc)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # Each call opens the lock file anew: flock locks belong to the open file description, so
        # this excludes other threads of this process as well as other processes. Do not nest.
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:
            raise LabError(f"no lab state in {self.dir}", hint="podnet lab up") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock

    def _write(self, doc: dict) -> None:
        tmp = f"{self.path}.{os.getpid()}.{threading.get_ident()}.tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    # -- recording ---------------------------------------------------------------------------
    def record_netns(self, name: str, kind: str) -> None:
        self.record_netns_many([(name, kind)])

    def record_netns_many(self, items: list[tuple[str, str]]) -> None:
        if bad := [k for _, k in items if k not in NETNS_ORDER]:
            raise LabError(f"unknown netns kind {bad[0]!r}", hint=", ".join(NETNS_ORDER))
        with self.update() as doc:
            have = {n["name"] for n in doc["namespaces"]}
            doc["namespaces"] += [{"name": n, "kind": k} for n, k in items if n not in have]

    def record_process(self, record: ProcessRecord) -> None:
        """Add (or replace, by name) a process: ``state.record_process(ProcessRecord.of(name, spawned))``."""
        with self.update() as doc:
            doc["processes"] = [p for p in doc["processes"] if p["name"] != record.name]
            doc["processes"].append(record.to_dict())

    def record_file(self, path: str) -> None:
        self._add("files", os.path.abspath(path))

    def record_dir(self, path: str) -> None:
        self._add("dirs", os.path.abspath(path))

    def record_mount(self, path: str) -> None:
        """A filesystem the lab mounted (e.g. the agents' bpffs); ``down`` unmounts it first."""
        self._add("mounts", os.path.abspath(path))

    def record_cgroup(self, path: str) -> None:
        self._add("cgroups", os.path.abspath(path))

    def set_meta(self, **items: Any) -> None:
        with self.update() as doc:
            doc["meta"].update(items)

    def _add(self, key: str, value: str) -> None:
        with self.update() as doc:
            if value not in doc[key]:
                doc[key].append(value)

    # -- forgetting (after removing something on purpose, e.g. a deleted pod) ----------------
    def forget_netns(self, name: str) -> None:
        with self.update() as doc:
            doc["namespaces"] = [n for n in doc["namespaces"] if n["name"] != name]

    def forget_process(self, name: str) -> None:
        with self.update() as doc:
            doc["processes"] = [p for p in doc["processes"] if p["name"] != name]

    def forget(self, key: str, value: str) -> None:
        """Forget a file, dir or cgroup: ``forget("cgroups", path)``."""
        if key not in ("files", "dirs", "cgroups"):
            raise ValueError(key)
        with self.update() as doc:
            doc[key] = [v for v in doc[key] if v != os.path.abspath(value)]

    # -- typed reads -------------------------------------------------------------------------
    def namespaces(self) -> list[tuple[str, str]]:
        return [(n["name"], n["kind"]) for n in self.load()["namespaces"]]

    def processes(self) -> list[ProcessRecord]:
        return [ProcessRecord.from_dict(p) for p in self.load()["processes"]]

    def meta(self) -> dict:
        return self.load()["meta"]
