// SPDX-License-Identifier: GPL-2.0
/*
 * podnet Cilium-profile datapath (Cilium's bpf_lxc + bpf_overlay/bpf_host delivery): policy by
 * identity, connection tracking and local delivery in tc programs, with no netfilter on the path
 * of a pod-to-pod packet.
 *
 *   from_container   tc ingress of a pod's host veth (lxc…): what the pod sends
 *   to_container     tc egress of the same veth: what the stack routes to the pod
 *   from_netdev      tc ingress of the node's uplink and VXLAN device: packets for local pods
 *
 * One packet, one endpoint and direction at a time (EGRESS leaving the pod, INGRESS entering it):
 *
 *   anti-spoofing (from_container): source MAC and IPv4 are the pod's own  else drop 130 / 132
 *   control plane (from_container, not to a pod): pn_control[daddr or any local, proto, port]
 *              drop 230 (podnet's reason), before conntrack
 *   conntrack  pn_ct[ep, dir, tuple]           hit: established, pass (a SYN on a closing one: new)
 *              pn_ct[ep, other dir, reversed]  hit: a reply, pass
 *              ICMP error: the same two lookups for the tuple it quotes: related, pass
 *   new        direction enforced (endpoint flags)?
 *                peer identity = pn_ipcache[peer address] (LPM; none: world 2)
 *                INGRESS from the host identity (1): allowed (Cilium's allow-localhost)
 *                pn_policy[ep, dir, identity, proto, port] and [.., identity 0, ..] (LPM both):
 *                  a deny from either: drop 181; else an allow from either: pass; else drop 133
 *                an allow with a proxy port: redirect to the L7 proxy (below)
 *              create pn_ct[ep, dir, tuple] (also when not enforced: replies must pass later)
 *   events     drops always; a trace event per new connection (flows) or only policy verdicts,
 *              as pn_config asks,
 *              into the pn_events ring buffer; a full ring counts STAT_EVENTS_LOST, never waits
 *
 * Delivery: a packet from a pod to a local pod is judged for the destination's INGRESS too and
 * handed to the destination's netns with bpf_redirect_peer; to a remote pod, bpf_fib_lookup and
 * bpf_redirect / bpf_redirect_neigh to the uplink or VXLAN device (TTL decremented, as the stack
 * would); anything else (the node, the world, a Service frontend, a TTL about to expire) goes up
 * the stack (TC_ACT_OK), where natOutgoing and NodePorts live. from_netdev does the destination
 * half for packets arriving from other nodes. Both halves share ct_judge(), so the stack path and
 * the redirect path decide alike. A connection whose first packet was redirected to its pod has its
 * replies redirected too, whatever their destination (CT_BYPASS): netfilter sees no half flows.
 *
 * L7 redirect (Cilium's proxy redirect): a new connection whose entry names a proxy port gets a
 * CT_PROXY entry; it and its later packets are marked (0x0A00 ingress, 0x0B00 egress, 0x0E00 to the
 * DNS proxy) and go up
 * the stack, where nftables tproxy hands them to the node's HAProxy (or drops them: no proxy, no
 * passage). The proxy opens its own connection with the client's address and port, the same tuple:
 * at to_container that connection's packets (marked 0x0C00 by the proxy's cgroup) meet the
 * CT_PROXY entry and pass, any other packet of it is dropped (231), and the server's
 * answers (a reverse hit on a CT_PROXY entry) go up the stack to the proxy's transparent socket,
 * never straight to the client. A redirect can only happen before the routing step (from_container,
 * from_netdev); met at to_container, a new connection is dropped (231), unless it comes from the
 * proxy itself (mark 0x0C00), whose egress frontend has judged the request for this destination's
 * ingress rules as well (calc.policy_l7: the rules of a local destination are ANDed in).
 *
 * Layouts are mirrored by podnet/dataplane/cilium_maps.py (keys, values, events, counters).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define AF_INET 2
#define IPCACHE_V4 4 /* the ipcache key's family byte: the IP version (cilium_maps.FAMILIES) */
#define IP_MF 0x2000
#define IP_OFFSET 0x1fff
#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10
#define ICMP_ECHOREPLY 0
#define ICMP_DEST_UNREACH 3
#define ICMP_SOURCE_QUENCH 4
#define ICMP_ECHO 8
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12
#define NSEC_PER_SEC 1000000000ULL

enum { DIR_INGRESS = 0, DIR_EGRESS = 1 };

/* Cilium's drop reasons (bpf/lib/common.h), as positive numbers */
#define DROP_INVALID_SMAC 130
#define DROP_INVALID_SIP 132
#define DROP_POLICY 133
#define DROP_INVALID 134
#define DROP_CT_CREATE_FAILED 155
#define DROP_UNKNOWN_L3 139
#define DROP_FRAG_NOT_FOUND 175
#define DROP_POLICY_DENY 181
#define DROP_EP_NOT_READY 203
#define DROP_CONTROL_PLANE 230 /* podnet's: the node control plane is closed to pods */
#define DROP_NO_PROXY_PATH 231 /* podnet's: a redirect to the L7 proxy met where none can happen */

/* connection tracking lifetimes (Cilium's defaults), seconds */
#define CT_LIFETIME_TCP 21600
#define CT_LIFETIME_NONTCP 60
#define CT_SYN_TIMEOUT 60
#define CT_CLOSE_TIMEOUT 10

/* endpoint flags */
#define EP_INGRESS_ENFORCED 1
#define EP_EGRESS_ENFORCED 2
#define EP_NOT_READY 4 /* wired, policy not computed yet: every new connection is refused */

/* ipcache flags */
#define IPC_POD 1 /* a pod address: may be forwarded past the stack */

/* policy value flags */
#define POLICY_DENY 1

/* conntrack entry flags */
#define CT_FIN_FWD 1
#define CT_FIN_REV 2
#define CT_RST 4
#define CT_SEEN_REPLY 8
#define CT_BYPASS 16 /* the first packet skipped the stack (redirected): so do the replies */
#define CT_PROXY 32 /* redirected to the node's L7 proxy: later packets too, replies to its socket */

/* skb->mark, the nibble dataplane/l7proxy.py's nftables rules read and write */
#define MARK_MASK 0x0F00
#define MARK_TO_INGRESS_PROXY 0x0A00
#define MARK_TO_EGRESS_PROXY 0x0B00
#define MARK_FROM_PROXY 0x0C00
#define MARK_TO_DNS_PROXY 0x0E00
#define DNS_PROXY_PORT 15053 /* calc.l7_dns.DNS_PROXY_PORT: its redirects get their own mark */

/* how ct_judge wants a passing packet sent on (bits) */
#define HOW_REPLY_BYPASS 1 /* a reply of a CT_BYPASS connection: past the stack too */
#define HOW_TO_PROXY 2 /* to the L7 proxy: marked, up the stack, where tproxy takes it */
#define HOW_PROXY_REPLY 4 /* an answer to the proxy's own socket: up the stack, unmarked */

/* pn_config flags */
#define CFG_VERDICT_EVENTS 1
#define CFG_TRACE_EVENTS 2 /* a trace event per new connection (flows); it also carries the verdict */

/* event types */
#define EVENT_DROP 1
#define EVENT_VERDICT 2
#define EVENT_TRACE 3
#define TRACE_WAKEUP_BYTES (256 << 10) /* backlog of the events ring that wakes the agent for traces */

/* verdict event results */
#define VERDICT_ALLOWED 1
#define VERDICT_DENIED 2
#define VERDICT_REDIRECTED 3 /* allowed, to the L7 proxy */

/* how a new connection's policy was decided (event.match) */
#define MATCH_NONE 0
#define MATCH_IDENTITY 1
#define MATCH_WILDCARD 2
#define MATCH_HOST 3
#define MATCH_NOT_ENFORCED 4

enum {
	STAT_EVENTS_LOST,
	STAT_CT_CREATED,
	STAT_CT_CREATE_FAILED,
	STAT_REDIRECT_PEER,
	STAT_REDIRECT_FIB,
	STAT_REDIRECT_NEIGH,
	STAT_TO_STACK,
	STAT_NO_ENDPOINT,
	STAT_TO_PROXY,
	STAT_MAX,
};

struct ipcache_key {
	__u32 prefixlen; /* 32 + address bits */
	__u16 pad1;
	__u8 pad2;
	__u8 family;
	__u8 addr[16];
};

struct ipcache_value {
	__u32 identity;
	__u32 flags;
};

struct policy_key {
	__u32 prefixlen; /* 64 any protocol; 80 + port prefix */
	__be16 ep;
	__u8 dir;
	__u8 pad1;
	__be32 identity;
	__u8 proto;
	__u8 pad2;
	__be16 dport;
};

struct policy_value {
	__u8 flags;
	__u8 pad;
	__u16 proxy_port;
	__u32 entry_id;
};

struct endpoint {
	__u16 id;
	__u8 flags;
	__u8 pad;
	__u32 identity;
	__be32 ipv4;
	__u8 mac[6];
	__u8 host_mac[6];
};

struct ct_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 dir;
	__u16 ep;
};

struct ct_entry {
	__u64 packets_fwd;
	__u64 bytes_fwd;
	__u64 packets_rev;
	__u64 bytes_rev;
	__u32 lifetime; /* expires at this CLOCK_MONOTONIC second */
	__u32 created;
	__u32 peer_identity;
	__u32 entry_id;
	__u16 flags;
	__u16 proxy_port;
	__u8 tcp_flags_fwd;
	__u8 tcp_flags_rev;
	__u16 pad;
};

struct frag_key {
	__be32 saddr;
	__be32 daddr;
	__be16 id;
	__u8 proto;
	__u8 pad;
};

struct frag_ports {
	__be16 sport;
	__be16 dport;
};

struct event {
	__u8 type;
	__u8 reason;
	__u8 dir;
	__u8 verdict;
	__u16 ep;
	__u8 proto;
	__u8 tcp_flags;
	__u32 ifindex;
	__u32 src_identity;
	__u32 dst_identity;
	__u32 entry_id;
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u32 len;
	__u64 ts;
	__u8 match;
	__u8 pad[7];
};

struct ep_stats {
	__u64 packets[2]; /* forwarded, by direction */
	__u64 bytes[2];
	__u64 drop_packets[2];
	__u64 drop_bytes[2];
};

struct entry_stats {
	__u64 packets; /* new connections the entry decided */
	__u64 bytes;
};

struct config {
	__u32 flags;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_value);
	__uint(max_entries, 524288);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} pn_ipcache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct policy_key);
	__type(value, struct policy_value);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} pn_policy SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32); /* host veth ifindex */
	__type(value, struct endpoint);
	__uint(max_entries, 4096);
} pn_endpoints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __be32); /* a local pod's IPv4 */
	__type(value, __u32); /* its host veth ifindex */
	__uint(max_entries, 4096);
} pn_local_ips SEC(".maps");

/* The node control plane closed to pods (calc.policy.ControlPlane): addr 0 = any address of
 * this node (identity host), else that address. */
struct control_key {
	__be32 addr;
	__u8 proto;
	__u8 pad;
	__be16 port;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct control_key);
	__type(value, __u32);
	__uint(max_entries, 1024);
} pn_control SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct_key);
	__type(value, struct ct_entry);
	__uint(max_entries, 131072);
} pn_ct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct frag_key);
	__type(value, struct frag_ports);
	__uint(max_entries, 8192);
} pn_frags SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} pn_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, STAT_MAX);
} pn_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32); /* endpoint id */
	__type(value, struct ep_stats);
	__uint(max_entries, 4096);
} pn_ep_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32); /* policy entry id */
	__type(value, struct entry_stats);
	__uint(max_entries, 65536);
} pn_entry_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct config);
	__uint(max_entries, 1);
} pn_config SEC(".maps");

/* What one packet is, as far as policy and conntrack care. */
struct pkt {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 tcp_flags;
	__u8 icmp_error; /* an ICMP error quoting the inner tuple below */
	__u8 ttl;
	__u16 policy_port; /* destination port, or ICMP type (host order) */
	__u16 pad;
	__u32 len;
	__be32 in_saddr;
	__be32 in_daddr;
	__be16 in_sport;
	__be16 in_dport;
	__u8 in_proto;
};

static __always_inline void stat_inc(__u32 index)
{
	__u64 *value = bpf_map_lookup_elem(&pn_stats, &index);

	if (value)
		*value += 1;
}

/* Cilium's metricsmap: packets and bytes by (reason, direction); reason 0 is forwarded. Exact even
 * when the event ring is full: the agent's podnet_forward_* and podnet_drop_* metrics read it. */
struct metrics_value {
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32); /* reason << 1 | direction */
	__type(value, struct metrics_value);
	__uint(max_entries, 512);
} pn_metrics SEC(".maps");

static __always_inline void metrics_count(__u8 reason, __u8 dir, __u32 len)
{
	__u32 key = ((__u32)reason << 1) | (dir & 1);
	struct metrics_value *m = bpf_map_lookup_elem(&pn_metrics, &key);

	if (m) {
		m->packets += 1;
		m->bytes += len;
	}
}

static __always_inline __u32 now_seconds(void)
{
	return (__u32)(bpf_ktime_get_ns() / NSEC_PER_SEC);
}

static __always_inline void ep_count(__u16 ep, __u8 dir, __u32 len, int dropped)
{
	__u32 key = ep;
	struct ep_stats *s = bpf_map_lookup_elem(&pn_ep_stats, &key);

	if (!s || dir > 1)
		return;
	if (dropped) {
		s->drop_packets[dir] += 1;
		s->drop_bytes[dir] += len;
	} else {
		s->packets[dir] += 1;
		s->bytes[dir] += len;
		metrics_count(0, dir, len);
	}
}

static __always_inline void entry_count(__u32 entry_id, __u32 len)
{
	struct entry_stats *s;

	if (!entry_id)
		return;
	s = bpf_map_lookup_elem(&pn_entry_stats, &entry_id);
	if (s) {
		s->packets += 1;
		s->bytes += len;
	}
}

/* Ports of the L4 header at off (TCP, UDP, SCTP: the first four bytes; ICMP echo: the id). */
static __always_inline int l4_ports(struct __sk_buff *skb, __u32 off, __u8 proto, __be16 *sport,
				    __be16 *dport, __u8 *tcp_flags, __u8 *icmp_type)
{
	if (proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_SCTP) {
		__be16 ports[2];

		if (bpf_skb_load_bytes(skb, off, ports, sizeof(ports)) < 0)
			return -1;
		*sport = ports[0];
		*dport = ports[1];
		if (proto == IPPROTO_TCP && tcp_flags &&
		    bpf_skb_load_bytes(skb, off + 13, tcp_flags, 1) < 0)
			return -1;
		return 0;
	}
	if (proto == IPPROTO_ICMP) {
		__u8 head[8];

		if (bpf_skb_load_bytes(skb, off, head, sizeof(head)) < 0)
			return -1;
		*icmp_type = head[0];
		/* echo request: (id, 0); echo reply: (0, id), so a reply is the request reversed */
		if (head[0] == ICMP_ECHO) {
			*sport = *(__be16 *)&head[4];
			*dport = 0;
		} else if (head[0] == ICMP_ECHOREPLY) {
			*sport = 0;
			*dport = *(__be16 *)&head[4];
		} else {
			*sport = 0;
			*dport = 0;
		}
		return 0;
	}
	*sport = 0;
	*dport = 0;
	return 0;
}

static __always_inline int is_icmp_error(__u8 type)
{
	return type == ICMP_DEST_UNREACH || type == ICMP_TIME_EXCEEDED ||
	       type == ICMP_PARAMETERPROB || type == ICMP_SOURCE_QUENCH;
}

/* 0: parsed; 1: not IPv4; <0: drop reason (negated). */
static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
	struct iphdr ip;
	__u32 l4;
	__u8 icmp_type = 0;

	if (skb->protocol != bpf_htons(ETH_P_IP))
		return 1;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0 || ip.ihl < 5)
		return -DROP_INVALID;
	p->saddr = ip.saddr;
	p->daddr = ip.daddr;
	p->proto = ip.protocol;
	p->ttl = ip.ttl;
	p->len = skb->len;
	l4 = ETH_HLEN + ip.ihl * 4;

	if (ip.frag_off & bpf_htons(IP_OFFSET)) {
		/* a later fragment: the ports its first fragment carried */
		struct frag_key fk = { .saddr = ip.saddr, .daddr = ip.daddr, .id = ip.id, .proto = ip.protocol };
		struct frag_ports *fp = bpf_map_lookup_elem(&pn_frags, &fk);

		if (!fp)
			return -DROP_FRAG_NOT_FOUND;
		p->sport = fp->sport;
		p->dport = fp->dport;
		p->policy_port = bpf_ntohs(fp->dport);
		return 0;
	}
	if (l4_ports(skb, l4, ip.protocol, &p->sport, &p->dport, &p->tcp_flags, &icmp_type) < 0)
		return -DROP_INVALID;
	if (ip.frag_off & bpf_htons(IP_MF)) {
		struct frag_key fk = { .saddr = ip.saddr, .daddr = ip.daddr, .id = ip.id, .proto = ip.protocol };
		struct frag_ports fp = { .sport = p->sport, .dport = p->dport };

		bpf_map_update_elem(&pn_frags, &fk, &fp, BPF_ANY);
	}
	if (ip.protocol == IPPROTO_ICMP) {
		p->policy_port = icmp_type;
		if (is_icmp_error(icmp_type)) {
			struct iphdr inner;
			__u8 ignored_flags = 0, ignored_type = 0;

			if (bpf_skb_load_bytes(skb, l4 + 8, &inner, sizeof(inner)) < 0 || inner.ihl < 5)
				return 0; /* nothing quoted: judged as a new ICMP packet */
			p->icmp_error = 1;
			p->in_saddr = inner.saddr;
			p->in_daddr = inner.daddr;
			p->in_proto = inner.protocol;
			if (l4_ports(skb, l4 + 8 + inner.ihl * 4, inner.protocol, &p->in_sport,
				     &p->in_dport, &ignored_flags, &ignored_type) < 0)
				p->icmp_error = 0;
		}
	} else {
		p->policy_port = bpf_ntohs(p->dport);
	}
	return 0;
}

static __always_inline void ct_key_of(struct ct_key *k, __u16 ep, __u8 dir, __be32 saddr, __be32 daddr,
				      __be16 sport, __be16 dport, __u8 proto)
{
	k->saddr = saddr;
	k->daddr = daddr;
	k->sport = sport;
	k->dport = dport;
	k->proto = proto;
	k->dir = dir;
	k->ep = ep;
}

static __always_inline struct ct_entry *ct_find(struct ct_key *k, __u32 now)
{
	struct ct_entry *e = bpf_map_lookup_elem(&pn_ct, k);

	if (e && e->lifetime < now)
		return 0; /* expired: the agent's GC removes it, a new connection overwrites it */
	return e;
}

static __always_inline void ct_touch(struct ct_entry *e, struct pkt *p, int reply, __u32 now)
{
	__u32 lifetime;

	if (reply) {
		__sync_fetch_and_add(&e->packets_rev, 1);
		__sync_fetch_and_add(&e->bytes_rev, p->len);
		e->tcp_flags_rev |= p->tcp_flags;
		if (!(e->flags & CT_SEEN_REPLY))
			e->flags |= CT_SEEN_REPLY;
	} else {
		__sync_fetch_and_add(&e->packets_fwd, 1);
		__sync_fetch_and_add(&e->bytes_fwd, p->len);
		e->tcp_flags_fwd |= p->tcp_flags;
	}
	if (p->proto != IPPROTO_TCP) {
		lifetime = now + CT_LIFETIME_NONTCP;
	} else {
		if (p->tcp_flags & TCP_RST)
			e->flags |= CT_RST;
		if (p->tcp_flags & TCP_FIN)
			e->flags |= reply ? CT_FIN_REV : CT_FIN_FWD;
		if ((e->flags & CT_RST) || (e->flags & (CT_FIN_FWD | CT_FIN_REV)) == (CT_FIN_FWD | CT_FIN_REV))
			lifetime = now + CT_CLOSE_TIMEOUT;
		else if ((e->flags & CT_SEEN_REPLY) && !(p->tcp_flags & TCP_SYN))
			lifetime = now + CT_LIFETIME_TCP;
		else
			lifetime = now + CT_SYN_TIMEOUT;
	}
	if (e->lifetime != lifetime)
		e->lifetime = lifetime;
}

/* A TCP SYN (no ACK) on the tuple of a connection that is closing (a FIN or a RST seen): the peer
 * reuses the port for a new connection, which policy must judge, not the old entry let through. */
static __always_inline int reopened(const struct ct_entry *e, const struct pkt *p)
{
	return p->proto == IPPROTO_TCP && (p->tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN &&
	       (e->flags & (CT_RST | CT_FIN_FWD | CT_FIN_REV));
}

static __always_inline int ct_create(struct ct_key *k, struct pkt *p, __u32 now, __u32 peer, __u32 entry_id,
				     __u16 flags, __u16 proxy_port)
{
	struct ct_entry e = {
		.flags = flags,
		.proxy_port = proxy_port,
		.packets_fwd = 1,
		.bytes_fwd = p->len,
		.created = now,
		.peer_identity = peer,
		.entry_id = entry_id,
		.tcp_flags_fwd = p->tcp_flags,
	};

	if (p->proto == IPPROTO_TCP)
		e.lifetime = now + ((p->tcp_flags & TCP_RST) ? CT_CLOSE_TIMEOUT : CT_SYN_TIMEOUT);
	else
		e.lifetime = now + CT_LIFETIME_NONTCP;
	if (bpf_map_update_elem(&pn_ct, k, &e, BPF_ANY) < 0) {
		stat_inc(STAT_CT_CREATE_FAILED);
		return -1;
	}
	stat_inc(STAT_CT_CREATED);
	return 0;
}

static __always_inline __u32 identity_of(__be32 addr, __u32 *flags)
{
	struct ipcache_key k = { .prefixlen = 64, .family = IPCACHE_V4 };
	struct ipcache_value *v;

	*(__be32 *)k.addr = addr;
	v = bpf_map_lookup_elem(&pn_ipcache, &k);
	if (!v) {
		if (flags)
			*flags = 0;
		return 2; /* world */
	}
	if (flags)
		*flags = v->flags;
	return v->identity;
}

static __always_inline struct policy_value *policy_find(__u16 ep, __u8 dir, __u32 identity, __u8 proto,
							__u16 port)
{
	struct policy_key k = {
		.prefixlen = 96,
		.ep = bpf_htons(ep),
		.dir = dir,
		.identity = bpf_htonl(identity),
		.proto = proto,
		.dport = bpf_htons(port),
	};

	return bpf_map_lookup_elem(&pn_policy, &k);
}

static __always_inline void emit(__u8 type, __u8 reason, __u8 dir, __u8 verdict, __u8 match,
				 const struct endpoint *ep, __u32 ifindex, struct pkt *p, __u32 peer,
				 __u32 entry_id)
{
	struct event *e;

	if (type == EVENT_DROP)
		metrics_count(reason, dir, p->len);
	e = bpf_ringbuf_reserve(&pn_events, sizeof(*e), 0);
	if (!e) {
		stat_inc(STAT_EVENTS_LOST);
		return;
	}
	e->type = type;
	e->reason = reason;
	e->dir = dir;
	e->verdict = verdict;
	e->ep = ep ? ep->id : 0;
	e->proto = p->proto;
	e->tcp_flags = p->tcp_flags;
	e->ifindex = ifindex;
	if (dir == DIR_EGRESS) {
		e->src_identity = ep ? ep->identity : 0;
		e->dst_identity = peer;
	} else {
		e->src_identity = peer;
		e->dst_identity = ep ? ep->identity : 0;
	}
	e->entry_id = entry_id;
	e->saddr = p->saddr;
	e->daddr = p->daddr;
	e->sport = p->sport;
	e->dport = p->dport;
	e->len = p->len;
	e->ts = bpf_ktime_get_ns();
	e->match = match;
	__builtin_memset(e->pad, 0, sizeof(e->pad));
	/* A trace (one per new connection) wakes the agent only once a backlog has built up: it reads
	 * them in batches on its poll timeout; a drop or a verdict wakes it at once. */
	if (type == EVENT_TRACE && bpf_ringbuf_query(&pn_events, BPF_RB_AVAIL_DATA) < TRACE_WAKEUP_BYTES)
		bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
	else
		bpf_ringbuf_submit(e, 0);
}

static __always_inline __u32 config_flags(void)
{
	__u32 zero = 0;
	struct config *c = bpf_map_lookup_elem(&pn_config, &zero);

	return c ? c->flags : 0;
}

/*
 * Judge a packet for one endpoint and direction: conntrack first, policy for a new connection.
 * 0: pass; >0: the drop reason (the drop event is already sent).
 */
static __always_inline int ct_judge(struct __sk_buff *skb, const struct endpoint *ep, __u32 ifindex,
				    __u8 dir, struct pkt *p, int bypass, int routed, int *how, __u16 *port)
{
	struct ct_key k = {};
	struct ct_entry *e;
	struct policy_value *hit, *any, *chosen = 0;
	__u32 now = now_seconds();
	__u8 other = dir == DIR_EGRESS ? DIR_INGRESS : DIR_EGRESS;
	__u32 peer, entry_id = 0;
	__u8 match = MATCH_NONE, verdict = VERDICT_ALLOWED;
	__u16 ct_flags = bypass ? CT_BYPASS : 0, proxy_port = 0;
	__u32 flags;
	int enforced;

	ct_key_of(&k, ep->id, dir, p->saddr, p->daddr, p->sport, p->dport, p->proto);
	e = ct_find(&k, now);
	if (e && reopened(e, p))
		e = 0; /* a new connection on the tuple of a closing one: judged anew (Cilium's CT_REOPENED) */
	if (e) {
		if ((e->flags & CT_PROXY) && routed && (skb->mark & MARK_MASK) != MARK_FROM_PROXY) {
			/* a redirected connection reaches its server only through the proxy */
			emit(EVENT_DROP, DROP_NO_PROXY_PATH, dir, VERDICT_DENIED, MATCH_NONE, ep, ifindex, p,
			     e->peer_identity, e->entry_id);
			return DROP_NO_PROXY_PATH;
		}
		ct_touch(e, p, 0, now);
		if (e->flags & CT_PROXY) {
			*how |= HOW_TO_PROXY;
			*port = e->proxy_port;
		}
		return 0;
	}
	ct_key_of(&k, ep->id, other, p->daddr, p->saddr, p->dport, p->sport, p->proto);
	e = ct_find(&k, now);
	if (e && reopened(e, p))
		e = 0;
	if (e) {
		ct_touch(e, p, 1, now);
		if (e->flags & CT_PROXY)
			*how |= HOW_PROXY_REPLY;
		else if (e->flags & CT_BYPASS)
			*how |= HOW_REPLY_BYPASS;
		return 0;
	}
	if (p->icmp_error) {
		/* the quoted packet went the other way: sent by the endpoint (INGRESS error) or to it */
		ct_key_of(&k, ep->id, other, p->in_saddr, p->in_daddr, p->in_sport, p->in_dport, p->in_proto);
		if (ct_find(&k, now))
			return 0;
		ct_key_of(&k, ep->id, dir, p->in_daddr, p->in_saddr, p->in_dport, p->in_sport, p->in_proto);
		if (ct_find(&k, now))
			return 0;
	}

	peer = identity_of(dir == DIR_EGRESS ? p->daddr : p->saddr, 0);
	if (ep->flags & EP_NOT_READY) {
		if (!(dir == DIR_INGRESS && peer == 1)) {
			emit(EVENT_DROP, DROP_EP_NOT_READY, dir, VERDICT_DENIED, MATCH_NONE, ep, ifindex, p,
			     peer, 0);
			return DROP_EP_NOT_READY;
		}
		match = MATCH_HOST;
	} else {
		enforced = ep->flags & (dir == DIR_EGRESS ? EP_EGRESS_ENFORCED : EP_INGRESS_ENFORCED);
		if (!enforced) {
			match = MATCH_NOT_ENFORCED;
		} else if (dir == DIR_INGRESS && peer == 1) {
			match = MATCH_HOST;
		} else {
			hit = policy_find(ep->id, dir, peer, p->proto, p->policy_port);
			any = policy_find(ep->id, dir, 0, p->proto, p->policy_port);
			if ((hit && (hit->flags & POLICY_DENY)) || (any && (any->flags & POLICY_DENY))) {
				entry_id = (hit && (hit->flags & POLICY_DENY)) ? hit->entry_id : any->entry_id;
				entry_count(entry_id, p->len);
				emit(EVENT_DROP, DROP_POLICY_DENY, dir, VERDICT_DENIED,
				     (hit && (hit->flags & POLICY_DENY)) ? MATCH_IDENTITY : MATCH_WILDCARD, ep,
				     ifindex, p, peer, entry_id);
				return DROP_POLICY_DENY;
			}
			if (!hit && !any) {
				emit(EVENT_DROP, DROP_POLICY, dir, VERDICT_DENIED, MATCH_NONE, ep, ifindex, p,
				     peer, 0);
				return DROP_POLICY;
			}
			chosen = hit ? hit : any;
			entry_id = chosen->entry_id;
			match = hit ? MATCH_IDENTITY : MATCH_WILDCARD;
			if (chosen->proxy_port && routed) {
				/* past the routing step: only the proxy's own connection may pass */
				if ((skb->mark & MARK_MASK) != MARK_FROM_PROXY) {
					emit(EVENT_DROP, DROP_NO_PROXY_PATH, dir, VERDICT_DENIED, match, ep,
					     ifindex, p, peer, entry_id);
					return DROP_NO_PROXY_PATH;
				}
			} else if (chosen->proxy_port) {
				ct_flags = CT_PROXY;
				proxy_port = chosen->proxy_port;
				verdict = VERDICT_REDIRECTED;
			}
			entry_count(entry_id, p->len);
		}
	}
	ct_key_of(&k, ep->id, dir, p->saddr, p->daddr, p->sport, p->dport, p->proto);
	if (ct_create(&k, p, now, peer, entry_id, ct_flags, proxy_port) < 0) {
		emit(EVENT_DROP, DROP_CT_CREATE_FAILED, dir, VERDICT_DENIED, match, ep, ifindex, p, peer,
		     entry_id);
		return DROP_CT_CREATE_FAILED;
	}
	if (proxy_port) {
		*how |= HOW_TO_PROXY;
		*port = proxy_port;
	}
	flags = config_flags();
	if (flags & CFG_TRACE_EVENTS)
		emit(EVENT_TRACE, 0, dir, verdict, match, ep, ifindex, p, peer, entry_id);
	else if (match != MATCH_NOT_ENFORCED && (flags & CFG_VERDICT_EVENTS))
		emit(EVENT_VERDICT, 0, dir, verdict, match, ep, ifindex, p, peer, entry_id);
	return 0;
}

/* Up the stack to the L7 proxy: the mark nftables' tproxy rule looks for (the DNS proxy's, or the
 * HTTP proxy's listener of the direction). */
static __always_inline int to_proxy(struct __sk_buff *skb, __u8 dir, __u16 proxy_port)
{
	__u32 mark = dir == DIR_EGRESS ? MARK_TO_EGRESS_PROXY : MARK_TO_INGRESS_PROXY;

	if (proxy_port == DNS_PROXY_PORT)
		mark = MARK_TO_DNS_PROXY;
	skb->mark = (skb->mark & ~MARK_MASK) | mark;
	stat_inc(STAT_TO_PROXY);
	return TC_ACT_OK;
}

/* The stack's forwarding step done here: TTL - 1 (checksum kept). <0: the TTL would expire. */
static __always_inline int ttl_decrement(struct __sk_buff *skb, __u8 ttl)
{
	__u8 next = ttl - 1;

	if (ttl <= 1)
		return -1;
	if (bpf_l3_csum_replace(skb, ETH_HLEN + offsetof(struct iphdr, check), bpf_htons((__u16)ttl << 8),
				bpf_htons((__u16)next << 8), 2) < 0)
		return -1;
	if (bpf_skb_store_bytes(skb, ETH_HLEN + offsetof(struct iphdr, ttl), &next, 1, 0) < 0)
		return -1;
	return 0;
}

static __always_inline int set_macs(struct __sk_buff *skb, const __u8 *dst, const __u8 *src)
{
	if (bpf_skb_store_bytes(skb, 0, dst, ETH_ALEN, 0) < 0)
		return -1;
	return bpf_skb_store_bytes(skb, ETH_ALEN, src, ETH_ALEN, 0);
}

/* A packet for a local pod, forwarded by this node: the destination's INGRESS, then its netns. */
static __always_inline int deliver_local(struct __sk_buff *skb, __u32 ifindex, struct pkt *p)
{
	struct endpoint *dst = bpf_map_lookup_elem(&pn_endpoints, &ifindex);
	int reason, how = 0;
	__u16 port = 0;

	if (!dst) {
		stat_inc(STAT_NO_ENDPOINT);
		return TC_ACT_OK; /* being wired: the stack and to_container decide */
	}
	reason = ct_judge(skb, dst, ifindex, DIR_INGRESS, p, 1, 0, &how, &port);
	if (reason) {
		ep_count(dst->id, DIR_INGRESS, p->len, 1);
		return TC_ACT_SHOT;
	}
	if (how & HOW_TO_PROXY) {
		ep_count(dst->id, DIR_INGRESS, p->len, 0);
		return to_proxy(skb, DIR_INGRESS, port);
	}
	if (how & HOW_PROXY_REPLY) {
		/* the destination's egress proxy answered: to its socket (bound to the pod's address) */
		stat_inc(STAT_TO_STACK);
		return TC_ACT_OK;
	}
	if (ttl_decrement(skb, p->ttl) < 0 || set_macs(skb, dst->mac, dst->host_mac) < 0)
		return TC_ACT_OK; /* the stack sends the ICMP time exceeded */
	ep_count(dst->id, DIR_INGRESS, p->len, 0);
	stat_inc(STAT_REDIRECT_PEER);
	return bpf_redirect_peer(ifindex, 0);
}

/* A packet for a pod on another node: past the stack, to the device the route names. */
static __always_inline int forward_remote(struct __sk_buff *skb, struct pkt *p)
{
	struct bpf_fib_lookup fib = {
		.family = AF_INET,
		.l4_protocol = p->proto,
		.sport = p->sport,
		.dport = p->dport,
		.ifindex = skb->ingress_ifindex,
		.ipv4_src = p->saddr,
		.ipv4_dst = p->daddr,
	};
	long rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);

	if (rc == BPF_FIB_LKUP_RET_SUCCESS) {
		if (ttl_decrement(skb, p->ttl) < 0 || set_macs(skb, fib.dmac, fib.smac) < 0)
			return TC_ACT_OK;
		stat_inc(STAT_REDIRECT_FIB);
		return bpf_redirect(fib.ifindex, 0);
	}
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		struct bpf_redir_neigh nh = { .nh_family = AF_INET, .ipv4_nh = fib.ipv4_dst };

		if (ttl_decrement(skb, p->ttl) < 0)
			return TC_ACT_OK;
		stat_inc(STAT_REDIRECT_NEIGH);
		return bpf_redirect_neigh(fib.ifindex, &nh, sizeof(nh), 0);
	}
	stat_inc(STAT_TO_STACK); /* fragmentation needed, unreachable, …: the stack answers */
	return TC_ACT_OK;
}

static __always_inline int control_closed(struct pkt *p, __u32 identity)
{
	struct control_key k = { .addr = p->daddr, .proto = p->proto, .port = p->dport };

	if (p->proto != IPPROTO_TCP && p->proto != IPPROTO_UDP && p->proto != IPPROTO_SCTP)
		return 0;
	if (bpf_map_lookup_elem(&pn_control, &k))
		return 1;
	if (identity != 1)
		return 0;
	k.addr = 0;
	return bpf_map_lookup_elem(&pn_control, &k) != 0;
}

static __always_inline int mac_equal(const __u8 *a, const __u8 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4] && a[5] == b[5];
}

static __always_inline int drop_spoofed(struct __sk_buff *skb, const struct endpoint *ep, struct pkt *p,
					__u8 reason)
{
	emit(EVENT_DROP, reason, DIR_EGRESS, VERDICT_DENIED, MATCH_NONE, ep, skb->ifindex, p, 0, 0);
	ep_count(ep->id, DIR_EGRESS, p->len, 1);
	return TC_ACT_SHOT;
}

SEC("tc")
int from_container(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex;
	struct endpoint *ep = bpf_map_lookup_elem(&pn_endpoints, &ifindex);
	struct pkt p = {};
	__u8 smac[ETH_ALEN];
	__u32 ipc_flags = 0, peer;
	__u32 *local;
	int rc, how = 0;
	__u16 port = 0;

	if (!ep) {
		stat_inc(STAT_NO_ENDPOINT);
		return TC_ACT_SHOT; /* attached before its record: nothing leaves unjudged */
	}
	rc = parse(skb, &p);
	if (rc == 1) {
		if (skb->protocol == bpf_htons(ETH_P_ARP))
			return TC_ACT_OK;
		if (ep->flags & (EP_EGRESS_ENFORCED | EP_NOT_READY)) {
			p.len = skb->len;
			emit(EVENT_DROP, DROP_UNKNOWN_L3, DIR_EGRESS, VERDICT_DENIED, MATCH_NONE, ep, ifindex, &p, 0, 0);
			return TC_ACT_SHOT;
		}
		return TC_ACT_OK;
	}
	if (bpf_skb_load_bytes(skb, ETH_ALEN, smac, ETH_ALEN) < 0)
		return TC_ACT_SHOT;
	if (!mac_equal(smac, ep->mac))
		return drop_spoofed(skb, ep, &p, DROP_INVALID_SMAC);
	if (rc < 0) {
		emit(EVENT_DROP, -rc, DIR_EGRESS, VERDICT_DENIED, MATCH_NONE, ep, ifindex, &p, 0, 0);
		ep_count(ep->id, DIR_EGRESS, p.len, 1);
		return TC_ACT_SHOT;
	}
	if (p.saddr != ep->ipv4)
		return drop_spoofed(skb, ep, &p, DROP_INVALID_SIP);
	peer = identity_of(p.daddr, &ipc_flags);
	if (!(ipc_flags & IPC_POD) && control_closed(&p, peer)) {
		/* before conntrack: not even an established connection reaches it */
		emit(EVENT_DROP, DROP_CONTROL_PLANE, DIR_EGRESS, VERDICT_DENIED, MATCH_NONE, ep, ifindex, &p, peer, 0);
		ep_count(ep->id, DIR_EGRESS, p.len, 1);
		return TC_ACT_SHOT;
	}
	if (ct_judge(skb, ep, ifindex, DIR_EGRESS, &p, 0, 0, &how, &port)) {
		ep_count(ep->id, DIR_EGRESS, p.len, 1);
		return TC_ACT_SHOT;
	}
	ep_count(ep->id, DIR_EGRESS, p.len, 0);
	if (how & HOW_TO_PROXY)
		return to_proxy(skb, DIR_EGRESS, port);
	if (how & HOW_PROXY_REPLY) {
		/* the server's answer to the ingress proxy's connection: to its socket, not the client */
		stat_inc(STAT_TO_STACK);
		return TC_ACT_OK;
	}

	local = bpf_map_lookup_elem(&pn_local_ips, &p.daddr);
	if (local)
		return deliver_local(skb, *local, &p);
	/* to a pod, or a reply of a connection whose packets skipped the stack on the way in (netfilter
	 * would see half a connection: conntrack would take it up mid-stream, NAT would rewrite it) */
	if ((ipc_flags & IPC_POD) || (how & HOW_REPLY_BYPASS))
		return forward_remote(skb, &p);
	stat_inc(STAT_TO_STACK);
	return TC_ACT_OK;
}

SEC("tc")
int to_container(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex;
	struct endpoint *ep = bpf_map_lookup_elem(&pn_endpoints, &ifindex);
	struct pkt p = {};
	int rc, how = 0;
	__u16 port = 0;

	if (!ep) {
		stat_inc(STAT_NO_ENDPOINT);
		return TC_ACT_SHOT;
	}
	rc = parse(skb, &p);
	if (rc == 1) {
		if (skb->protocol == bpf_htons(ETH_P_ARP))
			return TC_ACT_OK;
		return (ep->flags & (EP_INGRESS_ENFORCED | EP_NOT_READY)) ? TC_ACT_SHOT : TC_ACT_OK;
	}
	if (rc < 0) {
		emit(EVENT_DROP, -rc, DIR_INGRESS, VERDICT_DENIED, MATCH_NONE, ep, ifindex, &p, 0, 0);
		ep_count(ep->id, DIR_INGRESS, p.len, 1);
		return TC_ACT_SHOT;
	}
	if (ct_judge(skb, ep, ifindex, DIR_INGRESS, &p, 0, 1, &how, &port)) {
		ep_count(ep->id, DIR_INGRESS, p.len, 1);
		return TC_ACT_SHOT;
	}
	ep_count(ep->id, DIR_INGRESS, p.len, 0);
	return TC_ACT_OK;
}

SEC("tc")
int from_netdev(struct __sk_buff *skb)
{
	struct pkt p = {};
	__u32 *local;

	if (parse(skb, &p) != 0)
		return TC_ACT_OK; /* not IPv4, or not ours to judge here: the stack */
	local = bpf_map_lookup_elem(&pn_local_ips, &p.daddr);
	if (!local)
		return TC_ACT_OK;
	return deliver_local(skb, *local, &p);
}

char LICENSE[] SEC("license") = "GPL";
