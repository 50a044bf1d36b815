/* Connect-time service translation: VIP:port/proto -> backend, and the reverse record. */
#ifndef OSTIUM_LB_H
#define OSTIUM_LB_H

#include "maps.h"

#define NSEC_PER_SEC 1000000000ULL

/* Affinity records are only trusted while their backend is still one of the service's slots: a
 * backend removed from the service (or drained to weight 0) no longer gets the client, and since ids
 * are reused, a record can never lead to a backend id that now belongs to another service. Scans at most
 * LB4_AFFINITY_SCAN slots (the default slot budget per service); beyond that the client is re-balanced. */
#define LB4_AFFINITY_SCAN 256

static __always_inline int
lb4_service_has_backend(struct lb4_key *key, __u16 count, __u32 backend_id)
{
	for (__u32 i = 1; i <= LB4_AFFINITY_SCAN; i++) {
		if (i > count)
			break;
		key->slot = i;
		struct lb4_service *slot = bpf_map_lookup_elem(&ost_lb4_svc, key);
		if (slot && slot->backend_id == backend_id)
			return 1;
	}
	return 0;
}

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
		if (a && now - a->last_used_ns < (__u64)svc->affinity_timeout * NSEC_PER_SEC &&
		    lb4_service_has_backend(&key, svc->count, a->backend_id)) {
			be = bpf_map_lookup_elem(&ost_lb4_backend, &a->backend_id);
			if (be)
				backend_id = a->backend_id;
		}
		key.slot = 0;
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
