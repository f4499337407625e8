"""Scale section ``etcd``: the datastore as a 3-member cluster, a member away under load.

    python -m podnet.bench.scale_etcd [--quick] [-o json]

A 3-node lab with ``--etcd-members 3``; each member scenario of :mod:`podnet.lab.etcd_chaos`
(a follower killed, the leader killed, a member partitioned), each with numbered writes through the
CLI's client, a NetworkPolicy written and probed with real traffic, and IPAM under fire while the
member is away. Goals (issue 18): no acknowledged write lost on any member, agents carry on within
seconds (the policy enforced within ``ENFORCE_WITHIN`` s of its acknowledged write), IPAM with 0
duplicates and 0 leaks; and how long the cluster took to have a leader again / the member back.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from podnet.bench.scale import Row

PODS = {False: 60, True: 30}  # IPAM under fire per scenario (quick: True)


def measure(quick: bool, step: Callable[[str], None]) -> dict[str, dict]:
    import secrets

    from podnet.datastore.etcd import EtcdDatastore
    from podnet.datastore.resources import ResourceStore
    from podnet.lab import cluster, etcd_chaos
    from podnet.lab.chaos import ChaosLab
    from podnet.lab.naming import LabNames
    from podnet.lab.topology import LabSpec, random_underlay

    names = LabNames(f"pnet{secrets.token_hex(2)}-")
    info = cluster.up(LabSpec(nodes=3, etcd_members=3, dns=False, underlay=random_underlay()), names)
    try:
        lab = ChaosLab(names, ResourceStore(EtcdDatastore(info.etcd_endpoint)))
        reports = {}
        for scenario in etcd_chaos.SCENARIOS:
            step(f"etcd: {scenario}")
            report = etcd_chaos.run_scenario(lab, scenario, pods=PODS[quick], dwell=1.0 if quick else 2.0)
            report["problems"] = etcd_chaos.problems(report)
            reports[scenario] = report
        return reports
    finally:
        cluster.remove(names)


def rows(reports: dict[str, dict]) -> list[Row]:
    from podnet.lab.etcd_chaos import ENFORCE_WITHIN

    out = []
    for scenario, r in reports.items():
        w, ipam = r["writes"], r["ipam"]
        lost = sum(len(v) for v in w["lost_per_member"].values())
        out.append(
            Row(
                f"{scenario}: acknowledged writes lost",
                lost,
                "",
                0,
                note=f"of {w['acknowledged']} acknowledged, on {r['members']} members"
                f" ({w['unknown_outcome']} of unknown outcome)",
            )
        )
        out.append(
            Row(
                f"{scenario}: policy enforced after its write",
                r.get("policy_enforced_seconds"),
                "s",
                ENFORCE_WITHIN,
            )
        )
        out.append(
            Row(
                f"{scenario}: IPAM duplicates",
                len(ipam["duplicates"]),
                "",
                0,
                note=f"{ipam['pods_done']} pods",
            )
        )
        out.append(Row(f"{scenario}: IPAM leaks", len(ipam["leaks_before_gc"]), "", 0))
        if r.get("leader_seconds_into_fault") is not None:
            out.append(
                Row(
                    f"{scenario}: a leader among the others, into the fault",
                    r["leader_seconds_into_fault"],
                    "s",
                )
            )
        if r.get("member_back_seconds") is not None:
            out.append(Row(f"{scenario}: member healthy again after the heal", r["member_back_seconds"], "s"))
        if r["problems"]:
            out.append(
                Row(f"{scenario}: promises broken", len(r["problems"]), "", 0, note="; ".join(r["problems"]))
            )
    return out


def run(quick: bool = False, step: Callable[[str], None] = lambda text: None) -> dict:
    reports = measure(quick, step)
    return {"rows": rows(reports), "samples": reports}


def main(argv: list[str] | None = None) -> int:
    from podnet.bench.scale import render

    ap = argparse.ArgumentParser(
        prog="python -m podnet.bench.scale_etcd", description=__doc__.splitlines()[0]
    )
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("-o", "--output", choices=["table", "json"], default="table")
    args = ap.parse_args(argv)
    out = run(args.quick, step=lambda text: print(text, file=sys.stderr, flush=True))
    doc = {"order": ["etcd"], "etcd": {"rows": [r.to_dict() for r in out["rows"]], "samples": out["samples"]}}
    print(json.dumps(doc, indent=1, default=str) if args.output == "json" else render(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
