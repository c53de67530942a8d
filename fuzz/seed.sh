#!/usr/bin/env bash
# Makes small seed inputs for the fuzz targets into fuzz/corpus/<target>/ (gitignored).
#
# Usage: fuzz/seed.sh            (idempotent: rewrites the seeds it makes, keeps anything else
#                                 a fuzz run has added to the corpus)
# Needs: qemu-img and qemu-io (package qemu-utils), gzip, xz, zstd. Optional: xorriso (an ISO
# seed for the probe target). No network.
#
# The qcow2 seeds use small clusters (512 B-4 KiB) and small virtual sizes so each stays a few
# KiB: libFuzzer mutates small inputs far faster, and every header field, table and cluster
# kind is still present: v2 and v3 headers, zlib and zstd compressed clusters, zero clusters,
# extended L2 subclusters, lazy refcounts, an internal snapshot, a header extension (backing
# format) with the backing file removed, and a dirty-bit image.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
corpus="$here/corpus"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

for tool in qemu-img qemu-io gzip xz zstd; do
    command -v "$tool" >/dev/null || { echo "seed.sh: $tool not found (apt-get install qemu-utils gzip xz-utils zstd)" >&2; exit 1; }
done

mkdir -p "$corpus"/{probe,qcow2_open,qcow2_stream,decompress_gzip,decompress_xz,decompress_zstd}

# qemu-io commands writing every kind of cluster: data, explicit zeros, compressed, a partial
# cluster, and data near the end of the disk.
qio_data=(
    -c 'write -P 0x11 0 1k'
    -c 'write -P 0x22 3k 2k'
    -c 'write -z 8k 4k'
    -c 'write -c -P 0x33 16k 16k'
    -c 'write -P 0x44 60k 4k'
)

# make NAME SIZE CREATE_OPTIONS [qemu-io commands...]: a qcow2 seed for qcow2_open and qcow2_stream.
make_qcow2() {
    local name="$1" size="$2" opts="$3"
    shift 3
    local img="$work/$name.qcow2"
    qemu-img create -q -f qcow2 -o "$opts" "$img" "$size"
    if [ "$#" -gt 0 ]; then
        qemu-io -f qcow2 "$@" "$img" >/dev/null
    fi
    cp "$img" "$corpus/qcow2_open/$name.qcow2"
    cp "$img" "$corpus/qcow2_stream/$name.qcow2"
}

make_qcow2 v2-empty 64k compat=0.10,cluster_size=512
make_qcow2 v2-data 64k compat=0.10,cluster_size=512 "${qio_data[@]}"
make_qcow2 v3-data 64k compat=1.1,cluster_size=512 "${qio_data[@]}"
make_qcow2 v3-4k 64k compat=1.1,cluster_size=4096 "${qio_data[@]}"
make_qcow2 v3-zstd 64k compat=1.1,cluster_size=512,compression_type=zstd "${qio_data[@]}"
make_qcow2 v3-extl2 64k compat=1.1,cluster_size=16k,extended_l2=on "${qio_data[@]}"
make_qcow2 v3-lazy 64k compat=1.1,cluster_size=512,lazy_refcounts=on "${qio_data[@]}"
make_qcow2 v3-refbits1 64k compat=1.1,cluster_size=512,refcount_bits=1 "${qio_data[@]}"
make_qcow2 v3-refbits64 64k compat=1.1,cluster_size=512,refcount_bits=64 "${qio_data[@]}"

# An internal snapshot (a snapshot table and a second L1 table).
make_qcow2 v3-snapshot 64k compat=1.1,cluster_size=512 "${qio_data[@]}"
qemu-img snapshot -c snap1 "$corpus/qcow2_open/v3-snapshot.qcow2"
qemu-io -f qcow2 -c 'write -P 0x55 0 2k' "$corpus/qcow2_open/v3-snapshot.qcow2" >/dev/null

# Everything compressed, the way `qemu-img convert -c` writes cloud images.
head -c 32768 /dev/urandom >"$work/mixed.raw"
head -c 32768 /dev/zero >>"$work/mixed.raw"
yes 'diskplane fuzz seed text ' | head -c 32768 >>"$work/mixed.raw" || true
qemu-img convert -q -c -f raw -O qcow2 -o cluster_size=4096 "$work/mixed.raw" "$corpus/qcow2_open/convert-c-zlib.qcow2"
qemu-img convert -q -c -f raw -O qcow2 -o cluster_size=4096,compression_type=zstd "$work/mixed.raw" \
    "$corpus/qcow2_open/convert-c-zstd.qcow2"

# A backing file reference (must be denied) — keep the header but drop the backing file.
qemu-img create -q -f qcow2 -o cluster_size=512 "$work/base.qcow2" 64k
qemu-img create -q -f qcow2 -o cluster_size=512 -b "$work/base.qcow2" -F qcow2 "$work/overlay.qcow2"
cp "$work/overlay.qcow2" "$corpus/qcow2_open/with-backing.qcow2"

# The dirty bit (incompatible feature bit 0) set by hand in a lazy-refcounts image.
cp "$corpus/qcow2_open/v3-lazy.qcow2" "$corpus/qcow2_open/v3-dirty.qcow2"
printf '\x00\x00\x00\x00\x00\x00\x00\x01' |
    dd of="$corpus/qcow2_open/v3-dirty.qcow2" bs=1 seek=72 conv=notrunc status=none

# probe: one of every magic we recognise, plus plain raw.
cp "$corpus/qcow2_open/v3-data.qcow2" "$corpus/probe/qcow2"
for fmt in vmdk vpc vhdx vdi qed; do
    qemu-img create -q -f "$fmt" "$work/p.$fmt" 1M
    head -c 4096 "$work/p.$fmt" >"$corpus/probe/$fmt"
done
printf 'QFI\xfb\x00\x00\x00\x01' >"$corpus/probe/qcow1"
printf 'LUKS\xba\xbe\x00\x02' >"$corpus/probe/luks"
head -c 512 /dev/zero >"$corpus/probe/zeros"
if command -v xorriso >/dev/null; then
    mkdir -p "$work/iso"
    echo hello >"$work/iso/hello.txt"
    xorriso -as mkisofs -quiet -o "$work/p.iso" "$work/iso" 2>/dev/null
    head -c 36864 "$work/p.iso" >"$corpus/probe/iso"
fi

# decompress_*: zeros, random, text, empty input, and concatenated members/streams/frames.
head -c 65536 /dev/zero >"$work/zeros"
head -c 4096 /dev/urandom >"$work/random"
yes 'the quick brown fox jumps over the lazy disk ' | head -c 16384 >"$work/text" || true
: >"$work/empty"
for src in zeros random text empty; do
    gzip -9 -c "$work/$src" >"$corpus/decompress_gzip/$src.gz"
    xz -c "$work/$src" >"$corpus/decompress_xz/$src.xz"
    zstd -q -19 -c "$work/$src" >"$corpus/decompress_zstd/$src.zst"
done
xz -c --check=sha256 "$work/text" >"$corpus/decompress_xz/text-sha256.xz"
xz -c --check=none "$work/text" >"$corpus/decompress_xz/text-nocheck.xz"
xz -c -T2 --block-size=4096 "$work/text" >"$corpus/decompress_xz/text-blocks.xz"
zstd -q -c --no-check "$work/text" >"$corpus/decompress_zstd/text-nocheck.zst"
cat "$corpus/decompress_gzip/text.gz" "$corpus/decompress_gzip/random.gz" >"$corpus/decompress_gzip/two-members.gz"
cat "$corpus/decompress_xz/text.xz" "$corpus/decompress_xz/random.xz" >"$corpus/decompress_xz/two-streams.xz"
cat "$corpus/decompress_zstd/text.zst" "$corpus/decompress_zstd/random.zst" >"$corpus/decompress_zstd/two-frames.zst"
# Stream padding after an xz stream, and a zstd skippable frame before data.
{ cat "$corpus/decompress_xz/text.xz"; head -c 8 /dev/zero; } >"$corpus/decompress_xz/padded.xz"
{ printf '\x50\x2a\x4d\x18\x04\x00\x00\x00abcd'; cat "$corpus/decompress_zstd/text.zst"; } \
    >"$corpus/decompress_zstd/skippable.zst"
for f in "$corpus"/decompress_gzip/*.gz; do cp "$f" "$corpus/probe/$(basename "$f")"; break; done

for d in "$corpus"/*/; do
    printf '%-18s %3d files, largest %6d bytes\n' "$(basename "$d")" \
        "$(find "$d" -type f | wc -l)" "$(find "$d" -type f -printf '%s\n' | sort -n | tail -1)"
done
