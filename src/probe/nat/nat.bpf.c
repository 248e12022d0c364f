// SPDX-License-Identifier: GPL-2.0
/* Probe "nat": which translated tuple (and port) NAT gave a new connection.
 *   fentry:  fexit/nf_nat_setup_info          (both tuples at return)
 *   kprobe:  kprobe + kretprobe nf_nat_setup_info (entry args kept per CPU)
 *   stable:  netfilter hook at INT_MAX-2 in POSTROUTING and LOCAL_IN, after both
 *            NAT manips and just before confirm: the unconfirmed ct of the skb. */
#include "common.bpf.h"

static __always_inline void nat_emit(struct nf_conn *ct, __u32 maniptype, __u32 range_flags,
				     __u8 source)
{
	unsigned long status = ct_status(ct);
	unsigned long bit = maniptype == 0 ? IPS_SRC_NAT : IPS_DST_NAT;
	__u32 netns = ct_netns_of(ct);
	struct ct_event *e;

	/* a null binding leaves the tuple as it was: not a translation */
	if (!(status & bit) || !ct_netns_wanted(netns))
		return;
	e = ct_reserve_len(CT_KIND_NAT_ALLOC, source, CT_LEN_CONN);
	if (!e)
		return;
	e->netns = netns;
	if (range_flags & NF_NAT_RANGE_PROTO_RANDOM_FULLY)
		e->flags |= CT_F_RANDOM_FULLY;
	ct_read_conn(e, ct);
	ct_nat_port(e, status & bit);
	ct_submit(e);
}

SEC("fexit/nf_nat_setup_info")
int BPF_PROG(nat_fexit, struct nf_conn *ct, const struct nf_nat_range2 *range,
	     enum nf_nat_manip_type maniptype, unsigned int ret)
{
	if (ret == NF_ACCEPT)
		nat_emit(ct, maniptype, range ? BPF_CORE_READ(range, flags) : 0, CT_SRC_FENTRY);
	return 0;
}

struct nat_entry {
	__u64 ct;
	__u32 maniptype;
	__u32 range_flags;
};

/* kretprobes have no arguments: the entry's are kept per CPU (softirq context:
 * a pid key would be wrong). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct nat_entry);
} nat_entries SEC(".maps");

SEC("kprobe/nf_nat_setup_info")
int BPF_KPROBE(nat_kprobe, struct nf_conn *ct, const struct nf_nat_range2 *range,
	       enum nf_nat_manip_type maniptype)
{
	__u32 zero = 0;
	struct nat_entry *s = bpf_map_lookup_elem(&nat_entries, &zero);

	if (!s)
		return 0;
	s->ct = (__u64)ct;
	s->maniptype = maniptype;
	s->range_flags = range ? BPF_CORE_READ(range, flags) : 0;
	return 0;
}

SEC("kretprobe/nf_nat_setup_info")
int BPF_KRETPROBE(nat_kretprobe, unsigned int ret)
{
	__u32 zero = 0;
	struct nat_entry *s = bpf_map_lookup_elem(&nat_entries, &zero);
	struct nf_conn *ct;

	if (!s || !s->ct)
		return 0;
	ct = (struct nf_conn *)s->ct;
	s->ct = 0;
	if (ret == NF_ACCEPT)
		nat_emit(ct, s->maniptype, s->range_flags, CT_SRC_KPROBE);
	return 0;
}

SEC("netfilter")
int nat_nf(struct bpf_nf_ctx *ctx)
{
	struct sk_buff *skb = ctx->skb;
	/* direct loads through the trusted context (no helper call per packet) */
	unsigned long nfct = skb->_nfct;
	struct nf_conn *ct = (struct nf_conn *)(nfct & ~7UL);
	unsigned long status;
	struct ct_event *e;
	__u32 netns;

	if (!ct || !ct_info_may_be_unconfirmed(nfct))
		return NF_ACCEPT;
	status = ct_status(ct);
	if ((status & IPS_CONFIRMED) || !(status & (IPS_SRC_NAT | IPS_DST_NAT)))
		return NF_ACCEPT;
	netns = ctx->state->net->ns.inum;
	if (!ct_netns_wanted(netns))
		return NF_ACCEPT;
	e = ct_reserve_len(CT_KIND_NAT_ALLOC, CT_SRC_NETFILTER, CT_LEN_CONN);
	if (!e)
		return NF_ACCEPT;
	e->netns = netns;
	e->hook = ctx->state->hook;
	ct_read_conn(e, ct);
	ct_nat_port(e, status);
	ct_submit(e);
	return NF_ACCEPT;
}
