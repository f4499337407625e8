"""dataplane: everything that writes to the Linux kernel (desired state in, minimal writes out).

Every module of the package, one line each (``tests/unit/test_package_docs.py`` checks the list is
complete):

    netns.py         THE netns helper module: netns targets (name, /run/netns/x, /proc/PID/ns/net);
                     run a function or a command inside one on a helper thread (setns is per
                     thread), never moving the process; in_netns/enter_netns move the current thread
    netlink.py       THE rtnetlink adapter (links, addresses, routes, neighbours, tc, sysctls, batches);
                     no pyroute2 (only the lab's builder, lab/fabric.py, imports it)
    rtnl_codec.py    the rtnetlink messages netlink.py sends and reads, encoded and decoded with struct
    sysctl.py        /proc/sys read/write as seen from a given netns
    routes.py        Route, plan_routes (pure diff), RouteManager (owns routes of protocol 112)
    endpoint.py      pod wiring for CNI ADD/DEL/CHECK (Calico and Cilium schemes), ensure_router_device
    mtu.py           underlay MTU detection and pod MTU = underlay - encapsulation overhead
    vxlan.py         the VXLAN tunnel: one kernel device per node, no multicast, no learning
    ipip.py          the IPIP tunnel (Calico's tunl0), in tc eBPF where the kernel has no ipip
    bpf.py           eBPF plumbing: clang (cached), bpftool load/pin, tc attach, maps via bpf(2), bpffs
    sock_lb.py       Service load balancing at the socket (Cilium's socket-LB): cgroup v2 eBPF
    cilium_maps.py   the Cilium profile's map layouts (ipcache, policy, endpoints, conntrack, events)
                     and their safe update order
    lxc.py           the Cilium profile's tc datapath (bpf/lxc.c): load, attach per pod, sync maps
    l7proxy.py       the node's L7 proxy: HAProxy in its cgroup, the tproxy table and the proxy route
    ringbuf.py       reading a pinned BPF ring buffer (BPF_MAP_TYPE_RINGBUF): mmap as libbpf does, epoll
    nft.py           what the nftables managers share: one ``nft -f`` transaction, table adoption
    policy.py        policy enforcement: the compiled PolicyPlan as one nftables table (tiers, Pass)
    host_policy.py   Calico HostEndpoints: the node's own traffic, as table inet podnet_host
    nflog.py         NFLOG: the packets the policy tables log (drops, Log rules), read in a netns
    ctnetlink.py     ctnetlink messages: conntrack tuples, counters and attributes, parsed and built
    ct_events.py     conntrack's NEW and DESTROY events with accounting, read in a netns (flows)
    forward_counters.py  the Calico profile's forwarded packets and bytes by direction (nft counters)
    services_nft.py  Kubernetes Services as one nftables table (kube-proxy's nftables proxier)
    nat.py           natOutgoing: pods leaving every IP pool are masqueraded to the node address
    bird.py          running BIRD 2 for one node: config, start, reload on change, status
    errors.py        DataplaneError tree: KernelError keeps errno, operation and netns

Submodules are imported explicitly (``from podnet.dataplane.endpoint import wire_endpoint``); this
package imports nothing by itself.
"""
