//! Settings resolved once from flags, environment and defaults, then passed explicitly;
//! and the check that the root they name is safe to use.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::output::hinted;

/// The root as root, unless told otherwise.
pub const SYSTEM_ROOT: &str = "/var/lib/drover";

/// Where this host's drover state lives.
pub fn resolve_root(flag: Option<PathBuf>) -> PathBuf {
    if let Some(root) = flag {
        return root;
    }
    if rustix::process::geteuid().is_root() {
        return PathBuf::from(SYSTEM_ROOT);
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    data.join("drover")
}

/// The parts of a root whose owner decides what runs: the root, the store (releases and
/// their signatures) and the keys (which signers are trusted).
const GUARDED: [&str; 2] = ["store", "keys"];

/// Refuses a root that another user could change under us, as OpenSSH's StrictModes does:
/// the root, its `store/` and `keys/` must belong to the invoking user and be writable by
/// nobody else; every directory above it must belong to that user or to root and be
/// writable by nobody else unless sticky (like /tmp). A root that does not exist yet is
/// created 0700 (and its `store/`, `keys/` with it). Runs before anything opens the root.
pub fn check_root(root: &Path) -> anyhow::Result<()> {
    let uid = rustix::process::geteuid().as_raw();
    let abs = std::path::absolute(root)
        .map_err(|e| hinted(format!("the drover root {}: {e}", root.display()), PICK))?;
    let exists = match fs::symlink_metadata(&abs) {
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(cannot_inspect(&abs, e)),
    };
    if !exists {
        // The parents first: a root made under a directory someone else controls is theirs.
        check_parents(&abs, uid)?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&abs)
            .map_err(|e| {
                hinted(
                    format!("cannot create the drover root {}: {e}", abs.display()),
                    PICK,
                )
            })?;
    }
    let real = fs::canonicalize(&abs).map_err(|e| cannot_inspect(&abs, e))?;
    check_parents(&abs, uid)?;
    // A root that is a symlink: its owner could point it elsewhere.
    let link = fs::symlink_metadata(&abs).map_err(|e| cannot_inspect(&abs, e))?;
    if link.file_type().is_symlink() && link.uid() != uid && link.uid() != 0 {
        return Err(hinted(
            format!(
                "{} is a symlink owned by uid {}: that user could point it at a root of theirs",
                abs.display(),
                link.uid()
            ),
            format!(
                "use the directory it points to, {}, or {PICK}",
                real.display()
            ),
        ));
    }
    if real != abs {
        check_parents(&real, uid)?;
    }
    check_own(&real, uid)?;
    for sub in GUARDED {
        let p = real.join(sub);
        match fs::symlink_metadata(&p) {
            Ok(_) => {
                check_own(&p, uid)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Made here, 0700, so that a permissive umask cannot open it to others.
                match fs::DirBuilder::new().mode(0o700).create(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => check_own(&p, uid)?,
                    Err(e) => {
                        return Err(hinted(format!("cannot create {}: {e}", p.display()), PICK));
                    }
                }
            }
            Err(e) => return Err(cannot_inspect(&p, e)),
        }
    }
    Ok(())
}

const PICK: &str = "pick a directory of your own with `--root DIR` (or DROVER_ROOT)";

fn cannot_inspect(path: &Path, e: std::io::Error) -> anyhow::Error {
    hinted(
        format!(
            "cannot inspect {} (on the way to the drover root): {e}",
            path.display()
        ),
        PICK,
    )
}

/// The root itself (or its store/keys): the invoking user's, writable by nobody else.
fn check_own(path: &Path, uid: u32) -> anyhow::Result<()> {
    let lmeta = fs::symlink_metadata(path).map_err(|e| cannot_inspect(path, e))?;
    // A symlink is judged by its own owner and by what it points to.
    let metas = if lmeta.file_type().is_symlink() {
        vec![
            lmeta,
            fs::metadata(path).map_err(|e| cannot_inspect(path, e))?,
        ]
    } else {
        vec![lmeta]
    };
    for m in metas {
        if m.uid() != uid {
            return Err(hinted(
                format!(
                    "{} is owned by uid {}, not by you (uid {uid}): that user could make drover run anything as you",
                    path.display(),
                    m.uid()
                ),
                format!(
                    "if it is yours, `chown -R {uid} {}`; otherwise {PICK}",
                    path.display()
                ),
            ));
        }
        if m.file_type().is_symlink() {
            continue;
        }
        if !m.is_dir() {
            return Err(hinted(
                format!("{} is not a directory", path.display()),
                PICK,
            ));
        }
        if m.mode() & 0o022 != 0 {
            return Err(hinted(
                format!(
                    "{} is writable by {} (mode {:04o}): they could make drover run anything as you",
                    path.display(),
                    writers(m.mode()),
                    m.mode() & 0o7777
                ),
                format!("`chmod go-w {}`, or {PICK}", path.display()),
            ));
        }
    }
    Ok(())
}

/// Every existing directory above `path`: owned by the user or root, and not writable by
/// others unless sticky (there, others cannot rename or remove what they do not own).
fn check_parents(path: &Path, uid: u32) -> anyhow::Result<()> {
    for p in path.ancestors().skip(1) {
        if p.as_os_str().is_empty() {
            continue;
        }
        let m = match fs::symlink_metadata(p) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(cannot_inspect(p, e)),
        };
        if m.uid() != uid && m.uid() != 0 {
            return Err(hinted(
                format!(
                    "{} (above the drover root {}) is owned by uid {}: that user could replace the root",
                    p.display(),
                    path.display(),
                    m.uid()
                ),
                format!("keep the root under directories owned by you or root: {PICK}"),
            ));
        }
        let sticky = m.mode() & 0o1000 != 0;
        if m.is_dir() && m.mode() & 0o022 != 0 && !sticky {
            return Err(hinted(
                format!(
                    "{} (above the drover root {}) is writable by {} (mode {:04o}): they could replace the root",
                    p.display(),
                    path.display(),
                    writers(m.mode()),
                    m.mode() & 0o7777
                ),
                format!("`chmod go-w {}`, or {PICK}", p.display()),
            ));
        }
    }
    Ok(())
}

fn writers(mode: u32) -> &'static str {
    match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (true, true) => "group and others",
        (true, false) => "its group",
        _ => "others",
    }
}
