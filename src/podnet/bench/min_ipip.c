// SPDX-License-Identifier: GPL-2.0
/*
 * The bench's own IP-in-IP: the physical reference podnet's IPIP (bpf/ipip.c) is measured against.
 * Written apart from podnet's on purpose, and as small as a working tc tunnel gets: one peer, read
 * from a one-entry array map written once (podnet.bench.min_ipip); no LPM, no peer set, no counters,
 * no ECN, no FIB or neighbour lookup.
 *
 *   min_ipip_encap, tc egress of tunl0 (a dummy device the pod routes point at):
 *     ETH | IP | L4  ->  ETH(eth0 -> peer's eth0) | IP(local -> remote, proto 4) | IP | L4
 *     then bpf_redirect(eth0, egress)
 *   min_ipip_decap, tc ingress of eth0:
 *     IPv4, proto 4, IHL 5, to local  ->  the outer 20 bytes removed, TC_ACT_OK (up the stack)
 *     anything else: TC_ACT_OK, untouched
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define OUTER_LEN 20
#define IP_DF 0x4000
/* Linux 6.3 uapi (an enum member in newer headers, hence no #ifndef): our own name for it. */
#define MIN_ADJ_ROOM_DECAP_L3_IPV4 (1ULL << 7)

struct peer {
	__u32 local;   /* this node's eth0 address, network order */
	__u32 remote;  /* the peer node's eth0 address, network order */
	__u32 ifindex; /* this node's eth0 */
	__u8 src_mac[ETH_ALEN];
	__u8 dst_mac[ETH_ALEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct peer);
	__uint(max_entries, 1);
} min_ipip_peer SEC(".maps");

static __always_inline struct peer *the_peer(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&min_ipip_peer, &zero);
}

static __always_inline __u16 csum20(const void *hdr)
{
	const __u16 *w = hdr;
	__u32 sum = 0;

#pragma unroll
	for (int i = 0; i < OUTER_LEN / 2; i++)
		sum += w[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum += sum >> 16;
	return (__u16)~sum;
}

SEC("tc")
int min_ipip_encap(struct __sk_buff *skb)
{
	struct iphdr out = {};
	struct ethhdr eth = {};
	struct peer *p = the_peer();
	void *data, *data_end;
	struct iphdr *in;

	if (!p || skb->protocol != bpf_htons(ETH_P_IP) || bpf_skb_pull_data(skb, ETH_HLEN + sizeof(*in)))
		return TC_ACT_SHOT;
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	in = data + ETH_HLEN;
	if ((void *)(in + 1) > data_end)
		return TC_ACT_SHOT;
	out.version = 4;
	out.ihl = 5;
	out.tot_len = bpf_htons(bpf_ntohs(in->tot_len) + OUTER_LEN);
	out.id = in->id;
	out.frag_off = in->frag_off & bpf_htons(IP_DF);
	out.ttl = in->ttl;
	out.protocol = IPPROTO_IPIP;
	out.saddr = p->local;
	out.daddr = p->remote;
	out.check = csum20(&out);
	__builtin_memcpy(eth.h_dest, p->dst_mac, ETH_ALEN);
	__builtin_memcpy(eth.h_source, p->src_mac, ETH_ALEN);
	eth.h_proto = bpf_htons(ETH_P_IP);

	if (bpf_skb_adjust_room(skb, OUTER_LEN, BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_FIXED_GSO) ||
	    bpf_skb_store_bytes(skb, 0, &eth, sizeof(eth), 0) ||
	    bpf_skb_store_bytes(skb, ETH_HLEN, &out, sizeof(out), 0))
		return TC_ACT_SHOT;
	return bpf_redirect(p->ifindex, 0);
}

SEC("tc")
int min_ipip_decap(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct iphdr *out = data + ETH_HLEN;
	struct peer *p = the_peer();

	if (!p || skb->protocol != bpf_htons(ETH_P_IP) || (void *)(out + 1) > data_end)
		return TC_ACT_OK;
	if (out->protocol != IPPROTO_IPIP || out->ihl != 5 || out->daddr != p->local)
		return TC_ACT_OK;
	if (bpf_skb_adjust_room(skb, -OUTER_LEN, BPF_ADJ_ROOM_MAC,
				MIN_ADJ_ROOM_DECAP_L3_IPV4 | BPF_F_ADJ_ROOM_FIXED_GSO))
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
