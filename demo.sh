#!/usr/bin/env bash
# The main job, end to end on a fresh machine without internet: build diskplane, make a real disk
# image with qemu-img (an ext4 filesystem holding a copy of /usr/share/doc, as a zstd-compressed
# qcow2 wrapped in xz), inspect it, convert it to a raw sparse disk, and check the result against
# qemu-img's own conversion.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v qemu-img >/dev/null || ! command -v mkfs.ext4 >/dev/null || ! command -v xz >/dev/null; then
  apt-get update -qq && apt-get install -y -qq qemu-utils e2fsprogs xz-utils >/dev/null
fi
cargo build --release --locked -q
bin=target/release/diskplane

work=$(mktemp -d /var/tmp/diskplane-demo.XXXXXX)
trap 'rm -rf "$work"' EXIT
echo "== making an image in $work"
truncate -s 512M "$work/fs.raw"
mkfs.ext4 -q -F -d /usr/share/doc "$work/fs.raw"
qemu-img convert -f raw -O qcow2 -c -o compression_type=zstd "$work/fs.raw" "$work/disk.qcow2"
xz -T0 -1 -k "$work/disk.qcow2"

echo "== diskplane info disk.qcow2.xz"
"$bin" info "$work/disk.qcow2.xz"
echo "== diskplane convert disk.qcow2.xz disk.raw"
time "$bin" convert "$work/disk.qcow2.xz" "$work/disk.raw"

echo "== checking against qemu-img convert -O raw"
qemu-img convert -O raw "$work/disk.qcow2" "$work/reference.raw"
ours=$(sha256sum <"$work/disk.raw" | cut -d' ' -f1)
theirs=$(sha256sum <"$work/reference.raw" | cut -d' ' -f1)
echo "diskplane sha256 $ours, allocated $(du -k "$work/disk.raw" | cut -f1) KiB"
echo "qemu-img  sha256 $theirs, allocated $(du -k "$work/reference.raw" | cut -f1) KiB"
[ "$ours" = "$theirs" ] && echo "identical" || { echo "MISMATCH"; exit 1; }
