// SPDX-License-Identifier: GPL-2.0
/* bench/run's measurement floor: BPF programs that do nothing, on the hooks
 * where ctrace's tp_btf programs sit. Their mean run time under bpf_stats is
 * what dispatch and the statistics themselves cost on this machine. Built by
 * bench/run with clang, loaded by examples/bpfnull.rs. */
#define SEC(n) __attribute__((section(n), used))
char LICENSE[] SEC("license") = "GPL";

SEC("tp_btf/kfree_skb")
int null_kfree_skb(void *ctx)
{
	return 0;
}

SEC("tp_btf/consume_skb")
int null_consume_skb(void *ctx)
{
	return 0;
}
