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

# Starts `$DROVER agent` for $ROOT in the background (log in $WORK/agent.log, pid in
# AGENT_PID) and waits up to 10 s for it to answer.
start_agent() {
    log "starting the agent: $DROVER --root $ROOT agent"
    "$DROVER" --root "$ROOT" agent >"$WORK/agent.log" 2>&1 &
    AGENT_PID=$!
    local ok=0
    for _ in $(seq 100); do
        if "$DROVER" --root "$ROOT" status >/dev/null 2>&1; then ok=1; break; fi
        kill -0 "$AGENT_PID" 2>/dev/null || break
        sleep 0.1
    done
    if [[ $ok != 1 ]]; then
        log "the agent did not answer within 10 s:"; cat "$WORK/agent.log" >&2; exit 1
    fi
}

# Pids of live (non-zombie) processes that carry NEEDLE: as a whole environment entry (MODE
# env) or anywhere in their command line or environment (MODE any). With SKIP, a pid, that
# process and its descendants are left out.
live_pids() {
    python3 - "$1" "$2" "${3:-0}" <<'PY'
import os, sys
mode, want, skip = sys.argv[1], sys.argv[2].encode(), int(sys.argv[3])
def ppid(p):
    with open(f"/proc/{p}/stat") as f:
        st = f.read()
    return int(st[st.rfind(")") + 2:].split()[1])
def skipped(p):
    try:
        while skip and p > 1:
            if p == skip:
                return True
            p = ppid(p)
    except OSError:
        pass
    return False
for p in os.listdir("/proc"):
    if not p.isdigit() or skipped(int(p)):
        continue
    try:
        with open(f"/proc/{p}/stat") as f:
            st = f.read()
        if st[st.rfind(")") + 2] in "ZX":
            continue
        with open(f"/proc/{p}/environ", "rb") as f:
            env = f.read()
        if mode == "env":
            found = want in env.split(b"\0")
        else:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                found = want in f.read() + env
        if found:
            print(p)
    except OSError:
        pass
PY
}

# Pids of live processes whose environment carries DROVER_AGENT_ROOT=$ROOT.
tagged_pids() {
    live_pids env "DROVER_AGENT_ROOT=$ROOT"
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
    if [[ "${KEEP:-0}" == 1 ]]; then
        log "kept $WORK"
    else
        rm -rf "$WORK"
    fi
}
