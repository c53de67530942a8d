#!/usr/bin/env bash
# Hand-run benchmark of `diskplane vm run` vs running the same qemu command by hand (TCG).
#
# The test guest of fixtures/make-guest.sh boots (kernel + busybox initramfs, marker disk and a
# cloud-init seed), prints its `diskplane-guest:` lines on the serial console and powers off.
# Each mode runs RUNS times, alternating:
#   launcher  `diskplane vm run -f VM --volume root=DISK --kernel … --accel tcg`
#   by hand   the exact command line `diskplane vm run --print-command` prints
# qemu is started through a wrapper that records when qemu is exec'd and when it exits, so
#   overhead = (qemu start − command start) + (command end − qemu exit)
# is the launcher's own cost before and after qemu (manifest parsing, disk probes, seed image,
# QMP handshake and reaping); the by-hand overhead (the wrapper and bash only) is subtracted.
# Also printed: command start → first guest serial line (`diskplane-guest: init` in the serial
# log, polled every 5 ms the same way in both modes). Medians; target: < 50 ms added.
#
# Environment:
#   DISKPLANE=PATH  the binary (default: `cargo build --release`, target/release/diskplane)
#   RUNS=N          runs per mode (default 3; a TCG boot takes ~10 s here)
#   BENCH_OUT=DIR   work directory (default bench/out/launcher); emptied after
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
out="${BENCH_OUT:-$here/out/launcher}"
runs="${RUNS:-3}"
log() { echo "bench: $*" >&2; }

if [[ -z "${DISKPLANE:-}" ]]; then
    (cd "$root" && cargo build --release --quiet)
    DISKPLANE="$root/target/release/diskplane"
fi
command -v qemu-system-x86_64 >/dev/null || { log "qemu-system-x86_64 is missing"; exit 1; }

rm -rf "$out"
mkdir -p "$out"
trap 'rm -rf "$out"' EXIT
guest="$out/guest"
log "building the guest"
bash "$root/fixtures/make-guest.sh" "$guest"

cat >"$out/vm.yaml" <<'EOF'
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: bench
spec:
  runStrategy: Manual
  template:
    spec:
      domain:
        memory:
          guest: 256Mi
        firmware:
          kernelBoot:
            kernelArgs: "console=ttyS0 quiet panic=-1"
        devices:
          disks:
            - name: root
              disk:
                bus: virtio
      volumes:
        - name: root
          dataVolume:
            name: bench-root
        - name: seed
          cloudInitNoCloud:
            userData: "#cloud-config\n"
EOF

# The wrapper: timestamps around the real qemu (not exec'd, so it can stamp the exit).
cat >"$out/qemu-wrapper" <<EOF
#!/usr/bin/env bash
date +%s%N >"$out/qemu-start"
$(command -v qemu-system-x86_64) "\$@"
rc=\$?
date +%s%N >"$out/qemu-end"
exit \$rc
EOF
chmod +x "$out/qemu-wrapper"

state="$out/state"
disk="$out/disk.img"
common=(vm run -f "$out/vm.yaml" --volume "root=$disk" --kernel "$guest/vmlinuz" --initrd "$guest/initrd.img"
    --accel tcg --state-dir "$state")

# Waits for the first guest line in the serial log; prints its time.
first_line() {
    until grep -qa 'diskplane-guest: init' "$state/serial.log" 2>/dev/null; do sleep 0.005; done
    date +%s%N
}

ms() { echo $(( ($1) / 1000000 )); }

one_run() { # MODE → "overhead_ms first_line_ms"
    local mode=$1 t0 t1 first
    cp "$guest/disk.img" "$disk"
    rm -f "$state/serial.log" "$state"/*.sock "$out/qemu-start" "$out/qemu-end"
    first_line >"$out/first" &
    local poller=$!
    if [[ $mode == launcher ]]; then
        t0=$(date +%s%N)
        DISKPLANE_QEMU="$out/qemu-wrapper" "$DISKPLANE" "${common[@]}" >/dev/null 2>"$out/stderr"
        t1=$(date +%s%N)
    else
        local line
        line=$(DISKPLANE_QEMU="$out/qemu-wrapper" "$DISKPLANE" "${common[@]}" --print-command 2>/dev/null)
        eval "set -- $line"
        t0=$(date +%s%N)
        "$@" </dev/null >/dev/null 2>"$out/stderr"
        t1=$(date +%s%N)
    fi
    wait "$poller"
    first=$(cat "$out/first")
    local qs qe
    qs=$(cat "$out/qemu-start")
    qe=$(cat "$out/qemu-end")
    echo "$(ms "(qs - t0) + (t1 - qe)") $(ms "first - t0") $(ms "qs - t0") $(ms "t1 - qe")"
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

: >"$out/launcher.txt"
: >"$out/hand.txt"
for i in $(seq "$runs"); do
    r=$(one_run launcher); echo "$r" >>"$out/launcher.txt"; log "run $i launcher: overhead/first-line/before/after ms: $r"
    r=$(one_run hand); echo "$r" >>"$out/hand.txt"; log "run $i by hand:  overhead/first-line/before/after ms: $r"
done

l_over=$(cut -d' ' -f1 "$out/launcher.txt" | median)
h_over=$(cut -d' ' -f1 "$out/hand.txt" | median)
l_first=$(cut -d' ' -f2 "$out/launcher.txt" | median)
h_first=$(cut -d' ' -f2 "$out/hand.txt" | median)
added=$((l_over - h_over))
echo "launcher: first guest serial line after ${l_first} ms (by hand: ${h_first} ms; ratio $(awk "BEGIN {printf \"%.3f\", $l_first / $h_first}"))"
echo "launcher overhead around qemu: ${l_over} ms (by hand: ${h_over} ms) → added ${added} ms (target < 50 ms)"
