#!/usr/bin/env bash
# Fuzzing: every parser of outside input (fuzz/fuzz_targets), each run by libFuzzer for a
# while, from its committed seeds; reports executions and crashes per target.
#
#   bash bench/fuzz.sh
#
# Environment:
#   FUZZ_SECONDS   seconds per target (default 600)
#   FUZZ_TARGETS   targets to run (default: all of fuzz/fuzz_targets, in file order)
#   FUZZ_WORK_DIR  scratch directory (the corpus grown this run, the temp stores), removed
#                  at exit (default /dev/shm/drover-fuzz when /dev/shm exists, else
#                  /tmp/drover-fuzz)
#   FUZZ_RESULTS   where to write the markdown results (default bench/results/fuzz.md;
#                  "-" to print only)
#
# What it does:
#   1. installs cargo-fuzz (`cargo install cargo-fuzz --locked`) when it is missing;
#   2. `cargo fuzz build -s none -a`: the stable toolchain, no sanitizer (libFuzzer's
#      coverage instrumentation only), debug assertions and overflow checks on;
#   3. per target: `cargo fuzz run -s none -a TARGET WORK/corpus/TARGET fuzz/corpus/TARGET
#      [fuzz/regressions/TARGET] -- -max_total_time=FUZZ_SECONDS -timeout=10
#      -rss_limit_mb=2048`: new inputs go to the scratch corpus, the committed ones are only
#      read. A crash (panic, abort), a hang (10 s on one input) or memory past 2 GiB stops
#      that target; its input is kept in fuzz/artifacts/TARGET/ (not committed: make it a
#      regression input in fuzz/regressions/TARGET/ with the fix);
#   4. prints a markdown table and writes it to bench/results/fuzz.md. Exits 1 when any
#      target crashed.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SECS="${FUZZ_SECONDS:-600}"
if [[ -d /dev/shm && -w /dev/shm ]]; then default_work=/dev/shm/drover-fuzz; else default_work=/tmp/drover-fuzz; fi
WORK="${FUZZ_WORK_DIR:-$default_work}"
RESULTS="${FUZZ_RESULTS:-$REPO/bench/results/fuzz.md}"
FUZZ="$REPO/fuzz"
if [[ -n "${FUZZ_TARGETS:-}" ]]; then
    read -r -a TARGETS <<<"$FUZZ_TARGETS"
else
    TARGETS=()
    for f in "$FUZZ"/fuzz_targets/*.rs; do TARGETS+=("$(basename "$f" .rs)"); done
fi

log() { printf '[fuzz %s] %s\n' "$(date +%T)" "$*" >&2; }

rm -rf "$WORK"
mkdir -p "$WORK/tmp"
trap 'rm -rf "$WORK"' EXIT

if ! cargo fuzz --version >/dev/null 2>&1; then
    log "cargo-fuzz is missing: cargo install cargo-fuzz --locked"
    cargo install cargo-fuzz --locked
fi

cd "$FUZZ"
log "cargo fuzz build -s none -a"
cargo fuzz build -s none -a

rows=()
crashed=0
for t in "${TARGETS[@]}"; do
    corpus=("$WORK/corpus/$t" "corpus/$t")
    [[ -d "regressions/$t" ]] && corpus+=("regressions/$t")
    mkdir -p "$WORK/corpus/$t" "artifacts/$t"
    before="$(find "artifacts/$t" -type f | wc -l)"
    seeds="$(find "${corpus[@]:1}" -type f | wc -l)"
    log "$t: ${SECS} s from $seeds committed inputs"
    status=0
    # The targets make their temp stores under TMPDIR.
    TMPDIR="$WORK/tmp" cargo fuzz run -s none -a "$t" "${corpus[@]}" -- \
        -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$WORK/$t.log" 2>&1 || status=$?
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$WORK/$t.log" | tail -n1)"
    secs="$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$WORK/$t.log" | tail -n1)"
    [[ -z "$secs" ]] && secs="$SECS"
    cov="$(grep -o 'cov: [0-9]* ft: [0-9]*' "$WORK/$t.log" | tail -n1 | sed 's/cov: \([0-9]*\) ft: \([0-9]*\)/\1 | \2/')"
    [[ -z "$cov" ]] && cov="? | ?"
    grown="$(find "$WORK/corpus/$t" -type f | wc -l)"
    crashes=$(($(find "artifacts/$t" -type f | wc -l) - before))
    if ((status != 0 && crashes == 0)); then crashes=1; fi
    if ((crashes > 0)); then
        crashed=1
        log "$t: CRASH (exit $status); the log's end:"
        tail -n 40 "$WORK/$t.log" >&2
        ls -t "artifacts/$t" | head -n "$crashes" | sed "s|^|    fuzz/artifacts/$t/|" >&2 || true
    fi
    per_sec=$((${execs:-0} / (secs > 0 ? secs : 1)))
    log "$t: ${execs:-?} execs in ${secs} s, $crashes crashes"
    rows+=("| $t | ${secs} | ${execs:-?} | ${per_sec} | $cov | $seeds | $grown | $crashes |")
done

commit="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
dirty="$(git -C "$REPO" status --porcelain -- crates fuzz 2>/dev/null | grep -q . && echo ", with uncommitted changes" || true)"
{
    echo "# Fuzzing"
    echo
    echo "\`FUZZ_SECONDS=$SECS bash bench/fuzz.sh\` on $(date -u +%Y-%m-%d) at $commit$dirty:"
    echo "$(nproc) cores (shared), $(rustc --version | cut -d' ' -f1-2), $(cargo fuzz --version 2>/dev/null | tr -d '\n')."
    echo "Each target: \`cargo fuzz run -s none -a TARGET SCRATCH fuzz/corpus/TARGET [fuzz/regressions/TARGET] --"
    echo "-max_total_time=$SECS -timeout=10 -rss_limit_mb=2048\` (no sanitizer, debug assertions and overflow"
    echo "checks on). Any panic, abort, hang over 10 s or memory over 2 GiB counts as a crash."
    echo
    echo "| target | seconds | execs | execs/s | coverage (edges) | features | committed inputs | new inputs | crashes |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    printf '%s\n' "${rows[@]}"
} >"$WORK/fuzz.md"
cat "$WORK/fuzz.md"
if [[ "$RESULTS" != "-" ]]; then
    mkdir -p "$(dirname "$RESULTS")"
    cp "$WORK/fuzz.md" "$RESULTS"
    log "wrote $RESULTS"
fi
exit "$crashed"
