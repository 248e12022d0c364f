#!/bin/sh
# /init of the VM matrix's initramfs (tests/vm/matrix builds it).
# Runs under busybox sh inside Debian's own kernel. The host reads results from
# the second serial port (/dev/ttyS1): "@@ ..." result lines and files framed by
# "@@FILE name" / base64 / "@@EOF". The console (ttyS0) only shows progress.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
umask 022

mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t bpf bpf /sys/fs/bpf
mount -t debugfs debugfs /sys/kernel/debug
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mkdir -p /run/netns /run/xtables
ln -sf /proc/self/fd /dev/fd 2>/dev/null
hostname ctrace-vm

. /etc/matrix.env

# Debian's busybox sh runs its own applets before anything on PATH: the real
# iproute2 and kmod must be named by path (programs that exec by name, like
# `ip netns exec` and ctrace's modprobe, find them on PATH as usual).
ip() { /usr/sbin/ip "$@"; }
modprobe() { /sbin/modprobe "$@"; }
lsmod() { /sbin/lsmod "$@"; }

D=/dev/ttyS1
stty -F $D raw -echo 2>/dev/null

up() { cut -d' ' -f1 /proc/uptime; }
say() { echo "@@ $*" >$D; echo "@@ $*"; }
emit() { # emit NAME FILE
    { echo "@@FILE $1"; base64 "$2"; echo "@@EOF"; } >$D
}
# step NAME CMD...: run CMD (stdout to /tmp/NAME.out, stderr to .err), report rc and seconds.
step() {
    name=$1; shift
    s=$(up)
    "$@" >/tmp/$name.out 2>/tmp/$name.err
    rc=$?
    e=$(up)
    say "STEP $name rc=$rc secs=$(awk "BEGIN{printf \"%.2f\", $e-$s}")"
    emit $name.out /tmp/$name.out
    [ -s /tmp/$name.err ] && emit $name.err /tmp/$name.err
    return $rc
}
finish() {
    say "DONE uptime=$(up)"
    sync
    reboot -f
    sleep 5
    echo o >/proc/sysrq-trigger
}
trap finish EXIT

say "BOOTED kernel=$(uname -r) uptime=$(up) cpus=$(nproc)"
say "CONFIG modes=$MODES clients=$CLIENTS"

# The labs' modules. iptables-nft also asks the kernel to autoload more
# (request_module -> /sbin/modprobe), which the initramfs' modules.alias serves.
mods() {
    for m in $MODULES; do modprobe "$m" || echo "modprobe $m failed"; done
    lsmod
}
step modules mods

step features ctrace probes --features

ns() { ip netns exec "$@"; }

lab_down() {
    [ -n "$SRV_PID" ] && kill $SRV_PID 2>/dev/null
    SRV_PID=
    for n in cli node srv; do ip netns del $n 2>/dev/null; done
    return 0
}

# clients (cli) -> node (SNAT to ONE address:port) -> server (srv).
# With one port, every connection after the first gets the same reply tuple,
# and each of its SYNs loses at confirm: insert_failed, deterministically.
lab_up() {
    ip netns add cli || return 1
    ip netns add node || return 1
    ip netns add srv || return 1
    ip link add c0 netns cli type veth peer name n0 netns node || return 1
    ip link add n1 netns node type veth peer name s0 netns srv || return 1
    for n in cli node srv; do ip -n $n link set lo up; done
    ip -n cli addr add 10.0.1.2/24 dev c0 || return 1
    ip -n cli link set c0 up || return 1
    ip -n cli route add default via 10.0.1.1 || return 1
    ip -n node addr add 10.0.1.1/24 dev n0 || return 1
    ip -n node addr add 10.0.2.1/24 dev n1 || return 1
    ip -n node link set n0 up || return 1
    ip -n node link set n1 up || return 1
    ip -n srv addr add 10.0.2.2/24 dev s0 || return 1
    ip -n srv link set s0 up || return 1
    ip -n srv route add default via 10.0.2.1 || return 1
    # IPv6 beside it (nodad: usable at once), for the snat6 race
    ip -n cli addr add fd00:1::2/64 dev c0 nodad || return 1
    ip -n cli route add default via fd00:1::1 || return 1
    ip -n node addr add fd00:1::1/64 dev n0 nodad || return 1
    ip -n node addr add fd00:2::1/64 dev n1 nodad || return 1
    ip -n srv addr add fd00:2::2/64 dev s0 nodad || return 1
    ip -n srv route add default via fd00:2::1 || return 1
    # the udp race's clients: CLIENTS source addresses, all sending from one port
    i=0
    while [ $i -lt "$CLIENTS" ]; do
        ip -n cli addr add 10.0.1.$((10 + i))/24 dev c0 || return 1
        i=$((i + 1))
    done
    ns node sysctl -qw net.ipv4.ip_forward=1 || return 1
    ns node sysctl -qw net.ipv6.conf.all.forwarding=1 || return 1
    ns node iptables -t nat -A POSTROUTING -o n1 -p tcp -j SNAT --to-source 10.0.2.1:40000 || return 1
    ns node iptables -t nat -A POSTROUTING -o n1 -p udp -j SNAT --to-source 10.0.2.1:40000 || return 1
    ns node ip6tables -t nat -A POSTROUTING -o n1 -p tcp -j SNAT --to-source '[fd00:2::1]:40000' || return 1
    ns cli sysctl -qw net.ipv4.tcp_syn_retries=1 || return 1
    # the kernel's own words for each INVALID packet (in dmesg), to compare with
    # ctrace's reasons; inside a netns only while nf_log_all_netns is set
    sysctl -qw net.netfilter.nf_log_all_netns=1 || return 1
    ns node sysctl -qw net.netfilter.nf_conntrack_log_invalid=6 || return 1
    ns srv burst listen 10.0.2.2 80 &
    SRV_PID=$!
    ns srv burst listen fd00:2::2 80 &
    SRV_PID="$SRV_PID $!"
    # resolve neighbours before tracing (ICMP is not NATed by the tcp rule)
    ns cli ping -c 1 -W 5 10.0.2.2 >/dev/null || return 1
    ns cli ping -c 1 -W 5 fd00:2::2 >/dev/null || return 1
    ns node iptables -t nat -S || return 1
    ns node ip6tables -t nat -S || return 1
}

# The two scenarios, each inside its own recording.
# snat: CLIENTS connects at once through the one-port SNAT: all but the first
# lose at confirm (insert_failed, SYN dropped, retransmitted once, dropped again).
traffic_snat() {
    ns cli burst connect 10.0.2.2 80 "$CLIENTS" "$CONNECT_SECS"
}
# invalid: one connection (another server port: no clash with the snat winner),
# then the server forges a segment with SEQ far over the window. Conntrack calls
# it INVALID, it escapes de-NAT, the node answers with a RST (INVALID too).
traffic_invalid() {
    ns srv burst forge 10.0.2.2 81 1 &
    f=$!
    sleep 1
    ns cli burst connect 10.0.2.2 81 1 5 4
    wait $f
}

# snat6: the same race over IPv6 (ip6tables SNAT to [fd00:2::1]:40000).
traffic_snat6() {
    ns cli burst connect fd00:2::2 80 "$CLIENTS" "$CONNECT_SECS"
}
# udp: CLIENTS sockets on different addresses of the pods netns, all bound to
# source port 5353, send one datagram each at once to srv:80 through the SNAT to
# one address:port: the first is confirmed, every other one's reply tuple
# clashes with it (a reply clash is never merged): insert_failed + drop.
traffic_udp() {
    srcs=
    i=0
    while [ $i -lt "$CLIENTS" ]; do srcs="$srcs 10.0.1.$((10 + i))"; i=$((i + 1)); done
    # shellcheck disable=SC2086
    ns cli burst udp 10.0.2.2 80 5353 $srcs
}

# Which side of the upstream change that sets IPS_CONFIRMED only after the hash
# insert (6.16; 6.12.40, 6.6.100, 6.1.147) this kernel is on, seen directly: a
# kprobe event on __nf_conntrack_hash_insert fetches ct->status (offset from the
# module's BTF) while the lab's pings are confirmed. CONFIRMED already set there
# = before-insert (old); clear = after-insert (new).
T=/sys/kernel/tracing
confirm_order_begin() {
    off=$(bpftool btf dump file /sys/kernel/btf/nf_conntrack format raw 2>/dev/null |
        awk '/^\[[0-9]+\] STRUCT .nf_conn. size=/ {s=1; next} s && /^\[/ {s=0} s && /.status. type_id=/ {sub(/.*bits_offset=/, ""); print $1 / 8; exit}')
    [ -z "$off" ] && off=$(bpftool btf dump file /sys/kernel/btf/vmlinux format raw 2>/dev/null |
        awk '/^\[[0-9]+\] STRUCT .nf_conn. size=/ {s=1; next} s && /^\[/ {s=0} s && /.status. type_id=/ {sub(/.*bits_offset=/, ""); print $1 / 8; exit}')
    echo "nf_conn.status offset: ${off:-unknown}"
    [ -n "$off" ] || return 1
    echo "p:ctrace_order __nf_conntrack_hash_insert status=+$off(%di):x64" >>$T/kprobe_events || return 1
    echo 1 >$T/events/kprobes/ctrace_order/enable || return 1
}
confirm_order_end() {
    echo 0 >$T/events/kprobes/ctrace_order/enable 2>/dev/null
    st=$(grep -o 'status=0x[0-9a-f]*' $T/trace | head -1 | cut -d= -f2)
    n=$(grep -c 'ctrace_order' $T/trace)
    echo '-:ctrace_order' >>$T/kprobe_events 2>/dev/null
    echo >$T/trace
    if [ -z "$st" ]; then
        say "CONFIRM_ORDER side=unknown inserts=$n"
    elif [ $((st & 8)) = 8 ]; then
        say "CONFIRM_ORDER side=before-insert status_at_insert=$st inserts=$n"
    else
        say "CONFIRM_ORDER side=after-insert status_at_insert=$st inserts=$n"
    fi
}

# record MODE SCENARIO: ctrace record around traffic_SCENARIO; the trailer
# carries the kernel's own counter deltas for the node netns.
record() {
    m=$1 sc=$2
    out=/tmp/rec-$m-$sc.jsonl
    ns node conntrack -S >/tmp/ctstat-before-$m-$sc.txt 2>&1
    dmesg -c >/dev/null
    s=$(up)
    ctrace record --mode "$m" --netns node -q -o "$out" 2>/tmp/rec-$m-$sc.err &
    pid=$!
    i=0
    while [ ! -s "$out" ] && kill -0 $pid 2>/dev/null && [ $i -lt 1200 ]; do
        sleep 0.1; i=$((i + 1))
    done
    a=$(up)
    if [ ! -s "$out" ]; then
        wait $pid
        rc=$?
        say "RECORD mode=$m scenario=$sc rc=$rc attach_secs=- traffic_secs=- stop_secs=-"
        emit rec-$m-$sc.err /tmp/rec-$m-$sc.err
        return 1
    fi
    traffic_$sc >/tmp/traffic-$m-$sc.out 2>&1
    # the table right after the round: who holds each reply tuple (the
    # winners each insert failure must name)
    ns node conntrack -L >/tmp/table-$m-$sc.txt 2>/dev/null
    b=$(up)
    sleep 1
    kill -TERM $pid
    wait $pid
    rc=$?
    e=$(up)
    ns node conntrack -S >/tmp/ctstat-after-$m-$sc.txt 2>&1
    dmesg | grep 'nf_ct_proto_' >/tmp/klog-$m-$sc.txt
    say "RECORD mode=$m scenario=$sc rc=$rc attach_secs=$(awk "BEGIN{printf \"%.2f\", $a-$s}") traffic_secs=$(awk "BEGIN{printf \"%.2f\", $b-$a}") stop_secs=$(awk "BEGIN{printf \"%.2f\", $e-$b}") traffic=\"$(tr '\n' ' ' </tmp/traffic-$m-$sc.out)\""
    for f in rec-$m-$sc.jsonl rec-$m-$sc.err traffic-$m-$sc.out ctstat-before-$m-$sc.txt ctstat-after-$m-$sc.txt klog-$m-$sc.txt table-$m-$sc.txt; do
        emit $f /tmp/$f
    done
    return $rc
}

# VM_EXTRA (host env): a debugging command run here after the feature capture.
[ -n "$EXTRA" ] && step extra sh -c "$EXTRA"

step confirm-order-probe confirm_order_begin
ORDER=1
for m in $MODES; do
    # CTRACE_DEBUG: libbpf's log (a refused load's verifier log) lands in probes-M.err
    step probes-$m env CTRACE_DEBUG=1 ctrace probes --mode "$m" --json
    lab_down
    step lab-$m lab_up
    [ -n "$ORDER" ] && confirm_order_end
    ORDER=
    for sc in $SCENARIOS; do record "$m" "$sc"; done
    lab_down
done

dmesg >/tmp/dmesg.txt
emit dmesg.txt /tmp/dmesg.txt
