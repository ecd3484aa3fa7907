# Shared by the bench scripts (sourced). Expects `log` and `REPO`.

# Builds drover and the example app in release mode, retrying (crates/ may be mid-edit).
build_drover_and_hello() {
    local what err i
    for what in drover hello; do
        local cmd=(cargo build --release -p drover --manifest-path "$REPO/Cargo.toml")
        [[ "$what" == hello ]] && cmd=(cargo build --release --manifest-path "$REPO/examples/hello/Cargo.toml")
        log "cargo build --release ($what)"
        err="$(mktemp -t drover-bench-build.XXXXXX)"
        for i in 1 2 3 4 5; do
            if "${cmd[@]}" >/dev/null 2>"$err"; then
                break
            fi
            if ((i == 5)); then
                rm -f "$err"
                log "cannot build $what"; exit 1
            fi
            log "building $what failed (attempt $i); retrying in 60 s"
            tail -n 5 "$err" >&2 || true
            sleep 60
        done
        rm -f "$err"
    done
}

# Pids of live (non-zombie) processes whose environment carries DROVER_AGENT_ROOT=$ROOT.
tagged_pids() {
    python3 - "$ROOT" <<'PY'
import os, sys
want = b"DROVER_AGENT_ROOT=" + sys.argv[1].encode()
for p in os.listdir("/proc"):
    if not p.isdigit():
        continue
    try:
        with open(f"/proc/{p}/stat") as f:
            st = f.read()
        if st[st.rfind(")") + 2] in "ZX":
            continue
        with open(f"/proc/{p}/environ", "rb") as f:
            if want in f.read().split(b"\0"):
                print(p)
    except OSError:
        pass
PY
}

# Kills whatever still runs under $ROOT (saying so), then removes $WORK unless KEEP=1.
kill_leftovers() {
    local left
    left=$(tagged_pids | tr '\n' ' ')
    if [[ -n "${left// /}" ]]; then
        log "WARNING: processes left running under $ROOT: $left — killing them"
        # shellcheck disable=SC2086
        kill -KILL $left 2>/dev/null
    else
        log "cleanup: no app processes left under $ROOT"
    fi
    if [[ "$KEEP" == 1 ]]; then
        log "kept $WORK"
    else
        rm -rf "$WORK"
    fi
}
