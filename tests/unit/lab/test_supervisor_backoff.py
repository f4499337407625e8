"""The lab kubelet's agent supervision, without root: ``sleep`` processes stand in for agents and
the supervisor's steps run on a clock the test sets (the real loop only adds a poll)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from podnet.lab import supervisor
from podnet.lab.naming import LabNames
from podnet.lab.netns import proc_alive, signal_process, spawn, stop_processes
from podnet.lab.state import LabState, ProcessRecord
from podnet.lab.supervisor import AgentSupervisor, agent_status, plan_restart

NODE = "node-1"


@pytest.fixture
def lab(tmp_path) -> Iterator[tuple[LabState, AgentSupervisor]]:
    names = LabNames("pnt0000-")
    state = LabState.create(str(tmp_path / "lab"), names.prefix)
    entry = supervisor.new_entry({"cmd": ["sleep", "600"], "netns": None, "cgroup": None, "log": None})
    state.set_meta(**{supervisor.META_KEY: {NODE: entry}})
    sup = AgentSupervisor(names, threading.Event(), state=state)  # its steps are run by the tests
    yield state, sup
    stop_processes([(p.pid, p.start_time) for p in state.processes()], timeout=2.0)


def record(state: LabState) -> ProcessRecord:
    return next(p for p in state.processes() if p.name == f"agent-{NODE}")


def status(state: LabState, now: float) -> supervisor.AgentStatus:
    (only,) = agent_status(state, now)
    return only


def kill(rec: ProcessRecord, sig: int = signal.SIGKILL) -> None:
    assert signal_process(rec.pid, rec.start_time, sig)
    deadline = time.monotonic() + 5.0
    while proc_alive(rec.pid, rec.start_time):  # a zombie counts as gone
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_back_off_has_the_crashloop_shape() -> None:
    assert (supervisor.BACKOFF_BASE, supervisor.BACKOFF_CAP, supervisor.BACKOFF_RESET) == (1.0, 30.0, 60.0)
    backoff, waits = 0.0, []
    for _ in range(8):  # exits right after each start
        wait, backoff = plan_restart(backoff, ran_for=0.5)
        waits.append(wait)
    assert waits == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert plan_restart(30.0, ran_for=59.0) == (30.0, 30.0)
    assert plan_restart(30.0, ran_for=60.0) == (0.0, 1.0)  # a long enough run resets it


def test_describe_exit() -> None:
    assert supervisor.describe_exit(-9) == "signal 9 (SIGKILL)"
    assert supervisor.describe_exit(-15) == "signal 15 (SIGTERM)"
    assert supervisor.describe_exit(3) == "exit code 3"
    assert supervisor.describe_exit(None).startswith("unknown")


def test_start_restart_back_off(lab) -> None:
    state, sup = lab
    t0 = time.time()
    sup.step(t0)
    first = record(state)
    assert status(state, t0) == supervisor.AgentStatus(NODE, "running", first.pid, 0, None, None, 0.0, None)
    sup.step(t0 + 0.1)
    assert record(state) == first  # running: left alone

    kill(first)
    sup.step(t0 + 1.0)  # first exit after a start: restarted at once
    second = record(state)
    assert second.pid != first.pid and proc_alive(second.pid, second.start_time)
    now = status(state, t0 + 1.0)
    assert (now.state, now.restarts, now.last_exit, now.backoff) == ("running", 1, "signal 9 (SIGKILL)", 1.0)

    kill(second, signal.SIGTERM)
    sup.step(t0 + 1.5)  # exits again: waits the back-off
    assert record(state) == second
    now = status(state, t0 + 1.5)
    assert (now.state, now.restarts, now.last_exit, now.next_start_in) == (
        "back-off",
        1,
        "signal 15 (SIGTERM)",
        1.0,
    )
    sup.step(t0 + 2.4)
    assert record(state) == second and status(state, t0 + 2.4).state == "back-off"
    sup.step(t0 + 2.6)
    third = record(state)
    assert third.pid != second.pid
    now = status(state, t0 + 2.6)
    assert (now.state, now.restarts, now.backoff) == ("running", 2, 2.0)

    # ran long enough: the back-off starts over
    kill(third)
    sup.step(t0 + 2.6 + supervisor.BACKOFF_RESET)
    now = status(state, t0 + 2.6 + supervisor.BACKOFF_RESET)
    assert (now.state, now.restarts, now.backoff) == ("running", 3, 1.0)


def test_a_held_agent_stays_down_until_released(lab) -> None:
    state, sup = lab
    t0 = time.time()
    sup.step(t0)
    first = record(state)
    assert supervisor.hold(state, NODE)
    kill(first)
    sup.step(t0 + 100.0)
    assert record(state) == first  # not restarted
    now = status(state, t0 + 100.0)
    assert (now.state, now.restarts, now.last_exit) == ("held", 0, "signal 9 (SIGKILL)")

    assert supervisor.release(state, NODE, ["sleep", "601"])
    sup.step(t0 + 100.1)  # started now, no back-off, not a restart, with the new command
    second = record(state)
    assert second.pid != first.pid and second.cmd == ("sleep", "601")
    now = status(state, t0 + 100.1)
    assert (now.state, now.restarts, now.backoff) == ("running", 0, 0.0)
    assert not supervisor.hold(state, "node-9")  # not supervised


def test_exit_code_and_an_agent_it_did_not_start(lab) -> None:
    state, sup = lab
    with state.update() as doc:
        doc["meta"][supervisor.META_KEY][NODE]["spec"]["cmd"] = ["sh", "-c", "exit 3"]
    t0 = time.time()
    sup.step(t0)
    first = record(state)
    os.waitid(os.P_PID, first.pid, os.WEXITED | os.WNOWAIT)  # exited (still a zombie: ours to reap)
    sup.step(t0 + 0.5)
    assert status(state, t0 + 0.5).last_exit == "exit code 3"

    # started by another process (lab up before, a fallback start): its exit status is not ours
    with state.update() as doc:
        doc["meta"][supervisor.META_KEY][NODE]["spec"]["cmd"] = ["sleep", "600"]
    other = spawn(["sleep", "600"])
    state.record_process(ProcessRecord.of(f"agent-{NODE}", other, node=NODE))
    other.stop()
    sup.step(t0 + 100.0)
    now = status(state, t0 + 100.0)
    assert now.last_exit is not None and now.last_exit.startswith("unknown")
    assert now.state == "running" and now.pid != other.pid
