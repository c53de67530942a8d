#!/usr/bin/env bash
# Builds every fuzz target and runs each for a few seconds; prints executions per target.
#
# Usage: fuzz/smoke.sh [SECONDS_PER_TARGET] [TARGET...]   (default $FUZZ_SECONDS or 20 s; all targets)
#   e.g. fuzz/smoke.sh 5                 # CI: ~5 s per target after the build
#        fuzz/smoke.sh 600 qcow2_open    # a longer session on one target
#
# Environment:
#   FUZZ_SANITIZER=address|none   (default address; none builds faster and runs ~2x faster)
#   FUZZ_MALLOC_LIMIT_MB=512      a single allocation larger than this is reported as a crash:
#                                 no parser may allocate in proportion to what a header claims
#   FUZZ_RSS_LIMIT_MB=2048        the process limit (libFuzzer's default)
#
# Needs cargo-fuzz (installed here from crates.io if missing) and a C++ compiler for
# libFuzzer. Only stable Rust is installed: RUSTC_BOOTSTRAP=1 lets stable rustc take the
# -Zsanitizer / coverage flags cargo-fuzz passes. Seeds come from fuzz/seed.sh (run here when
# fuzz/corpus/ is missing and qemu-img is available). Crashes land in fuzz/artifacts/<target>/;
# the script runs every target and exits non-zero if any of them failed.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
secs="${1:-${FUZZ_SECONDS:-20}}"
shift || true
export RUSTC_BOOTSTRAP=1
sanitizer="${FUZZ_SANITIZER:-address}"
malloc_limit="${FUZZ_MALLOC_LIMIT_MB:-512}"
rss_limit="${FUZZ_RSS_LIMIT_MB:-2048}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "smoke: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --version 0.13.2 --locked
fi

if [ ! -d corpus ]; then
    if command -v qemu-img >/dev/null && command -v qemu-io >/dev/null; then
        ./seed.sh
    else
        echo "smoke: no qemu-img: fuzzing from empty corpora" >&2
    fi
fi

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

build_flags=(-a --sanitizer "$sanitizer")
start=$(date +%s)
cargo fuzz build "${build_flags[@]}"
echo "smoke: built ${#targets[@]} targets in $(($(date +%s) - start)) s (sanitizer $sanitizer)"

logs="$(mktemp -d)"
trap 'rm -rf "$logs"' EXIT
failed=()
summary=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    echo "smoke: fuzzing $t for $secs s"
    rc=0
    cargo fuzz run "${build_flags[@]}" "$t" "corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 \
        -malloc_limit_mb="$malloc_limit" -rss_limit_mb="$rss_limit" \
        -print_final_stats=1 >"$logs/$t" 2>&1 || rc=$?
    runs=$(sed -n 's/^Done \([0-9]*\) runs in.*/\1/p' "$logs/$t" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$logs/$t" | tail -1 | cut -d' ' -f2)
    corp=$(find "corpus/$t" -type f | wc -l)
    if [ "$rc" -ne 0 ]; then
        failed+=("$t")
        echo "smoke: $t FAILED (exit $rc); last lines of its log:" >&2
        tail -40 "$logs/$t" >&2
    fi
    summary+=("$(printf '%-18s %12s %10s %8s %8s %s' "$t" "${runs:-?}" \
        "$(( ${runs:-0} / (secs > 0 ? secs : 1) ))" "${cov:-?}" "$corp" "$([ "$rc" -eq 0 ] && echo ok || echo FAILED)")")
done

printf '\n%-18s %12s %10s %8s %8s %s\n' target execs execs/s cov corpus result
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "smoke: failed: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
