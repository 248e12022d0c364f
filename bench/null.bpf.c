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
