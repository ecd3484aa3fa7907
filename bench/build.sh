#!/usr/bin/env bash
# Benchmark: `drover build` against `tar | zstd -3` on a deterministic ~1 GB mixed tree.
#
#   bash bench/build.sh
#
# Environment:
#   BENCH_SIZE_MB   size of the generated tree in MiB (default 1024)
#   BENCH_WORK_DIR  scratch directory, removed at exit (default /tmp/drover-bench)
#   BENCH_SEED      seed for the tree generator (default 1)
#   BENCH_RUNS      repetitions of each measurement; the median is reported (default 5)
#   BENCH_RESULTS   where to write the markdown results (default bench/results/build.md;
#                   set to "-" to print only)
#   BENCH_KEEP      set to 1 to keep the work dir (for poking at it afterwards)
#   BENCH_DROVER    use this drover binary instead of building target/release/drover
#   BENCH_QUIET_MAX seconds to wait, in all, for other processes to go quiet (default 600)
#
# What it does:
#   1. cargo build --release -p drover (binary: target/release/drover)
#   2. generates the tree with python3 random.Random(seed): 1/3 source-like text
#      (many 1-50 KB files), 1/3 binary-like (5-50 MB, moderately compressible),
#      1/3 already-compressed (1-20 MB random bytes named *.jpg, *.gz, ...), plus drover.toml
#   3. times, each with a warm page cache (every file is read once just before):
#        a. tar -cf - -C TREE . | zstd -3 -q -o OUT.tar.zst
#        b. drover --root FRESH build TREE --version 1 --json        (empty store)
#        c. 1% of files modified, then drover build --version 2 (same store) and tar|zstd again
#        d. drover build --version 2 again (unchanged: nothing new stored)
#   4. prints a markdown table and writes it to bench/results/build.md
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SIZE_MB="${BENCH_SIZE_MB:-1024}"
WORK="${BENCH_WORK_DIR:-/tmp/drover-bench}"
SEED="${BENCH_SEED:-1}"
RUNS="${BENCH_RUNS:-5}"
RESULTS="${BENCH_RESULTS:-$REPO/bench/results/build.md}"
SCRIPT_START=$(date +%s.%N)

log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }

if [[ -e "$WORK" ]]; then
    echo "work dir $WORK already exists; remove it or set BENCH_WORK_DIR" >&2
    exit 1
fi
cleanup() {
    if [[ "${BENCH_KEEP:-0}" == 1 ]]; then
        log "keeping $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

# ---- tools ------------------------------------------------------------------
if ! command -v zstd >/dev/null; then
    log "installing zstd"
    apt-get update -qq && apt-get install -y -qq zstd >/dev/null
fi
NEEDED=(tar python3 bc)
[[ -n "${BENCH_DROVER:-}" ]] || NEEDED+=(cargo)
for t in "${NEEDED[@]}"; do
    command -v "$t" >/dev/null || { echo "$t is required" >&2; exit 1; }
done

if [[ -n "${BENCH_DROVER:-}" ]]; then
    DROVER="$(realpath "$BENCH_DROVER")"
    log "using the prebuilt $DROVER (BENCH_DROVER)"
else
    log "cargo build --release -p drover"
    (cd "$REPO" && cargo build --release -p drover --quiet)
    DROVER="$REPO/target/release/drover"
fi
[[ -x "$DROVER" ]] || { echo "no binary at $DROVER" >&2; exit 1; }

mkdir -p "$WORK"
TREE="$WORK/tree"
ROOT="$WORK/root"
OUT="$WORK/out"
mkdir -p "$OUT"

# ---- tree generation ----------------------------------------------------------
GEN="$WORK/gen.py"
cat >"$GEN" <<'PY'
import os, random, struct, sys

tree, size_mb, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
total = size_mb << 20
third = total // 3
MiB = 1 << 20
os.makedirs(tree, exist_ok=True)
with open(os.path.join(tree, "drover.toml"), "w") as f:
    f.write('[app]\nname = "bench"\n')

def write(rel, data):
    p = os.path.join(tree, rel)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "wb") as f:
        f.write(data)

# -- 1/3 source-like text: many 1-50 KB files built from a pool of lines ---------
rng = random.Random(seed * 1000 + 1)
letters = "abcdefghijklmnopqrstuvwxyz"
words = ["".join(rng.choices(letters, k=rng.randint(2, 10))) for _ in range(3000)]
kw = ["fn", "let", "mut", "if", "else", "return", "match", "for", "in", "pub", "struct",
      "impl", "use", "self", "while", "const", "static", "mod", "enum", "trait"]
def line():
    ind = "    " * rng.randint(0, 4)
    n = rng.randint(2, 10)
    toks = [rng.choice(kw) if rng.random() < 0.3 else rng.choice(words) for _ in range(n)]
    end = rng.choice([";", " {", "}", ",", ")", ""])
    return (ind + " ".join(toks) + end + "\n").encode()
pool = [line() for _ in range(20000)]
exts = [".rs", ".py", ".js", ".ts", ".go", ".c", ".h", ".md", ".json", ".html"]
done, n = 0, 0
while done < third:
    target = min(rng.randint(1 << 10, 50 << 10), third - done)
    parts, got = [], 0
    while got < target:
        if rng.random() < 0.1:  # a line unique to this file
            l = ("    let v%d = %d; // %s\n" % (n, rng.getrandbits(48), rng.choice(words))).encode()
        else:
            l = rng.choice(pool)
        parts.append(l)
        got += len(l)
    data = b"".join(parts)[:target]
    write("src/m%02d/d%03d/f%05d%s" % (n % 37, n % 211, n, rng.choice(exts)), data)
    done += len(data)
    n += 1
text_files = n

# -- 1/3 binary-like: a few 5-50 MB files, moderately compressible ---------------
rng = random.Random(seed * 1000 + 2)
done, n = 0, 0
while done < third:
    target = min(rng.randint(5 * MiB, 50 * MiB), third - done)
    blocks = [rng.randbytes(4096) for _ in range(64)]  # repeated within the file
    parts, got = [], 0
    while got < target:
        r = rng.random()
        if r < 0.4:
            piece = rng.choice(blocks)
        elif r < 0.7:  # structured: a table of little-endian records with a counter
            base = rng.getrandbits(32)
            k = rng.randint(64, 512)
            piece = b"".join(struct.pack("<IIHH", base + i, i * 8, i & 0xFFFF, 0x7F7F) for i in range(k))
        elif r < 0.85:
            piece = bytes(rng.randint(256, 8192))  # zero padding
        else:
            piece = rng.randbytes(rng.randint(1024, 16384))  # incompressible run
        parts.append(piece)
        got += len(piece)
    data = b"".join(parts)[:target]
    write("bin/lib%03d.%s" % (n, rng.choice(["so", "bin", "dat", "wasm"])), data)
    done += len(data)
    n += 1
bin_files = n

# -- 1/3 already compressed: 1-20 MB of random bytes -------------------------------
rng = random.Random(seed * 1000 + 3)
done, n = 0, 0
while done < total - 2 * third:
    target = min(rng.randint(1 * MiB, 20 * MiB), total - 2 * third - done)
    write("assets/a%04d.%s" % (n, rng.choice(["jpg", "gz", "png", "zip", "mp4"])), rng.randbytes(target))
    done += target
    n += 1
print("text_files=%d bin_files=%d compressed_files=%d" % (text_files, bin_files, n), file=sys.stderr)
PY

MODIFY="$WORK/modify.py"
cat >"$MODIFY" <<'PY'
# Every 100th file (sorted path order) gets 8 bytes overwritten in the middle and 16 appended.
import os, sys
tree = sys.argv[1]
paths = []
for d, dirs, files in os.walk(tree):
    for f in files:
        paths.append(os.path.relpath(os.path.join(d, f), tree))
paths.sort()
changed = 0
for i, rel in enumerate(paths):
    if i % 100 != 99 or rel == "drover.toml":
        continue
    p = os.path.join(tree, rel)
    size = os.path.getsize(p)
    with open(p, "r+b") as f:
        f.seek(size // 2)
        f.write(b"BENCHMOD")
        f.seek(0, 2)
        f.write(b"\n/* modified */\n")
    changed += 1
print(changed)
PY

log "generating a ${SIZE_MB} MiB tree in $TREE (seed $SEED)"
t0=$(date +%s.%N)
python3 "$GEN" "$TREE" "$SIZE_MB" "$SEED"
t1=$(date +%s.%N)
GEN_SECS=$(printf "%.1f" "$(echo "$t1 - $t0" | bc)")
TREE_BYTES=$(du -sb "$TREE" | cut -f1)
TREE_APPARENT=$(find "$TREE" -type f -printf '%s\n' | awk '{s+=$1} END {print s}')
FILE_COUNT=$(find "$TREE" -type f | wc -l)
log "generated $FILE_COUNT files, $TREE_APPARENT bytes in ${GEN_SECS}s"
sync  # so no later step pays for writing back the generated tree

warm() {
    # Read every file once so each measured run starts with the same warm page cache.
    find "$TREE" -type f -print0 | xargs -0 cat >/dev/null
}

HZ=$(getconf CLK_TCK)
# CPU ticks spent, by anything, outside idle and iowait since boot.
busy_ticks() { awk '/^cpu / {print $2+$3+$4+$7+$8+$9}' /proc/stat; }

# Other processes share this machine (builds, tests). Before each measurement wait, up to
# BENCH_QUIET_MAX seconds in all, for a second in which the machine is nearly idle; the CPU
# time others used during each measurement is reported anyway (column "other").
QUIET_LEFT="${BENCH_QUIET_MAX:-600}"
wait_quiet() {
    local b0 b1
    while (( QUIET_LEFT > 0 )); do
        b0=$(busy_ticks); sleep 1; b1=$(busy_ticks)
        (( (b1 - b0) * 100 < HZ * 10 )) && return 0  # under 0.1 CPU-seconds in that second
        QUIET_LEFT=$((QUIET_LEFT - 1))
        (( QUIET_LEFT % 30 == 0 )) && log "waiting for other processes to go quiet (${QUIET_LEFT}s left)"
    done
    return 0
}

# Runs the shell snippet $1 with bash's `time`; sets T_REAL T_USER T_SYS T_OTHER (the CPU
# seconds that other processes used meanwhile).
timed() {
    local tf="$WORK/time.$$" b0 b1
    local TIMEFORMAT='%3R %3U %3S'
    wait_quiet
    b0=$(busy_ticks)
    { time bash -c "$1" ; } 2>"$tf"
    b1=$(busy_ticks)
    read -r T_REAL T_USER T_SYS < <(tail -n1 "$tf")
    rm -f "$tf"
    T_OTHER=$(echo "$b1 $b0 $HZ $T_USER $T_SYS" | awk '{o = ($1 - $2) / $3 - $4 - $5; if (o < 0) o = 0; printf "%.1f", o}')
}

# Sample lists, one per measurement: "real user sys" lines.
declare -A SAMPLES=()
record() { SAMPLES[$1]+="$T_REAL $T_USER $T_SYS $T_OTHER"$'\n'; }
# median COL KEY / lo COL KEY / hi COL KEY (COL 1=real 2=user 3=sys 4=other)
median() { printf '%s' "${SAMPLES[$2]}" | awk -v c="$1" 'NF {print $c}' | sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
lo() { printf '%s' "${SAMPLES[$2]}" | awk -v c="$1" 'NF {print $c}' | sort -g | head -1; }
hi() { printf '%s' "${SAMPLES[$2]}" | awk -v c="$1" 'NF {print $c}' | sort -g | tail -1; }
wall_cell() {  # median (min-max)
    if (( RUNS > 1 )); then echo "$(median 1 "$1") ($(lo 1 "$1")–$(hi 1 "$1"))"; else median 1 "$1"; fi
}
drover_build() {  # root, version, json-output-file
    timed "'$DROVER' --root '$1' build '$TREE' --version $2 --json >'$3'"
}
json_field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }
# The same value from every run's JSON, or all of them if they differ.
json_all() {
    local vals
    vals=$(for i in $(seq 1 "$RUNS"); do json_field "$OUT/$1-$i.json" "$2"; done | sort -u)
    echo "$vals" | paste -sd/ -
}
ratio() { echo "scale=2; $1 / $2" | bc | sed 's/^\./0./'; }
mib() { awk -v b="$1" 'BEGIN {printf "%.1f", b / 1048576}'; }

# Nothing is deleted until the end: on a filesystem mounted with `discard` (or without a
# journal) mass deletions make the next file-creating run slow. Each run i has its own
# store ROOT-i and its own tar output, so this needs about (2 + 2.5 * RUNS) x the tree size.

# ---- a + b. tar | zstd -3 and drover build into an empty store, interleaved ----------
for i in $(seq 1 "$RUNS"); do
    sync; warm
    log "run $i/$RUNS a. tar | zstd -3"
    timed "tar -cf - -C '$TREE' . | zstd -3 -q -o '$OUT/v1-$i.tar.zst'"
    record a
    T_START=$(date +%s.%N); sync; T_REAL=$(printf '%.3f' "$(echo "$(date +%s.%N) - $T_START" | bc)"); T_USER=0 T_SYS=0 T_OTHER=0
    record async
    sync; warm
    log "run $i/$RUNS b. drover build --version 1 (fresh store $ROOT-$i)"
    drover_build "$ROOT-$i" 1 "$OUT/b-$i.json"
    record b
done
TAR1_SIZE=$(stat -c %s "$OUT/v1-1.tar.zst")
DR1_STORED=$(json_all b stored_bytes)
DR1_CHUNKS=$(json_all b chunks)
DR1_NEW=$(json_all b new_chunks)
OBJ_BYTES1=$(du -sb "$ROOT-1/store/objects" | cut -f1)
OBJ_APPARENT1=$(find "$ROOT-1/store/objects" -type f -printf '%s\n' | awk '{s+=$1} END {print s}')

# ---- c. 1% of files modified -----------------------------------------------------------
CHANGED=$(python3 "$MODIFY" "$TREE")
log "modified $CHANGED files"
for i in $(seq 1 "$RUNS"); do
    sync; warm
    log "run $i/$RUNS c. drover build --version 2 into $ROOT-$i"
    drover_build "$ROOT-$i" 2 "$OUT/c-$i.json"
    record c
    sync; warm
    log "run $i/$RUNS c. tar | zstd -3 of the modified tree"
    timed "tar -cf - -C '$TREE' . | zstd -3 -q -o '$OUT/v2-$i.tar.zst'"
    record ctar
done
TAR2_SIZE=$(stat -c %s "$OUT/v2-1.tar.zst")
DR2_STORED=$(json_all c stored_bytes)
DR2_NEW=$(json_all c new_chunks)

# ---- d. unchanged rebuild --------------------------------------------------------------
for i in $(seq 1 "$RUNS"); do
    sync; warm
    log "run $i/$RUNS d. drover build --version 2 again (unchanged)"
    drover_build "$ROOT-$i" 2 "$OUT/d-$i.json"
    record d
done
DR3_STORED=$(json_all d stored_bytes)
DR3_NEW=$(json_all d new_chunks)
OBJ_BYTES3=$(du -sb "$ROOT-1/store/objects" | cut -f1)

SCRIPT_SECS=$(printf "%.0f" "$(echo "$(date +%s.%N) - $SCRIPT_START" | bc)")

# ---- report ------------------------------------------------------------------------
CPU=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
RAM_GB=$(awk '/MemTotal/ {printf "%.1f", $2/1048576}' /proc/meminfo)
FS=$(df -T "$WORK" | awk 'NR==2 {print $2}')
MOUNT_OPTS=$(findmnt -n -o OPTIONS --target "$WORK" 2>/dev/null || echo '?')
DEV=$(findmnt -n -o SOURCE --target "$WORK" 2>/dev/null | xargs -r basename)
if [[ "$FS" == ext4 && -n "$DEV" ]] && ! ls /proc/fs/jbd2 2>/dev/null | grep -q "^$DEV"; then
    MOUNT_OPTS+=", no journal"
fi
REV=$(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(cd "$REPO" && { git diff --quiet HEAD -- crates 2>/dev/null && echo "" || echo " (crates/ has uncommitted changes)"; })
if [[ -n "${BENCH_DROVER:-}" ]]; then
    DROVER_DESC="prebuilt binary $DROVER (work tree at commit $REV$DIRTY)"
else
    DROVER_DESC="release build of commit $REV$DIRTY"
fi
ZSTD_VER=$(zstd --version | grep -o 'v[0-9.]*' | head -1)
ZSTD_THREADS=$(echo x | zstd -3 -vv -c 2>&1 >/dev/null | grep -o -- '--threads=[0-9]*' | head -1 | cut -d= -f2)

REPORT=$(cat <<EOF
# drover build vs tar | zstd -3

- Date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')
- Machine: $CPU, $(nproc) CPUs, ${RAM_GB} GiB RAM, Linux $(uname -r); work dir on $FS ($MOUNT_OPTS)
- drover: $DROVER_DESC; zstd $ZSTD_VER with its CLI default of ${ZSTD_THREADS:-?} compression thread(s); drover uses all $(nproc) CPUs
- Tree: $FILE_COUNT files, $(mib "$TREE_APPARENT") MiB ($TREE_APPARENT bytes), seed $SEED:
  ~1/3 source-like text (1-50 KB files), ~1/3 binary-like (5-50 MB, moderately compressible),
  ~1/3 random bytes (1-20 MB, *.jpg/*.gz/...); generated in ${GEN_SECS}s
- Page cache: warm. Every file is read once (\`cat > /dev/null\`) right before each measured
  run, and \`sync\` is run before that so no run pays for earlier writes. Each run builds
  into its own fresh store and nothing is deleted until the end. drover \`syncfs\`es its
  store before committing; tar | zstd does not fsync (its \`sync\` time is shown separately).
- Modification (c): every 100th file in sorted path order ($CHANGED files) gets 8 bytes
  overwritten in the middle and 16 bytes appended.

Wall times are the median over $RUNS runs (min–max in brackets); user, sys and other are medians
too. "Other" is CPU time used by other processes on the machine during the measurement
(from /proc/stat, so it also counts kernel threads such as writeback of the run's own output):
anything well above 0 means the numbers are disturbed.

| Step | Wall (s) | User (s) | Sys (s) | Other (CPU s) | Output / stored | drover / tar\|zstd wall |
|---|---:|---:|---:|---:|---|---:|
| a. \`tar -cf - . \| zstd -3\` | $(wall_cell a) | $(median 2 a) | $(median 3 a) | $(median 4 a) | $(mib "$TAR1_SIZE") MiB ($TAR1_SIZE B); a \`sync\` right after took $(median 1 async) s | |
| b. \`drover build --version 1\` (empty store) | $(wall_cell b) | $(median 2 b) | $(median 3 b) | $(median 4 b) | stored_bytes $(mib "$DR1_STORED") MiB ($DR1_STORED B); \`du -sb store/objects\` $(mib "$OBJ_BYTES1") MiB (sum of object sizes $(mib "$OBJ_APPARENT1") MiB); $DR1_NEW new of $DR1_CHUNKS chunks | $(ratio "$(median 1 b)" "$(median 1 a)") |
| c. \`tar \| zstd -3\` of the modified tree | $(wall_cell ctar) | $(median 2 ctar) | $(median 3 ctar) | $(median 4 ctar) | $(mib "$TAR2_SIZE") MiB ($TAR2_SIZE B) | |
| c. \`drover build --version 2\` (1% of files changed) | $(wall_cell c) | $(median 2 c) | $(median 3 c) | $(median 4 c) | stored_bytes $(mib "$DR2_STORED") MiB ($DR2_STORED B); $DR2_NEW new chunks | $(ratio "$(median 1 c)" "$(median 1 ctar)") |
| d. \`drover build --version 2\` again (unchanged) | $(wall_cell d) | $(median 2 d) | $(median 3 d) | $(median 4 d) | stored_bytes $DR3_STORED; $DR3_NEW new chunks; \`du -sb store/objects\` now $(mib "$OBJ_BYTES3") MiB | $(ratio "$(median 1 d)" "$(median 1 ctar)") |

Ratios: b against a; c and d against the tar | zstd of the modified tree.
tar output sizes are from run 1 (they vary by a few KB between runs: the headers hold mtimes).

Every run, wall / user / sys / other seconds in run order (a and b interleaved, then c pairs, then d):

| Run | a. tar\|zstd | b. drover v1 | c. drover v2 | c. tar\|zstd | d. drover v2 again |
|---|---|---|---|---|---|
$(for i in $(seq 1 "$RUNS"); do
    printf '| %s' "$i"
    for k in a b c ctar d; do
        printf ' | %s' "$(printf '%s' "${SAMPLES[$k]}" | sed -n "${i}p" | tr ' ' '/')"
    done
    printf ' |\n'
done)

Whole script (cargo build, generation, all runs): ${SCRIPT_SECS} s.

Reproduce:

\`\`\`
bash bench/build.sh
\`\`\`

(\`BENCH_SIZE_MB\`, \`BENCH_WORK_DIR\`, \`BENCH_SEED\`, \`BENCH_RUNS\` override the tree size in MiB,
default 1024; the scratch dir, default /tmp/drover-bench; the seed, default 1; and the
repetitions, default 5. This run: \`${BENCH_DROVER:+BENCH_DROVER=$BENCH_DROVER }BENCH_SIZE_MB=$SIZE_MB BENCH_SEED=$SEED BENCH_RUNS=$RUNS bash bench/build.sh\`.)
EOF
)

echo "$REPORT"
if [[ "$RESULTS" != "-" ]]; then
    mkdir -p "$(dirname "$RESULTS")"
    printf '%s\n' "$REPORT" >"$RESULTS"
    log "wrote $RESULTS"
fi
