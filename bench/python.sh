#!/usr/bin/env bash
# Benchmark: start time of a vendored Flask app on gunicorn from its read-only release tree,
# against the same files in a plain directory.
#
#   bash bench/python.sh
#
# Environment:
#   BENCH_RUNS     starts per variant (default 15); the median is reported
#   BENCH_RESULTS  where to write the markdown results (default bench/results/python.md;
#                  set to "-" to print only)
#
# What it does, in one run:
#   1. cargo build --release -p drover (the binary copied into the temp dir)
#   2. `pip install --target vendor flask gunicorn` (cached under target/bench-cache), and a
#      one-route Flask app beside it; pip compiles the vendored modules (timestamp pycs)
#   3. `drover build` of the app into a fresh root, `drover checkout RELEASE` for its tree in
#      the store (where the agent runs it: read-only, every file's time its cache file's)
#   4. three directories with the same files: the release tree; `plain`, a copy with the
#      files' times kept (its pycs valid) and writable by the runner; `stale`, a copy whose
#      files' times are new (so its pycs are stale) and that the runner cannot write
#   5. BENCH_RUNS times each, interleaved: as user nobody, `python3 -m gunicorn -w 1 app:app`
#      in the directory, timed from spawn to the first 200 on GET /, then killed
#   6. writes bench/results/python.md
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUNS="${BENCH_RUNS:-15}"
RESULTS="${BENCH_RESULTS:-$REPO/bench/results/python.md}"
log() { echo "[bench $(date -u +%H:%M:%S)] $*" >&2; }
source "$REPO/bench/lib.sh"

[[ $(id -u) == 0 ]] || { log "run as root (the starts run as nobody through setpriv)"; exit 1; }
command -v python3 >/dev/null || { apt-get update -qq && apt-get install -y -qq python3 python3-pip; }

WORK="$(mktemp -d -t drover-bench-python.XXXXXX)"
chmod 755 "$WORK"
trap 'rm -rf "$WORK"' EXIT
log "cargo build --release (drover)"
cargo build --release -p drover --manifest-path "$REPO/Cargo.toml" >/dev/null 2>&1
DROVER="$WORK/drover"
cp "$REPO/target/release/drover" "$DROVER"
ROOT="$WORK/root"

CACHE="$REPO/target/bench-cache/flask-gunicorn"
if [[ ! -d "$CACHE/vendor/flask" ]]; then
    log "pip install --target vendor flask gunicorn"
    rm -rf "$CACHE"; mkdir -p "$CACHE"
    pip install -q --disable-pip-version-check --target "$CACHE/vendor" flask gunicorn 2>/dev/null
fi
APP="$WORK/app"
mkdir -p "$APP"
cp -a "$CACHE/vendor" "$APP/vendor"
cat > "$APP/app.py" <<'PY'
from flask import Flask

app = Flask(__name__)


@app.get("/")
def index():
    return "hello from flask\n"
PY
cat > "$APP/drover.toml" <<'TOML'
[app]
name = "flask"
version = "1"

[process.web]
command = "exec python3 -m gunicorn -w 1 --bind 127.0.0.1:$PORT app:app"
http = true

[env]
PYTHONPATH = "vendor"
TOML

log "drover build, drover checkout"
RELEASE="$("$DROVER" --root "$ROOT" build "$APP" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["release"])')"
TREE="$("$DROVER" --root "$ROOT" checkout "$RELEASE")"
chmod 755 "$ROOT" "$ROOT/store" "$ROOT/store/trees" 2>/dev/null || true
cp -a "$APP" "$WORK/plain"
chown -R nobody "$WORK/plain"
cp -r "$APP" "$WORK/stale"
chmod -R a-w "$WORK/stale"

python3 - "$RUNS" "$TREE" "$WORK/plain" "$WORK/stale" > "$WORK/times.json" <<'PY'
import json, os, socket, statistics, subprocess, sys, time, urllib.request

runs = int(sys.argv[1])
dirs = {"tree": sys.argv[2], "plain": sys.argv[3], "stale": sys.argv[4]}

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p

def start(d):
    port = free_port()
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "PYTHONPATH": "vendor", "HOME": "/tmp"}
    t0 = time.monotonic()
    p = subprocess.Popen(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
         sys.executable, "-m", "gunicorn", "-w", "1", "--bind", f"127.0.0.1:{port}", "app:app"],
        cwd=d, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = t0 + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as r:
                if r.status == 200:
                    break
        except Exception:
            pass
        if time.monotonic() > deadline:
            p.kill(); raise SystemExit(f"{d}: no answer in 30 s")
        time.sleep(0.002)
    took = time.monotonic() - t0
    p.terminate(); p.wait()
    return took

for d in dirs.values():  # warm-up: the plain copy writes its app.pyc here
    start(d)
times = {k: [] for k in dirs}
for _ in range(runs):
    for k, d in dirs.items():
        times[k].append(start(d))
print(json.dumps({k: statistics.median(v) for k, v in times.items()} | {"runs": runs}))
PY

read -r TREE_S PLAIN_S STALE_S < <(python3 -c 'import json,sys; t=json.load(open(sys.argv[1])); print(t["tree"], t["plain"], t["stale"])' "$WORK/times.json")
REPORT="$(python3 - "$TREE_S" "$PLAIN_S" "$STALE_S" "$RUNS" "$(git -C "$REPO" rev-parse --short HEAD)" <<'PY'
import sys
tree, plain, stale, runs, rev = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5]
print(f"""# Python start time (`bash bench/python.sh`)

A vendored Flask app on gunicorn (`pip install --target vendor flask gunicorn`), started as
user nobody, timed from spawn to its first 200 on GET /; median of {runs} starts each,
interleaved, release build of {rev}.

| the same files in | start | against a plain directory | goal |
|---|---:|---:|---|
| a plain directory (pycs valid, writable) | {plain*1000:.0f} ms | 1.00 | |
| the release tree (read-only; pycs stored by the build as unchecked hash-based) | {tree*1000:.0f} ms | **{tree/plain:.2f}** | within 10 % — {"met" if tree <= plain*1.10 else "NOT met"} |
| a copy with new file times, read-only (pycs stale, compiled at every start) | {stale*1000:.0f} ms | {stale/plain:.2f} | |
""")
PY
)"
echo "$REPORT"
if [[ "$RESULTS" != "-" ]]; then
    mkdir -p "$(dirname "$RESULTS")"
    echo "$REPORT" > "$RESULTS"
    log "wrote $RESULTS"
fi
