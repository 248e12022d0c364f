# Sourced by bench/run and its pieces: a three-namespace NAT topology.
#   cli (10.77.1.2) --veth-- node (10.77.1.1 | 10.77.2.1, MASQUERADE) --veth-- srv (10.77.2.2)
# Names are unique per process (bench-<pid>-*); links are created inside the
# namespaces, so no host interface, rule or sysctl is touched. topo_down runs
# from an EXIT trap on every exit path (normal, error, INT, TERM).
BENCH_ID=${BENCH_ID:-bench-$$}
CLI=$BENCH_ID-cli
NODE=$BENCH_ID-node
SRV=$BENCH_ID-srv
SRV_IP=10.77.2.2
CLI_IP=10.77.1.2
BENCH_PIDS=()

in_cli() { ip netns exec "$CLI" "$@"; }
in_node() { ip netns exec "$NODE" "$@"; }
in_srv() { ip netns exec "$SRV" "$@"; }

topo_down() {
  local p
  for p in "${BENCH_PIDS[@]}"; do
    kill "$p" 2>/dev/null || true
  done
  for p in "${BENCH_PIDS[@]}"; do
    wait "$p" 2>/dev/null || true
  done
  BENCH_PIDS=()
  for ns in "$CLI" "$NODE" "$SRV"; do
    ip netns del "$ns" 2>/dev/null || true
  done
}

topo_up() {
  trap 'topo_down' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  ip netns add "$CLI"
  ip netns add "$NODE"
  ip netns add "$SRV"
  ip -n "$CLI" link add eth0 type veth peer name c0 netns "$NODE"
  ip -n "$SRV" link add eth0 type veth peer name s0 netns "$NODE"
  ip -n "$CLI" addr add $CLI_IP/24 dev eth0
  ip -n "$NODE" addr add 10.77.1.1/24 dev c0
  ip -n "$NODE" addr add 10.77.2.1/24 dev s0
  ip -n "$SRV" addr add $SRV_IP/24 dev eth0
  for ns in "$CLI" "$NODE" "$SRV"; do
    ip -n "$ns" link set lo up
  done
  ip -n "$CLI" link set eth0 up
  ip -n "$SRV" link set eth0 up
  ip -n "$NODE" link set c0 up
  ip -n "$NODE" link set s0 up
  ip -n "$CLI" route add default via 10.77.1.1
  # srv has no route back to 10.77.1.0/24: only NAT makes replies come back
  in_node sysctl -qw net.ipv4.ip_forward=1
  in_cli sysctl -qw net.ipv4.ip_local_port_range="1024 65535"
  # per-netns: short UDP timeouts so a flood of one-packet flows does not fill
  # the (global) conntrack table
  in_node sysctl -qw net.netfilter.nf_conntrack_udp_timeout=1 2>/dev/null || true
  in_node iptables -t nat -A POSTROUTING -o s0 -j MASQUERADE
  :
}

# node drops what comes in for srv port 9 (TCP, after conntrack: a new entry
# per SYN) and every UDP datagram (in the raw table, before conntrack: the
# cheapest drop, for the highest event rate): one nf_drop event per packet
topo_drop_on() {
  in_node iptables -A FORWARD -i c0 -p tcp --dport 9 -j DROP
  in_node iptables -t raw -A PREROUTING -i c0 -p udp -j DROP
}
topo_drop_off() {
  in_node iptables -D FORWARD -i c0 -p tcp --dport 9 -j DROP
  in_node iptables -t raw -D PREROUTING -i c0 -p udp -j DROP
}

# bg_in NS CMD...: runs CMD in netns NS in the background (ip netns exec execs
# it, so $! is CMD itself); killed by topo_down
bg_in() {
  local ns=$1
  shift
  ip netns exec "$ns" "$@" &
  BENCH_PIDS+=($!)
}

# Starts `ctrace record` on the node in the background; sets CTRACE_PID and
# waits for the header (all probes attached).
CTRACE=${CTRACE:-target/release/ctrace}
ctrace_start() { # FILE [extra args]
  local f=$1
  shift
  rm -f "$f"
  "$CTRACE" record --netns "$NODE" -o "$f" -q "$@" &
  CTRACE_PID=$!
  BENCH_PIDS+=("$CTRACE_PID")
  local i
  for i in $(seq 1 1000); do
    [ -s "$f" ] && return 0
    kill -0 "$CTRACE_PID" 2>/dev/null || { echo "bench: ctrace record exited early" >&2; return 1; }
    sleep 0.01
  done
  echo "bench: ctrace record did not attach in 10 s" >&2
  return 1
}
ctrace_stop() {
  kill -TERM "$CTRACE_PID" 2>/dev/null || true
  wait "$CTRACE_PID" 2>/dev/null || true
}
# trailer FILE KEY...: jq-free read of the last line
trailer() {
  tail -n1 "$1"
}
