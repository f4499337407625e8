"""sock_lb.py without root: map encodings (mirroring bpf/sock_lb.c), the plan -> maps diff, the CLI table."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from podnet.calc.services import CLUSTER_IP, EXTERNAL_IP, NODE_PORT, Backend, Frontend, ServicePlan
from podnet.cli import cmd_bpf
from podnet.dataplane import sock_lb
from podnet.dataplane.sock_lb import DesiredService, MapState, Op, assign_slots, plan_sync


def B(ip: str, port: int = 8080, node: str = "n1") -> Backend:
    return Backend(ip, port, node, f"default/{ip}")


def fe(ip, port=80, proto="TCP", backends=(), kind=CLUSTER_IP, affinity=0, service="default/web"):
    return Frontend(service, "", kind, ip, port, proto, tuple(backends), affinity)


# ---------------------------------------------------------------------- encodings


def test_service_key_layout_matches_the_c_struct():
    raw = sock_lb.encode_service_key("10.96.0.10", 80, "TCP")
    assert len(raw) == 8  # struct svc_key {u32 vip; u16 port; u8 proto; u8 pad}
    assert raw == bytes([10, 96, 0, 10, 0, 80, 6, 0])  # vip and port in network order
    assert sock_lb.decode_service_key(raw) == ("10.96.0.10", 80, "TCP")
    assert sock_lb.encode_service_key("10.96.0.10", 53, "UDP")[6] == 17


def test_service_value_layout_matches_the_c_struct():
    raw = sock_lb.encode_service_value(7, 3, 10800)
    assert len(raw) == 12  # struct svc_value {u32 id; u16 count; u16 pad; u32 affinity_seconds}
    assert raw == struct.pack("=IHHI", 7, 3, 0, 10800)
    assert sock_lb.decode_service_value(raw) == (7, 3, 10800)


def test_backend_key_and_value_layouts():
    assert sock_lb.encode_backend_key(7, 2) == struct.pack("=II", 7, 2)
    assert sock_lb.decode_backend_key(struct.pack("=II", 7, 2)) == (7, 2)
    raw = sock_lb.encode_backend_value("10.244.1.5", 8080)
    assert raw == bytes([10, 244, 1, 5, 0x1F, 0x90, 0, 0])
    assert sock_lb.decode_backend_value(raw) == ("10.244.1.5", 8080)


def test_stats_names_match_the_enum_of_the_c_source():
    source = Path(sock_lb.bpf.source_path(sock_lb.SOURCE)).read_text()
    enum = source[source.index("STAT_LB_CONNECT") : source.index("STAT_MAX")]
    names = [n.strip().removeprefix("STAT_").lower() for n in enum.split(",") if n.strip()]
    assert tuple(names) == sock_lb.STATS
    for name in (*sock_lb.MAPS, *sock_lb.HOOKS):
        assert name in source and len(name) < 16  # BPF_OBJ_NAME_LEN
    for hook in sock_lb.HOOKS.values():
        assert f'SEC("cgroup/{hook}")' in source


# ---------------------------------------------------------------------- plan -> desired


def test_desired_services_takes_clusterip_and_externalip_and_skips_the_rest():
    plan = ServicePlan(
        node="n1",
        frontends=(
            fe("10.96.0.10", backends=[B("10.244.1.5"), B("10.244.2.5"), B("10.244.1.5")]),
            fe("192.0.2.7", kind=EXTERNAL_IP, backends=[B("10.244.1.5")]),
            fe(None, port=30080, kind=NODE_PORT, backends=[B("10.244.1.5")]),
            fe("10.96.0.11", proto="SCTP", backends=[B("10.244.1.5")]),
            fe("fd00::10", backends=[B("10.244.1.5")]),
            fe("10.96.0.12", proto="UDP", port=53, affinity=30),
            fe("10.96.0.10", backends=[B("10.244.9.9")], service="default/dup"),
        ),
    )
    desired, skipped = sock_lb.desired_services(plan)
    assert desired == {
        ("10.96.0.10", 80, "TCP"): DesiredService(
            (("10.244.1.5", 8080), ("10.244.2.5", 8080)), 0, "default/web:80"
        ),
        ("192.0.2.7", 80, "TCP"): DesiredService((("10.244.1.5", 8080),), 0, "default/web:80"),
        ("10.96.0.12", 53, "UDP"): DesiredService((), 30, "default/web:53"),
    }
    reasons = " ".join(skipped.values())
    assert "SCTP" in reasons and "IPv4" in reasons and "already default/web" in reasons
    assert not any("NodePort" in label for label in skipped)  # NodePort is not ours: silently skipped


# ---------------------------------------------------------------------- slots


A, C, D, E = ("10.0.0.1", 80), ("10.0.0.3", 80), ("10.0.0.4", 80), ("10.0.0.5", 80)


def test_assign_slots_keeps_staying_backends_in_place():
    assert assign_slots({}, [A, C, D]) == {1: A, 2: C, 3: D}
    assert assign_slots({1: A, 2: C, 3: D}, [A, D, E]) == {1: A, 2: E, 3: D}  # C's slot refilled
    assert assign_slots({1: A, 2: C, 3: D}, [A, D]) == {1: A, 2: D}  # D moves into the hole
    assert assign_slots({1: A, 2: C}, [C, A, D]) == {1: A, 2: C, 3: D}
    assert assign_slots({1: A, 2: C}, []) == {}


# ---------------------------------------------------------------------- diff


def kinds(ops):
    return [op.kind for op in ops]


def test_new_service_writes_backends_then_the_service():
    plan = plan_sync(MapState(), {("10.96.0.10", 80, "TCP"): DesiredService((A, C), 0)})
    assert kinds(plan.ops) == ["put_backend", "put_backend", "put_service"]
    assert plan.ops[-1] == Op("put_service", key=("10.96.0.10", 80, "TCP"), id=1, count=2)
    assert plan.summary()["services_added"] == 1 and plan.summary()["backends_written"] == 2


def test_unchanged_state_gives_no_op():
    key = ("10.96.0.10", 80, "TCP")
    current = MapState({key: (4, 2, 30)}, {4: {1: A, 2: C}})
    assert plan_sync(current, {key: DesiredService((A, C), 30)}).ops == ()
    assert plan_sync(current, {key: DesiredService((C, A), 30)}).ops == ()  # order does not matter


def test_backend_change_writes_only_that_service_and_orders_writes_around_the_count():
    web, dns = ("10.96.0.10", 80, "TCP"), ("10.96.0.53", 53, "UDP")
    current = MapState({web: (1, 3, 0), dns: (2, 1, 0)}, {1: {1: A, 2: C, 3: D}, 2: {1: A}})
    # shrink: C leaves, D moves into slot 2, the count drops, then slot 3 goes
    plan = plan_sync(current, {web: DesiredService((A, D), 0), dns: DesiredService((A,), 0)})
    assert plan.ops == (
        Op("put_backend", id=1, slot=2, addr=D),
        Op("put_service", key=web, id=1, count=2),
        Op("del_backend", id=1, slot=3),
    )
    assert plan.updated == 1 and plan.added == 0
    # grow: the new slot first, then the count
    plan = plan_sync(current, {web: DesiredService((A, C, D, E), 0), dns: DesiredService((A,), 0)})
    assert plan.ops == (Op("put_backend", id=1, slot=4, addr=E), Op("put_service", key=web, id=1, count=4))
    # replace in place: same count, only the slot
    plan = plan_sync(current, {web: DesiredService((A, C, E), 0), dns: DesiredService((A,), 0)})
    assert plan.ops == (Op("put_backend", id=1, slot=3, addr=E),)
    assert plan.updated == 1


def test_every_slot_below_the_count_is_written_before_a_connect_can_read_it():
    """Replay the ops: after each one, every slot 1..count of every service holds a backend."""
    key = ("10.96.0.10", 80, "TCP")
    cases = [((A, C, D), (E,)), ((A,), (C, D, E)), ((A, C), ()), ((), (A, C)), ((A, C, D), (D, C, A))]
    for before, after in cases:
        current = MapState({key: (1, len(before), 0)}, {1: dict(enumerate(before, 1))})
        services = dict(current.services)
        backends = {1: dict(current.backends[1])}
        for op in plan_sync(current, {key: DesiredService(after, 0)}).ops:
            if op.kind == "put_backend":
                backends.setdefault(op.id, {})[op.slot] = op.addr
            elif op.kind == "put_service":
                services[op.key] = (op.id, op.count, op.affinity_seconds)
            elif op.kind == "del_backend":
                backends[op.id].pop(op.slot)
            ident, count, _ = services[key]
            assert all(s in backends.get(ident, {}) for s in range(1, count + 1)), (before, after, op)
        assert services[key][1] == len(after)
        assert set(backends[1].values()) == set(after) and set(backends[1]) == set(range(1, len(after) + 1))


def test_affinity_change_rewrites_only_the_service_entry():
    key = ("10.96.0.10", 80, "TCP")
    plan = plan_sync(MapState({key: (3, 1, 0)}, {3: {1: A}}), {key: DesiredService((A,), 10800)})
    assert plan.ops == (Op("put_service", key=key, id=3, count=1, affinity_seconds=10800),)


def test_deleted_service_goes_before_its_backends_and_orphans_are_collected():
    gone, stays = ("10.96.0.9", 80, "TCP"), ("10.96.0.10", 80, "TCP")
    current = MapState(
        {gone: (1, 2, 0), stays: (2, 1, 0)},
        {1: {1: A, 2: C}, 2: {1: A, 5: D}, 9: {1: E}},  # slot 5 beyond the count, id 9 of no service
    )
    plan = plan_sync(current, {stays: DesiredService((A,), 0)})
    assert plan.ops == (
        Op("del_backend", id=2, slot=5),
        Op("del_service", key=gone, id=1),
        Op("del_backend", id=1, slot=1),
        Op("del_backend", id=1, slot=2),
        Op("del_backend", id=9, slot=1),
    )
    assert plan.deleted == 1


def test_new_ids_never_reuse_an_id_still_in_the_maps():
    gone, new = ("10.96.0.9", 80, "TCP"), ("10.96.0.20", 80, "TCP")
    current = MapState({gone: (1, 1, 0)}, {1: {1: A}, 2: {1: C}})
    plan = plan_sync(current, {new: DesiredService((D,), 0)})
    put = [op for op in plan.ops if op.kind == "put_service"]
    assert put == [Op("put_service", key=new, id=3, count=1)]
    assert plan.ops.index(put[0]) < plan.ops.index(Op("del_service", key=gone, id=1))


def test_no_backend_service_is_kept_with_count_zero():
    key = ("10.96.0.10", 80, "TCP")
    plan = plan_sync(MapState({key: (1, 2, 0)}, {1: {1: A, 2: C}}), {key: DesiredService((), 0)})
    assert plan.ops == (
        Op("put_service", key=key, id=1, count=0),
        Op("del_backend", id=1, slot=1),
        Op("del_backend", id=1, slot=2),
    )


def test_a_thousand_services_plan_quickly_and_resync_is_empty():
    desired = {
        (f"10.96.{i // 250}.{i % 250 + 1}", 80, "TCP"): DesiredService(
            tuple((f"10.244.{i % 200}.{j + 1}", 8080) for j in range(3)), 0
        )
        for i in range(1000)
    }
    plan = plan_sync(MapState(), desired)
    assert plan.summary()["services_added"] == 1000 and plan.summary()["backends_written"] == 3000
    state = sock_lb.apply_ops(MapState(), plan.ops)
    assert len({v[0] for v in state.services.values()}) == 1000  # distinct ids
    assert plan_sync(state, desired).ops == ()


def test_apply_ops_replays_a_plan():
    key = ("10.96.0.10", 80, "TCP")
    before = MapState(
        {key: (1, 3, 0), ("10.96.0.9", 80, "TCP"): (2, 1, 0)}, {1: {1: A, 2: C, 3: D}, 2: {1: A}}
    )
    desired = {key: DesiredService((A, E), 5)}
    after = sock_lb.apply_ops(before, plan_sync(before, desired).ops)
    assert after == MapState({key: (1, 2, 5)}, {1: {1: A, 2: E}})
    assert before.backends[1] == {1: A, 2: C, 3: D}  # not modified in place
    assert plan_sync(after, desired).ops == ()


def test_sync_reads_the_maps_only_when_it_must(monkeypatch):
    reads, applied = [], []
    monkeypatch.setattr(sock_lb, "read_state", lambda pin_dir: reads.append(pin_dir) or MapState())
    lb = sock_lb.SocketLB("/nonexistent/cgroup", "/pins", "/cache")

    def apply(plan):
        applied.append(plan)
        if len(applied) == 3:
            raise sock_lb.SockLBError("update map: boom")
        return plan.summary()

    monkeypatch.setattr(lb, "_apply", apply)
    one = ServicePlan(node="n1", frontends=(fe("10.96.0.10", backends=[B("10.244.1.5")]),))
    two = ServicePlan(node="n1", frontends=(fe("10.96.0.10", backends=[B("10.244.1.5"), B("10.244.1.6")]),))
    assert lb.sync(one)["services_added"] == 1 and len(reads) == 1
    assert lb.sync(one)["backends_written"] == 0 and len(reads) == 1  # from the remembered state
    with pytest.raises(sock_lb.SockLBError):
        lb.sync(two)
    lb.sync(two)  # after a failure: read the maps again (a full resync)
    assert len(reads) == 2
    lb.sync(two, full=True)
    assert len(reads) == 3


# ---------------------------------------------------------------------- reading pins, CLI


def test_read_state_names_the_missing_pins(tmp_path):
    with pytest.raises(sock_lb.SockLBError) as info:
        sock_lb.read_state(str(tmp_path))
    assert str(tmp_path) in info.value.message and "agent" in (info.value.hint or "")


def test_lb_table_like_cilium_bpf_lb_list():
    services = [
        {
            "service": "10.96.0.10:80/TCP",
            "id": 1,
            "affinity_seconds": 0,
            "backends": [
                {"slot": 1, "address": "10.244.1.5:8080"},
                {"slot": 2, "address": "10.244.2.5:8080"},
            ],
        },
        {"service": "10.96.0.11:53/UDP", "id": 2, "affinity_seconds": 30, "backends": []},
    ]
    assert cmd_bpf.render_lb_table(services) == (
        "SERVICE ADDRESS    BACKEND ADDRESS (ID) (SLOT)\n"
        "10.96.0.10:80/TCP  0.0.0.0:0 (1) (0) [2 backends]\n"
        "                   10.244.1.5:8080 (1) (1)\n"
        "                   10.244.2.5:8080 (1) (2)\n"
        "10.96.0.11:53/UDP  0.0.0.0:0 (2) (0) [no backend: refused, affinity 30s]\n"
    )
    assert cmd_bpf.render_lb_table([]).startswith("no services")


def test_lb_pin_dir_by_node_and_override(monkeypatch):
    monkeypatch.setenv("PODNET_LAB_PREFIX", "pn-")
    from podnet.lab.cluster import lab_names

    assert cmd_bpf.lb_pin_dir("node-1") == f"{lab_names().state_dir}/bpf/node-1/sock_lb"
    assert cmd_bpf.lb_pin_dir("node-1", "/x/y") == "/x/y"
    assert cmd_bpf.lb_pin_dir(None).startswith("/sys/fs/bpf/podnet/") and cmd_bpf.lb_pin_dir(None).endswith(
        "/sock_lb"
    )


def test_cli_parses_lb_list():
    import argparse

    parser = argparse.ArgumentParser()
    cmd_bpf.add_arguments(parser)
    args = parser.parse_args(["lb", "list", "--node", "node-2", "-o", "json"])
    assert (args.bpf_object, args.bpf_verb, args.node, args.output) == ("lb", "list", "node-2", "json")


def test_desired_services_memo_and_an_unchanged_service_costs_no_write():
    from podnet.calc.memo import ObjectMemo
    from podnet.calc.services import CLUSTER_IP, Backend, Frontend, ServicePlan
    from podnet.dataplane.sock_lb import MapState, apply_ops, desired_services, plan_sync

    def frontend(ip: str, *backends: str) -> Frontend:
        return Frontend(
            "ns/s", "", CLUSTER_IP, ip, 80, "TCP", tuple(Backend(b, 8080, "n", "ns/p") for b in backends)
        )

    memo: ObjectMemo = ObjectMemo()
    one, two = frontend("10.96.0.1", "10.0.0.1", "10.0.0.2"), frontend("10.96.0.2", "10.0.0.3")
    plan = ServicePlan(node="n", frontends=(one, two))
    desired, _ = desired_services(plan, memo)
    assert desired == desired_services(plan)[0]
    state = apply_ops(MapState(), plan_sync(MapState(), desired).ops)
    assert plan_sync(state, desired_services(plan, memo)[0]).ops == ()
    grown = ServicePlan(node="n", frontends=(one, frontend("10.96.0.2", "10.0.0.3", "10.0.0.4")))
    ops = plan_sync(state, desired_services(grown, memo)[0]).ops
    assert [op.kind for op in ops] == ["put_backend", "put_service"]
    assert len(memo) == 2
