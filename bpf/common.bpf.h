/* SPDX-License-Identifier: GPL-2.0 */
/* Shared by every probe object: the ring buffer, the lost-record counter, the
 * configuration written to rodata before load, and the readers for conntrack
 * entries, packet headers and the current task. Everything reads kernel memory
 * through CO-RE, so one object runs on every kernel that has the fields. */
#ifndef CTRACE_COMMON_BPF_H
#define CTRACE_COMMON_BPF_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>
#include "ctrace.h"

char LICENSE[] SEC("license") = "GPL";

/* 0: every netns. Otherwise only events whose netns inode matches. */
const volatile __u32 filter_netns = 0;

/* The ring buffer's size as user space sized it (saves a query per event). */
const volatile __u64 ring_bytes = 1 << 22;

/* [start, end) of tcp_v4_send_reset and tcp_v6_send_reset from /proc/kallsyms
 * (0 when unknown): a host RST's location is the frame that called them. */
const volatile __u64 rst_fns[4] = {};

/* Packet capture (record --pcap): the bytes reserved after the record of an
 * event that carries its packet, the snap length rounded up to 8; 0 when
 * nothing is captured. A constant of the loaded program (rodata, frozen), so
 * the reservation has a fixed size the verifier knows, and with 0 every
 * capture branch is compiled away. Only events pay: no per-packet path reads
 * it. */
const volatile __u32 snap_room = 0;

/* A dummy global so that the skeleton generates the Rust type of the record. */
struct ct_event ct_event_abi = {};
struct ct_abi ct_abi_enums = {};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22);
} events SEC(".maps");

/* Records that could not be written, per CPU, by enum ct_lost. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CT_LOST_KEYS);
	__type(key, __u32);
	__type(value, __u64);
} lost SEC(".maps");

#define NF_DROP 0
#define NF_ACCEPT 1
#define NF_REPEAT 4

#define IPS_CONFIRMED (1UL << 3)
#define IPS_SRC_NAT (1UL << 4)
#define IPS_DST_NAT (1UL << 5)
#define IPS_DYING (1UL << 9)
#define IPS_NAT_CLASH (1UL << 12)

#define NF_NAT_RANGE_PROTO_RANDOM_FULLY 16

#define AF_INET 2
#define AF_INET6 10
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD

#define TCP_SYN_SENT 2

/* The kinds ctrace exists to show (src/pipeline.rs is_failure keeps the same
 * ones past the user-space queue's bound). */
#define CT_IS_FAILURE(kind)                                                        \
	((kind) == CT_KIND_INSERT_FAILED || (kind) == CT_KIND_CLASH_RESOLVED ||    \
	 (kind) == CT_KIND_TCP_INVALID)

static __always_inline void ct_lost(__u32 kind)
{
	__u32 key = CT_IS_FAILURE(kind) ? CT_LOST_FAILURES : CT_LOST_OTHERS;
	__u64 *n = bpf_map_lookup_elem(&lost, &key);

	if (n)
		__sync_fetch_and_add(n, 1);
}

/* The ring's last quarter is the failures' own. Symptoms see every netns, so
 * a flood of another netns's drops behind a reader that lags (a loaded node,
 * a stalled consumer) filled the ring, and the traced netns's next insert
 * failures found no room: lost beside the flood's drops, the one story the
 * trace exists for. Past three quarters, every other kind is refused and
 * counted in `lost`; insert_failed, clash_resolved and tcp_invalid still fit.
 * ct_crowded is set where the fill is looked at anyway (ct_submit, once per
 * CT_WAKE_GAP_NS) and when a reservation fails; only while it is set does a
 * record of another kind ask the fill (a helper call) before reserving, and
 * the first that finds room again clears it. So a ring with room costs
 * nothing here, and at most a gap's worth of a flood reaches the last
 * quarter before the gate closes. Per object (its .bss): each object's own
 * looks close its own gate. */
__u8 ct_crowded = 0;

#define CT_CROWDED(avail) ((avail) >= ring_bytes - ring_bytes / 4)

static __always_inline void *ct_ring_reserve(__u32 kind, __u64 size)
{
	void *e;

	if (!CT_IS_FAILURE(kind) && ct_crowded) {
		if (CT_CROWDED(bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA)))
			return NULL;
		ct_crowded = 0;
	}
	e = bpf_ringbuf_reserve(&events, size, 0);
	if (!e)
		ct_crowded = 1;
	return e;
}

/* Zeroes only what some kind may leave unset: everything up to the reply
 * tuple (addresses, kind, cpu, netns, reason codes, seq/ack, the capture
 * lengths, the small fields and the original tuple). Not the reply tuple
 * (read only with CT_F_REPLY, which ct_read_conn sets after writing all of
 * it), the window bounds (td_*, bound: read only with CT_F_WINDOW or a logged
 * window reason, and written by the window path) or the reason text past its
 * first byte (read only as a C string) -- and none of those exists in a
 * shorter record (enum ct_len). A field added to the record must fall in the
 * zeroed range or be written by every kind. `len` is a constant at every
 * call: a record of CT_LEN_PACKET or CT_LEN_CONN bytes has no reason text. */
static __always_inline struct ct_event *ct_fill_new(struct ct_event *e, __u32 kind, __u8 source,
						    __u32 len)
{
	if (!e) {
		ct_lost(kind);
		return NULL;
	}
	__builtin_memset(e, 0, CT_LEN_PACKET);
	if (len == CT_LEN_FULL)
		e->reason_text[0] = 0;
	e->ts_ns = bpf_ktime_get_ns();
	e->kind = kind;
	e->cpu = bpf_get_smp_processor_id();
	e->source = source;
	e->hook = 0xff;
	return e;
}

/* A record of `len` bytes (enum ct_len, a constant): only the fields before
 * that offset may be written. */
static __always_inline struct ct_event *ct_reserve_len(__u32 kind, __u8 source, __u32 len)
{
	return ct_fill_new(ct_ring_reserve(kind, len), kind, source, len);
}

static __always_inline struct ct_event *ct_reserve(__u32 kind, __u8 source)
{
	return ct_reserve_len(kind, source, CT_LEN_FULL);
}

/* A record with room for its packet's bytes after it (ct_capture fills them). */
static __always_inline struct ct_event *ct_reserve_pkt(__u32 kind, __u8 source)
{
	if (!snap_room)
		return ct_reserve(kind, source);
	return ct_fill_new(ct_ring_reserve(kind, sizeof(struct ct_event) + snap_room), kind,
			   source, CT_LEN_FULL);
}

/* The ring's fill is looked at, and a wake-up of the reader forced, at most
 * once per CT_WAKE_GAP_NS per object. */
#define CT_WAKE_GAP_NS 1000000ULL

/* When this object last looked at the ring's fill (its .bss: a plain store,
 * shared by the CPUs; a race costs at most one extra look or wake-up). */
__u64 ct_last_look = 0;

/* Hands a record to user space without waking the reader (BPF_RB_NO_WAKEUP).
 * A wake-up is an irq_work raised by a self-IPI: under virtualization a VM
 * exit, several microseconds. The reader instead polls with a timeout
 * (src/pipeline.rs, POLL_TIMEOUT: 25 ms) and drains the ring after each one,
 * which bounds the latency of any record to that timeout plus one drain.
 * A burst that queues more than a sixteenth of the ring forces a wake-up so
 * that the reader starts early — but at most one per CT_WAKE_GAP_NS: before,
 * every submit past the threshold forced one until the reader had drained
 * (a wake-up storm: 28-35 % of sym_kfree_skb's samples in
 * arch_irq_work_raise at 100k drops/s, and lost records under load). The
 * fill is asked (bpf_ringbuf_query, a helper call) only when a wake-up could
 * follow, once per gap, not for every record: a burst is seen at most one gap
 * late, with fifteen sixteenths of the ring still free. */
static __always_inline void ct_submit(struct ct_event *e)
{
	__u64 flags = BPF_RB_NO_WAKEUP;

	if (e->ts_ns - ct_last_look >= CT_WAKE_GAP_NS) {
		__u64 avail = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);

		ct_last_look = e->ts_ns;
		if (avail >= ring_bytes / 16)
			flags = BPF_RB_FORCE_WAKEUP;
		if (CT_CROWDED(avail))
			ct_crowded = 1;
	}
	bpf_ringbuf_submit(e, flags);
}

/* No pid, comm or cgroup in the record: none of the conntrack hooks is known
 * to run for a task (they run in softirq as often as in a syscall), and the
 * per-CPU preempt count that would tell them apart is not addressable on every
 * kernel (it needs CONFIG_KALLSYMS_ALL). No pid is given rather than a wrong one. */

/* Both tuples of an entry are read with one helper call: the bytes from
 * ct->tuplehash on, into the stack, and every field picked out at the kernel's
 * own offset (CO-RE relocated constants, so a kernel whose layout would not fit
 * the buffer fails verification instead of reading wrong bytes). Ten
 * bpf_probe_read_kernel calls per event became one. */
#define CT_TH_BYTES 128

#define CT_TH_OFF(f) \
	((__u32)(bpf_core_field_offset(struct nf_conn, f) - bpf_core_field_offset(struct nf_conn, tuplehash)))

#define CT_TH_U16(th, f) ({ __u16 __v; __builtin_memcpy(&__v, (th) + CT_TH_OFF(f), 2); __v; })

/* Conntrack entries reached through a scalar (skb->_nfct, a kprobe's
 * register) are not BTF pointers: each read was a bpf_probe_read_kernel
 * (23 % of nat_nf's samples). Where struct nf_conn is in vmlinux BTF
 * (conntrack built in) and the kernel has bpf_rdonly_cast (6.2+), user space
 * gives the type's id in ct_btf_id (src/probe/features.rs: not a CO-RE
 * type-id relocation, which nf_conn___init makes ambiguous) and the entry is cast to
 * a read-only BTF pointer: its fields are then plain loads (faults handled
 * like a probe read, no helper call). Elsewhere (conntrack a module: its
 * types live in module BTF, which bpf_rdonly_cast does not take) the CO-RE
 * helper reads stay. ct_btf_id is rodata: the verifier drops the other
 * branch, and the weak kfunc may be absent where it is 0. */
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym __weak;

const volatile __u32 ct_btf_id = 0;

#define ct_cast (ct_btf_id != 0)
#define CT_CAST(ct) ((struct nf_conn *)bpf_rdonly_cast((ct), ct_btf_id))

static __always_inline __u32 ct_netns_of(struct nf_conn *ct)
{
	if (ct_cast)
		return CT_CAST(ct)->ct_net.net->ns.inum;
	return BPF_CORE_READ(ct, ct_net.net, ns.inum);
}

static __always_inline unsigned long ct_status(struct nf_conn *ct)
{
	if (ct_cast)
		return CT_CAST(ct)->status;
	return BPF_CORE_READ(ct, status);
}

/* Fill family, protocol and both tuples from a conntrack entry. */
static __always_inline void ct_read_conn(struct ct_event *e, struct nf_conn *ct)
{
	__u8 th[CT_TH_BYTES];
	__u16 l3;

	e->ct = (__u64)ct;
	if (ct_cast) {
		struct nf_conn *c = CT_CAST(ct);
		struct nf_conntrack_tuple *o = &c->tuplehash[0].tuple;
		struct nf_conntrack_tuple *r = &c->tuplehash[1].tuple;

		e->family = o->src.l3num == AF_INET6 ? 6 : 4;
		e->proto = o->dst.protonum;
		__builtin_memcpy(e->orig.src, &o->src.u3, 16);
		__builtin_memcpy(e->orig.dst, &o->dst.u3, 16);
		e->orig.sport = bpf_ntohs(o->src.u.all);
		e->orig.dport = bpf_ntohs(o->dst.u.all);
		__builtin_memcpy(e->reply.src, &r->src.u3, 16);
		__builtin_memcpy(e->reply.dst, &r->dst.u3, 16);
		e->reply.sport = bpf_ntohs(r->src.u.all);
		e->reply.dport = bpf_ntohs(r->dst.u.all);
		e->flags |= CT_F_REPLY;
		return;
	}
	if (bpf_probe_read_kernel(th, sizeof(th), &ct->tuplehash))
		return;
	l3 = CT_TH_U16(th, tuplehash[0].tuple.src.l3num);
	e->family = l3 == AF_INET6 ? 6 : 4;
	e->proto = th[CT_TH_OFF(tuplehash[0].tuple.dst.protonum)];
	__builtin_memcpy(e->orig.src, th + CT_TH_OFF(tuplehash[0].tuple.src.u3), 16);
	__builtin_memcpy(e->orig.dst, th + CT_TH_OFF(tuplehash[0].tuple.dst.u3), 16);
	e->orig.sport = bpf_ntohs(CT_TH_U16(th, tuplehash[0].tuple.src.u.all));
	e->orig.dport = bpf_ntohs(CT_TH_U16(th, tuplehash[0].tuple.dst.u.all));
	__builtin_memcpy(e->reply.src, th + CT_TH_OFF(tuplehash[1].tuple.src.u3), 16);
	__builtin_memcpy(e->reply.dst, th + CT_TH_OFF(tuplehash[1].tuple.dst.u3), 16);
	e->reply.sport = bpf_ntohs(CT_TH_U16(th, tuplehash[1].tuple.src.u.all));
	e->reply.dport = bpf_ntohs(CT_TH_U16(th, tuplehash[1].tuple.dst.u.all));
	e->flags |= CT_F_REPLY;
}

/* ctinfo, the low 3 bits of skb->_nfct. An unconfirmed entry's packet is always
 * in the original direction: IP_CT_RELATED (1) or IP_CT_NEW (2). Established and
 * reply traffic (0, 3, 4) and untracked (7) can be skipped without touching the
 * entry: the cheap test that keeps per-packet hooks near an empty program. */
static __always_inline bool ct_info_may_be_unconfirmed(unsigned long nfct)
{
	unsigned long info = nfct & 7;

	return info == 1 || info == 2;
}

/* `direct`: skb is a trusted BTF pointer (tp_btf and fentry arguments, the
 * netfilter context), so its fields are plain loads; otherwise (a kprobe's
 * register) each goes through bpf_probe_read_kernel. The flag is a constant at
 * every call site: the other branch is compiled away. */
#define CT_SKB(skb, direct, f) ((direct) ? (skb)->f : BPF_CORE_READ(skb, f))

static __always_inline struct nf_conn *ct_of_skb(struct sk_buff *skb, bool direct)
{
	unsigned long nfct = CT_SKB(skb, direct, _nfct);

	return (struct nf_conn *)(nfct & ~7UL);
}

/* SNAT chose the reply tuple's destination, DNAT its source. */
static __always_inline void ct_nat_port(struct ct_event *e, unsigned long status)
{
	if (status & IPS_SRC_NAT) {
		e->flags |= CT_F_SNAT;
		e->port = e->reply.dport;
		if (e->reply.dport != e->orig.sport)
			e->flags |= CT_F_REMAPPED;
	}
	if (status & IPS_DST_NAT) {
		e->flags |= CT_F_DNAT;
		if (!(status & IPS_SRC_NAT))
			e->port = e->reply.sport;
		if (e->reply.sport != e->orig.dport)
			e->flags |= CT_F_REMAPPED;
	}
}


/* Packet headers cast to their kernel types with bpf_rdonly_cast, like
 * conntrack entries (ct_cast above): struct iphdr, ipv6hdr, tcphdr, udphdr's
 * vmlinux BTF ids from user space (src/probe/features.rs), all 0 where the
 * kfunc is missing. Their layout is the wire format, so no field moves; the
 * loads fault like a probe read (a faulting load reads 0, which fails the
 * version test). Two bpf_probe_read_kernel calls per event were a fifth of a
 * drop event's samples. */
const volatile __u32 pkt_btf_id[4] = {};

#define pkt_cast (pkt_btf_id[0] != 0)
#define PKT_CAST(type, i, p) ((const struct type *)bpf_rdonly_cast((p), pkt_btf_id[i]))

/* The L4 ports and TCP fields, from a header that can be loaded directly
 * (cast) or was copied to the stack. */
#define CT_FILL_L4(e, proto, tcp, udp)                                  \
	do {                                                              \
		if ((proto) == IPPROTO_TCP) {                             \
			(e)->orig.sport = bpf_ntohs((tcp)->source);       \
			(e)->orig.dport = bpf_ntohs((tcp)->dest);         \
			(e)->seq = bpf_ntohl((tcp)->seq);                 \
			(e)->ack = bpf_ntohl((tcp)->ack_seq);             \
			(e)->win = bpf_ntohs((tcp)->window);              \
			(e)->tcp_flags = ((const __u8 *)(tcp))[13];       \
		} else {                                                  \
			(e)->orig.sport = bpf_ntohs((udp)->source);       \
			(e)->orig.dport = bpf_ntohs((udp)->dest);         \
		}                                                         \
	} while (0)

/* ct_read_packet's cast path: plain loads through read-only BTF pointers. */
static __always_inline int ct_read_packet_cast(struct ct_event *e, unsigned char *head, __u16 nh)
{
	const struct iphdr *v4 = PKT_CAST(iphdr, 0, head + nh);
	__u8 first = *(const __u8 *)v4;
	__u32 l4off;
	__u8 proto;

	if ((first >> 4) == 4) {
		e->family = 4;
		proto = v4->protocol;
		*(__u32 *)e->orig.src = v4->saddr;
		*(__u32 *)e->orig.dst = v4->daddr;
		l4off = nh + (first & 0xf) * 4;
	} else if ((first >> 4) == 6) {
		const struct ipv6hdr *v6 = PKT_CAST(ipv6hdr, 1, head + nh);

		e->family = 6;
		proto = v6->nexthdr; /* extension headers are not followed */
		__builtin_memcpy(e->orig.src, &v6->saddr, 16);
		__builtin_memcpy(e->orig.dst, &v6->daddr, 16);
		l4off = nh + sizeof(*v6);
	} else {
		return -1;
	}
	e->proto = proto;
	if (proto == IPPROTO_TCP || proto == IPPROTO_UDP) {
		const struct tcphdr *th = PKT_CAST(tcphdr, 2, head + l4off);
		const struct udphdr *uh = PKT_CAST(udphdr, 3, head + l4off);

		CT_FILL_L4(e, proto, th, uh);
	}
	return proto;
}

/* Read the IP and TCP/UDP headers of a packet whose network header is set.
 * Fills family, proto, orig tuple and (TCP) seq/ack/win/flags. Returns the
 * L4 protocol, or -1 when the headers cannot be read. Plain loads where the
 * headers can be cast (pkt_cast); otherwise two reads of packet bytes: the
 * network header (40 bytes cover both families) and the L4 one. */
static __always_inline int ct_read_packet(struct ct_event *e, struct sk_buff *skb, bool direct)
{
	unsigned char *head = CT_SKB(skb, direct, head);
	__u16 nh = CT_SKB(skb, direct, network_header);
	union {
		struct iphdr v4;
		struct ipv6hdr v6;
		__u8 first;
	} ip;
	union {
		struct tcphdr t;
		struct udphdr u;
	} l4;
	__u32 l4off;
	__u8 proto;

	if (pkt_cast)
		return ct_read_packet_cast(e, head, nh);
	if (bpf_probe_read_kernel(&ip, sizeof(ip.v6), head + nh) &&
	    bpf_probe_read_kernel(&ip, sizeof(ip.v4), head + nh))
		return -1;
	if ((ip.first >> 4) == 4) {
		e->family = 4;
		proto = ip.v4.protocol;
		__builtin_memcpy(e->orig.src, &ip.v4.saddr, 4);
		__builtin_memcpy(e->orig.dst, &ip.v4.daddr, 4);
		l4off = nh + ip.v4.ihl * 4;
	} else if ((ip.first >> 4) == 6) {
		e->family = 6;
		proto = ip.v6.nexthdr; /* extension headers are not followed */
		__builtin_memcpy(e->orig.src, &ip.v6.saddr, 16);
		__builtin_memcpy(e->orig.dst, &ip.v6.daddr, 16);
		l4off = nh + sizeof(ip.v6);
	} else {
		return -1;
	}
	e->proto = proto;
	if (proto == IPPROTO_TCP || proto == IPPROTO_UDP) {
		if (bpf_probe_read_kernel(&l4, proto == IPPROTO_TCP ? sizeof(l4.t) : sizeof(l4.u),
					  head + l4off))
			return proto;
		CT_FILL_L4(e, proto, &l4.t, &l4.u);
	}
	return proto;
}

/* Copies the packet's first bytes, from its IP header on, after a record
 * reserved by ct_reserve_pkt: at most snap_room, and only the linear part
 * (headers are always there; paged payload is not read, rather than read
 * wrong). skb->len counts from skb->data: the network header at the netfilter
 * hooks and at kfree_skb after them, the transport header where TCP answers a
 * segment with a RST. */
static __always_inline void ct_capture(struct ct_event *e, struct sk_buff *skb, bool direct)
{
	unsigned char *head;
	__u64 data;
	__u32 nh, len, data_len, before, linear;
	__u64 n;

	if (!snap_room || !skb)
		return;
	head = CT_SKB(skb, direct, head);
	data = (__u64)CT_SKB(skb, direct, data);
	nh = CT_SKB(skb, direct, network_header);
	len = CT_SKB(skb, direct, len);
	data_len = CT_SKB(skb, direct, data_len);
	if (data < (__u64)head + nh || data_len > len)
		return;
	before = (__u32)(data - (__u64)head) - nh; /* bytes from the IP header to data */
	if (before > 0xffff)
		return;
	linear = before + len - data_len;
	n = linear;
	if (n > snap_room)
		n = snap_room;
	/* one register, checked again where the verifier follows it: without
	 * this, clang bounds one copy of n and passes another */
	asm volatile("" : "+r"(n));
	if (n == 0 || n > snap_room)
		return;
	if (bpf_probe_read_kernel((void *)(e + 1), n, head + nh))
		return;
	e->pkt_len = before + len;
	e->cap_len = n;
}

static __always_inline __u32 ct_netns_of_skb(struct sk_buff *skb, bool direct)
{
	struct net_device *dev = CT_SKB(skb, direct, dev);
	struct sock *sk;

	if (dev)
		return direct ? dev->nd_net.net->ns.inum : BPF_CORE_READ(dev, nd_net.net, ns.inum);
	sk = CT_SKB(skb, direct, sk);
	if (sk)
		return direct ? sk->__sk_common.skc_net.net->ns.inum
			      : BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	return 0;
}

static __always_inline bool ct_netns_wanted(__u32 netns)
{
	return filter_netns == 0 || netns == filter_netns;
}

#endif
