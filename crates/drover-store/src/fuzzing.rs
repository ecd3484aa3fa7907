//! The bodies of the store's fuzz targets (`fuzz/`): a release manifest, an archive for
//! `drover unpack` and a sender's transfer stream, each fed arbitrary bytes. Shared by the
//! libFuzzer targets and the corpus replay test; an `Err` is fine, a panic is the bug.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use crate::build::{BuildInput, build};
use crate::hash::Hash;
use crate::manifest::Manifest;
use crate::pack::{self, UnpackOptions};
use crate::store::{Store, remove_tree};

/// The signing key of every fuzzed store and of the seed corpora (a test key: public).
/// A store trusts its own key, so the seeds' signatures are good and fuzzing reaches what
/// follows them.
pub const SIGNING_KEY: &str =
    "drover-secret-key:64726f7665722066757a7a207369676e696e67206b65792c207075626c696321";

/// `Manifest::from_bytes` (parse, validate, canonical form); what it accepts is canonical.
pub fn manifest(data: &[u8]) {
    if let Ok(m) = Manifest::from_bytes(data, "fuzz manifest") {
        assert_eq!(m.to_bytes(), data, "an accepted manifest is canonical");
        let _ = (m.bytes(), m.file_count(), m.chunk_set());
    }
}

/// `drover unpack` of `data` into an empty store: on an error the store is left as it was
/// (and so serves the next input).
pub fn unpack(data: &[u8]) {
    static ROOT: Mutex<Option<TempRoot>> = Mutex::new(None);
    let root = take(&ROOT).unwrap_or_else(|| TempRoot::new("unpack", None));
    let store = root.store();
    match pack::unpack(&store, data, "fuzz.drvpack", UnpackOptions::default()) {
        Ok(u) => assert_verified(&store, &u.release),
        Err(_) => {
            assert!(
                store.release_ids().unwrap_or_default().is_empty(),
                "a refused archive added a release"
            );
            assert_eq!(
                files_under(&store.dir().join("objects")),
                0,
                "a refused archive left objects in the store"
            );
            assert_eq!(
                files_under(&store.dir().join("tmp")),
                0,
                "a refused archive left files in tmp/"
            );
            give_back(&ROOT, root);
        }
    }
}

/// The receiving side of a transfer, `data` as the sender's stream, into a store that holds
/// one release (`base_store`), so manifests and chunks sent as deltas can be decoded.
pub fn receive(data: &[u8]) {
    static ROOT: Mutex<Option<TempRoot>> = Mutex::new(None);
    static BASE_OBJECTS: OnceLock<usize> = OnceLock::new();
    let base_objects =
        *BASE_OBJECTS.get_or_init(|| files_under(&base_store().join("store/objects")));
    let root = take(&ROOT).unwrap_or_else(|| TempRoot::new("receive", Some(base_store())));
    let store = root.store();
    let before = store.release_ids().unwrap_or_default();
    match crate::transfer::receive(&store, data, std::io::sink()) {
        Ok(r) if !r.already => {
            let id: Hash = r.release.parse().expect("the receiver names a release id");
            assert_verified(&store, &id);
        }
        Ok(_) => {}
        Err(_) => assert_eq!(
            store.release_ids().unwrap_or_default(),
            before,
            "a refused transfer added a release"
        ),
    }
    // Kept for the next input only when it is as it was (chunks a refused transfer keeps,
    // by design, would change what the next one is asked for).
    if store.release_ids().unwrap_or_default() == before
        && files_under(&store.dir().join("objects")) == base_objects
        && files_under(&store.dir().join("tmp")) == 0
    {
        give_back(&ROOT, root);
    }
}

fn take(slot: &Mutex<Option<TempRoot>>) -> Option<TempRoot> {
    slot.lock().unwrap_or_else(|e| e.into_inner()).take()
}

fn give_back(slot: &Mutex<Option<TempRoot>>, root: TempRoot) {
    *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(root);
}

fn assert_verified(store: &Store, id: &Hash) {
    let report = store.verify(Some(id)).expect("verify runs");
    assert!(
        report.problems.is_empty(),
        "an accepted release does not verify: {:?}",
        report.problems
    );
}

fn files_under(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() { files_under(&p) } else { 1 }
                })
                .sum()
        })
        .unwrap_or(0)
}

/// A drover root of its own under the temp directory (`TMPDIR`), removed when dropped.
struct TempRoot(PathBuf);

impl TempRoot {
    /// Empty but for the signing key, or a copy of `template`.
    fn new(what: &str, template: Option<&Path>) -> TempRoot {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "drover-fuzz-{what}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        remove_tree(&dir);
        match template {
            Some(t) => copy_tree(t, &dir),
            None => {
                let keys = dir.join("keys");
                std::fs::create_dir_all(&keys).expect("temp root");
                std::fs::write(keys.join("signing.key"), SIGNING_KEY).expect("signing key");
            }
        }
        TempRoot(dir)
    }

    fn store(&self) -> Store {
        Store::open(&self.0).expect("a fresh store opens")
    }
}

impl Drop for TempRoot {
    fn drop(&mut self) {
        remove_tree(&self.0);
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("copy of the template store");
    for e in std::fs::read_dir(from).expect("template store").flatten() {
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if e.file_type().expect("file type").is_dir() {
            copy_tree(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).expect("copy of the template store");
        }
    }
}

/// The files of the seed releases: `app.txt` (text, so a changed version travels as a
/// delta), `bin/run` (a small executable) and `bin/app.txt` (a symlink), in `dir`. `version` changes a line, `app`
/// every line.
pub fn seed_tree(dir: &Path, app: &str, version: u32) {
    let mut text = String::new();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for i in 0..600 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let line = if i == 300 {
            u64::from(version)
        } else {
            x % 1000
        };
        text.push_str(&format!("line {i}: value {line} of {app}\n"));
    }
    std::fs::create_dir_all(dir.join("bin")).expect("seed tree");
    std::fs::write(dir.join("app.txt"), text).expect("seed tree");
    std::fs::write(dir.join("bin/run"), "#!/bin/sh\nexec cat app.txt\n").expect("seed tree");
    std::os::unix::fs::symlink("../app.txt", dir.join("bin/app.txt")).expect("seed tree");
    // Modes set, not left to the umask: the seeds' release ids must not depend on it.
    use std::os::unix::fs::PermissionsExt;
    for (p, mode) in [("bin", 0o755), ("bin/run", 0o755), ("app.txt", 0o644)] {
        std::fs::set_permissions(dir.join(p), std::fs::Permissions::from_mode(mode))
            .expect("seed tree");
    }
}

/// How the seed releases run (every part of a manifest's runtime set).
const SEED_CONFIG: &str = r#"
[app]
name = "hello"
[process.web]
command = "./bin/run --port $PORT"
http = true
instances = 2
[process.worker]
command = "./bin/run worker"
[health]
path = "/up"
timeout = "10s"
[proxy]
port = 8080
[env]
GREETING = "hello from drover"
[config]
required = ["DATABASE_URL"]
[hooks]
release = "./bin/run migrate"
"#;

/// Builds `app`@`version` of `seed_tree` into `store`.
pub fn seed_release(store: &Store, scratch: &Path, app: &str, version: u32) -> Hash {
    let src = scratch.join(format!("src-{app}-{version}"));
    seed_tree(&src, app, version);
    let v = version.to_string();
    let runtime = drover_config::Config::parse(SEED_CONFIG, Path::new("seed drover.toml"))
        .expect("the seed config parses")
        .runtime();
    let built = build(
        store,
        BuildInput {
            dir: &src,
            app,
            version: Some(&v),
            runtime,
            depends: Default::default(),
            exclude: &[],
            remember: false,
        },
    )
    .expect("the seed release builds");
    remove_tree(&src);
    built.release
}

/// A store holding `hello`@1 of `seed_tree`, made once per process (and left behind in the
/// temp directory: it is the template every `receive` input starts from).
fn base_store() -> &'static Path {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("drover-fuzz-base-{}", std::process::id()));
        remove_tree(&root);
        let keys = root.join("keys");
        std::fs::create_dir_all(&keys).expect("base root");
        std::fs::write(keys.join("signing.key"), SIGNING_KEY).expect("signing key");
        let store = Store::open(&root).expect("base store");
        seed_release(&store, &root, "hello", 1);
        root
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus_dirs(target: &str) -> Vec<PathBuf> {
        let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
        vec![
            fuzz.join("corpus").join(target),
            fuzz.join("regressions").join(target),
        ]
    }

    /// Runs `f` over every committed input of `target`; returns how many there were.
    fn replay(target: &str, f: fn(&[u8])) -> usize {
        let mut n = 0;
        for dir in corpus_dirs(target) {
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in rd.flatten() {
                let data = std::fs::read(e.path()).unwrap();
                let path = e.path();
                if let Err(p) = std::panic::catch_unwind(|| f(&data)) {
                    std::panic::resume_unwind(Box::new(format!(
                        "{}: {}",
                        path.display(),
                        p.downcast_ref::<String>()
                            .map(String::as_str)
                            .or_else(|| p.downcast_ref::<&str>().copied())
                            .unwrap_or("panic")
                    )));
                }
                n += 1;
            }
        }
        n
    }

    #[test]
    fn the_manifest_corpus_replays() {
        assert!(replay("manifest", manifest) > 0);
    }

    #[test]
    fn the_unpack_corpus_replays() {
        assert!(replay("unpack", unpack) > 0);
    }

    #[test]
    fn the_receive_corpus_replays() {
        assert!(replay("receive", receive) > 0);
    }

    /// A real archive of `hello`@1 and real transfer streams (`hello`@2 against @1, and an
    /// app the receiver has no release of), from stores with the fuzzing key.
    fn make_seeds(scratch: &Path) -> Vec<(&'static str, &'static str, Vec<u8>)> {
        let root = scratch.join("sender");
        std::fs::create_dir_all(root.join("keys")).unwrap();
        std::fs::write(root.join("keys/signing.key"), SIGNING_KEY).unwrap();
        let store = Store::open(&root).unwrap();
        let v1 = seed_release(&store, scratch, "hello", 1);
        let v2 = seed_release(&store, scratch, "hello", 2);
        let other = seed_release(&store, scratch, "other", 1);
        let mut archive = Vec::new();
        pack::pack(&store, &v1, &mut archive).unwrap();
        let mut out = vec![
            ("unpack", "hello-1.drvpack", archive),
            (
                "manifest",
                "hello-1.json",
                store.manifest_bytes(&v1).unwrap(),
            ),
            (
                "manifest",
                "hello-2.json",
                store.manifest_bytes(&v2).unwrap(),
            ),
        ];
        for (id, name) in [(v2, "hello-2-against-1"), (other, "other-1-whole")] {
            out.push(("receive", name, sender_stream(&store, &id)));
        }
        out
    }

    /// What `send` writes to a receiver holding `base_store`, over a socket pair.
    fn sender_stream(store: &Store, id: &Hash) -> Vec<u8> {
        use std::io::Write;
        use std::os::unix::net::UnixStream;
        struct Tee(UnixStream, Vec<u8>);
        impl Write for Tee {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                let n = self.0.write(buf)?;
                self.1.extend_from_slice(&buf[..n]);
                Ok(n)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                self.0.flush()
            }
        }
        let (ours, theirs) = UnixStream::pair().unwrap();
        let receiver = std::thread::spawn(move || {
            let root = TempRoot::new("seed", Some(base_store()));
            crate::transfer::receive(&root.store(), theirs.try_clone().unwrap(), theirs)
        });
        let mut tee = Tee(ours.try_clone().unwrap(), Vec::new());
        let sent = crate::transfer::send(
            store,
            id,
            &Default::default(),
            ours,
            &mut tee,
            "seed",
            |_| {},
        )
        .unwrap();
        receiver.join().unwrap().unwrap();
        assert!(!sent.received.already);
        tee.1
    }

    /// The committed seeds are real inputs that get all the way through: every one is
    /// accepted. `DROVER_FUZZ_WRITE_SEEDS=1` writes them anew (after a format change).
    #[test]
    fn the_seeds_are_accepted_whole() {
        let scratch = TempRoot::new("seeds", None);
        let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
        for (target, name, bytes) in make_seeds(&scratch.0) {
            let path = fuzz.join(target).join(name);
            if std::env::var_os("DROVER_FUZZ_WRITE_SEEDS").is_some() {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, &bytes).unwrap();
            }
            let committed = std::fs::read(&path).unwrap_or_else(|e| {
                panic!(
                    "{}: {e}\nhint: write the seeds with `DROVER_FUZZ_WRITE_SEEDS=1 cargo test -p drover-store fuzzing`",
                    path.display()
                )
            });
            let accepted = match target {
                "unpack" => {
                    let root = TempRoot::new("check", None);
                    pack::unpack(
                        &root.store(),
                        &committed[..],
                        name,
                        UnpackOptions::default(),
                    )
                    .map(|u| u.added)
                }
                "receive" => {
                    let root = TempRoot::new("check", Some(base_store()));
                    crate::transfer::receive(&root.store(), &committed[..], std::io::sink())
                        .map(|r| !r.already && r.new_chunks > 0)
                }
                _ => Manifest::from_bytes(&committed, name).map(|_| true),
            };
            assert!(
                matches!(accepted, Ok(true)),
                "{} is not accepted whole ({accepted:?})\nhint: write the seeds anew with `DROVER_FUZZ_WRITE_SEEDS=1 cargo test -p drover-store fuzzing`",
                path.display()
            );
        }
    }
}
