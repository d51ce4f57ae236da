#!/usr/bin/env bash
# Bounded fuzzing for CI: every cargo-fuzz target in fuzz/ for SECONDS_PER_TARGET seconds each
# (default 40), starting from the committed seeds in fuzz/seeds/<target>/.
#
#   tests/fuzz/run.sh [SECONDS_PER_TARGET]
#
# Exit 1 if any target crashes (panic, failed invariant, timeout, OOM) or leaves a crash
# artifact; the reproducer is copied to target/fuzz-artifacts/<target>/ and its path printed
# (replay: cargo fuzz run --sanitizer none <target> <file>).
#
# Stable toolchain: libFuzzer with `--sanitizer none`. The code under test has no `unsafe`, so
# AddressSanitizer would find nothing more there and costs ~10x the speed; for targets that reach
# `unsafe` code run with FUZZ_SANITIZER=address (uses RUSTC_BOOTSTRAP=1 for -Zsanitizer).
# Debug assertions and overflow checks are on (`-a`): the engine's debug_assert!s are
# invariants too.
#
# Nothing is written into the source tree: the corpus grows in a temporary directory, seeded
# from fuzz/seeds/, and is thrown away (fuzz/target/ holds the build, as cargo-fuzz does).
set -euo pipefail

SECS="${1:-40}"
case "$SECS" in '' | *[!0-9]*) echo "usage: $0 [SECONDS_PER_TARGET]" >&2; exit 2 ;; esac
SANITIZER="${FUZZ_SANITIZER:-none}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

if [ "$SANITIZER" != none ]; then
    export RUSTC_BOOTSTRAP=1
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

TARGETS=$(cargo fuzz list)
[ -n "$TARGETS" ] || { echo "no fuzz targets found in fuzz/" >&2; exit 1; }

echo "== building fuzz targets (sanitizer: $SANITIZER)"
cargo fuzz build --sanitizer "$SANITIZER" -a

WORK="$(mktemp -d "${TMPDIR:-/tmp}/ferroturn-fuzz.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
SAVED="$ROOT/target/fuzz-artifacts"

failed=0
summary=()
for t in $TARGETS; do
    corpus="$WORK/corpus/$t"
    artifacts="$WORK/artifacts/$t/"
    mkdir -p "$corpus" "$artifacts"
    if [ -d "fuzz/seeds/$t" ]; then
        cp fuzz/seeds/"$t"/* "$corpus"/
    fi
    seeds=$(find "$corpus" -type f | wc -l)
    log="$WORK/$t.log"
    echo "== $t: ${SECS}s from $seeds seeds"
    status=0
    # -artifact_prefix after cargo-fuzz's own: libFuzzer takes the last one given.
    cargo fuzz run --sanitizer "$SANITIZER" -a "$t" "$corpus" -- \
        -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$artifacts" >"$log" 2>&1 || status=$?
    done_line=$(grep -E '^Done [0-9]+ runs in' "$log" | tail -n1 || true)
    cov_line=$(grep -E '^#[0-9]+' "$log" | tail -n1 | sed -E 's/ +/ /g' || true)
    crashes=$(find "$WORK/artifacts/$t" -type f | wc -l)
    corpus_after=$(find "$corpus" -type f | wc -l)
    if [ "$status" -ne 0 ] || [ "$crashes" -ne 0 ] || [ -z "$done_line" ]; then
        failed=1
        echo "!! $t FAILED (exit $status, $crashes crash artifact(s)); last lines of its log:"
        tail -n 40 "$log"
        if [ "$crashes" -ne 0 ]; then
            mkdir -p "$SAVED/$t"
            cp "$WORK/artifacts/$t"/* "$SAVED/$t"/
            echo "!! reproducer(s) saved in $SAVED/$t/:"
            ls -1 "$SAVED/$t"
        fi
        summary+=("$t: FAILED (exit $status, $crashes crash artifact(s))")
    else
        echo "   $done_line"
        echo "   last status: $cov_line"
        summary+=("$t: ok, $done_line; corpus $seeds -> $corpus_after inputs")
    fi
done

echo "== fuzzing summary (${SECS}s per target, sanitizer $SANITIZER)"
for s in "${summary[@]}"; do echo "   $s"; done
exit "$failed"
