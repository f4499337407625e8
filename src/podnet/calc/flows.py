"""Flows: one shape for what both profiles saw, as ``hubble observe -o json`` prints it.

The agent's event ring holds records of five kinds (``type``), each from its own source:

    trace            a new connection the node forwarded (Cilium: the tc programs' trace event at
                     conntrack create; Calico: conntrack's NEW event), with its bytes and packets
                     both ways once conntrack reports them (``traffic``)
    drop             a packet policy dropped (Cilium: a drop event; Calico: NFLOG of the policy table)
    policy-verdict   which rule allowed a new connection (Cilium, while someone asks)
    log              a packet a Calico ``Log`` rule logged (the connection went on: verdict AUDIT)
    l7               an HTTP request or a DNS lookup a proxy handled

:func:`flow_of` turns one record into a flow, Hubble's field names where the meaning is the same::

    {"time": "...Z", "node_name": "node-1",
     "flow": {"time", "node_name", "verdict": FORWARDED|DROPPED|REDIRECTED|AUDIT,
              "drop_reason": 133, "drop_reason_desc": "POLICY_DENIED",
              "Type": "L3_L4"|"L7", "event_type": {"type": "trace"|"drop"|...},
              "IP": {"source", "destination", "ipVersion": "IPv4"},
              "l4": {"TCP": {"source_port", "destination_port", "flags": {"SYN": true}}},
              "source": {"namespace", "pod_name", "labels": ["k8s:app=web", ...], "identity",
                         "workloads": [{"name", "kind"}]},     (an outside address: {"labels":
              "destination": {...},                             ["reserved:world"]} and no pod)
              "destination_service": {"namespace", "name"},
              "traffic_direction": "INGRESS"|"EGRESS"|"TRAFFIC_DIRECTION_UNKNOWN", "is_reply": false,
              "policies": [{"kind", "namespace", "name", "tier", "rule"}],   (what decided)
              "reason": "...", "traffic": {"packets_sent", "bytes_sent", "packets_received",
                                           "bytes_received"},
              "l7": {"type": "RESPONSE", "latency_ns", "http": {"code", "method", "url"}} or
                    {"type": "RESPONSE", "dns": {"query", "ips", "rcode", "qtypes"}},
              "Summary": "..."}}

``source``/``destination`` are the connection's initiator and responder (``is_reply`` false: one
record per connection, never per packet). Pods are described by ``describe(key)`` (the agent's
watch cache: labels as Cilium writes them, ``k8s:`` prefixed, and the workload: the pod's ``app``
label, else its name). Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

#: Cilium drop reason -> Hubble's ``drop_reason_desc`` (podnet's own reasons named alike)
DROP_REASON_NAMES = {
    130: "INVALID_SOURCE_MAC",
    132: "INVALID_SOURCE_IP",
    133: "POLICY_DENIED",
    134: "INVALID_PACKET_DROPPED",
    139: "UNSUPPORTED_L3_PROTOCOL",
    155: "CT_MAP_INSERTION_FAILED",
    175: "FRAG_NOT_FOUND",
    181: "POLICY_DENY",
    203: "ENDPOINT_NOT_READY",
    230: "NODE_CONTROL_PLANE",
    231: "NO_PROXY_PATH",
}
#: nftables drop prefix kind (agent.drops) -> the Cilium reason number meaning the same
PREFIX_REASONS = {"pnd": 133, "pnx": 181, "pne": 181, "pnc": 230, "pnr": 203}
TCP_FLAG_BITS = (("FIN", 0x01), ("SYN", 0x02), ("RST", 0x04), ("PSH", 0x08), ("ACK", 0x10), ("URG", 0x20))
EVENT_TYPES = ("trace", "drop", "policy-verdict", "log", "l7")
VERDICTS = ("FORWARDED", "DROPPED", "REDIRECTED", "AUDIT")
WORLD = {"labels": ["reserved:world"]}

Describe = Callable[[str], Mapping[str, Any] | None]


def tcp_flags(bits: int) -> dict[str, bool]:
    """``{"SYN": True, "ACK": True}`` of the TCP header's flag bits."""
    return {name: True for name, bit in TCP_FLAG_BITS if bits & bit}


def verdict_of(record: Mapping[str, Any]) -> str:
    kind = record.get("type", "drop")
    if kind == "drop":
        return "DROPPED"
    if kind == "log":
        return "AUDIT"
    verdict = str(record.get("verdict", "FORWARDED"))
    if verdict == "DENIED":
        return "DROPPED"  # an L7 request the proxy refused (403 / REFUSED)
    if verdict == "REDIRECTED":
        return "REDIRECTED"
    return "FORWARDED"


def drop_reason_of(record: Mapping[str, Any]) -> int | None:
    """The Cilium reason number of a drop (an nftables drop: the number meaning the same)."""
    if record.get("type", "drop") != "drop":
        return None
    if record.get("dropReason") is not None:
        return int(record["dropReason"])
    kind = str(record.get("prefix", "")).split(":", 1)[0]
    if kind == "pns":
        return 130 if str(record.get("prefix", "")).endswith(":mac") else 132
    return PREFIX_REASONS.get(kind)


def endpoint(pod: str | None, identity: int | None, describe: Describe) -> dict[str, Any]:
    """Hubble's ``Endpoint`` of ``pod`` (``ns/name``), or the outside world."""
    if not pod:
        out: dict[str, Any] = dict(WORLD)
        if identity:
            out["identity"] = identity
        return out
    namespace, _, name = pod.partition("/")
    info = describe(pod) or {}
    out = {"namespace": namespace, "pod_name": name}
    labels = info.get("labels")
    if labels is not None:
        out["labels"] = [f"k8s:{k}={v}" for k, v in sorted(labels.items())]
        out["labels"].append(f"k8s:io.kubernetes.pod.namespace={namespace}")
    if identity:
        out["identity"] = identity
    workload = info.get("workload")
    if workload:
        out["workloads"] = [{"name": workload, "kind": info.get("workloadKind", "Pod")}]
    return out


def _ordered(record: Mapping[str, Any]) -> tuple[str, str, str | None, str | None, int | None, int | None]:
    """(initiator address, responder address, their pods, identities) of a record.

    Every record is already written initiator → responder (drops and traces from the packet that
    opened the connection, L7 records from the request)."""
    return (
        str(record.get("src", "")),
        str(record.get("dst", "")),
        record.get("srcPod"),
        record.get("dstPod"),
        record.get("srcIdentity"),
        record.get("dstIdentity"),
    )


def _l4(record: Mapping[str, Any]) -> dict[str, Any]:
    protocol = str(record.get("l4protocol") or record.get("protocol", "")).upper()
    if record.get("type") == "l7":
        protocol = "UDP" if record.get("protocol") == "dns" and record.get("transport") != "TCP" else "TCP"
    ports = {"source_port": record.get("sport") or 0, "destination_port": record.get("dport") or 0}
    if protocol == "TCP":
        flags = record.get("tcpFlags")
        return {"TCP": {**ports, **({"flags": tcp_flags(int(flags))} if flags else {})}}
    if protocol in ("UDP", "SCTP"):
        return {protocol: ports}
    if protocol in ("ICMP", "ICMPV4"):
        return {"ICMPv4": {"type": record.get("icmpType", 0), "code": record.get("icmpCode", 0)}}
    return {}


def _l7(record: Mapping[str, Any]) -> dict[str, Any] | None:
    if record.get("type") != "l7":
        return None
    latency = int(float(record.get("latencyMs", 0)) * 1e6)
    if record.get("protocol") == "dns":
        dns = {
            "query": record.get("query", ""),
            "ips": list(record.get("addresses", [])),
            "rcode": record.get("rcode", ""),
            "qtypes": [record.get("qtype", "A")],
        }
        return {"type": "RESPONSE", "latency_ns": latency, "dns": dns}
    http = {"code": record.get("status"), "method": record.get("method", ""), "url": record.get("url", "")}
    return {"type": "RESPONSE", "latency_ns": latency, "http": http}


def summary(flow: Mapping[str, Any]) -> str:
    """Hubble's one-line summary: the L7 exchange, else the L4 header (``TCP Flags: SYN``)."""
    l7 = flow.get("l7")
    if l7 and "http" in l7:
        h = l7["http"]
        return (
            f"HTTP/1.1 {h.get('code')} {l7['latency_ns'] // 1_000_000}ms ({h.get('method')} {h.get('url')})"
        )
    if l7 and "dns" in l7:
        d = l7["dns"]
        answer = ",".join(d["ips"]) or d["rcode"]
        return f'DNS Answer "{answer}" TTL: - (Proxy {d["query"]} {" ".join(d["qtypes"])})'
    l4 = flow.get("l4", {})
    if "TCP" in l4:
        flags = ", ".join(l4["TCP"].get("flags", {}))
        return f"TCP Flags: {flags}" if flags else "TCP"
    if "UDP" in l4:
        return "UDP"
    if "ICMPv4" in l4:
        return f"ICMPv4 {l4['ICMPv4'].get('type')}/{l4['ICMPv4'].get('code')}"
    return "IPv4"


def flow_of(record: Mapping[str, Any], describe: Describe = lambda key: None) -> dict[str, Any]:
    """The flow (``{"time", "node_name", "flow": {...}}``) of one event-ring record."""
    src, dst, src_pod, dst_pod, src_id, dst_id = _ordered(record)
    kind = str(record.get("type", "drop"))
    direction = str(record.get("direction") or "")
    flow: dict[str, Any] = {
        "time": record.get("time", ""),
        "node_name": record.get("node", ""),
        "verdict": verdict_of(record),
        "Type": "L7" if kind == "l7" else "L3_L4",
        "event_type": {"type": kind},
        "IP": {"source": src, "destination": dst, "ipVersion": "IPv4"},
        "l4": _l4(record),
        "source": endpoint(src_pod, src_id, describe),
        "destination": endpoint(dst_pod, dst_id, describe),
        "traffic_direction": direction.upper()
        if direction in ("ingress", "egress")
        else "TRAFFIC_DIRECTION_UNKNOWN",
        "is_reply": False,
        "policies": list(record.get("policies") or ()),
    }
    reason = drop_reason_of(record)
    if reason is not None:
        flow["drop_reason"] = reason
        flow["drop_reason_desc"] = DROP_REASON_NAMES.get(reason, f"REASON_{reason}")
    if record.get("reason"):
        flow["reason"] = record["reason"]
    if record.get("rule"):
        flow["rule"] = record["rule"]
    service = record.get("service")
    if service:
        namespace, _, name = str(service).partition("/")
        flow["destination_service"] = {"namespace": namespace, "name": name}
    traffic = record.get("traffic")
    if traffic:
        flow["traffic"] = dict(traffic)
    l7 = _l7(record)
    if l7 is not None:
        flow["l7"] = l7
    flow["Summary"] = summary(flow)
    return {"time": flow["time"], "node_name": flow["node_name"], "flow": flow}
