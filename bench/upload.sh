#!/usr/bin/env bash
# Hand-run benchmark: uploading an image over loopback to `diskplane worker upload-server` vs
# writing the same image locally with `diskplane convert` (same machine, same output directory,
# both flushed to stable storage before they finish).
#
# Usage: bench/upload.sh                  (RUNS=3 runs of each path per input)
#
# Environment:
#   RUNS=3          timed runs per path and input (median reported)
#   DISKPLANE=PATH  the binary to test (default: `cargo build --release`, target/release/diskplane)
#   BENCH_OUT=DIR   inputs and outputs (default bench/out, gitignored)
#
# Inputs (made once, ~1 minute): 2 GiB of 1 MiB random chunks alternating with 1 MiB holes
#   upload-mixed.raw    as a raw file (2 GiB sent over the wire, zeros included)
#   upload-mixed.qcow2  the same as qcow2 (qemu-img convert; ~1 GiB of data clusters)
#
# Paths:
#   convert  diskplane convert INPUT OUT
#   curl     curl -T INPUT (PUT, streamed) to /v1beta1/upload; the sync route answers after the
#            volume is written, flushed and renamed into place
#   client   diskplane upload --upload-url --token (our client, same route; it sends a raw file
#            with holes as a qcow2 of its data, ~1 GiB here)
#   wire     curl -T INPUT to a Python server that reads the body into one reused buffer and
#            throws it away: the loopback transfer alone, no parsing and no writes. Its ratio
#            is the best one any upload server could reach for a client that sends the file
#            as it is (curl, virtctl) on this machine.
# Each round runs every path once, in an order that rotates from round to round.
# Columns: median seconds, ratio = convert / upload (>= 0.8 is the target: upload throughput at
# least 80% of a local conversion), the server's peak RSS (GNU time %M = VmHWM; target <= 64 MiB)
# and whether the outputs' sha256 match the local conversion.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
out="${BENCH_OUT:-$here/out}"
runs="${RUNS:-3}"
log() { echo "bench: $*" >&2; }

for tool in qemu-img curl python3; do
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

if [ ! -s "$out/upload-mixed.qcow2" ] || [ ! -s "$out/upload-mixed.raw" ]; then
    log "making upload-mixed.raw (2 GiB, ~50% random data) and upload-mixed.qcow2"
    rm -f "$out/upload-mixed.raw.tmp"
    truncate -s 2G "$out/upload-mixed.raw.tmp"
    for ((mib = 0; mib < 2048; mib += 2)); do
        dd if=/dev/urandom of="$out/upload-mixed.raw.tmp" bs=1M count=1 seek="$mib" conv=notrunc status=none
    done
    qemu-img convert -f raw -O qcow2 "$out/upload-mixed.raw.tmp" "$out/upload-mixed.qcow2"
    mv "$out/upload-mixed.raw.tmp" "$out/upload-mixed.raw"
fi

tmp="$(mktemp -d)"
server_pid=""
sink_pid=""
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    [ -n "$sink_pid" ] && kill "$sink_pid" 2>/dev/null && wait "$sink_pid" 2>/dev/null
    rm -rf "$tmp"
    rm -f "$out"/upload-out-*.raw "$out"/.upload-out-*
}
trap cleanup EXIT
head -c 32 /dev/urandom >"$tmp/key"

now() { date +%s.%N; }
elapsed() { awk -v s="$1" -v e="$(now)" 'BEGIN { print e - s }'; }
median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# wait_for_output FILE: waits up to 10 s for a starting server to write its address to FILE.
wait_for_output() {
    for _ in $(seq 200); do
        [ -s "$1" ] && return
        sleep 0.05
    done
}

# server_start OUT: starts an upload server for OUT under GNU time; sets server_pid, base.
server_start() {
    rm -f "$tmp/listen"
    /usr/bin/time -f '%M' -o "$tmp/rss" "$DISKPLANE" worker upload-server --volume "$1" --size 2G \
        --name disk --listen 127.0.0.1:0 --token-key "$tmp/key" --scratch-dir "$out" \
        --exit-on-success >"$tmp/listen" &
    server_pid=$!
    wait_for_output "$tmp/listen"
    base="$(sed -n 's/^listening on //p' "$tmp/listen")"
    token="$("$DISKPLANE" worker upload-token --token-key "$tmp/key" --name disk)"
}

# server_wait: waits for the server to exit (it does after a successful upload); prints RSS KiB.
server_wait() {
    wait "$server_pid" || { log "upload server failed"; exit 1; }
    server_pid=""
    cat "$tmp/rss"
}

# The discard server of the `wire` path: answers 200 once Content-Length bytes were read.
python3 -u - >"$tmp/sink" <<'PY' &
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(1)
print(s.getsockname()[1])
buf = memoryview(bytearray(1 << 20))
while True:
    c, _ = s.accept()
    head = b""
    while b"\r\n\r\n" not in head:
        head += c.recv(65536)
    head, rest = head.split(b"\r\n\r\n", 1)
    lines = head.lower().split(b"\r\n")
    want = next(int(l.split(b":")[1]) for l in lines if l.startswith(b"content-length:"))
    got = len(rest)
    while got < want:
        n = c.recv_into(buf)
        if n == 0:
            break
        got += n
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    c.close()
PY
sink_pid=$!
wait_for_output "$tmp/sink"
sink="http://127.0.0.1:$(head -1 "$tmp/sink")/"

# run_once PATH INPUT: one timed run of PATH on INPUT, from the same state as every other path
# (output removed, dirty pages synced, input in the page cache); appends the seconds to
# $tmp/t-PATH and, for the two upload paths, the server's peak RSS to $tmp/rss-PATH.
run_once() {
    local path="$1" input="$2" dst="$out/upload-out-$1.raw" start
    rm -f "$dst"
    sync
    cat "$out/$input" >/dev/null
    case "$path" in
    convert)
        start=$(now)
        "$DISKPLANE" convert "$out/$input" "$dst"
        elapsed "$start" >>"$tmp/t-convert"
        ;;
    wire)
        start=$(now)
        curl -sS -o /dev/null -H 'Expect:' -T "$out/$input" "$sink"
        elapsed "$start" >>"$tmp/t-wire"
        ;;
    curl | client)
        server_start "$dst"
        start=$(now)
        if [ "$path" = curl ]; then
            code=$(curl -sS -o "$tmp/body" -w '%{http_code}' -T "$out/$input" \
                -H "Authorization: Bearer $token" -H 'Content-Type: application/octet-stream' \
                "$base/v1beta1/upload")
            [ "$code" = 200 ] || { log "curl upload: $code $(cat "$tmp/body")"; exit 1; }
        else
            "$DISKPLANE" upload disk --upload-url "$base" --token "$token" --image-path "$out/$input" >/dev/null
        fi
        elapsed "$start" >>"$tmp/t-$path"
        server_wait >>"$tmp/rss-$path"
        ;;
    esac
}

log "binary $DISKPLANE; load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-20s %-8s %9s %9s %7s %10s %s\n' input path seconds convert ratio "peak RSS" sha256
paths=(convert curl client wire)
for input in upload-mixed.raw upload-mixed.qcow2; do
    for path in "${paths[@]}"; do
        : >"$tmp/t-$path"
        : >"$tmp/rss-$path"
    done
    # The paths take turns within each round, starting one further each round, so that a slow
    # spell of the machine falls on all of them alike.
    for ((i = 0; i < runs; i++)); do
        for ((k = 0; k < ${#paths[@]}; k++)); do
            run_once "${paths[(i + k) % ${#paths[@]}]}" "$input"
        done
    done
    t_convert=$(median <"$tmp/t-convert")
    ref_sum=$(sha256sum "$out/upload-out-convert.raw" | cut -d' ' -f1)
    for path in curl client wire; do
        t=$(median <"$tmp/t-$path")
        ratio=$(awk -v a="$t_convert" -v b="$t" 'BEGIN { print a / b }')
        if [ "$path" = wire ]; then
            printf '%-20s %-8s %9.2f %9.2f %7.2f %11s %s\n' "$input" wire "$t" "$t_convert" "$ratio" - -
            continue
        fi
        rss_kib=$(sort -n "$tmp/rss-$path" | tail -1)
        sum=$(sha256sum "$out/upload-out-$path.raw" | cut -d' ' -f1)
        match=$([ "$sum" = "$ref_sum" ] && echo match || echo DIFFERENT)
        printf '%-20s %-8s %9.2f %9.2f %7.2f %7d MiB %s\n' "$input" "$path" "$t" "$t_convert" "$ratio" \
            $((rss_kib / 1024)) "$match"
    done
done
log "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
