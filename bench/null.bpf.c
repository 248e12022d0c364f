// SPDX-License-Identifier: GPL-2.0
/* bench/run's measurement floor: BPF programs that do nothing, one on every
 * hook where ctrace's stable-mode programs sit (tp_btf tracepoints and the
 * netfilter hooks). Their mean run time under bpf_stats is what dispatch and
 * the statistics themselves cost on this machine; bench/run divides each of
 * ctrace's programs by the floor on its own hook, in the same run. Built by
 * bench/run with clang, loaded by examples/bpfnull.rs, which attaches the
 * netfilter ones (IPv4) next to ctrace's slots:
 *   null_nf_pre_out:  PREROUTING + LOCAL_OUT at -198 (win_nf: -199)
 *   null_nf_post_in:  POSTROUTING + LOCAL_IN at INT_MAX-3 (nat_nf INT_MAX-2,
 *                     confirm_nf INT_MAX-1) */
#define SEC(n) __attribute__((section(n), used))
char LICENSE[] SEC("license") = "GPL";

SEC("tp_btf/kfree_skb")
int null_kfree_skb(void *ctx)
{
	return 0;
}

SEC("tp_btf/tcp_send_reset")
int null_send_reset(void *ctx)
{
	return 0;
}

SEC("tp_btf/tcp_retransmit_skb")
int null_retransmit(void *ctx)
{
	return 0;
}

SEC("netfilter")
int null_nf_pre_out(void *ctx)
{
	return 1; /* NF_ACCEPT */
}

SEC("netfilter")
int null_nf_post_in(void *ctx)
{
	return 1; /* NF_ACCEPT */
}

/* The event floor: the least that any program emitting an event to user
 * space can do on the hook -- reserve a record of an nf_drop event's size
 * (CT_LEN_PACKET, from ctrace's ABI header) in a ring buffer, stamp it with
 * bpf_ktime_get_ns, submit it without a wake-up -- with a reader draining
 * the ring every 25 ms like ctrace's (bpfnull). Each emits where ctrace's
 * program on its hook does: on kfree_skb for the drops a rule made
 * (NETFILTER_DROP), on tcp_send_reset for a RST that no socket sent, on
 * tcp_retransmit_skb on every run (the load retransmits only SYNs).
 * bench/run divides ctrace's per-event programs by these as well as by the
 * empty ones: what an event adds to the hook is mostly a helper call into
 * the ring and one into the clock, which no tracer that hands records to
 * user space avoids. Helpers by number (no libbpf headers here); the drop
 * reason's value by CO-RE, from a local enum that the loader matches with
 * the kernel's by name. */
typedef unsigned long long u64;
typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef u64 __u64;
#include "../bpf/ctrace.h" /* CT_LEN_PACKET: an nf_drop record's size */
static void *(*bpf_ringbuf_reserve)(void *ringbuf, u64 size, u64 flags) = (void *)131;
static void (*bpf_ringbuf_submit)(void *data, u64 flags) = (void *)132;
static u64 (*bpf_ktime_get_ns)(void) = (void *)5;
#define BPF_RB_NO_WAKEUP 1

struct {
	int (*type)[27]; /* BPF_MAP_TYPE_RINGBUF */
	int (*max_entries)[1 << 22];
} null_events SEC(".maps");

enum skb_drop_reason { SKB_DROP_REASON_NETFILTER_DROP = 0 };

static inline int null_event(void)
{
	u64 *e = bpf_ringbuf_reserve(&null_events, CT_LEN_PACKET, 0);

	if (!e)
		return 0;
	e[0] = bpf_ktime_get_ns();
	bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
	return 0;
}

SEC("tp_btf/kfree_skb")
int null_ev_kfree(u64 *ctx)
{
	if ((unsigned int)ctx[2] !=
	    __builtin_preserve_enum_value(*(enum skb_drop_reason *)SKB_DROP_REASON_NETFILTER_DROP, 1))
		return 0;
	return null_event();
}

SEC("tp_btf/tcp_send_reset")
int null_ev_reset(u64 *ctx)
{
	if (ctx[0]) /* a socket's own RST: sym_send_reset emits none either */
		return 0;
	return null_event();
}

SEC("tp_btf/tcp_retransmit_skb")
int null_ev_retrans(void *ctx)
{
	return null_event();
}
