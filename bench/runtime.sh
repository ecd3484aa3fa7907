#!/usr/bin/env bash
# Benchmark: what a runtime dependency costs a deploy once the host has it: the example app
# with `[depends]` on a 100 MB runtime release against the same app without it.
#
#   bash bench/runtime.sh
#
# Environment:
#   BENCH_RUNS     timed deploys of each app (default 20); medians reported
#   BENCH_RESULTS  where to write the markdown results (default bench/results/runtime.md;
#                  set to "-" to print only)
#
# What it does, in one run:
#   1. cargo build --release -p drover and examples/hello (binary copied into the temp dir)
#   2. a 100 MB runtime tree (2,000 files of 50 KB, random bytes, plus bin/tool), made a
#      release with `drover import --name rt --version 1`
#   3. apps `bare` and `withrt` (the example server; `withrt` has `[depends] rt = "rt@1"`),
#      two versions each, stored with `drover build`; the agent started; each deployed once
#      (the runtime's tree is then on the host)
#   4. BENCH_RUNS times, interleaved: `drover deploy RELEASE` of the other version of each
#      app (a real switch: new instance, health check, old one stopped), timed by python3
#   5. writes bench/results/runtime.md
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUNS="${BENCH_RUNS:-20}"
RESULTS="${BENCH_RESULTS:-$REPO/bench/results/runtime.md}"
log() { printf '[bench] %s\n' "$*" >&2; }
# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"
build_drover_and_hello

WORK="$(mktemp -d -t drover-bench-runtime.XXXXXX)"
ROOT="$WORK/root"
mkdir -p "$ROOT"
ROOT="$(cd "$ROOT" && pwd -P)"
cp "$REPO/target/release/drover" "$WORK/drover"
DROVER="$WORK/drover"
HELLO_BIN="$REPO/examples/hello/target/release/hello"
AGENT_PID=""
cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    if [[ -n "$AGENT_PID" ]]; then
        for a in bare withrt; do timeout 20 "$DROVER" --root "$ROOT" stop "$a" >/dev/null 2>&1; done
        kill "$AGENT_PID" 2>/dev/null; wait "$AGENT_PID" 2>/dev/null
    fi
    kill_leftovers
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT

log "a 100 MB runtime tree"
python3 - "$WORK/rt" <<'PY'
import os, random, sys
root = sys.argv[1]
rng = random.Random(7)
for i in range(2000):
    d = os.path.join(root, "lib", f"m{i // 100:02}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:04}.so"), "wb") as f:
        f.write(rng.randbytes(50_000))
os.makedirs(os.path.join(root, "bin"), exist_ok=True)
with open(os.path.join(root, "bin", "tool"), "w") as f:
    f.write("#!/bin/sh\necho tool\n")
os.chmod(os.path.join(root, "bin", "tool"), 0o755)
PY
"$DROVER" --root "$ROOT" import "$WORK/rt" --name rt --version 1 >/dev/null

make_app() {  # dir name version depends
    mkdir -p "$1"
    cp "$HELLO_BIN" "$1/hello"
    cat >"$1/drover.toml" <<TOML
[app]
name = "$2"
version = "$3"
$4
[process.web]
command = "./hello"
http = true
[health]
path = "/up"
timeout = "10s"
TOML
}
declare -A REL
for v in 1 2; do
    make_app "$WORK/bare$v" bare "$v" ""
    make_app "$WORK/withrt$v" withrt "$v" $'[depends]\nrt = "rt@1"\n'
    REL[bare$v]="$("$DROVER" --root "$ROOT" build "$WORK/bare$v" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["release"])')"
    REL[withrt$v]="$("$DROVER" --root "$ROOT" build "$WORK/withrt$v" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["release"])')"
done
start_agent
for a in bare withrt; do
    "$DROVER" --root "$ROOT" deploy "${REL[${a}1]}" >/dev/null 2>&1
done

python3 - "$DROVER" "$ROOT" "$RUNS" "${REL[bare1]}" "${REL[bare2]}" "${REL[withrt1]}" "${REL[withrt2]}" > "$WORK/times.json" <<'PY'
import json, statistics, subprocess, sys, time
drover, root, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
rel = {"bare": sys.argv[4:6], "withrt": sys.argv[6:8]}
times = {"bare": [], "withrt": []}
for i in range(runs + 1):
    for app in ("bare", "withrt"):
        r = rel[app][(i + 1) % 2]
        t0 = time.perf_counter()
        subprocess.run([drover, "--root", root, "deploy", r], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if i > 0:
            times[app].append(time.perf_counter() - t0)
print(json.dumps({k: statistics.median(v) for k, v in times.items()}))
PY

REPORT="$(python3 - "$WORK/times.json" "$RUNS" "$(git -C "$REPO" rev-parse --short HEAD)" <<'PY'
import json, sys
t = json.load(open(sys.argv[1])); runs, rev = sys.argv[2], sys.argv[3]
bare, withrt = t["bare"] * 1000, t["withrt"] * 1000
d = withrt - bare
print(f"""# Runtime dependency overhead (`bash bench/runtime.sh`)

`drover deploy RELEASE` of the example app (a real switch: new instance, health check, old
one stopped), median of {runs} deploys each, interleaved; release build of {rev}. The
runtime release (`drover import`: 2,000 files, 100 MB) is on the host already.

| app | deploy | |
|---|---:|---|
| without dependencies | {bare:.1f} ms | |
| with `[depends] rt = "rt@1"` (100 MB) | {withrt:.1f} ms | |
| **overhead** | **{d:+.1f} ms** | goal under 20 ms — {"met" if d < 20 else "NOT met"} |
""")
PY
)"
echo "$REPORT"
if [[ "$RESULTS" != "-" ]]; then
    mkdir -p "$(dirname "$RESULTS")"
    echo "$REPORT" > "$RESULTS"
    log "wrote $RESULTS"
fi
