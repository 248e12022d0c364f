#!/bin/sh
# Regenerates vmlinux/<arch>/vmlinux.h from a kernel's BTF.
# The header must carry the conntrack and NAT types (nf_conn, nf_conntrack_tuple,
# ip_ct_tcp_state, nf_nat_range2, bpf_nf_ctx): generate it from a kernel where
# nf_conntrack and nf_nat are built in, or pass their module BTF as well.
#   usage: vmlinux/gen.sh [BTF_FILE] [ARCH]
set -eu
btf=${1:-/sys/kernel/btf/vmlinux}
arch=${2:-$(uname -m)}
dir=$(dirname "$0")/$arch
mkdir -p "$dir"
bpftool btf dump file "$btf" format c > "$dir/vmlinux.h.tmp"
for t in 'struct nf_conn {' 'struct nf_conntrack_tuple {' 'struct ip_ct_tcp_state {' \
         'struct nf_nat_range2 {' 'struct bpf_nf_ctx {' 'struct sk_buff {'; do
  grep -q "^$t" "$dir/vmlinux.h.tmp" || { echo "gen.sh: $t missing from $btf" >&2; exit 1; }
done
mv "$dir/vmlinux.h.tmp" "$dir/vmlinux.h"
echo "wrote $dir/vmlinux.h from $btf ($(uname -r))"
