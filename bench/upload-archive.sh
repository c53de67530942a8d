#!/usr/bin/env bash
# Hand-run benchmark: uploading a tar over loopback to `diskplane worker upload-server
# --content-type archive` vs extracting the same tar locally with GNU tar (what CDI's upload
# server runs), both flushed to stable storage before they finish.
#
# Usage: bench/upload-archive.sh          (RUNS=3 runs of each path)
#
# Environment:
#   RUNS=3          timed runs per path (median reported)
#   DISKPLANE=PATH  the binary to test (default: `cargo build --release`, target/release/diskplane)
#   BENCH_OUT=DIR   inputs and outputs (default bench/out, gitignored)
#
# Input (made once): archive-tree.tar, 1 GiB: four 224 MiB random files and 2048 files of
# 64 KiB in 32 directories.
#
# Paths:
#   tar     tar -xf archive-tree.tar -C DIR; sync -f DIR
#   upload  curl -T archive-tree.tar (PUT, streamed) to /v1beta1/upload-archive; the route
#           answers after every entry was extracted, flushed and moved into the volume directory
# Columns: median seconds, ratio = tar / upload (>= 0.8 is the target), the server's peak RSS
# (GNU time %M = VmHWM; target <= 64 MiB), and whether the extracted trees are equal (diff -r).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
out="${BENCH_OUT:-$here/out}"
runs="${RUNS:-3}"
log() { echo "bench: $*" >&2; }

for tool in curl tar python3; do
    command -v "$tool" >/dev/null || { log "$tool not found"; exit 1; }
done
if [ ! -x /usr/bin/time ]; then
    log "installing GNU time"
    apt-get install -y -q time >/dev/null
fi
if [ -z "${DISKPLANE:-}" ]; then
    log "cargo build --release"
    (cd "$root" && cargo build --release --quiet --bin diskplane)
    DISKPLANE="$root/target/release/diskplane"
fi
mkdir -p "$out"

input="$out/archive-tree.tar"
if [ ! -s "$input" ]; then
    log "making archive-tree.tar (1 GiB)"
    src="$out/archive-tree.src"
    rm -rf "$src"
    mkdir -p "$src"
    for i in 0 1 2 3; do
        head -c $((224 << 20)) /dev/urandom >"$src/big-$i.bin"
    done
    for d in $(seq 0 31); do
        mkdir -p "$src/dir-$d"
        for f in $(seq 0 63); do
            head -c $((64 << 10)) /dev/urandom >"$src/dir-$d/file-$f"
        done
    done
    tar -cf "$input.tmp" -C "$src" .
    mv "$input.tmp" "$input"
    rm -rf "$src"
fi

tmp="$(mktemp -d "$out/archive-bench.XXXXXX")"
server_pid=""
cleanup() {
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; fi
    rm -rf "$tmp"
}
trap cleanup EXIT
head -c 32 /dev/urandom >"$tmp/key"

now() { python3 -c 'import time; print(time.monotonic())'; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

tar_times=()
for ((run = 0; run < runs; run++)); do
    rm -rf "$tmp/tar"
    mkdir -p "$tmp/tar"
    sync
    start=$(now)
    tar -xf "$input" -C "$tmp/tar"
    sync -f "$tmp/tar"
    tar_times+=("$(python3 -c "print($(now) - $start)")")
done

upload_times=()
rss=()
for ((run = 0; run < runs; run++)); do
    rm -rf "$tmp/vol"
    mkdir -p "$tmp/vol"
    sync
    /usr/bin/time -f %M -o "$tmp/rss" "$DISKPLANE" worker upload-server --content-type archive \
        --volume "$tmp/vol" --size 2G --listen 127.0.0.1:0 --token-key "$tmp/key" --exit-on-success \
        >"$tmp/listen" 2>"$tmp/server.log" &
    server_pid=$!
    for _ in $(seq 100); do
        grep -q "listening on" "$tmp/listen" 2>/dev/null && break
        sleep 0.1
    done
    base="$(sed -n 's/^listening on //p' "$tmp/listen")"
    token="$("$DISKPLANE" worker upload-token --token-key "$tmp/key" --name vol)"
    start=$(now)
    code="$(curl -sS -o "$tmp/answer" -w '%{http_code}' -H "Authorization: Bearer $token" \
        -T "$input" "$base/v1beta1/upload-archive")"
    upload_times+=("$(python3 -c "print($(now) - $start)")")
    [ "$code" = 200 ] || { log "upload answered $code: $(cat "$tmp/answer")"; exit 1; }
    wait "$server_pid"
    server_pid=""
    rss+=("$(cat "$tmp/rss")")
done

same=yes
diff -r "$tmp/tar" "$tmp/vol" >/dev/null || same=NO
t_tar="$(printf '%s\n' "${tar_times[@]}" | median)"
t_up="$(printf '%s\n' "${upload_times[@]}" | median)"
peak="$(printf '%s\n' "${rss[@]}" | sort -n | tail -1)"
printf '%-8s %8s %8s %12s %6s\n' path seconds ratio peak-rss same
printf '%-8s %8.2f %8s %12s %6s\n' tar "$t_tar" - - -
printf '%-8s %8.2f %8.2f %9d MiB %6s\n' upload "$t_up" "$(python3 -c "print($t_tar / $t_up)")" \
    $((peak / 1024)) "$same"
