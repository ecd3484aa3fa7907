#!/usr/bin/env bash
# Benchmark: drover's built-in HTTP reverse proxy against nginx and HAProxy, TLS termination
# against nginx, plus errors and switch time during deploys under load.
#
#   bash bench/proxy.sh
#
# Runs as root (installs wrk, nginx and haproxy with apt-get when they are missing).
#
# Environment:
#   BENCH_DURATION  seconds of each measured wrk run in part 1 (default 15)
#   BENCH_WARMUP    seconds of the warm-up wrk run before each (default 3)
#   BENCH_ROUNDS    rounds of part 1; the order of nginx/drover alternates per round so
#                   neither always runs first; the median of the rounds is reported (default 3)
#   BENCH_SWITCHES  deploys under load in part 2 (default 100)
#   BENCH_SWITCH_RUNS  deploys timed in part 3 (default 20)
#   BENCH_RESULTS   where to write the markdown results (default bench/results/proxy.md;
#                   set to "-" to print only)
#   BENCH_KEEP      set to 1 to keep the temp dir (agent.log, nginx error.log, wrk outputs)
#   BENCH_QUIET_MAX seconds to wait, in all, for other processes to go quiet before the part-1
#                   and part-4 runs (default 120); the CPU others used is reported anyway
#   BENCH_PERF      0 to skip the perf profile (default: on when `perf` works)
#   BENCH_STRACE    0 to skip the strace of one deploy (default: on when `strace` exists)
#   BENCH_TLS       0 to skip part 4, TLS termination (default 1)
#   BENCH_TLS_DURATION  seconds of each measured wrk run in part 4 (default 10)
#   BENCH_TLS_ROUNDS    rounds of part 4's wrk runs, nginx/drover order alternating (default 2)
#   BENCH_IDLE_CONNS    idle TLS connections held open against each proxy in part 4 (default
#                   10000; the fd limit, `ulimit -Hn`, must exceed it)
#   BENCH_BODY      bytes of the hello's response body for `/`, the same for every target
#                   (GREETING is padded to it; default 100)
#
# What it does, in one run:
#   0. cargo build --release -p drover and examples/hello (the drover binary is copied into
#      the temp dir so concurrent rebuilds of target/ cannot swap it mid-run); fresh root
#      (mktemp -d), fresh free ports; `drover agent` in the background; hello v1 and v2
#      stored once with `drover build --version N --json`; v1 deployed (one `web` instance,
#      [proxy] port = a fresh port)
#   1. throughput / latency, `wrk -t2 -c64 -d15s --latency http://127.0.0.1:PORT/` after a
#      3 s warm-up run of the same command (100-byte bodies: GREETING is padded), against:
#        - hello started directly by this script (PORT=P ./hello): backend A, no proxy
#        - drover's own hello instance, directly (its port from `drover status --json`):
#          backend B, no proxy
#        - nginx (minimal nginx.conf in the temp dir, upstream keepalive 64) -> backend A
#        - HAProxy (minimal haproxy.cfg in the temp dir: nbthread 2, mode http,
#          option http-keep-alive, http-reuse always) -> backend A
#        - drover's proxy -> backend B (its own instance of the same hello binary)
#      The three proxies' order rotates per round. CPU time of wrk, of the proxy (nginx
#      workers / haproxy's process / the agent's drover-proxy threads) and of the backend is
#      read from /proc before and after every measured run.
#   2. errors during switches: `wrk -t2 -c20 -d120s --latency` against drover's proxy, while
#      100 `drover deploy RELEASE_ID` alternate v2/v1 back to back; wrk is stopped with
#      SIGINT (it prints its summary) when they are done. Reports wrk's non-2xx/3xx and
#      socket errors and the delta of drover's own responses_5xx (`drover status --json`).
#   3. switch time: a python3 client (one keep-alive http.client connection, its own
#      process) sends GET / back to back and records time.monotonic_ns() before sending and
#      after reading each response plus the version and pid in the body; meanwhile 20
#      `drover deploy` alternate v2/v1 (0.5 s apart) and the time each of their stderr lines
#      arrives is recorded with the same clock. For every switch: healthy line -> first
#      response from the new instance, healthy line -> last request sent that the old
#      instance answered, the client-side gap between the last old and the first new
#      response, and the overlap (old responses after the first new one); plus the agent's own
#      "traffic moved N µs after it was healthy" from its live event, when it reports it.
#   1b. (perf available) one more 12 s wrk run each against nginx and drover's proxy with
#      `perf record -a -F 999` for 8 s of it: CPU time per request by process and
#      kernel/user, and the proxies' hottest symbols
#   3b. (strace available) one more deploy with the agent under `strace -f -ttt -T`: the
#      syscalls the agent makes between sending "web.0 is healthy" and "generation N is
#      live" (the route swap itself is in memory, between the two)
#   4. TLS termination (BENCH_TLS=1): a CA and a certificate for bench.test made with the
#      openssl CLI; nginx (`listen P ssl http2`, or `ssl` + `http2 on` from 1.25.1) -> backend
#      A with upstream keepalive, and drover's proxy with `tls = { cert, key }` for a second
#      app, tlshello (its own instance; skipped, saying so, when `drover build` rejects the
#      `tls` key). bench.test resolves to 127.0.0.1 (a line added to /etc/hosts when it does
#      not, removed on exit): (a) `wrk -t2 -c64 --latency https://bench.test:P/`, (b) new TLS
#      connections per second, the same with `-H "Connection: close"`, (c) a python3 asyncio
#      client opens BENCH_IDLE_CONNS TLS connections to each proxy, completes the handshakes
#      and holds them idle; the proxy's RSS (nginx: the sum over its workers; drover: the
#      agent) is read before and after.
#   5. writes bench/results/proxy.md
# On exit (trap): wrk, the switch client, nginx and haproxy (by pid) are stopped, the directly
# started hello is killed by pid, `drover stop hello` (and tlshello), the agent is killed, the
# /etc/hosts line is removed (by exact match) if this run added it, and any process still
# tagged with this root (DROVER_AGENT_ROOT=<root>) is killed and reported.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DURATION="${BENCH_DURATION:-15}"
WARMUP="${BENCH_WARMUP:-3}"
ROUNDS="${BENCH_ROUNDS:-3}"
SWITCHES="${BENCH_SWITCHES:-100}"
SWITCH_RUNS="${BENCH_SWITCH_RUNS:-20}"
RESULTS="${BENCH_RESULTS:-$REPO/bench/results/proxy.md}"
KEEP="${BENCH_KEEP:-0}"
QUIET_MAX="${BENCH_QUIET_MAX:-120}"
DO_PERF="${BENCH_PERF:-1}"
DO_STRACE="${BENCH_STRACE:-1}"
DO_TLS="${BENCH_TLS:-1}"
TLS_DURATION="${BENCH_TLS_DURATION:-10}"
TLS_ROUNDS="${BENCH_TLS_ROUNDS:-2}"
IDLE_CONNS="${BENCH_IDLE_CONNS:-10000}"
BODY="${BENCH_BODY:-100}"
SCRIPT_START=$(date +%s.%N)

log() { printf '[bench] %s\n' "$*" >&2; }

if [[ $(id -u) != 0 ]]; then
    log "run as root (it installs wrk, nginx and haproxy when missing)"; exit 1
fi

# ---- tools -------------------------------------------------------------------------
if ! command -v wrk >/dev/null || ! command -v nginx >/dev/null || ! command -v haproxy >/dev/null; then
    log "installing wrk, nginx and haproxy"
    apt-get update >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y wrk nginx haproxy >/dev/null
fi
NGINX_BIN=$(command -v nginx)
WRK_BIN=$(command -v wrk)
HAPROXY_BIN=$(command -v haproxy)
if [[ "$DO_TLS" == 1 ]] && ! command -v openssl >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y openssl >/dev/null
fi
# The idle TLS connections need file descriptors in the client, nginx's workers and the
# agent: the soft limit is raised to the hard one for everything started from here.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [[ "$DO_TLS" == 1 ]] && (( $(ulimit -n) < IDLE_CONNS + 1000 )); then
    log "the fd limit ($(ulimit -n)) is too low for $IDLE_CONNS idle connections; set BENCH_IDLE_CONNS"
    exit 1
fi

# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"
build_drover_and_hello
# what was built (read now: crates/ may change while the benchmark runs)
REV=$(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(cd "$REPO" && { git diff --quiet HEAD -- crates examples 2>/dev/null && echo "" || echo " (crates/ or examples/ had uncommitted changes when built)"; })

WORK="$(mktemp -d -t drover-bench-proxy.XXXXXX)"
WORK="$(cd "$WORK" && pwd -P)"
ROOT="$WORK/root"
mkdir -p "$ROOT"
ROOT="$(cd "$ROOT" && pwd -P)"   # the agent tags its processes with the canonical root
cp "$REPO/target/release/drover" "$WORK/drover"
DROVER="$WORK/drover"
cp "$REPO/examples/hello/target/release/hello" "$WORK/hello"
AGENT_PID=""
NGINX_PID=""
HELLO_PID=""
HAPROXY_PID=""
BENCH_PID=""
HOSTS_LINE="127.0.0.1 bench.test"
HOSTS_ADDED=0
NGINX_LISTEN_TLS=""


# Live children of $1 (nginx workers of our master).
children_of() {
    local p
    for p in /proc/[0-9]*; do
        [[ -r "$p/stat" ]] || continue
        awk -v want="$1" '{ sub(/^.*\) /, ""); if ($2 == want && $1 != "Z") print FILENAME }' \
            "$p/stat" 2>/dev/null | sed 's#/proc/##; s#/stat##'
    done
}

stop_pid() {  # pid [name]: SIGTERM, wait up to 5 s, SIGKILL
    local pid="$1" i
    [[ -n "$pid" ]] || return 0
    kill -0 "$pid" 2>/dev/null || return 0
    kill "$pid" 2>/dev/null
    for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    # the python driver: its own trap-free children (wrk, the switch client) are in its
    # process group; it kills them itself on exit, this is for an interrupted run
    if [[ -n "$BENCH_PID" ]] && kill -0 "$BENCH_PID" 2>/dev/null; then
        kill -TERM -- "-$BENCH_PID" 2>/dev/null || kill "$BENCH_PID" 2>/dev/null
        sleep 0.5
        kill -KILL -- "-$BENCH_PID" 2>/dev/null
        wait "$BENCH_PID" 2>/dev/null
    fi
    if [[ -n "$NGINX_PID" ]]; then
        local workers
        workers=$(children_of "$NGINX_PID" | tr '\n' ' ')
        stop_pid "$NGINX_PID"
        # shellcheck disable=SC2086
        [[ -n "${workers// /}" ]] && kill -KILL $workers 2>/dev/null
    fi
    stop_pid "$HAPROXY_PID"
    stop_pid "$HELLO_PID"
    if [[ -n "$AGENT_PID" ]] && kill -0 "$AGENT_PID" 2>/dev/null; then
        timeout 20 "$DROVER" --root "$ROOT" stop hello >/dev/null 2>&1
        timeout 20 "$DROVER" --root "$ROOT" stop tlshello >/dev/null 2>&1
        stop_pid "$AGENT_PID"
    fi
    if [[ "$HOSTS_ADDED" == 1 ]]; then
        # in place (the file may be a bind mount): every line but ours, by exact match
        local kept
        kept=$(grep -vxF "$HOSTS_LINE" /etc/hosts)
        printf '%s\n' "$kept" >/etc/hosts
        log "removed \"$HOSTS_LINE\" from /etc/hosts"
    fi
    kill_leftovers
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_ports() {  # n: n distinct free TCP ports on 127.0.0.1 (held together while chosen)
    python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}
read -r BACKEND_PORT NGINX_PORT PROXY_PORT HAPROXY_PORT NGINX_TLS_PORT TLS_PORT TLS_HTTP_PORT \
    < <(free_ports 7)
log "ports: backend A $BACKEND_PORT, nginx $NGINX_PORT, drover proxy $PROXY_PORT, haproxy $HAPROXY_PORT"
[[ "$DO_TLS" == 1 ]] && log "TLS ports: nginx $NGINX_TLS_PORT, drover $TLS_PORT (http_port $TLS_HTTP_PORT)"

# The body of `/` is "GREETING (version 1, pid NNNNN)\n": GREETING is padded so that the
# body is BODY bytes for every target (with 5-digit pids; a byte more or less with others).
# Backend A says version 1 too, like drover's instances.
GREETING=$(python3 -c "import sys; n = int(sys.argv[1]) - len(' (version 1, pid 12345)\n'); print('hello' + '-' * max(0, n - 5))" "$BODY")
export GREETING

# ---- backend A: hello started directly ----------------------------------------------
mkdir -p "$WORK/direct"
(cd "$WORK/direct" && PORT="$BACKEND_PORT" DROVER_VERSION=1 exec "$WORK/hello") \
    >"$WORK/direct/hello.log" 2>&1 &
HELLO_PID=$!

# ---- TLS material (part 4): a CA and a certificate for bench.test ----------------------
TLSD="$WORK/tls"
if [[ "$DO_TLS" == 1 ]]; then
    mkdir -p "$TLSD"
    (
        cd "$TLSD"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
            -subj "/CN=drover bench CA" -keyout ca-key.pem -out ca.pem
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -subj "/CN=bench.test" -keyout key.pem -out req.pem
        printf 'subjectAltName=DNS:bench.test\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >ext.cnf
        openssl x509 -req -in req.pem -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 2 \
            -extfile ext.cnf -out cert.pem
    ) >"$WORK/openssl.log" 2>&1 || { log "openssl failed:"; cat "$WORK/openssl.log" >&2; exit 1; }
    # wrk takes the TLS server name (SNI) and the address from the URL: bench.test must resolve
    if ! getent hosts bench.test >/dev/null; then
        printf '%s\n' "$HOSTS_LINE" >>/etc/hosts
        HOSTS_ADDED=1
        log "added \"$HOSTS_LINE\" to /etc/hosts (removed on exit)"
    fi
fi
NGINX_TLS_SERVER=""
if [[ "$DO_TLS" == 1 ]]; then
    # `http2 on;` exists from nginx 1.25.1; before it, http2 is a parameter of listen
    NGINX_VNUM=$("$NGINX_BIN" -v 2>&1 | sed -n 's#.*nginx/\([0-9.]*\).*#\1#p')
    if printf '%s\n1.25.1\n' "$NGINX_VNUM" | sort -V -C && [[ "$NGINX_VNUM" != 1.25.1 ]]; then
        NGINX_LISTEN_TLS="listen 127.0.0.1:$NGINX_TLS_PORT ssl http2;"
    else
        NGINX_LISTEN_TLS="listen 127.0.0.1:$NGINX_TLS_PORT ssl; http2 on;"
    fi
    NGINX_TLS_SERVER="
    server {
        $NGINX_LISTEN_TLS
        server_name bench.test;
        ssl_certificate $TLSD/cert.pem;
        ssl_certificate_key $TLSD/key.pem;
        keepalive_timeout 900s;
        client_header_timeout 900s;
        keepalive_requests 100000000;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }
    }"
fi

# ---- nginx -> backend A --------------------------------------------------------------
NG="$WORK/nginx"
mkdir -p "$NG/tmp"
cat >"$NG/nginx.conf" <<EOF
# minimal reverse proxy for the benchmark
daemon off;
user root;
worker_processes auto;
worker_rlimit_nofile $(ulimit -n);
pid $NG/nginx.pid;
error_log $NG/error.log warn;
events { worker_connections $(( $(ulimit -n) - 100 )); }
http {
    access_log off;
    client_body_temp_path $NG/tmp/body;
    proxy_temp_path $NG/tmp/proxy;
    fastcgi_temp_path $NG/tmp/fastcgi;
    uwsgi_temp_path $NG/tmp/uwsgi;
    scgi_temp_path $NG/tmp/scgi;
    upstream backend {
        server 127.0.0.1:$BACKEND_PORT;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }$NGINX_TLS_SERVER
}
EOF
"$NGINX_BIN" -t -q -p "$NG" -c "$NG/nginx.conf" -e "$NG/error.log"
"$NGINX_BIN" -p "$NG" -c "$NG/nginx.conf" -e "$NG/error.log" >"$NG/stdout.log" 2>&1 &
NGINX_PID=$!

# ---- haproxy -> backend A --------------------------------------------------------------
HA="$WORK/haproxy"
mkdir -p "$HA"
cat >"$HA/haproxy.cfg" <<EOF
# minimal reverse proxy for the benchmark
global
    nbthread 2
    maxconn 4096
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 60s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 75s
frontend bench
    bind 127.0.0.1:$HAPROXY_PORT
    default_backend hello
backend hello
    server a 127.0.0.1:$BACKEND_PORT
EOF
"$HAPROXY_BIN" -c -q -f "$HA/haproxy.cfg"
"$HAPROXY_BIN" -db -f "$HA/haproxy.cfg" >"$HA/haproxy.log" 2>&1 &
HAPROXY_PID=$!

# ---- the agent and the app ------------------------------------------------------------
make_app() {  # dir
    mkdir -p "$1"
    cp "$WORK/hello" "$1/hello"
    cat >"$1/drover.toml" <<EOF
[app]
name = "hello"
version = "1"
[process.web]
command = "./hello"
http = true
instances = 1
[health]
path = "/up"
timeout = "10s"
[env]
GREETING = "$GREETING"
[proxy]
port = $PROXY_PORT
EOF
}
make_app "$WORK/apps/hello"
# part 4: a second app behind drover's TLS listener (its own instance of the same binary)
if [[ "$DO_TLS" == 1 ]]; then
    make_app "$WORK/apps/tlshello"
    python3 - "$WORK/apps/tlshello/drover.toml" "$TLS_PORT" "$TLSD" "$TLS_HTTP_PORT" "$IDLE_CONNS" <<'PY'
import sys
path, port, tlsd, http_port, idle = sys.argv[1:6]
s = open(path).read().replace('name = "hello"', 'name = "tlshello"')
s = s[:s.index("[proxy]")] + f"""[proxy]
port = {port}
hosts = ["bench.test"]
tls = {{ cert = "{tlsd}/cert.pem", key = "{tlsd}/key.pem" }}
http_port = {http_port}
idle_timeout = "900s"
header_timeout = "900s"
max_connections = {int(idle) + 2000}
"""
open(path, "w").write(s)
PY
fi

start_agent

# wait (bounded) for backend A and nginx
wait_http() {  # port name log pid
    local i
    for i in $(seq 200); do  # up to 20 s
        if curl -fsS -o /dev/null --noproxy '*' --max-time 1 "http://127.0.0.1:$1/" 2>/dev/null; then
            return 0
        fi
        kill -0 "$4" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$4" 2>/dev/null; then
        log "$2 (pid $4) on port $1 does not answer: $(ps -o stat=,wchan=,etime= -p "$4" 2>/dev/null)"
        curl -sS -o /dev/null --noproxy '*' --max-time 2 "http://127.0.0.1:$1/" 2>&1 | sed 's/^/[bench]   curl: /' >&2 || true
    else
        local st=0
        wait "$4" || st=$?
        log "$2 (pid $4) exited with status $st"
    fi
    log "its log:"
    cat "$3" >&2 || true
    exit 1
}
wait_http "$BACKEND_PORT" "hello (backend A)" "$WORK/direct/hello.log" "$HELLO_PID"
wait_http "$NGINX_PORT" "nginx" "$NG/error.log" "$NGINX_PID"
wait_http "$HAPROXY_PORT" "haproxy" "$HA/haproxy.log" "$HAPROXY_PID"

# ---- the measurements (python3 drives wrk, drover and the switch client) ----------------
cat >"$WORK/client.py" <<'PY'
# Tight keep-alive GET / loop; records (t_send_ns, t_recv_ns, status, version, pid).
import http.client, os, re, sys, time, json
port, out, stop_file, limit = int(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4])
mono = time.monotonic_ns
pat = re.compile(rb"version (\S+?), pid (\d+)")
ts, tr, st, ver, pids = [], [], [], [], []
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
deadline = time.monotonic() + limit
n = 0
errors = []
while True:
    n += 1
    if n % 256 == 0 and (os.path.exists(stop_file) or time.monotonic() > deadline):
        break
    t0 = mono()
    try:
        conn.request("GET", "/")
        r = conn.getresponse()
        body = r.read()
        t1 = mono()
        m = pat.search(body)
        ts.append(t0); tr.append(t1); st.append(r.status)
        ver.append(m.group(1).decode() if m else "?")
        pids.append(int(m.group(2)) if m else 0)
    except Exception as e:  # a socket error: record it, reconnect
        t1 = mono()
        ts.append(t0); tr.append(t1); st.append(-1); ver.append("ERR"); pids.append(0)
        errors.append(repr(e))
        conn.close()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
with open(out, "w") as f:
    json.dump({"t_send": ts, "t_recv": tr, "status": st, "version": ver, "pid": pids,
               "errors": errors[:20], "n_errors": len(errors)}, f)
PY

cat >"$WORK/bench.py" <<'PY'
import json, os, re, signal, statistics, subprocess, sys, time

(drover, root, work, wrk, agent_pid, hello_pid, nginx_pid, backend_port, nginx_port,
 proxy_port) = sys.argv[1:11]
agent_pid, hello_pid, nginx_pid = int(agent_pid), int(hello_pid), int(nginx_pid)
DUR, WARM, ROUNDS = int(os.environ["B_DURATION"]), int(os.environ["B_WARMUP"]), int(os.environ["B_ROUNDS"])
SWITCHES, SWITCH_RUNS = int(os.environ["B_SWITCHES"]), int(os.environ["B_SWITCH_RUNS"])
haproxy_pid, haproxy_port = int(os.environ["B_HAPROXY_PID"]), os.environ["B_HAPROXY_PORT"]
CONNS = 64  # wrk -c in parts 1 and 4
TICK = os.sysconf("SC_CLK_TCK")
mono = time.monotonic_ns
out = {}
children = []  # processes to stop if we are interrupted

def log(msg):
    print(f"[bench] {msg}", file=sys.stderr, flush=True)

def on_term(*_):
    for p in children:
        if p.poll() is None:
            p.kill()
    sys.exit(143)
signal.signal(signal.SIGTERM, on_term)

def drover_cmd(*args, timeout=60):
    """Runs drover; returns (stdout, [(t_ns, stderr line)], t_start_ns, t_end_ns)."""
    t0 = mono()
    p = subprocess.Popen([drover, "--root", root, *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    children.append(p)
    events = []
    for line in p.stderr:  # drover prints the agent's events on stderr as they come
        events.append((mono(), line.strip()))
    stdout = p.stdout.read()
    rc = p.wait(timeout=timeout)
    t1 = mono()
    children.remove(p)
    if rc != 0:
        raise SystemExit(f"drover {' '.join(args)} exited {rc}:\n" + "\n".join(e for _, e in events))
    return stdout, events, t0, t1

MOVED = re.compile(r"traffic moved (\d+)")
def agent_moved_us(events):
    """The agent's own figure, when its "is live" event states it: healthy -> routes moved."""
    for _, e in events:
        m = MOVED.search(e)
        if m:
            return int(m.group(1))
    return None

def status():
    so, _, _, _ = drover_cmd("status", "hello", "--json")
    s = json.loads(so)
    return s[0] if isinstance(s, list) else s

# ---- CPU accounting from /proc ------------------------------------------------------------
def ticks(path):
    try:
        with open(path) as f:
            st = f.read()
        f = st[st.rfind(")") + 2:].split()
        return int(f[11]) + int(f[12])  # utime + stime (a process's includes dead threads)
    except OSError:
        return 0

def comm(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""

def ppid_of(pid):
    with open(f"/proc/{pid}/stat") as f:
        st = f.read()
    return int(st[st.rfind(")") + 2:].split()[1])

def kids(pid):
    r = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                if ppid_of(int(p)) == pid:
                    r.append(int(p))
            except (OSError, ValueError, IndexError):
                pass
    return r

def agent_threads():
    """(ticks of the agent's drover-proxy threads, ticks of its other threads)."""
    px = other = 0
    try:
        tids = os.listdir(f"/proc/{agent_pid}/task")
    except OSError:
        return 0, 0
    for t in tids:
        v = ticks(f"/proc/{agent_pid}/task/{t}/stat")
        if comm(f"/proc/{agent_pid}/task/{t}/comm").startswith("drover-proxy"):
            px += v
        else:
            other += v
    return px, other

def total_ticks():
    with open("/proc/stat") as f:
        c = f.readline().split()[1:]
    vals = [int(x) for x in c]
    return sum(vals[:8]), vals[3] + vals[4]  # all, idle+iowait

# ---- wrk ------------------------------------------------------------------------------
UNIT = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}
def lat_ms(s):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", s)
    return float(m.group(1)) * UNIT[m.group(2)]

def parse_wrk(text):
    r = {"non2xx": 0, "sock": {"connect": 0, "read": 0, "write": 0, "timeout": 0}}
    for line in text.splitlines():
        l = line.strip()
        if l.startswith("Requests/sec:"):
            r["rps"] = float(l.split()[1])
        elif re.match(r"^(50|75|90|99)%", l):
            p, v = l.split()
            r["p" + p.rstrip("%")] = lat_ms(v)
        elif l.startswith("Latency") and "Distribution" not in l:
            f = l.split()
            r["avg"], r["stdev"], r["max"] = lat_ms(f[1]), lat_ms(f[2]), lat_ms(f[3])
        elif l.startswith("Non-2xx or 3xx responses:"):
            r["non2xx"] = int(l.split(":")[1])
        elif l.startswith("Socket errors:"):
            for k, v in re.findall(r"(connect|read|write|timeout) (\d+)", l):
                r["sock"][k] = int(v)
        elif "requests in" in l:
            m = re.match(r"(\d+) requests in ([\d.]+)(\w+)", l)
            r["requests"] = int(m.group(1))
    return r

def run_wrk(args, timeout):
    p = subprocess.Popen([wrk, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    children.append(p)
    try:
        text, _ = p.communicate(timeout=timeout)
    finally:
        if p.poll() is None:
            p.kill(); p.wait()
        children.remove(p)
    return text

QUIET_LEFT = [float(os.environ["B_QUIET_MAX"])]
def wait_quiet():
    """Waits (QUIET_LEFT seconds in all) for a second in which the machine is nearly idle:
    other people's builds and tests share this machine. Returns the seconds waited."""
    waited = 0.0
    while QUIET_LEFT[0] > 0:
        a0, i0 = total_ticks(); time.sleep(1.0); a1, i1 = total_ticks()
        waited += 1.0
        if (a1 - a0) - (i1 - i0) < 0.10 * TICK:  # under 0.1 CPU-seconds busy in that second
            return waited
        QUIET_LEFT[0] -= 1.0
        if int(QUIET_LEFT[0]) % 30 == 0:
            log(f"   waiting for other processes to go quiet ({QUIET_LEFT[0]:.0f} s left)")
    return waited

def measure(name, port, proxy_kind, backend_pids, url=None, extra=(), dur=None, part="1"):
    url = url or f"http://127.0.0.1:{port}/"
    dur = dur or DUR
    extra = list(extra)
    waited = wait_quiet()
    log(f"{part}. {name}: warm-up {WARM} s, then wrk -t2 -c{CONNS} -d{dur}s --latency {' '.join(extra)} {url}")
    run_wrk(["-t2", f"-c{CONNS}", f"-d{WARM}s", *extra, url], WARM + 30)
    time.sleep(0.5)
    def snap():
        d = {"wrk": None}
        if proxy_kind == "nginx":
            d["proxy"] = sum(ticks(f"/proc/{w}/stat") for w in kids(nginx_pid))
            d["agent_other"] = 0
        elif proxy_kind == "haproxy":  # one process, nbthread 2
            d["proxy"] = ticks(f"/proc/{haproxy_pid}/stat")
            d["agent_other"] = 0
        elif proxy_kind == "drover":
            d["proxy"], d["agent_other"] = agent_threads()
        else:
            d["proxy"], d["agent_other"] = 0, 0
        d["backend"] = sum(ticks(f"/proc/{b}/stat") for b in backend_pids)
        d["all"], d["idle"] = total_ticks()
        return d
    s0 = snap()
    t0 = time.monotonic()
    p = subprocess.Popen([wrk, "-t2", f"-c{CONNS}", f"-d{dur}s", "--latency", *extra, url],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    children.append(p)
    # wrk's own CPU: sampled just before it exits (it is our child: read it while alive)
    wrk_ticks = 0
    deadline = time.monotonic() + dur + 30
    while p.poll() is None and time.monotonic() < deadline:
        v = ticks(f"/proc/{p.pid}/stat")
        wrk_ticks = max(wrk_ticks, v)
        time.sleep(0.05)
    text, _ = p.communicate(timeout=30)
    children.remove(p)
    wall = time.monotonic() - t0
    s1 = snap()
    r = parse_wrk(text)
    r["raw"] = text
    secs = lambda t: t / TICK
    r["cpu"] = {  # in % of one core, over the measured run's wall time
        "wrk": 100 * secs(wrk_ticks) / wall,
        "proxy": 100 * secs(s1["proxy"] - s0["proxy"]) / wall,
        "agent_other": 100 * secs(s1["agent_other"] - s0["agent_other"]) / wall,
        "backend": 100 * secs(s1["backend"] - s0["backend"]) / wall,
        "machine_busy": 100 * (1 - (s1["idle"] - s0["idle"]) / max(1, s1["all"] - s0["all"])),
    }
    busy = (s1["all"] - s0["all"]) - (s1["idle"] - s0["idle"])
    ours = wrk_ticks + sum(s1[k] - s0[k] for k in ("proxy", "agent_other", "backend"))
    r["cpu"]["other"] = 100 * secs(max(0, busy - ours)) / wall  # others' processes (approx.)
    nreq = max(1, r.get("requests", 1))
    r["us_per_req"] = {  # CPU time per request: robust to the machine's other load
        "proxy": secs(s1["proxy"] - s0["proxy"]) * 1e6 / nreq,
        "backend": secs(s1["backend"] - s0["backend"]) * 1e6 / nreq,
        "wrk": secs(wrk_ticks) * 1e6 / nreq,
    }
    r["quiet_wait_s"] = waited
    log(f"   {r.get('rps', 0):.0f} req/s, p50 {r.get('p50', 0):.3f} ms, p99 {r.get('p99', 0):.3f} ms; "
        f"CPU wrk {r['cpu']['wrk']:.0f}% proxy {r['cpu']['proxy']:.0f}% backend {r['cpu']['backend']:.0f}%")
    return r

# ---- setup: releases, deploy v1 -------------------------------------------------------
app_dir = os.path.join(work, "apps", "hello")
rel = {}
for v in ("1", "2"):
    so, _, _, _ = drover_cmd("build", app_dir, "--version", v, "--json")
    rel[v] = json.loads(so)["release"]
out["releases"] = rel
drover_cmd("deploy", rel["1"])
st = status()
inst = st["instances"][0]
b_port, b_pid = inst["port"], inst["pid"]
# the pid drover reports may be a `sh -c` wrapper: count its children too (the hello itself)
b_pids = [b_pid] + kids(b_pid)
out["drover_instance"] = {"port": b_port, "pids": b_pids,
                          "names": [comm(f"/proc/{p}/comm") for p in b_pids]}
log(f"drover's instance: port {b_port}, pids {b_pids} ({out['drover_instance']['names']})")

# ---- 1. throughput / latency ------------------------------------------------------------
rounds = []
for k in range(ROUNDS):
    order = [("direct_a", backend_port, "none", [hello_pid]),
             ("direct_b", b_port, "none", b_pids)]
    proxies = [("nginx", nginx_port, "nginx", [hello_pid]),
               ("haproxy", haproxy_port, "haproxy", [hello_pid]),
               ("drover", proxy_port, "drover", b_pids)]
    if k % 2 == 1:
        order.reverse()
    proxies = proxies[k % 3:] + proxies[:k % 3]  # each proxy first in one round of three
    res = {}
    for name, port, kind, bp in order + proxies:
        res[name] = measure(f"round {k + 1}/{ROUNDS} {name}", port, kind, bp)
    rounds.append(res)
out["rounds"] = rounds
st = status()
out["after_part1_status"] = st

# ---- 1b. perf: where the CPU goes, per request ------------------------------------------
def have(cmd, *args):
    try:
        return subprocess.run([cmd, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False

PERF_HZ, PERF_SECS = 999, 8
def perf_profile(name, port, proxy_comm):
    data = os.path.join(work, f"perf-{name}.data")
    url = f"http://127.0.0.1:{port}/"
    wait_quiet()
    log(f"1b. perf: {name}, wrk -t2 -c{CONNS} -d12s {url} with perf record -a -F {PERF_HZ} for {PERF_SECS} s")
    w = subprocess.Popen([wrk, "-t2", f"-c{CONNS}", "-d12s", "--latency", url], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    children.append(w)
    time.sleep(2.0)
    subprocess.run(["perf", "record", "-a", "-F", str(PERF_HZ), "-o", data, "--", "sleep",
                    str(PERF_SECS)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   timeout=PERF_SECS + 60)
    text, _ = w.communicate(timeout=60)
    children.remove(w)
    rps = parse_wrk(text).get("rps", 0)
    rep = subprocess.run(["perf", "report", "-i", data, "--stdio", "-n", "--sort", "comm,dso"],
                         capture_output=True, text=True, timeout=300).stdout
    groups = {}
    total = 0
    for line in rep.splitlines():
        m = re.match(r"^\s*([\d.]+)%\s+(\d+)\s+(.+?)\s{2,}(\S.*?)\s*$", line)
        if not m or line.lstrip().startswith("#"):
            continue
        n, comm_, dso = int(m.group(2)), m.group(3).strip(), m.group(4).strip()
        total += n
        if comm_ == proxy_comm or comm_.startswith(proxy_comm):
            g = "proxy"
        elif comm_ == "hello":
            g = "backend"
        elif comm_ == "wrk":
            g = "wrk"
        elif comm_ == "swapper":
            g = "idle"
        else:
            g = "others"
        side = "kernel" if "kernel" in dso else "user"
        groups.setdefault(g, {"kernel": 0, "user": 0})[side] += n
    syms = subprocess.run(["perf", "report", "-i", data, "--stdio", "-n", "--comm", proxy_comm,
                           "--sort", "dso,sym"], capture_output=True, text=True, timeout=300).stdout
    top = []
    for line in syms.splitlines():
        m = re.match(r"^\s*([\d.]+)%\s+(\d+)\s+(\S+)\s+\[(.)\]\s+(.*?)\s*$", line)
        if m and not line.lstrip().startswith("#"):
            top.append({"samples": int(m.group(2)), "dso": m.group(3), "k": m.group(4),
                        "sym": m.group(5)[:110]})
        if len(top) >= 12:
            break
    try:
        os.remove(data)
    except OSError:
        pass
    reqs = rps * PERF_SECS
    us_per_req = lambda n: (n / PERF_HZ) * 1e6 / reqs if reqs else float("nan")
    res = {"rps": rps, "total_samples": total, "groups": groups,
           "us_per_req": {g: {k: us_per_req(v) for k, v in d.items()} for g, d in groups.items()},
           "top": top, "top_us_per_req": [us_per_req(t["samples"]) for t in top]}
    log(f"    {rps:.0f} req/s; proxy CPU per request: "
        f"{sum(res['us_per_req'].get('proxy', {}).values()):.1f} us")
    return res

if os.environ.get("B_PERF", "1") != "0" and have("perf", "stat", "-e", "task-clock", "true"):
    out["perf"] = {"nginx": perf_profile("nginx", nginx_port, "nginx"),
                   "drover": perf_profile("drover", proxy_port, "drover-proxy")}
else:
    out["perf"] = None

# ---- 2. errors during switches under load ---------------------------------------------
def fivexx(st):
    return {r["release"]: (r["responses_5xx"], r["requests"]) for r in st["proxy"]["releases"]}
before = fivexx(status())
url = f"http://127.0.0.1:{proxy_port}/"
log(f"2. wrk -t2 -c20 -d120s --latency {url} while {SWITCHES} deploys alternate v2/v1")
wrk_p = subprocess.Popen([wrk, "-t2", "-c20", "-d120s", "--latency", url],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
children.append(wrk_p)
time.sleep(2.0)  # let wrk settle before the first switch
dep_walls, versions, failures, moved = [], [], [], []
t_sw0 = time.monotonic()
for k in range(SWITCHES):
    if time.monotonic() - t_sw0 > 100:
        failures.append(f"stopped after {k} deploys: 100 s time limit")
        break
    v = "2" if k % 2 == 0 else "1"
    try:
        so, ev, t0, t1 = drover_cmd("deploy", rel[v], "--json")
        s = json.loads(so)
        versions.append(s.get("version"))
        dep_walls.append((t1 - t0) / 1e6)
        if agent_moved_us(ev) is not None:
            moved.append(agent_moved_us(ev))
        if s.get("version") != v or s.get("state") != "running":
            failures.append(f"deploy {k}: ended as {s.get('version')}/{s.get('state')}")
    except SystemExit as e:
        failures.append(f"deploy {k}: {e}")
t_sw = time.monotonic() - t_sw0
time.sleep(1.0)  # requests still in flight finish; then stop wrk (SIGINT: it prints its summary)
wrk_p.send_signal(signal.SIGINT)
try:
    text, _ = wrk_p.communicate(timeout=30)
except subprocess.TimeoutExpired:
    wrk_p.kill(); text, _ = wrk_p.communicate()
children.remove(wrk_p)
r = parse_wrk(text)
r["raw"] = text
time.sleep(0.5)
after_st = status()
after = fivexx(after_st)
d5, dreq = 0, 0
for rid, (e, n) in after.items():
    e0, n0 = before.get(rid, (0, 0))
    d5 += e - e0; dreq += n - n0
out["switch_load"] = {
    "wrk": r, "deploys": len(dep_walls), "failures": failures, "seconds": t_sw,
    "deploy_ms_median": statistics.median(dep_walls) if dep_walls else None,
    "deploy_ms_max": max(dep_walls) if dep_walls else None,
    "drover_5xx_delta": d5, "drover_requests_delta": dreq, "agent_moved_us": moved,
    "drover_5xx_total": sum(e for e, _ in after.values()),
    "releases": after_st["proxy"]["releases"],
    "final_version": after_st.get("version"),
}
log(f"   {len(dep_walls)} deploys in {t_sw:.1f} s; wrk non-2xx {r['non2xx']}, socket errors "
    f"{r['sock']}; drover 5xx delta {d5}")

# ---- 3. switch time ---------------------------------------------------------------------
# make v1 live, let the old instances of part 2 drain
drover_cmd("deploy", rel["1"])
time.sleep(1.0)
cur = "1"
stop_file = os.path.join(work, "client.stop")
cl_out = os.path.join(work, "client.json")
log(f"3. switch time: tight keep-alive client + {SWITCH_RUNS} deploys alternating v2/v1")
cl = subprocess.Popen([sys.executable, os.path.join(work, "client.py"), str(proxy_port), cl_out,
                       stop_file, str(SWITCH_RUNS * 3 + 60)])
children.append(cl)
time.sleep(1.0)
switches = []
for k in range(SWITCH_RUNS):
    v = "2" if cur == "1" else "1"
    so, ev, t0, t1 = drover_cmd("deploy", rel[v], "--json")
    switches.append({"from": cur, "to": v, "t_start": t0, "t_end": t1, "events": ev})
    cur = v
    time.sleep(0.5)
open(stop_file, "w").close()
cl.wait(timeout=60)
children.remove(cl)
with open(cl_out) as f:
    c = json.load(f)
ts, tr, stc, ver = c["t_send"], c["t_recv"], c["status"], c["version"]
n = len(ts)
rtts = sorted((tr[i] - ts[i]) / 1e3 for i in range(n) if stc[i] == 200)
per = []
for k, s in enumerate(switches):
    lo = s["t_start"]
    hi = switches[k + 1]["t_start"] if k + 1 < len(switches) else float("inf")
    idx = [i for i in range(n) if lo <= ts[i] < hi]
    t_h = next((t for t, e in s["events"] if e.endswith("is healthy")), None)
    t_l = next((t for t, e in s["events"] if "is live" in e), None)
    first_new = next((i for i in idx if ver[i] == s["to"]), None)
    if first_new is None or t_h is None:
        per.append({"ok": False}); continue
    old_idx = [i for i in idx if ver[i] == s["from"]]
    last_old = old_idx[-1] if old_idx else None
    overlap = sum(1 for i in old_idx if i > first_new)
    bad = sum(1 for i in idx if stc[i] != 200)
    per.append({
        "ok": True,
        "healthy_to_first_new_us": (tr[first_new] - t_h) / 1e3,
        "healthy_to_last_old_sent_us": (ts[last_old] - t_h) / 1e3 if last_old is not None else None,
        "healthy_to_first_new_sent_us": (ts[first_new] - t_h) / 1e3,
        "first_new_rtt_us": (tr[first_new] - ts[first_new]) / 1e3,
        "last_old_rtt_us": (tr[last_old] - ts[last_old]) / 1e3 if last_old is not None else None,
        "gap_us": (tr[first_new] - tr[last_old]) / 1e3 if last_old is not None and last_old < first_new else None,
        "overlap": overlap,
        "healthy_to_live_line_us": (t_l - t_h) / 1e3 if t_l else None,
        "agent_moved_us": agent_moved_us(s["events"]),
        "errors": bad,
        "requests": len(idx),
    })
out["switch_time"] = {
    "per_switch": per, "client_requests": n, "client_errors": c["n_errors"],
    "client_error_samples": c["errors"],
    "rtt_us": {"p50": rtts[len(rtts) // 2], "p99": rtts[int(len(rtts) * 0.99)]} if rtts else None,
}
good = [p for p in per if p["ok"]]
log(f"   {len(good)}/{len(per)} switches seen; median healthy->first new "
    f"{statistics.median(p['healthy_to_first_new_us'] for p in good) if good else float('nan'):.0f} us")

# ---- 3b. strace: what the agent does between "healthy" and "live" --------------------
out["strace"] = None
if os.environ.get("B_STRACE", "1") != "0" and have("strace", "-V"):
    log("3b. one more deploy with the agent under strace -f -ttt -T")
    time.sleep(1.0)
    trace = os.path.join(work, "agent.strace")
    sp = subprocess.Popen(["strace", "-f", "-ttt", "-T", "-o", trace, "-e",
                           "trace=sendto,write,writev,openat,rename,renameat,renameat2,fsync,fdatasync,"
                           "connect,kill", "-p", str(agent_pid)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children.append(sp)
    time.sleep(1.0)  # strace attaches to every thread
    v = "2" if cur == "1" else "1"
    try:
        drover_cmd("deploy", rel[v], "--json")
        cur = v
    finally:
        time.sleep(0.5)
        sp.send_signal(signal.SIGINT)
        try:
            sp.wait(timeout=10)
        except subprocess.TimeoutExpired:
            sp.kill(); sp.wait()
        children.remove(sp)
    lines = open(trace).read().splitlines()
    t_h = t_l = None
    between = []
    for line in lines:
        m = re.match(r"^(\d+)\s+([\d.]+)\s+(\w+)\((.*)$", line)
        if not m:
            continue
        t, call, rest = float(m.group(2)), m.group(3), m.group(4)
        if call == "sendto" and "is healthy" in rest and t_h is None:
            t_h = t; continue
        if call == "sendto" and "is live" in rest and t_h is not None:
            t_l = t; break
        if t_h is not None:
            d = re.search(r"<([\d.]+)>\s*$", rest)
            between.append({"t": t - t_h, "call": call, "dur": float(d.group(1)) if d else 0.0,
                            "arg": re.sub(r"\s+", " ", rest)[:90]})
    if t_h is not None and t_l is not None:
        fs = [b for b in between if b["call"] in ("fsync", "fdatasync")]
        out["strace"] = {
            "healthy_to_live_us": (t_l - t_h) * 1e6,
            "fsyncs": len(fs), "fsync_us": sum(b["dur"] for b in fs) * 1e6,
            "calls": between[:40],
        }

# ---- 4. TLS termination -------------------------------------------------------------------
def rss_kib(pids):
    n = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        n += int(line.split()[1])
        except OSError:
            pass
    return n

def idle_conns(name, port, rss_pids_fn, n):
    """Opens n TLS connections (handshakes done) to port, holds them idle; RSS before/after."""
    wait_quiet()
    time.sleep(1.0)
    before = rss_kib(rss_pids_fn())
    log(f"4c. {name}: {n} idle TLS connections to 127.0.0.1:{port} (RSS before {before / 1024:.1f} MiB)")
    p = subprocess.Popen([sys.executable, os.path.join(work, "idle.py"), str(port),
                          os.environ["B_CA"], str(n)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    children.append(p)
    try:
        t0 = time.monotonic()
        line = p.stdout.readline().strip()  # "ready OPEN FAILED FIRST_ERROR"
        secs = time.monotonic() - t0
        f = line.split(" ", 3)
        if len(f) < 3 or f[0] != "ready":
            err = p.stderr.read() if p.poll() is not None else ""
            raise SystemExit(f"idle client against {name}: {line!r} {err[-2000:]}")
        opened, failed = int(f[1]), int(f[2])
        time.sleep(3.0)  # let the proxy settle (its side of the last handshakes)
        during = rss_kib(rss_pids_fn())
        # still open? each connection answered one request at the end, over the same socket
        p.stdin.write("check\n"); p.stdin.flush()
        alive = int(p.stdout.readline().split()[1])
    finally:
        if p.poll() is None:
            p.stdin.close()
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill(); p.wait()
        children.remove(p)
    r = {"conns": n, "opened": opened, "failed": failed, "first_error": f[3] if len(f) > 3 else "",
         "open_secs": secs, "rss_before_kib": before, "rss_after_kib": during,
         "alive_after": alive,
         "kib_per_conn": (during - before) / opened if opened else float("nan")}
    log(f"    opened {opened} (failed {failed}) in {secs:.1f} s; RSS {before / 1024:.1f} -> "
        f"{during / 1024:.1f} MiB = {r['kib_per_conn']:.1f} KiB per connection; {alive} answered after")
    return r

if os.environ.get("B_TLS", "1") == "1":
    tls_port, nginx_tls_port = os.environ["B_TLS_PORT"], os.environ["B_NGINX_TLS_PORT"]
    tls_dur, tls_rounds = int(os.environ["B_TLS_DURATION"]), int(os.environ["B_TLS_ROUNDS"])
    tls = {"drover_supported": False, "drover_skip_reason": "", "rounds": []}
    # drover's TLS listener: a second app whose [proxy] names tls = { cert, key }
    p = subprocess.run([drover, "--root", root, "build", os.environ["B_TLS_APP"], "--version", "1",
                        "--json"], capture_output=True, text=True, timeout=120)
    tls_b_pids = []
    if p.returncode == 0:
        drover_cmd("deploy", json.loads(p.stdout)["release"])
        so, _, _, _ = drover_cmd("status", "tlshello", "--json")
        s = json.loads(so); s = s[0] if isinstance(s, list) else s
        tls_b_pids = [s["instances"][0]["pid"]] + kids(s["instances"][0]["pid"])
        tls["drover_supported"] = True
    elif re.search(r"unknown field `(tls|http_port)`|`tls`|\btls\b(?![/\w.])", p.stderr):
        # a build without the TLS listener: serde names the first of its keys it does not know
        lines = [l.strip() for l in p.stderr.splitlines() if l.strip()]
        tls["drover_skip_reason"] = next((l for l in lines if "unknown field" in l), lines[0] if lines else "")
        print("drover: TLS not supported by this build, skipped", file=sys.stderr, flush=True)
    else:
        raise SystemExit(f"drover build of the TLS app failed:\n{p.stderr}")
    targets = [("nginx", nginx_tls_port, "nginx", [hello_pid])]
    if tls["drover_supported"]:
        targets.append(("drover", tls_port, "drover", tls_b_pids))
    for k in range(tls_rounds):
        order = targets if k % 2 == 0 else targets[::-1]
        res = {}
        for name, port, kind, bp in order:
            url = f"https://bench.test:{port}/"
            res[name] = {
                "keepalive": measure(f"round {k + 1}/{tls_rounds} {name} keep-alive", port, kind, bp,
                                     url=url, dur=tls_dur, part="4a"),
                "close": measure(f"round {k + 1}/{tls_rounds} {name} new connections", port, kind, bp,
                                 url=url, extra=["-H", "Connection: close"], dur=tls_dur, part="4b"),
            }
        tls["rounds"].append(res)
    n_idle = int(os.environ["B_IDLE_CONNS"])
    tls["idle"] = {"nginx": idle_conns("nginx", nginx_tls_port, lambda: kids(nginx_pid), n_idle)}
    if tls["drover_supported"]:
        tls["idle"]["drover"] = idle_conns("drover", tls_port, lambda: [agent_pid], n_idle)
    out["tls"] = tls
print(json.dumps(out, indent=1))
PY

# part 4c: the idle TLS client. Opens N connections (at most 200 handshakes at once),
# prints "ready OPEN FAILED [FIRST_ERROR]", holds them idle; on "check" sends one GET / on
# each and prints "alive N" (how many answered); exits when stdin closes.
cat >"$WORK/idle.py" <<'PY'
import asyncio, resource, ssl, sys
port, ca, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
ctx = ssl.create_default_context(cafile=ca)
async def main():
    sem = asyncio.Semaphore(200)
    conns, errors = [], []
    async def one():
        async with sem:
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection(
                    "127.0.0.1", port, ssl=ctx, server_hostname="bench.test"), 30)
                conns.append((r, w))
            except Exception as e:
                errors.append(repr(e))
    await asyncio.gather(*(one() for _ in range(n)))
    print(f"ready {len(conns)} {len(errors)} {errors[0][:200] if errors else ''}", flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        if line.strip() == "check":
            async def ask(r, w):
                try:
                    w.write(b"GET /up HTTP/1.1\r\nHost: bench.test\r\n\r\n")
                    await w.drain()
                    head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 30)
                    return head.startswith(b"HTTP/1.1 200")
                except Exception:
                    return False
            sem2 = asyncio.Semaphore(500)
            async def bounded(r, w):
                async with sem2:
                    return await ask(r, w)
            ok = await asyncio.gather(*(bounded(r, w) for r, w in conns))
            print(f"alive {sum(ok)}", flush=True)
    for _, w in conns:
        w.transport.abort()
asyncio.run(main())
PY

log "running the measurements"
set +e
B_DURATION="$DURATION" B_WARMUP="$WARMUP" B_ROUNDS="$ROUNDS" B_SWITCHES="$SWITCHES" \
B_SWITCH_RUNS="$SWITCH_RUNS" B_QUIET_MAX="$QUIET_MAX" B_PERF="$DO_PERF" B_STRACE="$DO_STRACE" \
B_HAPROXY_PID="$HAPROXY_PID" B_HAPROXY_PORT="$HAPROXY_PORT" B_TLS="$DO_TLS" B_TLS_PORT="$TLS_PORT" \
B_NGINX_TLS_PORT="$NGINX_TLS_PORT" B_TLS_DURATION="$TLS_DURATION" B_TLS_ROUNDS="$TLS_ROUNDS" \
B_IDLE_CONNS="$IDLE_CONNS" B_CA="$TLSD/ca.pem" B_TLS_APP="$WORK/apps/tlshello" \
    setsid timeout 1800 python3 "$WORK/bench.py" "$DROVER" "$ROOT" "$WORK" "$WRK_BIN" \
    "$AGENT_PID" "$HELLO_PID" "$NGINX_PID" "$BACKEND_PORT" "$NGINX_PORT" "$PROXY_PORT" \
    >"$WORK/results.json" &
BENCH_PID=$!
wait "$BENCH_PID"
brc=$?
BENCH_PID=""
set -e
if [[ $brc != 0 ]]; then
    log "the measurements failed (exit $brc); agent log tail:"; tail -n 20 "$WORK/agent.log" >&2
    exit 1
fi

# ---- report ----------------------------------------------------------------------------
CPU=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
RAM_GB=$(awk '/MemTotal/ {printf "%.1f", $2/1048576}' /proc/meminfo)
SCRIPT_SECS=$(python3 -c "import time; print(round(time.time() - $SCRIPT_START))")
NGINX_VER=$("$NGINX_BIN" -v 2>&1 | sed 's/^nginx version: //')
WRK_VER=$(dpkg-query -W -f='${Version}' wrk 2>/dev/null || echo "?")
HAPROXY_VER=$(dpkg-query -W -f='${Version}' haproxy 2>/dev/null || "$HAPROXY_BIN" -v | head -1)
OPENSSL_VER=$(openssl version 2>/dev/null | cut -d' ' -f1-2 || echo "?")
BODY_LEN=$(curl -fsS --noproxy '*' "http://127.0.0.1:$BACKEND_PORT/" | wc -c)

REPORT=$(python3 - "$WORK/results.json" <<PY
import json, statistics, sys
r = json.load(open(sys.argv[1]))
rounds = r["rounds"]
names = [("direct_a", "hello directly (backend A, no proxy)"),
         ("direct_b", "drover's hello instance directly (backend B, no proxy)"),
         ("nginx", "**nginx** → backend A"),
         ("haproxy", "**HAProxy** → backend A"),
         ("drover", "**drover proxy** → backend B")]
mean = lambda xs: statistics.median(xs)  # the median of the rounds
def agg(name, key):
    return mean([rd[name].get(key, float("nan")) for rd in rounds])
ok = lambda c: "yes" if c else "**no**"
f0 = lambda x: f"{x:,.0f}"
f3 = lambda x: f"{x:.3f}"
print(f"""# drover's built-in proxy vs nginx and HAProxy: throughput, latency, switches under load, TLS

- Date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')
- Machine: $CPU, **$(nproc) CPUs shared by wrk, the proxy and the backend** (and python /
  drover CLI in parts 2-3); ${RAM_GB} GiB RAM; $(uname -sr)
- drover: release build of commit $REV$DIRTY; nginx $NGINX_VER; HAProxy $HAPROXY_VER (Debian);
  wrk $WRK_VER; $OPENSSL_VER
- Reproduce: \`bash bench/proxy.sh\` (as root; about $SCRIPT_SECS s)
- Backend: examples/hello (release build; std-only, thread per connection, HTTP/1.1
  keep-alive), answering \`/\` with a $BODY_LEN-byte body (GREETING padded; the same for every target).
  nginx and HAProxy front a hello started by the script (backend A); drover's proxy fronts
  drover's own instance of the same binary (backend B); both are measured directly too.
- nginx: \`worker_processes auto\` (2), upstream \`keepalive 64\`; HAProxy: \`nbthread 2\`,
  \`mode http\`, \`option http-keep-alive\`, \`http-reuse always\`.

## 1. Throughput and latency

Each row: \`wrk -t2 -c64 -d${DURATION}s --latency http://127.0.0.1:PORT/\` after a ${WARMUP} s warm-up run of
the same command; $ROUNDS round(s) (direct A, direct B, in reverse order in even rounds, then the three
proxies, rotated per round: nginx, HAProxy, drover; HAProxy, drover, nginx; drover, nginx, HAProxy),
values are the median of the rounds. CPU columns: % of one core over the measured run
(from /proc: wrk's process, nginx's workers, haproxy's process or the agent's \`drover-proxy\` runtime threads,
and the backend process; "others" is the rest of the machine's busy time: other people's builds
and tests on this shared machine, the agent's other threads, the benchmark itself); the machine
has 200 %. "µs/req" columns: CPU time of the proxy / the backend per request (less sensitive
to the other load than req/s). Before each target the benchmark waits (up to BENCH_QUIET_MAX s
in all) for a quiet second.

| Target | req/s | p50 | p99 | max | CPU wrk | CPU proxy | CPU backend | CPU others | proxy µs/req | backend µs/req |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|""")
def upr(key, what):
    if what == "proxy" and key not in ("nginx", "haproxy", "drover"):
        return "–"
    return f"{mean([rd[key]['us_per_req'][what] for rd in rounds]):.1f}"
for key, label in names:
    cpu = lambda c: mean([rd[key]["cpu"][c] for rd in rounds])
    proxy_cpu = f"{cpu('proxy'):.0f} %" if key in ("nginx", "haproxy", "drover") else "–"
    print(f"| {label} | {f0(agg(key, 'rps'))} | {f3(agg(key, 'p50'))} ms | {f3(agg(key, 'p99'))} ms | "
          f"{agg(key, 'max'):.2f} ms | {cpu('wrk'):.0f} % | {proxy_cpu} | {cpu('backend'):.0f} % | {cpu('other'):.0f} % | "
          f"{upr(key, 'proxy')} | {upr(key, 'backend')} |")
ratio = agg("drover", "rps") / agg("nginx", "rps")
ratios = [rd["drover"]["rps"] / rd["nginx"]["rps"] for rd in rounds]
cpu_ratio = mean([rd["drover"]["us_per_req"]["proxy"] for rd in rounds]) / mean([rd["nginx"]["us_per_req"]["proxy"] for rd in rounds])
dp99 = agg("drover", "p99") - agg("nginx", "p99")
dp50 = agg("drover", "p50") - agg("nginx", "p50")
hratio = agg("drover", "rps") / agg("haproxy", "rps")
hratios = [rd["drover"]["rps"] / rd["haproxy"]["rps"] for rd in rounds]
hcpu_ratio = mean([rd["drover"]["us_per_req"]["proxy"] for rd in rounds]) / mean([rd["haproxy"]["us_per_req"]["proxy"] for rd in rounds])
hdp99 = agg("drover", "p99") - agg("haproxy", "p99")
p99_top = max(agg("nginx", "p99"), agg("haproxy", "p99"))
p99_low = min(agg("nginx", "p99"), agg("haproxy", "p99"))
print(f"""
| Comparison | value | goal | met |
|---|---:|---|---|
| throughput drover / nginx (medians) | **{ratio:.3f}** (per round: {', '.join(f"{x:.3f}" for x in ratios)}) | ≥ 0.90 | {ok(ratio >= 0.90)} |
| p99 drover − nginx | **{dp99:+.3f} ms** | ≤ 1 ms | {ok(dp99 <= 1.0)} |
| throughput drover / HAProxy (medians) | **{hratio:.3f}** (per round: {', '.join(f"{x:.3f}" for x in hratios)}) | ≥ 1.0 | {ok(hratio >= 1.0)} |
| p99 drover − HAProxy | **{hdp99:+.3f} ms** | | |
| p99 drover vs nginx's and HAProxy's | {agg("drover", "p99"):.3f} ms vs {agg("nginx", "p99"):.3f} / {agg("haproxy", "p99"):.3f} ms | no higher than either | {ok(agg("drover", "p99") <= p99_low)} |
| p50 drover − nginx (context) | {dp50:+.3f} ms | | |
| proxy CPU per request, drover / nginx (context) | {cpu_ratio:.2f} | | |
| proxy CPU per request, drover / HAProxy (context) | {hcpu_ratio:.2f} | | |

Per round:

| Round | target | req/s | p50 | p75 | p90 | p99 | errors |
|---|---|---:|---:|---:|---:|---:|---|""")
for k, rd in enumerate(rounds):
    for key, label in names:
        x = rd[key]
        errs = x["non2xx"] + sum(x["sock"].values())
        print(f"| {k + 1} | {key} | {f0(x['rps'])} | {f3(x['p50'])} | {f3(x['p75'])} | {f3(x['p90'])} | {f3(x['p99'])} | {errs} |")
    print(f"| {k + 1} | drover / nginx | {rd['drover']['rps'] / rd['nginx']['rps']:.3f} | | | | {rd['drover']['p99'] - rd['nginx']['p99']:+.3f} | |")
    print(f"| {k + 1} | drover / HAProxy | {rd['drover']['rps'] / rd['haproxy']['rps']:.3f} | | | | {rd['drover']['p99'] - rd['haproxy']['p99']:+.3f} | |")

s = r["switch_load"]
w = s["wrk"]
mv = sorted(s.get("agent_moved_us") or [])
moved_txt = f"{statistics.median(mv):.0f} / {mv[-1]:.0f} µs (n = {len(mv)})" if mv else "(not reported by this build)"
sock = w["sock"]
nsock = sum(sock.values())
print(f"""
## 2. Errors during {s['deploys']} switches under load

\`wrk -t2 -c20 -d120s --latency\` against drover's proxy; after 2 s, {s['deploys']} \`drover deploy RELEASE_ID\`
back to back, alternating v2/v1 (every one a real switch: new instance started, health-checked,
routed to, old one drained and stopped); 1 s after the last one wrk is stopped with SIGINT.
The {s['deploys']} deploys took {s['seconds']:.1f} s (median {s['deploy_ms_median']:.1f} ms, max {s['deploy_ms_max']:.1f} ms each, under load);
failed deploys: {len(s['failures'])}; version live at the end: {s['final_version']}.

| Measure | value | goal | met |
|---|---:|---|---|
| requests completed by wrk | {w.get('requests', 0):,} ({w.get('rps', 0):,.0f} req/s) | | |
| wrk "Non-2xx or 3xx responses" | **{w['non2xx']}** | 0 | {ok(w['non2xx'] == 0)} |
| wrk "Socket errors" (connect/read/write/timeout) | **{nsock}** ({sock['connect']}/{sock['read']}/{sock['write']}/{sock['timeout']}) | 0 | {ok(nsock == 0)} |
| drover \`responses_5xx\`, delta over this part (all releases) | **{s['drover_5xx_delta']}** of {s['drover_requests_delta']:,} requests | 0 | {ok(s['drover_5xx_delta'] == 0)} |
| wrk latency p50 / p99 / max during the switches | {f3(w['p50'])} / {f3(w['p99'])} / {w['max']:.2f} ms | | |
| agent's "traffic moved N µs after it was healthy", median / max over the deploys | {moved_txt} | | |
""")
if s["failures"]:
    print("Deploy failures: " + "; ".join(s["failures"][:5]) + "\n")

t = r["switch_time"]
good = [p for p in t["per_switch"] if p["ok"]]
def col(k):
    return [p[k] for p in good if p.get(k) is not None]
def row(label, k, unit="µs", goal="", met=""):
    xs = sorted(col(k))
    if not xs:
        print(f"| {label} | – | – | – | – | {goal} | {met} |"); return
    med = statistics.median(xs)
    print(f"| {label} | {med:.0f} {unit} | {xs[0]:.0f} {unit} | {xs[-1]:.0f} {unit} | {len(xs)} | {goal} | {met} |")
rtt = t["rtt_us"]
h2n = col("healthy_to_first_new_us")
print(f"""## 3. Switch time (healthy → all new requests on the new version)

A python3 client in its own process sends \`GET /\` back to back on one keep-alive connection to
drover's proxy and stamps each request with \`time.monotonic_ns()\` before sending and after reading
the response (body: \`hello (version X, pid N)\`); {t['client_requests']:,} requests in all, round trip p50 {rtt['p50']:.0f} µs /
p99 {rtt['p99']:.0f} µs (this is the time resolution of the client's view). Meanwhile {len(t['per_switch'])} \`drover deploy\`
alternate v2/v1, 0.5 s apart; the benchmark stamps, with the same clock, the moment each line of the
deploy's stderr arrives (the CLI relays the agent's events as they happen). "healthy" is the
arrival of \`web.0 is healthy\`, which lags the agent's successful health probe by the relay
(agent → unix socket → CLI → pipe → benchmark), so times measured from it are slightly too small.
The switch happened between the sending of the last request the old instance answered and the
arrival of the first response from the new one.

| Measure (per switch; {len(good)} of {len(t['per_switch'])} switches seen) | median | min | max | n | goal | met |
|---|---:|---:|---:|---:|---|---|""")
row("healthy → last request sent that the **old** instance answered (lower bound)", "healthy_to_last_old_sent_us")
med_h2n = statistics.median(h2n) if h2n else float("nan")
med_h2s = statistics.median(col("healthy_to_first_new_sent_us")) if col("healthy_to_first_new_sent_us") else float("nan")
row("healthy → first request sent that the **new** instance answered (≈ the switch: routing happens as the request arrives; ± one round trip)",
    "healthy_to_first_new_sent_us", goal="< 1 ms", met=ok(med_h2s < 1000))
row("healthy → first response from the **new** instance (upper bound)", "healthy_to_first_new_us")
row("round trip of that first request to the new instance (new upstream connection)", "first_new_rtt_us")
row("round trip of the last request to the old instance", "last_old_rtt_us")
row("client gap: last old response → first new response", "gap_us")
row("\`web.0 is healthy\` line → \`generation N is live\` line (CLI)", "healthy_to_live_line_us")
row("the agent's own figure: \"traffic moved N µs after it was healthy\" (in its live event)", "agent_moved_us",
    goal="< 1 ms", met=ok(bool(col("agent_moved_us")) and statistics.median(col("agent_moved_us")) < 1000))
ov = col("overlap"); er = col("errors")
print(f"""| old responses after the first new one (overlap), total | {sum(ov)} | | | {len(ov)} | 0 | {ok(sum(ov) == 0)} |
| client requests with an error or non-200 during the switches | {t['client_errors'] + sum(er)} | | | | 0 | {ok(t['client_errors'] + sum(er) == 0)} |

Per switch, healthy → first new response (µs): {' '.join(f"{x:.0f}" for x in h2n)}
""")

sx = r.get("strace")
if sx:
    print(f"""### Where the switch time goes (one more deploy, agent under strace)

The agent under \`strace -f -ttt -T\` (which slows every syscall, so times are inflated): from
sending \`web.0 is healthy\` to sending \`generation N is live\` took {sx['healthy_to_live_us']:.0f} µs, with
{sx['fsyncs']} fsyncs taking {sx['fsync_us']:.0f} µs. The route swap itself is in memory and makes no syscall, so
it does not show here; it happens somewhere in this window (the agent's own "traffic moved" figure,
above, says when). Syscalls in between:

| +µs | syscall | took µs | argument |
|---:|---|---:|---|""")
    for c in sx["calls"]:
        arg = c["arg"].replace("|", chr(92) + "|")
        print(f"| {c['t'] * 1e6:.0f} | {c['call']} | {c['dur'] * 1e6:.0f} | \`{arg}\` |")
    print()

pf = r.get("perf")
if pf:
    print("""## Where the CPU goes (perf)

One more run each: \`wrk -t2 -c64 -d12s\` against nginx and against drover's proxy, with
\`perf record -a -F 999\` for 8 s of it (cpu-clock sampling, whole machine). CPU time per proxied
request in µs = samples / 999 Hz / (wrk's req/s × 8 s); "kernel" includes the loopback TCP
stack work done in that process's syscalls (a send on loopback also runs the receiver's TCP
input and wake-up).

| µs of CPU per request | nginx kernel | nginx user | drover kernel | drover user |
|---|---:|---:|---:|---:|""")
    for g, label in (("proxy", "proxy (nginx workers / drover-proxy threads)"), ("backend", "backend (hello)"),
                     ("wrk", "wrk"), ("others", "everything else"), ("idle", "idle")):
        a = pf["nginx"]["us_per_req"].get(g, {}); b = pf["drover"]["us_per_req"].get(g, {})
        print(f"| {label} | {a.get('kernel', 0):.1f} | {a.get('user', 0):.1f} | {b.get('kernel', 0):.1f} | {b.get('user', 0):.1f} |")
    print(f"| req/s during the profile | {pf['nginx']['rps']:,.0f} | | {pf['drover']['rps']:,.0f} | |")
    for name in ("nginx", "drover"):
        print(f"""
Hottest symbols of {name} (µs per request):

| µs/req | object | symbol |
|---:|---|---|""")
        for t, us in zip(pf[name]["top"], pf[name]["top_us_per_req"]):
            sym = t["sym"].replace("|", chr(92) + "|")
            print(f"| {us:.2f} | {t['dso']} | \`{sym}\` |")
    print()

x = r.get("tls")
if x is None:
    print("## 4. TLS termination\n\nSkipped (BENCH_TLS=0).\n")
else:
    sup = x["drover_supported"]
    tr = x["rounds"]
    tnames = ["nginx"] + (["drover"] if sup else [])
    tagg = lambda name, m, key: statistics.median([rd[name][m].get(key, float("nan")) for rd in tr])
    tcpu = lambda name, m, c: statistics.median([rd[name][m]["cpu"][c] for rd in tr])
    tupr = lambda name, m: statistics.median([rd[name][m]["us_per_req"]["proxy"] for rd in tr])
    print(f"""## 4. TLS termination

A CA and a P-256 certificate for \`bench.test\` made with the openssl CLI ($OPENSSL_VER);
\`bench.test\` resolves to 127.0.0.1. nginx: \`$NGINX_LISTEN_TLS\` with that certificate,
\`proxy_pass\` to backend A with upstream keepalive. drover: a second app, \`tlshello\` (its own
instance of the same hello), with \`[proxy] hosts = ["bench.test"]\`, \`tls = {{ cert, key }}\` and an
\`http_port\`. For the idle connections, both wait 900 s for a request (nginx: \`keepalive_timeout\`,
\`client_header_timeout\`; drover: \`idle_timeout\`, \`header_timeout\`). wrk speaks HTTP/1.1 over TLS (no ALPN), with SNI from the URL's host. {len(tr)} round(s),
order alternating; values are the median of the rounds; each run \`-d${TLS_DURATION}s\` after a ${WARMUP} s warm-up.
""")
    if not sup:
        why = x["drover_skip_reason"].replace("|", chr(92) + "|").replace(chr(96), "'")
        print(f"""**drover: TLS not supported by this build, skipped**: \`drover build\` of the app refused the
TLS listener's keys (\`tls\`, \`http_port\`) in \`[proxy]\`: "{why}". Only nginx's figures are measured.
""")
    print("""| Target | measure | req/s | p50 | p99 | max | CPU proxy | CPU others | proxy µs/req | errors |
|---|---|---:|---:|---:|---:|---:|---:|---:|---:|""")
    for name in tnames:
        for m, what in (("keepalive", "(a) keep-alive requests"), ("close", "(b) new TLS connections (Connection: close)")):
            errs = statistics.median([rd[name][m]["non2xx"] + sum(rd[name][m]["sock"].values()) for rd in tr])
            print(f"| {name} | {what} | {f0(tagg(name, m, 'rps'))} | {f3(tagg(name, m, 'p50'))} ms | {f3(tagg(name, m, 'p99'))} ms | "
                  f"{tagg(name, m, 'max'):.2f} ms | {tcpu(name, m, 'proxy'):.0f} % | {tcpu(name, m, 'other'):.0f} % | {tupr(name, m):.1f} | {errs:.0f} |")
    idle = x["idle"]
    print("""
(c) Idle TLS connections: a python3 asyncio client (its own process, at most 200 handshakes at
once) opens the connections, completes each handshake and holds them idle; the proxy's RSS is
read before and 3 s after the last one (nginx: the sum over its workers; drover: the whole agent
process). Afterwards each connection sends one \`GET /up\`: "answered" says how many were still open.

| Target | connections opened (failed) | open time | RSS before | RSS with them | per connection | answered after |
|---|---:|---:|---:|---:|---:|---:|""")
    for name in tnames:
        i = idle[name]
        print(f"| {name} | {i['opened']:,} ({i['failed']}) | {i['open_secs']:.1f} s | {i['rss_before_kib'] / 1024:.1f} MiB | "
              f"{i['rss_after_kib'] / 1024:.1f} MiB | {i['kib_per_conn']:.1f} KiB | {i['alive_after']:,} |")
    if any(idle[n]["failed"] for n in tnames):
        print("\nFirst failure: " + "; ".join(f"{n}: {idle[n]['first_error']}" for n in tnames if idle[n]["failed"]))
    print()
    if sup:
        kr = tagg("drover", "keepalive", "rps") / tagg("nginx", "keepalive", "rps")
        kp = tagg("drover", "keepalive", "p99") - tagg("nginx", "keepalive", "p99")
        hr = tagg("drover", "close", "rps") / tagg("nginx", "close", "rps")
        mr = idle["drover"]["kib_per_conn"] / idle["nginx"]["kib_per_conn"]
        print(f"""| Comparison | value | goal | met |
|---|---:|---|---|
| (a) keep-alive req/s, drover / nginx | **{kr:.3f}** | ≥ 0.90 | {ok(kr >= 0.90)} |
| (a) keep-alive p99, drover − nginx | **{kp:+.3f} ms** | ≤ 0 | {ok(kp <= 0)} |
| (b) new TLS connections/s, drover / nginx | **{hr:.3f}** | ≥ 0.90 | {ok(hr >= 0.90)} |
| (c) memory per idle TLS connection, drover / nginx (context) | {mr:.2f} | | |
""")
PY
)

RAW=$(python3 - "$WORK/results.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print("## Raw wrk output (round 1)\n")
for k in ("direct_a", "direct_b", "nginx", "haproxy", "drover"):
    print(f"{k}:\n```\n{r['rounds'][0][k]['raw'].rstrip()}\n```")
for k, v in ((r.get("tls") or {}).get("rounds") or [{}])[0].items():
    for m in ("keepalive", "close"):
        print(f"TLS {k} {m} (part 4):\n```\n{v[m]['raw'].rstrip()}\n```")
print(f"during the switches (part 2):\n```\n{r['switch_load']['wrk']['raw'].rstrip()}\n```")
PY
)

if [[ "$RESULTS" == "-" ]]; then
    printf '%s\n\n%s\n' "$REPORT" "$RAW"
else
    mkdir -p "$(dirname "$RESULTS")"
    printf '%s\n\n%s\n' "$REPORT" "$RAW" >"$RESULTS"
    printf '%s\n' "$REPORT"
    log "wrote $RESULTS"
fi
