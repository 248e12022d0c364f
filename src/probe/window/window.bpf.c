// SPDX-License-Identifier: GPL-2.0
/* Probe "window": TCP segments that conntrack classifies INVALID (they escape
 * de-NAT) or IGNOREs, with the kernel's reason and the window bounds.
 *   fentry:  fentry/fexit nf_conntrack_tcp_packet + fexit nf_tcp_log_invalid
 *   kprobe:  kprobe/kretprobe nf_conntrack_tcp_packet + nf_tcp_log_invalid
 *            (+ kprobe nf_ct_l4proto_log_invalid for the other INVALID reasons)
 *   stable:  netfilter hook at priority -199 (conntrack is -200) in PREROUTING and
 *            LOCAL_OUT: a TCP packet left without a ct is INVALID. */
#include "common.bpf.h"

struct win_state {
	__u64 ct;
	__u64 skb;
	struct ct_event ev; /* packet fields and reason collected on the way */
	__u8 active;
	__u8 logged;
	__u8 typed; /* the verdict came from a struct nf_tcp_invalid_log */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct win_state);
} win_states SEC(".maps");

static __always_inline struct win_state *win_get(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&win_states, &zero);
}

static __always_inline void win_enter(struct nf_conn *ct, struct sk_buff *skb, unsigned int dataoff)
{
	struct win_state *s = win_get();
	unsigned char *data;
	struct tcphdr th;

	if (!s)
		return;
	__builtin_memset(&s->ev, 0, sizeof(s->ev));
	s->ct = (__u64)ct;
	s->skb = (__u64)skb;
	s->active = 1;
	s->logged = 0;
	s->typed = 0;
	data = BPF_CORE_READ(skb, data);
	if (!bpf_probe_read_kernel(&th, sizeof(th), data + dataoff)) {
		s->ev.seq = bpf_ntohl(th.seq);
		s->ev.ack = bpf_ntohl(th.ack_seq);
		s->ev.win = bpf_ntohs(th.window);
		s->ev.tcp_flags = ((__u8 *)&th)[13];
	}
}

static __always_inline void win_log(const struct ip_ct_tcp_state *sender, int proposed,
				    const char *fmt, __u32 bound)
{
	struct win_state *s = win_get();

	if (!s || !s->active)
		return;
	s->logged = 1;
	s->ev.verdict = proposed;
	s->ev.final_verdict = proposed;
	s->ev.bound = bound;
	s->ev.reason = fmt ? CT_R_WIN_TEXT : CT_R_WIN_NOTEXT;
	if (sender) {
		s->ev.td_end = BPF_CORE_READ(sender, td_end);
		s->ev.td_maxend = BPF_CORE_READ(sender, td_maxend);
		s->ev.td_maxwin = BPF_CORE_READ(sender, td_maxwin);
		s->ev.flags |= CT_F_WINDOW;
	}
	if (fmt)
		bpf_probe_read_kernel_str(s->ev.reason_text, sizeof(s->ev.reason_text), fmt);
}

static __always_inline void win_log_final(int final)
{
	struct win_state *s = win_get();

	/* the typed form returns nothing: its final verdict is read at
	 * nf_conntrack_tcp_packet's return */
	if (s && s->active && s->logged && !s->typed)
		s->ev.final_verdict = final;
}

/* Debian's 6.1 and 6.12 (and kernels with the same backport) replaced the
 * variadic form with nf_tcp_log_invalid(skb, ct, state, const struct
 * nf_tcp_invalid_log *log): a reason type and its bound. */
/* CO-RE matches an enum field only with an enum (of the same essential name) */
enum nf_tcp_invalid_log_type___ct {
	NF_TCP_LOG_NONE___ct = 0,
};

struct nf_tcp_invalid_log___ct {
	enum nf_tcp_invalid_log_type___ct type;
	__u32 value;
} __attribute__((preserve_access_index));

#define NF_TCP_LOG_SEQ_OVER 2
#define NF_TCP_LOG_ACK_OVER 3

static __always_inline bool win_log_is_typed(void)
{
	return bpf_core_type_exists(struct nf_tcp_invalid_log___ct);
}

static __always_inline void win_log_typed(const void *logp)
{
	const struct nf_tcp_invalid_log___ct *log = logp;
	struct win_state *s = win_get();
	__u32 type;

	if (!s || !s->active || !log)
		return;
	type = BPF_CORE_READ_BITFIELD_PROBED(log, type);
	s->logged = 1;
	s->typed = 1;
	/* over the upper bounds: INVALID; under the lower ones and overshoot: IGNORE */
	s->ev.verdict = (type == NF_TCP_LOG_SEQ_OVER || type == NF_TCP_LOG_ACK_OVER) ? 1 : 0;
	s->ev.final_verdict = s->ev.verdict;
	s->ev.bound = BPF_CORE_READ_BITFIELD_PROBED(log, value);
	s->ev.drop_reason = type;
	s->ev.reason = CT_R_WIN_TYPED;
}

/* Another INVALID reason (not a window verdict): keep the first text seen. */
static __always_inline void win_log_text(const char *fmt, const char *arg)
{
	struct win_state *s = win_get();
	char pct[3] = {};

	if (!s || !s->active || s->logged)
		return;
	bpf_probe_read_kernel(pct, 2, fmt);
	if (pct[0] == '%' && pct[1] == 's')
		fmt = arg;
	s->logged = 1;
	s->ev.verdict = 1;
	s->ev.final_verdict = 1;
	s->ev.reason = CT_R_WIN_TEXT;
	bpf_probe_read_kernel_str(s->ev.reason_text, sizeof(s->ev.reason_text), fmt);
}

static __always_inline void win_exit(int ret, __u8 source)
{
	struct win_state *s = win_get();
	struct nf_conn *ct;
	struct ct_event *e;
	__u32 kind, netns;
	bool cap;

	if (!s || !s->active)
		return;
	s->active = 0;
	ct = (struct nf_conn *)s->ct;
	if (ret == -NF_REPEAT)
		return; /* the kernel retries with a fresh entry; not counted invalid */
	if (s->typed && ret > 0 && s->ev.verdict == 1)
		s->ev.final_verdict = 2; /* INVALID proposed, accepted: be_liberal */
	if (ret <= 0)
		kind = CT_KIND_TCP_INVALID;
	else if (s->logged && s->ev.final_verdict == 0)
		kind = CT_KIND_TCP_IGNORED;
	else if (s->logged && s->ev.verdict == 1 && s->ev.final_verdict == 2)
		kind = CT_KIND_TCP_INVALID; /* masked by be_liberal */
	else
		return;
	netns = ct_netns_of(ct);
	if (!ct_netns_wanted(netns))
		return;
	/* the segment itself, except where be_liberal let it through; decided
	 * once, so that the record has room wherever the capture runs */
	cap = ret <= 0 || kind == CT_KIND_TCP_IGNORED;
	e = cap ? ct_reserve_pkt(kind, source) : ct_reserve(kind, source);
	if (!e)
		return;
	ct_read_conn(e, ct);
	e->ts_ns = bpf_ktime_get_ns();
	e->netns = netns;
	e->seq = s->ev.seq;
	e->ack = s->ev.ack;
	e->win = s->ev.win;
	e->tcp_flags = s->ev.tcp_flags;
	e->verdict = s->ev.verdict;
	e->final_verdict = s->ev.final_verdict;
	e->bound = s->ev.bound;
	e->drop_reason = s->ev.drop_reason;
	e->td_end = s->ev.td_end;
	e->td_maxend = s->ev.td_maxend;
	e->td_maxwin = s->ev.td_maxwin;
	e->flags |= s->ev.flags & CT_F_WINDOW;
	if (ret > 0 && kind == CT_KIND_TCP_INVALID)
		e->flags |= CT_F_MASKED;
	if (s->logged) {
		e->reason = s->ev.reason;
		__builtin_memcpy(e->reason_text, s->ev.reason_text, sizeof(e->reason_text));
	} else {
		e->reason = CT_R_WIN_UNLOGGED;
	}
	if (cap)
		ct_capture(e, (struct sk_buff *)s->skb, false);
	ct_submit(e);
}

/* --- fentry flavour --- */
SEC("fentry/nf_conntrack_tcp_packet")
int BPF_PROG(win_fentry, struct nf_conn *ct, struct sk_buff *skb, unsigned int dataoff)
{
	win_enter(ct, skb, dataoff);
	return 0;
}

SEC("fexit/nf_conntrack_tcp_packet")
int BPF_PROG(win_fexit, struct nf_conn *ct, struct sk_buff *skb, unsigned int dataoff,
	     enum ip_conntrack_info ctinfo, const struct nf_hook_state *state, int ret)
{
	win_exit(ret, CT_SRC_FENTRY);
	return 0;
}

/* Refused at load where the kernel's BTF marks nf_tcp_log_invalid variadic
 * (6.1: EINVAL). Where it loads (Debian 6.12) the BTF shows five arguments,
 * without fmt: so the arguments are read by index, as many as there are, and
 * the reason text only when the kernel exposes it. */
SEC("fexit/nf_tcp_log_invalid")
int win_log_fexit(__u64 *ctx)
{
	__u64 nargs = bpf_get_func_arg_cnt(ctx);
	__u64 sender = 0, proposed = 0, fmt = 0, final = 0;

	if (nargs == 4 && win_log_is_typed()) {
		bpf_get_func_arg(ctx, 3, &sender); /* the log struct */
		win_log_typed((const void *)sender);
		return 0;
	}
	if (nargs < 5)
		return 0;
	bpf_get_func_arg(ctx, 3, &sender);
	bpf_get_func_arg(ctx, 4, &proposed);
	if (nargs >= 6)
		bpf_get_func_arg(ctx, 5, &fmt);
	bpf_get_func_ret(ctx, &final);
	win_log((const struct ip_ct_tcp_state *)sender, (int)proposed, (const char *)fmt, 0);
	win_log_final((int)final);
	return 0;
}

/* --- kprobe flavour --- */
SEC("kprobe/nf_conntrack_tcp_packet")
int BPF_KPROBE(win_kprobe, struct nf_conn *ct, struct sk_buff *skb, unsigned int dataoff)
{
	win_enter(ct, skb, dataoff);
	return 0;
}

SEC("kretprobe/nf_conntrack_tcp_packet")
int BPF_KRETPROBE(win_kretprobe, int ret)
{
	win_exit(ret, CT_SRC_KPROBE);
	return 0;
}

SEC("kprobe/nf_tcp_log_invalid")
int BPF_KPROBE(win_log_kprobe, const struct sk_buff *skb, const struct nf_conn *ct,
	       const struct nf_hook_state *state, const struct ip_ct_tcp_state *sender,
	       int ret, const char *fmt)
{
	__u32 bound = 0;

	if (win_log_is_typed()) {
		win_log_typed((const void *)sender); /* 4th argument: the log struct */
		return 0;
	}
#if defined(__TARGET_ARCH_x86)
	/* the 7th argument (the bound in the reason format) is on the stack */
	bpf_probe_read_kernel(&bound, sizeof(bound), (void *)(PT_REGS_SP(ctx) + 8));
#elif defined(__TARGET_ARCH_arm64)
	bound = (__u32)ctx->regs[6];
#endif
	win_log(sender, ret, fmt, bound);
	return 0;
}

SEC("kretprobe/nf_tcp_log_invalid")
int BPF_KRETPROBE(win_log_kretprobe, int final)
{
	win_log_final(final);
	return 0;
}

/* 5.14+: nf_ct_l4proto_log_invalid(skb, ct, state, fmt, ...) */
SEC("kprobe/nf_ct_l4proto_log_invalid")
int BPF_KPROBE(win_l4_kprobe, const struct sk_buff *skb, const struct nf_conn *ct,
	       const struct nf_hook_state *state, const char *fmt, const char *arg)
{
	win_log_text(fmt, arg);
	return 0;
}

/* nf_l4proto_log_invalid(skb, state, protonum, fmt, ...): tcp_error() and
 * tcp_new() ("invalid new", the node's own RST) log through it with "%s". */
SEC("kprobe/nf_l4proto_log_invalid")
int BPF_KPROBE(win_l4p_kprobe, const struct sk_buff *skb, const struct nf_hook_state *state,
	       __u8 protonum, const char *fmt, const char *arg)
{
	win_log_text(fmt, arg);
	return 0;
}

/* --- stable flavour --- */

/* Per family (0: IPv4, 1: IPv6): has conntrack given any packet an entry since
 * ctrace attached? Where conntrack does not run (no NAT or conntrack rule in the
 * netns), every packet is without a ct, and none of them is INVALID. */
__u8 ct_seen[2] = {};
/* Packets without a ct seen before conntrack was: not reported, counted. */
__u64 untracked_before_ct = 0;

SEC("netfilter")
int win_nf(struct bpf_nf_ctx *ctx)
{
	struct sk_buff *skb = ctx->skb;
	/* direct loads through the trusted context (no helper call per packet) */
	int fam = ctx->state->pf == 10 ? 1 : 0;
	struct ct_event *e;
	__u32 netns;

	if (skb->_nfct != 0) {
		if (!ct_seen[fam & 1]) /* a shared cache line: write it once */
			ct_seen[fam & 1] = 1;
		return NF_ACCEPT;
	}
	if (!ct_seen[fam & 1]) {
		__sync_fetch_and_add(&untracked_before_ct, 1);
		return NF_ACCEPT;
	}
	netns = ctx->state->net->ns.inum;
	if (!ct_netns_wanted(netns))
		return NF_ACCEPT;
	e = ct_reserve_pkt(CT_KIND_TCP_INVALID, CT_SRC_NETFILTER);
	if (!e)
		return NF_ACCEPT;
	if (ct_read_packet(e, skb, true) != IPPROTO_TCP) {
		bpf_ringbuf_discard(e, 0);
		return NF_ACCEPT;
	}
	e->netns = netns;
	e->hook = ctx->state->hook;
	e->reason = CT_R_WIN_NO_CT;
	ct_capture(e, skb, true);
	ct_submit(e);
	return NF_ACCEPT;
}
