// SPDX-License-Identifier: Apache-2.0
/* Socket-layer service load balancing, attached to the agent's cgroup root (every endpoint
 * cgroup is below it). connect/sendmsg rewrite VIP:port to a backend once per socket (or per
 * datagram), so no packet is ever NATed; recvmsg/getpeername show the VIP again; sock_release
 * drops the socket's VIP record so the reverse map never fills up with dead sockets. IPv6
 * sockets are translated when they address an IPv4 service v4-mapped (::ffff:VIP); IPv6
 * services are not implemented. */
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/lb.h"

static __always_inline int sock4_xlate(struct bpf_sock_addr *ctx)
{
	__u8 proto = ctx->protocol;
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return 1;

	__be32 vip = ctx->user_ip4;
	__be16 vport = (__be16)ctx->user_port;
	struct lb4_service *svc = 0;
	__u32 backend_id = 0;
	int refuse = 0;
	struct lb4_backend *be = lb4_select(ctx, vip, vport, proto, &svc, &backend_id, &refuse);
	if (!be) {
		if (refuse) {
			/* No backend: the application gets ECONNREFUSED at once, not a timeout. */
			bpf_set_retval(-OST_ECONNREFUSED);
			return 0;
		}
		return 1;
	}

	struct lb4_revnat_key rkey = {
		.cookie = bpf_get_socket_cookie(ctx), .address = be->address, .port = be->port,
	};
	struct lb4_revnat_val rval = {
		.address = vip, .port = vport, .rev_nat_id = svc ? (__u16)svc->rev_nat_id : 0,
	};
	bpf_map_update_elem(&ost_lb4_revnat, &rkey, &rval, BPF_ANY);

	ctx->user_ip4 = be->address;
	ctx->user_port = (__u32)be->port;
	return 1;
}

static __always_inline void sock4_rev_xlate(struct bpf_sock_addr *ctx)
{
	struct lb4_revnat_key rkey = {
		.cookie = bpf_get_socket_cookie(ctx),
		.address = ctx->user_ip4,
		.port = (__be16)ctx->user_port,
	};
	struct lb4_revnat_val *v = bpf_map_lookup_elem(&ost_lb4_revnat, &rkey);
	if (v) {
		ctx->user_ip4 = v->address;
		ctx->user_port = (__u32)v->port;
	}
}

SEC("cgroup/connect4")
int ost_sock4_connect(struct bpf_sock_addr *ctx)
{
	return sock4_xlate(ctx);
}

SEC("cgroup/sendmsg4")
int ost_sock4_sendmsg(struct bpf_sock_addr *ctx)
{
	return sock4_xlate(ctx);
}

SEC("cgroup/recvmsg4")
int ost_sock4_recvmsg(struct bpf_sock_addr *ctx)
{
	sock4_rev_xlate(ctx);
	return 1;
}

SEC("cgroup/getpeername4")
int ost_sock4_getpeername(struct bpf_sock_addr *ctx)
{
	sock4_rev_xlate(ctx);
	return 1;
}

/* IPv4 services for dual-stack applications: an AF_INET6 socket talking to ::ffff:a.b.c.d
 * (v4-mapped) goes through the *6 hooks, not the *4 ones. Same maps, same choice. */
static __always_inline int v4_mapped(struct bpf_sock_addr *ctx)
{
	return ctx->user_ip6[0] == 0 && ctx->user_ip6[1] == 0 && ctx->user_ip6[2] == bpf_htonl(0x0000ffff);
}

static __always_inline int sock6_xlate_v4(struct bpf_sock_addr *ctx)
{
	__u8 proto = ctx->protocol;
	if ((proto != IPPROTO_TCP && proto != IPPROTO_UDP) || !v4_mapped(ctx))
		return 1;
	__be32 vip = ctx->user_ip6[3];
	__be16 vport = (__be16)ctx->user_port;
	struct lb4_service *svc = 0;
	__u32 backend_id = 0;
	int refuse = 0;
	struct lb4_backend *be = lb4_select(ctx, vip, vport, proto, &svc, &backend_id, &refuse);
	if (!be) {
		if (refuse) {
			bpf_set_retval(-OST_ECONNREFUSED);
			return 0;
		}
		return 1;
	}
	struct lb4_revnat_key rkey = {
		.cookie = bpf_get_socket_cookie(ctx), .address = be->address, .port = be->port,
	};
	struct lb4_revnat_val rval = {
		.address = vip, .port = vport, .rev_nat_id = svc ? (__u16)svc->rev_nat_id : 0,
	};
	bpf_map_update_elem(&ost_lb4_revnat, &rkey, &rval, BPF_ANY);
	ctx->user_ip6[3] = be->address;
	ctx->user_port = (__u32)be->port;
	return 1;
}

static __always_inline void sock6_rev_xlate_v4(struct bpf_sock_addr *ctx)
{
	if (!v4_mapped(ctx))
		return;
	struct lb4_revnat_key rkey = {
		.cookie = bpf_get_socket_cookie(ctx),
		.address = ctx->user_ip6[3],
		.port = (__be16)ctx->user_port,
	};
	struct lb4_revnat_val *v = bpf_map_lookup_elem(&ost_lb4_revnat, &rkey);
	if (v) {
		ctx->user_ip6[3] = v->address;
		ctx->user_port = (__u32)v->port;
	}
}

SEC("cgroup/connect6")
int ost_sock6_connect(struct bpf_sock_addr *ctx)
{
	return sock6_xlate_v4(ctx);
}

SEC("cgroup/sendmsg6")
int ost_sock6_sendmsg(struct bpf_sock_addr *ctx)
{
	return sock6_xlate_v4(ctx);
}

SEC("cgroup/recvmsg6")
int ost_sock6_recvmsg(struct bpf_sock_addr *ctx)
{
	sock6_rev_xlate_v4(ctx);
	return 1;
}

SEC("cgroup/getpeername6")
int ost_sock6_getpeername(struct bpf_sock_addr *ctx)
{
	sock6_rev_xlate_v4(ctx);
	return 1;
}

SEC("cgroup/sock_release")
int ost_sock_release(struct bpf_sock *ctx)
{
	/* Connected sockets (TCP, connected UDP) have exactly one peer: the backend. Unconnected
	 * UDP sockets may have several; the LRU map ages those out. */
	if (ctx->family != 2 /* AF_INET */ && ctx->family != 10 /* AF_INET6, v4-mapped peers */)
		return 1;
	struct lb4_revnat_key rkey = {
		.cookie = bpf_get_socket_cookie(ctx),
		.address = ctx->dst_ip4,
		.port = (__be16)ctx->dst_port,
	};
	bpf_map_delete_elem(&ost_lb4_revnat, &rkey);
	return 1;
}

char _license[] SEC("license") = "GPL";
