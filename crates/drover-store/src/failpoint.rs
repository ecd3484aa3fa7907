//! Crash points: named places at the durable steps of build, commit, materialise, receive,
//! switch, gc and the fleet's confirm where a test makes the process die as `kill -9` would.
//!
//! `DROVER_FAILPOINT=NAME` (or `NAME#N`: at the Nth time the point is reached; several
//! separated by commas) makes the process SIGKILL itself at that point. Compiled out of
//! release builds: there `hit` is an empty inline function and the variable is ignored.

/// Every crash point, so a test can walk them all. A point not listed here is a bug
/// (checked in debug builds).
pub const POINTS: &[&str] = &[
    // The fleet's confirm: a host is live and awaits it (the deployer's side, then the
    // host's `remote serve`).
    "fleet.confirm-before-send",
    "fleet.confirm-after-send",
    "serve.confirm-received",
    // A release's tree: written in tmp/, durable, renamed into trees/.
    "materialise.tree_written",
    "materialise.before_rename",
    "materialise.after_rename",
    // gc: between its removals, and around the pack merge.
    "gc.release_removed",
    "gc.before_merge",
    "gc.merge_synced",
    "gc.after_merge",
    "gc.files_removed",
    "gc.tree_moved",
    // A build: its chunks are in packs (not yet durable); its release is committed (the
    // directory's build record not yet written).
    "build.chunks_written",
    "build.committed",
    // An unpack: the whole archive checked (nothing outside staging yet); after each chunk
    // moved into place; every chunk in place, the commit next.
    "unpack.checked",
    "unpack.chunk_adopted",
    "unpack.adopted",
    // A transfer's receiver: every chunk in (sealed in packs), the commit next; committed,
    // the tree drafted while the chunks came not yet put in place.
    "receive.chunks_in",
    "receive.tree_completed",
    // A commit (of a build, an unpack or a transfer): chunks durable (`syncfs`); signature,
    // metadata written; the manifest renamed in (the release exists), then made durable.
    "commit.chunks_durable",
    "commit.signature_written",
    "commit.meta_written",
    "commit.manifest_renamed",
    "commit.durable",
    // The agent: its socket bound in a private directory, not yet renamed into place.
    "agent.socket_bound",
    // The agent's switch: the new generation recorded pending, `current` renamed, old
    // instances stopped.
    "agent.switch.pending",
    "agent.switch.before_rename",
    "agent.switch.after_rename",
    "agent.switch.before_stop_old",
];

/// Dies here (SIGKILL, no destructors, no flushing) when `DROVER_FAILPOINT` names `name`.
#[cfg(debug_assertions)]
pub fn hit(name: &str) {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    debug_assert!(
        POINTS.contains(&name),
        "crash point {name} is not in POINTS"
    );
    static SPEC: OnceLock<Vec<(String, u64, AtomicU64)>> = OnceLock::new();
    let spec = SPEC.get_or_init(|| {
        let raw = std::env::var("DROVER_FAILPOINT").unwrap_or_default();
        raw.split(',')
            .filter(|s| !s.is_empty())
            .map(|s| match s.split_once('#') {
                Some((n, k)) => (n.to_owned(), k.parse().unwrap_or(1), AtomicU64::new(0)),
                None => (s.to_owned(), 1, AtomicU64::new(0)),
            })
            .collect()
    });
    for (point, nth, seen) in spec {
        if point == name && seen.fetch_add(1, Ordering::SeqCst) + 1 == *nth {
            eprintln!("drover: crash point {name}: killing this process");
            let _ = rustix::process::kill_process(
                rustix::process::getpid(),
                rustix::process::Signal::KILL,
            );
            // SIGKILL cannot be caught; this is never reached.
            std::process::abort();
        }
    }
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn hit(_name: &str) {}
