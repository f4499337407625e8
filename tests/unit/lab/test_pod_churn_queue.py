"""A DEL queued while the agent was down is served before a later ADD of the same attachment
(found by the pod-churn scenario: served after it, it unwired the new pod and freed its address)."""

from __future__ import annotations

import json
import os

from podnet.agent.delete_queue import drain, serve_queued
from podnet.cni import delete_queue as plugin_queue
from podnet.cni.agent_api import delete_queue_entry

REQUEST = {
    "verb": "ADD",
    "containerID": "c0ffee",
    "netns": "/run/netns/x",
    "ifname": "eth0",
    "args": {},
    "config": {"name": "k8s-pod-network"},
}


class Agent:
    """Records what it was asked; answers DEL with ``ok`` as set."""

    def __init__(self, ok: bool = True) -> None:
        self.ok, self.served = ok, []

    def handle(self, request: dict) -> dict:
        self.served.append(dict(request))
        return {"ok": True} if self.ok else {"ok": False, "code": 11, "msg": "datastore unavailable"}


def _queue(tmp_path) -> str:  # type: ignore[no-untyped-def]
    queue_dir = str(tmp_path / "delete-queue")
    os.makedirs(queue_dir)
    with plugin_queue.SharedLock(queue_dir):
        plugin_queue.enqueue(queue_dir, dict(REQUEST, verb="DEL"))
    return queue_dir


def test_the_plugin_queues_under_the_name_an_add_looks_for(tmp_path) -> None:  # type: ignore[no-untyped-def]
    queue_dir = _queue(tmp_path)
    assert plugin_queue.pending(queue_dir) == [os.path.join(queue_dir, "k8s-pod-network-c0ffee-eth0.delete")]
    assert delete_queue_entry(REQUEST) == "k8s-pod-network-c0ffee-eth0.delete"


def test_an_add_serves_its_queued_del_first_and_removes_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    queue_dir, agent = _queue(tmp_path), Agent()
    response = serve_queued(queue_dir, REQUEST, agent.handle)
    assert response == {"ok": True} and [r["verb"] for r in agent.served] == ["DEL"]
    assert plugin_queue.pending(queue_dir) == []
    assert drain(queue_dir, agent.handle) == (0, 0)  # nothing left for a later pass to undo the ADD with
    assert serve_queued(queue_dir, REQUEST, agent.handle) is None  # no entry: nothing served


def test_a_queued_del_that_fails_stays_and_the_add_learns_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    queue_dir, agent = _queue(tmp_path), Agent(ok=False)
    response = serve_queued(queue_dir, REQUEST, agent.handle)
    assert response is not None and not response["ok"]
    assert len(plugin_queue.pending(queue_dir)) == 1


def test_other_attachments_are_left_to_the_drain(tmp_path) -> None:  # type: ignore[no-untyped-def]
    queue_dir, agent = _queue(tmp_path), Agent()
    assert serve_queued(queue_dir, dict(REQUEST, containerID="other"), agent.handle) is None
    assert agent.served == [] and drain(queue_dir, agent.handle) == (1, 0)
    with open(os.path.join(queue_dir, "lock")) as f:  # the lock file stays; no entry left
        assert f.read() == ""
    assert not any(n.endswith(".delete") for n in os.listdir(queue_dir))
    assert json.dumps(agent.served[0]["config"]) == json.dumps(REQUEST["config"])
