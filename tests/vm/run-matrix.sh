#!/bin/bash
# VM matrix: boots Debian bookworm's own cloud kernels (6.1 and 6.12) under
# qemu TCG with an initramfs holding the host's userland (busybox, iproute2,
# iptables, conntrack, bpftool, kmod) and the freshly built ctrace, and runs in
# each: `ctrace probes --features`, `ctrace probes --mode M --json` and a
# `ctrace record --mode M` around a SNAT-to-one-port lab, for M in kprobe,
# fentry, stable. Prints kernel x mode x probe with ctrace's event counts beside
# the kernel's own counters, and exits non-zero on any mismatch, boot failure or
# mode that does not attach (unless the kernel rightly lacks it).
#
# Usage: tests/vm/run-matrix.sh [--save-fixtures] [KERNEL_PACKAGE...]
#   default kernels: the newest linux-image-6.1.0-*-cloud-amd64 and
#   linux-image-6.12.*-cloud-amd64 that apt knows (bookworm, -updates, -security;
#   bookworm-backports is added for 6.12 only if no source has it).
# Env: CTRACE (binary; default target/release/ctrace), VM_MODES ("kprobe fentry
#   stable"), VM_CLIENTS (8), VM_TIMEOUT (seconds per boot, 900), VM_SMP (2),
#   VM_MEM (1024), VM_OFFLINE=1 (use cached .debs only).
# Needs root (apt-get download into the cache is fine unprivileged, but reading
# all module trees and /usr/lib/xtables is not an issue as root) and the
# packages in .ci/setup. Caches under target/vm-cache/ (debs, extracted trees).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CACHE=$ROOT/target/vm-cache
CTRACE=${CTRACE:-$ROOT/target/release/ctrace}
MODES=${VM_MODES:-kprobe fentry stable}
CLIENTS=${VM_CLIENTS:-8}
TIMEOUT=${VM_TIMEOUT:-900}
SMP=${VM_SMP:-2}
MEM=${VM_MEM:-1024}
SAVE_FIXTURES=0
if [ "${1:-}" = --save-fixtures ]; then SAVE_FIXTURES=1; shift; fi

RUN=$CACHE/runs/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$CACHE/deb" "$CACHE/tree" "$RUN"
ln -sfn "$RUN" "$CACHE/runs/latest"
log() { echo "vm-matrix: $*" >&2; }
now() { date +%s.%N; }
secs() { awk "BEGIN{printf \"%.1f\", $2-$1}"; }
T_START=$(now)

[ -x "$CTRACE" ] || { log "no ctrace binary at $CTRACE (cargo build --release)"; exit 2; }
for t in qemu-system-x86_64 busybox cpio depmod modprobe dpkg-deb jq gcc ip xtables-nft-multi conntrack bpftool; do
    command -v $t >/dev/null || { log "missing tool $t: run .ci/setup"; exit 2; }
done

# ---------------------------------------------------------------- kernels
newest() { # newest package name matching an extended regex, from apt's lists
    apt-cache search --names-only "$1" 2>/dev/null | awk '{print $1}' | grep -E "$1" | sort -V | tail -1
}
cached_newest() { # offline: newest cached .deb whose package name matches
    ls "$CACHE/deb" 2>/dev/null | sed 's/_.*//' | grep -E "$1" | sort -V | tail -1
}
RE61='^linux-image-6\.1\.0-[0-9]+-cloud-amd64$'
RE612='^linux-image-6\.12\.[0-9]+\+(deb12|bpo)-cloud-amd64$'
T0=$(now)
if [ $# -gt 0 ]; then
    PKGS=("$@")
elif [ "${VM_OFFLINE:-0}" = 1 ]; then
    PKGS=("$(cached_newest "$RE61")" "$(cached_newest "$RE612")")
else
    apt-get update -qq >&2 || log "apt-get update failed: using the lists as they are"
    p61=$(newest "$RE61")
    p612=$(newest "$RE612")
    if [ -z "$p612" ]; then
        # 6.12 is in bookworm-security/-updates today; older mirrors have it only
        # in backports. Debian's own registry, nothing else.
        log "no 6.12 cloud kernel in the configured sources: adding bookworm-backports"
        cat >/etc/apt/sources.list.d/ctrace-vm-bookworm-backports.sources <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
        apt-get update -qq >&2
        p612=$(newest "$RE612")
    fi
    PKGS=("$p61" "$p612")
fi
for p in "${PKGS[@]}"; do
    [ -n "$p" ] || { log "could not find a kernel package (6.1 and 6.12 cloud)"; exit 2; }
done
log "kernels: ${PKGS[*]}"

fetch() { # fetch PKG -> prints the .deb path (cached)
    local p=$1 deb
    deb=$(ls "$CACHE/deb/${p}_"*.deb 2>/dev/null | sort -V | tail -1 || true)
    if [ -z "$deb" ]; then
        (cd "$CACHE/deb" && apt-get download "$p" >&2)
        deb=$(ls "$CACHE/deb/${p}_"*.deb | sort -V | tail -1)
    fi
    echo "$deb"
}
extract() { # extract DEB -> prints the kernel release; tree at $CACHE/tree/KVER
    local deb=$1 kver tree
    kver=$(dpkg-deb -f "$deb" Package | sed 's/^linux-image-//')
    tree=$CACHE/tree/$kver
    if [ ! -e "$tree/.done" ]; then
        rm -rf "$tree"
        mkdir -p "$tree"
        dpkg-deb -x "$deb" "$tree"
        depmod -b "$tree" "$kver" # the .deb has no modules.dep (postinst makes it)
        touch "$tree/.done"
    fi
    echo "$kver"
}
KVERS=()
for p in "${PKGS[@]}"; do
    KVERS+=("$(extract "$(fetch "$p")")")
done
T_FETCH=$(secs "$T0" "$(now)")
log "download+extract: ${T_FETCH}s"

# ---------------------------------------------------------------- userland
# One userland for every kernel: busybox, the host's tools and their libraries.
T0=$(now)
BASE=$RUN/base
mkdir -p "$BASE"/{bin,sbin,usr/bin,usr/sbin,lib64,etc,proc,sys,dev,run,tmp,root,var,mnt}
ln -s ../run "$BASE/var/run"
cp /bin/busybox "$BASE/bin/busybox"
for a in $(busybox --list); do
    case $a in ip | modprobe | insmod | rmmod | lsmod | depmod | modinfo) continue ;; esac
    [ -e "$BASE/bin/$a" ] || ln -s busybox "$BASE/bin/$a"
done
copy_with_libs() { # copy_with_libs FILE DESTPATH: the file and what ldd says it needs
    local f=$1 dst=$2
    mkdir -p "$BASE$(dirname "$dst")"
    cp -L "$f" "$BASE$dst"
    ldd "$f" 2>/dev/null | grep -oE '/[^ ]+' | while read -r lib; do
        [ -e "$BASE$lib" ] || { mkdir -p "$BASE$(dirname "$lib")" && cp -L "$lib" "$BASE$lib"; }
    done
}
copy_with_libs "$(command -v ip)" /usr/sbin/ip
copy_with_libs "$(command -v xtables-nft-multi)" /usr/sbin/xtables-nft-multi
for a in iptables iptables-save iptables-restore ip6tables; do ln -s xtables-nft-multi "$BASE/usr/sbin/$a"; done
copy_with_libs "$(command -v conntrack)" /usr/sbin/conntrack
copy_with_libs "$(command -v bpftool)" /usr/sbin/bpftool
copy_with_libs "$(command -v kmod)" /usr/bin/kmod
for a in modprobe insmod rmmod lsmod depmod modinfo; do ln -s ../usr/bin/kmod "$BASE/sbin/$a"; done
XT=/usr/lib/x86_64-linux-gnu/xtables
for so in "$XT"/*.so; do copy_with_libs "$so" "$so"; done
# ctrace without its DWARF (debug = 1 in the release profile): same code, a
# third of the size to unpack in the guest.
copy_with_libs "$CTRACE" /usr/bin/ctrace
strip --strip-debug "$BASE/usr/bin/ctrace"
gcc -static -O2 -Wall -o "$BASE/usr/bin/burst" "$HERE/burst.c"
cp /etc/protocols /etc/services /etc/ethertypes "$BASE/etc/" 2>/dev/null || true
echo 'root:x:0:0:root:/root:/bin/sh' >"$BASE/etc/passwd"
echo 'root:x:0:' >"$BASE/etc/group"
echo 'hosts: files' >"$BASE/etc/nsswitch.conf"
cp "$HERE/guest-init.sh" "$BASE/init"
chmod +x "$BASE/init"
log "userland: $(du -sh "$BASE" | cut -f1) in $(secs "$T0" "$(now)")s"

# Modules the labs need, with their dependencies; the rest of netfilter comes
# along so that iptables' autoloading (request_module) finds what it asks for.
WANT_DIRS="kernel/net/netfilter kernel/net/ipv4/netfilter kernel/net/ipv6/netfilter kernel/drivers/net/veth.ko"
MODULES="nf_conntrack nf_conntrack_netlink nf_nat nf_tables nft_chain_nat nft_compat xt_nat xt_MASQUERADE xt_conntrack xt_tcpudp iptable_nat iptable_filter veth nf_log_syslog"

initrd() { # initrd KVER -> cpio path
    local kver=$1 tree=$CACHE/tree/$1 root=$RUN/root-$1 out=$RUN/initrd-$1.cpio
    rm -rf "$root"
    cp -a "$BASE" "$root"
    local mdir=lib/modules/$kver
    mkdir -p "$root/$mdir"
    local names
    names=$(cd "$tree/$mdir" && for d in $WANT_DIRS; do find $d* -name '*.ko*' 2>/dev/null; done |
        sed -E 's#.*/##; s/\.ko(\.xz|\.zst|\.gz)?$//')
    # shellcheck disable=SC2086
    modprobe -d "$tree" -S "$kver" -a --show-depends $names 2>/dev/null | awk '$1=="insmod"{print $2}' | sort -u |
        while read -r ko; do
            rel=${ko#"$tree"/}
            mkdir -p "$root/$(dirname "$rel")"
            cp "$ko" "$root/$rel"
        done
    cp "$tree/$mdir"/modules.{order,builtin,builtin.modinfo} "$root/$mdir/" 2>/dev/null || true
    depmod -b "$root" "$kver"
    cat >"$root/etc/matrix.env" <<EOF
KVER='$kver'
MODES='$MODES'
CLIENTS='$CLIENTS'
CONNECT_SECS='4'
MODULES='$MODULES'
EOF
    (cd "$root" && find . | cpio -o -H newc --quiet) >"$out"
    rm -rf "$root"
    echo "$out"
}

# ---------------------------------------------------------------- boot
decode() { # decode DATA_LOG DIR: "@@FILE name" + base64 + "@@EOF" -> DIR/name
    local data=$1 dir=$2
    tr -d '\r' <"$data" | awk -v dir="$dir" '
        /^@@FILE / { f = dir "/" $2 ".b64"; printf "" > f; next }
        /^@@EOF/   { close(f); f = ""; next }
        /^@@ /     { print > (dir "/results.txt"); next }
        f != ""    { print >> f }'
    for b in "$dir"/*.b64; do
        [ -e "$b" ] || continue
        base64 -d -i <"$b" >"${b%.b64}" || true
        rm -f "$b"
    done
}

declare -A BOOT_SECS RC
for kver in "${KVERS[@]}"; do
    T0=$(now)
    rd=$(initrd "$kver")
    log "$kver: initramfs $(du -h "$rd" | cut -f1) in $(secs "$T0" "$(now)")s; booting (timeout ${TIMEOUT}s)"
    dir=$RUN/$kver
    mkdir -p "$dir"
    T0=$(now)
    set +e
    timeout --foreground -k 10 "$TIMEOUT" qemu-system-x86_64 -accel tcg -cpu max -smp "$SMP" -m "$MEM" \
        -nographic -monitor none -no-reboot -nic none \
        -kernel "$CACHE/tree/$kver/boot/vmlinuz-$kver" -initrd "$rd" \
        -append "console=ttyS0 panic=-1 rdinit=/init loglevel=4 printk.devkmsg=on" \
        -serial "file:$dir/console.log" -serial "file:$dir/data.log" </dev/null >"$dir/qemu.out" 2>&1
    RC[$kver]=$?
    set -e
    BOOT_SECS[$kver]=$(secs "$T0" "$(now)")
    decode "$dir/data.log" "$dir"
    rm -f "$rd"
    log "$kver: qemu rc=${RC[$kver]} in ${BOOT_SECS[$kver]}s"
    grep -h '^@@ ' "$dir/results.txt" 2>/dev/null | sed 's/^/    /' >&2 || true
done

# ---------------------------------------------------------------- table
# Probes whose absence a kernel explains (KERNEL.md section 6): the resolver
# must say so, and the table shows it; any other missing probe is a failure.
known_absent() { # kver mode probe
    case "$1:$2:$3" in
    6.1.*:fentry:window) return 0 ;; # fentry on nf_tcp_log_invalid (variadic) refused: EINVAL
    6.1.*:stable:nat | 6.1.*:stable:confirm | 6.1.*:stable:window) return 0 ;; # no netfilter BPF link before 6.4
    esac
    return 1
}
FAIL=0
fail() { FAIL=1; }
printf '\n%-24s %-7s %-9s %-8s %-44s %8s %8s  %s\n' kernel mode probe chosen "hook" events kernel verdict
for kver in "${KVERS[@]}"; do
    dir=$RUN/$kver
    if ! grep -q '^@@ BOOTED' "$dir/results.txt" 2>/dev/null; then
        printf '%-24s %-7s %-9s %-8s %-44s %8s %8s  %s\n' "$kver" - - - "did not boot (qemu rc ${RC[$kver]})" - - FAIL
        fail
        continue
    fi
    if ! grep -q '^@@ DONE' "$dir/results.txt"; then
        log "$kver: the guest did not finish (qemu rc ${RC[$kver]}): see $dir/console.log"
        fail
    fi
    if ! jq -e .kernel "$dir/features.out" >/dev/null 2>&1; then
        log "$kver: no feature set captured"
        fail
    fi
    for m in $MODES; do
        pj=$dir/probes-$m.out
        rec=$dir/rec-$m.jsonl
        trailer='{}'
        [ -s "$rec" ] && trailer=$(grep '"type":"trailer"' "$rec" | tail -1 || echo '{}')
        [ -n "$trailer" ] || trailer='{}'
        for p in nat confirm window symptoms; do
            chosen=$(jq -r --arg p "$p" '.probes[]? | select(.probe==$p) | .chosen // "MISSING"' "$pj" 2>/dev/null || true)
            hook=$(jq -r --arg p "$p" '.probes[]? | select(.probe==$p) | (.hooks // []) | join(" + ")' "$pj" 2>/dev/null || true)
            [ -n "$chosen" ] || chosen=NO-OUTPUT
            ev() { jq -r --arg k "$1" '(.events[$k] // 0)' <<<"$trailer"; }
            kc() { jq -r --arg k "$1" '(.kernel_counters[$k] // "-")' <<<"$trailer"; }
            case $p in
            nat) n=$(ev nat_alloc) k=- ;;
            confirm) n=$(ev insert_failed) k=$(kc insert_failed) ;;
            window) n=$(ev tcp_invalid) k=$(kc invalid) ;;
            symptoms) n="$(ev syn_retrans)/$(ev nf_drop)/$(ev host_rst)" k=$(kc drop) ;;
            esac
            verdict=ok
            if [ "$chosen" = MISSING ] || [ "$chosen" = null ]; then
                if known_absent "$kver" "$m" "$p"; then
                    verdict="n/a: kernel lacks it (ctrace probes says so)"
                    n=- k=-
                else
                    verdict="FAIL: not attachable"
                    fail
                fi
            elif [ "$trailer" = '{}' ]; then
                verdict="FAIL: no recording ($(head -c 200 "$dir/rec-$m.err" 2>/dev/null | tr '\n' ' '))"
                fail
            else
                case $p in
                confirm)
                    if [ "$n" != "$k" ]; then verdict="MISMATCH"; fail
                    elif [ "$k" = 0 ]; then verdict="FAIL: lab made no insert_failed"; fail; fi ;;
                window) [ "$n" = "$k" ] || { verdict="MISMATCH"; fail; } ;;
                nat) [ "$n" -gt 0 ] || { verdict="FAIL: no nat_alloc"; fail; } ;;
                esac
            fi
            printf '%-24s %-7s %-9s %-8s %-44.44s %8s %8s  %s\n' "$kver" "$m" "$p" "$chosen" "$hook" "$n" "$k" "$verdict"
        done
        rl=$(grep "^@@ RECORD mode=$m " "$dir/results.txt" || true)
        [ -n "$rl" ] && echo "    ${rl#@@ }"
    done
done
echo "(symptoms: events syn_retrans/nf_drop/host_rst, kernel column = conntrack drop)"

echo
printf '%-24s %8s %10s  %s\n' kernel boot_s qemu_rc steps
for kver in "${KVERS[@]}"; do
    steps=$(grep -E '^@@ (BOOTED|STEP|DONE)' "$RUN/$kver/results.txt" 2>/dev/null |
        sed -E 's/^@@ //; s/ kernel=[^ ]+//; s/ cpus=[0-9]+//' | tr '\n' ';' || true)
    printf '%-24s %8s %10s  %s\n' "$kver" "${BOOT_SECS[$kver]}" "${RC[$kver]}" "$steps"
done
echo "download+extract ${T_FETCH}s; matrix total $(secs "$T_START" "$(now)")s; results in $RUN"

if [ $SAVE_FIXTURES = 1 ]; then
    for kver in "${KVERS[@]}"; do
        case $kver in
        6.1.*) name=6.1-debian ;; 6.12.*) name=6.12-debian ;; *) continue ;;
        esac
        if jq -e .kernel "$RUN/$kver/features.out" >/dev/null 2>&1; then
            jq . "$RUN/$kver/features.out" >"$ROOT/tests/fixtures/features/$name.json"
            log "saved tests/fixtures/features/$name.json"
        fi
    done
fi
exit $FAIL
