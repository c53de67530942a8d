#!/usr/bin/env bash
# Hand-run benchmark: `diskplane import URL OUT` against CDI's HTTP path on the same machine,
# same inputs, same nginx on loopback: CDI downloads into a scratch volume (decompressing on the
# way, written sparse) and then runs `qemu-img convert -O raw scratch target`, then fsyncs the
# target (see shared/CDI-REFERENCE.md b.4, b.5, b.1). We stream or read by Range requests and
# fsync the target too, so both columns are "data durable on the target".
#
# Usage: bench/import-http.sh                 (RUNS=3 runs of each path per input)
#        RUNS=5 bench/import-http.sh zlib     (only inputs whose name contains "zlib")
#
# Environment:
#   RUNS=3          timed runs per path and input; the paths alternate (c d, d c, c d, ...)
#   DISKPLANE=PATH  the binary to test (default: `cargo build --release`, target/release/diskplane)
#   BENCH_OUT=DIR   inputs, scratch and outputs (default bench/out, gitignored)
#
# Inputs (bench/make-inputs.sh makes the qcow2s; this script adds os.raw.xz once, ~2 minutes):
#   os-zlib.qcow2   OS-like ext4 image, zlib-compressed clusters (how cloud images ship)
#   os-plain.qcow2  the same, uncompressed qcow2
#   os.raw.xz       the same as raw, xz -1 multi-threaded (multi-block)
#
# Columns: median wall seconds of each path, ratio = CDI / diskplane (> 1: we are faster),
# diskplane's largest peak RSS (GNU time %M), and whether the last outputs' sha256 match.
# The page cache is warm (nginx serves from memory): this measures the importers, not the disk.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
out="${BENCH_OUT:-$here/out}"
runs="${RUNS:-3}"
filter="${1:-}"
log() { echo "bench: $*" >&2; }

for tool in qemu-img nginx curl xz openssl; do
    command -v "$tool" >/dev/null || { log "$tool not found (see .ci/packages.txt)"; exit 1; }
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

BENCH_OUT="$out" "$here/make-inputs.sh"
if [ ! -s "$out/os.raw.xz" ]; then
    log "making os.raw.xz from os-plain.qcow2 (xz -1 -T2)"
    qemu-img convert -O raw "$out/os-plain.qcow2" "$out/os.raw.tmp"
    xz -1 -T2 -c "$out/os.raw.tmp" >"$out/os.raw.xz.tmp"
    rm -f "$out/os.raw.tmp"
    mv "$out/os.raw.xz.tmp" "$out/os.raw.xz"
fi

tmp="$(mktemp -d)"
nginx_pid=""
cleanup() {
    [ -n "$nginx_pid" ] && kill "$nginx_pid" 2>/dev/null && wait "$nginx_pid" 2>/dev/null
    rm -rf "$tmp"
    rm -f "$out"/import-*.raw "$out"/import-scratch "$out"/.import-*.raw.diskplane-partial-*
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port="$(free_port)"
"$root/tests/peers/nginx.sh" "$tmp/nginx" "$out" "$port" "$(free_port)" >/dev/null 2>&1 &
nginx_pid=$!
for _ in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:$port/" && break
    sleep 0.1
done
base="http://127.0.0.1:$port/files"

# timed PATH INPUT OUT RECORD: one timed run; appends "seconds peak_kib" or FAIL to RECORD.
timed() {
    local path="$1" input="$2" dst="$3" record="$4" url="$base/$2" scratch="$out/import-scratch"
    rm -f "$dst" "$scratch"
    sync
    cat "$out/$input" >/dev/null # warm: nginx serves from the page cache
    local rc=0
    case "$path" in
        ours)
            /usr/bin/time -f '%e %M' -o "$tmp/time" "$DISKPLANE" import "$url" "$dst" >"$tmp/cmd.log" 2>&1 || rc=$?
            ;;
        cdi)
            local fetch="curl -sSf -o '$scratch' '$url'"
            case "$input" in
                *.xz) fetch="curl -sSf '$url' | xz -dc | dd of='$scratch' bs=1M conv=sparse status=none" ;;
            esac
            /usr/bin/time -f '%e %M' -o "$tmp/time" sh -c \
                "set -e; $fetch; qemu-img convert -O raw '$scratch' '$dst'; sync '$dst'" >"$tmp/cmd.log" 2>&1 || rc=$?
            ;;
    esac
    rm -f "$scratch"
    if [ "$rc" -ne 0 ]; then
        log "$path failed on $input (exit $rc): $(tail -3 "$tmp/cmd.log")"
        echo FAIL >>"$record"
    else
        tail -1 "$tmp/time" >>"$record"
    fi
}

median() {
    if grep -q FAIL "$1"; then echo FAIL; return; fi
    cut -d' ' -f1 "$1" | sort -n | awk '{ v[NR] = $1 } END {
        if (NR % 2) printf "%.2f", v[(NR + 1) / 2]; else printf "%.2f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

log "diskplane: $DISKPLANE; nginx on 127.0.0.1:$port; $runs runs per path, alternating"
printf '%-16s %9s %9s %7s %9s %5s\n' input "cdi s" "ours s" ratio "our MiB" same
for input in os-zlib.qcow2 os-plain.qcow2 os.raw.xz; do
    [ -n "$filter" ] && [[ "$input" != *"$filter"* ]] && continue
    : >"$tmp/cdi" && : >"$tmp/ours"
    for ((i = 0; i < runs; i++)); do
        if ((i % 2 == 0)); then order="cdi ours"; else order="ours cdi"; fi
        for path in $order; do
            timed "$path" "$input" "$out/import-$path.raw" "$tmp/$path"
            [ "$i" -lt $((runs - 1)) ] && rm -f "$out/import-$path.raw"
        done
    done
    c="$(median "$tmp/cdi")" d="$(median "$tmp/ours")"
    ratio="$(awk -v c="$c" -v d="$d" 'BEGIN { if (c + 0 > 0 && d + 0 > 0) printf "%.2f", c / d; else print "-" }')"
    peak="$(grep -v FAIL "$tmp/ours" | cut -d' ' -f2 | sort -n | tail -1 | awk '{ printf "%.0f", $1 / 1024 }')"
    same=no
    if [ -s "$out/import-cdi.raw" ] && [ -s "$out/import-ours.raw" ] &&
        [ "$(sha256sum <"$out/import-cdi.raw")" = "$(sha256sum <"$out/import-ours.raw")" ]; then
        same=yes
    fi
    rm -f "$out/import-cdi.raw" "$out/import-ours.raw"
    printf '%-16s %9s %9s %7s %9s %5s\n' "$input" "$c" "$d" "$ratio" "${peak:--}" "$same"
done
