#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every unit and end-to-end test.
# Installs what the tests need on a fresh Debian machine (as root).
set -euo pipefail
cd "$(dirname "$0")"

need_pkgs=()
command -v mkfifo >/dev/null || need_pkgs+=(coreutils)
command -v git >/dev/null || need_pkgs+=(git)
command -v curl >/dev/null || need_pkgs+=(curl)
# Fleet tests: each test host is a network namespace with its own sshd.
[ -x /usr/sbin/sshd ] || need_pkgs+=(openssh-server)
command -v ssh >/dev/null || need_pkgs+=(openssh-client)
command -v ip >/dev/null && command -v tc >/dev/null || need_pkgs+=(iproute2)
command -v python3 >/dev/null || need_pkgs+=(python3)
# Apps nobody here wrote: Flask and gunicorn vendored with pip; man pages rendered by man.
python3 -m pip --version >/dev/null 2>&1 || need_pkgs+=(python3-pip)
command -v man >/dev/null || need_pkgs+=(man-db)
# The proxy's TLS tests make their certificates with the openssl command.
command -v openssl >/dev/null || need_pkgs+=(openssl)
# ACME is tested against Let's Encrypt's test server and its DNS, from Debian's package.
command -v pebble >/dev/null && command -v pebble-challtestsrv >/dev/null || need_pkgs+=(pebble)
command -v setpriv >/dev/null || need_pkgs+=(util-linux)
# The agent's systemd unit is checked with systemd-analyze.
command -v systemd-analyze >/dev/null || need_pkgs+=(systemd)
if ((${#need_pkgs[@]})); then
    apt-get update -qq && apt-get install -y -qq "${need_pkgs[@]}"
fi

cargo fmt --all --check
cargo clippy --all-targets --locked -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast
else
    cargo test --workspace --locked --no-fail-fast
fi
