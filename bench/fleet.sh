#!/usr/bin/env bash
# Benchmark: fleet deploys over ssh — delta transfer against rsync, and deploy time for 1, 4
# and 8 hosts.
#
#   bash bench/fleet.sh
#
# Runs as root (network namespaces, sshd). Installs openssh-server/-client, rsync, iproute2
# and python3 with apt-get when they are missing.
#
# Environment:
#   BENCH_RUNS      runs of each measurement; the median is reported (default 3; at most 3 for
#                   the delta benchmark, which needs a fresh host per run)
#   BENCH_RESULTS   where to write the markdown results (default bench/results/fleet.md;
#                   set to "-" to print only)
#   BENCH_KEEP      set to 1 to keep the temp dir (ssh config, host roots, logs, trees)
#   BENCH_QUIET_MAX seconds to wait, in all, for other processes to go quiet before the
#                   measurements (default 90); the CPU others used is reported anyway
#
# What it does, in one run:
#   0. cargo build --release -p drover and examples/hello; the drover binary is copied into
#      the temp dir so concurrent rebuilds of target/ cannot swap it mid-run
#   1. 8 simulated hosts h1..h8: host i (0-based) is network namespace drvb{i} joined to the
#      root namespace by the veth pair dvb{i} / eth0, 10.{100+i}.250.1/24 on the root side and
#      .2 in the namespace, IPv6 off; its own sshd on port 22 with `SetEnv DROVER_ROOT` (a
#      per-host drover root), its own host key, and the client key authorised; an ifb device
#      dvbz takes a host's packets if its link is ever down. ssh_config and known_hosts are
#      generated (BatchMode, StrictHostKeyChecking yes). Leftovers of an earlier run (same
#      names) are removed first.
#   2. generates, with python3 random.Random, an app tree v1 (~61 MB, 3,000+ files): the
#      example server binary, a 12 MiB "main library" and three 4 MiB dependency libraries
#      (binary-like, moderately compressible), 3,000 small text/JSON files, four 3 MiB
#      compressible data files and 12 MiB of incompressible assets; and v2 = v1 after a
#      release: the main library rebuilt (16 regions of 16-64 KiB rewritten, ~5 % of it,
#      plus 4 KiB inserted a third of the way in), 30 small files (1 %) edited, 6 added and 5
#      removed, one asset replaced, 64 KiB appended to one data file, the version bumped.
#      v2a (the library change alone) and v2b (the other changes alone) split v2 in two.
#   3. `drover host setup -e all` (binary installed on the 8 hosts, agents started, the
#      controller's key trusted); v1, v2, v2a and v2b stored with `drover build --json`.
#   4. delta transfer, BENCH_RUNS runs, run r on its own fresh host h{r}:
#        - `drover deploy V1 -e d{r} --json`, and `rsync -az --delete --stats -e "ssh -F
#          ssh_config" V1/ h{r}:DIR/` (the initial copies, reported too)
#        - then v2 both ways (order alternating per run): `drover deploy V2 -e d{r} --json`
#          and the same rsync of V2/ onto the directory that holds v1
#      bytes on the wire = rx + tx of h{r}'s root-side veth around each command (ssh, TCP,
#      everything); wall = the whole command. For drover the time each JSON progress line
#      arrives gives the phases (build check, connect, check + lock, transfer, switch, end).
#      Once more on h4 (v1 -> v2a) and h5 (v1 -> v2b), one run each, to show which change
#      costs what.
#   5. deploy time by fleet size: the example app (+ a 1 MiB incompressible bundle that is new
#      in every version) deployed once to all 8 hosts, then BENCH_RUNS rounds of a new
#      version to 1, 4 and 8 hosts (environments n1/n4/n8, all-at-once; the order rotates per
#      round), then the same with rolling batch = 1 (r1/r4/r8). Wall time of `drover deploy
#      DIR -e ENV --json`, including its release build.
#   6. writes bench/results/fleet.md
# On exit (trap): every process in the namespaces is killed (agents, apps, sshd and its
# sessions), sshd by pid, namespaces, veths and the ifb device deleted, and any process
# still referring to the temp dir is reported and killed.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUNS="${BENCH_RUNS:-3}"
RESULTS="${BENCH_RESULTS:-$REPO/bench/results/fleet.md}"
KEEP="${BENCH_KEEP:-0}"
QUIET_MAX="${BENCH_QUIET_MAX:-90}"
SCRIPT_START=$(date +%s.%N)
NHOSTS=8
NS_PREFIX=drvb       # network namespaces drvb0..drvb7
VETH_PREFIX=dvb      # root-side veths dvb0..dvb7
SINK=dvbz            # ifb packet sink

log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }

[[ $(id -u) == 0 ]] || { echo "bench/fleet.sh needs root (network namespaces, sshd)" >&2; exit 1; }
(( RUNS >= 1 && RUNS <= 3 )) || { echo "BENCH_RUNS must be 1 to 3" >&2; exit 1; }

# ---- tools ---------------------------------------------------------------------------
need_pkgs=()
[ -x /usr/sbin/sshd ] || need_pkgs+=(openssh-server)
command -v ssh >/dev/null && command -v ssh-keygen >/dev/null || need_pkgs+=(openssh-client)
command -v rsync >/dev/null || need_pkgs+=(rsync)
command -v ip >/dev/null || need_pkgs+=(iproute2)
command -v python3 >/dev/null || need_pkgs+=(python3)
command -v flock >/dev/null || need_pkgs+=(util-linux)
if ((${#need_pkgs[@]})); then
    log "installing ${need_pkgs[*]}"
    apt-get update -qq && apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

# One run at a time: the namespace and link names are fixed.
exec 9>/tmp/drover-bench-fleet.lock
flock -n 9 || { echo "another bench/fleet.sh is running (lock /tmp/drover-bench-fleet.lock)" >&2; exit 1; }

# ---- build (retried: other people edit crates/ concurrently) --------------------------
build_with_retry() {
    local what="$1"; shift
    local i err="${TMPDIR:-/tmp}/drover-bench-fleet-build.$$"
    for i in 1 2 3 4 5; do
        if "$@" >/dev/null 2>"$err"; then
            rm -f "$err"
            return 0
        fi
        log "building $what failed (attempt $i); retrying in 60 s"
        tail -n 5 "$err" >&2 || true
        sleep 60
    done
    rm -f "$err"
    log "cannot build $what"; exit 1
}
log "cargo build --release -p drover"
build_with_retry drover cargo build --release -p drover --manifest-path "$REPO/Cargo.toml"
log "cargo build --release (examples/hello)"
build_with_retry hello cargo build --release --manifest-path "$REPO/examples/hello/Cargo.toml"

WORK="$(mktemp -d -t drover-bench-fleet.XXXXXX)"
WORK="$(cd "$WORK" && pwd -P)"   # paths go unquoted into sshd_config and ssh_config
CTRL="$WORK/controller"          # the controller's drover root
cp "$REPO/target/release/drover" "$WORK/drover"
DROVER="$WORK/drover"
HELLO_BIN="$REPO/examples/hello/target/release/hello"
SSH_CONFIG="$WORK/ssh_config"
declare -a SSHD_PIDS=()

# ---- hosts ---------------------------------------------------------------------------
host_net() { echo "10.$((100 + $1)).250"; }   # host index (0-based) -> /24 prefix

# SIGKILLs every process in namespace $1 (they are all this script's: sshd, its sessions,
# the agents and apps they started), repeating while new ones appear, for at most 5 s.
kill_netns() {
    local ns="$1" pids _
    for _ in $(seq 50); do
        pids=$(timeout 5 ip netns pids "$ns" 2>/dev/null | tr '\n' ' ') || true
        [[ -z "${pids// /}" ]] && return 0
        # shellcheck disable=SC2086
        kill -KILL $pids 2>/dev/null || true
        sleep 0.1
    done
    log "WARNING: processes still in $ns after 5 s: $pids"
}

# Removes every namespace drvb<N>, veth dvb<N> and the sink (this script's names only).
sweep() {
    local ns link
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^${NS_PREFIX}[0-9]+$" || true); do
        kill_netns "$ns"
    done
    for link in $(ls /sys/class/net); do
        if [[ "$link" =~ ^${VETH_PREFIX}[0-9]+$ || "$link" == "$SINK" ]]; then
            timeout 10 ip link del "$link" 2>/dev/null || true
        fi
    done
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^${NS_PREFIX}[0-9]+$" || true); do
        timeout 10 ip netns del "$ns" 2>/dev/null || true
    done
}

# Processes (other than this shell's own) whose command line or environment mentions $WORK.
work_pids() {
    python3 - "$WORK" "$$" <<'PY'
import os, sys
want, me = sys.argv[1].encode(), sys.argv[2]
for p in os.listdir("/proc"):
    if not p.isdigit() or p == me or int(p) == os.getpid():
        continue
    try:
        with open(f"/proc/{p}/stat") as f:
            st = f.read()
        if st[st.rfind(")") + 2] in "ZX":
            continue
        blob = b""
        for name in ("cmdline", "environ"):
            with open(f"/proc/{p}/{name}", "rb") as f:
                blob += f.read()
        if want in blob:
            print(p)
    except OSError:
        pass
PY
}

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    log "cleanup: killing the hosts' processes, deleting namespaces and links"
    local pid
    for pid in "${SSHD_PIDS[@]}"; do kill "$pid" 2>/dev/null; done
    sweep
    for pid in "${SSHD_PIDS[@]}"; do wait "$pid" 2>/dev/null; done
    local left
    left=$(work_pids | tr '\n' ' ')
    if [[ -n "${left// /}" ]]; then
        log "WARNING: processes left referring to $WORK: $left — killing them"
        # shellcheck disable=SC2086
        kill -KILL $left 2>/dev/null
    else
        log "cleanup: no process left referring to $WORK"
    fi
    if [[ "$KEEP" == 1 ]]; then
        log "kept $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "removing leftovers of an earlier run (namespaces ${NS_PREFIX}N, links ${VETH_PREFIX}N, $SINK)"
sweep

mkdir -p /run/sshd "$WORK/hosts"
ssh-keygen -t ed25519 -N "" -q -C drover-bench-client -f "$WORK/id_ed25519"
CLIENT_PUB=$(cut -d' ' -f1-2 "$WORK/id_ed25519.pub")
ip link add "$SINK" type ifb
ip link set "$SINK" up
: >"$WORK/known_hosts"
: >"$SSH_CONFIG"
log "creating $NHOSTS hosts (network namespaces with their own sshd)"
for i in $(seq 0 $((NHOSTS - 1))); do
    name="h$((i + 1))"; ns="${NS_PREFIX}$i"; veth="${VETH_PREFIX}$i"; net=$(host_net "$i")
    hdir="$WORK/hosts/$name"
    mkdir -p "$hdir/root"
    ip netns add "$ns"
    ip link add "$veth" type veth peer name eth0 netns "$ns"
    if [[ -e /proc/sys/net/ipv6/conf/$veth/disable_ipv6 ]]; then
        echo 1 >"/proc/sys/net/ipv6/conf/$veth/disable_ipv6"
        ip netns exec "$ns" sh -c 'echo 1 > /proc/sys/net/ipv6/conf/eth0/disable_ipv6'
    fi
    ip addr add "$net.1/24" dev "$veth"
    ip link set "$veth" up
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "$net.2/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" route add default via "$net.1"
    ip route add "$net.0/24" dev "$SINK" metric 4000
    ssh-keygen -t ed25519 -N "" -q -C "drover-bench-$name" -f "$hdir/ssh_host_ed25519_key"
    echo "$CLIENT_PUB" >"$hdir/authorized_keys"
    cat >"$hdir/sshd_config" <<EOF
# sshd of drover bench host $name (netns $ns)
ListenAddress $net.2:22
AddressFamily inet
HostKey $hdir/ssh_host_ed25519_key
PidFile $hdir/sshd.pid
AuthorizedKeysFile $hdir/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
SetEnv DROVER_ROOT=$hdir/root
MaxSessions 64
MaxStartups 100
LogLevel ERROR
UseDNS no
PrintMotd no
PrintLastLog no
X11Forwarding no
Subsystem sftp internal-sftp
EOF
    ip netns exec "$ns" /usr/sbin/sshd -D -e -f "$hdir/sshd_config" </dev/null >"$hdir/sshd.log" 2>&1 &
    SSHD_PIDS+=($!)
    echo "$net.2 $(cut -d' ' -f1-2 "$hdir/ssh_host_ed25519_key.pub")" >>"$WORK/known_hosts"
    printf 'Host %s\n    HostName %s\n    User root\n\n' "$name" "$net.2" >>"$SSH_CONFIG"
done
# ssh takes the first value it finds for an option, so the shared block comes last.
cat >>"$SSH_CONFIG" <<EOF
Host *
    IdentityFile $WORK/id_ed25519
    IdentitiesOnly yes
    UserKnownHostsFile $WORK/known_hosts
    StrictHostKeyChecking yes
    GlobalKnownHostsFile /dev/null
    UpdateHostKeys no
    BatchMode yes
    ConnectTimeout 5
    LogLevel ERROR
EOF
for i in $(seq 0 $((NHOSTS - 1))); do
    ok=0
    for _ in $(seq 100); do  # up to ~10 s
        if timeout 1 bash -c "</dev/tcp/$(host_net "$i").2/22" 2>/dev/null; then ok=1; break; fi
        kill -0 "${SSHD_PIDS[$i]}" 2>/dev/null || break
        sleep 0.1
    done
    if [[ $ok != 1 ]]; then
        log "sshd of h$((i + 1)) is not listening:"; cat "$WORK/hosts/h$((i + 1))/sshd.log" >&2; exit 1
    fi
done
out=$(timeout 20 ssh -F "$SSH_CONFIG" h$NHOSTS 'echo "$DROVER_ROOT"')
[[ "$out" == "$WORK/hosts/h$NHOSTS/root" ]] || { log "ssh to h$NHOSTS gave DROVER_ROOT=$out"; exit 1; }

# ---- app trees -----------------------------------------------------------------------
# drover.toml of an app dir: $1 name, $2 version, $3 proxy port, then the environments.
app_toml() {
    local name="$1" version="$2" port="$3" envs="$4"
    cat <<EOF
[app]
name = "$name"
version = "$version"

[process.web]
command = "./hello"
http = true

[health]
path = "/up"
timeout = "10s"

[proxy]
port = $port
drain_timeout = "1s"

[ssh]
config = "$SSH_CONFIG"
timeout = "5s"
parallel = 8
$envs
EOF
}
hosts_list() { local s="" k; for k in $(seq "$1" "$2"); do s+="${s:+, }\"h$k\""; done; echo "[$s]"; }
ALL_ENVS=$'\n[environments.all]\nhosts = '"$(hosts_list 1 $NHOSTS)"$'\nstrategy = { kind = "all-at-once" }\n'
DELTA_ENVS=""
for k in 1 2 3 4 5; do
    DELTA_ENVS+=$'\n'"[environments.d$k]"$'\n'"hosts = [\"h$k\"]"$'\n'"strategy = { kind = \"all-at-once\" }"$'\n'
done
SCALE_ENVS="$ALL_ENVS"
for n in 1 4 8; do
    SCALE_ENVS+=$'\n'"[environments.n$n]"$'\n'"hosts = $(hosts_list 1 $n)"$'\n'"strategy = { kind = \"all-at-once\" }"$'\n'
    SCALE_ENVS+=$'\n'"[environments.r$n]"$'\n'"hosts = $(hosts_list 1 $n)"$'\n'"strategy = { kind = \"rolling\", batch = 1 }"$'\n'
done

cat >"$WORK/gen.py" <<'PY'
# gen.py v1 DIR  |  gen.py mutate DIR KINDS   (KINDS: "lib", "files" or "lib,files")
import json, os, random, struct, sys

KiB, MiB = 1 << 10, 1 << 20

def write(tree, rel, data):
    p = os.path.join(tree, rel)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "wb") as f:
        f.write(data)

def binary_like(rng, size):
    """Executable-like bytes: repeated blocks, record tables, zero padding, random runs."""
    blocks = [rng.randbytes(4096) for _ in range(64)]
    parts, got = [], 0
    while got < size:
        r = rng.random()
        if r < 0.4:
            piece = rng.choice(blocks)
        elif r < 0.7:
            base, k = rng.getrandbits(32), rng.randint(64, 512)
            piece = b"".join(struct.pack("<IIHH", base + i, i * 8, i & 0xFFFF, 0x7F7F) for i in range(k))
        elif r < 0.85:
            piece = bytes(rng.randint(256, 8192))
        else:
            piece = rng.randbytes(rng.randint(1024, 16384))
        parts.append(piece)
        got += len(piece)
    return b"".join(parts)[:size]

rng_words = random.Random(7)
WORDS = ["".join(rng_words.choices("abcdefghijklmnopqrstuvwxyz", k=rng_words.randint(2, 10))) for _ in range(3000)]
KW = ["function", "const", "let", "return", "if", "else", "import", "export", "class", "new",
      "this", "for", "of", "await", "async", "=>", "null", "true", "false", "var"]

def text_line(rng):
    toks = [rng.choice(KW) if rng.random() < 0.3 else rng.choice(WORDS) for _ in range(rng.randint(2, 10))]
    return ("  " * rng.randint(0, 4) + " ".join(toks) + rng.choice([";", " {", "}", ",", ")", ""]) + "\n").encode()

def small_file(rng, n):
    """(relative path, bytes) of small file number n: js/css/html/md text or JSON."""
    size = rng.randint(512, 8 * KiB)
    kind = rng.choice(["js", "js", "css", "html", "md", "json", "json"])
    if kind == "json":
        items, body = [], b""
        while len(body) < size:
            items.append({"id": rng.getrandbits(32), "name": rng.choice(WORDS),
                          "tags": rng.sample(WORDS, 3), "price": round(rng.random() * 100, 2),
                          "enabled": rng.random() < 0.5})
            body = json.dumps({"version": 1, "items": items}, indent=2).encode()
        data = body
    else:
        lines, got = [], 0
        while got < size:
            l = text_line(rng)
            lines.append(l)
            got += len(l)
        data = b"".join(lines)
    area = ["js", "css", "i18n", "api", "docs", "components"][n % 6]
    return "static/%s/p%02d/f%05d.%s" % (area, n % 29, n, kind), data

def data_file(rng, size):
    """A compressible CSV-like log."""
    lines, got = [], 0
    methods, codes = ["GET", "POST", "PUT", "DELETE"], [200, 200, 200, 201, 204, 301, 404, 500]
    while got < size:
        l = ("2024-%02d-%02dT%02d:%02d:%02dZ,user%05d,%s,/api/v1/%s/%d,%d,%d\n" % (
            rng.randint(1, 12), rng.randint(1, 28), rng.randint(0, 23), rng.randint(0, 59),
            rng.randint(0, 59), rng.randint(0, 99999), rng.choice(methods), rng.choice(WORDS),
            rng.randint(0, 99999), rng.choice(codes), rng.randint(1, 5000))).encode()
        lines.append(l)
        got += len(l)
    return b"".join(lines)[:size]

def v1(tree):
    rng = random.Random(1001)
    write(tree, "lib/libapp.so", binary_like(rng, 12 * MiB))
    for k in range(3):
        write(tree, "lib/libdep%d.so" % k, binary_like(rng, 4 * MiB))
    rng = random.Random(1002)
    for n in range(3000):
        rel, data = small_file(rng, n)
        write(tree, rel, data)
    rng = random.Random(1003)
    for k in range(4):
        write(tree, "data/log%d.csv" % k, data_file(rng, 3 * MiB))
    rng = random.Random(1004)
    done, k = 0, 0
    while done < 12 * MiB:
        size = min(rng.randint(256 * KiB, 2 * MiB), 12 * MiB - done)
        write(tree, "assets/a%02d.%s" % (k, rng.choice(["jpg", "png", "woff2", "webp"])), rng.randbytes(size))
        done += size
        k += 1

def mutate(tree, kinds):
    if "lib" in kinds:
        # The main library is rebuilt: 16 regions of 16-64 KiB rewritten, 4 KiB inserted.
        rng = random.Random(2001)
        p = os.path.join(tree, "lib/libapp.so")
        data = bytearray(open(p, "rb").read())
        seg = len(data) // 16
        changed = 0
        for k in range(16):  # one region in each sixteenth, at a random place in it
            size = rng.randint(16 * KiB, 64 * KiB)
            off = k * seg + rng.randint(0, seg - size)
            data[off:off + size] = binary_like(rng, size)
            changed += size
        at = len(data) // 3
        data[at:at] = binary_like(rng, 4 * KiB)
        with open(p, "wb") as f:
            f.write(data)
        print("lib: %d bytes rewritten in 16 regions (%.1f %%), 4096 inserted" % (changed, 100 * changed / (12 * MiB)), file=sys.stderr)
    if "files" in kinds:
        rng = random.Random(2002)
        small = sorted(os.path.relpath(os.path.join(d, f), tree)
                       for d, _, fs in os.walk(os.path.join(tree, "static")) for f in fs)
        picks = rng.sample(small, 41)
        edited, removed = picks[:30], picks[30:35]
        for rel in edited:  # a line changed in the middle, one appended
            p = os.path.join(tree, rel)
            lines = open(p, "rb").read().split(b"\n")
            lines[len(lines) // 2] = b"  /* changed in v2: %d */" % rng.getrandbits(32)
            lines.append(b"// v2")
            with open(p, "wb") as f:
                f.write(b"\n".join(lines))
        for rel in removed:
            os.remove(os.path.join(tree, rel))
        for n in range(6):
            rel, data = small_file(rng, 5000 + n)
            write(tree, rel, data)
        assets = sorted(os.listdir(os.path.join(tree, "assets")))
        gone = assets[rng.randrange(len(assets))]
        size = os.path.getsize(os.path.join(tree, "assets", gone))
        os.remove(os.path.join(tree, "assets", gone))
        write(tree, "assets/new-%s" % gone, rng.randbytes(size))
        with open(os.path.join(tree, "data/log0.csv"), "ab") as f:
            f.write(data_file(rng, 64 * KiB))
        print("files: %d edited, %d removed, 6 added, asset %s (%d bytes) replaced, 64 KiB appended to data/log0.csv"
              % (len(edited), len(removed), gone, size), file=sys.stderr)

if sys.argv[1] == "v1":
    v1(sys.argv[2])
else:
    mutate(sys.argv[2], sys.argv[3].split(","))
PY

TREES="$WORK/trees"
log "generating the app trees (v1, v2, v2a, v2b)"
mkdir -p "$TREES/v1"
python3 "$WORK/gen.py" v1 "$TREES/v1"
cp "$HELLO_BIN" "$TREES/v1/hello"
app_toml webapp 1 8080 "$DELTA_ENVS" >"$TREES/v1/drover.toml"
for v in v2 v2a v2b; do
    cp -a "$TREES/v1" "$TREES/$v"   # same mtimes for unchanged files, as a build tree keeps them
done
python3 "$WORK/gen.py" mutate "$TREES/v2" lib,files 2>"$WORK/mutate.txt"
python3 "$WORK/gen.py" mutate "$TREES/v2a" lib 2>/dev/null
python3 "$WORK/gen.py" mutate "$TREES/v2b" files 2>/dev/null
for v in v2 v2a v2b; do
    app_toml webapp "${v#v}" 8080 "$DELTA_ENVS" >"$TREES/$v/drover.toml"
done
mkdir -p "$WORK/apps/scale"
cp "$HELLO_BIN" "$WORK/apps/scale/hello"
app_toml hello 0 8081 "$SCALE_ENVS" >"$WORK/apps/scale/drover.toml"
head -c 1048576 /dev/zero >"$WORK/apps/scale/bundle.bin"
sync

# ---- the measurements (python3 for timing, counters and statistics) ------------------
cat >"$WORK/bench.py" <<'PY'
import json, os, re, resource, statistics, subprocess, sys, threading, time, random

drover_bin, ctrl, work, runs, quiet_max = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
nhosts = int(sys.argv[6])
ssh_config = os.path.join(work, "ssh_config")
trees = os.path.join(work, "trees")
scale_dir = os.path.join(work, "apps", "scale")
now = time.perf_counter
HZ = os.sysconf("SC_CLK_TCK")
out = {"runs": runs, "nhosts": nhosts}

def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

# ---- counters --------------------------------------------------------------------------
def wire(i):
    """rx + tx bytes of host i's (1-based) root-side veth: everything on its wire."""
    t = 0
    for f in ("rx_bytes", "tx_bytes"):
        with open(f"/sys/class/net/dvb{i - 1}/statistics/{f}") as fh:
            t += int(fh.read())
    return t

NS_INODES = set()
for i in range(nhosts):
    NS_INODES.add(f"net:[{os.stat(f'/run/netns/drvb{i}').st_ino}]")

def busy_ticks():
    with open("/proc/stat") as f:
        v = f.readline().split()[1:]
    v = [int(x) for x in v]
    return v[0] + v[1] + v[2] + v[5] + v[6] + v[7]  # user nice system irq softirq steal

def netns_ticks():
    """CPU ticks of every process in the hosts' namespaces, with their reaped children."""
    t = 0
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{p}/ns/net") not in NS_INODES:
                continue
            with open(f"/proc/{p}/stat") as f:
                st = f.read()
            fields = st[st.rfind(")") + 2:].split()
            t += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
        except OSError:
            pass
    return t

def children_secs():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime

def cpu_snap():
    return (busy_ticks(), netns_ticks(), children_secs())

def cpu_delta(a, b):
    """(CPU s of everything, CPU s of this benchmark's processes, CPU s of the rest)."""
    total = (b[0] - a[0]) / HZ
    ours = (b[1] - a[1]) / HZ + (b[2] - a[2])
    return round(total, 2), round(ours, 2), round(max(0.0, total - ours), 2)

quiet_left = quiet_max
def wait_quiet():
    """Waits (from a budget of quiet_max s in all) for a second with < 0.1 CPU s used."""
    global quiet_left
    while quiet_left > 0:
        b0 = busy_ticks(); time.sleep(1); b1 = busy_ticks()
        if (b1 - b0) * 10 < HZ:
            return
        quiet_left -= 1
        if int(quiet_left) % 30 == 0:
            log(f"waiting for other processes to go quiet ({int(quiet_left)} s left)")

# ---- commands ----------------------------------------------------------------------------
def run_timed(cmd, timeout, what):
    """Runs cmd; returns (wall s, rc, [(arrival s, stdout line)], stderr). Killed past timeout."""
    errf = os.path.join(work, "last-stderr.txt")
    with open(errf, "w") as err:
        t0 = now()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
        killer = threading.Timer(timeout, p.kill)
        killer.start()
        lines = []
        for line in p.stdout:
            lines.append((now() - t0, line.rstrip("\n")))
        rc = p.wait()
        wall = now() - t0
        killer.cancel()
    stderr = open(errf).read()
    if rc != 0:
        raise SystemExit(f"{what} exited {rc} after {wall:.1f} s (timeout {timeout} s):\n"
                         + "\n".join(l for _, l in lines[-40:]) + "\n" + stderr[-4000:])
    return wall, rc, lines, stderr

def drover(*args, timeout=120):
    return run_timed([drover_bin, "--root", ctrl, *args], timeout, "drover " + " ".join(args))

def parse_deploy(lines):
    events, report_at = [], None
    for k, (t, l) in enumerate(lines):
        if l == "{":
            report_at = k
            break
        try:
            e = json.loads(l)
        except ValueError:
            continue
        if isinstance(e, dict) and "phase" in e:
            events.append((t, e))
    report = json.loads("\n".join(l for _, l in lines[report_at:])) if report_at is not None else None
    return events, report, (lines[report_at][0] if report_at is not None else None)

def deploy(appdir, env, hosts, timeout=300):
    """`drover deploy appdir -e env --json`: wall, bytes on the hosts' wires, phases."""
    wait_quiet()
    w0 = {h: wire(h) for h in hosts}
    c0 = cpu_snap()
    wall, _, lines, _ = drover("deploy", appdir, "-e", env, "--json", timeout=timeout)
    c1 = cpu_snap()
    w1 = {h: wire(h) for h in hosts}
    events, report, report_t = parse_deploy(lines)
    if not report or not report.get("ok"):
        raise SystemExit(f"deploy to {env} did not end ok: {report}")
    for h in report["hosts"]:
        if h["state"] != "live":
            raise SystemExit(f"deploy to {env}: {h}")
    def first(pred):
        ts = [t for t, e in events if pred(e["phase"])]
        return min(ts) if ts else None
    def last(pred):
        ts = [t for t, e in events if pred(e["phase"])]
        return max(ts) if ts else None
    marks = [
        ("start -> first progress line (CLI, release build check, load)", 0.0),
        ("ssh connections", first(lambda p: p == "connecting")),
        ("version check + environment lock", first(lambda p: p == "checking")),
        ("transfer (first host sending -> last host sent)", first(lambda p: p == "sending")),
        ("switch (last sent -> last host live)", last(lambda p: p.startswith("sent "))),
        ("audit, lock release, report, exit", last(lambda p: p.startswith("live"))),
    ]
    phases = {}
    for k, (name, t) in enumerate(marks):
        nxt = marks[k + 1][1] if k + 1 < len(marks) else wall
        if t is not None and nxt is not None:
            phases[name] = nxt - t
    chunks = []
    for t, e in events:
        m = re.match(r"sent .*\((\d+) of (\d+) chunks were there\)", e["phase"])
        if m:
            chunks.append((int(m.group(1)), int(m.group(2))))
    return {
        "wall": wall,
        "wire": sum(w1[h] - w0[h] for h in hosts),
        "bytes_sent": sum(h["bytes_sent"] for h in report["hosts"]),
        "phases": phases,
        "transfer": phases.get("transfer (first host sending -> last host sent)"),
        "chunks": chunks,
        "cpu": cpu_delta(c0, c1),
        "events": [(round(t, 4), e) for t, e in events],
    }

def rsync(src, host, dst, timeout=300):
    wait_quiet()
    w0 = wire(host)
    c0 = cpu_snap()
    wall, _, lines, _ = run_timed(
        ["rsync", "-az", "--delete", "--stats", "-e", f"ssh -F {ssh_config}", src.rstrip("/") + "/",
         f"h{host}:{dst.rstrip('/')}/"], timeout, f"rsync to h{host}")
    c1 = cpu_snap()
    w1 = wire(host)
    text = "\n".join(l for _, l in lines)
    def stat(label):
        m = re.search(label + r": ([\d,]+)", text)
        return int(m.group(1).replace(",", "")) if m else None
    return {"wall": wall, "wire": w1 - w0, "sent": stat("Total bytes sent"),
            "received": stat("Total bytes received"), "cpu": cpu_delta(c0, c1)}

def serving(host, port):
    """The version host `host` answers with on `port` (GET /)."""
    import socket
    ip = f"10.{99 + host}.250.2"
    try:
        with socket.create_connection((ip, port), timeout=3) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            s.settimeout(3)
            buf = b""
            while b"(version " not in buf or b"," not in buf.split(b"(version ", 1)[1]:
                d = s.recv(4096)
                if not d:
                    break
                buf += d
        return buf.split(b"(version ", 1)[1].split(b",", 1)[0].decode()
    except (OSError, IndexError):
        return None

def check_serving(hosts, port, version):
    for h in hosts:
        got = serving(h, port)
        if got != version:
            raise SystemExit(f"h{h} serves {got!r} on port {port}, expected {version!r}")

def same_tree(a, b):
    r = subprocess.run(["diff", "-rq", "--no-dereference", a, b], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise SystemExit(f"rsync result differs from {a}:\n{r.stdout[:2000]}")

# ---- 0. setup and stored releases ---------------------------------------------------------
log(f"drover host setup -e all ({nhosts} hosts)")
t0 = now()
drover("host", "setup", "-e", "all", "--dir", scale_dir, timeout=300)
out["setup_secs"] = now() - t0

out["builds"] = {}
for v in ("v1", "v2", "v2a", "v2b"):
    t0 = now()
    _, _, lines, _ = drover("build", os.path.join(trees, v), "--json", timeout=300)
    b = json.loads("\n".join(l for _, l in lines))
    b["wall"] = now() - t0
    out["builds"][v] = b
    log(f"stored {v}: {b.get('files')} files, {b.get('bytes')} bytes, {b['wall']:.2f} s")

# ---- 1. delta transfer against rsync --------------------------------------------------------
delta = {"v1_drover": [], "v1_rsync": [], "v2_drover": [], "v2_rsync": [], "order": []}
for r in range(1, runs + 1):
    env, dst = f"d{r}", os.path.join(work, "hosts", f"h{r}", "rsync", "webapp")
    log(f"delta run {r}/{runs} on h{r}: initial copies of v1 (drover, rsync)")
    delta["v1_drover"].append(deploy(os.path.join(trees, "v1"), env, [r]))
    check_serving([r], 8080, "1")
    delta["v1_rsync"].append(rsync(os.path.join(trees, "v1"), r, dst))
    order = ["drover", "rsync"] if r % 2 == 1 else ["rsync", "drover"]
    delta["order"].append(order)
    for tool in order:
        log(f"delta run {r}/{runs} on h{r}: v1 -> v2 with {tool}")
        if tool == "drover":
            delta["v2_drover"].append(deploy(os.path.join(trees, "v2"), env, [r]))
            check_serving([r], 8080, "2")
        else:
            delta["v2_rsync"].append(rsync(os.path.join(trees, "v2"), r, dst))
    same_tree(os.path.join(trees, "v2"), dst)
out["delta"] = delta

split = {}
for host, v in ((4, "v2a"), (5, "v2b")):
    env, dst = f"d{host}", os.path.join(work, "hosts", f"h{host}", "rsync", "webapp")
    log(f"delta split on h{host}: v1 -> {v}")
    deploy(os.path.join(trees, "v1"), env, [host])
    rsync(os.path.join(trees, "v1"), host, dst)
    split[v] = {"drover": deploy(os.path.join(trees, v), env, [host]),
                "rsync": rsync(os.path.join(trees, v), host, dst)}
    check_serving([host], 8080, v[1:])
    same_tree(os.path.join(trees, v), dst)
out["split"] = split

# ---- 2. deploy time by fleet size -----------------------------------------------------------
version = 0
def new_version():
    """The scale app at a new version: drover.toml's version and a new 1 MiB bundle."""
    global version
    version += 1
    toml = os.path.join(scale_dir, "drover.toml")
    text = open(toml).read()
    text = re.sub(r'(?m)^version = "\d+"$', f'version = "{version}"', text, count=1)
    with open(toml + ".new", "w") as f:
        f.write(text)
    os.replace(toml + ".new", toml)
    with open(os.path.join(scale_dir, "bundle.bin"), "wb") as f:
        f.write(random.Random(5000 + version).randbytes(1 << 20))
    return str(version)

log(f"fleet size: first deploy of the example app to all {nhosts} hosts")
v = new_version()
out["scale_first"] = deploy(scale_dir, "all", list(range(1, nhosts + 1)))
check_serving(range(1, nhosts + 1), 8081, v)
sizes = [1, 4, 8]
scale = {}
for kind in ("n", "r"):
    for rd in range(runs):
        order = sizes[rd % 3:] + sizes[:rd % 3]
        for n in order:
            v = new_version()
            log(f"fleet size: round {rd + 1}/{runs}, {n} host(s), "
                f"{'all-at-once' if kind == 'n' else 'rolling batch 1'}, version {v}")
            res = deploy(scale_dir, f"{kind}{n}", list(range(1, n + 1)))
            check_serving(range(1, n + 1), 8081, v)
            res["round"] = rd + 1
            scale.setdefault(f"{kind}{n}", []).append(res)
out["scale"] = scale
out["quiet_waited"] = quiet_max - quiet_left
print(json.dumps(out, indent=1))
PY

log "running the measurements"
timeout 1200 python3 "$WORK/bench.py" "$DROVER" "$CTRL" "$WORK" "$RUNS" "$QUIET_MAX" "$NHOSTS" >"$WORK/results.json"

# ---- report ----------------------------------------------------------------------------
TREE_FILES=$(find "$TREES/v1" -type f | wc -l)
TREE_BYTES=$(find "$TREES/v1" -type f -printf '%s\n' | awk '{s+=$1} END {print s}')
MUTATE=$(cat "$WORK/mutate.txt")
CPU=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
RAM_GB=$(awk '/MemTotal/ {printf "%.1f", $2/1048576}' /proc/meminfo)
REV=$(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(cd "$REPO" && { git diff --quiet HEAD -- crates 2>/dev/null && echo "" || echo " (crates/ has uncommitted changes)"; })
RSYNC_VER=$(rsync --version | head -1 | grep -o 'version [0-9.]*')
SSH_VER=$(ssh -V 2>&1 | cut -d, -f1)
SCRIPT_SECS=$(python3 -c "import time; print(round(time.time() - $SCRIPT_START))")

export DATE_UTC="$(date -u '+%Y-%m-%d %H:%M:%S UTC')" MACHINE="$CPU, $(nproc) CPUs (nproc), ${RAM_GB} GiB RAM; kernel $(uname -sr)"
export DROVER_BIN="$DROVER" DROVER_DESC="release build of commit $REV$DIRTY" TREE_FILES TREE_BYTES MUTATE RSYNC_VER SSH_VER SCRIPT_SECS

REPORT=$(python3 - "$WORK/results.json" <<'PY'
import json, os, statistics, sys
r = json.load(open(sys.argv[1]))
E = os.environ
runs = r["runs"]
med = lambda xs: statistics.median(xs)
mib = lambda b: f"{b / 1048576:.2f} MiB"
kib = lambda b: f"{b / 1024:.0f} KiB"
s = lambda x: f"{x:.2f} s"
ms = lambda x: f"{x * 1000:.0f} ms"
def spread(xs, f):
    return f"{f(med(xs))}" + (f" ({f(min(xs))}–{f(max(xs))})" if len(xs) > 1 else "")
def ok(c):
    return "yes" if c else "**no**"

d = r["delta"]
dv1, rv1, dv2, rv2 = d["v1_drover"], d["v1_rsync"], d["v2_drover"], d["v2_rsync"]
b = r["builds"]
w_d, w_r = med([x["wire"] for x in dv2]), med([x["wire"] for x in rv2])
t_d, t_r = med([x["wall"] for x in dv2]), med([x["wall"] for x in rv2])
tt_d = med([x["transfer"] for x in dv2])
print(f"""# drover fleet deploys: delta transfer vs rsync, deploy time by fleet size

- Date: {E['DATE_UTC']}
- Machine: {E['MACHINE']}
- drover: {E['DROVER_DESC']}; {E['RSYNC_VER'].replace('version', 'rsync')}; {E['SSH_VER']} on both ends
- Hosts: network namespaces on this machine, each with its own sshd (ed25519 keys,
  default ciphers) reached over a veth pair: no bandwidth limit and no added latency, so
  the link is far faster than a real network, and the controller, every host's sshd, agent
  and app share the same {os.cpu_count()} CPUs.
- Bytes on the wire: rx + tx of the host's root-side veth during the command (ssh, TCP,
  IP and Ethernet headers included, both directions). Wall: the whole command, from
  fork to exit, measured by python3.
- "Other CPU" is CPU time used by processes that are not part of the benchmark (neither
  the commands, their children, nor anything in the hosts' namespaces) during a
  measurement, from /proc/stat; kernel threads (softirq work for the veth traffic among
  them) count there too. Before each measurement the script waited for a quiet second
  ({r['quiet_waited']:.0f} s waited in all).

## 1. Delta transfer: drover vs `rsync -az`

The app tree v1: {int(E['TREE_FILES']):,} files, {int(E['TREE_BYTES']) / 1048576:.1f} MiB — the example server binary, a 12 MiB
main library and three 4 MiB dependency libraries (binary-like, moderately compressible),
3,000 small (0.5-8 KiB) text and JSON files, four 3 MiB CSV-like data files, 12 MiB of
random bytes as images and fonts. v2 is v1 after a release:

```
{E['MUTATE']}
```

plus the version in drover.toml. Unchanged files keep their mtimes (`cp -a`), so rsync's
quick check skips them, as it would for a build tree kept between releases.

Commands, on a host that already holds v1 (drover: deployed; rsync: in the target directory):

- drover: `drover deploy V2DIR -e ENV --json` (ENV: one host, all-at-once). v2 was stored
  beforehand with `drover build` ({s(b['v2']['wall'])} after v1; the deploy's own build finds every
  file unchanged). The deploy is the whole rollout: ssh connection, version check, lock,
  transfer, the switch to the new release behind its health check, audit log.
- rsync: `rsync -az --delete --stats -e "ssh -F ssh_config" V2DIR/ HOST:DIR/`, over the same sshd.

Median of {runs} runs, each on its own fresh host (min–max in brackets):

| v1 → v2 | drover | rsync -az | drover / rsync | goal |
|---|---:|---:|---:|---|
| bytes on the wire | {spread([x['wire'] for x in dv2], mib)} | {spread([x['wire'] for x in rv2], mib)} | {w_d / w_r:.2f} | ≤ 1.0 — {'met' if w_d <= w_r else '**not met**'} |
| bytes the tool counts (drover `bytes_sent`; rsync sent + received) | {spread([x['bytes_sent'] for x in dv2], mib)} | {spread([x['sent'] + x['received'] for x in rv2], mib)} | | |
| wall, whole command | {spread([x['wall'] for x in dv2], s)} | {spread([x['wall'] for x in rv2], s)} | {t_d / t_r:.2f} | ≤ 1.0 — {'met' if t_d <= t_r else '**not met**'} |
| wall, drover's transfer phase alone (`sending` → `sent` progress lines) | {spread([x['transfer'] for x in dv2], s)} | | {tt_d / t_r:.2f} | |
| CPU s, benchmark's processes (controller + host) | {med([x['cpu'][1] for x in dv2]):.2f} | {med([x['cpu'][1] for x in rv2]):.2f} | | |
| other CPU s | {med([x['cpu'][2] for x in dv2]):.2f} | {med([x['cpu'][2] for x in rv2]):.2f} | | |

Chunks: drover sent {', '.join(f"{t - h} of {t}" for x in dv2 for h, t in x['chunks'][:1])} chunks (the rest were on the host already).

The initial copy of v1 to an empty host, for reference:

| v1 (empty host) | drover | rsync -az |
|---|---:|---:|
| bytes on the wire | {spread([x['wire'] for x in dv1], mib)} | {spread([x['wire'] for x in rv1], mib)} |
| wall, whole command | {spread([x['wall'] for x in dv1], s)} | {spread([x['wall'] for x in rv1], s)} |
| drover's transfer phase | {spread([x['transfer'] for x in dv1], s)} | |

Which change costs what (one run each, v1 → v2a on h4 and v1 → v2b on h5):

| change | drover on the wire | rsync on the wire | drover / rsync | drover wall | rsync wall |
|---|---:|---:|---:|---:|---:|""")
names = {"v2a": "main library rebuilt (16 regions, ~5 % of it, + 4 KiB inserted)",
         "v2b": "1 % of small files edited, 6 added, 5 removed, an asset replaced, 64 KiB appended to a log"}
for v in ("v2a", "v2b"):
    x = r["split"][v]
    print(f"| {names[v]} | {mib(x['drover']['wire'])} | {mib(x['rsync']['wire'])} | "
          f"{x['drover']['wire'] / x['rsync']['wire']:.2f} | {s(x['drover']['wall'])} | {s(x['rsync']['wall'])} |")
print(f"""
Where drover's v1 → v2 deploy spends its time (median of the {runs} runs):

| phase | median |
|---|---:|""")
for name in dv2[0]["phases"]:
    print(f"| {name} | {ms(med([x['phases'][name] for x in dv2 if name in x['phases']]))} |")
print(f"| **whole command** | {ms(t_d)} |")

print(f"""
Stored releases on the controller (`drover build --json`, before the runs):

| tree | files | bytes | stored bytes | wall |
|---|---:|---:|---:|---:|""")
for v in ("v1", "v2", "v2a", "v2b"):
    x = b[v]
    print(f"| {v} | {x.get('files')} | {mib(x.get('bytes', 0))} | {mib(x.get('stored_bytes', 0))} | {s(x['wall'])} |")

sc = r["scale"]
a1, a8 = med([x["wall"] for x in sc["n1"]]), med([x["wall"] for x in sc["n8"]])
print(f"""
## 2. Deploy time by fleet size

The example server (one `web` instance behind the proxy, health check on `/up`) plus a
1 MiB incompressible bundle that is new in every version, so each deploy sends ~1 MiB to
every host. Every host is set up and holds the previous version; each measured deploy is a
new version (`drover deploy DIR -e ENV --json`, the release build of the app dir included).
The first deploy to all {r['nhosts']} hosts (nothing there yet) took {s(r['scale_first']['wall'])}.
Median of {runs} rounds (min–max); the order of the sizes rotates per round:

| hosts | all-at-once | rolling, batch = 1 | on the wire, all hosts (all-at-once) |
|---:|---:|---:|---:|""")
for n in (1, 4, 8):
    print(f"| {n} | {spread([x['wall'] for x in sc[f'n{n}']], s)} | {spread([x['wall'] for x in sc[f'r{n}']], s)} | "
          f"{mib(med([x['wire'] for x in sc[f'n{n}']]))} |")
print(f"""
| measure | value | goal |
|---|---:|---|
| 8 hosts / 1 host, all-at-once | **{a8 / a1:.2f}×** | < 2× — {'met' if a8 / a1 < 2 else '**not met**'} |
| 8 hosts / 1 host, rolling batch = 1 | {med([x['wall'] for x in sc['r8']]) / med([x['wall'] for x in sc['r1']]):.2f}× | (for information) |

Where an all-at-once deploy spends its time (median per phase; for several hosts a phase
runs from the first host entering it to the last host leaving it):

| phase | 1 host | 4 hosts | 8 hosts | 8 hosts, rolling |
|---|---:|---:|---:|---:|""")
for name in sc["n1"][0]["phases"]:
    cells = [ms(med([x["phases"].get(name, 0.0) for x in sc[k]])) for k in ("n1", "n4", "n8", "r8")]
    print(f"| {name} | {' | '.join(cells)} |")
print(f"| **whole command** | {' | '.join(ms(med([x['wall'] for x in sc[k]])) for k in ('n1', 'n4', 'n8', 'r8'))} |")
print(f"""
Other CPU during the deploys (median CPU s): {', '.join(f"{k} {med([x['cpu'][2] for x in sc[k]]):.2f}" for k in ('n1', 'n4', 'n8', 'r1', 'r4', 'r8'))}.

Every run (wall s / wire MiB / other CPU s):

| run | {' | '.join(['drover v1', 'rsync v1', 'drover v2', 'rsync v2'])} |
|---|---|---|---|---|""")
for i in range(runs):
    cells = [f"{x['wall']:.2f} / {x['wire'] / 1048576:.2f} / {x['cpu'][2]:.2f}" for x in (dv1[i], rv1[i], dv2[i], rv2[i])]
    print(f"| {i + 1} (h{i + 1}; v2 order: {' then '.join(d['order'][i])}) | {' | '.join(cells)} |")
print()
print("| env | " + " | ".join(f"round {i + 1}" for i in range(runs)) + " |")
print("|---|" + "---|" * runs)
for k in ("n1", "n4", "n8", "r1", "r4", "r8"):
    print(f"| {k} | " + " | ".join(f"{x['wall']:.2f} / {x['wire'] / 1048576:.2f} / {x['cpu'][2]:.2f}" for x in sc[k]) + " |")
print(f"""
Host setup of all {r['nhosts']} hosts (`drover host setup -e all`: installs the {os.path.getsize(E['DROVER_BIN']) / 1048576:.0f} MiB
drover binary on each, starts the agents): {s(r['setup_secs'])}. Whole script (cargo builds, trees,
hosts, every run): {E['SCRIPT_SECS']} s.

Reproduce:

```
bash bench/fleet.sh
```

(`BENCH_RUNS` sets the runs, 1 to 3, default 3; `BENCH_KEEP=1` keeps the temp dir with
the ssh config, every host's root and logs.)""")
PY
)

echo "$REPORT"
if [[ "$RESULTS" != "-" ]]; then
    mkdir -p "$(dirname "$RESULTS")"
    printf '%s\n' "$REPORT" >"$RESULTS"
    log "wrote $RESULTS"
fi
