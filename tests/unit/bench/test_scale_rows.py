"""The scale table: a row's verdict against its goal, and how the table shows it."""

from __future__ import annotations

from podnet.bench.scale import Row, render
from podnet.bench.scale_cni import rows


def test_a_row_is_met_only_when_its_value_is_on_the_goals_side() -> None:
    assert Row("p99", 249.0, "ms", 250.0).met is True
    assert Row("p99", 251.0, "ms", 250.0).met is False
    assert Row("rate", 0.96, "", 0.95, op=">=").met is True
    assert Row("rate", 0.94, "", 0.95, op=">=").met is False
    assert Row("no goal", 1.0).met is None and Row("not measured", None, goal=1.0).met is None


def test_render_shows_goal_value_and_verdict() -> None:
    doc = {"order": ["cni"], "cni": {"rows": [Row("ADD p99", 427.0, "ms", 250.0, note="why").to_dict()]}}
    text = render(doc)
    assert "<= 250 ms" in text and "427 ms" in text and "NO" in text and "why" in text


def test_cni_rows_carry_the_issue_goals() -> None:
    summary = {"n": 3, "p50_ms": 20.0, "p90_ms": 25.0, "p99_ms": 40.0, "max_ms": 40.0, "mean_ms": 21.0}
    level = {
        "add_chain": summary,
        "add_podnet": summary,
        "del_chain": summary,
        "add_cpu_ms": {"agent": 5.0, "etcd": 2.0, "plugins": 20.0, "runtime": 1.0},
    }
    out = {r.figure: r for r in rows("calico", {1: level, 10: level, 50: level})}
    assert out["calico: ADD, 1 at once, p50"].goal == 30.0 and out["calico: ADD, 1 at once, p50"].met
    assert out["calico: ADD, 1 at once, p99"].goal == 60.0
    assert out["calico: ADD, 10 at once, p99"].goal == 250.0
    assert out["calico: ADD, 50 at once, p99"].goal == 500.0
    assert out["calico: CPU per ADD @10"].value == 28.0


def test_etcd_rows_from_a_scenario_report() -> None:
    from podnet.bench.scale_etcd import rows as etcd_rows

    report = {
        "members": 3,
        "writes": {
            "acknowledged": 100,
            "unknown_outcome": 1,
            "lost_per_member": {"etcd": [], "etcd-2": ["k7"]},
        },
        "policy_enforced_seconds": 0.4,
        "ipam": {"duplicates": [], "leaks_before_gc": [], "pods_done": 30},
        "leader_seconds_into_fault": 1.2,
        "problems": ["etcd-2 lost 1 acknowledged write"],
    }
    out = {r.figure: r for r in etcd_rows({"etcd-leader-kill": report})}
    lost = out["etcd-leader-kill: acknowledged writes lost"]
    assert lost.value == 1 and lost.met is False  # one member missing one write is a loss
    assert out["etcd-leader-kill: policy enforced after its write"].met is True
    assert out["etcd-leader-kill: promises broken"].met is False
    assert "etcd-leader-kill: member healthy again after the heal" not in out
