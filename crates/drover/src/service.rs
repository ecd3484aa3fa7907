//! The agent as a systemd service: the unit for a drover root, and its installation where
//! systemd runs (`drover host setup` does it through `drover remote start-agent`).

use std::path::Path;

/// The unit's name for `root`: `drover-agent` for the default root, else one per root.
pub fn unit_name(root: &Path) -> String {
    if root == Path::new(crate::settings::SYSTEM_ROOT) {
        "drover-agent".into()
    } else {
        let key = drover_store::Hash::of(root.as_os_str().as_encoded_bytes()).to_hex();
        format!("drover-agent-{}", &key[..8])
    }
}

/// The systemd unit that runs `binary`'s agent for `root`. The agent is restarted when it
/// exits, and only the agent: its apps run in process groups of their own and outlive it
/// (`KillMode=process`); a restarted agent finds them again, and starts the live generation
/// of any app whose processes are gone.
pub fn unit(root: &Path, binary: &Path) -> String {
    format!(
        "# drover's host agent for the root {root}.
# Made by `drover host unit`; `drover host setup` installs it where systemd runs.
[Unit]
Description=drover agent ({root})
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
Environment=DROVER_ROOT={root}
ExecStart={binary} --root {root} agent
Restart=always
RestartSec=1s
# The apps outlive the agent: stopping or restarting it leaves them running.
KillMode=process
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
",
        root = root.display(),
        binary = binary.display()
    )
}

/// Whether systemd manages this machine (it is PID 1).
pub fn systemd_runs() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// Installs and enables the unit for `root` (root only, where systemd runs); starts it
/// unless an agent answers already. `Ok(false)`: not a systemd host, nothing done.
pub fn install(root: &Path, binary: &Path) -> anyhow::Result<bool> {
    if !systemd_runs() || !rustix::process::geteuid().is_root() {
        return Ok(false);
    }
    let name = unit_name(root);
    let path = Path::new("/etc/systemd/system").join(format!("{name}.service"));
    let text = unit(root, binary);
    if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
        let tmp = path.with_extension("service.tmp");
        std::fs::write(&tmp, &text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        systemctl(&["daemon-reload"])?;
    }
    systemctl(&["enable", &name])?;
    if !crate::client::is_running(root) {
        systemctl(&["start", &name])?;
    }
    Ok(true)
}

fn systemctl(args: &[&str]) -> anyhow::Result<()> {
    let out = std::process::Command::new("systemctl")
        .args(args)
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run systemctl: {e}"))?;
    if !out.status.success() {
        anyhow::bail!(
            "systemctl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
