#!/usr/bin/env bash
# Builds the release drover that runs on glibc 2.17 and later (Debian 8+, Ubuntu 14.04+,
# RHEL/CentOS 7+, Amazon Linux 2): `cargo zigbuild` links it against glibc 2.17's symbols.
#
#   bash dist/build-release.sh
#
# Environment:
#   DROVER_ARCH   x86_64 (default) or aarch64; another than this machine's needs its Rust
#                 standard library (`rustup target add aarch64-unknown-linux-gnu`)
#   DROVER_GLIBC  the oldest glibc to run on (default 2.17)
#   ZIG_VENV      where ziglang and cargo-zigbuild are installed if missing
#                 (default target/zig-venv, a Python venv)
#
# Prints the binary's path on stdout (target/ARCH-unknown-linux-gnu/release/drover) once
# `objdump -T` (or `readelf`) shows it needs no glibc symbol newer than DROVER_GLIBC.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ARCH="${DROVER_ARCH:-x86_64}"
GLIBC="${DROVER_GLIBC:-2.17}"
VENV="${ZIG_VENV:-$REPO/target/zig-venv}"
TRIPLE="$ARCH-unknown-linux-gnu"

log() { printf '[build-release] %s\n' "$*" >&2; }

if [[ ! -x "$VENV/bin/cargo-zigbuild" || ! -x "$VENV/bin/python-zig" ]]; then
    log "installing ziglang and cargo-zigbuild into $VENV (pip)"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet ziglang cargo-zigbuild
fi
export PATH="$VENV/bin:$PATH"

if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx "$TRIPLE"; then
    log "adding the Rust target $TRIPLE"
    rustup target add "$TRIPLE"
fi

log "cargo zigbuild --release -p drover --target $TRIPLE.$GLIBC"
(cd "$REPO" && cargo zigbuild --release -p drover --target "$TRIPLE.$GLIBC" >&2)

BIN="$REPO/target/$TRIPLE/release/drover"
if command -v objdump >/dev/null; then
    versions="$(objdump -T "$BIN" | grep -o 'GLIBC_[0-9][0-9.]*' | sort -uV)"
else
    versions="$(readelf -V --wide "$BIN" | grep -o 'GLIBC_[0-9][0-9.]*' | sort -uV)"
fi
newest="$(printf '%s\n' "$versions" | tail -n 1)"
newest="${newest#GLIBC_}"
if [[ -n "$newest" ]] && [[ "$(printf '%s\n%s\n' "$newest" "$GLIBC" | sort -V | tail -n 1)" != "$GLIBC" ]]; then
    log "$BIN needs glibc $newest, newer than $GLIBC:"
    printf '%s\n' "$versions" >&2
    exit 1
fi
log "$BIN needs glibc ${newest:-(none)}: runs on glibc $GLIBC and later"
echo "$BIN"
