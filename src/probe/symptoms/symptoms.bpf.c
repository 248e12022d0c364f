// SPDX-License-Identifier: GPL-2.0
/* Probe "symptoms": what the failures cost, in every mode.
 *   nf_drop:     tp_btf/kfree_skb with reason NETFILTER_DROP (5.17+), twice
 *                (a run the kernel skips as nested is the twin's)
 *   host_rst:    tp_btf/tcp_send_reset with no socket (6.10+); before that
 *                kprobe/fentry tcp_v4_send_reset / tcp_v6_send_reset
 *   syn_retrans: tp_btf/tcp_retransmit_skb on a socket in SYN_SENT, twice
 * These see every netns; filter_netns (rodata) narrows them. */
#include "common.bpf.h"

/* nf_drop is run by two programs on the same tracepoint, like confirm's
 * insert failures (see confirm_dropped in confirm.bpf.c): the kernel skips a
 * program that fires while the same program already runs on that CPU (a
 * softirq's drop interrupting a process's), so sym_kfree_skb alone missed
 * the drops of such softirqs. The twin emits only what the first did not:
 * the first pushes the drop's key (skb, location) on a small per-CPU stack
 * before it emits, the twin pops it when it is on top (the first handled
 * this drop) and emits otherwise (the first was skipped: the key on top is
 * the interrupted drop's, or none). Only drops that pass the filters pay
 * for the stack; every other freed skb costs the twin one call.
 *
 * A key nobody pops is stale, and a stale key could swallow a drop: a
 * later firing that the first skips, whose skb reuses the stale key's
 * address at the same location (all netfilter drops share one), would look
 * handled. Two things leave keys behind, and both are undone: a twin skipped
 * in turn (nested in itself) leaves the nested first's key, so every twin
 * cuts the stack back, when it ends, to the height it left it at (whatever
 * was pushed meanwhile was pushed by a run nested in it, finished by then,
 * whose twin was this one: skipped); and the first runs alone between the
 * two programs' attachments, so user space zeroes the stacks once both are
 * attached (src/probe/load.rs). A key cut or zeroed too early costs at most
 * one repeated event, never a lost one. */
struct twin_key {
	__u64 a;
	__u64 b;
};

struct twin_keys {
	struct twin_key key[4];
	__u32 n;
};

/* One stack per twinned tracepoint: TWIN_DROP (kfree_skb), TWIN_RETRANS. */
#define TWIN_DROP 0
#define TWIN_RETRANS 1

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct twin_keys);
} twin_keys SEC(".maps");

/* The first of a pair: this firing is handled here (full: the top is overwritten). */
static __always_inline void twin_push(__u32 which, __u64 a, __u64 b)
{
	struct twin_keys *k = bpf_map_lookup_elem(&twin_keys, &which);
	__u32 top;

	if (!k)
		return;
	top = k->n < 4 ? k->n : 3;
	k->key[top & 3].a = a;
	k->key[top & 3].b = b;
	k->n = top + 1;
}

/* The twin: whether the first handled this firing (then its key is popped,
 * with any key above it: those were pushed by runs nested in this twin
 * before it looked, whose own twin, this one, was skipped). *height: the
 * stack's height after this decision, for twin_end. */
static __always_inline bool twin_taken(__u32 which, __u64 a, __u64 b, __u32 *height)
{
	struct twin_keys *k = bpf_map_lookup_elem(&twin_keys, &which);
	__u32 n, i;

	*height = 0;
	if (!k)
		return false;
	n = k->n < 4 ? k->n : 4;
#pragma unroll
	for (i = 0; i < 4; i++) {
		struct twin_key *t;

		if (i >= n)
			break;
		t = &k->key[(n - 1 - i) & 3];
		if (t->a == a && t->b == b) {
			k->n = n - 1 - i;
			*height = n - 1 - i;
			return true;
		}
	}
	*height = k->n;
	return false;
}

/* The twin's end: the keys pushed above its height while it ran are stale. */
static __always_inline void twin_end(__u32 which, __u32 height)
{
	struct twin_keys *k = bpf_map_lookup_elem(&twin_keys, &which);

	if (k && k->n > height)
		k->n = height;
}

/* Whether the drop is one to report; its netns in *netns. */
static __always_inline bool sym_drop_wanted(struct sk_buff *skb, enum skb_drop_reason reason,
					    __u32 *netns)
{
	if (reason != bpf_core_enum_value(enum skb_drop_reason, SKB_DROP_REASON_NETFILTER_DROP))
		return false;
	*netns = ct_netns_of_skb(skb, true);
	return ct_netns_wanted(*netns);
}

static __always_inline void sym_drop_emit(struct sk_buff *skb, void *location,
					  enum skb_drop_reason reason, __u32 netns)
{
	struct ct_event *e = ct_reserve_len(CT_KIND_NF_DROP, CT_SRC_TRACEPOINT, CT_LEN_PACKET);

	if (!e)
		return;
	/* a packet without an IPv4/IPv6 header (ARP, bridge) cannot be described:
	 * submitted, it would not decode and would count as a lost record */
	if (ct_read_packet(e, skb, true) < 0) {
		bpf_ringbuf_discard(e, 0);
		return;
	}
	e->netns = netns;
	e->location = (__u64)location;
	e->reason = CT_R_DROP_REASON;
	e->drop_reason = reason;
	ct_submit(e);
}

SEC("tp_btf/kfree_skb")
int BPF_PROG(sym_kfree_skb, struct sk_buff *skb, void *location, enum skb_drop_reason reason)
{
	__u32 netns = 0;

	if (!sym_drop_wanted(skb, reason, &netns))
		return 0;
	twin_push(TWIN_DROP, (__u64)skb, (__u64)location);
	sym_drop_emit(skb, location, reason, netns);
	return 0;
}

SEC("tp_btf/kfree_skb")
int BPF_PROG(sym_kfree_twin, struct sk_buff *skb, void *location, enum skb_drop_reason reason)
{
	__u32 netns = 0, height;

	if (!sym_drop_wanted(skb, reason, &netns))
		return 0;
	if (!twin_taken(TWIN_DROP, (__u64)skb, (__u64)location, &height))
		sym_drop_emit(skb, location, reason, netns);
	twin_end(TWIN_DROP, height);
	return 0;
}

#define RST_FRAMES 6

static __always_inline bool in_reset_fn(__u64 a)
{
	return (a >= rst_fns[0] && a < rst_fns[1]) || (a >= rst_fns[2] && a < rst_fns[3]);
}

/* A RST for a segment that no socket wanted (sk == NULL) has one sender: the
 * no-socket exit of tcp_v4_rcv / tcp_v6_rcv. So its caller is walked once per
 * (family, reason) and kept: every later RST of that kind gets the same
 * location without a walk (a walk is about a microsecond: 42 % of
 * sym_send_reset's samples when it was taken once per CPU per millisecond).
 * Where the kernel gives no reason (the kprobe/fentry twins, before 6.10)
 * the key is the family alone. A slot whose walk found nothing is retried at
 * most once per CPU per RST_WALK_GAP_NS, so a kernel without frame
 * information never turns a RST flood into a flood of walks. */
#define RST_WALK_GAP_NS 1000000
#define RST_REASONS 64

/* [family: 0 IPv4, 1 IPv6][reason, capped] -> the caller found by the walk */
__u64 rst_callers[2][RST_REASONS] = {};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} rst_last_walk SEC(".maps");

/* The kernel code that decided to answer with a RST: the caller of
 * tcp_v{4,6}_send_reset on the current stack (tcp_v4_rcv when no socket wanted
 * the segment). The same walk serves the tracepoint, the kprobe (whose stack
 * starts inside the function) and fentry (whose trampoline was called from
 * it). */
static __always_inline __u64 rst_walk(void *ctx, __u64 now)
{
	__u64 st[RST_FRAMES] = {};
	__u32 zero = 0;
	__u64 *last;
	long n;
	int i;

	last = bpf_map_lookup_elem(&rst_last_walk, &zero);
	if (!last || now - *last < RST_WALK_GAP_NS)
		return 0;
	*last = now;
	n = bpf_get_stack(ctx, st, sizeof(st), 0);
	if (n <= 0)
		return 0;
	n /= 8;
	for (i = 0; i < RST_FRAMES - 1; i++) {
		if (i + 1 >= n)
			break;
		if (in_reset_fn(st[i]) && !in_reset_fn(st[i + 1]))
			return st[i + 1];
	}
	return 0;
}

static __always_inline __u64 rst_caller(void *ctx, __u64 now, __u8 family, __u32 reason)
{
	__u32 f = family == 6 ? 1 : 0;
	__u32 r = reason < RST_REASONS ? reason : RST_REASONS - 1;
	__u64 loc;

	if (!rst_fns[0])
		return 0;
	loc = rst_callers[f][r];
	if (loc)
		return loc;
	loc = rst_walk(ctx, now);
	if (loc)
		rst_callers[f][r] = loc;
	return loc;
}

/* direct: skb is a trusted BTF pointer (tracepoint, fentry), not a kprobe's register */
static __always_inline void sym_reset(void *ctx, const struct sock *sk, struct sk_buff *skb,
				      int has_reason, __u32 reason, __u8 source, bool direct)
{
	struct ct_event *e;
	__u32 netns;

	if (sk || !skb)
		return; /* only the RST for a segment that no socket wanted */
	netns = ct_netns_of_skb(skb, direct);
	if (!ct_netns_wanted(netns))
		return;
	e = ct_reserve_pkt(CT_KIND_HOST_RST, source);
	if (!e)
		return;
	if (ct_read_packet(e, skb, direct) < 0) {
		bpf_ringbuf_discard(e, 0);
		return;
	}
	e->netns = netns;
	e->location = rst_caller(ctx, e->ts_ns, e->family, has_reason ? reason : 0);
	if (has_reason) {
		e->reason = CT_R_RST_REASON;
		e->drop_reason = reason;
	}
	/* the segment the node answers: the RST itself is built in another
	 * buffer after this point, and no hook here sees it */
	ct_capture(e, skb, direct);
	ct_submit(e);
}

SEC("tp_btf/tcp_send_reset")
int BPF_PROG(sym_send_reset, const struct sock *sk, struct sk_buff *skb, int reason)
{
	sym_reset(ctx, sk, skb, 1, reason, CT_SRC_TRACEPOINT, true);
	return 0;
}

SEC("kprobe/tcp_v4_send_reset")
int BPF_KPROBE(sym_v4_reset_kprobe, const struct sock *sk, struct sk_buff *skb)
{
	sym_reset(ctx, sk, skb, 0, 0, CT_SRC_KPROBE, false);
	return 0;
}

SEC("kprobe/tcp_v6_send_reset")
int BPF_KPROBE(sym_v6_reset_kprobe, const struct sock *sk, struct sk_buff *skb)
{
	sym_reset(ctx, sk, skb, 0, 0, CT_SRC_KPROBE, false);
	return 0;
}

SEC("fentry/tcp_v4_send_reset")
int BPF_PROG(sym_v4_reset_fentry, const struct sock *sk, struct sk_buff *skb)
{
	sym_reset(ctx, sk, skb, 0, 0, CT_SRC_FENTRY, true);
	return 0;
}

SEC("fentry/tcp_v6_send_reset")
int BPF_PROG(sym_v6_reset_fentry, const struct sock *sk, struct sk_buff *skb)
{
	sym_reset(ctx, sk, skb, 0, 0, CT_SRC_FENTRY, true);
	return 0;
}

/* sk is a trusted BTF pointer (tp_btf): its fields are plain loads (CO-RE
 * relocated through vmlinux.h's preserve_access_index), not seven
 * bpf_probe_read_kernel calls (39 % of this program's samples before).
 * Twinned like nf_drop (key: socket and skb): a retransmit in process
 * context (the TSQ or release_sock path) interrupted by a timer softirq's
 * SYN retransmit would otherwise hide it. */
static __always_inline bool sym_retrans_wanted(const struct sock *sk, __u32 *netns)
{
	const struct sock_common *c = &sk->__sk_common;

	if (c->skc_state != TCP_SYN_SENT)
		return false;
	*netns = c->skc_net.net->ns.inum;
	return ct_netns_wanted(*netns);
}

static __always_inline void sym_retrans_emit(const struct sock *sk, __u32 netns)
{
	const struct sock_common *c = &sk->__sk_common;
	struct ct_event *e = ct_reserve_len(CT_KIND_SYN_RETRANS, CT_SRC_TRACEPOINT, CT_LEN_PACKET);

	if (!e)
		return;
	e->netns = netns;
	e->proto = IPPROTO_TCP;
	if (c->skc_family == AF_INET6) {
		e->family = 6;
		__builtin_memcpy(e->orig.src, &c->skc_v6_rcv_saddr, 16);
		__builtin_memcpy(e->orig.dst, &c->skc_v6_daddr, 16);
	} else {
		e->family = 4;
		__builtin_memcpy(e->orig.src, &c->skc_rcv_saddr, 4);
		__builtin_memcpy(e->orig.dst, &c->skc_daddr, 4);
	}
	e->orig.sport = c->skc_num;
	e->orig.dport = bpf_ntohs(c->skc_dport);
	e->tcp_flags = 0x02;
	ct_submit(e);
}

SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(sym_retransmit, const struct sock *sk, const struct sk_buff *skb)
{
	__u32 netns = 0;

	if (!sym_retrans_wanted(sk, &netns))
		return 0;
	twin_push(TWIN_RETRANS, (__u64)sk, (__u64)skb);
	sym_retrans_emit(sk, netns);
	return 0;
}

SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(sym_retrans_twin, const struct sock *sk, const struct sk_buff *skb)
{
	__u32 netns = 0, height;

	if (!sym_retrans_wanted(sk, &netns))
		return 0;
	if (!twin_taken(TWIN_RETRANS, (__u64)sk, (__u64)skb, &height))
		sym_retrans_emit(sk, netns);
	twin_end(TWIN_RETRANS, height);
	return 0;
}
