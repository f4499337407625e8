"""natOutgoing: pods reaching addresses outside every IP pool leave with the node's address.

Calico's rule (``cali-nat-outgoing``: ``-m set --match-set masq-ipam-pools src -m set !
--match-set all-ipam-pools dst -j MASQUERADE``) in nftables, in a table podnet owns::

    table ip podnet_nat {
        set masq_pools { type ipv4_addr; flags interval; elements = { <pools with natOutgoing> } }
        set all_pools  { type ipv4_addr; flags interval; elements = { <every pool> } }
        chain postrouting {
            type nat hook postrouting priority srcnat; policy accept;
            ip saddr @masq_pools ip daddr != @all_pools masquerade
        }
    }

Traffic between pools and to other nodes' pods is never masqueraded. The table's masquerade
makes the kernel track every connection of the node; the Cilium profile's tunnel packets (its
VXLAN UDP port, node to node: never masqueraded) are left untracked by two raw chains in a table
of their own, ``ip podnet_tunnel`` (``untracked_udp_ports``; its own table, so an agent of an
earlier version, which does not know it, leaves it and the NAT table alone), as the pod packets
inside them never meet netfilter either. Each change is one ``nft -f``
transaction that replaces the whole table (``add``, ``delete``, define), so there is never a
moment without the rule, and a render identical to the last applied one is not re-applied.
"""

from __future__ import annotations

from collections.abc import Iterable

from podnet.dataplane.nft import TableSync

TABLE = "podnet_nat"
TUNNEL_TABLE = "podnet_tunnel"


def _elements(cidrs: Iterable[str]) -> str:
    items = sorted(set(cidrs))
    return f" elements = {{ {', '.join(items)} }};" if items else ""


def render_nat(masq_pools: Iterable[str], all_pools: Iterable[str]) -> str:
    """The whole table as one ``nft -f`` transaction (pure)."""
    return (
        f"add table ip {TABLE}\n"
        f"delete table ip {TABLE}\n"
        f"table ip {TABLE} {{\n"
        f"    set masq_pools {{ type ipv4_addr; flags interval;{_elements(masq_pools)} }}\n"
        f"    set all_pools {{ type ipv4_addr; flags interval;{_elements(all_pools)} }}\n"
        "    chain postrouting {\n"
        "        type nat hook postrouting priority srcnat; policy accept;\n"
        "        ip saddr @masq_pools ip daddr != @all_pools masquerade\n"
        "    }\n"
        "}\n"
    )


def render_tunnel(untracked_udp_ports: Iterable[int]) -> str:
    """The tunnel table: its UDP ports untracked on the way in and out (pure)."""
    listed = ", ".join(map(str, sorted(set(untracked_udp_ports))))
    chains = "".join(
        f"    chain {chain} {{\n"
        f"        type filter hook {hook} priority raw; policy accept;\n"
        f"        udp dport {{ {listed} }} notrack\n"
        "    }\n"
        for chain, hook in (("prerouting", "prerouting"), ("output", "output"))
    )
    head = f"add table ip {TUNNEL_TABLE}\ndelete table ip {TUNNEL_TABLE}\n"
    return f"{head}table ip {TUNNEL_TABLE} {{\n{chains}}}\n"


class NatManager:
    """Keeps the natOutgoing table of the caller's network namespace (or ``netns``) in shape."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self.table: TableSync[str] = TableSync(
            "ip", TABLE, netns, full=lambda script: script, what="natOutgoing"
        )
        self.tunnel: TableSync[str] = TableSync(
            "ip", TUNNEL_TABLE, netns, full=lambda script: script, what="untracked tunnel"
        )
        self._tunnel_ports: tuple[int, ...] | None = None

    def apply(
        self, masq_pools: Iterable[str], all_pools: Iterable[str], untracked_udp_ports: Iterable[int] = ()
    ) -> bool:
        """Apply if the rendering changed; True when something was written."""
        mode, _ = self.table.sync(render_nat(masq_pools, all_pools))
        ports = tuple(sorted(set(untracked_udp_ports)))
        written = mode == "full"
        if ports:
            written |= self.tunnel.sync(render_tunnel(ports))[0] == "full"
        elif self._tunnel_ports != ():
            self.tunnel.remove()  # absent already: nothing is written
        self._tunnel_ports = ports
        return written
