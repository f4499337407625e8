// SPDX-License-Identifier: GPL-2.0
/*
 * podnet socket load balancing (Cilium's "socket-LB"): ClusterIP and ExternalIP services are
 * translated once per socket (TCP, connected UDP) or per datagram (unconnected UDP), at the
 * system call, by cgroup v2 hooks. Packets on the wire carry the backend's address: there is no
 * per-packet NAT and no conntrack entry for the service.
 *
 *   connect(VIP:port)  [cgroup/connect4 lb_connect4]
 *     lb_services[{VIP, port, proto}] -> {id, count, affinity}     miss: untouched
 *     count == 0          -> connect() fails at once with ECONNREFUSED (bpf_set_retval + return 0)
 *     affinity and lb_affinity[{netns cookie, id}] fresh and still valid -> that backend
 *     else slot = 1 + prandom % count; lb_backends[{id, slot}] -> {ip, port}
 *     ctx->user_ip4/user_port = backend; UDP: lb_revnat[{socket cookie, backend}] = {VIP, port}
 *   sendto(VIP:port)   [cgroup/sendmsg4 lb_sendmsg4]: the same, per datagram (UDP)
 *   recvfrom()         [cgroup/recvmsg4 lb_recvmsg4]: source backend -> VIP via lb_revnat
 *   getpeername()      [cgroup/getpeername4 lb_getpeername4]: UDP peer backend -> VIP via lb_revnat
 *
 * Updates from user space never show a half-written service: a backend slot is written before
 * the count that makes it reachable, and deleted after the count that made it reachable shrank.
 * Affinity (sessionAffinity: ClientIP) is kept per client network namespace (a pod), refreshed on
 * every use; an entry is honoured only while its slot still holds the same backend.
 *
 * Map layouts are mirrored by podnet/dataplane/sock_lb.py (encode_* / decode_*).
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>

#define ECONNREFUSED 111
#define NSEC_PER_SEC 1000000000ULL

struct svc_key {
	__u32 vip;   /* network order */
	__u16 port;  /* network order */
	__u8 proto;  /* IPPROTO_TCP | IPPROTO_UDP */
	__u8 pad;
};

struct svc_value {
	__u32 id;               /* service id: the key of its backends and affinity entries */
	__u16 count;            /* backends in slots 1..count; 0: refuse */
	__u16 pad;
	__u32 affinity_seconds; /* 0: no affinity */
};

struct backend_key {
	__u32 id;
	__u32 slot; /* 1..count */
};

struct backend_value {
	__u32 ip;   /* network order */
	__u16 port; /* network order */
	__u16 pad;
};

struct affinity_key {
	__u64 netns_cookie;
	__u32 id;
	__u32 pad;
};

struct affinity_value {
	__u64 last_used_ns; /* bpf_ktime_get_ns */
	__u32 slot;
	struct backend_value backend;
};

struct revnat_key {
	__u64 cookie; /* socket cookie */
	__u32 ip;     /* backend, network order */
	__u16 port;
	__u16 pad;
};

struct revnat_value {
	__u32 vip;
	__u16 port;
	__u16 pad;
};

enum {
	STAT_LB_CONNECT,
	STAT_LB_SENDMSG,
	STAT_NO_BACKEND,
	STAT_AFFINITY_HIT,
	STAT_BACKEND_MISS,
	STAT_REVNAT_RECV,
	STAT_REVNAT_PEER,
	STAT_REVNAT_UPDATE_ERROR,
	STAT_MAX,
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct svc_key);
	__type(value, struct svc_value);
	__uint(max_entries, 16384);
} lb_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct backend_key);
	__type(value, struct backend_value);
	__uint(max_entries, 65536);
} lb_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct affinity_key);
	__type(value, struct affinity_value);
	__uint(max_entries, 16384);
} lb_affinity SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct revnat_key);
	__type(value, struct revnat_value);
	__uint(max_entries, 65536);
} lb_revnat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, STAT_MAX);
} lb_stats SEC(".maps");

static __always_inline void count(__u32 index)
{
	__u64 *value = bpf_map_lookup_elem(&lb_stats, &index);

	if (value)
		*value += 1;
}

static __always_inline int same_backend(const struct backend_value *a, const struct backend_value *b)
{
	return a->ip == b->ip && a->port == b->port;
}

/* The backend for this client: remembered (affinity) or random. NULL: none (slot missing). */
static __always_inline const struct backend_value *
pick_backend(struct bpf_sock_addr *ctx, const struct svc_value *svc)
{
	struct backend_key bkey = { .id = svc->id, .slot = 0 };
	struct affinity_key akey = {};
	struct affinity_value *remembered, fresh = {};
	const struct backend_value *backend;
	__u64 now = 0;

	if (svc->affinity_seconds) {
		now = bpf_ktime_get_ns();
		akey.netns_cookie = bpf_get_netns_cookie(ctx);
		akey.id = svc->id;
		remembered = bpf_map_lookup_elem(&lb_affinity, &akey);
		if (remembered && remembered->slot >= 1 && remembered->slot <= svc->count &&
		    now - remembered->last_used_ns <= (__u64)svc->affinity_seconds * NSEC_PER_SEC) {
			bkey.slot = remembered->slot;
			backend = bpf_map_lookup_elem(&lb_backends, &bkey);
			if (backend && same_backend(backend, &remembered->backend)) {
				remembered->last_used_ns = now;
				count(STAT_AFFINITY_HIT);
				return backend;
			}
		}
	}
	bkey.slot = 1 + bpf_get_prandom_u32() % svc->count;
	backend = bpf_map_lookup_elem(&lb_backends, &bkey);
	if (!backend) {
		count(STAT_BACKEND_MISS);
		return NULL;
	}
	if (svc->affinity_seconds) {
		fresh.last_used_ns = now;
		fresh.slot = bkey.slot;
		fresh.backend.ip = backend->ip;
		fresh.backend.port = backend->port;
		bpf_map_update_elem(&lb_affinity, &akey, &fresh, BPF_ANY);
	}
	return backend;
}

static __always_inline void remember_revnat(struct bpf_sock_addr *ctx, const struct backend_value *backend,
					    __u32 vip, __u16 port)
{
	struct revnat_key key = {
		.cookie = bpf_get_socket_cookie(ctx), .ip = backend->ip, .port = backend->port, .pad = 0,
	};
	struct revnat_value value = { .vip = vip, .port = port, .pad = 0 };
	struct revnat_value *old = bpf_map_lookup_elem(&lb_revnat, &key);

	if (old && old->vip == vip && old->port == port)
		return; /* the common case for a busy UDP socket: no write */
	if (bpf_map_update_elem(&lb_revnat, &key, &value, BPF_ANY) < 0)
		count(STAT_REVNAT_UPDATE_ERROR);
}

/* 1: allow (maybe rewritten), 0: refuse with the errno set by bpf_set_retval. */
static __always_inline int translate(struct bpf_sock_addr *ctx, __u32 stat)
{
	struct svc_key key = {};
	const struct svc_value *svc;
	const struct backend_value *backend;
	__u32 vip = ctx->user_ip4;
	__u16 port = (__u16)ctx->user_port;
	__u32 proto = ctx->protocol;

	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return 1;
	key.vip = vip;
	key.port = port;
	key.proto = (__u8)proto;
	svc = bpf_map_lookup_elem(&lb_services, &key);
	if (!svc)
		return 1;
	if (svc->count == 0) {
		count(STAT_NO_BACKEND);
		bpf_set_retval(-ECONNREFUSED);
		return 0;
	}
	backend = pick_backend(ctx, svc);
	if (!backend) { /* a slot below count is always written first: only a torn map gets here */
		count(STAT_NO_BACKEND);
		bpf_set_retval(-ECONNREFUSED);
		return 0;
	}
	if (proto == IPPROTO_UDP)
		remember_revnat(ctx, backend, vip, port);
	ctx->user_ip4 = backend->ip;
	ctx->user_port = backend->port;
	count(stat);
	return 1;
}

SEC("cgroup/connect4")
int lb_connect4(struct bpf_sock_addr *ctx)
{
	return translate(ctx, STAT_LB_CONNECT);
}

SEC("cgroup/sendmsg4")
int lb_sendmsg4(struct bpf_sock_addr *ctx)
{
	return translate(ctx, STAT_LB_SENDMSG);
}

/* The source of a reply from a backend, back to the service address the socket sent to. */
static __always_inline void reverse(struct bpf_sock_addr *ctx, __u32 stat)
{
	struct revnat_key key = {
		.cookie = bpf_get_socket_cookie(ctx),
		.ip = ctx->user_ip4,
		.port = (__u16)ctx->user_port,
		.pad = 0,
	};
	struct revnat_value *orig;

	if (ctx->protocol != IPPROTO_UDP)
		return;
	orig = bpf_map_lookup_elem(&lb_revnat, &key);
	if (!orig)
		return;
	ctx->user_ip4 = orig->vip;
	ctx->user_port = orig->port;
	count(stat);
}

SEC("cgroup/recvmsg4")
int lb_recvmsg4(struct bpf_sock_addr *ctx)
{
	reverse(ctx, STAT_REVNAT_RECV);
	return 1;
}

SEC("cgroup/getpeername4")
int lb_getpeername4(struct bpf_sock_addr *ctx)
{
	reverse(ctx, STAT_REVNAT_PEER);
	return 1;
}

char LICENSE[] SEC("license") = "GPL";
