// SPDX-License-Identifier: Apache-2.0
/* Identity-based L3/L4 policy on an endpoint's host-side veth.
 * tc ingress on the host veth = packets the endpoint sends (its egress policy);
 * tc egress on the host veth = packets delivered to the endpoint (its ingress policy). */
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/events.h"
#include "lib/conntrack.h"
#include "lib/policy.h"

static __always_inline __u32 ipcache_identity(__be32 addr)
{
	struct ipcache_val *v = bpf_map_lookup_elem(&ost_ipcache_host, &addr);
	if (v)
		return v->identity;
	struct ipcache_key key = { .prefixlen = 32, .address = addr };
	v = bpf_map_lookup_elem(&ost_ipcache, &key);
	return v ? v->identity : ID_WORLD;
}

/* Endpoints have IPv4 addresses only, so IPv6 between them can only be link-scoped (neighbour
 * discovery, MLD from fe80::/10 to fe80::/10 or ff02::/16): it never leaves the veth's link and
 * is let through rather than reported as a drop; any other IPv6 is dropped on enforced endpoints. */
static __always_inline int ipv6_link_scoped(void *ip6, void *data_end)
{
	__u8 *h = ip6;
	if ((void *)(h + 40) > data_end)
		return 0;
	int src_ok = (h[8] == 0xfe && (h[9] & 0xc0) == 0x80) ||
		     (h[8] == 0 && h[9] == 0 && h[10] == 0 && h[11] == 0 && h[12] == 0 && h[13] == 0 &&
		      h[14] == 0 && h[15] == 0 && h[16] == 0 && h[17] == 0 && h[18] == 0 && h[19] == 0 &&
		      h[20] == 0 && h[21] == 0 && h[22] == 0 && h[23] == 0);   /* :: (DAD) */
	int dst_ok = (h[24] == 0xfe && (h[25] & 0xc0) == 0x80) || (h[24] == 0xff && h[25] == 0x02);
	return src_ok && dst_ok;
}

static __always_inline int is_icmp_error(__u8 type)
{
	return type == ICMP_DEST_UNREACH || type == ICMP_TIME_EXCEEDED || type == ICMP_PARAMETERPROB;
}

static __always_inline int handle(struct __sk_buff *skb, __u8 dir)
{
	__u32 ifindex = skb->ifindex;
	struct endpoint_info *ep = bpf_map_lookup_elem(&ost_endpoints, &ifindex);
	if (!ep)
		return CTX_PASS;
	__u32 enforced = ep->flags & (dir == DIR_EGRESS ? EP_F_EGRESS_ENFORCED : EP_F_INGRESS_ENFORCED);

	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct trace_event ev = {
		.direction = dir, .ep_id = (__u16)ep->ep_id, .ifindex = ifindex, .len = skb->len,
	};

	if ((void *)(eth + 1) > data_end)
		return CTX_PASS;
	if (eth->h_proto != bpf_htons(ETH_P_IP)) {
		if (eth->h_proto == bpf_htons(ETH_P_IPV6) && enforced && !ipv6_link_scoped(eth + 1, data_end)) {
			ev.type = EV_DROP;
			ev.reason = REASON_UNSUPPORTED_L3;
			ev.verdict = VERDICT_DROPPED;
			metric_inc(REASON_UNSUPPORTED_L3);
			emit_event(&ev);
			return CTX_DROP;
		}
		return CTX_PASS;   /* ARP and the like */
	}

	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		goto invalid;
	__u32 ihl = ip->ihl * 4;
	if (ihl < sizeof(*ip))
		goto invalid;
	void *l4 = (void *)ip + ihl;
	__u8 proto = ip->protocol;
	__be16 sport = 0, dport = 0;
	__u16 policy_port = 0;
	__u8 tcp_flags = 0;
	int icmp_error = 0;

	if (proto == IPPROTO_TCP) {
		struct tcphdr *th = l4;
		if ((void *)(th + 1) > data_end)
			goto invalid;
		sport = th->source;
		dport = th->dest;
		tcp_flags = ((__u8 *)th)[13];
		policy_port = bpf_ntohs(dport);
	} else if (proto == IPPROTO_UDP) {
		struct udphdr *uh = l4;
		if ((void *)(uh + 1) > data_end)
			goto invalid;
		sport = uh->source;
		dport = uh->dest;
		policy_port = bpf_ntohs(dport);
	} else if (proto == IPPROTO_ICMP) {
		struct ost_icmphdr *ih = l4;
		if ((void *)(ih + 1) > data_end)
			goto invalid;
		/* Echo request id in sport, echo reply id in dport: a reply is the reversed tuple. */
		if (ih->type == ICMP_ECHO)
			sport = ih->id;
		else if (ih->type == ICMP_ECHOREPLY)
			dport = ih->id;
		icmp_error = is_icmp_error(ih->type);
		policy_port = ih->type;   /* ICMP rules match the type in the port field, like Cilium */
	}

	ev.proto = proto;
	ev.saddr = ip->saddr;
	ev.daddr = ip->daddr;
	ev.sport = sport;
	ev.dport = proto == IPPROTO_ICMP ? bpf_htons(policy_port) : dport;
	ev.tcp_flags = tcp_flags;

	__u32 remote_id = ipcache_identity(dir == DIR_EGRESS ? ip->daddr : ip->saddr);
	ev.src_identity = dir == DIR_EGRESS ? ep->identity : remote_id;
	ev.dst_identity = dir == DIR_EGRESS ? remote_id : ep->identity;

	struct ct_key ck = {
		.saddr = ip->saddr, .daddr = ip->daddr, .sport = sport, .dport = dport,
		.proto = proto, .direction = dir, .ep_id = (__u16)ep->ep_id,
	};
	__u64 now = bpf_ktime_get_ns();
	struct ct_entry *ct;
	int status = ct_lookup(&ck, tcp_flags, now, &ct);
	if (status == CT_REPLY)
		return CTX_PASS;

	__u16 proxy_port = 0;
	int redirect = 0;
	__u32 plens_id = ep->plens[(dir & 1) * 2], plens_any = ep->plens[(dir & 1) * 2 + 1];
	if ((enforced || plens_id || plens_any) && !icmp_error) {
		/* Checked for every packet of a flow, not only the first: a new deny cuts it. A
		 * direction that is not enforced still obeys deny rules (enableDefaultDeny: false). */
		struct policy_entry *pe = policy_lookup((__u16)ep->ep_id, dir, remote_id, proto, policy_port,
							 plens_id, plens_any);
		if ((pe && pe->verdict == POLICY_DENY) || (!pe && enforced)) {
			ev.type = EV_DROP;
			ev.reason = pe ? REASON_POLICY_DENY : REASON_POLICY_DEFAULT;
			ev.verdict = VERDICT_DROPPED;
			metric_inc(ev.reason);
			emit_event(&ev);
			return CTX_DROP;
		}
		if (pe) {
			if (pe->verdict == POLICY_REDIRECT) {
				redirect = 1;
				proxy_port = pe->proxy_port;
			}
			__sync_fetch_and_add(&pe->packets, 1);
		}
	}

	if (status == CT_NEW) {
		struct ct_entry ne = {
			.expires_ns = now + ct_lifetime(proto, tcp_flags), .packets = 1,
			.src_identity = ev.src_identity, .proxy_port = proxy_port,
			.flags = redirect ? CT_F_REDIRECT : 0,
		};
		bpf_map_update_elem(&ost_ct4, &ck, &ne, BPF_ANY);
		ev.type = EV_TRACE;
		ev.reason = REASON_NEW_FLOW;
		ev.verdict = redirect ? VERDICT_REDIRECTED : VERDICT_FORWARDED;
		ev.proxy_port = proxy_port;
		metric_inc(REASON_NEW_FLOW);
		emit_event(&ev);
	}
	if (redirect)
		skb->mark = ((__u32)proxy_port << 16) | MARK_MAGIC_TO_PROXY;
	return CTX_PASS;

invalid:
	if (!enforced)
		return CTX_PASS;
	ev.type = EV_DROP;
	ev.reason = REASON_INVALID;
	ev.verdict = VERDICT_DROPPED;
	metric_inc(REASON_INVALID);
	emit_event(&ev);
	return CTX_DROP;
}

SEC("tc")
int ost_lxc_from_endpoint(struct __sk_buff *skb)
{
	return handle(skb, DIR_EGRESS);
}

SEC("tc")
int ost_lxc_to_endpoint(struct __sk_buff *skb)
{
	return handle(skb, DIR_INGRESS);
}

char _license[] SEC("license") = "GPL";
