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

/* skb->mark for a flow that an L7 rule covers: 0x0200 in the low 16 bits, proxy port above.
 * The L7 redirect program (issue for Envoy) consumes it. */
#define MARK_MAGIC_TO_PROXY 0x0200
#define MARK_MAGIC_MASK 0x0f00

#endif
