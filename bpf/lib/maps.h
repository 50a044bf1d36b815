/* Every map of the datapath, declared once. Both objects include this header; the loader pins
 * each map by name under the pin directory, so sock.bpf.o and lxc.bpf.o share one instance.
 * Key/value layouts here have exactly one Python codec each in bpf/maps.py: keep them in step. */
#ifndef OSTIUM_MAPS_H
#define OSTIUM_MAPS_H

#include "common.h"

/* ---- socket load balancing ---- */

/* Preallocated (no BPF_F_NO_PREALLOC): batch loads of 10,000s of entries then allocate nothing.
 * slot 0 is the service's master entry (count = number of slots); slots 1..count hold backend
 * ids, repeated in proportion to their weights. */
struct lb4_key {
	__be32 address;   /* VIP */
	__be16 dport;     /* service port */
	__u8 proto;       /* IPPROTO_TCP / IPPROTO_UDP */
	__u8 pad;
	__u16 slot;
	__u16 pad2;
};

#define SVC_FLAG_AFFINITY 0x1

struct lb4_service {
	__u32 backend_id;   /* slot > 0: backend id; slot 0: unused */
	__u16 count;        /* slot 0: number of slots (0 = no backends: connection refused) */
	__u16 flags;        /* slot 0: SVC_FLAG_* */
	__u32 rev_nat_id;   /* slot 0: service id (affinity key) */
	__u32 affinity_timeout; /* slot 0: seconds */
};

struct lb4_backend {
	__be32 address;
	__be16 port;
	__u8 proto;
	__u8 flags;
};

struct lb4_affinity_key {
	__u64 netns_cookie;  /* the client's network namespace: one pod = one client, like ClientIP */
	__u32 rev_nat_id;
	__u32 pad;
};

struct lb4_affinity_val {
	__u64 last_used_ns;
	__u32 backend_id;
	__u32 pad;
};

/* The VIP a socket asked for, so getpeername/recvmsg show the VIP, not the backend. */
struct lb4_revnat_key {
	__u64 cookie;       /* socket cookie */
	__be32 address;     /* backend */
	__be16 port;
	__u16 pad;
};

struct lb4_revnat_val {
	__be32 address;     /* VIP */
	__be16 port;
	__u16 rev_nat_id;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb4_key);
	__type(value, struct lb4_service);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ost_lb4_svc SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct lb4_backend);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ost_lb4_backend SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct lb4_affinity_key);
	__type(value, struct lb4_affinity_val);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ost_lb4_affinity SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct lb4_revnat_key);
	__type(value, struct lb4_revnat_val);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ost_lb4_revnat SEC(".maps");

/* ---- identity and policy ---- */

struct ipcache_key {
	__u32 prefixlen;    /* 0..32 */
	__be32 address;
};

struct ipcache_val {
	__u32 identity;
	__u32 flags;
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_val);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ost_ipcache SEC(".maps");

/* Egress gateway (EgressGatewayPolicy): (source endpoint, destination prefix) -> the egress
 * listener's port on 127.0.0.1. prefixlen = 32 (the source, always exact) + the destination's
 * prefix length. Excluded CIDRs are longer-prefix entries with port 0: they bypass the gateway. */
struct egress_gw_key {
	__u32 prefixlen;    /* 32..64 */
	__be32 source;
	__be32 dest;
};

struct egress_gw_val {
	__u16 proxy_port;   /* 0: excluded */
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct egress_gw_key);
	__type(value, struct egress_gw_val);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ost_egress_gw SEC(".maps");

/* Exact /32 entries (every endpoint and node address) in a hash map: a lookup costs the same with
 * 10 or 100,000 of them. The LPM trie above only holds CIDR entries (shorter prefixes). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __be32);
	__type(value, struct ipcache_val);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ost_ipcache_host SEC(".maps");

#define EP_F_INGRESS_ENFORCED 0x1
#define EP_F_EGRESS_ENFORCED 0x2

/* Keyed by the host-side veth's ifindex: what the tc program needs to know about its endpoint. */
struct endpoint_info {
	__u32 ep_id;
	__u32 identity;
	__be32 address;
	__u32 flags;       /* EP_F_* */
	/* [direction * 2 + any]: bit i set = policy keys of prefix class i exist for a specific
	 * identity (any = 0) or for any identity (any = 1); only those classes are probed. */
	__u32 plens[4];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct endpoint_info);
	__uint(max_entries, 4096);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ost_endpoints SEC(".maps");

/* The same records keyed by the endpoint's IP: the source's program checks a node-local
 * destination's ingress policy (L7 redirect to the ingress proxy, and the L3/L4 verdict for
 * flows the egress proxy carries, whose upstream the destination does not police again). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __be32);
	__type(value, struct endpoint_info);
	__uint(max_entries, 4096);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ost_ep_by_ip SEC(".maps");

/* Policy: a hash map per prefix class ("tuple space search"). A key is (endpoint, direction,
 * identity, prefix class, protocol, port masked to the class): class 0 = any protocol and port,
 * class 1 = one protocol and any port, class 1+n = one protocol and the first n bits of the port
 * (port ranges are split into such aligned blocks). The program probes only the classes the
 * endpoint uses (endpoint_info.plens), longest first, so its cost does not grow with the number
 * of rules. plen below is the variable prefix in bits: 0, 8, 8+n. */
#define POLICY_FULL_PREFIX 64
#define POLICY_CLASSES 18
struct policy_key {
	__u16 ep_id;
	__u8 direction;
	__u8 plen;
	__u32 identity;
	__u8 proto;
	__u8 pad;
	__be16 dport;
};

#define POLICY_ALLOW 1
#define POLICY_DENY 2
#define POLICY_REDIRECT 3

struct policy_entry {
	__u8 verdict;      /* POLICY_* */
	__u8 prefixlen;    /* 64 + the key's plen: decides between the identity and any-identity match */
	__u16 proxy_port;  /* REDIRECT: the node-local proxy port */
	__u32 pad2;
	__u64 packets;     /* per-entry hit counter (racy increments; a debug aid) */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct policy_key);
	__type(value, struct policy_entry);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ost_policy SEC(".maps");

/* ---- conntrack ---- */

struct ct_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;      /* ICMP echo: request id in sport, reply id in dport */
	__be16 dport;
	__u8 proto;
	__u8 direction;    /* DIR_* of the endpoint that created the entry */
	__u16 ep_id;
};

#define CT_F_REDIRECT 0x1
#define CT_F_SEEN_REPLY 0x2

struct ct_entry {
	__u64 expires_ns;   /* bpf_ktime_get_ns() clock */
	__u64 packets;
	__u32 src_identity;
	__u16 proxy_port;
	__u16 flags;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct_key);
	__type(value, struct ct_entry);
	__uint(max_entries, 131072);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ost_ct4 SEC(".maps");

/* ---- events ---- */

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ost_events SEC(".maps");

/* Counters per (reason): index = reason code. Per-CPU so the hot path takes no lock. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ost_metrics SEC(".maps");

#endif
