//! Turning a directory into a release: walk it in a fixed order, chunk and store every file
//! in parallel, write the manifest, sign it, and commit it to the store.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::chunk;
use crate::error::{Error, IoContext, Result};
use crate::hash::Hash;
use crate::manifest::{ChunkRef, Entry, FORMAT, Manifest};
use crate::store::Store;

/// What to build: a directory and the facts from `drover.toml`.
pub struct BuildInput<'a> {
    pub dir: &'a Path,
    pub app: &'a str,
    /// `None` derives a version from the content, so the same tree keeps the same id.
    pub version: Option<&'a str>,
    pub runtime: drover_config::Runtime,
    /// The resolved `[depends]` (`Store::resolve_depends`), pinned in the manifest.
    pub depends: std::collections::BTreeMap<String, Hash>,
    /// Top-level names to leave out (besides `.git`, always left out).
    pub exclude: &'a [String],
    /// Remember the directory's files for its next build (see `Seen`): for a directory that
    /// is built again, not a scratch copy made once.
    pub remember: bool,
}

/// What the last build of a directory saw: each file's identity on disk. A file whose
/// identity is unchanged is taken from that build's manifest instead of being read again.
/// Its ctime cannot be set by anyone (every write and chmod moves it to now), so "unchanged"
/// means unchanged; a file changed less than `SETTLE` before the build is not remembered,
/// as a later write could fall on the same coarse timestamp.
#[derive(Serialize, Deserialize)]
struct Seen {
    release: Hash,
    /// Path -> [dev, inode, size, mtime ns, ctime ns].
    files: HashMap<String, [i64; 5]>,
}

const SETTLE: i64 = 2_000_000_000;

fn identity(m: &fs::Metadata) -> [i64; 5] {
    [
        m.dev() as i64,
        m.ino() as i64,
        m.size() as i64,
        m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        m.ctime() * 1_000_000_000 + m.ctime_nsec(),
    ]
}

/// Where the store keeps what the last build of `dir` saw.
fn seen_path(store: &Store, dir: &Path) -> Option<std::path::PathBuf> {
    let dir = fs::canonicalize(dir).ok()?;
    let key = Hash::of(dir.as_os_str().as_encoded_bytes());
    Some(store.dir().join("builds").join(format!("{key}.json")))
}

/// What the last build of a directory left: its release, and its files (path -> identity,
/// hash, chunks) when that release is still in the store.
#[derive(Default)]
struct Before {
    release: Option<Hash>,
    files: HashMap<String, ([i64; 5], Hash, Vec<ChunkRef>)>,
}

fn load_seen(store: &Store, path: &Path) -> Before {
    let Some(seen) = fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Seen>(&b).ok())
    else {
        return Before::default();
    };
    let Ok(manifest) = store.manifest(&seen.release) else {
        return Before::default();
    };
    let mut ids = seen.files;
    let mut files = HashMap::with_capacity(ids.len());
    for e in manifest.entries {
        if let Entry::File {
            path, hash, chunks, ..
        } = e
            && let Some(id) = ids.remove(&path)
        {
            files.insert(path, (id, hash, chunks));
        }
    }
    Before {
        release: Some(seen.release),
        files,
    }
}

/// Records what this build saw (best effort: without it the next build reads every file),
/// unless that is what the record says already. `started`: when the build began looking at
/// the files (ns since the epoch).
fn save_seen(
    store: &Store,
    path: &Path,
    before: &Before,
    release: Hash,
    files: HashMap<String, [i64; 5]>,
    started: i64,
) {
    let files: HashMap<String, [i64; 5]> = files
        .into_iter()
        .filter(|(_, id)| id[3] < started - SETTLE && id[4] < started - SETTLE)
        .collect();
    let same = before.release == Some(release)
        && files.len() == before.files.len()
        && files
            .iter()
            .all(|(p, id)| before.files.get(p).is_some_and(|b| b.0 == *id));
    if same {
        return;
    }
    let Ok(body) = serde_json::to_vec(&Seen { release, files }) else {
        return;
    };
    let _ = store.write_atomic(path, &body, false);
}

#[derive(Debug, Serialize)]
pub struct Built {
    pub app: String,
    pub version: String,
    pub release: Hash,
    pub files: usize,
    /// Logical size: the sum of file sizes.
    pub bytes: u64,
    /// Bytes newly written to the store by this build.
    pub stored_bytes: u64,
    pub chunks: usize,
    pub new_chunks: usize,
    /// Files taken from the directory's last build without reading them (unchanged on disk).
    pub unchanged_files: usize,
}

enum Walked {
    Entry(Entry),
    File {
        path: String,
        mode: u32,
        size: u64,
        id: [i64; 5],
    },
}

/// The largest `.pyc` a build reads whole to make it valid for the release's tree.
const PYC_LIMIT: u64 = 64 << 20;

pub fn build(store: &Store, input: BuildInput<'_>) -> Result<Built> {
    let _lock = store.lock_shared()?;
    // Before any file is looked at: what settled before this instant stays settled.
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    let mut walked = Vec::new();
    walk(input.dir, input.dir, "", input.exclude, &mut walked)?;
    walked.sort_by(|a, b| walked_path(a).as_bytes().cmp(walked_path(b).as_bytes()));
    // Symlinks through symlinks, before any chunk is written (the manifest checks it again).
    let links = walked.iter().map(|w| match w {
        Walked::Entry(Entry::Symlink { path, target }) => (path.as_str(), Some(target.as_str())),
        other => (walked_path(other), None),
    });
    crate::manifest::check_links(links).map_err(|(path, target, m)| {
        Error::invalid(
            format!("{}: symlink `{path}` -> `{target}`", input.dir.display()),
            m,
        )
    })?;
    let record = input
        .remember
        .then(|| seen_path(store, input.dir))
        .flatten();
    let before = record
        .as_deref()
        .map(|p| load_seen(store, p))
        .unwrap_or_default();

    // Files, biggest first, spread over all cores.
    let mut files: Vec<(usize, &str, u64, [i64; 5])> = walked
        .iter()
        .enumerate()
        .filter_map(|(i, w)| match w {
            Walked::File { path, size, id, .. } => Some((i, path.as_str(), *size, *id)),
            Walked::Entry(_) => None,
        })
        .collect();
    files.sort_by_key(|f| std::cmp::Reverse(f.2));
    let seen: Mutex<HashSet<Hash>> = Mutex::new(HashSet::new());
    let stored = AtomicU64::new(0);
    let unchanged = AtomicU64::new(0);
    let new_chunks = AtomicU64::new(0);
    // Small objects go into a few pack files instead of one file each.
    let packs = store.pack_writer();
    let results = crate::par::map(&files, |(_, rel, size, id)| {
        // Python bytecode beside its source: read again every time (whether it is stored as
        // it is depends on its source too), and stored valid for the release's tree.
        let pyc_source = crate::pyc::source_of(rel);
        // Untouched since the last build, its chunks still here: nothing to read.
        if let Some((was, hash, chunks)) = before.files.get(*rel)
            && was == id
            && pyc_source.is_none()
            && chunks.iter().all(|c| store.has_chunk(&c.0))
        {
            unchanged.fetch_add(1, Ordering::Relaxed);
            return Ok((*hash, chunks.clone(), *size));
        }
        let path = input.dir.join(rel);
        let f: Box<dyn std::io::Read + Send> =
            match pyc_source.as_deref().filter(|_| *size <= PYC_LIMIT) {
                Some(src) => {
                    let pyc = fs::read(&path).at(&path)?;
                    let bytes = crate::pyc::portable(&pyc, &input.dir.join(src)).unwrap_or(pyc);
                    Box::new(std::io::Cursor::new(bytes))
                }
                None => Box::new(File::open(&path).at(&path)?),
            };
        let mut chunks = Vec::new();
        let mut hasher = blake3::Hasher::new();
        // A file no bigger than the smallest chunk is one chunk: its hash is the file's.
        let one_chunk = *size <= chunk::MIN_CHUNK as u64;
        let mut enc = chunk::Encoder::default();
        let mut stored_err = None;
        let mut total = 0u64;
        chunk::for_each_chunk(f, *size, |data| {
            let h = Hash::of(data);
            if !one_chunk {
                hasher.update(data);
            }
            total += data.len() as u64;
            chunks.push(ChunkRef(h, data.len() as u32));
            let claimed = seen.lock().unwrap_or_else(|e| e.into_inner()).insert(h);
            if claimed {
                match store.put_chunk_packed(&h, data, &mut enc, &packs) {
                    Ok(0) => {}
                    Ok(n) => {
                        stored.fetch_add(n, Ordering::Relaxed);
                        new_chunks.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        stored_err = Some(e);
                        return Err(std::io::Error::other("store write failed"));
                    }
                }
            }
            Ok(())
        })
        .map_err(|e| {
            stored_err.take().unwrap_or(Error::Io {
                path: path.clone(),
                err: e,
            })
        })?;
        if total != *size {
            return Err(Error::invalid(
                path.display().to_string(),
                "the file changed size while it was being read",
            ));
        }
        let hash = match (one_chunk, chunks.as_slice()) {
            (true, [only]) => only.0,
            _ => Hash::from(hasher.finalize()),
        };
        Ok((hash, chunks, total))
    });

    let identities: HashMap<String, [i64; 5]> = if record.is_some() {
        files
            .iter()
            .map(|(_, rel, _, id)| (rel.to_string(), *id))
            .collect()
    } else {
        HashMap::new()
    };
    let mut entries: Vec<Option<Entry>> = Vec::with_capacity(walked.len());
    let mut file_results = vec![None; walked.len()];
    for ((i, _, _, _), r) in files.iter().zip(results) {
        file_results[*i] = Some(r?);
    }
    packs.finish()?;
    crate::failpoint::hit("build.chunks_written");
    for (i, w) in walked.into_iter().enumerate() {
        entries.push(Some(match w {
            Walked::Entry(e) => e,
            Walked::File { path, mode, .. } => {
                let (hash, chunks, size) = file_results[i].take().expect("every file was chunked");
                Entry::File {
                    path,
                    mode,
                    size,
                    hash,
                    chunks,
                }
            }
        }));
    }
    let entries: Vec<Entry> = entries.into_iter().flatten().collect();

    let version = match input.version {
        Some(v) => v.to_string(),
        None => {
            let digest = Hash::of(&serde_json::to_vec(&entries).expect("entries serialise"));
            format!("0+{}", &digest.to_hex()[..10])
        }
    };
    let manifest = Manifest {
        format: FORMAT,
        app: input.app.to_string(),
        version,
        runtime: input.runtime,
        depends: input.depends,
        entries,
    };
    let what = format!("release of {}", input.dir.display());
    manifest.validate(&what)?;
    let id = manifest.id();
    let sig = store.keys().sign(&id)?;
    let committed = store.commit_release(&manifest, &sig)?;
    crate::failpoint::hit("build.committed");
    if let Some(path) = &record {
        save_seen(store, path, &before, id, identities, started);
    }
    let chunk_count = manifest.chunk_set().len();
    Ok(Built {
        app: manifest.app.clone(),
        version: manifest.version.clone(),
        release: id,
        files: manifest.file_count(),
        bytes: manifest.bytes(),
        stored_bytes: stored.load(Ordering::Relaxed) + committed,
        chunks: chunk_count,
        new_chunks: new_chunks.load(Ordering::Relaxed) as usize,
        unchanged_files: unchanged.load(Ordering::Relaxed) as usize,
    })
}

fn walked_path(w: &Walked) -> &str {
    match w {
        Walked::Entry(e) => e.path(),
        Walked::File { path, .. } => path,
    }
}

fn walk(
    root: &Path,
    dir: &Path,
    prefix: &str,
    exclude: &[String],
    out: &mut Vec<Walked>,
) -> Result<()> {
    for e in fs::read_dir(dir).at(dir)? {
        let e = e.at(dir)?;
        let path = e.path();
        let name = e.file_name();
        let name = name.to_str().ok_or_else(|| {
            Error::invalid(path.display().to_string(), "file name is not valid UTF-8")
        })?;
        if prefix.is_empty() && (name == ".git" || exclude.iter().any(|x| x == name)) {
            continue;
        }
        let rel = if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}/{name}")
        };
        // Refuse what the manifest would refuse before any chunk is written.
        crate::manifest::check_path(&rel)
            .map_err(|m| Error::invalid(path.display().to_string(), m))?;
        let meta = fs::symlink_metadata(&path).at(&path)?;
        let ft = meta.file_type();
        let mode = meta.permissions().mode() & 0o777;
        if ft.is_dir() {
            out.push(Walked::Entry(Entry::Dir {
                path: rel.clone(),
                mode,
            }));
            walk(root, &path, &rel, exclude, out)?;
        } else if ft.is_file() {
            out.push(Walked::File {
                path: rel,
                mode,
                size: meta.len(),
                id: identity(&meta),
            });
        } else if ft.is_symlink() {
            let target = fs::read_link(&path).at(&path)?;
            let target = target.to_str().ok_or_else(|| {
                Error::invalid(
                    path.display().to_string(),
                    "symlink target is not valid UTF-8",
                )
            })?;
            crate::manifest::check_symlink(target).map_err(|m| {
                Error::invalid(
                    format!("{}: symlink `{rel}` -> `{target}`", root.display()),
                    m,
                )
            })?;
            out.push(Walked::Entry(Entry::Symlink {
                path: rel,
                target: target.to_string(),
            }));
        } else {
            let kind = if ft.is_block_device() || ft.is_char_device() {
                "a device file"
            } else if ft.is_fifo() {
                "a named pipe"
            } else if ft.is_socket() {
                "a socket"
            } else {
                "not a regular file"
            };
            return Err(Error::invalid(
                path.display().to_string(),
                format!("{kind}; a release holds only files, directories and symlinks"),
            ));
        }
    }
    Ok(())
}
