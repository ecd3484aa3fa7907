#!/usr/bin/env bash
# Benchmark: the drover host agent — deploy / rollback latency and idle memory.
#
#   bash bench/agent.sh
#
# Environment:
#   BENCH_RUNS     timed runs per measurement (default 20)
#   BENCH_RESULTS  where to write the markdown results (default bench/results/agent.md;
#                  set to "-" to print only)
#   BENCH_KEEP     set to 1 to keep the temp dir (agent.log, app logs) for poking at it
#
# What it does, in one run:
#   1. cargo build --release -p drover and examples/hello; the drover binary is copied into
#      the temp dir so concurrent rebuilds of target/ cannot swap it mid-run
#   2. baseline: spawns `PORT=<free port> ./hello` directly and times until GET /up answers
#      200 (1 ms polling), BENCH_RUNS times: the app's own start-up time
#   3. fresh root (mktemp -d), `drover --root R agent &`, waits for `drover status`
#   4. stores hello v1 and v2 (`drover build DIR --json`), deploys each once (warm-up), then
#      times `drover deploy RELEASE_ID` BENCH_RUNS times, alternating v1/v2 (every deploy is
#      a real switch: new instance started, health-checked, old one stopped)
#   5. deploys v1 then v2, then times `drover rollback hello` BENCH_RUNS times (each one
#      returns to the other version)
#   6. stops hello, builds and deploys app0..app9 (one instance each), idles 2 s, reads the
#      agent's VmRSS / VmHWM from /proc and sums VmRSS of the apps' processes
#   7. writes bench/results/agent.md
# On exit (trap): `drover stop` for every app, the agent is killed, and any process still
# tagged with this root (DROVER_AGENT_ROOT) is killed and reported.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUNS="${BENCH_RUNS:-20}"
RESULTS="${BENCH_RESULTS:-$REPO/bench/results/agent.md}"
KEEP="${BENCH_KEEP:-0}"
SCRIPT_START=$(date +%s.%N)

log() { printf '[bench] %s\n' "$*" >&2; }

# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"
build_drover_and_hello

WORK="$(mktemp -d -t drover-bench-agent.XXXXXX)"
ROOT="$WORK/root"
mkdir -p "$ROOT"
ROOT="$(cd "$ROOT" && pwd -P)"   # the agent tags its processes with the canonical root
cp "$REPO/target/release/drover" "$WORK/drover"
DROVER="$WORK/drover"
HELLO_BIN="$REPO/examples/hello/target/release/hello"
AGENT_PID=""
APPS=(hello app0 app1 app2 app3 app4 app5 app6 app7 app8 app9)


cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    if [[ -n "$AGENT_PID" ]] && kill -0 "$AGENT_PID" 2>/dev/null; then
        for a in "${APPS[@]}"; do  # an app never deployed just answers "unknown app"
            timeout 20 "$DROVER" --root "$ROOT" stop "$a" >/dev/null 2>&1
        done
        kill "$AGENT_PID" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$AGENT_PID" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$AGENT_PID" 2>/dev/null && kill -KILL "$AGENT_PID" 2>/dev/null
        wait "$AGENT_PID" 2>/dev/null
    fi
    kill_leftovers
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- app dirs --------------------------------------------------------------------
make_app() {  # dir, name
    mkdir -p "$1"
    cp "$HELLO_BIN" "$1/hello"
    cat >"$1/drover.toml" <<EOF
[app]
name = "$2"
version = "1"
[process.web]
command = "./hello"
http = true
instances = 1
[health]
path = "/up"
timeout = "10s"
EOF
}
make_app "$WORK/apps/hello" hello
for i in $(seq 0 9); do make_app "$WORK/apps/app$i" "app$i"; done

# ---- the measurements (python3 for timing and statistics) ---------------------------
cat >"$WORK/bench.py" <<'PY'
import json, math, os, signal, socket, statistics, subprocess, sys, time

drover, root, work, runs, agent_pid = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
out = {}
now = time.perf_counter

def log(msg):
    print(f"[bench] {msg}", file=sys.stderr, flush=True)

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p

def up_200(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"GET /up HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False

def status_of(pid):
    d = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            d[k] = v.strip()
    return d

def kib(pid, key="VmRSS"):
    try:
        return int(status_of(pid).get(key, "0 kB").split()[0])
    except OSError:
        return 0

def stats(xs):
    s = sorted(xs)
    return {
        "n": len(s),
        "median": statistics.median(s),
        "p90": s[math.ceil(0.9 * len(s)) - 1],  # nearest rank
        "min": s[0],
        "max": s[-1],
        "samples": xs,
    }

def drover_cmd(*args, timeout=60):
    """Runs drover; returns (wall seconds, stdout, [(t, event line)]). Fails on non-zero exit."""
    t0 = now()
    p = subprocess.Popen([drover, "--root", root, *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    events = []
    for line in p.stderr:  # drover prints agent events on stderr (unbuffered)
        events.append((now() - t0, line.strip()))
    stdout = p.stdout.read()
    rc = p.wait(timeout=timeout)
    wall = now() - t0
    if rc != 0:
        raise SystemExit(f"drover {' '.join(args)} exited {rc}:\n" + "\n".join(e for _, e in events))
    return wall, stdout, events

# 1. baseline: the app on its own -------------------------------------------------------
log(f"1. app start-up on its own ({runs} runs)")
app_dir = os.path.join(work, "apps", "hello")
base = []
for _ in range(runs):
    port = free_port()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PORT": str(port)}
    t0 = now()
    p = subprocess.Popen(["./hello"], cwd=app_dir, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = t0 + 10
    while not up_200(port):
        if now() > deadline or p.poll() is not None:
            p.kill(); p.wait()
            raise SystemExit("hello did not answer /up within 10 s")
        time.sleep(0.001)
    base.append(now() - t0)
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=10)
    time.sleep(0.05)
out["baseline"] = stats(base)

# round-trip floor: `drover status` (CLI start + socket round trip, no process work)
floor = []
for _ in range(runs):
    floor.append(drover_cmd("status", "--json")[0])
out["status"] = stats(floor)

out["agent_rss_start_kib"] = kib(agent_pid)

# 2. deploy -----------------------------------------------------------------------------
def build(version):
    _, so, _ = drover_cmd("build", app_dir, "--version", version, "--json")
    return json.loads(so)["release"]

rel = {"1": build("1"), "2": build("2")}
out["releases"] = rel
log("2. warm-up deploys")
for v in ("1", "2"):
    drover_cmd("deploy", rel[v], "--json")
    time.sleep(0.3)

PHASES = [  # (name, prefix of the event that ends the phase)
    ("CLI start + connect + agent bookkeeping", "deploying"),
    ("materialise release", "starting"),
    ("spawn + health wait", "web.0 is healthy"),
    ("switch (rename current, record)", "generation"),
]

def phases(events, wall, first_prefix):
    ts = {}
    for t, e in events:
        for name, prefix in [(PHASES[0][0], first_prefix)] + PHASES[1:]:
            if e.startswith(prefix) and name not in ts:
                ts[name] = t
    prev, res = 0.0, {}
    for name, _ in PHASES:
        if name in ts:
            res[name] = ts[name] - prev
            prev = ts[name]
    res["stop old (signal) + reply + CLI exit"] = wall - prev
    return res

log(f"2. timing `drover deploy RELEASE_ID` ({runs} runs, alternating v1/v2)")
dep, dep_ph, versions = [], [], []
for k in range(runs):
    v = "1" if k % 2 == 0 else "2"
    wall, so, ev = drover_cmd("deploy", rel[v], "--json")
    st = json.loads(so)
    if st.get("version") != v or st.get("state") != "running":
        raise SystemExit(f"deploy of v{v} ended as {st}")
    dep.append(wall)
    dep_ph.append(phases(ev, wall, "deploying"))
    versions.append(st["version"])
    time.sleep(0.2)  # let the old instance drain
out["deploy"] = stats(dep)
out["deploy_phases"] = {name: statistics.median(p[name] for p in dep_ph if name in p)
                        for name in dep_ph[0]}

# 3. rollback ---------------------------------------------------------------------------
drover_cmd("deploy", rel["1"], "--json"); time.sleep(0.2)
drover_cmd("deploy", rel["2"], "--json"); time.sleep(0.2)
log(f"3. timing `drover rollback hello` ({runs} runs)")
rb, rb_ph, rb_versions = [], [], []
expect = "1"
for k in range(runs):
    wall, so, ev = drover_cmd("rollback", "hello", "--json")
    st = json.loads(so)
    if st.get("version") != expect or st.get("state") != "running":
        raise SystemExit(f"rollback {k} expected v{expect}, got {st}")
    rb.append(wall)
    rb_ph.append(phases(ev, wall, "rolling back"))
    rb_versions.append(st["version"])
    expect = "2" if expect == "1" else "1"
    time.sleep(0.2)
out["rollback"] = stats(rb)
out["rollback_versions"] = "".join(rb_versions)
out["rollback_phases"] = {name: statistics.median(p[name] for p in rb_ph if name in p)
                          for name in rb_ph[0]}
out["agent_rss_after_timing_kib"] = kib(agent_pid)

# 4. idle RSS with 10 apps ----------------------------------------------------------------
drover_cmd("stop", "hello")
log("4. deploying app0..app9")
for i in range(10):
    d = os.path.join(work, "apps", f"app{i}")
    _, so, _ = drover_cmd("deploy", d, "--json")  # builds, stores, deploys
    st = json.loads(so)
    if st.get("state") != "running":
        raise SystemExit(f"app{i}: {st}")
_, so, _ = drover_cmd("status", "--json")
running = [a["app"] for a in json.loads(so) if a["state"] == "running"]
out["running_apps"] = running
time.sleep(2.0)
ast = status_of(agent_pid)
out["agent_rss_kib"] = int(ast["VmRSS"].split()[0])
out["agent_hwm_kib"] = int(ast["VmHWM"].split()[0])
out["agent_threads"] = int(ast["Threads"])
want = b"DROVER_AGENT_ROOT=" + root.encode()
procs = []
for p in os.listdir("/proc"):
    if not p.isdigit():
        continue
    try:
        with open(f"/proc/{p}/environ", "rb") as f:
            if want not in f.read().split(b"\0"):
                continue
        s = status_of(p)
        procs.append((s["Name"], int(s.get("VmRSS", "0 kB").split()[0])))
    except OSError:
        pass
out["app_procs"] = len(procs)
out["app_procs_by_name"] = {n: sum(1 for m, _ in procs if m == n) for n in sorted({m for m, _ in procs})}
out["apps_rss_kib"] = sum(r for _, r in procs)
out["app_rss_by_name_kib"] = {n: sum(r for m, r in procs if m == n) for n in out["app_procs_by_name"]}
print(json.dumps(out, indent=1))
PY

start_agent

timeout 900 python3 "$WORK/bench.py" "$DROVER" "$ROOT" "$WORK" "$RUNS" "$AGENT_PID" >"$WORK/results.json"

# ---- report ----------------------------------------------------------------------------
CPU=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
RAM_GB=$(awk '/MemTotal/ {printf "%.1f", $2/1048576}' /proc/meminfo)
REV=$(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(cd "$REPO" && { git diff --quiet HEAD -- crates 2>/dev/null && echo "" || echo " (crates/ has uncommitted changes)"; })
SCRIPT_SECS=$(python3 -c "import time; print(round(time.time() - $SCRIPT_START))")

REPORT=$(python3 - "$WORK/results.json" "$RUNS" <<PY
import json, sys
r = json.load(open(sys.argv[1])); runs = sys.argv[2]
ms = lambda s: f"{s * 1000:.1f}"
mib = lambda k: f"{k / 1024:.1f}"
b, d, rb, st = r["baseline"], r["deploy"], r["rollback"], r["status"]
ok = lambda c: "yes" if c else "**no**"
dov = d["median"] - b["median"]; rov = rb["median"] - b["median"]
print(f"""# drover agent: deploy / rollback latency and idle memory

- Date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')
- Machine: $CPU, $(nproc) CPUs, ${RAM_GB} GiB RAM; $(uname -sr)
- drover: release build of commit $REV$DIRTY; app: examples/hello (release build), one
  \`web\` instance with an HTTP health check on \`/up\`
- {runs} timed runs each; p90 is nearest-rank (the {int(runs) * 9 // 10}th of {runs} sorted). Wall times are measured
  by python3 around the whole \`drover\` process (fork/exec to exit).

| Measure | median | p90 | min | max | goal | met |
|---|---:|---:|---:|---:|---|---|
| 1. app start-up on its own (\`PORT=… ./hello\` → \`GET /up\` 200, 1 ms polling) | {ms(b['median'])} ms | {ms(b['p90'])} ms | {ms(b['min'])} ms | {ms(b['max'])} ms | (baseline) | |
| \`drover status --json\` (CLI + agent round trip, for reference) | {ms(st['median'])} ms | {ms(st['p90'])} ms | {ms(st['min'])} ms | {ms(st['max'])} ms | | |
| 2. \`drover deploy RELEASE_ID\` (stored release, v1↔v2 switch) | {ms(d['median'])} ms | {ms(d['p90'])} ms | {ms(d['min'])} ms | {ms(d['max'])} ms | | |
| 2. deploy overhead = deploy median − start-up median | **{ms(dov)} ms** | | | | < 100 ms | {ok(dov < 0.1)} |
| 3. \`drover rollback hello\` (alternating v1↔v2) | {ms(rb['median'])} ms | {ms(rb['p90'])} ms | {ms(rb['min'])} ms | {ms(rb['max'])} ms | | |
| 3. rollback overhead = rollback median − start-up median | **{ms(rov)} ms** | | | | < 100 ms | {ok(rov < 0.1)} |
| 4. agent VmRSS, idle 2 s with {len(r['running_apps'])} apps running | **{mib(r['agent_rss_kib'])} MiB** | | | | < 30 MB | {ok(r['agent_rss_kib'] * 1024 < 30e6)} |
| 4. apps' processes, total VmRSS (context) | {mib(r['apps_rss_kib'])} MiB | | | | | |

Memory details: agent VmRSS {mib(r['agent_rss_start_kib'])} MiB right after start (no apps),
{mib(r['agent_rss_after_timing_kib'])} MiB after the {2 * int(runs) + 4} deploys/rollbacks of hello, {mib(r['agent_rss_kib'])} MiB idle with
app0..app9 running (peak VmHWM {mib(r['agent_hwm_kib'])} MiB, {r['agent_threads']} threads). The apps' total is
{r['app_procs']} processes tagged with this root: {', '.join(f"{v}× {k} ({mib(r['app_rss_by_name_kib'][k])} MiB)" for k, v in r['app_procs_by_name'].items())}.
Rollback versions returned to, in order: {r['rollback_versions']}.

Where a deploy's time goes (median per phase, from the timestamps at which the CLI prints the
agent's progress events on stderr):

| Phase | deploy | rollback |
|---|---:|---:|""")
for name in r["deploy_phases"]:
    print(f"| {name} | {ms(r['deploy_phases'][name])} ms | {ms(r['rollback_phases'].get(name, float('nan')))} ms |")
hw = r["deploy_phases"].get("spawn + health wait", 0.0)
rest = d["median"] - hw
print(f"""| **total (median wall)** | {ms(d['median'])} ms | {ms(rb['median'])} ms |

Notes on this run:
- "spawn + health wait" ({ms(hw)} ms) is {ms(hw - b['median'])} ms more than the app's own start-up
  ({ms(b['median'])} ms): the agent's health wait sleeps 10 ms between probes, so a first probe
  that comes too early costs a full 10 ms; the instance is also started through \`sh -c\`.
- Everything else in a deploy (CLI, release resolution, materialise, fsync'd state writes,
  switch, reply) takes {ms(rest)} ms in the median.
- The state writes are fsync'd (generation file, \`current\` + its directory, events log),
  so deploy/rollback times follow the disk's fsync latency; on a busy disk the switch phase
  can grow by 10-20 ms.

Raw samples (ms):
- start-up: {' '.join(ms(x) for x in b['samples'])}
- deploy: {' '.join(ms(x) for x in d['samples'])}
- rollback: {' '.join(ms(x) for x in rb['samples'])}

Whole script (cargo builds, all runs, cleanup excluded): $SCRIPT_SECS s.

Reproduce:

\`\`\`
bash bench/agent.sh
\`\`\`

(\`BENCH_RUNS\` sets the runs per measurement, default 20; \`BENCH_KEEP=1\` keeps the temp
root with agent.log and the app logs.)""")
PY
)

echo "$REPORT"
if [[ "$RESULTS" != "-" ]]; then
    mkdir -p "$(dirname "$RESULTS")"
    printf '%s\n' "$REPORT" >"$RESULTS"
    log "wrote $RESULTS"
fi
