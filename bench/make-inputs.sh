#!/usr/bin/env bash
# Makes the benchmark inputs for bench/convert.sh into bench/out/ (gitignored), once.
#
# Usage: bench/make-inputs.sh            (skips inputs that already exist; FORCE=1 remakes all)
#
# Inputs:
#   os-plain.qcow2  an OS-like disk: a 3 GiB ext4 filesystem filled from /usr (as much as fits
#                   in OS_DATA_MIB, default 2300 MiB), written by `mkfs.ext4 -d` (no loop
#                   device, no mount, no root needed beyond reading /usr), converted by qemu-img
#   os-zlib.qcow2   the same, every cluster zlib-compressed (`qemu-img convert -c`), the way
#                   cloud images ship
#   os-zstd.qcow2   the same, zstd-compressed (`-c -o compression_type=zstd`)
#   mixed.qcow2     2 GiB: 1 MiB chunks of random data alternating with 1 MiB holes (~50% data)
#
# Needs: qemu-img, mkfs.ext4 (e2fsprogs >= 1.43 for -d), coreutils. No network.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
out="${BENCH_OUT:-$here/out}"
os_data_mib="${OS_DATA_MIB:-2300}"
mkdir -p "$out"

have() { [ -s "$out/$1" ] && [ "${FORCE:-0}" != 1 ]; }
log() { echo "make-inputs: $*" >&2; }

make_os_raw() {
    local staging="$out/os-staging"
    rm -rf "$staging" "$out/os.raw"
    mkdir -p "$staging"
    # Pick files of /usr in path order until their allocated size reaches the budget, then
    # mirror them into a staging tree: hard links when /usr and bench/out share a filesystem
    # (no bytes copied), real copies otherwise. mkfs.ext4 -d then reads the tree.
    local list="$out/os-files.txt"
    { find /usr -xdev \( -type f -o -type l \) -printf '%k\t%p\n' 2>/dev/null || true; } |
        sort -t $'\t' -k2,2 |
        awk -F '\t' -v budget=$((os_data_mib * 1024)) '!full { sum += $1; if (sum > budget) full = 1; else print $2 }' >"$list"
    local link=-l
    [ "$(stat -c %d /usr)" = "$(stat -c %d "$out")" ] || link=
    log "staging $(wc -l <"$list") files from /usr (${os_data_mib} MiB budget${link:+, hard links})"
    (cd / && xargs -d '\n' cp -a $link --parents -t "$staging" 2>/dev/null <"$list") || true
    truncate -s 3G "$out/os.raw"
    log "mkfs.ext4 -d (3 GiB filesystem)"
    mkfs.ext4 -q -F -L bench-os -d "$staging/usr" "$out/os.raw"
    rm -rf "$staging" "$list"
}

if ! have os-plain.qcow2 || ! have os-zlib.qcow2 || ! have os-zstd.qcow2; then
    make_os_raw
    log "qemu-img convert -O qcow2 (plain, zlib, zstd)"
    qemu-img convert -f raw -O qcow2 "$out/os.raw" "$out/os-plain.qcow2"
    qemu-img convert -c -f raw -O qcow2 "$out/os.raw" "$out/os-zlib.qcow2"
    qemu-img convert -c -f raw -O qcow2 -o compression_type=zstd "$out/os.raw" "$out/os-zstd.qcow2"
    rm -f "$out/os.raw"
fi

if ! have mixed.qcow2; then
    log "mixed: 2 GiB, random 1 MiB chunks at even MiB offsets, holes between"
    rm -f "$out/mixed.raw"
    truncate -s 2G "$out/mixed.raw"
    for ((mib = 0; mib < 2048; mib += 2)); do
        dd if=/dev/urandom of="$out/mixed.raw" bs=1M count=1 seek="$mib" conv=notrunc status=none
    done
    qemu-img convert -f raw -O qcow2 "$out/mixed.raw" "$out/mixed.qcow2"
    rm -f "$out/mixed.raw"
fi

for f in os-plain os-zlib os-zstd mixed; do
    printf 'make-inputs: %-16s file %6d MiB, virtual %s\n' "$f.qcow2" \
        $(($(stat -c %s "$out/$f.qcow2") >> 20)) \
        "$(qemu-img info "$out/$f.qcow2" | sed -n 's/^virtual size: \(.*\) (.*/\1/p')" >&2
done
