/* L3/L4 policy lookup: two LPM lookups (the remote identity, then any identity); a deny in
 * either wins, else the more specific L4 match, else the identity-specific one. The loader
 * removes allow entries that a less specific deny of the same identity covers, so the longest
 * match inside one identity is already the right answer. */
#ifndef OSTIUM_POLICY_H
#define OSTIUM_POLICY_H

#include "maps.h"

#define POLICY_KEY_FULL (POLICY_FULL_PREFIX + 8 + 16)

static __always_inline struct policy_entry *
policy_lookup(__u16 ep_id, __u8 dir, __u32 identity, __u8 proto, __u16 port)
{
	struct policy_key key = {
		.prefixlen = POLICY_KEY_FULL, .ep_id = ep_id, .direction = dir,
		.identity = identity, .proto = proto,
		.dport_hi = port >> 8, .dport_lo = port & 0xff,
	};
	struct policy_entry *specific = bpf_map_lookup_elem(&ost_policy, &key);
	key.identity = ID_ANY;
	struct policy_entry *wild = bpf_map_lookup_elem(&ost_policy, &key);

	if (specific && specific->verdict == POLICY_DENY)
		return specific;
	if (wild && wild->verdict == POLICY_DENY)
		return wild;
	if (specific && wild)
		return wild->prefixlen > specific->prefixlen ? wild : specific;
	return specific ? specific : wild;
}

#endif
