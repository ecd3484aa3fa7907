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
