"""Output formats of ``podnet get``: a table (plain or ``wide``), YAML and JSON; and
:func:`align`, the one column aligner of every CLI table (``get``, ``ipam show``, ``bpf list``,
``bpf lb list``, ``node status``).

YAML/JSON of one named object prints that object; of several, a ``kind: List`` like kubectl,
which ``podnet apply -f`` reads back. Table columns per kind are defined in ``COLUMNS``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

Column = tuple[str, Callable[[dict], Any], bool]  # header, value from the object dict, wide-only


def _get(path: str) -> Callable[[dict], Any]:
    def value(doc: dict) -> Any:
        cur: Any = doc
        for part in path.split("."):
            if not isinstance(cur, dict):
                return None
            cur = cur.get(part)
        return cur

    return value


def age(doc: dict) -> str:
    stamp = (doc.get("metadata") or {}).get("creationTimestamp")
    if not stamp:
        return "<unknown>"
    then = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    seconds = int((datetime.now(UTC) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def _labels(doc: dict) -> str:
    labels = (doc.get("metadata") or {}).get("labels") or {}
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "<none>"


def _ports(doc: dict) -> str:
    ports = (doc.get("spec") or {}).get("ports") or []
    out = []
    for p in ports:
        node = f":{p['nodePort']}" if p.get("nodePort") else ""
        out.append(f"{p.get('port')}{node}/{p.get('protocol', 'TCP')}")
    return ",".join(out) or "<none>"


NAME: Column = ("NAME", _get("metadata.name"), False)
AGE: Column = ("AGE", age, False)

COLUMNS: dict[str, list[Column]] = {
    "IPPool": [
        NAME,
        ("CIDR", _get("spec.cidr"), False),
        ("NAT", _get("spec.natOutgoing"), True),
        ("IPIPMODE", _get("spec.ipipMode"), True),
        ("VXLANMODE", _get("spec.vxlanMode"), True),
        ("DISABLED", _get("spec.disabled"), True),
        ("BLOCKSIZE", _get("spec.blockSize"), True),
        ("SELECTOR", _get("spec.nodeSelector"), False),
    ],
    "BGPPeer": [
        NAME,
        ("PEERIP", _get("spec.peerIP"), False),
        (
            "NODE",
            lambda d: (
                (d.get("spec") or {}).get("node") or (d.get("spec") or {}).get("nodeSelector") or "(global)"
            ),
            False,
        ),
        ("ASN", _get("spec.asNumber"), False),
    ],
    "BGPConfiguration": [
        NAME,
        ("LOGSEVERITY", _get("spec.logSeverityScreen"), False),
        ("MESHENABLED", _get("spec.nodeToNodeMeshEnabled"), False),
        ("ASNUMBER", _get("spec.asNumber"), False),
    ],
    "Pod": [
        NAME,
        ("STATUS", lambda d: _get("status.phase")(d) or "Pending", False),
        ("IP", lambda d: _get("status.podIP")(d) or "<none>", False),
        ("NODE", lambda d: _get("spec.nodeName")(d) or "<none>", False),
        AGE,
        ("LABELS", _labels, True),
    ],
    "Service": [
        NAME,
        ("TYPE", _get("spec.type"), False),
        ("CLUSTER-IP", lambda d: _get("spec.clusterIP")(d) or "<pending>", False),
        ("PORT(S)", _ports, False),
        AGE,
        (
            "SELECTOR",
            lambda d: (
                ",".join(f"{k}={v}" for k, v in ((d.get("spec") or {}).get("selector") or {}).items())
                or "<none>"
            ),
            True,
        ),
    ],
    "Node": [NAME, AGE, ("LABELS", _labels, True)],
    "Namespace": [NAME, AGE, ("LABELS", _labels, True)],
    "NetworkPolicy": [
        NAME,
        ("POD-SELECTOR", lambda d: json.dumps(_get("spec.podSelector")(d) or {}), False),
        AGE,
    ],
    # The CRDs' printer columns (kubectl shows them, and no AGE unless a CRD lists it).
    "Tier": [
        NAME,
        ("ORDER", _get("spec.order"), False),
        ("DEFAULTACTION", _get("spec.defaultAction"), False),
    ],
    "AdminNetworkPolicy": [NAME, ("PRIORITY", _get("spec.priority"), False), AGE],
    "BaselineAdminNetworkPolicy": [NAME, AGE],
    "ClusterNetworkPolicy": [
        NAME,
        ("TIER", _get("spec.tier"), False),
        ("PRIORITY", _get("spec.priority"), False),
        AGE,
    ],
    "ServiceAccount": [NAME, ("SECRETS", lambda d: len(d.get("secrets") or []), False), AGE],
}


def table(docs: Sequence[dict], kind: str, *, wide: bool, namespaced: bool, all_namespaces: bool) -> str:
    columns = COLUMNS.get(kind, [NAME, AGE])
    columns = [c for c in columns if wide or not c[2]]
    if namespaced and all_namespaces:
        columns = [("NAMESPACE", _get("metadata.namespace"), False), *columns]
    rows = [[c[0] for c in columns]]
    for doc in docs:
        rows.append(["" if (v := c[1](doc)) is None else _cell(v) for c in columns])
    return "\n".join(align(rows))


def align(rows: Sequence[Sequence[str]], *, gap: str = "   ", box: bool = False) -> list[str]:
    """``rows`` (the first one is the header) as lines, each column padded to its widest cell.

    Plain: cells joined by ``gap``, trailing spaces stripped (kubectl's and calicoctl's lists).
    ``box``: calicoctl's go-pretty box (``| cell | cell |`` between ``+---+`` rules, the header
    centred, the extra space of an odd gap on its right).
    """
    if not rows:
        return []
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    if not box:
        return [gap.join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]

    def line(cells: Sequence[str], pad: Callable[[str, int], str]) -> str:
        return "| " + " | ".join(pad(c, w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    header, *body = rows
    return [rule, line(header, _centre), rule, *(line(r, str.ljust) for r in body), rule]


def _centre(text: str, width: int) -> str:
    left = (width - len(text)) // 2  # str.center puts the odd space on the left
    return " " * left + text + " " * (width - len(text) - left)


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def as_list(docs: Sequence[dict]) -> dict:
    return {"apiVersion": "v1", "kind": "List", "items": list(docs), "metadata": {"resourceVersion": ""}}


def render(docs: Sequence[dict], fmt: str, *, single: bool) -> str:
    body: Any = docs[0] if single and len(docs) == 1 else as_list(docs)
    if fmt == "json":
        return json.dumps(body, indent=2)
    import yaml

    return yaml.safe_dump(body, sort_keys=False, default_flow_style=False).rstrip("\n")
