"""GlobalNetworkPolicy on this node's host endpoint interfaces (pure).

Each interface a HostEndpoint covers (:class:`~podnet.calc.host_endpoints.HostEndpointPlan`) is two
policy subjects, compiled by :func:`~podnet.calc.policy.compile_policies` like a pod (one compile
path, the same tiers, order, rules and end-of-tier actions):

    key              traffic                                     policies that apply
    ---------------  ------------------------------------------  ------------------------------------
    ``hep:<if>``     the host's own, in (input) and out (output)  every GNP whose selector matches
    ``fwd:<if>``     forwarded, in via / out via the interface    those of them with applyOnForward

What differs from a pod is what comes around the tiers (as Felix):

- before them, the host endpoint's always-allowed traffic and failsafe ports (host traffic only);
- host traffic that no policy selects, or that passes beyond the last tier, meets the host
  endpoint's default deny (no profile allows it);
- forwarded traffic is allowed in a direction where no ``applyOnForward`` policy selects the
  interface; where one does, the same walk, then a deny.

``preDNAT`` and ``doNotTrack`` policies are not run: they fail closed where they select (after the
failsafe ports, so they cannot lock the node out) and say so in the plan's errors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace

from podnet.calc.policy import HostSubject, PolicyPlan

HOST_PREFIX = "hep"
FORWARD_PREFIX = "fwd"


def host_key(ifname: str, forwarded: bool = False) -> str:
    """The policy subject of ``ifname``: ``hep:<if>`` (host traffic) or ``fwd:<if>`` (forwarded)."""
    return f"{FORWARD_PREFIX if forwarded else HOST_PREFIX}:{ifname}"


def host_subjects(
    interfaces: Mapping[str, str], labels: Mapping[str, Mapping[str, str]]
) -> dict[str, HostSubject]:
    """Both subjects of every interface in ``interfaces`` (ifname -> HostEndpoint name), with the
    labels of its HostEndpoint (``labels``: HostEndpoint name -> labels)."""
    out: dict[str, HostSubject] = {}
    for ifname, hep in interfaces.items():
        for forwarded in (False, True):
            out[host_key(ifname, forwarded)] = HostSubject(dict(labels.get(hep, {})), forwarded)
    return out


def host_policy_plan(
    interfaces: Mapping[str, str],
    labels: Mapping[str, Mapping[str, str]],
    compile_hosts: Callable[[dict[str, HostSubject]], PolicyPlan],
) -> PolicyPlan | None:
    """The compiled policy of ``interfaces`` (None without any): ``compile_hosts`` is
    :func:`podnet.calc.policy_inputs.compile_hosts` bound to the cache, or a test's compile."""
    if not interfaces:
        return None
    return compile_hosts(host_subjects(interfaces, labels))


def with_hosts(plan: PolicyPlan, host: PolicyPlan | None) -> PolicyPlan:
    """``plan`` (the pods') with the host endpoint subjects and their policies of ``host`` added:
    what the drop monitor explains drops by (the sets stay the pods'; only reasons are read)."""
    if host is None or not host.endpoints:
        return plan
    return replace(
        plan,
        endpoints={**plan.endpoints, **host.endpoints},
        policies={**plan.policies, **host.policies},
    )
