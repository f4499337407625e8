// SPDX-License-Identifier: GPL-2.0
/*
 * podnet IPIP (IP-in-IP, IP protocol 4) tunnel in tc eBPF, for kernels without the ipip module.
 *
 * Encapsulation, tc egress on tunl0 (an Ethernet-type, NOARP device that never transmits):
 *
 *   pod --veth--> node: route "<remote block> via <remote node> dev tunl0 onlink"
 *     tunl0 egress [ipip_encap]: skb = ETH | inner IPv4 | L4
 *       LPM lookup ipip_routes[inner daddr] -> remote node   (miss: drop, STAT_ENCAP_MISS)
 *       bpf_skb_adjust_room(+20, MAC, ENCAP_L3_IPV4 | FIXED_GSO) -> ETH | outer IPv4 | inner...
 *       outer: proto 4, src = ipip_config.local, dst = remote node, TTL and DF copied from the
 *              inner header, TOS = inner ECN bits (RFC 6040), random ID, checksum
 *       bpf_redirect_neigh(ipip_config.uplink_ifindex): FIB lookup of the outer daddr + neighbour
 *              resolution on the uplink (the remote node itself, or the router to its subnet)
 *
 * Decapsulation, tc ingress on the uplink (eth0) [ipip_decap]:
 *   IPv4, protocol 4, IHL 5, not a fragment, outer daddr == ipip_config.local
 *     outer saddr not in ipip_peers -> drop (STAT_DECAP_UNKNOWN_PEER), as Felix drops IPIP
 *                                      from addresses that are not Calico hosts
 *     bpf_skb_adjust_room(-20, MAC, DECAP_L3_IPV4 | FIXED_GSO), outer CE -> inner CE (RFC 6040)
 *     TC_ACT_OK: the inner packet goes up the stack from eth0 and is routed to the pod
 *   anything else: TC_ACT_UNSPEC (untouched; later tc filters still run)
 *
 * These are the bytes Calico's kernel tunl0 (ttl 0 = inherit, tos 0, nopmtudisc) sends.
 * FIXED_GSO keeps the inner MSS on GSO packets: pod MTU = underlay - 20 makes every segment fit.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

/* Linux 6.3 uapi; an enum member in newer headers (so no #ifndef test): our own name. */
#define ADJ_ROOM_DECAP_L3_IPV4 (1ULL << 7)

#define IPIP_HLEN 20
#define IP_DF 0x4000
#define IP_MF 0x2000
#define IP_OFFSET 0x1fff
#define ECN_MASK 3
#define ECN_ECT_0 2
#define ECN_CE 3

/* Map layouts: mirrored by podnet/dataplane/ipip.py (encode_route_key & co.). */
struct lpm_v4_key {
	__u32 prefixlen; /* host order */
	__u32 addr;      /* network order */
};

struct ipip_config {
	__u32 local;          /* this node's underlay address, network order */
	__u32 uplink_ifindex; /* where encapsulated packets leave */
};

enum {
	STAT_ENCAP_OK,
	STAT_ENCAP_MISS,
	STAT_ENCAP_NOT_IPV4,
	STAT_ENCAP_NO_CONFIG,
	STAT_ENCAP_ERROR,
	STAT_DECAP_OK,
	STAT_DECAP_UNKNOWN_PEER,
	STAT_DECAP_FRAGMENT,
	STAT_DECAP_ERROR,
	STAT_MAX,
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct lpm_v4_key);
	__type(value, __u32); /* remote node address, network order */
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} ipip_routes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);   /* a node address we accept IPIP from, network order */
	__type(value, __u32); /* reserved (1) */
	__uint(max_entries, 65536);
} ipip_peers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct ipip_config);
	__uint(max_entries, 1);
} ipip_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, STAT_MAX);
} ipip_stats SEC(".maps");

static __always_inline void count(__u32 stat)
{
	__u64 *n = bpf_map_lookup_elem(&ipip_stats, &stat);

	if (n)
		*n += 1;
}

static __always_inline __u16 ip_checksum(const struct iphdr *ip)
{
	const __u16 *word = (const __u16 *)ip;
	__u32 sum = 0;

#pragma unroll
	for (int i = 0; i < IPIP_HLEN / 2; i++)
		sum += word[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

static __always_inline struct ipip_config *config(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&ipip_config, &zero);
}

SEC("tc")
int ipip_encap(struct __sk_buff *skb)
{
	const __u32 need = ETH_HLEN + sizeof(struct iphdr);
	struct ipip_config *cfg;
	struct lpm_v4_key key;
	struct iphdr outer = {};
	struct iphdr *inner;
	__u32 *remote;
	void *data, *data_end;

	if (skb->protocol != bpf_htons(ETH_P_IP)) {
		count(STAT_ENCAP_NOT_IPV4);
		return TC_ACT_SHOT;
	}
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	if (data + need > data_end) {
		if (bpf_skb_pull_data(skb, need))
			goto error;
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
		if (data + need > data_end)
			goto error;
	}
	inner = data + ETH_HLEN;
	if (inner->version != 4)
		goto error;

	cfg = config();
	if (!cfg || !cfg->local || !cfg->uplink_ifindex) {
		count(STAT_ENCAP_NO_CONFIG);
		return TC_ACT_SHOT;
	}
	key.prefixlen = 32;
	key.addr = inner->daddr;
	remote = bpf_map_lookup_elem(&ipip_routes, &key);
	if (!remote) {
		count(STAT_ENCAP_MISS);
		return TC_ACT_SHOT;
	}

	outer.version = 4;
	outer.ihl = 5;
	outer.tos = (inner->tos & ECN_MASK) == ECN_CE ? ECN_ECT_0 : (inner->tos & ECN_MASK);
	outer.tot_len = bpf_htons(bpf_ntohs(inner->tot_len) + IPIP_HLEN);
	outer.id = (__u16)bpf_get_prandom_u32();
	outer.frag_off = inner->frag_off & bpf_htons(IP_DF);
	outer.ttl = inner->ttl;
	outer.protocol = IPPROTO_IPIP;
	outer.saddr = cfg->local;
	outer.daddr = *remote;
	outer.check = ip_checksum(&outer);

	if (bpf_skb_adjust_room(skb, IPIP_HLEN, BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_FIXED_GSO))
		goto error;
	if (bpf_skb_store_bytes(skb, ETH_HLEN, &outer, sizeof(outer), 0))
		goto error;
	count(STAT_ENCAP_OK);
	return bpf_redirect_neigh(cfg->uplink_ifindex, NULL, 0, 0);

error:
	count(STAT_ENCAP_ERROR);
	return TC_ACT_SHOT;
}

SEC("tc")
int ipip_decap(struct __sk_buff *skb)
{
	const __u32 need = ETH_HLEN + 2 * sizeof(struct iphdr);
	struct ipip_config *cfg;
	struct iphdr *outer, *inner;
	void *data, *data_end;
	__u8 outer_ecn;

	if (skb->protocol != bpf_htons(ETH_P_IP) || skb->len < need)
		return TC_ACT_UNSPEC;
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	if (data + ETH_HLEN + sizeof(struct iphdr) > data_end)
		return TC_ACT_UNSPEC;
	outer = data + ETH_HLEN;
	if (outer->protocol != IPPROTO_IPIP || outer->version != 4 || outer->ihl != 5)
		return TC_ACT_UNSPEC;
	cfg = config();
	if (!cfg || outer->daddr != cfg->local)
		return TC_ACT_UNSPEC;
	if (outer->frag_off & bpf_htons(IP_MF | IP_OFFSET)) {
		count(STAT_DECAP_FRAGMENT); /* left to the stack, which has no ipip handler */
		return TC_ACT_UNSPEC;
	}
	if (!bpf_map_lookup_elem(&ipip_peers, &outer->saddr)) {
		count(STAT_DECAP_UNKNOWN_PEER);
		return TC_ACT_SHOT;
	}
	outer_ecn = outer->tos & ECN_MASK;

	if (data + need > data_end) {
		if (bpf_skb_pull_data(skb, need))
			goto error;
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
		if (data + need > data_end)
			goto error;
	}
	inner = data + ETH_HLEN + IPIP_HLEN;
	if (inner->version != 4)
		goto error;
	if (outer_ecn == ECN_CE) { /* RFC 6040 decapsulation, as ip_tunnel_rcv does */
		__u8 ecn = inner->tos & ECN_MASK;

		if (ecn == 0) {
			count(STAT_DECAP_ERROR); /* CE on a not-ECT inner packet: drop */
			return TC_ACT_SHOT;
		}
		if (ecn != ECN_CE) {
			__u16 old = *(__u16 *)inner, new;

			inner->tos |= ECN_CE;
			new = *(__u16 *)inner;
			if (bpf_l3_csum_replace(skb, ETH_HLEN + IPIP_HLEN + offsetof(struct iphdr, check),
						old, new, sizeof(__u16)))
				goto error;
		}
	}
	if (bpf_skb_adjust_room(skb, -IPIP_HLEN, BPF_ADJ_ROOM_MAC,
				ADJ_ROOM_DECAP_L3_IPV4 | BPF_F_ADJ_ROOM_FIXED_GSO))
		goto error;
	count(STAT_DECAP_OK);
	return TC_ACT_OK;

error:
	count(STAT_DECAP_ERROR);
	return TC_ACT_SHOT;
}

char LICENSE[] SEC("license") = "GPL";
