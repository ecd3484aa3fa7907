//! How an app process is confined: started from a thread of its own that enters a private
//! mount namespace where the store is read-only (and, for a root process, the drover root
//! shows nothing but its tree, `$DROVER_DATA` and `$TMPDIR`), changes into the tree and
//! takes on the app's user; and the users themselves (`drover-app`, made with `useradd`).
//!
//! The thread changes only its own namespace, working directory and credentials (each is
//! per thread in Linux), and ends once the process is spawned, which inherits all three:
//! nothing runs between fork and exec but the standard library's own spawn.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

pub use drover_wire::{AppUser, Confine};
use rustix::fs::{Gid, Uid};
use rustix::mount::{MountFlags, MountPropagationFlags};

/// The user apps run as when the agent is root and the app names none.
pub const DEFAULT_USER: &str = "drover-app";

/// What this agent can do to confine its apps, decided once when it starts.
#[derive(Debug, Clone)]
pub struct Powers {
    /// A private mount namespace per process (root with CAP_SYS_ADMIN).
    pub namespaces: bool,
    /// Processes run as the user their app names (the agent is root).
    pub switch_users: bool,
    /// The agent's own user, by name.
    pub own_user: String,
}

impl Powers {
    /// What the running process can do.
    pub fn of_this_process() -> Powers {
        let uid = rustix::process::geteuid();
        Powers {
            namespaces: uid.is_root() && namespaces_available(),
            switch_users: uid.is_root(),
            own_user: name_of_uid(uid.as_raw()),
        }
    }

    /// The confinement of a process that runs as `user` (None: the agent's own) and writes
    /// `writable`.
    pub fn confine(
        &self,
        store: &Path,
        user: Option<&AppUser>,
        writable: &[&Path],
        visible: &[&Path],
    ) -> Confine {
        Confine {
            read_only: self.namespaces.then(|| store.display().to_string()),
            user: user.filter(|_| self.switch_users).cloned(),
            writable: writable.iter().map(|p| p.display().to_string()).collect(),
            visible: visible.iter().map(|p| p.display().to_string()).collect(),
        }
    }
}

/// What a status shows of a confinement: "read-only store, user drover-app".
pub fn protection(confine: &Confine, own_user: &str) -> String {
    let user = confine.user.as_ref().map_or(own_user, |u| u.name.as_str());
    match confine.read_only {
        Some(_) => format!("read-only store, user {user}"),
        None => format!("mode bits, user {user}"),
    }
}

/// Spawns `cmd` (which must not set a working directory) in `dir`, confined as `how` says.
pub fn spawn(cmd: &mut Command, dir: &Path, how: &Confine) -> io::Result<Child> {
    if how.read_only.is_none() && how.user.is_none() {
        return cmd.current_dir(dir).spawn();
    }
    std::thread::scope(|s| {
        let thread = std::thread::Builder::new()
            .name("drover-confine".into())
            .spawn_scoped(s, || {
                enter(dir, how)?;
                cmd.spawn()
            })
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot start the thread that confines the process: {e}"),
                )
            })?;
        thread
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the thread confining the process failed")))
    })
}

/// Runs on the spawning thread alone: its namespace, directory and user become the
/// process's.
fn enter(dir: &Path, how: &Confine) -> io::Result<()> {
    let at = |what: String| move |e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"));
    match &how.read_only {
        Some(store) => {
            unshare(rustix::thread::UnshareFlags::NEWNS)
                .map_err(at("cannot enter a mount namespace of its own".into()))?;
            // Nothing mounted here reaches the host's namespace, and the other way round.
            rustix::mount::mount_change(
                "/",
                MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
            )
            .map_err(|e| at("cannot make the mounts private".into())(e.into()))?;
            let store = Path::new(store);
            bind_read_only(store, store)
                .map_err(at(format!("cannot mount {} read-only", store.display())))?;
            let root = store.parent().unwrap_or(store);
            let mut targets = vec![(dir.to_path_buf(), true)];
            targets.extend(how.visible.iter().map(|v| (PathBuf::from(v), true)));
            targets.extend(how.writable.iter().map(|w| (PathBuf::from(w), false)));
            reveal(root, &targets, how.user.as_ref())?;
        }
        // The working directory (and credentials) of this thread alone.
        None => unshare(rustix::thread::UnshareFlags::FS)
            .map_err(at("cannot take a working directory of its own".into()))?,
    }
    rustix::process::chdir(dir)
        .map_err(|e| at(format!("cannot enter {}", dir.display()))(e.into()))?;
    if how.read_only.is_some() {
        // Not even a root app may unmount or remount what keeps the store read-only.
        rustix::thread::remove_capability_from_bounding_set(
            rustix::thread::CapabilitySet::SYS_ADMIN,
        )
        .map_err(|e| at("cannot give up CAP_SYS_ADMIN".into())(e.into()))?;
    }
    if let Some(u) = &how.user {
        let switch = || -> rustix::io::Result<()> {
            let groups: Vec<Gid> = u.groups.iter().map(|g| Gid::from_raw(*g)).collect();
            rustix::thread::set_thread_groups(&groups)?;
            let gid = Gid::from_raw(u.gid);
            rustix::thread::set_thread_res_gid(gid, gid, gid)?;
            let uid = Uid::from_raw(u.uid);
            rustix::thread::set_thread_res_uid(uid, uid, uid)
        };
        switch().map_err(|e| at(format!("cannot become user {}", u.name))(e.into()))?;
    }
    Ok(())
}

fn unshare(flags: rustix::thread::UnshareFlags) -> io::Result<()> {
    // SAFETY: the flags are NEWNS and FS only: this thread gets its own mount namespace and
    // filesystem context (working directory, root, umask). The file descriptor table stays
    // shared, so no thread can miss a descriptor another made.
    #[allow(unsafe_code)]
    unsafe { rustix::thread::unshare_unsafe(flags) }.map_err(io::Error::from)
}

/// Binds `source` on `target` and makes that mount read-only, keeping the flags
/// (nosuid, nodev, noexec, atime) of the mount it came from.
fn bind_read_only(source: &Path, target: &Path) -> io::Result<()> {
    rustix::mount::mount_bind_recursive(source, target)?;
    let had = rustix::fs::statvfs(target)?.f_flag;
    let mut keep = MountFlags::empty();
    for (st, ms) in [
        (rustix::fs::StatVfsMountFlags::NOSUID, MountFlags::NOSUID),
        (rustix::fs::StatVfsMountFlags::NODEV, MountFlags::NODEV),
        (rustix::fs::StatVfsMountFlags::NOEXEC, MountFlags::NOEXEC),
        (rustix::fs::StatVfsMountFlags::NOATIME, MountFlags::NOATIME),
        (
            rustix::fs::StatVfsMountFlags::NODIRATIME,
            MountFlags::NODIRATIME,
        ),
        (
            rustix::fs::StatVfsMountFlags::RELATIME,
            MountFlags::RELATIME,
        ),
    ] {
        if had.contains(st) {
            keep |= ms;
        }
    }
    rustix::mount::mount_remount(target, MountFlags::BIND | MountFlags::RDONLY | keep, "")?;
    Ok(())
}

/// Covers directories, in this namespace, by empty read-only tmpfs mounts in which only the
/// targets are bound back (a tree read-only): the process sees nothing else under them.
/// For root, the drover root is covered (its keys, the agent's socket, other apps' state,
/// which no mode bit keeps from root). For another user, the highest directory on each
/// target's way that the user cannot search (the 0700 root, a 0700 temp directory above
/// it) is covered, so that the targets are reachable by their paths whatever those modes.
fn reveal(root: &Path, targets: &[(PathBuf, bool)], user: Option<&AppUser>) -> io::Result<()> {
    let mut plan: Vec<(PathBuf, &Path, bool, OwnedFd)> = Vec::new();
    for (target, read_only) in targets {
        let top = match user.filter(|u| u.uid != 0) {
            Some(u) => blocked_above(target, u)?,
            None => Some(root.to_path_buf()),
        };
        let Some(top) = top else { continue };
        // Opened before any tmpfs covers its way.
        let fd = rustix::fs::open(
            target,
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open {}: {e}", target.display())))?;
        plan.push((top, target, *read_only, fd));
    }
    let cover = |top: &Path| {
        let top = top.display().to_string();
        move |e: rustix::io::Errno| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!("cannot cover {top}: {e}"),
            )
        }
    };
    let mut covered: Vec<&Path> = Vec::new();
    for (top, _, _, _) in &plan {
        if !covered.contains(&top.as_path()) {
            rustix::mount::mount(
                "tmpfs",
                top,
                "tmpfs",
                MountFlags::NOSUID | MountFlags::NODEV,
                c"mode=0711",
            )
            .map_err(cover(top))?;
            covered.push(top);
        }
    }
    for (_, target, read_only, fd) in &plan {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(target)?;
        let source = format!("/proc/self/fd/{}", fd.as_raw_fd());
        let bound = if *read_only {
            bind_read_only(Path::new(&source), target)
        } else {
            rustix::mount::mount_bind(&source, *target).map_err(io::Error::from)
        };
        bound.map_err(|e| {
            io::Error::new(e.kind(), format!("cannot bind {}: {e}", target.display()))
        })?;
    }
    // Nothing can be made in a cover itself.
    for top in covered {
        rustix::mount::mount_remount(
            top,
            MountFlags::BIND | MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV,
            "",
        )
        .map_err(cover(top))?;
    }
    Ok(())
}

/// The highest directory above `path` that `user` cannot search, if any.
fn blocked_above(path: &Path, user: &AppUser) -> io::Result<Option<PathBuf>> {
    for dir in path
        .ancestors()
        .skip(1)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
    {
        let m = fs::metadata(dir)?;
        if !searchable(&m, user) {
            if dir.parent().is_none() {
                return Err(io::Error::other(format!(
                    "{} cannot be searched by user {}",
                    dir.display(),
                    user.name
                )));
            }
            return Ok(Some(dir.to_path_buf()));
        }
    }
    Ok(None)
}

fn searchable(m: &fs::Metadata, user: &AppUser) -> bool {
    let mode = m.mode();
    if m.uid() == user.uid {
        mode & 0o100 != 0
    } else if m.gid() == user.gid || user.groups.contains(&m.gid()) {
        mode & 0o010 != 0
    } else {
        mode & 0o001 != 0
    }
}

/// Can a thread of this process enter a mount namespace of its own?
fn namespaces_available() -> bool {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("drover-probe".into())
            .spawn_scoped(s, || unshare(rustix::thread::UnshareFlags::NEWNS).is_ok())
            .ok()
            .and_then(|t| t.join().ok())
            .unwrap_or(false)
    })
}

/// How long a user found stays known without asking the name services again (a deploy
/// asks for its users several times; a changed user is seen within this).
const USER_CACHE: std::time::Duration = std::time::Duration::from_secs(10);

/// A user of this host by name (`getent passwd`, so every name service counts), with its
/// groups (`id -G`); None when there is no such user. A user found is remembered for
/// `USER_CACHE`.
pub fn lookup(name: &str) -> io::Result<Option<AppUser>> {
    use std::collections::HashMap;
    use std::sync::Mutex;
    static FOUND: Mutex<Option<HashMap<String, (AppUser, std::time::Instant)>>> = Mutex::new(None);
    let cached = |name: &str| {
        let found = FOUND.lock().unwrap_or_else(|e| e.into_inner());
        found
            .as_ref()
            .and_then(|m| m.get(name))
            .filter(|(_, at)| at.elapsed() < USER_CACHE)
            .map(|(u, _)| u.clone())
    };
    if let Some(u) = cached(name) {
        return Ok(Some(u));
    }
    let found = lookup_now(name)?;
    if let Some(u) = &found {
        FOUND
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_with(HashMap::new)
            .insert(name.to_string(), (u.clone(), std::time::Instant::now()));
    }
    Ok(found)
}

fn lookup_now(name: &str) -> io::Result<Option<AppUser>> {
    if !drover_config::valid_user_name(name) {
        return Ok(None);
    }
    let out = system_command("getent").args(["passwd", name]).output()?;
    // getent: 2 is "no such key".
    if out.status.code() == Some(2) {
        return Ok(None);
    }
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "getent passwd {name}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let line = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<&str> = line.trim().split(':').collect();
    let (Some(uid), Some(gid)) = (
        fields.get(2).and_then(|f| f.parse::<u32>().ok()),
        fields.get(3).and_then(|f| f.parse::<u32>().ok()),
    ) else {
        return Err(io::Error::other(format!(
            "getent passwd {name}: not a passwd line: {line:?}"
        )));
    };
    let mut groups: Vec<u32> = system_command("id")
        .args(["-G", name])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|g| g.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    if !groups.contains(&gid) {
        groups.push(gid);
    }
    Ok(Some(AppUser {
        name: name.to_string(),
        uid,
        gid,
        groups,
    }))
}

/// The name of a uid (the uid itself when it has none).
pub fn name_of_uid(uid: u32) -> String {
    system_command("getent")
        .args(["passwd", &uid.to_string()])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            let line = String::from_utf8_lossy(&o.stdout).into_owned();
            line.split(':').next().map(str::to_string)
        })
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| uid.to_string())
}

/// `drover-app`, made by `useradd` (a system user, no home, no login shell) when missing.
pub fn ensure_default_user() -> io::Result<AppUser> {
    let useradd = ["/usr/sbin/useradd", "/sbin/useradd"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("useradd");
    let mut last = String::new();
    for attempt in 0..50 {
        if let Some(u) = lookup(DEFAULT_USER)? {
            return Ok(u);
        }
        if attempt > 0 {
            // Another drover may hold the passwd lock, making the same user.
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let out = system_command(useradd)
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                DEFAULT_USER,
            ])
            .output()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot run {useradd}: {e}")))?;
        last = String::from_utf8_lossy(&out.stderr).trim().to_string();
    }
    Err(io::Error::other(format!(
        "useradd could not make user {DEFAULT_USER}: {last}"
    )))
}

/// A system tool, found on the system's PATH whatever the agent's own PATH is (an agent
/// may be started with a PATH of its own).
fn system_command(name: &str) -> Command {
    let mut c = Command::new(name);
    c.env(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    );
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(uid: u32, gid: u32, groups: &[u32]) -> AppUser {
        AppUser {
            name: "u".into(),
            uid,
            gid,
            groups: groups.to_vec(),
        }
    }

    #[test]
    fn a_directory_is_searched_by_owner_group_or_others_bits() {
        let d = tempfile_dir();
        let set = |mode: u32| {
            fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
            fs::metadata(&d).unwrap()
        };
        let me = rustix::process::geteuid().as_raw();
        let my_gid = rustix::process::getegid().as_raw();
        assert!(searchable(&set(0o700), &user(me, 1, &[])));
        assert!(!searchable(&set(0o700), &user(me + 1, my_gid, &[])));
        assert!(searchable(&set(0o710), &user(me + 1, 99_999, &[my_gid])));
        assert!(!searchable(
            &set(0o770 & !0o010),
            &user(me + 1, 99_999, &[my_gid])
        ));
        assert!(searchable(&set(0o711), &user(me + 1, 99_999, &[])));
        fs::remove_dir(&d).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("drover-confine-{}", std::process::id()));
        let _ = fs::remove_dir(&d);
        fs::create_dir(&d).unwrap();
        d
    }

    #[test]
    fn the_protection_names_the_store_mount_and_the_user() {
        let c = Confine {
            read_only: Some("/r/store".into()),
            user: Some(user(1, 1, &[])),
            writable: Vec::new(),
            visible: Vec::new(),
        };
        assert_eq!(protection(&c, "root"), "read-only store, user u");
        assert_eq!(
            protection(&Confine::default(), "nobody"),
            "mode bits, user nobody"
        );
    }
}
