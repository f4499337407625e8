"""The Calico profile's forwarding counters: ``table inet podnet_counters``, what pods' traffic the
node let through, by direction (the Cilium profile counts in its tc programs, ``pn_metrics``)::

    table inet podnet_counters {
        counter forward_egress { }                        # from a local pod (forwarded or to the node)
        counter forward_ingress { }                       # to a local pod
        chain forward { type filter hook forward priority filter + 10; policy accept;
            iifname "cali*" counter name "forward_egress"
            oifname "cali*" counter name "forward_ingress" }
        chain input  { type filter hook input priority filter + 10; policy accept;
            iifname "cali*" counter name "forward_egress" }
        chain output { type filter hook output priority filter + 10; policy accept;
            oifname "cali*" counter name "forward_ingress" }
    }

The chains run after the policy table's (priority ``filter`` and ``filter + 1``): a packet policy
dropped never reaches them, so they count what was forwarded. The table is the agent's own and
outlives policy syncs (the policy table is replaced whole on a full sync, which would reset
counters); :func:`ensure` writes nothing when the kernel's table is already what it renders, creates
what is missing and never resets a counter, so a restarted agent goes on counting where the kernel
is (Prometheus sees no reset) and changes nothing. Bytes are the IP packets'
lengths, as conntrack and nftables count them.
"""

from __future__ import annotations

import json

from podnet.dataplane.errors import DataplaneError
from podnet.dataplane.netns import run_in_netns
from podnet.dataplane.nft import NFT_TIMEOUT, kernel_matches, run_nft

TABLE = "podnet_counters"
QUALIFIED = f"inet {TABLE}"
POD_IFNAMES = "cali*"
EGRESS, INGRESS = "forward_egress", "forward_ingress"
_CHAINS = {
    "forward": (
        "type filter hook forward priority filter + 10; policy accept;",
        (
            f'iifname "{POD_IFNAMES}" counter name "{EGRESS}"',
            f'oifname "{POD_IFNAMES}" counter name "{INGRESS}"',
        ),
    ),
    "input": (
        "type filter hook input priority filter + 10; policy accept;",
        (f'iifname "{POD_IFNAMES}" counter name "{EGRESS}"',),
    ),
    "output": (
        "type filter hook output priority filter + 10; policy accept;",
        (f'oifname "{POD_IFNAMES}" counter name "{INGRESS}"',),
    ),
}


def render() -> str:
    """One transaction: the table and counters added if missing (``add`` keeps existing counters'
    values), each chain emptied and refilled (its rules are the same every time)."""
    out = [f"add table {QUALIFIED}"]
    out += [f"add counter {QUALIFIED} {name}" for name in (EGRESS, INGRESS)]
    for chain, (base, rules) in _CHAINS.items():
        out.append(f"add chain {QUALIFIED} {chain} {{ {base} }}")
        out.append(f"flush chain {QUALIFIED} {chain}")
        out += [f"add rule {QUALIFIED} {chain} {rule}" for rule in rules]
    return "\n".join(out) + "\n"


def ensure(netns: str | None = None) -> None:
    """The table as :func:`render` makes it; nothing is written when the kernel holds it already
    (a restarted agent must not touch the kernel: the fault suite watches for that)."""
    script = render()
    if kernel_matches(script, "inet", TABLE, netns):
        return
    run_nft(script, netns, "forwarding counters")


def remove(netns: str | None = None) -> None:
    """Delete the table (a node leaving the Calico profile)."""
    run_nft(f"add table {QUALIFIED}\ndelete table {QUALIFIED}\n", netns, "forwarding counters removal")


def read(netns: str | None = None) -> dict[str, tuple[int, int]]:
    """``{"egress": (packets, bytes), "ingress": (...)}``; empty when the table is absent."""
    proc = run_in_netns(netns, ["nft", "-j", "list", "counters", "table", "inet", TABLE], timeout=NFT_TIMEOUT)
    if proc.returncode != 0:
        if "No such file" in proc.stderr:
            return {}
        raise DataplaneError(f"nft cannot list the forwarding counters: {proc.stderr.strip()}")
    out = {}
    for item in json.loads(proc.stdout).get("nftables", []):
        counter = item.get("counter")
        if counter and counter.get("name") in (EGRESS, INGRESS):
            direction = "egress" if counter["name"] == EGRESS else "ingress"
            out[direction] = (int(counter.get("packets", 0)), int(counter.get("bytes", 0)))
    return out
