/* Shared definitions for every Ostium BPF program: includes, constants, small helpers. */
#ifndef OSTIUM_COMMON_H
#define OSTIUM_COMMON_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif

/* linux/icmp.h drags in libc socket headers that do not exist for -target bpf: the few fields
 * needed are declared here. */
struct ost_icmphdr {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	__be16 id;
	__be16 sequence;
};
#define ICMP_ECHOREPLY 0
#define ICMP_DEST_UNREACH 3
#define ICMP_ECHO 8
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12

/* Reserved identities (DESIGN.md "Identity"). */
#define ID_ANY 0
#define ID_HOST 1
#define ID_WORLD 2

#define DIR_INGRESS 0
#define DIR_EGRESS 1

/* The kernel's errno values the socket hooks hand back to the application. */
#define OST_ECONNREFUSED 111

/* tc verdicts: TC_ACT_UNSPEC lets later programs (the L7 redirect) run; works for tcx and clsact. */
#define CTX_PASS TC_ACT_UNSPEC
#define CTX_DROP TC_ACT_SHOT

/* skb->mark values of the L7 redirect (bits under MARK_MAGIC_MASK; Cilium's layout).
 * TO_PROXY: the packet was bpf_sk_assign'ed to a node-local proxy socket; the agent's
 *   `ip rule fwmark 0x200/0xf00 lookup 100` + `local 0.0.0.0/0 dev lo table 100` delivers it
 *   locally (without that route the kernel would forward it).
 * PROXY_REFUSE: an L7 rule applies but no proxy listens: the agent's nft rule answers it with a
 *   TCP reset (fail closed, never forwarded unenforced).
 * PROXY_UPSTREAM: set by the proxies themselves (SO_MARK) on their upstream connections: those
 *   flows were enforced by the proxy and are not redirected or policed again. */
#define MARK_MAGIC_MASK 0x0f00
#define MARK_MAGIC_TO_PROXY 0x0200
#define MARK_MAGIC_PROXY_REFUSE 0x0300
#define MARK_PROXY_UPSTREAM 0x1000
#define MARK_PROXY_UPSTREAM_MASK 0xf000

#define LOOPBACK_ADDR 0x7f000001   /* 127.0.0.1: where the proxies' transparent listeners bind */

#endif
