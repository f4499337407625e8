"""dataplane: everything that writes to the Linux kernel (desired state in, minimal writes out).

    netns.py       netns targets (name, /run/netns/x, /proc/PID/ns/net); run a function inside one
                   on a helper thread (setns is per thread), never moving the process
    netlink.py     THE rtnetlink adapter (links, addresses, routes, neighbours, sysctls, batches);
                   nothing else in podnet imports pyroute2
    rtnl_codec.py  the few rtnetlink write messages, encoded with struct (the fast path of netlink.py)
    sysctl.py      /proc/sys read/write as seen from a given netns
    routes.py      Route, plan_routes (pure diff), RouteManager (owns routes of protocol 112)
    endpoint.py    pod wiring for CNI ADD/DEL/CHECK (Calico and Cilium schemes), ensure_router_device
    mtu.py         underlay MTU detection and pod MTU = underlay - encapsulation overhead
    errors.py      DataplaneError tree: KernelError keeps errno, operation and netns

Submodules are imported explicitly (``from podnet.dataplane.endpoint import wire_endpoint``); this
package imports nothing, so importing it does not pull in pyroute2.
"""
