//! Settings resolved once from flags, environment and defaults, then passed explicitly.

use std::path::PathBuf;

/// Where this host's drover state lives.
pub fn resolve_root(flag: Option<PathBuf>) -> PathBuf {
    if let Some(root) = flag {
        return root;
    }
    if rustix::process::geteuid().is_root() {
        return PathBuf::from("/var/lib/drover");
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    data.join("drover")
}
