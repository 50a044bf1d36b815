/* Connect-time service translation: VIP:port/proto -> backend, and the reverse record. */
#ifndef OSTIUM_LB_H
#define OSTIUM_LB_H

#include "maps.h"

#define NSEC_PER_SEC 1000000000ULL

/* Returns the chosen backend, or NULL with *refuse set when the service has no usable backend.
 * Returns NULL with *refuse == 0 when the address is not a service. */
static __always_inline struct lb4_backend *
lb4_select(void *ctx, __be32 addr, __be16 port, __u8 proto, struct lb4_service **svc_out,
	   __u32 *backend_id_out, int *refuse)
{
	struct lb4_key key = { .address = addr, .dport = port, .proto = proto, .slot = 0 };
	struct lb4_service *svc;
	struct lb4_backend *be = NULL;
	__u32 backend_id = 0;
	__u64 now = 0;

	*refuse = 0;
	svc = bpf_map_lookup_elem(&ost_lb4_svc, &key);
	if (!svc)
		return NULL;
	*svc_out = svc;
	if (svc->count == 0) {
		*refuse = 1;
		return NULL;
	}

	struct lb4_affinity_key akey = {};
	if (svc->flags & SVC_FLAG_AFFINITY) {
		akey.netns_cookie = bpf_get_netns_cookie(ctx);
		akey.rev_nat_id = svc->rev_nat_id;
		now = bpf_ktime_get_ns();
		struct lb4_affinity_val *a = bpf_map_lookup_elem(&ost_lb4_affinity, &akey);
		if (a && now - a->last_used_ns < (__u64)svc->affinity_timeout * NSEC_PER_SEC) {
			be = bpf_map_lookup_elem(&ost_lb4_backend, &a->backend_id);
			if (be)   /* a removed backend is gone from the map: pick again */
				backend_id = a->backend_id;
		}
	}
	if (!be) {
		key.slot = (bpf_get_prandom_u32() % svc->count) + 1;
		struct lb4_service *slot = bpf_map_lookup_elem(&ost_lb4_svc, &key);
		if (!slot) {
			*refuse = 1;
			return NULL;
		}
		backend_id = slot->backend_id;
		be = bpf_map_lookup_elem(&ost_lb4_backend, &backend_id);
		if (!be) {
			*refuse = 1;
			return NULL;
		}
	}
	if (svc->flags & SVC_FLAG_AFFINITY) {
		struct lb4_affinity_val val = { .last_used_ns = now, .backend_id = backend_id };
		bpf_map_update_elem(&ost_lb4_affinity, &akey, &val, BPF_ANY);
	}
	*backend_id_out = backend_id;
	return be;
}

#endif
