/* Trace and drop events into the ring buffer; decoded by bpf/maps.py EventCodec. */
#ifndef OSTIUM_EVENTS_H
#define OSTIUM_EVENTS_H

#include "maps.h"

#define EV_TRACE 1
#define EV_DROP 2

#define VERDICT_FORWARDED 1
#define VERDICT_REDIRECTED 2
#define VERDICT_DROPPED 3

/* Reason codes (also the index into ost_metrics). Python: bpf.maps.Reason. */
#define REASON_NEW_FLOW 1          /* trace: first packet of a flow, allowed */
#define REASON_REPLY 2
#define REASON_POLICY_DENY 10      /* drop: a deny rule matched */
#define REASON_POLICY_DEFAULT 11   /* drop: the endpoint is enforced and no rule allows */
#define REASON_UNSUPPORTED_L3 12   /* drop: IPv6 on an enforced endpoint (no v6 policy yet) */
#define REASON_INVALID 13          /* drop: truncated header */
#define REASON_PROXY_UNAVAILABLE 14 /* refused: an L7 rule applies and no proxy listens (or not TCP) */
#define REASON_PROXY_BYPASS 15     /* drop: an L7 rule applies at the destination and the flow did
				    * not come through the proxy (e.g. from the node itself) */
#define REASON_PROXY_BOTH_ENDS 16  /* drop: L7 rules on both ends of a node-local flow: one proxy
				    * pass cannot enforce both */
#define REASON_EVENTS_LOST 63      /* ring buffer full: an event was not delivered */

struct trace_event {
	__u64 ts_ns;
	__u8 type;        /* EV_* */
	__u8 reason;      /* REASON_* */
	__u8 direction;   /* DIR_* of the endpoint */
	__u8 proto;
	__u16 ep_id;
	__u16 proxy_port;
	__u32 src_identity;
	__u32 dst_identity;
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u32 ifindex;
	__u8 verdict;     /* VERDICT_* */
	__u8 tcp_flags;
	__u16 pad;
	__u32 len;
};

/* Never used at run time: keeps struct trace_event in the object's BTF so the codec test can
 * compare sizes (the ring buffer map itself carries no value type). */
struct trace_event ost_btf_trace_event;

static __always_inline void metric_inc(__u32 idx)
{
	__u64 *c = bpf_map_lookup_elem(&ost_metrics, &idx);
	if (c)
		*c += 1;
}

static __always_inline void emit_event(const struct trace_event *tmpl)
{
	struct trace_event *ev = bpf_ringbuf_reserve(&ost_events, sizeof(*ev), 0);
	if (!ev) {
		metric_inc(REASON_EVENTS_LOST);
		return;
	}
	__builtin_memcpy(ev, tmpl, sizeof(*ev));
	ev->ts_ns = bpf_ktime_get_ns();
	bpf_ringbuf_submit(ev, 0);
}

#endif
