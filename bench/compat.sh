#!/usr/bin/env bash
# Compatibility check: the release drover on an older distribution's glibc. A Debian 11
# (bullseye, glibc 2.31) root made with debootstrap runs, under chroot, the binary that
# `dist/build-release.sh` builds (glibc 2.17 and later): `drover --version`, then a real
# local job (`drover up` of a small shell app: agent started, release built and deployed,
# `drover status` and `drover logs` answering). As the contrast, the plain
# `cargo build --release` binary (linked against this machine's newer glibc) is run there too.
#
#   bash bench/compat.sh        (as root: debootstrap, chroot and mount need it)
#
# Environment:
#   COMPAT_ROOTS    where the Debian root is kept between runs
#                   (default target/bench-cache; the root is COMPAT_ROOTS/bullseye-root)
#   COMPAT_MIRROR   the Debian mirror (default: the first deb.debian.org-style URI in
#                   /etc/apt/sources.list*, else http://deb.debian.org/debian)
#   BENCH_RESULTS   where to write the markdown results (default bench/results/compat.md;
#                   "-" to print only)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROOTS="${COMPAT_ROOTS:-$REPO/target/bench-cache}"
CHROOT="$ROOTS/bullseye-root"
RESULTS="${BENCH_RESULTS:-$REPO/bench/results/compat.md}"

log() { printf '[compat %s] %s\n' "$(date +%T)" "$*" >&2; }

if [[ $(id -u) != 0 ]]; then
    log "run as root (debootstrap, chroot and mount need it)"; exit 1
fi

mirror="${COMPAT_MIRROR:-}"
if [[ -z "$mirror" ]]; then
    mirror="$(grep -rhoE '(URIs:|^deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
        | grep -oE 'https?://[^ ]+' | head -n 1 || true)"
    mirror="${mirror:-http://deb.debian.org/debian}"
fi

# 1. The Debian 11 root, made once and kept.
if [[ ! -x "$CHROOT/bin/sh" ]]; then
    command -v debootstrap >/dev/null || { log "installing debootstrap"; apt-get install -y -qq debootstrap >&2; }
    log "debootstrap --variant=minbase bullseye $CHROOT $mirror"
    rm -rf "$CHROOT.tmp"
    mkdir -p "$ROOTS"
    debootstrap --variant=minbase bullseye "$CHROOT.tmp" "$mirror" >"$ROOTS/debootstrap.log" 2>&1 \
        || { tail -n 20 "$ROOTS/debootstrap.log" >&2; exit 1; }
    mv "$CHROOT.tmp" "$CHROOT"
else
    log "using the Debian 11 root kept in $CHROOT"
fi
CHROOT_GLIBC="$(chroot "$CHROOT" getconf GNU_LIBC_VERSION)"
CHROOT_OS="$(. "$CHROOT/etc/os-release" && echo "$PRETTY_NAME")"
log "the root: $CHROOT_OS, $CHROOT_GLIBC"

# 2. Both binaries.
log "bash dist/build-release.sh"
COMPAT_BIN="$(bash "$REPO/dist/build-release.sh")"
log "cargo build --release -p drover (the plain build, for the contrast)"
(cd "$REPO" && cargo build --release -p drover >/dev/null 2>&1)
PLAIN_BIN="$REPO/target/release/drover"
newest() { objdump -T "$1" | grep -o 'GLIBC_[0-9][0-9.]*' | sort -uV | tail -n 1; }
COMPAT_NEEDS="$(newest "$COMPAT_BIN")"
PLAIN_NEEDS="$(newest "$PLAIN_BIN")"

# 3. Into the root, bound onto itself, with /proc, /dev and /sys mounted while it runs.
mounted=()
# Processes running inside the root (the agent `drover up` started, its apps).
in_root_pids() {
    local p
    for p in /proc/[0-9]*; do
        [[ "$(readlink "$p/root" 2>/dev/null)" == "$CHROOT" ]] && echo "${p#/proc/}"
    done
    return 0
}
cleanup() {
    local left
    left="$(in_root_pids | tr '\n' ' ')"
    if [[ -n "${left// /}" ]]; then
        log "stopping what still runs in the root: $left"
        # shellcheck disable=SC2086
        kill $left 2>/dev/null || true
        for _ in $(seq 50); do [[ -z "$(in_root_pids)" ]] && break; sleep 0.1; done
        left="$(in_root_pids | tr '\n' ' ')"
        # shellcheck disable=SC2086
        [[ -z "${left// /}" ]] || kill -KILL $left 2>/dev/null || true
    fi
    for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
        umount -l "${mounted[$i]}" 2>/dev/null || log "WARNING: cannot unmount ${mounted[$i]}"
    done
    rm -rf "$CHROOT/tmp/compat"
}
trap cleanup EXIT
# The root a mount point of its own, as / is on a real host: the agent makes its apps'
# mounts private from / (on a plain chroot directory that fails with EINVAL).
if ! mountpoint -q "$CHROOT"; then
    mount --bind "$CHROOT" "$CHROOT"
    mounted+=("$CHROOT")
fi
for m in proc sys dev; do
    if ! mountpoint -q "$CHROOT/$m"; then
        case $m in
            proc) mount -t proc proc "$CHROOT/proc" ;;
            *) mount --rbind "/$m" "$CHROOT/$m"; mount --make-rslave "$CHROOT/$m" ;;
        esac
        mounted+=("$CHROOT/$m")
    fi
done
rm -rf "$CHROOT/tmp/compat"
mkdir -p "$CHROOT/tmp/compat/app"
cp "$COMPAT_BIN" "$CHROOT/tmp/compat/drover"
cp "$PLAIN_BIN" "$CHROOT/tmp/compat/drover-plain"
cat >"$CHROOT/tmp/compat/app/drover.toml" <<'EOF'
[app]
name = "tick"
version = "1"

[process.main]
command = "sh -c 'echo started on $(getconf GNU_LIBC_VERSION); exec sleep 600'"
EOF

in_root() { chroot "$CHROOT" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root "$@"; }
transcript="$(mktemp -t drover-compat.XXXXXX)"
step() {
    # One command in the root: its line and output into the transcript, its status returned.
    local rc=0
    printf '$ %s\n' "$*" >>"$transcript"
    in_root "$@" >>"$transcript" 2>&1 || rc=$?
    [[ $rc == 0 ]] || printf '(exit %s)\n' "$rc" >>"$transcript"
    return $rc
}

ok=1
log "in the root: drover --version, drover up, status, logs"
step /tmp/compat/drover --version || ok=0
if step /tmp/compat/drover --root /tmp/compat/root up /tmp/compat/app; then
    step /tmp/compat/drover --root /tmp/compat/root status || ok=0
    step /tmp/compat/drover --root /tmp/compat/root logs tick || ok=0
    grep -q "main.0 | started on $CHROOT_GLIBC" "$transcript" || { ok=0; log "the app's line is not in its log"; }
    step /tmp/compat/drover --root /tmp/compat/root stop tick || ok=0
else
    ok=0
fi
log "in the root: the plain cargo build --release binary"
plain_rc=0
step /tmp/compat/drover-plain --version || plain_rc=$?
[[ $plain_rc != 0 ]] || { log "the plain build started: expected it to need a newer glibc"; }
cat "$transcript" >&2

report() {
    cat <<EOF
# Compatibility: the release drover on Debian 11 (glibc 2.31)

\`bash bench/compat.sh\` (commit $(git -C "$REPO" rev-parse --short HEAD), $(date -u +%F)): a
\`debootstrap --variant=minbase bullseye\` root ($CHROOT_OS, $CHROOT_GLIBC), run under chroot
(the root bound onto itself, as / is a mount point on a host) with /proc, /sys and /dev mounted.

| binary | built with | newest glibc symbol | on Debian 11 |
|---|---|---|---|
| \`target/x86_64-unknown-linux-gnu/release/drover\` | \`bash dist/build-release.sh\` (\`cargo zigbuild --release -p drover --target x86_64-unknown-linux-gnu.2.17\`) | $COMPAT_NEEDS | $([[ $ok == 1 ]] && echo "runs: \`--version\`, \`drover up\` (agent, build, deploy), \`status\`, \`logs\`" || echo "FAILED (see below)") |
| \`target/release/drover\` | \`cargo build --release -p drover\` | $PLAIN_NEEDS | $([[ $plain_rc != 0 ]] && echo "does not start (exit $plain_rc)" || echo "started") |

What ran in the root:

\`\`\`
$(cat "$transcript")
\`\`\`
EOF
}
if [[ "$RESULTS" == - ]]; then
    report
else
    report >"$RESULTS"
    report
    log "wrote $RESULTS"
fi
rm -f "$transcript"
[[ $ok == 1 && $plain_rc != 0 ]]
