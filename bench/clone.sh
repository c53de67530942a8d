#!/usr/bin/env bash
# Hand-run benchmark of `diskplane clone` (needs root: loop mount of an XFS image).
#
# A 10 GiB volume holding 4 GiB of data (four 1 GiB extents at 0, 3, 6 and 9 GiB, random
# bytes; holes between) is cloned:
#   1. by reflink on XFS (mkfs.xfs -m reflink=1 on a loop-mounted image): time, expect < 0.1 s;
#   2. by sparse copy on the bench directory's file system vs `cp --sparse=always` (ratio);
#   3. by the host-assisted stream over TLS on loopback (two processes) vs sparse copy (ratio).
# Every timed command is followed by `sync FILE` inside the timing (diskplane fdatasyncs
# before it reports success; cp does not), the source is in the page cache (warm), and an
# untimed `sync` runs between runs. Prints seconds, ratios and allocated bytes of source and
# clones, and checks every clone's sha256 against the source's.
#
# Environment:
#   DISKPLANE=PATH  the binary (default: `cargo build --release`, target/release/diskplane)
#   BENCH_OUT=DIR   work directory (default bench/out/clone; needs ~17 GiB free); emptied after
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
out="${BENCH_OUT:-$here/out/clone}"
log() { echo "bench: $*" >&2; }

if [[ -z "${DISKPLANE:-}" ]]; then
    (cd "$root" && cargo build --release --quiet)
    DISKPLANE="$root/target/release/diskplane"
fi
for tool in mkfs.xfs openssl mount cp; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is missing" >&2; exit 1; }
done

mkdir -p "$out"
mnt="$out/xfs-mnt"
cleanup() {
    mountpoint -q "$mnt" 2>/dev/null && umount "$mnt"
    [[ -n "${server_pid:-}" ]] && kill "$server_pid" 2>/dev/null
    rm -rf "$out"
}
trap cleanup EXIT

GIB=$((1 << 30))
src="$out/src.img"
log "making the source: 10 GiB, 4 GiB of data"
truncate -s 10G "$src"
for at in 0 3 6 9; do
    dd if=/dev/urandom of="$src" bs=4M count=256 seek=$((at * 256)) conv=notrunc,fsync status=none
done
cat "$src" >/dev/null   # warm: the source is read from the page cache by every contender

alloc() { echo $(( $(stat -c %b "$1") * $(stat -c %B "$1") )); }
sha() { sha256sum "$1" | cut -d' ' -f1; }
# Seconds (wall) of "$@" followed by `sync` of the file named by $target.
timed() {
    sync
    local start end
    start=$(date +%s.%N)
    "$@" >/dev/null
    sync "$target"
    end=$(date +%s.%N)
    echo "$end - $start" | bc -l | xargs printf '%.3f'
}
ratio() { echo "$1 / $2" | bc -l | xargs printf '%.2f'; }

src_sha=$(sha "$src")
printf '%-34s %10s %16s %s\n' "contender" "seconds" "allocated" "sha256 ok"
printf '%-34s %10s %16s %s\n' "source" "-" "$(alloc "$src")" "-"

# 1. Reflink on XFS.
mkdir -p "$mnt"
truncate -s 12G "$out/xfs.img"
mkfs.xfs -q -m reflink=1 "$out/xfs.img"
mount -o loop "$out/xfs.img" "$mnt"
"$DISKPLANE" clone --strategy sparse-copy "$src" "$mnt/src.img" >/dev/null   # source on XFS
cat "$mnt/src.img" >/dev/null
target="$mnt/clone.img"
t_reflink=$(timed "$DISKPLANE" clone --strategy reflink "$mnt/src.img" "$target")
ok=$([[ $(sha "$target") == "$src_sha" ]] && echo yes || echo NO)
printf '%-34s %10s %16s %s\n' "reflink (XFS)" "$t_reflink" "$(alloc "$target")" "$ok"
umount "$mnt"
rm -f "$out/xfs.img"

# 2. Sparse copy vs cp --sparse=always, on the bench directory's file system.
target="$out/clone-sparse.img"
t_sparse=$(timed "$DISKPLANE" clone --strategy sparse-copy "$src" "$target")
ok=$([[ $(sha "$target") == "$src_sha" ]] && echo yes || echo NO)
printf '%-34s %10s %16s %s\n' "diskplane sparse-copy" "$t_sparse" "$(alloc "$target")" "$ok"
rm -f "$target"

target="$out/clone-cp.img"
t_cp=$(timed cp --sparse=always "$src" "$target")
ok=$([[ $(sha "$target") == "$src_sha" ]] && echo yes || echo NO)
printf '%-34s %10s %16s %s\n' "cp --sparse=always" "$t_cp" "$(alloc "$target")" "$ok"
rm -f "$target"

# 3. Host-assisted stream over TLS on loopback.
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
"$DISKPLANE" clone --listen 127.0.0.1:0 "$src" --tls-cert "$pki/leaf.pem" --tls-key "$pki/leaf.key" \
    --token-file "$pki/token" >"$out/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 100); do grep -q '^listening on' "$out/server.log" 2>/dev/null && break; sleep 0.1; done
port=$(sed -n 's/^listening on .*:\([0-9]*\)$/\1/p' "$out/server.log")
target="$out/clone-stream.img"
t_stream=$(timed "$DISKPLANE" clone "tls://127.0.0.1:$port" "$target" --ca-cert "$pki/ca.pem" \
    --token-file "$pki/token")
wait "$server_pid"
server_pid=
ok=$([[ $(sha "$target") == "$src_sha" ]] && echo yes || echo NO)
printf '%-34s %10s %16s %s\n' "diskplane stream (TLS, loopback)" "$t_stream" "$(alloc "$target")" "$ok"
rm -f "$target"

echo
echo "reflink: ${t_reflink} s"
echo "sparse copy vs cp --sparse=always: cp / diskplane = $(ratio "$t_cp" "$t_sparse") (> 1: we are faster)"
echo "stream vs sparse copy: stream / sparse-copy = $(ratio "$t_stream" "$t_sparse") (the cost of the host-assisted path)"
