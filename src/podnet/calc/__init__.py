"""Pure calculation: from the datastore's view of the cluster to one node's desired state.

No I/O here; everything is testable without root. Every module of the package, one line each
(``tests/unit/test_package_docs.py`` checks the list is complete):

    cluster.py         the agent's view of the cluster: datastore keys decoded into what the rest needs
    endpoints.py       an endpoint: one pod interface wired by a node's agent (WorkloadEndpoint)
    routes.py          which routes and tunnel entries a node needs (a RoutePlan)
    mtu.py             pod MTU: the underlay's minus the largest encapsulation overhead in use
    local_pods.py      which pods a node enforces policy for: every endpoint it wired, whatever the Pod says
    policy.py          NetworkPolicy compiled to a per-endpoint intermediate form, with provenance
    policy_status.py   NetworkPolicy status: what each agent reports, the conditions a policy shows
    host_endpoints.py  Calico HostEndpoints of this node: what the host-endpoint table enforces
    services.py        Services and the Pods behind them: what one node must load-balance
    bird.py            BIRD 2 configuration for one node, and BIRD's status parsed
    memo.py            a bounded memo for pure functions asked the same questions sync after sync
"""
