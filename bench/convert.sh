#!/usr/bin/env bash
# Hand-run benchmark: `diskplane convert IN OUT` against `qemu-img convert -O raw IN OUT` on the
# same machine, same inputs, same target filesystem, in one run; prints medians and ratios.
#
# Usage: bench/convert.sh                    (RUNS=3 runs of each tool per input)
#        RUNS=5 bench/convert.sh os-zlib     (only inputs whose name contains "os-zlib")
#
# Environment:
#   RUNS=3          timed runs per tool and input; the tools alternate (q d, d q, q d, ...)
#   CACHE=cold|warm cold (default when /proc/sys/vm/drop_caches is writable, i.e. root):
#                   `sync; echo 3 > drop_caches` before every run, so each run reads its input
#                   from disk. warm (the fallback): the input is read once with cat before every
#                   run, so each run reads it from the page cache.
#   DURABLE=1|0     1 (default): time `CMD && sync OUT` for both tools, so both have the data on
#                   disk when the clock stops (diskplane fsyncs before it reports success;
#                   qemu-img convert's default cache mode never flushes). 0 times the commands
#                   alone, which charges our fsync to us only. An untimed `sync` runs between
#                   runs either way, so writeback never spills over.
#   DISKPLANE=PATH  the binary to test (default: `cargo build --release`, target/release/diskplane)
#   BENCH_OUT=DIR   inputs and outputs (default bench/out, gitignored). Outputs are written
#                   there, next to the inputs, and deleted after every run.
#
# Inputs come from bench/make-inputs.sh (run here when missing; ~3 minutes, ~5 GiB in
# bench/out): OS-like ext4 images as plain, zlib- and zstd-compressed qcow2, and a 2 GiB qcow2
# of 50% random data and holes; then (here) a 2 GiB streamOptimized VMDK and a 2 GiB VHDX. No network, no loop devices, no mounts.
#
# Columns: medians of wall seconds (GNU time %e), ratio = qemu-img / diskplane (> 1: we are
# faster), the target ratio, `du -k` allocation of each tool's last output, diskplane's largest
# peak RSS (%M), and whether the two outputs have the same sha256 (computed once per input, on
# the last outputs). The `-S 0` row runs diskplane with zero detection off (in-kernel copy) on
# the plain image in the same rotation as the plain row, against the same qemu-img command.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
out="${BENCH_OUT:-$here/out}"
runs="${RUNS:-3}"
durable="${DURABLE:-1}"
filter="${1:-}"
log() { echo "bench: $*" >&2; }

command -v qemu-img >/dev/null || { log "qemu-img not found (apt-get install qemu-utils)"; exit 1; }
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

# --- VMDK / VHDX inputs (issue 9) ---------------------------------------------------------------
# vmdk-stream.vmdk: a 2 GiB streamOptimized VMDK (the OVA case: every grain deflate-compressed) and
# vhdx.vhdx: a 2 GiB dynamic VHDX, both made by qemu-img from the first 2 GiB of the OS-like disk.
# Made only when the filter selects one of them (`bench/convert.sh os-zstd` needs neither).
wants_vmdk_vhdx=0
case "vmdk-stream vhdx" in *"$filter"*) wants_vmdk_vhdx=1 ;; esac
if [ "$wants_vmdk_vhdx" = 1 ] && { [ ! -s "$out/vmdk-stream.vmdk" ] || [ ! -s "$out/vhdx.vhdx" ] || [ "${FORCE:-0}" = 1 ]; }; then
    log "making the 2 GiB vmdk streamOptimized and vhdx inputs from os-plain.qcow2"
    qemu-img convert -O raw "$out/os-plain.qcow2" "$out/os-2g.raw"
    truncate -s 2G "$out/os-2g.raw"
    qemu-img convert -f raw -O vmdk -o subformat=streamOptimized "$out/os-2g.raw" "$out/vmdk-stream.vmdk"
    qemu-img convert -f raw -O vhdx "$out/os-2g.raw" "$out/vhdx.vhdx"
    rm -f "$out/os-2g.raw"
fi

cache="${CACHE:-}"
if [ -z "$cache" ]; then
    if sync && (echo 3 >/proc/sys/vm/drop_caches) 2>/dev/null; then cache=cold; else cache=warm; fi
fi

tmp="$(mktemp -d)"
cleanup() { rm -rf "$tmp"; rm -f "$out"/bench-*.raw "$out"/.bench-*.raw.diskplane-partial-*; }
trap cleanup EXIT

# prepare IN: make the page cache state the same before every timed run.
prepare() {
    sync
    if [ "$cache" = cold ]; then
        echo 3 >/proc/sys/vm/drop_caches
    else
        cat "$1" >/dev/null
    fi
}

# timed TOOL IN OUT LOGFILE: one timed run; appends "seconds peak_kib" to LOGFILE, or "FAIL".
timed() {
    local tool="$1" in="$2" dst="$3" record="$4" cmd
    case "$tool" in
        qemu) cmd=(qemu-img convert -O raw "$in" "$dst") ;;
        ours) cmd=("$DISKPLANE" convert "$in" "$dst") ;;
        ours-S0) cmd=("$DISKPLANE" convert -S 0 "$in" "$dst") ;;
    esac
    rm -f "$dst"
    prepare "$in"
    local rc=0
    if [ "$durable" = 1 ]; then
        /usr/bin/time -f '%e %M' -o "$tmp/time" sh -c '"$@" && sync "$0"' "$dst" "${cmd[@]}" \
            >"$tmp/cmd.log" 2>&1 || rc=$?
    else
        /usr/bin/time -f '%e %M' -o "$tmp/time" "${cmd[@]}" >"$tmp/cmd.log" 2>&1 || rc=$?
    fi
    if [ "$rc" -ne 0 ]; then
        log "$tool failed on $(basename "$in") (exit $rc): $(tail -3 "$tmp/cmd.log")"
        echo FAIL >>"$record"
    else
        tail -1 "$tmp/time" >>"$record"
    fi
}

# median FILE: median of the first column, or "FAIL" if any run failed.
median() {
    if grep -q FAIL "$1"; then echo FAIL; return; fi
    cut -d' ' -f1 "$1" | sort -n | awk '{ v[NR] = $1 } END {
        if (NR == 0) { print "-"; exit }
        if (NR % 2) printf "%.2f", v[(NR + 1) / 2]; else printf "%.2f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

ratio() {
    case "$1$2" in *FAIL* | *-*) echo "-"; return ;; esac
    awk -v q="$1" -v d="$2" 'BEGIN { if (d > 0) printf "%.2f", q / d; else print "-" }'
}

peak_mib() {
    if grep -q FAIL "$1"; then echo "-"; return; fi
    cut -d' ' -f2 "$1" | sort -n | tail -1 | awk '{ printf "%.0f", $1 / 1024 }'
}

load_start="$(cut -d' ' -f1-3 /proc/loadavg)"
log "diskplane: $DISKPLANE"
log "runs: $runs per tool and input, alternating; page cache: $cache; durable: $durable"

rows=()
for input in os-plain os-zlib os-zstd mixed vmdk-stream vhdx; do
    case "$input" in *"$filter"*) ;; *) continue ;; esac
    in="$out/$input.qcow2"
    case "$input" in vmdk-stream) in="$out/$input.vmdk" ;; vhdx) in="$out/$input.vhdx" ;; esac
    tools=(qemu ours)
    [ "$input" = os-plain ] && tools+=(ours-S0)
    for t in "${tools[@]}"; do : >"$tmp/$input.$t"; done

    for ((i = 0; i < runs; i++)); do
        # Rotate the order every run so that neither tool always goes first.
        n=${#tools[@]}
        for ((k = 0; k < n; k++)); do
            t="${tools[$(((i + k) % n))]}"
            timed "$t" "$in" "$out/bench-$t.raw" "$tmp/$input.$t"
            log "$input $t run $((i + 1)): $(tail -1 "$tmp/$input.$t")"
            # Keep the last run's output of each tool for du and sha256.
            if ((i < runs - 1)); then rm -f "$out/bench-$t.raw"; fi
        done
    done

    qemu_med="$(median "$tmp/$input.qemu")"
    qemu_du="$(du -k "$out/bench-qemu.raw" 2>/dev/null | cut -f1)"
    qemu_sum="$(sha256sum "$out/bench-qemu.raw" 2>/dev/null | cut -d' ' -f1)"
    for t in "${tools[@]}"; do
        [ "$t" = qemu ] && continue
        case "$input:$t" in
            os-plain:*) target=1.3 ;;
            os-zlib:*) target=1.5 ;;
            os-zstd:*) target=1.2 ;;
            vmdk-stream:* | vhdx:*) target=1.0 ;;
            *) target=- ;;
        esac
        ours_med="$(median "$tmp/$input.$t")"
        ours_du="$(du -k "$out/bench-$t.raw" 2>/dev/null | cut -f1)"
        ours_sum="$(sha256sum "$out/bench-$t.raw" 2>/dev/null | cut -d' ' -f1)"
        same=no
        [ -n "$ours_sum" ] && [ "$ours_sum" = "$qemu_sum" ] && same=yes
        label="$input"
        [ "$t" = ours-S0 ] && label="$input (ours -S 0)"
        rows+=("$(printf '%-22s %9s %9s %6s %7s %12s %12s %8s %7s' "$label" "$qemu_med" "$ours_med" \
            "$(ratio "$qemu_med" "$ours_med")" "$([ "$target" = - ] && echo - || echo ">=$target")" \
            "${qemu_du:--}" "${ours_du:--}" "$(peak_mib "$tmp/$input.$t")" "$same")")
    done
    rm -f "$out"/bench-*.raw
done

echo
echo "diskplane convert vs qemu-img convert -O raw: $runs runs each, median wall s, page cache $cache," \
    "durable $durable, $(nproc) CPUs, output on $(df --output=fstype "$out" | tail -1 | tr -d ' ')," \
    "load average $load_start at start, $(cut -d' ' -f1-3 /proc/loadavg) at end"
if [ "$durable" != 1 ]; then
    echo "note: durable 0 times each command alone; if diskplane flushes its output (fdatasync) and" \
        "qemu-img does not (its default), diskplane's times include writeback that qemu-img's do not:" \
        "DURABLE=1 compares equal work"
fi
printf '%-22s %9s %9s %6s %7s %12s %12s %8s %7s\n' input qemu-img diskplane ratio target \
    "qemu du KiB" "ours du KiB" "RSS MiB" sha-eq
printf '%s\n' "${rows[@]}"
