#!/usr/bin/env bash
# Hand-run benchmark: `diskplane import docker://…` against a pull-then-convert path on the same
# machine, same containerDisk, same local registry (Debian's docker-registry on loopback):
#   peer: `skopeo copy` into an OCI layout, extract disk/ from the layer (tar), then
#         `qemu-img convert -O raw` and sync: what CDI's registry importer does (b.4: pull to
#         scratch, extract /disk/, convert)
#   ours: one streaming pass, layer digest verified, target synced
#
# Usage: bench/import-registry.sh            (RUNS=3 runs of each path, alternating)
#
# Environment:
#   RUNS=3          timed runs per path
#   DISKPLANE=PATH  the binary (default: `cargo build --release`, target/release/diskplane)
#   BENCH_OUT=DIR   inputs and outputs (default bench/out, gitignored)
#   INPUT=NAME      the disk inside the containerDisk (default os-zlib.qcow2, from make-inputs.sh:
#                   an OS-like ext4 image with zlib clusters, the usual containerDisk payload)
#
# Columns: median wall seconds, ratio = peer / ours (> 1: we are faster), peak RSS (GNU time %M)
# of each, and whether the outputs' sha256 match.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
out="${BENCH_OUT:-$here/out}"
runs="${RUNS:-3}"
input="${INPUT:-os-zlib.qcow2}"
log() { echo "bench: $*" >&2; }

for tool in qemu-img docker-registry skopeo python3 tar gzip; do
    command -v "$tool" >/dev/null || { log "$tool not found (apt-get install docker-registry skopeo qemu-utils)"; exit 1; }
done
[ -x /usr/bin/time ] || apt-get install -y -q time >/dev/null
if [ -z "${DISKPLANE:-}" ]; then
    log "cargo build --release"
    (cd "$root" && cargo build --release --quiet --bin diskplane)
    DISKPLANE="$root/target/release/diskplane"
fi
BENCH_OUT="$out" "$here/make-inputs.sh"

tmp="$(mktemp -d -p "$out")"
reg_pid=""
cleanup() {
    if [ -n "$reg_pid" ]; then
        kill "$reg_pid" 2>/dev/null || true
        wait "$reg_pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
cat >"$tmp/registry.yml" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $tmp/storage
http:
  addr: 127.0.0.1:$port
EOF
docker-registry serve "$tmp/registry.yml" >"$tmp/registry.log" 2>&1 &
reg_pid=$!
for _ in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:$port/v2/" && break
    sleep 0.1
done

log "packing $input as a containerDisk (gzip -1 layer) and pushing it"
mkdir -p "$tmp/root/disk"
cp --reflink=auto --sparse=always "$out/$input" "$tmp/root/disk/disk.img"
tar --format=gnu -S -C "$tmp/root" -cf - disk | gzip -1 >"$tmp/layer.tar.gz"
rm -rf "$tmp/root"
python3 "$root/fixtures/make-containerdisk.py" image "http://127.0.0.1:$port" bench/os:v1 \
    --layer gzip "@@$tmp/layer.tar.gz" >/dev/null
rm -f "$tmp/layer.tar.gz"
image="127.0.0.1:$port/bench/os:v1"

# timed PATH DST RECORD
timed() {
    local path="$1" dst="$2" record="$3" rc=0
    rm -rf "$dst" "$tmp/layout" "$tmp/extract"
    sync
    case "$path" in
        ours)
            /usr/bin/time -f '%e %M' -o "$tmp/time" \
                "$DISKPLANE" import "docker://$image" "$dst" --insecure >"$tmp/cmd.log" 2>&1 || rc=$?
            ;;
        peer)
            /usr/bin/time -f '%e %M' -o "$tmp/time" sh -c "set -e
                skopeo copy -q --src-tls-verify=false 'docker://$image' 'oci:$tmp/layout:v1'
                mkdir -p '$tmp/extract'
                for blob in '$tmp'/layout/blobs/sha256/*; do
                    tar -xzf \"\$blob\" -C '$tmp/extract' disk 2>/dev/null || true
                done
                qemu-img convert -O raw '$tmp'/extract/disk/* '$dst'
                sync '$dst'" >"$tmp/cmd.log" 2>&1 || rc=$?
            ;;
    esac
    rm -rf "$tmp/layout" "$tmp/extract"
    if [ "$rc" -ne 0 ]; then
        log "$path failed (exit $rc): $(tail -3 "$tmp/cmd.log")"
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
peak_mib() { cut -d' ' -f2 "$1" | sort -n | tail -1 | awk '{ printf "%.0f", $1 / 1024 }'; }

: >"$tmp/peer" && : >"$tmp/ours"
for ((i = 0; i < runs; i++)); do
    if ((i % 2 == 0)); then order="peer ours"; else order="ours peer"; fi
    for path in $order; do timed "$path" "$tmp/$path.raw" "$tmp/$path"; done
done
peer_s="$(median "$tmp/peer")" ours_s="$(median "$tmp/ours")"
ratio="$(awk -v a="$peer_s" -v b="$ours_s" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')"
same=no
[ "$(sha256sum <"$tmp/peer.raw" | cut -d' ' -f1)" = "$(sha256sum <"$tmp/ours.raw" | cut -d' ' -f1)" ] && same=yes
printf '%-16s %9s %9s %7s %10s %10s %5s\n' input "peer s" "ours s" ratio "peer MiB" "our MiB" same
printf '%-16s %9s %9s %7s %10s %10s %5s\n' "$input" "$peer_s" "$ours_s" "$ratio" \
    "$(peak_mib "$tmp/peer")" "$(peak_mib "$tmp/ours")" "$same"
