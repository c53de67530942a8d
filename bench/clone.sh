#!/usr/bin/env bash
# Hand-run benchmark of `diskplane clone` (needs root: loop mount of an XFS image).
#
# A 10 GiB volume holding 4 GiB of data (four 1 GiB extents at 0, 3, 6 and 9 GiB, random
# bytes; holes between) is cloned:
#   1. by reflink on XFS (mkfs.xfs -m reflink=1 on a loop-mounted image): time, expect < 0.1 s;
#   2. by sparse copy on the bench directory's file system vs `cp --sparse=always` (ratio);
#   3. by the host-assisted stream over TLS on loopback (two processes) vs sparse copy (ratio).
# Each contender runs RUNS times, alternating (the order rotates every round, so that none
# always follows the same neighbour's writeback); the median of each is compared. Every
# timed command is followed by `sync FILE` inside the timing (diskplane fdatasyncs before it
# reports success; cp does not), and an untimed `sync` runs before every run. The source is
# in the page cache for every contender (warm; DROP_CACHES=1 drops the caches before every
# run of every contender instead: cold). Prints each run with the load average (the machine
# may be shared), the medians, ratios, allocated bytes of source and clones, and checks each
# contender's first clone's sha256 against the source's.
#
# Environment:
#   DISKPLANE=PATH  the binary (default: `cargo build --release`, target/release/diskplane)
#   BENCH_OUT=DIR   work directory (default bench/out/clone; needs ~17 GiB free); emptied after
#   RUNS=N          runs per contender (default 5)
#   DROP_CACHES=1   cold runs: `echo 3 > /proc/sys/vm/drop_caches` before each run
#   ONLY=reflink    only the reflink part (1.)
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
out="${BENCH_OUT:-$here/out/clone}"
runs="${RUNS:-5}"
drop="${DROP_CACHES:-0}"
only="${ONLY:-}"
log() { echo "bench: $*" >&2; }

if [[ -z "${DISKPLANE:-}" ]]; then
    (cd "$root" && cargo build --release --quiet)
    DISKPLANE="$root/target/release/diskplane"
fi
for tool in mkfs.xfs openssl mount cp bc; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is missing" >&2; exit 1; }
done

mkdir -p "$out"
mnt="$out/xfs-mnt"
server_pid=
cleanup() {
    mountpoint -q "$mnt" 2>/dev/null && umount "$mnt"
    [[ -n "${server_pid:-}" ]] && kill "$server_pid" 2>/dev/null
    rm -rf "$out"
}
trap cleanup EXIT

src="$out/src.img"
log "making the source: 10 GiB, 4 GiB of data"
truncate -s 10G "$src"
for at in 0 3 6 9; do
    dd if=/dev/urandom of="$src" bs=4M count=256 seek=$((at * 256)) conv=notrunc,fsync status=none
done

alloc() { echo $(( $(stat -c %b "$1") * $(stat -c %B "$1") )); }
sha() { sha256sum "$1" | cut -d' ' -f1; }
load() { cut -d' ' -f1-3 /proc/loadavg; }
# Makes the source warm (or everything cold with DROP_CACHES=1) and flushes dirty pages.
prepare() {
    # Twice: the XFS image is a loop device over a file, and the first sync's writes to the
    # loop device land in the backing file's page cache, which the second one flushes (else
    # the timed `sync FILE` of the next run pays for them).
    sync
    sync
    if [[ "$drop" == 1 ]]; then
        echo 3 >/proc/sys/vm/drop_caches
    else
        cat "$1" >/dev/null
    fi
}
# Seconds (wall) of "$@" followed by `sync` of the file named by $target.
timed() {
    local start end
    start=$(date +%s.%N)
    "$@" >/dev/null
    sync "$target"
    end=$(date +%s.%N)
    echo "$end - $start" | bc -l | xargs printf '%.3f'
}
ratio() { echo "$1 / $2" | bc -l | xargs printf '%.2f'; }
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

src_sha=$(sha "$src")
declare -A times checked
printf '%-34s %4s %10s %16s %-9s %s\n' "contender" "run" "seconds" "allocated" "sha256 ok" "load (1/5/15 min)"
printf '%-34s %4s %10s %16s %-9s %s\n' "source" "-" "-" "$(alloc "$src")" "-" "$(load)"

# Prints one run's line; checks the clone's sha256 the first time a contender runs.
report() {
    local name=$1 run=$2 seconds=$3 ok="-"
    if [[ -z "${checked[$name]:-}" ]]; then
        ok=$([[ $(sha "$target") == "$src_sha" ]] && echo yes || echo NO)
        checked[$name]=1
    fi
    times[$name]="${times[$name]:-} $seconds"
    printf '%-34s %4s %10s %16s %-9s %s\n' "$name" "$run" "$seconds" "$(alloc "$target")" "$ok" "$(load)"
}

# 1. Reflink on XFS.
mkdir -p "$mnt"
truncate -s 12G "$out/xfs.img"
mkfs.xfs -q -m reflink=1 "$out/xfs.img"
mount -o loop "$out/xfs.img" "$mnt"
"$DISKPLANE" clone --strategy sparse-copy "$src" "$mnt/src.img" >/dev/null   # source on XFS
target="$mnt/clone.img"
for run in $(seq "$runs"); do
    prepare "$mnt/src.img"
    report "reflink (XFS)" "$run" "$(timed "$DISKPLANE" clone --strategy reflink "$mnt/src.img" "$target")"
    rm -f "$target"
done
umount "$mnt"
rm -f "$out/xfs.img"

if [[ "$only" == reflink ]]; then
    # shellcheck disable=SC2086
    echo "reflink: $(median ${times["reflink (XFS)"]}) s median of $runs (target < 0.1 s), load now $(load)"
    exit 0
fi

# 2 and 3. Sparse copy, cp --sparse=always and the stream, alternating.
pki="$out/pki"
mkdir -p "$pki"
(
    cd "$pki"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem \
        -days 1 -subj "/CN=bench CA" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout leaf.key -out leaf.csr \
        -subj "/CN=127.0.0.1" 2>/dev/null
    printf 'basicConstraints=critical,CA:FALSE\nsubjectAltName=IP:127.0.0.1\n' >leaf.ext
    openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out leaf.pem -days 1 \
        -extfile leaf.ext 2>/dev/null
    head -c 32 /dev/urandom | base64 >token
)

run_sparse() {
    target="$out/clone-sparse.img"
    report "diskplane sparse-copy" "$1" "$(timed "$DISKPLANE" clone --strategy sparse-copy "$src" "$target")"
    rm -f "$target"
}
run_cp() {
    target="$out/clone-cp.img"
    report "cp --sparse=always" "$1" "$(timed cp --sparse=always "$src" "$target")"
    rm -f "$target"
}
# The source side listens (untimed: a source pod is up before the target connects); the
# target side's connect, transfer and flush are timed.
run_stream() {
    "$DISKPLANE" clone --listen 127.0.0.1:0 "$src" --tls-cert "$pki/leaf.pem" --tls-key "$pki/leaf.key" \
        --token-file "$pki/token" >"$out/server.log" 2>&1 &
    server_pid=$!
    for _ in $(seq 100); do grep -q '^listening on' "$out/server.log" 2>/dev/null && break; sleep 0.1; done
    local port
    port=$(sed -n 's/^listening on .*:\([0-9]*\)$/\1/p' "$out/server.log")
    target="$out/clone-stream.img"
    local seconds
    seconds=$(timed "$DISKPLANE" clone "tls://127.0.0.1:$port" "$target" --ca-cert "$pki/ca.pem" \
        --token-file "$pki/token")
    wait "$server_pid"
    server_pid=
    report "diskplane stream (TLS, loopback)" "$1" "$seconds"
    rm -f "$target"
}

contenders=(run_sparse run_cp run_stream)
for run in $(seq "$runs"); do
    for i in 0 1 2; do
        prepare "$src"
        "${contenders[$(( (run + i) % 3 ))]}" "$run"
    done
done

# shellcheck disable=SC2086
{
    t_reflink=$(median ${times["reflink (XFS)"]})
    t_sparse=$(median ${times["diskplane sparse-copy"]})
    t_cp=$(median ${times["cp --sparse=always"]})
    t_stream=$(median ${times["diskplane stream (TLS, loopback)"]})
}
echo
echo "medians of $runs runs ($([[ "$drop" == 1 ]] && echo "cold: caches dropped" || echo "warm source")), load now $(load):"
echo "reflink: ${t_reflink} s (target < 0.1 s)"
echo "sparse copy ${t_sparse} s, cp --sparse=always ${t_cp} s: cp / diskplane = $(ratio "$t_cp" "$t_sparse") (target >= 1.0; > 1: we are faster)"
echo "stream ${t_stream} s: sparse-copy / stream = $(ratio "$t_sparse" "$t_stream") (target >= 0.7)"
