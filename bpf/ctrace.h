/* SPDX-License-Identifier: GPL-2.0 */
/* The one definition of the record that ctrace's BPF programs write to their ring
 * buffers. Rust reads it through the skeleton's generated type (src/event.rs): never
 * mirror it by hand. Bump CT_ABI_VERSION on any layout change. */
#ifndef CTRACE_H
#define CTRACE_H

#define CT_ABI_VERSION 4

enum ct_kind {
	CT_KIND_NAT_ALLOC = 1,
	CT_KIND_INSERT_FAILED = 2,
	CT_KIND_CLASH_RESOLVED = 3,
	CT_KIND_TCP_INVALID = 4,
	CT_KIND_TCP_IGNORED = 5,
	CT_KIND_HOST_RST = 6,
	CT_KIND_SYN_RETRANS = 7,
	CT_KIND_NF_DROP = 8,
};

/* Reason codes; the wording lives in user space (src/event.rs). */
enum ct_reason {
	CT_R_NONE = 0,
	CT_R_CONFIRM_CLASH = 1,      /* clash with an existing entry, not resolved */
	CT_R_CONFIRM_DYING = 2,      /* the conntrack entry was dying */
	CT_R_CONFIRM_DROP = 3,       /* confirm dropped the packet (stable mode: path unknown) */
	CT_R_CLASH_MERGED = 4,       /* clash resolved: skb now points at the existing entry */
	CT_R_CLASH_NAT_HARDER = 5,   /* clash resolved: IPS_NAT_CLASH (UDP, harder path) */
	CT_R_WIN_TEXT = 10,          /* the kernel's own log text is in reason_text */
	CT_R_WIN_NO_CT = 11,         /* stable: TCP packet left without a ct after conntrack */
	CT_R_WIN_UNLOGGED = 12,      /* nf_conntrack_tcp_packet said INVALID without a window log */
	CT_R_WIN_NOTEXT = 13,        /* window verdict seen, its text not readable (fentry) */
	CT_R_WIN_TYPED = 14,         /* nf_tcp_invalid_log: type in drop_reason, bound in bound */
	CT_R_DROP_REASON = 20,       /* kfree_skb: value in drop_reason */
	CT_R_RST_REASON = 21,        /* tcp_send_reset: value in drop_reason (enum sk_rst_reason) */
};

/* flags */
enum ct_flag {
	CT_F_REPLY = 0x02,        /* reply tuple is set */
	CT_F_REMAPPED = 0x04,     /* NAT changed the port */
	CT_F_MASKED = 0x08,       /* window: proposed INVALID, accepted because of be_liberal */
	CT_F_RANDOM_FULLY = 0x10, /* NAT range had NF_NAT_RANGE_PROTO_RANDOM_FULLY */
	CT_F_WINDOW = 0x20,       /* td_* window bounds are set */
	CT_F_SNAT = 0x40,
	CT_F_DNAT = 0x80,
};

/* The typed window log (enum nf_tcp_invalid_log_type of Debian's 6.1/6.12),
 * carried in drop_reason with CT_R_WIN_TYPED. */
enum ct_win_log {
	CT_WIN_LOG_LEN_LONG = 1,   /* "%u bytes more than expected" */
	CT_WIN_LOG_SEQ_OVER = 2,   /* SEQ is over upper bound */
	CT_WIN_LOG_ACK_OVER = 3,   /* ACK is over upper bound */
	CT_WIN_LOG_SEQ_UNDER = 4,  /* SEQ is under lower bound */
	CT_WIN_LOG_ACK_UNDER = 5,  /* ignored ACK under lower bound */
};

/* The window verdict (enum nf_ct_tcp_action): verdict and final_verdict. */
enum ct_verdict {
	CT_V_IGNORE = 0,
	CT_V_INVALID = 1,
	CT_V_ACCEPT = 2,
};

/* Packet capture (record --pcap): the most bytes of a packet, from its IP
 * header on, that one event carries after its record. */
enum ct_snap {
	CT_SNAP_MAX = 1504,
};

/* where the event was produced (which hook flavour) */
enum ct_source {
	CT_SRC_NETFILTER = 1,
	CT_SRC_KPROBE = 2,
	CT_SRC_FENTRY = 3,
	CT_SRC_TRACEPOINT = 4,
};

struct ct_tuple {
	__u8 src[16]; /* IPv4 in the first 4 bytes */
	__u8 dst[16];
	__u16 sport;  /* host byte order */
	__u16 dport;
};

struct ct_event {
	__u64 ts_ns;      /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u64 location;   /* kernel address (kfree_skb location), 0 if none */
	__u64 ct;         /* kernel address of the nf_conn, for correlating; 0 if none */
	__u32 kind;       /* enum ct_kind */
	__u32 cpu;
	__u32 netns;      /* netns inode */
	__u32 reason;     /* enum ct_reason */
	__u32 drop_reason;/* skb_drop_reason / sk_rst_reason value */
	__u32 seq, ack;   /* TCP header of the packet */
	__u32 pkt_len;    /* captured: the packet's length from its IP header on */
	__u32 cap_len;    /* captured: how many of those bytes follow the record (0: none) */
	__u16 win;        /* TCP window field */
	__u16 port;       /* translated port (SNAT: reply dst port, DNAT: reply src port) */
	__u8 family;      /* 4 or 6 */
	__u8 proto;       /* IPPROTO_* */
	__u8 flags;       /* CT_F_* */
	__u8 tcp_flags;   /* FIN 1 SYN 2 RST 4 PSH 8 ACK 16 */
	__u8 source;      /* enum ct_source */
	__u8 hook;        /* netfilter hook number, 0xff if none */
	__u8 verdict;     /* window: proposed nf_ct_tcp_action (0 ignore, 1 invalid, 2 accept) */
	__u8 final_verdict;
	struct ct_tuple orig;
	/* a record of CT_LEN_PACKET bytes ends here */
	struct ct_tuple reply;
	/* a record of CT_LEN_CONN bytes ends here */
	__u32 td_end, td_maxend, td_maxwin, bound; /* sender's window state, kernel's bound */
	char reason_text[64];
};

/* How much of the record an event of each kind has (its reservation in the
 * ring): an event describing a packet (nf_drop, syn_retrans) stops before
 * the reply tuple, one describing a connection (nat_alloc, clash_resolved)
 * before the window state; the others, and any event that carries its
 * packet's bytes (which follow a whole record), are whole. A shorter record
 * is fewer cache lines written per event and more events in the ring. The
 * reader treats the missing tail as zeros. */
enum ct_len {
	CT_LEN_PACKET = __builtin_offsetof(struct ct_event, reply),
	CT_LEN_CONN = __builtin_offsetof(struct ct_event, td_end),
	CT_LEN_FULL = sizeof(struct ct_event),
};

/* The keys of the lost counter (`lost` in common.bpf.h): records of the
 * failure kinds (CT_IS_FAILURE) apart from every other, so that user space can
 * tell a loss that leaves the failures whole from one that does not. */
enum ct_lost {
	CT_LOST_OTHERS = 0,
	CT_LOST_FAILURES = 1,
	CT_LOST_KEYS = 2,
};

/* Every enum of the ABI in one struct, instantiated once in common.bpf.h, so
 * that the skeleton generates their Rust types (src/abi.rs reads the values
 * from there: no number is copied by hand). */
struct ct_abi {
	enum ct_kind kind;
	enum ct_reason reason;
	enum ct_flag flag;
	enum ct_source source;
	enum ct_win_log win_log;
	enum ct_verdict verdict;
	enum ct_snap snap;
	enum ct_len len;
	enum ct_lost lost;
};

#endif
