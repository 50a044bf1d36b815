/* L3/L4 policy lookup by prefix class (see struct policy_key): for the remote identity and for
 * any identity, the longest class with an entry wins; a deny from either wins over everything,
 * else the more specific of the two, else the identity-specific one. The loader removes allow
 * entries that a shorter deny of the same identity covers, so "longest match per identity" is
 * already the right answer within one identity. */
#ifndef OSTIUM_POLICY_H
#define OSTIUM_POLICY_H

#include "maps.h"

static __always_inline struct policy_entry *
policy_lookup(__u16 ep_id, __u8 dir, __u32 identity, __u8 proto, __u16 port, __u32 plens_id,
	      __u32 plens_any)
{
	struct policy_entry *specific = NULL, *wild = NULL;
	struct policy_key key = { .ep_id = ep_id, .direction = dir };

#pragma clang loop unroll(full)
	for (int i = POLICY_CLASSES - 1; i >= 0; i--) {
		__u32 bit = 1u << i;
		if (!((plens_id | plens_any) & bit))
			continue;
		__u32 pbits = i > 1 ? i - 1 : 0;
		key.plen = i == 0 ? 0 : 7 + i;
		key.proto = i == 0 ? 0 : proto;
		key.dport = pbits ? bpf_htons(port & ((0xffffu << (16 - pbits)) & 0xffff)) : 0;
		if (plens_id & bit) {
			key.identity = identity;
			specific = bpf_map_lookup_elem(&ost_policy, &key);
			if (specific)
				plens_id = 0;     /* the longest match for this identity is found */
		}
		if (plens_any & bit) {
			key.identity = ID_ANY;
			wild = bpf_map_lookup_elem(&ost_policy, &key);
			if (wild)
				plens_any = 0;
		}
		if (!(plens_id | plens_any))
			break;
	}

	if (specific && specific->verdict == POLICY_DENY)
		return specific;
	if (wild && wild->verdict == POLICY_DENY)
		return wild;
	if (specific && wild)
		return wild->prefixlen > specific->prefixlen ? wild : specific;
	return specific ? specific : wild;
}

#endif
