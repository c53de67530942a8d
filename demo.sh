#!/usr/bin/env bash
# The main job, end to end on a fresh machine without internet: build diskplane, make a real disk
# image with qemu-img (an ext4 filesystem holding a copy of /usr/share/doc, as a zstd-compressed
# qcow2 wrapped in xz), inspect it, convert it to a raw sparse disk, and check the result against
# qemu-img's own conversion. Then the embedded default: `diskplane serve` on 127.0.0.1, the
# image served over HTTP on loopback, a CDI DataVolume applied, waited for, and its volume checked
# against qemu-img's conversion too.
set -euo pipefail
cd "$(dirname "$0")"

for tool in qemu-img mkfs.ext4 xz curl python3; do
  command -v "$tool" >/dev/null || { apt-get update -qq && apt-get install -y -qq qemu-utils e2fsprogs xz-utils curl python3 >/dev/null; break; }
done
# DISKPLANE=PATH runs an already built binary instead of building the release one.
if [ -z "${DISKPLANE:-}" ]; then
  cargo build --release --locked -q
fi
bin=${DISKPLANE:-target/release/diskplane}

work=$(mktemp -d /var/tmp/diskplane-demo.XXXXXX)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$work"' EXIT
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

echo "== embedded mode: diskplane serve, a DataVolume importing the image over HTTP"
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
http_port=$(free_port)
api_port=$(free_port)
(cd "$work" && exec python3 -m http.server --bind 127.0.0.1 "$http_port" >/dev/null 2>&1) &
pids+=($!)
"$bin" serve --data-dir "$work/state" --listen "127.0.0.1:$api_port" >"$work/serve.log" 2>&1 &
pids+=($!)
export DISKPLANE_SERVER="http://127.0.0.1:$api_port"
for _ in $(seq 100); do curl -sf "$DISKPLANE_SERVER/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
"$bin" apply -f - <<EOF
apiVersion: cdi.kubevirt.io/v1beta1
kind: DataVolume
metadata:
  name: demo-disk
spec:
  source:
    http:
      url: http://127.0.0.1:$http_port/disk.qcow2.xz
  storage:
    resources:
      requests:
        storage: 1Gi
EOF
"$bin" wait dv demo-disk --timeout 5m
"$bin" get dv
volume="$work/state/volumes/default/demo-disk/disk.img"
served=$(head -c "$(stat -c %s "$work/reference.raw")" "$volume" | sha256sum | cut -d' ' -f1)
echo "volume disk.img: $(stat -c %s "$volume") bytes, allocated $(du -k "$volume" | cut -f1) KiB"
echo "sha256 of its first $(stat -c %s "$work/reference.raw") bytes (the image) $served"
[ "$served" = "$theirs" ] && echo "identical to qemu-img's conversion" || { echo "MISMATCH"; exit 1; }
