"""Pure calculation: from the datastore's view of the cluster to one node's desired state.

No I/O here; everything is testable without root. Every module of the package, one line each
(``tests/unit/test_package_docs.py`` checks the list is complete):

    cluster.py         the agent's view of the cluster: datastore keys decoded into what the rest needs
    pod_record.py      what the agent keeps of a Pod: the fields calculation reads, labels and ports shared
    endpoints.py       an endpoint: one pod interface wired by a node's agent (WorkloadEndpoint)
    routes.py          which routes and tunnel entries a node needs (a RoutePlan)
    mtu.py             pod MTU: the underlay's minus the largest encapsulation overhead in use
    local_pods.py      which pods a node enforces policy for: every endpoint it wired, whatever the Pod says
    policy.py          every policy kind in one ordered form (tiers, policies, rules), with provenance
    policy_sets.py     the named address and port sets compiled rules refer to, built once per compile
    policy_knp.py      Kubernetes NetworkPolicy in the ordered form (tier default, order 1000, Allow rules)
    policy_calico.py   Calico NetworkPolicy and GlobalNetworkPolicy in the ordered form
    policy_admin.py    AdminNetworkPolicy, BaselineAdminNetworkPolicy, ClusterNetworkPolicy in their tiers
    policy_kinds.py    which compiler turns which policy kind into the ordered form
    policy_inputs.py   from the watch cache to the compiler: the kinds each profile enforces
    policy_explain.py  a connection walked through the compiled form: tier, policy and rule that decided
    policy_status.py   NetworkPolicy status: what each agent reports, the conditions a policy shows
    conntrack.py       which pod traffic may skip conntrack: the policy table's notrack rule and set
    identity.py        Cilium security identities: the label set of a pod's identity
    ipcache.py         the Cilium profile's ipcache: address or prefix -> identity (pods, nodes, CIDRs)
    policymap.py       the Cilium profile's per-endpoint policy map: keys, entries, deny precedence
    policy_cilium.py   Kubernetes NetworkPolicy by identity, into per-endpoint policy maps
    explain_cilium.py  the Cilium profile's verdict from the endpoint maps: the deciding entry and its rules
    policy_cnp.py      CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy at L3/L4, into the same maps
    l7_http.py         Cilium's HTTP rules normalised, and what they allow (Envoy's full-match regexes)
    l7_dns.py          Cilium's DNS names in policy: matchName, matchPattern (`*` within one label)
    fqdn_cache.py      what the DNS proxy learnt for toFQDNs: name -> address -> expiry (min TTL)
    haproxy.py         the node's L7 proxy: HAProxy's transparent configuration from the HTTP rules
    policy_l7.py       which HTTP rules the proxy enforces, from the local endpoints' redirect entries
    host_endpoints.py  Calico HostEndpoints of this node: what the host-endpoint table enforces
    host_policy.py     GlobalNetworkPolicy on host endpoint interfaces: host and forwarded subjects
    services.py        Services and the Pods behind them: what one node must load-balance
    bird.py            BIRD 2 configuration for one node, and BIRD's status parsed
    memo.py            a bounded memo for pure functions asked the same questions sync after sync
    flows.py           flows: one shape for both profiles' events and L7 records (hubble observe's JSON)
    flow_filter.py     hubble observe's filters over flows (values ORed, flags ANDed, --not)
    service_map.py     the service map: workloads, services and the outside world, flows as edges (DOT)
"""
