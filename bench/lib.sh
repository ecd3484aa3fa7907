# Shared by the bench scripts (sourced).

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
