// SPDX-License-Identifier: GPL-2.0
/* Probe "confirm": conntrack insert failures (the NAT race's loser) and clashes
 * that the kernel resolved.
 *   fentry:  fentry + fexit __nf_conntrack_confirm
 *   kprobe:  kprobe + kretprobe __nf_conntrack_confirm
 *   stable:  netfilter hook at INT_MAX-1 (POSTROUTING, LOCAL_IN: just before confirm)
 *            remembers the skb of an unconfirmed ct; tp_btf/kfree_skb with reason
 *            NETFILTER_DROP on that skb, still holding that ct, and the ct never
 *            inserted into the table, is the lost confirm (two programs on that
 *            tracepoint: see confirm_dropped). */
#include "common.bpf.h"

struct confirm_entry {
	__u64 skb;
	__u64 nfct;
	__u64 status;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct confirm_entry);
} confirm_entries SEC(".maps");

static __always_inline void confirm_enter(struct sk_buff *skb)
{
	__u32 zero = 0;
	struct confirm_entry *s = bpf_map_lookup_elem(&confirm_entries, &zero);
	struct nf_conn *ct;

	if (!s)
		return;
	ct = ct_of_skb(skb, false);
	s->skb = (__u64)skb;
	s->nfct = (__u64)ct;
	s->status = ct ? ct_status(ct) : 0;
}

/* skb: the dropped packet, whose bytes an insert failure carries (a resolved
 * clash's packet went on). Whether there is room for them follows from the
 * kind, a constant at each inlined call: a test of skb would not do, as clang
 * may load it again from the map, and the verifier would then see a capture
 * into a record reserved without room. */
static __always_inline void confirm_emit(__u32 kind, __u32 reason, struct nf_conn *ct,
					 struct sk_buff *skb, __u8 source)
{
	__u32 netns = ct_netns_of(ct);
	struct ct_event *e;

	if (!ct_netns_wanted(netns))
		return;
	e = kind == CT_KIND_INSERT_FAILED ? ct_reserve_pkt(kind, source)
					 : ct_reserve_len(kind, source, CT_LEN_CONN);
	if (!e)
		return;
	e->netns = netns;
	e->reason = reason;
	ct_read_conn(e, ct);
	ct_nat_port(e, ct_status(ct));
	/* the skb was remembered as a number: read through the helper */
	if (kind == CT_KIND_INSERT_FAILED)
		ct_capture(e, skb, false);
	ct_submit(e);
}

static __always_inline void confirm_exit(struct sk_buff *skb, int ret, __u8 source)
{
	__u32 zero = 0;
	struct confirm_entry *s = bpf_map_lookup_elem(&confirm_entries, &zero);
	struct nf_conn *ct, *now;

	if (!s || !s->nfct || (skb && (__u64)skb != s->skb))
		return;
	ct = (struct nf_conn *)s->nfct;
	skb = (struct sk_buff *)s->skb;
	s->nfct = 0;
	if (ret == NF_DROP) {
		confirm_emit(CT_KIND_INSERT_FAILED,
			     (s->status & IPS_DYING) ? CT_R_CONFIRM_DYING : CT_R_CONFIRM_CLASH, ct,
			     skb, source);
		return;
	}
	now = ct_of_skb(skb, false); /* a remembered number */
	if (now && now != ct) {
		/* merged: the loser was released; report the entry it merged into */
		confirm_emit(CT_KIND_CLASH_RESOLVED, CT_R_CLASH_MERGED, now, NULL, source);
		return;
	}
	if (!(s->status & IPS_NAT_CLASH) && (ct_status(ct) & IPS_NAT_CLASH))
		confirm_emit(CT_KIND_CLASH_RESOLVED, CT_R_CLASH_NAT_HARDER, ct, NULL, source);
}

SEC("fentry/__nf_conntrack_confirm")
int BPF_PROG(confirm_fentry, struct sk_buff *skb)
{
	confirm_enter(skb);
	return 0;
}

SEC("fexit/__nf_conntrack_confirm")
int BPF_PROG(confirm_fexit, struct sk_buff *skb, int ret)
{
	confirm_exit(skb, ret, CT_SRC_FENTRY);
	return 0;
}

SEC("kprobe/__nf_conntrack_confirm")
int BPF_KPROBE(confirm_kprobe, struct sk_buff *skb)
{
	confirm_enter(skb);
	return 0;
}

SEC("kretprobe/__nf_conntrack_confirm")
int BPF_KRETPROBE(confirm_kretprobe, int ret)
{
	confirm_exit(NULL, ret, CT_SRC_KPROBE);
	return 0;
}

/* stable mode */
struct pending {
	__u64 skb;
	__u64 nfct;
	/* the entry's identity when remembered: its original tuple (struct
	 * nf_conntrack_tuple, 40 bytes on every kernel) and netns */
	__u64 id[5];
	__u32 netns;
	__u8 hook;
};

/* The skbs that reached the hook just before confirm with an unconfirmed entry,
 * in a direct-mapped table indexed by the entry's address (a scalar in both
 * programs; the verifier allows no arithmetic on the skb pointer). Entries are never
 * deleted (a stale one cannot match: see ct_never_inserted); a slot is only
 * overwritten by a later skb. The drop comes within the same hook traversal,
 * microseconds later, so an insert failure is missed only if another skb with
 * the same slot (1 in 65536) reaches the hook in between: on another CPU or in
 * an interrupt. The price per new connection is an inlined array access and
 * four stores, where an LRU hash paid an eviction under a lock. */
#define PENDING_SLOTS 65536

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, PENDING_SLOTS);
	__type(key, __u32);
	__type(value, struct pending);
} pending_skbs SEC(".maps");

static __always_inline struct pending *pending_slot(__u64 ct)
{
	/* nf_conns are slab objects of over 256 bytes: the bits above the 8th spread */
	__u32 slot = (__u32)((ct >> 8) ^ (ct >> 24)) & (PENDING_SLOTS - 1);

	return bpf_map_lookup_elem(&pending_skbs, &slot);
}

SEC("netfilter")
int confirm_nf(struct bpf_nf_ctx *ctx)
{
	struct sk_buff *skb = ctx->skb;
	unsigned long nfct = skb->_nfct;
	struct nf_conn *ct = (struct nf_conn *)(nfct & ~7UL);
	struct pending *p;
	__u32 netns;

	if (!ct || !ct_info_may_be_unconfirmed(nfct) ||
	    (ct_status(ct) & IPS_CONFIRMED))
		return NF_ACCEPT;
	netns = ctx->state->net->ns.inum;
	if (!ct_netns_wanted(netns))
		return NF_ACCEPT;
	p = pending_slot((__u64)ct);
	if (!p)
		return NF_ACCEPT;
	p->nfct = (__u64)ct;
	p->netns = netns;
	p->hook = ctx->state->hook;
	p->skb = (__u64)skb;
	if (bpf_core_read(p->id, sizeof(p->id), &ct->tuplehash[0].tuple))
		p->skb = 0;
	return NF_ACCEPT;
}

/* Whether a conntrack entry has ever been in the table. nf_conntrack_alloc sets
 * the original direction's hnnode.pprev to NULL (every kernel since 2.6.3x);
 * inserting sets it to the chain head, unlinking to LIST_POISON2. So NULL means
 * never inserted: the entry of a packet that the confirm step dropped. A
 * remembered skb whose entry was confirmed and that was freed without a
 * tracepoint (__kfree_skb), its address then reused by a later packet of the
 * same connection and dropped by a rule, can therefore never pass for a lost
 * confirm; and no consume_skb hook (a lookup for every freed skb of the node)
 * is needed to forget remembered skbs. */
static __always_inline bool ct_never_inserted(struct nf_conn *ct)
{
	return BPF_CORE_READ(ct, tuplehash[0].hnnode.pprev) == NULL;
}

/* The drop of a remembered skb is the lost confirm. Run by two programs on
 * the same tracepoint, because the kernel skips a tracing program that fires
 * while the same program is already running on that CPU (a raw tracepoint's
 * recursion guard, counted in bpf_prog_info.recursion_misses): a drop in a
 * softirq that interrupted this program, e.g. while it looked at a process's
 * own dropped datagram, was never seen (4 insert failures of 105 on a crowded
 * node, all SYNs of one backlog). The twin is not running when its sibling
 * is interrupted, so one of the two always runs; whichever comes first takes
 * the remembered skb out of its slot (compare-and-swap), so the other finds
 * nothing: one event per drop, never two. The price is a second program
 * call for every freed skb (the reason test returns at once). */
static __always_inline int confirm_dropped(struct sk_buff *skb, void *location,
					   enum skb_drop_reason reason)
{
	struct pending *p;
	struct nf_conn *ct;
	struct ct_event *e;
	__u64 status;

	/* the reason is an argument: the common case costs no map access */
	if (reason != bpf_core_enum_value(enum skb_drop_reason, SKB_DROP_REASON_NETFILTER_DROP))
		return 0;
	ct = ct_of_skb(skb, true); /* the tracepoint's skb: a plain load */
	if (!ct)
		return 0;
	p = pending_slot((__u64)ct);
	if (!p || p->skb != (__u64)skb || p->nfct != (__u64)ct)
		return 0;
	/* the claim: only one of the two programs gets past it */
	if (__sync_val_compare_and_swap(&p->skb, (__u64)skb, 0) != (__u64)skb)
		return 0;
	if (!ct_never_inserted(ct))
		return 0;
	/* The same addresses are not the same entry: once the remembered entry is
	 * freed, another netns's never-inserted entry can take its address and
	 * its skb the remembered skb's. It is the one remembered only if its netns
	 * and original tuple are those seen before confirm. */
	if (ct_netns_of(ct) != p->netns)
		return 0;
	{
		__u64 id[5];

		if (bpf_core_read(id, sizeof(id), &ct->tuplehash[0].tuple))
			return 0;
		if (id[0] != p->id[0] || id[1] != p->id[1] || id[2] != p->id[2] ||
		    id[3] != p->id[3] || id[4] != p->id[4])
			return 0;
	}
	e = ct_reserve_pkt(CT_KIND_INSERT_FAILED, CT_SRC_NETFILTER);
	if (!e)
		return 0;
	status = ct_status(ct);
	e->netns = p->netns;
	e->hook = p->hook;
	e->reason = (status & IPS_DYING) ? CT_R_CONFIRM_DYING : CT_R_CONFIRM_DROP;
	e->drop_reason = reason;
	e->location = (__u64)location;
	ct_read_conn(e, ct);
	ct_nat_port(e, status);
	/* the SYN or datagram as confirm dropped it: after NAT (POSTROUTING) */
	ct_capture(e, skb, true);
	ct_submit(e);
	return 0;
}

SEC("tp_btf/kfree_skb")
int BPF_PROG(confirm_kfree_skb, struct sk_buff *skb, void *location, enum skb_drop_reason reason)
{
	return confirm_dropped(skb, location, reason);
}

SEC("tp_btf/kfree_skb")
int BPF_PROG(confirm_kfree_twin, struct sk_buff *skb, void *location, enum skb_drop_reason reason)
{
	return confirm_dropped(skb, location, reason);
}
