/* Connection tracking for the endpoint programs: replies of allowed flows pass. */
#ifndef OSTIUM_CONNTRACK_H
#define OSTIUM_CONNTRACK_H

#include "maps.h"

#define CT_NEW 0
#define CT_ESTABLISHED 1
#define CT_REPLY 2

#define CT_LIFETIME_TCP (21600ULL * 1000000000ULL)
#define CT_LIFETIME_TCP_CLOSING (10ULL * 1000000000ULL)
#define CT_LIFETIME_UDP (60ULL * 1000000000ULL)
#define CT_LIFETIME_ICMP (30ULL * 1000000000ULL)

static __always_inline __u64 ct_lifetime(__u8 proto, __u8 tcp_flags)
{
	if (proto == IPPROTO_TCP)
		return (tcp_flags & 0x05) ? CT_LIFETIME_TCP_CLOSING : CT_LIFETIME_TCP; /* FIN|RST */
	if (proto == IPPROTO_UDP)
		return CT_LIFETIME_UDP;
	return CT_LIFETIME_ICMP;
}

/* Looks the tuple up in the direction it was seen, then reversed (a reply). */
static __always_inline int ct_lookup(const struct ct_key *fwd, __u8 tcp_flags, __u64 now,
				     struct ct_entry **out)
{
	struct ct_entry *e = bpf_map_lookup_elem(&ost_ct4, fwd);
	if (e && e->expires_ns > now) {
		e->expires_ns = now + ct_lifetime(fwd->proto, tcp_flags);
		e->packets++;
		*out = e;
		return CT_ESTABLISHED;
	}
	struct ct_key rev = {
		.saddr = fwd->daddr, .daddr = fwd->saddr,
		.sport = fwd->dport, .dport = fwd->sport,
		.proto = fwd->proto, .direction = fwd->direction ^ 1, .ep_id = fwd->ep_id,
	};
	e = bpf_map_lookup_elem(&ost_ct4, &rev);
	if (e && e->expires_ns > now) {
		e->expires_ns = now + ct_lifetime(fwd->proto, tcp_flags);
		e->flags |= CT_F_SEEN_REPLY;
		*out = e;
		return CT_REPLY;
	}
	*out = NULL;
	return CT_NEW;
}

#endif
