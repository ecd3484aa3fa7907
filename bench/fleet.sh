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
#   BENCH_PERF      0 to skip the perf profile of one 8-host deploy (default: on when
#                   `perf record -a` works)
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
#      everything); wall = the whole command. Before every measured command: `sync` (no
#      command pays for the writes of the one before), then a quiet second; after each
#      rsync, the time of a `sync` (rsync's writes are not durable when it exits). For drover the time each JSON progress line
#      arrives gives the phases (build check, connect, check + lock, transfer, switch, end).
#      Once more on h4 (v1 -> v2a) and h5 (v1 -> v2b), one run each, to show which change
#      costs what.
#   5. deploy time by fleet size: the example app (+ a 1 MiB incompressible bundle that is new
#      in every version) deployed once to all 8 hosts, then BENCH_RUNS rounds of a new
#      version to 1, 4 and 8 hosts (environments n1/n4/n8, all-at-once; the order rotates per
#      round) with drover's default `[ssh] persist` (the connections of the previous deploy
#      are reused); the same with rolling batch = 1 (r1/r4/r8); the same all-at-once with
#      `persist = "0s"` (new connections every deploy); and to 1 and 8 hosts with new
#      connections and `options = ["KexAlgorithms=curve25519-sha256"]`. Wall time of
#      `drover deploy DIR -e ENV --json`, including its release build. Also timed: a bare
#      `ssh h1 true` with the default and with the curve25519 key exchange. drover's
#      persistent control sockets live under the temp dir (TMPDIR).
#      The delta deploys of step 4 use `persist = "0s"`: one new connection, like rsync.
#   6. (perf available) one more 8-host deploy (new connections) under `perf record -a -F
#      999`: CPU time by process name
#   7. writes bench/results/fleet.md
# CPU accounting: this script, and so every command it runs, is in the cgroup
# drover-bench-fleet/controller, every host's sshd (and so all it starts) in
# drover-bench-fleet/hosts (cpuacct on cgroup v1, cpu.stat on v2); /proc/stat gives the rest.
# Sessions on the hosts get HOME set to an empty directory (sshd SetEnv), so they do not run
# this machine's root ~/.bashrc; the report gives what that costs per session.
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

# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"
build_drover_and_hello
# What was built (read now: others may commit while the benchmark runs).
REV=$(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(cd "$REPO" && { git diff --quiet HEAD -- crates 2>/dev/null && echo "" || echo " (crates/ has uncommitted changes)"; })

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

# Processes whose command line or environment mentions $WORK, except this shell and its
# own subshells.
work_pids() {
    live_pids any "$WORK" "$$"
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
        sleep 0.5
    else
        log "cleanup: no process left referring to $WORK"
    fi
    [[ -n "${CG:-}" ]] && cg_remove
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

# CPU accounting: two cgroups under one parent. "controller" holds this script and so every
# drover, ssh and rsync command it runs; "hosts" holds every host's sshd and so their
# sessions and the agents and apps those start. Their CPU time is exact even for processes
# that exit mid-measurement. (cpuacct on cgroup v1, the basic cpu.stat on cgroup v2.)
CG="" CG_FILE=""
if [[ -f /sys/fs/cgroup/cpuacct/cpuacct.usage ]]; then
    CG=/sys/fs/cgroup/cpuacct/drover-bench-fleet; CG_FILE=cpuacct.usage
elif [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then
    CG=/sys/fs/cgroup/drover-bench-fleet; CG_FILE=cpu.stat
fi
cg_remove() {  # moves this shell back to the root cgroup and removes the benchmark's
    local d
    echo $$ >"$(dirname "$CG")/cgroup.procs" 2>/dev/null
    for d in "$CG/controller" "$CG/hosts" "$CG"; do
        [[ -d "$d" ]] || continue
        rmdir "$d" 2>/dev/null || log "WARNING: cannot remove cgroup $d (pids: $(tr '\n' ' ' <"$d/cgroup.procs"))"
    done
}
if [[ -n "$CG" ]]; then
    cg_remove  # leftovers of an earlier run
    if mkdir -p "$CG/controller" "$CG/hosts" && echo $$ >"$CG/controller/cgroup.procs"; then
        log "CPU accounting in cgroups $CG/{controller,hosts}"
    else
        log "WARNING: cannot use cgroup $CG; CPU use not reported"; CG="" CG_FILE=""
    fi
fi

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
    mkdir -p "$hdir/root" "$hdir/home"
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
SetEnv DROVER_ROOT=$hdir/root HOME=$hdir/home
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
    # Into the hosts' cgroup before it accepts a connection (it forks only for those).
    [[ -z "$CG" ]] || echo $! >"$CG/hosts/cgroup.procs"
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
out=$(timeout 20 ssh -F "$SSH_CONFIG" h$NHOSTS 'echo "$DROVER_ROOT $HOME"')
[[ "$out" == "$WORK/hosts/h$NHOSTS/root $WORK/hosts/h$NHOSTS/home" ]] || { log "ssh to h$NHOSTS gave DROVER_ROOT HOME = $out"; exit 1; }

# ---- app trees -----------------------------------------------------------------------
# drover.toml of an app dir: $1 name, $2 version, $3 proxy port, then the environments.
app_toml() {  # name version port environments [extra [ssh] lines]
    local name="$1" version="$2" port="$3" envs="$4" ssh_extra="${5:-}"
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
$ssh_extra
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
# persist = "0s": every deploy opens its ssh connection, as every rsync run does.
app_toml webapp 1 8080 "$DELTA_ENVS" 'persist = "0s"' >"$TREES/v1/drover.toml"
for v in v2 v2a v2b; do
    cp -a "$TREES/v1" "$TREES/$v"   # same mtimes for unchanged files, as a build tree keeps them
done
python3 "$WORK/gen.py" mutate "$TREES/v2" lib,files 2>"$WORK/mutate.txt"
python3 "$WORK/gen.py" mutate "$TREES/v2a" lib 2>/dev/null
python3 "$WORK/gen.py" mutate "$TREES/v2b" files 2>/dev/null
for v in v2 v2a v2b; do
    app_toml webapp "${v#v}" 8080 "$DELTA_ENVS" 'persist = "0s"' >"$TREES/$v/drover.toml"
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
cg_dir, cg_file = sys.argv[7], sys.argv[8]  # the benchmark's cgroups ("" when there are none)
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

def busy_ticks():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return v[0] + v[1] + v[2] + v[5] + v[6] + v[7]  # user nice system irq softirq steal

def cg_secs(leaf):
    """CPU seconds used so far by the benchmark's cgroup `leaf` (None without cgroups)."""
    if not cg_dir:
        return None
    with open(os.path.join(cg_dir, leaf, cg_file)) as f:
        text = f.read()
    if cg_file == "cpu.stat":
        return int(text.split("usage_usec")[1].split()[0]) / 1e6
    return int(text) / 1e9

def cpu_snap():
    return (busy_ticks(), cg_secs("controller"), cg_secs("hosts"))

def cpu_delta(a, b):
    """CPU s of (the whole machine, the benchmark's processes, everything else, the
    controller side, the hosts' side)."""
    total = (b[0] - a[0]) / HZ
    if a[1] is None:
        return round(total, 2), None, None, None, None
    ctl, hosts = b[1] - a[1], b[2] - a[2]
    ours = ctl + hosts
    return (round(total, 2), round(ours, 2), round(max(0.0, total - ours), 2),
            round(ctl, 2), round(hosts, 2))

quiet_left = quiet_max
def wait_quiet():
    """Flushes what earlier commands left dirty (so no command pays for another's writes),
    then waits (from a budget of quiet_max s in all) for a second with < 0.1 CPU s used."""
    global quiet_left
    os.sync()
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

# drover keeps its persistent ssh control sockets under $TMPDIR: inside the work dir, so
# they go with it (and never meet another user's).
os.makedirs(os.path.join(work, "tmp"), exist_ok=True)
os.environ["TMPDIR"] = os.path.join(work, "tmp")

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
        ("start → first progress line (release build check and ssh connections, side by side)", 0.0),
        ("version check + environment lock", first(lambda p: p.startswith("checking"))),
        ("transfer (first host sending → last host sent)", first(lambda p: p == "sending")),
        ("switch (last sent → last host live)", last(lambda p: p.startswith("sent "))),
        ("audit, lock release, report, exit", last(lambda p: p.startswith("live"))),
    ]
    # A phase runs until the next mark that was seen (a missing mark joins its phase to the
    # one before).
    seen = [(name, t) for name, t in marks if t is not None]
    phases = {}
    for k, (name, t) in enumerate(seen):
        nxt = seen[k + 1][1] if k + 1 < len(seen) else wall
        phases[name] = nxt - t
    chunks = []
    for t, e in events:
        m = re.match(r"sent .*\((\d+) of (\d+) chunks were there(?:, (\d+) went as deltas)?\)", e["phase"])
        if m:  # (chunks the host had, chunks in the release, chunks sent as deltas or None)
            chunks.append((int(m.group(1)), int(m.group(2)), m.group(3) and int(m.group(3))))
    log(f"  drover deploy -e {env}: {wall:.2f} s, {sum(w1[h] - w0[h] for h in hosts) / 1048576:.2f} MiB on the wire")
    return {
        "wall": wall,
        "wire": sum(w1[h] - w0[h] for h in hosts),
        "bytes_sent": sum(h["bytes_sent"] for h in report["hosts"]),
        "phases": phases,
        "transfer": phases.get("transfer (first host sending → last host sent)"),
        "chunks": chunks,
        "cpu": cpu_delta(c0, c1),
        "events": [(round(t, 4), e) for t, e in events],
    }

def rsync(src, host, dst, timeout=300):
    os.makedirs(os.path.dirname(dst.rstrip("/")), exist_ok=True)
    wait_quiet()
    w0 = wire(host)
    c0 = cpu_snap()
    wall, _, lines, _ = run_timed(
        ["rsync", "-az", "--delete", "--stats", "-e", f"ssh -F {ssh_config}", src.rstrip("/") + "/",
         f"h{host}:{dst.rstrip('/')}/"], timeout, f"rsync to h{host}")
    c1 = cpu_snap()
    w1 = wire(host)
    # rsync's writes are not durable when it exits (drover's are): what that would take.
    t0 = now()
    os.sync()
    sync_after = now() - t0
    text = "\n".join(l for _, l in lines)
    def stat(label):
        m = re.search(label + r": ([\d,]+)", text)
        return int(m.group(1).replace(",", "")) if m else None
    log(f"  rsync: {wall:.2f} s, {(w1 - w0) / 1048576:.2f} MiB on the wire")
    return {"wall": wall, "wire": w1 - w0, "sync_after": sync_after, "sent": stat("Total bytes sent"),
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

# ---- 0. session shell, setup and stored releases ----------------------------------------------
def shell_start(home):
    """Median wall of the non-interactive bash an ssh session runs, with HOME=home."""
    env = {"HOME": home, "SSH_CLIENT": "10.100.250.1 40000 22", "USER": "root",
           "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    xs = []
    for _ in range(5):
        t0 = now()
        subprocess.run(["bash", "-c", "true"], env=env, stdin=subprocess.DEVNULL, timeout=30, check=True)
        xs.append(now() - t0)
    return statistics.median(xs)
out["shell_root_home"] = shell_start(os.path.expanduser("~root"))
out["shell_host_home"] = shell_start(os.path.join(work, "hosts", "h1", "home"))
KEX_CLASSIC = "KexAlgorithms=curve25519-sha256"
def ssh_true(*opts):
    """`ssh HOST true` over a new connection: median wall, median client CPU, key exchange."""
    walls, cpus, kex = [], [], None
    for _ in range(5):
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = now()
        p = subprocess.run(["ssh", "-F", ssh_config, "-v", *opts, "h1", "true"], stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=30, check=True)
        walls.append(now() - t0)
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime)
        m = re.search(r"kex: algorithm: (\S+)", p.stderr)
        kex = m.group(1) if m else kex
    return {"wall": statistics.median(walls), "cpu": statistics.median(cpus), "kex": kex}
out["ssh_true"] = ssh_true()
out["ssh_true_classic"] = ssh_true("-o", KEX_CLASSIC)

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
def new_version(ssh_extra=()):
    """The scale app at a new version: drover.toml's version, a new 1 MiB bundle, and
    ssh_extra as the extra lines of its [ssh] table."""
    global version
    version += 1
    toml = os.path.join(scale_dir, "drover.toml")
    text = open(toml).read()
    text = re.sub(r'(?m)^version = "\d+"$', f'version = "{version}"', text, count=1)
    text = re.sub(r'(?m)^(options|persist) = .*\n', "", text)
    extra = "".join(l + "\n" for l in ssh_extra)
    text = re.sub(r'(?m)^(parallel = \d+\n)', lambda m: m.group(1) + extra, text, count=1)
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
# (name, environment prefix, extra [ssh] lines, fleet sizes)
VARIANTS = [
    # drover's defaults: the ssh connections stay open 60 s, so each deploy reuses the
    # ones the previous deploy (seconds before) opened
    ("reused", "n", (), [1, 4, 8]),
    ("rolling", "r", (), [1, 4, 8]),
    # every deploy opens its connections, as after a pause of more than a minute
    ("fresh", "n", ('persist = "0s"',), [1, 4, 8]),
    ("fresh-curve25519", "n", ('persist = "0s"', f'options = ["{KEX_CLASSIC}"]'), [1, 8]),
]
scale = {}
for name, env, extra, sizes in VARIANTS:
    for rd in range(runs):
        order = sizes[rd % len(sizes):] + sizes[:rd % len(sizes)]
        for n in order:
            v = new_version(extra)
            log(f"fleet size, {name}: round {rd + 1}/{runs}, {n} host(s), version {v}")
            res = deploy(scale_dir, f"{env}{n}", list(range(1, n + 1)))
            check_serving(range(1, n + 1), 8081, v)
            res["round"] = rd + 1
            scale.setdefault(f"{name}/{n}", []).append(res)
out["scale"] = scale
out["variants"] = [(name, sizes) for name, _, _, sizes in VARIANTS]

# ---- 3. where the CPU goes in an 8-host deploy (perf, when it works) -------------------------
def perf_works():
    if os.environ.get("BENCH_PERF", "1") == "0":
        return False
    try:
        return subprocess.run(["perf", "record", "-a", "-F", "999", "-o", os.path.join(work, "perf.test"),
                               "--", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False

if perf_works():
    v = new_version(('persist = "0s"',))
    log(f"perf: one more all-at-once deploy to {nhosts} hosts (new connections) under `perf record -a -F 999`, version {v}")
    pf = os.path.join(work, "perf.data")
    rec = subprocess.Popen(["perf", "record", "-a", "-F", "999", "-o", pf],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)
    wait_quiet()
    t0 = now()
    res = deploy(scale_dir, f"n{nhosts}", list(range(1, nhosts + 1)))
    window = now() - t0
    rec.send_signal(2)
    rec.wait(timeout=60)
    rep = subprocess.run(["perf", "report", "-i", pf, "--sort", "comm", "--stdio", "-q", "-F", "sample,comm"],
                         capture_output=True, text=True, timeout=300)
    by_comm = {}
    for line in rep.stdout.splitlines():
        f = line.split(None, 1)
        if len(f) == 2 and f[0].isdigit():
            by_comm[f[1].strip()] = by_comm.get(f[1].strip(), 0) + int(f[0]) / 999
    out["perf"] = {"deploy": res, "by_comm": by_comm, "window": window}
out["quiet_waited"] = quiet_max - quiet_left
print(json.dumps(out, indent=1))
PY

log "running the measurements"
timeout 1200 python3 "$WORK/bench.py" "$DROVER" "$CTRL" "$WORK" "$RUNS" "$QUIET_MAX" "$NHOSTS" "$CG" "$CG_FILE" >"$WORK/results.json"

# ---- report ----------------------------------------------------------------------------
TREE_FILES=$(find "$TREES/v1" -type f | wc -l)
TREE_BYTES=$(find "$TREES/v1" -type f -printf '%s\n' | awk '{s+=$1} END {print s}')
MUTATE=$(cat "$WORK/mutate.txt")
CPU=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
RAM_GB=$(awk '/MemTotal/ {printf "%.1f", $2/1048576}' /proc/meminfo)
RSYNC_VER=$(rsync --version 2>/dev/null | sed -n '1s/^rsync *version \([0-9.]*\).*/rsync \1/p')
SSH_VER=$(ssh -V 2>&1 | cut -d, -f1)
SCRIPT_SECS=$(python3 -c "import time; print(round(time.time() - $SCRIPT_START))")

REPORT=$(DATE_UTC="$(date -u '+%Y-%m-%d %H:%M:%S UTC')" \
    MACHINE="$CPU, $(nproc) CPUs (nproc), ${RAM_GB} GiB RAM; kernel $(uname -sr)" \
    DROVER_BIN="$DROVER" DROVER_DESC="release build of commit $REV$DIRTY" \
    TREE_FILES="$TREE_FILES" TREE_BYTES="$TREE_BYTES" MUTATE="$MUTATE" RSYNC_VER="$RSYNC_VER" \
    SSH_VER="$SSH_VER" SCRIPT_SECS="$SCRIPT_SECS" python3 - "$WORK/results.json" <<'PY'
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
def cpu(xs, k):
    """Median of CPU column k (1: the benchmark's, 2: others', 3: controller, 4: hosts)."""
    v = [x["cpu"][k] for x in xs]
    return "n/a" if None in v else f"{med(v):.2f}"
def cpu_ratio(a, b, k):
    x, y = cpu(a, k), cpu(b, k)
    return "" if "n/a" in (x, y) or float(y) == 0 else f"{float(x) / float(y):.2f}"
def chunk_line(xs):
    per_run = [f"{t - h} of {t} chunks" + (f", {d} of them as zstd deltas against chunks the host had" if d else "")
               for x in xs for h, t, d in x["chunks"][:1]]
    if not per_run:
        return ""
    if len(set(per_run)) == 1:
        return f"drover sent {per_run[0]} (the same in every run; the rest were on the host already)."
    return f"drover sent {'; '.join(per_run)} in the {len(per_run)} runs (the rest were on the host already)."
def cpu1(x, k):
    return "n/a" if x["cpu"][k] is None else f"{x['cpu'][k]:.2f}"

d = r["delta"]
dv1, rv1, dv2, rv2 = d["v1_drover"], d["v1_rsync"], d["v2_drover"], d["v2_rsync"]
b = r["builds"]
w_d, w_r = med([x["wire"] for x in dv2]), med([x["wire"] for x in rv2])
t_d, t_r = med([x["wall"] for x in dv2]), med([x["wall"] for x in rv2])
tt_d = med([x["transfer"] for x in dv2])
print(f"""# drover fleet deploys: delta transfer vs rsync, deploy time by fleet size

- Date: {E['DATE_UTC']}
- Machine: {E['MACHINE']}
- drover: {E['DROVER_DESC']}; {E['RSYNC_VER']}; {E['SSH_VER']} on both ends
- Hosts: network namespaces on this machine, each with its own sshd (ed25519 keys,
  default ciphers) reached over a veth pair: no bandwidth limit and no added latency, so
  the link is far faster than a real network, and the controller, every host's sshd, agent
  and app share the same {os.cpu_count()} CPUs.
- Bytes on the wire: rx + tx of the host's root-side veth during the command (ssh, TCP,
  IP and Ethernet headers included, both directions). Wall: the whole command, from
  fork to exit, measured by python3.
- CPU: the script and the commands it runs (drover, rsync, ssh) are in one cgroup
  ("controller side"), every host's sshd, and so its sessions and the agents and apps they
  start, in another ("host side"); together the benchmark's own CPU time. "Other CPU" is
  the rest of the machine's busy time (/proc/stat) meanwhile: other processes, and kernel
  threads such as softirq work for the veth traffic. Before each measurement the script
  ran `sync` (so no command pays for the writes of the one before: drover's commit calls
  `syncfs`, which would) and waited for a quiet second ({r['quiet_waited']:.0f} s waited in all).
- Each ssh session runs the login shell (bash) non-interactively, which reads
  `$HOME/.bashrc`. This machine's root `~/.bashrc` initialises pyenv, {r['shell_root_home'] * 1000:.0f} ms per
  session; the hosts' sshd sets `HOME` to an empty directory instead ({r['shell_host_home'] * 1000:.0f} ms per
  session), as on a server whose root shell start-up is light. A drover deploy, like
  rsync, runs one ssh session per host (`drover remote serve`), so both pay it once.
- For scale: a bare `ssh -F ssh_config h1 true` (new connection, key exchange,
  authentication, one command) takes {r['ssh_true']['wall'] * 1000:.0f} ms here, {r['ssh_true']['cpu'] * 1000:.0f} ms of it CPU in the ssh client,
  with the key exchange OpenSSH picks by default ({r['ssh_true']['kex']}); with
  `-o {r.get('kex_opt', 'KexAlgorithms=curve25519-sha256')}`: {r['ssh_true_classic']['wall'] * 1000:.0f} ms, {r['ssh_true_classic']['cpu'] * 1000:.0f} ms client CPU (medians of 5).

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

- drover: `drover deploy V2DIR -e ENV --json` (ENV: one host, all-at-once; `[ssh] persist =
  "0s"`, so the deploy opens its own ssh connection as rsync does). v2 was stored
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
| a `sync` right after (rsync's writes are not yet durable when it exits; drover's are) | | {spread([x['sync_after'] for x in rv2], s)} | | |
| CPU s, all of the command's processes | {cpu(dv2, 1)} | {cpu(rv2, 1)} | {cpu_ratio(dv2, rv2, 1)} | |
| … of which on the controller side (drover / rsync, ssh clients) | {cpu(dv2, 3)} | {cpu(rv2, 3)} | {cpu_ratio(dv2, rv2, 3)} | |
| … of which on the host side (sshd, `drover remote`, agent, app / rsync server) | {cpu(dv2, 4)} | {cpu(rv2, 4)} | {cpu_ratio(dv2, rv2, 4)} | |
| other CPU s (not the benchmark's) | {cpu(dv2, 2)} | {cpu(rv2, 2)} | | |

{chunk_line(dv2)}

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
VN = dict(r["variants"])
LABEL = {
    "reused": "all-at-once, connections reused",
    "rolling": "rolling (batch = 1), connections reused",
    "fresh": "all-at-once, new connections",
    "fresh-curve25519": "all-at-once, new connections, curve25519 key exchange",
}
def walls(v, n):
    return [x["wall"] for x in sc[f"{v}/{n}"]]
def ratio81(v):
    return med(walls(v, 8)) / med(walls(v, 1))
print(f"""
## 2. Deploy time by fleet size

The example server (one `web` instance behind the proxy, health check on `/up`) plus a
1 MiB incompressible bundle that is new in every version, so each deploy sends ~1 MiB to
every host. Every host is set up and holds the previous version; each measured deploy is a
new version (`drover deploy DIR -e ENV --json`, the release build of the app dir included).
The first deploy to all {r['nhosts']} hosts (nothing there yet) took {s(r['scale_first']['wall'])}.

drover keeps each host's ssh connection open for the next command (`[ssh] persist`,
60 s by default). Measured both ways:

- **connections reused** (drover's defaults): each deploy follows the previous one by a
  few seconds and reuses its connections — consecutive deploys, or a deploy right after
  `drover status -e`;
- **new connections** (`[ssh] persist = "0s"`): each deploy opens one ssh connection per
  host, as a deploy after more than a minute without drover commands does; once more
  with `[ssh] options = ["KexAlgorithms=curve25519-sha256"]` (see the `ssh true` note
  above: OpenSSH's default post-quantum key exchange costs the client ~0.1 CPU s per
  connection here).

Median of {runs} rounds (min–max); the order of the sizes rotates per round:

| hosts | {' | '.join(LABEL[v] for v in VN)} |
|---:|{'---:|' * len(VN)}""")
for n in (1, 4, 8):
    print(f"| {n} | " + " | ".join(spread(walls(v, n), s) if n in VN[v] else "" for v in VN) + " |")
print(f"| **8 / 1** | " + " | ".join(f"**{ratio81(v):.2f}×**" for v in VN) + " |")
print(f"""
| measure | value | goal |
|---|---:|---|
| 8 hosts / 1 host, all-at-once, connections reused (defaults) | **{ratio81('reused'):.2f}×** | < 2× — {'met' if ratio81('reused') < 2 else '**not met**'} |
| 8 hosts / 1 host, all-at-once, new connections | **{ratio81('fresh'):.2f}×** | < 2× — {'met' if ratio81('fresh') < 2 else '**not met**'} |
| 8 hosts / 1 host, all-at-once, new connections, curve25519 | {ratio81('fresh-curve25519'):.2f}× | (for information) |
| 8 hosts / 1 host, rolling batch = 1, connections reused | {ratio81('rolling'):.2f}× | (for information) |

Bytes on the wire, all hosts together (all-at-once, connections reused):
{', '.join(f"{n} host{'s' if n > 1 else ''} {mib(med([x['wire'] for x in sc[f'reused/{n}']]))}" for n in (1, 4, 8))};
with new connections: {', '.join(f"{mib(med([x['wire'] for x in sc[f'fresh/{n}']]))}" for n in (1, 4, 8))}.

Where a deploy spends its time (median per phase; for several hosts a phase runs from the
first host entering it to the last host leaving it):
""")
cols = [("reused", 1), ("reused", 4), ("reused", 8), ("rolling", 8), ("fresh", 1), ("fresh", 8),
        ("fresh-curve25519", 8)]
short = {"reused": "reused", "rolling": "rolling, reused", "fresh": "new conn.",
         "fresh-curve25519": "new conn., curve25519"}
print("| phase | " + " | ".join(f"{n} host{'s' if n > 1 else ''}, {short[v]}" for v, n in cols) + " |")
print("|---|" + "---:|" * len(cols))
for name in sc["reused/1"][0]["phases"]:
    cells = [ms(med([x["phases"].get(name, 0.0) for x in sc[f"{v}/{n}"]])) for v, n in cols]
    print(f"| {name} | {' | '.join(cells)} |")
print(f"| **whole command** | {' | '.join(ms(med(walls(v, n))) for v, n in cols)} |")
print(f"""
CPU time of the deploy's processes (median CPU s): the controller side (drover, its ssh
clients) and the hosts' side (sshd and its sessions, `drover remote`, agents, apps), and
all of it as a share of the machine's {os.cpu_count()} CPUs over the deploy's wall time. Here the
hosts share the controller's CPUs; on a real fleet only the controller column is spent
on the deploying machine.

| variant | hosts | controller | hosts | busy share of {os.cpu_count()} CPUs |
|---|---:|---:|---:|---:|""")
for v in VN:
    for n in VN[v]:
        k = sc[f"{v}/{n}"]
        c = cpu(k, 1)
        share = "" if c == "n/a" else f"{100 * float(c) / (os.cpu_count() * med([x['wall'] for x in k])):.0f} %"
        print(f"| {LABEL[v]} | {n} | {cpu(k, 3)} | {cpu(k, 4)} | {share} |")
if "perf" in r:
    p = r["perf"]
    # The benchmark's own process names; the rest of the machine is summed in one row.
    OURS = ("ssh", "sshd", "drover", "bash", "sh", "hello", "python3", "perf")
    busy = {k: v for k, v in p["by_comm"].items() if k in OURS}
    else_ = sum(v for k, v in p["by_comm"].items() if k not in OURS and k != "swapper")
    total = sum(busy.values())
    print(f"""
Where the CPU goes in an all-at-once deploy to {r['nhosts']} hosts over new connections (default
key exchange): one more such deploy ({s(p['deploy']['wall'])} wall) under `perf record -a -F 999`
(the whole machine, from about 1 s before the deploy until it ended; CPU s = samples / 999). `drover` is both the
controller and every `drover remote` on the hosts; `ssh` the controller's ssh clients
(one master connection per host and one client process for its `drover remote serve` session); `sshd` the
hosts' side of the connections; `bash`/`sh` the shells of the ssh sessions; `python3` and
`perf` the benchmark itself.

| process (comm) | CPU s | share |
|---|---:|---:|""")
    for k, v in sorted(busy.items(), key=lambda kv: -kv[1]):
        print(f"| `{k}` | {v:.2f} | {100 * v / total:.0f} % |")
    print(f"| **all of the above** | {total:.2f} | |")
    print(f"| (the rest of the machine: other processes, kernel threads) | {else_:.2f} | |")
print(f"""
Other CPU during the deploys (median CPU s, not the benchmark's): {', '.join(f"{k} {cpu(sc[k], 2)}" for k in sc)}.

Every run (wall s / wire MiB / other CPU s):

| run | {' | '.join(['drover v1', 'rsync v1', 'drover v2', 'rsync v2'])} |
|---|---|---|---|---|""")
for i in range(runs):
    cells = [f"{x['wall']:.2f} / {x['wire'] / 1048576:.2f} / {cpu1(x, 2)}" for x in (dv1[i], rv1[i], dv2[i], rv2[i])]
    print(f"| {i + 1} (h{i + 1}; v2 order: {' then '.join(d['order'][i])}) | {' | '.join(cells)} |")
print()
print("| variant/hosts | " + " | ".join(f"round {i + 1}" for i in range(runs)) + " |")
print("|---|" + "---|" * runs)
for k in sc:
    print(f"| {k} | " + " | ".join(f"{x['wall']:.2f} / {x['wire'] / 1048576:.2f} / {cpu1(x, 2)}" for x in sc[k]) + " |")
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
