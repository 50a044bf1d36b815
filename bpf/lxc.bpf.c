// SPDX-License-Identifier: Apache-2.0
/* Identity-based L3/L4 policy on an endpoint's host-side veth.
 * tc ingress on the host veth = packets the endpoint sends (its egress policy);
 * tc egress on the host veth = packets delivered to the endpoint (its ingress policy).
 * Flows under an L7 rule are handed to a node-local proxy here, at the source's tc ingress
 * (bpf_sk_assign), for the source's egress rules and for a node-local destination's ingress rules;
 * without a proxy they are refused, never forwarded unenforced. */
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

static __always_inline void report_drop(struct trace_event *ev, __u8 reason)
{
	ev->type = EV_DROP;
	ev->reason = reason;
	ev->verdict = VERDICT_DROPPED;
	metric_inc(reason);
	emit_event(ev);
}

static __always_inline int drop(struct trace_event *ev, __u8 reason)
{
	report_drop(ev, reason);
	return CTX_DROP;
}

/* L7 redirect (ENVIRONMENT.md "L7 redirect"): the flow's own socket if the proxy already has it
 * (established or mid-handshake: almost every packet), else the proxy's transparent listener on
 * 127.0.0.1:proxy_port. A LISTEN socket found by the flow's tuple is some node process listening
 * on the destination port, and TIME_WAIT is a dead connection: neither is the proxy. Returns 0
 * when the packet now belongs to a proxy socket. */
static __always_inline int proxy_assign(struct __sk_buff *skb, __be32 saddr, __be32 daddr,
					__be16 sport, __be16 dport, __u16 proxy_port, int listener)
{
	struct bpf_sock_tuple t = {};
	t.ipv4.saddr = saddr;
	t.ipv4.daddr = daddr;
	t.ipv4.sport = sport;
	t.ipv4.dport = dport;
	struct bpf_sock *sk = bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	if (sk) {
		if (sk->state != BPF_TCP_LISTEN && sk->state != BPF_TCP_TIME_WAIT)
			goto assign;
		bpf_sk_release(sk);
	}
	if (!listener)
		return -1;
	t.ipv4.daddr = bpf_htonl(LOOPBACK_ADDR);
	t.ipv4.dport = bpf_htons(proxy_port);
	sk = bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return -1;
	if (sk->state != BPF_TCP_LISTEN) {
		bpf_sk_release(sk);
		return -1;
	}
assign:;
	long err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	return err ? -1 : 0;
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
			return drop(&ev, REASON_UNSUPPORTED_L3);
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

	/* The proxies' own upstream connections (SO_MARK 0x1000, set in the node's stack, so the
	 * mark is intact here) were enforced by the proxy: the destination's ingress policy is not
	 * applied again (it would see the node's address, not the real client), and a REDIRECT verdict
	 * must not drop them. Conntrack still records them so the destination's replies pass. Only a
	 * process with CAP_NET_ADMIN in the node can set this mark. */
	int from_proxy = dir == DIR_INGRESS &&
			 (skb->mark & MARK_PROXY_UPSTREAM_MASK) == MARK_PROXY_UPSTREAM;
	__u16 proxy_port = 0;
	int redirect = 0;
	__u8 refuse = 0;   /* REASON_* when the flow is refused (answered with a reset) */
	__u32 plens_id = ep->plens[(dir & 1) * 2], plens_any = ep->plens[(dir & 1) * 2 + 1];
	if ((enforced || plens_id || plens_any) && !icmp_error && !from_proxy) {
		/* Checked for every packet of a flow, not only the first: a new deny cuts it. A
		 * direction that is not enforced still obeys deny rules (enableDefaultDeny: false). */
		struct policy_entry *pe = policy_lookup((__u16)ep->ep_id, dir, remote_id, proto, policy_port,
							 plens_id, plens_any);
		if ((pe && pe->verdict == POLICY_DENY) || (!pe && enforced))
			return drop(&ev, pe ? REASON_POLICY_DENY : REASON_POLICY_DEFAULT);
		if (pe) {
			if (pe->verdict == POLICY_REDIRECT) {
				/* At the destination an L7 flow arrives only through the proxy (the
				 * source's program redirected it): anything else, e.g. from the node
				 * itself or a source without the redirect, would bypass L7 rules. */
				if (dir == DIR_INGRESS)
					return drop(&ev, REASON_PROXY_BYPASS);
				redirect = 1;
				proxy_port = pe->proxy_port;
			}
			__sync_fetch_and_add(&pe->packets, 1);
		}
	}

	if (dir == DIR_EGRESS && !icmp_error) {
		/* A node-local destination's ingress policy, done here as Cilium does for local
		 * delivery: its L7 rules need the redirect at this hook (sk_assign works at tc ingress
		 * only), and a flow the egress proxy carries reaches it as the proxy's upstream, which
		 * it no longer polices. */
		struct endpoint_info *dep = bpf_map_lookup_elem(&ost_ep_by_ip, &ip->daddr);
		if (dep) {
			__u32 d_enforced = dep->flags & EP_F_INGRESS_ENFORCED;
			__u32 d_id = dep->plens[0], d_any = dep->plens[1];
			if (d_enforced || d_id || d_any) {
				struct policy_entry *dpe = policy_lookup((__u16)dep->ep_id, DIR_INGRESS, ep->identity,
									  proto, policy_port, d_id, d_any);
				if (dpe && dpe->verdict == POLICY_REDIRECT) {
					if (redirect) {
						refuse = REASON_PROXY_BOTH_ENDS;
					} else {
						redirect = 1;
						proxy_port = dpe->proxy_port;
					}
					__sync_fetch_and_add(&dpe->packets, 1);
				} else if (redirect && ((dpe && dpe->verdict == POLICY_DENY) || (!dpe && d_enforced))) {
					return drop(&ev, dpe ? REASON_POLICY_DENY : REASON_POLICY_DEFAULT);
				}
			}
		}
	}

	if (dir == DIR_EGRESS && !redirect && !refuse && proto == IPPROTO_TCP) {
		/* Egress gateway: after the source's own policy admitted the flow (an L7 rule of the
		 * source or of a local destination takes precedence), selected destinations go to the
		 * egress listener, whose upstream leaves from the egress IP (marked: never back here). */
		struct egress_gw_key gk = { .prefixlen = 64, .source = ip->saddr, .dest = ip->daddr };
		struct egress_gw_val *gv = bpf_map_lookup_elem(&ost_egress_gw, &gk);
		if (gv && gv->proxy_port) {
			redirect = 1;
			proxy_port = gv->proxy_port;
		}
	}

	if (redirect && !refuse) {
		/* TCP only (Envoy, the Kafka proxy); no proxy port configured counts as no listener. */
		if (proto != IPPROTO_TCP)
			return drop(&ev, REASON_PROXY_UNAVAILABLE);
		if (proxy_port && proxy_assign(skb, ip->saddr, ip->daddr, sport, dport, proxy_port, 1) == 0)
			skb->mark = (skb->mark & ~MARK_MAGIC_MASK) | MARK_MAGIC_TO_PROXY;
		else
			refuse = REASON_PROXY_UNAVAILABLE;
	} else if (!redirect && status == CT_ESTABLISHED && proto == IPPROTO_TCP && (ct->flags & CT_F_REDIRECT)) {
		/* The policy no longer redirects a connection the proxy holds (an L7 rule was removed):
		 * its packets stay with the proxy, which closes it gracefully, instead of reaching the
		 * peer mid-stream (a reset). Only the established socket: new flows go direct. */
		if (proxy_assign(skb, ip->saddr, ip->daddr, sport, dport, 0, 0) == 0)
			skb->mark = (skb->mark & ~MARK_MAGIC_MASK) | MARK_MAGIC_TO_PROXY;
	}

	if (status == CT_NEW) {
		/* A refused flow keeps a short entry: the reset it gets back must pass as its reply. */
		struct ct_entry ne = {
			.expires_ns = now + (refuse ? CT_LIFETIME_TCP_CLOSING : ct_lifetime(proto, tcp_flags)),
			.packets = 1, .src_identity = ev.src_identity, .proxy_port = proxy_port,
			.flags = redirect ? CT_F_REDIRECT : 0,
		};
		bpf_map_update_elem(&ost_ct4, &ck, &ne, BPF_ANY);
		if (!refuse) {
			ev.type = EV_TRACE;
			ev.reason = REASON_NEW_FLOW;
			ev.verdict = redirect ? VERDICT_REDIRECTED : VERDICT_FORWARDED;
			ev.proxy_port = proxy_port;
			metric_inc(REASON_NEW_FLOW);
			emit_event(&ev);
		}
	}
	if (refuse) {
		/* Fail closed: not dropped silently (the client would hang until its timeout) but
		 * passed on with a mark that the agent's nft rule answers with a TCP reset before it is
		 * forwarded or delivered. */
		skb->mark = (skb->mark & ~MARK_MAGIC_MASK) | MARK_MAGIC_PROXY_REFUSE;
		ev.proxy_port = proxy_port;
		report_drop(&ev, refuse);
	}
	return CTX_PASS;

invalid:
	if (!enforced)
		return CTX_PASS;
	return drop(&ev, REASON_INVALID);
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
