"""The lab state file: round trip, atomic writes, locking across processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from podnet.lab.naming import LabError
from podnet.lab.state import LabState, ProcessRecord, StateCorrupt


@pytest.fixture
def state(tmp_path) -> LabState:
    return LabState.create(str(tmp_path / "lab"), "pnt0000-", meta={"spec": {"nodes": 3}})


def test_round_trip(state):
    state.record_netns_many([("pnt0000-fabric", "fabric"), ("pnt0000-node-1", "node")])
    state.record_netns("pnt0000-node-1", "node")  # recorded once
    spawned = SimpleNamespace(
        pid=123, start_time=456, netns="pnt0000-node-1", cgroup=None, cmd=["x", "-y"], log=None
    )
    state.record_process(ProcessRecord.of("agent:node-1", spawned, node="node-1"))
    state.record_process(ProcessRecord("agent:node-1", 124, 457))  # replaces by name
    state.record_file("/tmp/a")
    state.record_dir("/tmp/d")
    state.record_cgroup("/sys/fs/cgroup/unified/podnet-lab-pnt0000")
    state.set_meta(etcd_endpoint="http://127.0.0.1:1234", nodes=["node-1"])

    again = LabState(state.dir)
    assert again.namespaces() == [("pnt0000-fabric", "fabric"), ("pnt0000-node-1", "node")]
    assert again.processes() == [ProcessRecord("agent:node-1", 124, 457)]
    assert again.meta() == {
        "spec": {"nodes": 3},
        "etcd_endpoint": "http://127.0.0.1:1234",
        "nodes": ["node-1"],
    }
    doc = again.load()
    assert (doc["prefix"], doc["files"], doc["dirs"]) == ("pnt0000-", ["/tmp/a"], ["/tmp/d"])
    assert doc["cgroups"] == ["/sys/fs/cgroup/unified/podnet-lab-pnt0000"]

    again.forget_netns("pnt0000-node-1")
    again.forget_process("agent:node-1")
    again.forget("files", "/tmp/a")
    assert state.namespaces() == [("pnt0000-fabric", "fabric")]
    assert state.processes() == [] and state.load()["files"] == []


def test_process_record_from_dict_keeps_everything():
    rec = ProcessRecord("etcd", 1, 2, "pn-etcd", "/cg", ("etcd", "--name"), "/log", {"role": "etcd"})
    assert ProcessRecord.from_dict(json.loads(json.dumps(rec.to_dict()))) == rec


def test_create_refuses_existing_state(state):
    with pytest.raises(LabError, match="already has state"):
        LabState.create(state.dir, "pnt0000-")


def test_missing_and_corrupt(tmp_path, state):
    with pytest.raises(LabError, match="no lab state"):
        LabState(str(tmp_path / "nothing")).load()
    with pytest.raises(LabError):
        LabState(str(tmp_path / "nothing")).set_meta(x=1)
    with open(state.path, "w") as f:
        f.write("{not json")
    with pytest.raises(StateCorrupt):
        state.load()
    with open(state.path, "w") as f:
        json.dump({"version": 99}, f)
    with pytest.raises(StateCorrupt):
        state.load()


def test_unknown_netns_kind(state):
    with pytest.raises(LabError):
        state.record_netns("x", "spaceship")


def test_writes_are_atomic_renames(state):
    before = os.stat(state.path).st_ino
    state.set_meta(x=1)
    assert os.stat(state.path).st_ino != before  # a new file replaced the old one
    assert not [n for n in os.listdir(state.dir) if n.endswith(".tmp")]


def test_an_update_that_fails_writes_nothing(state):
    with pytest.raises(RuntimeError), state.update() as doc:
        doc["meta"]["half"] = True
        raise RuntimeError("boom")
    assert "half" not in state.meta()


WRITER = """
import sys
from podnet.lab.state import LabState
s = LabState(sys.argv[1])
for i in range(int(sys.argv[3])):
    s.record_file(f"/tmp/{sys.argv[2]}-{i}")
    with s.update() as doc:
        doc["meta"]["count"] = doc["meta"].get("count", 0) + 1
"""


def test_concurrent_writers_lose_nothing(state):
    writers, each = 4, 25
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, state.dir, f"w{w}", str(each)])
        for w in range(writers)
    ]
    assert all(p.wait(60) == 0 for p in procs)
    doc = state.load()
    assert len(doc["files"]) == writers * each
    assert doc["meta"]["count"] == writers * each
