//! The content-addressed store under `ROOT/store`: chunk objects, manifests, signatures,
//! release metadata, the verified file cache and the materialised read-only release trees.
//!
//! Every object is written to `tmp/` and renamed into place; a release becomes visible only
//! when its manifest is renamed in, after everything it needs is durable (`syncfs`).

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::chunk;
use crate::error::{Error, IoContext, Result};
use crate::hash::Hash;
use crate::keys::{Keyring, ReleaseSignature};
use crate::manifest::{Entry, MAX_MANIFEST_BYTES, Manifest};
use crate::objpack::{IndexEntry, PACK_TARGET, PackWriter, Packs};

/// Local facts about a stored release (not part of its identity).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseMeta {
    pub release: Hash,
    pub app: String,
    pub version: String,
    /// Unix seconds when this store received the release.
    pub stored_at: u64,
    pub signer: String,
    pub files: usize,
    pub bytes: u64,
    /// The releases it runs with (`[depends]`), by name.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub depends: std::collections::BTreeMap<String, Hash>,
}

/// A held store lock: shared for writers (build, unpack), exclusive for `gc`.
pub struct StoreLock(#[allow(dead_code)] File);

#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    keys: Keyring,
    packs: Arc<Packs>,
    /// When each dependency's tree was last checked by this process (`dependency_env`).
    pub(crate) deps_checked: Arc<std::sync::Mutex<HashMap<Hash, std::time::Instant>>>,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl Store {
    /// Opens (creating if needed) the store of a drover root.
    pub fn open(root: &Path) -> Result<Store> {
        let dir = root.join("store");
        for sub in [
            "objects/chunks",
            "objects/packs",
            "objects/manifests",
            "objects/sigs",
            "meta",
            "files",
            "trees",
            "tmp",
            "builds",
        ] {
            let p = dir.join(sub);
            fs::create_dir_all(&p).at(&p)?;
        }
        // The 256 chunk fan-out directories exist up front: no mkdir per chunk write.
        let chunks = dir.join("objects/chunks");
        if !chunks.join("ff").exists() {
            for i in 0..=255u8 {
                let p = chunks.join(format!("{i:02x}"));
                fs::create_dir_all(&p).at(&p)?;
            }
        }
        Ok(Store {
            packs: Arc::new(Packs::new(dir.join("objects/packs"))),
            dir,
            keys: Keyring::new(root),
            deps_checked: Default::default(),
        })
    }

    pub fn keys(&self) -> &Keyring {
        &self.keys
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn lock_shared(&self) -> Result<StoreLock> {
        let path = self.dir.join("lock");
        let f = File::create(&path).at(&path)?;
        f.lock_shared().at(&path)?;
        Ok(StoreLock(f))
    }

    pub fn lock_exclusive(&self) -> Result<StoreLock> {
        let path = self.dir.join("lock");
        let f = File::create(&path).at(&path)?;
        f.lock().at(&path)?;
        Ok(StoreLock(f))
    }

    // ---- paths -------------------------------------------------------------

    fn chunk_path(&self, h: &Hash) -> PathBuf {
        let hex = h.to_hex();
        self.dir.join("objects/chunks").join(&hex[..2]).join(hex)
    }

    fn manifest_path(&self, id: &Hash) -> PathBuf {
        self.dir.join("objects/manifests").join(id.to_hex())
    }

    fn sig_path(&self, id: &Hash) -> PathBuf {
        self.dir.join("objects/sigs").join(id.to_hex())
    }

    fn meta_path(&self, id: &Hash) -> PathBuf {
        self.dir.join("meta").join(format!("{id}.json"))
    }

    fn file_path(&self, h: &Hash, mode: u32) -> PathBuf {
        let kind = if mode & 0o111 != 0 { "x" } else { "r" };
        self.dir.join("files").join(format!("{h}.{kind}"))
    }

    /// Where a release is materialised: a stable, read-only path.
    pub fn tree_path(&self, id: &Hash) -> PathBuf {
        self.dir.join("trees").join(id.to_hex())
    }

    /// A fresh path under `tmp/` (same filesystem as the objects, so renames are atomic).
    pub fn tmp_path(&self, what: &str) -> PathBuf {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        self.dir
            .join("tmp")
            .join(format!("{what}-{}-{n}", std::process::id()))
    }

    // ---- chunks ------------------------------------------------------------

    /// Is the chunk stored (loose, or in a pack this store has indexed)?
    pub fn has_chunk(&self, h: &Hash) -> bool {
        self.packs.locate(h).is_some() || self.chunk_path(h).exists()
    }

    /// A writer of object packs, for storing many chunks at once (a build).
    pub fn pack_writer(&self) -> PackWriter<'_> {
        PackWriter::new(&self.packs, self.dir.join("tmp"))
    }

    /// Stores raw chunk data, encoded with a file's `Encoder` (which learns what does not
    /// compress), in `packs`; returns the bytes written (0 if it was already there). It counts
    /// as stored once `packs` is finished. A stored copy is trusted only once it reads back
    /// as this chunk: a damaged one is replaced (see `repair_chunk`).
    pub fn put_chunk_packed(
        &self,
        h: &Hash,
        data: &[u8],
        enc: &mut chunk::Encoder,
        packs: &PackWriter<'_>,
    ) -> Result<u64> {
        let object = if self.has_chunk(h) {
            if self.read_chunk(h).is_ok() {
                return Ok(0);
            }
            let object = enc.encode(data);
            self.repair_chunk(h, &object)?;
            object
        } else {
            let object = enc.encode(data);
            packs.put(h, &object)?;
            object
        };
        Ok(object.len() as u64)
    }

    /// Replaces a damaged chunk with a good object (checked by the caller): a loose copy,
    /// durable when this returns, which reads take over a damaged packed one (packs never
    /// change; `gc` drops the damaged copy when it rewrites its pack).
    fn repair_chunk(&self, h: &Hash, object: &[u8]) -> Result<()> {
        self.write_atomic(&self.chunk_path(h), object, true)
    }

    /// Moves a checked chunk object file (staged under `tmp/`) into place, over a damaged
    /// copy if there is one.
    pub fn adopt_chunk_file(&self, h: &Hash, staged: &Path) -> Result<()> {
        let path = self.chunk_path(h);
        fs::rename(staged, &path).at(&path)
    }

    /// The encoded object as stored (unverified: callers decode it).
    pub fn chunk_object(&self, h: &Hash) -> Result<Vec<u8>> {
        if let Some(object) = self.packs.read(h)? {
            return Ok(object);
        }
        let path = self.chunk_path(h);
        match fs::read(&path) {
            Ok(object) => Ok(object),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Packed since this store last looked (by another process, or `gc`)?
                self.packs.rescan()?;
                self.packs.read(h)?.ok_or_else(|| Error::Missing {
                    kind: "chunk",
                    id: h.to_hex(),
                })
            }
            Err(e) => Err(Error::Io { path, err: e }),
        }
    }

    /// The stored (compressed) size of a chunk object.
    pub fn chunk_size(&self, h: &Hash) -> Result<u64> {
        if let Some(loc) = self.packs.locate(h) {
            return Ok(loc.len());
        }
        let path = self.chunk_path(h);
        match fs::metadata(&path) {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.packs.rescan()?;
                match self.packs.locate(h) {
                    Some(loc) => Ok(loc.len()),
                    None => Err(Error::Io { path, err: e }),
                }
            }
            Err(e) => Err(Error::Io { path, err: e }),
        }
    }

    /// Reads and verifies a chunk: corrupt data is never returned.
    pub fn read_chunk(&self, h: &Hash) -> Result<Vec<u8>> {
        self.chunk_verified(h).map(|(_, data)| data)
    }

    /// A chunk's stored object and its raw data, checked against its name. A damaged packed
    /// copy gives way to a good loose one (what a repair leaves).
    pub fn chunk_verified(&self, h: &Hash) -> Result<(Vec<u8>, Vec<u8>)> {
        let object = self.chunk_object(h)?;
        match chunk::decode(&object, h) {
            Ok(data) => Ok((object, data)),
            Err(reason) => {
                if self.packs.locate(h).is_some()
                    && let Ok(loose) = fs::read(self.chunk_path(h))
                    && let Ok(data) = chunk::decode(&loose, h)
                {
                    return Ok((loose, data));
                }
                Err(Error::Corrupt {
                    kind: "chunk",
                    id: h.to_hex(),
                    reason,
                })
            }
        }
    }

    /// As `read_chunk`, through `cache`: read and verified once, then shared.
    pub fn read_chunk_cached(&self, h: &Hash, cache: &ChunkCache) -> Result<Arc<Vec<u8>>> {
        if let Some(data) = cache.get(h) {
            return Ok(data);
        }
        let data = Arc::new(self.read_chunk(h)?);
        cache.keep(h, &data);
        Ok(data)
    }

    pub(crate) fn write_atomic(&self, path: &Path, data: &[u8], durable: bool) -> Result<()> {
        let tmp = self.tmp_path("obj");
        self.write_via(&tmp, path, data, durable)
    }

    fn write_via(&self, tmp: &Path, path: &Path, data: &[u8], durable: bool) -> Result<()> {
        let mut f = File::create(tmp).at(tmp)?;
        f.write_all(data).at(tmp)?;
        if durable {
            f.sync_all().at(tmp)?;
        }
        drop(f);
        fs::rename(tmp, path).at(path)
    }

    /// Makes everything written so far durable (one `syncfs` instead of an fsync per object).
    pub fn sync(&self) -> Result<()> {
        syncfs(&self.dir)
    }

    // ---- releases ----------------------------------------------------------

    /// Commits a release whose chunks are all stored. The manifest rename is the commit point.
    /// Returns the bytes newly written (0 when the release was already there).
    pub fn commit_release(&self, manifest: &Manifest, sig: &ReleaseSignature) -> Result<u64> {
        self.commit_release_with(manifest, sig, false)
    }

    /// As `commit_release`; `allow_untrusted` accepts a valid signature by any key.
    pub fn commit_release_with(
        &self,
        manifest: &Manifest,
        sig: &ReleaseSignature,
        allow_untrusted: bool,
    ) -> Result<u64> {
        let bytes = manifest.to_bytes();
        let id = Hash::of(&bytes);
        // A damaged manifest or signature is written anew.
        if self.release_intact(&id) {
            return Ok(0);
        }
        let chunks = manifest.chunk_set();
        if chunks.iter().any(|h| !self.has_chunk(h)) {
            // Packed by another process since this one indexed the packs?
            self.packs.rescan()?;
        }
        for h in chunks {
            if !self.has_chunk(&h) {
                return Err(Error::Missing {
                    kind: "chunk",
                    id: h.to_hex(),
                });
            }
        }
        let what = format!("release {}", id.short());
        // A release is stored only with everything it runs with.
        for (name, dep) in &manifest.depends {
            if !self.has_release(dep) {
                return Err(Error::invalid_hinted(
                    format!(
                        "release {}@{} ({})",
                        manifest.app,
                        manifest.version,
                        id.short()
                    ),
                    format!(
                        "its dependency `{name}` ({}) is not in the store",
                        dep.short()
                    ),
                    "store the dependency first: `drover unpack` its archive, or deploy with `drover deploy -e`, which sends it",
                ));
            }
        }
        let signer = if allow_untrusted {
            sig.check(&id, &what)?
        } else {
            self.keys.check_trusted(&id, sig, &what)?
        };
        let meta = ReleaseMeta {
            release: id,
            app: manifest.app.clone(),
            version: manifest.version.clone(),
            stored_at: now(),
            signer: signer.to_string(),
            files: manifest.file_count(),
            bytes: manifest.bytes(),
            depends: manifest.depends.clone(),
        };
        let sig_bytes = sig.to_bytes();
        let meta_bytes = serde_json::to_vec_pretty(&meta).expect("meta serialises");
        self.sync()?;
        crate::failpoint::hit("commit.chunks_durable");
        self.write_atomic(&self.sig_path(&id), &sig_bytes, true)?;
        crate::failpoint::hit("commit.signature_written");
        self.write_atomic(&self.meta_path(&id), &meta_bytes, true)?;
        crate::failpoint::hit("commit.meta_written");
        self.write_atomic(&self.manifest_path(&id), &bytes, true)?;
        crate::failpoint::hit("commit.manifest_renamed");
        self.sync()?;
        crate::failpoint::hit("commit.durable");
        Ok((bytes.len() + sig_bytes.len() + meta_bytes.len()) as u64)
    }

    pub fn has_release(&self, id: &Hash) -> bool {
        self.manifest_path(id).exists()
    }

    /// Whether a release is here whole: its manifest matches its id and its signature is
    /// valid. (Its chunks are checked where they are relied on.)
    pub fn release_intact(&self, id: &Hash) -> bool {
        self.manifest_bytes(id)
            .is_ok_and(|bytes| Hash::of(&bytes) == *id)
            && self
                .signature(id)
                .and_then(|s| s.check(id, "signature"))
                .is_ok()
    }

    pub fn manifest_bytes(&self, id: &Hash) -> Result<Vec<u8>> {
        let path = self.manifest_path(id);
        match fs::metadata(&path) {
            Ok(m) if m.len() > MAX_MANIFEST_BYTES => {
                return Err(Error::Corrupt {
                    kind: "manifest",
                    id: id.to_hex(),
                    reason: "oversized".into(),
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound(id.to_hex()));
            }
            _ => {}
        }
        fs::read(&path).at(&path)
    }

    /// Reads a manifest and checks it against its id.
    pub fn manifest(&self, id: &Hash) -> Result<Manifest> {
        let bytes = self.manifest_bytes(id)?;
        let corrupt = |reason: String| Error::Corrupt {
            kind: "manifest",
            id: id.to_hex(),
            reason,
        };
        if Hash::of(&bytes) != *id {
            return Err(corrupt("content does not match its id".into()));
        }
        Manifest::from_bytes(&bytes, &format!("manifest {}", id.short()))
            .map_err(|e| corrupt(e.to_string()))
    }

    /// The manifest of a release about to be used (deployed, started, run, rolled back to):
    /// checked against its id, and its stored signature checked against the trusted keys,
    /// every time, so a signature file replaced or damaged since the import stops it here.
    pub fn trusted_manifest(&self, id: &Hash) -> Result<Manifest> {
        let manifest = self.manifest(id)?;
        let path = self.sig_path(id);
        let release = format!(
            "release {}@{} ({})",
            manifest.app,
            manifest.version,
            id.short()
        );
        let bad = |reason: String| Error::BadSignature {
            release: release.clone(),
            path: path.clone(),
            reason,
        };
        let reason = |e: Error| match e {
            Error::Invalid { message, .. } => message,
            other => other.to_string(),
        };
        let bytes = fs::read(&path).map_err(|e| bad(e.to_string()))?;
        let sig = ReleaseSignature::from_bytes(&bytes, "signature").map_err(|e| bad(reason(e)))?;
        let signer = sig.check(id, "signature").map_err(|e| bad(reason(e)))?;
        if !self.keys.trusted()?.iter().any(|(_, k)| *k == signer) {
            return Err(Error::Untrusted {
                what: format!("{release} (signature {})", path.display()),
                key: signer.to_string(),
            });
        }
        Ok(manifest)
    }

    pub fn signature(&self, id: &Hash) -> Result<ReleaseSignature> {
        let path = self.sig_path(id);
        let bytes = fs::read(&path).at(&path)?;
        ReleaseSignature::from_bytes(&bytes, &format!("signature of release {}", id.short()))
    }

    pub fn meta(&self, id: &Hash) -> Result<ReleaseMeta> {
        let path = self.meta_path(id);
        match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| Error::invalid(path.display().to_string(), e.to_string())),
            Err(_) => {
                // Rebuild what we can from the manifest itself.
                let m = self.manifest(id)?;
                Ok(ReleaseMeta {
                    release: *id,
                    app: m.app.clone(),
                    version: m.version.clone(),
                    stored_at: 0,
                    signer: String::new(),
                    files: m.file_count(),
                    bytes: m.bytes(),
                    depends: m.depends.clone(),
                })
            }
        }
    }

    pub fn release_ids(&self) -> Result<Vec<Hash>> {
        let dir = self.dir.join("objects/manifests");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).at(&dir)? {
            let e = e.at(&dir)?;
            if let Some(h) = e.file_name().to_str().and_then(|n| n.parse().ok()) {
                out.push(h);
            }
        }
        Ok(out)
    }

    /// Every release, newest first.
    pub fn releases(&self) -> Result<Vec<ReleaseMeta>> {
        let mut out = Vec::new();
        for id in self.release_ids()? {
            out.push(self.meta(&id)?);
        }
        out.sort_by(|a, b| {
            b.stored_at
                .cmp(&a.stored_at)
                .then_with(|| a.app.cmp(&b.app))
                .then_with(|| b.version.cmp(&a.version))
        });
        Ok(out)
    }

    /// Resolves a release name: a full id, an id prefix (4+ digits), `app@version`, or `app`
    /// (its newest release).
    pub fn resolve(&self, query: &str) -> Result<Hash> {
        if let Ok(h) = query.parse::<Hash>() {
            return if self.has_release(&h) {
                Ok(h)
            } else {
                Err(Error::NotFound(query.into()))
            };
        }
        let releases = self.releases()?;
        let matches: Vec<&ReleaseMeta> = if let Some((app, version)) = query.split_once('@') {
            releases
                .iter()
                .filter(|r| r.app == app && r.version == version)
                .collect()
        } else if releases.iter().any(|r| r.app == query) {
            return Ok(releases
                .iter()
                .find(|r| r.app == query)
                .expect("checked above")
                .release);
        } else if query.len() >= 4 && query.bytes().all(|b| b.is_ascii_hexdigit()) {
            releases
                .iter()
                .filter(|r| r.release.to_hex().starts_with(query))
                .collect()
        } else {
            Vec::new()
        };
        match matches.as_slice() {
            [] => Err(Error::NotFound(query.into())),
            [one] => Ok(one.release),
            many => {
                // The same version built twice with different content: newest wins for app@version.
                if query.contains('@') {
                    return Ok(many[0].release);
                }
                Err(Error::Ambiguous {
                    query: query.into(),
                    matches: many.iter().map(|r| r.release.short()).collect(),
                })
            }
        }
    }

    // ---- materialising ------------------------------------------------------

    /// The cache file of a file entry when it is there and stamped (see `stamp`): shared
    /// as it is, without reading it.
    fn stamped_file(&self, hash: &Hash, mode: u32, size: u64) -> Option<PathBuf> {
        let path = self.file_path(hash, mode);
        let m = fs::metadata(&path).ok()?;
        is_stamped(&m, hash, size).then_some(path)
    }

    /// Assembles (once) the verified, read-only cache file for a file entry. Also gives,
    /// when the file still needs its stamp (see `stamp`), what it was when it was checked.
    fn cached_file(
        &self,
        hash: &Hash,
        mode: u32,
        size: u64,
        chunks: &[crate::manifest::ChunkRef],
        cache: Option<&ChunkCache>,
    ) -> Result<(PathBuf, Option<Unstamped>)> {
        let path = self.file_path(hash, mode);
        if let Ok(m) = fs::metadata(&path) {
            // Shared into another tree only when it is what it was: stamped and whole, or
            // re-hashed. A write through any of its links changes its mtime, and a damaged
            // copy is rebuilt.
            let ro = if mode & 0o111 != 0 { 0o555 } else { 0o444 };
            if m.mode() & 0o7777 != ro {
                // Made writable since (the trees linking it with it): read-only again.
                set_mode(&path, ro)?;
            }
            if is_stamped(&m, hash, size) {
                return Ok((path, None));
            }
            if m.len() == size && hash_file(&path).ok() == Some(*hash) {
                let seen = Unstamped::of(&path, &m, *hash);
                return Ok((path, Some(seen)));
            }
            fs::remove_file(&path).at(&path)?;
        }
        let tmp = self.tmp_path("file");
        let result = (|| {
            let mut f = File::create(&tmp).at(&tmp)?;
            let mut hasher = blake3::Hasher::new();
            for c in chunks {
                let data = match cache {
                    Some(cache) => self.read_chunk_cached(&c.0, cache)?,
                    None => Arc::new(self.read_chunk(&c.0)?),
                };
                hasher.update(&data);
                f.write_all(&data).at(&tmp)?;
            }
            if Hash::from(hasher.finalize()) != *hash {
                return Err(Error::Corrupt {
                    kind: "file",
                    id: hash.to_hex(),
                    reason: "its chunks do not add up to its hash".into(),
                });
            }
            // Not fsynced: a cache file is re-hashed before it is shared into a tree, and
            // `materialise` syncs the filesystem once before its tree appears.
            let ro = if mode & 0o111 != 0 { 0o555 } else { 0o444 };
            fs::set_permissions(&tmp, fs::Permissions::from_mode(ro)).at(&tmp)?;
            let m = fs::metadata(&tmp).at(&tmp)?;
            let seen = Unstamped::of(&path, &m, *hash);
            fs::rename(&tmp, &path).at(&path)?;
            Ok(seen)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map(|seen| (path, Some(seen)))
    }

    /// Materialises a release at its stable read-only path (idempotent) and returns it. A
    /// tree already in place is checked first, and rebuilt when it fails: see
    /// `materialise_checked`.
    pub fn materialise(&self, id: &Hash) -> Result<PathBuf> {
        self.materialise_checked(id).map(|m| m.path)
    }

    /// As `materialise`, saying what was wrong with a tree in place: it is checked first
    /// (`check_tree`: every entry there with its type, size, symlink target and no write
    /// bit, no other entry, each file a link to its stamped cache file or re-hashed), and
    /// replaced by one rebuilt from verified chunks when it fails.
    pub fn materialise_checked(&self, id: &Hash) -> Result<Materialised> {
        self.materialise_manifest(id, &self.manifest(id)?)
    }

    /// `materialise_checked` of release `id` whose manifest the caller has read already
    /// (a deploy has, to check its signature): it is not read again.
    pub fn materialise_manifest(&self, id: &Hash, manifest: &Manifest) -> Result<Materialised> {
        let dest = self.tree_path(id);
        let _lock = self.lock_shared()?;
        if fs::symlink_metadata(&dest).is_err() {
            let tree = self.write_new_tree(id, manifest)?;
            return Ok(Materialised {
                path: self.place(tree, false)?,
                rebuilt: Vec::new(),
            });
        }
        let problems = self.check_tree(manifest, &dest, &|_, cache, hash, size| match is_stamped(
            cache, hash, size,
        ) {
            true => Trust::Good,
            false => Trust::Unknown,
        });
        if problems.is_empty() {
            // Left writable by a crash between its rename and its seal?
            if fs::metadata(&dest).at(&dest)?.mode() & 0o777 != 0o555 {
                set_mode(&dest, 0o555)?;
            }
            return Ok(Materialised {
                path: dest,
                rebuilt: problems,
            });
        }
        let tree = self.write_new_tree(id, manifest)?;
        Ok(Materialised {
            path: self.place(tree, true)?,
            rebuilt: problems,
        })
    }

    /// A release's whole tree written in `tmp/` (not durable, not in place).
    fn write_new_tree(&self, id: &Hash, manifest: &Manifest) -> Result<Draft> {
        let mut tree = self.begin_tree(*id, manifest)?;
        self.finish_entries(&mut tree, manifest, None)?;
        crate::failpoint::hit("materialise.tree_written");
        Ok(tree)
    }

    /// Writes a release's files into `dest` (which must not exist). Files are hard links to
    /// the verified cache where possible, copies otherwise. A checkout that fails removes
    /// the directory it made (and never one that was there before).
    pub fn checkout(&self, id: &Hash, dest: &Path) -> Result<()> {
        let manifest = self.manifest(id)?;
        let exists = || {
            Error::invalid_hinted(
                dest.display().to_string(),
                "already exists",
                "checkout writes a new directory: give a path that does not exist yet",
            )
        };
        if fs::symlink_metadata(dest).is_ok() {
            return Err(exists());
        }
        match fs::create_dir(dest) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(exists()),
            Err(e) => return Err(e).at(dest),
        }
        // Ours from here on.
        let written = self.write_tree(&manifest, dest).and_then(|unstamped| {
            // Durable when it returns, as it was with an fsync per file.
            self.make_durable(dest, &unstamped)
        });
        if written.is_err() {
            remove_tree(dest);
        }
        written
    }

    /// Makes a written tree durable, and the cache files it made or re-checked too (they
    /// live in the store, which may be another filesystem); only then are those stamped.
    fn make_durable(&self, tree: &Path, unstamped: &[Unstamped]) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        syncfs(tree)?;
        if !unstamped.is_empty() {
            let dev = |p: &Path| fs::metadata(p).map(|m| m.dev()).ok();
            if dev(tree) != dev(&self.dir) {
                self.sync()?;
            }
            stamp(unstamped);
        }
        Ok(())
    }

    /// Writes the (read-only) tree into `dest`, an empty directory; returns the cache files
    /// it made or re-checked, which get their stamp once the caller has made them durable.
    fn write_tree(&self, manifest: &Manifest, dest: &Path) -> Result<Vec<Unstamped>> {
        tree_dirs(manifest, dest)?;
        let unstamped = self.tree_entries(manifest, dest, &|_| true, CORES, None)?;
        seal_dirs(manifest, dest)?;
        set_mode(dest, 0o555)?;
        Ok(unstamped)
    }

    /// Writes the entries of a tree (not its directories, already made) that `which` picks:
    /// the cache files first, on up to `threads` threads (reading, decompressing and hashing
    /// chunks, re-checking cache files already there); then the files as links to them.
    fn tree_entries(
        &self,
        manifest: &Manifest,
        dest: &Path,
        which: &(dyn Fn(usize) -> bool + Sync),
        threads: usize,
        cache: Option<&ChunkCache>,
    ) -> Result<Vec<Unstamped>> {
        let mut seen = HashSet::new();
        let mut files: Vec<(&Hash, u32, u64, &[crate::manifest::ChunkRef])> = manifest
            .entries
            .iter()
            .enumerate()
            .filter(|(i, _)| which(*i))
            .filter_map(|(_, e)| match e {
                Entry::File {
                    mode,
                    hash,
                    size,
                    chunks,
                    ..
                } if seen.insert((*hash, *mode)) => Some((hash, *mode, *size, chunks.as_slice())),
                _ => None,
            })
            .collect();
        // Biggest first, so no core is left with a big file at the end.
        files.sort_by_key(|f| std::cmp::Reverse(f.2));
        let cached = crate::par::map_on(threads, &files, |(hash, mode, size, chunks)| {
            self.cached_file(hash, *mode, *size, chunks, cache)
        });
        let mut cache: HashMap<(Hash, u32), PathBuf> = HashMap::with_capacity(files.len());
        let mut unstamped = Vec::new();
        for ((hash, mode, _, _), r) in files.iter().zip(cached) {
            let (path, seen) = r?;
            unstamped.extend(seen);
            cache.insert((**hash, *mode), path);
        }
        let others: Vec<&Entry> = manifest
            .entries
            .iter()
            .enumerate()
            .filter(|(i, e)| !matches!(e, Entry::Dir { .. }) && which(*i))
            .map(|(_, e)| e)
            .collect();
        // In slices, so each thread takes a run of entries (they share directories).
        let slices: Vec<&[&Entry]> = others.chunks(64).collect();
        let written = crate::par::map_on(threads, &slices, |slice| -> Result<()> {
            for entry in slice.iter() {
                let cached = match entry {
                    Entry::File { mode, hash, .. } => Some(cache[&(*hash, *mode)].as_path()),
                    _ => None,
                };
                place_entry(dest, entry, cached)?;
            }
            Ok(())
        });
        for r in written {
            r?;
        }
        Ok(unstamped)
    }

    /// Starts the tree of release `id` (`manifest`) while its missing chunks are still
    /// arriving (the release is not committed yet): its directories, symlinks and the files whose chunks are all
    /// here (`present`) and whose cache file is stamped, in order, on one thread, so the
    /// transfer keeps the other cores. Each step is a link: a cache file to assemble or
    /// re-check is left to `complete_tree`, which does the rest on every core, as is
    /// everything once `stop` is set (the chunks are in). `None` when the tree is there
    /// already. `place_tree` puts it in place.
    pub fn draft_tree(
        &self,
        id: &Hash,
        manifest: &Manifest,
        present: &(dyn Fn(&Hash) -> bool + Sync),
        stop: &std::sync::atomic::AtomicBool,
    ) -> Result<Option<Draft>> {
        if self.tree_path(id).exists() {
            return Ok(None);
        }
        let mut draft = self.begin_tree(*id, manifest)?;
        for (i, entry) in manifest.entries.iter().enumerate() {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let file = match entry {
                Entry::Dir { .. } => continue,
                Entry::Symlink { .. } => None,
                Entry::File {
                    mode,
                    hash,
                    size,
                    chunks,
                    ..
                } => {
                    if !chunks.iter().all(|c| present(&c.0)) {
                        continue;
                    }
                    match self.stamped_file(hash, *mode, *size) {
                        Some(path) => Some(path),
                        None => continue,
                    }
                }
            };
            place_entry(&draft.tmp, entry, file.as_deref())?;
            draft.done[i] = true;
        }
        Ok(Some(draft))
    }

    /// A tree begun in `tmp/`: its directories (removed again when it is dropped before
    /// `place_tree`).
    fn begin_tree(&self, id: Hash, manifest: &Manifest) -> Result<Draft> {
        let draft = Draft {
            id,
            tmp: self.tmp_path("tree"),
            unstamped: Vec::new(),
            done: manifest
                .entries
                .iter()
                .map(|e| matches!(e, Entry::Dir { .. }))
                .collect(),
        };
        fs::create_dir(&draft.tmp).at(&draft.tmp)?;
        tree_dirs(manifest, &draft.tmp)?;
        Ok(draft)
    }

    /// Completes a drafted tree: the entries the draft did not write, now that every chunk
    /// is stored (read through `cache`: the transfer's, with what it just decoded and the
    /// bases it read), on every core. Not durable yet, nor in place: see `place_tree`.
    pub fn complete_tree(
        &self,
        draft: &mut Draft,
        manifest: &Manifest,
        cache: &ChunkCache,
    ) -> Result<()> {
        self.finish_entries(draft, manifest, Some(cache))
    }

    /// The entries of a begun tree not written yet, then its directories sealed (all but its
    /// top one, sealed once it is in place: see `place`).
    fn finish_entries(
        &self,
        draft: &mut Draft,
        manifest: &Manifest,
        cache: Option<&ChunkCache>,
    ) -> Result<()> {
        if draft.done.len() != manifest.entries.len() {
            return Err(Error::invalid(
                format!("release {}", draft.id.short()),
                "completing a tree with another release's manifest",
            ));
        }
        let done = &draft.done;
        let rest = self.tree_entries(manifest, &draft.tmp, &|i| !done[i], CORES, cache)?;
        draft.unstamped.extend(rest);
        seal_dirs(manifest, &draft.tmp)
    }

    /// Makes a completed tree durable and puts it in place: it appears only once its files
    /// are durable. Its release must be committed.
    pub fn place_tree(&self, draft: Draft) -> Result<PathBuf> {
        self.place(draft, false)
    }

    /// As `place_tree`; with `replace`, the (damaged) tree in place is swapped for the draft
    /// in one rename and removed with the draft's directory.
    fn place(&self, draft: Draft, replace: bool) -> Result<PathBuf> {
        let dest = self.tree_path(&draft.id);
        if !self.has_release(&draft.id) {
            return Err(Error::NotFound(draft.id.to_hex()));
        }
        self.make_durable(&draft.tmp, &draft.unstamped)?;
        crate::failpoint::hit("materialise.before_rename");
        // A directory moved to another parent must be writable (its `..` changes) for a
        // user without CAP_DAC_OVERRIDE: the top directories are sealed after the rename.
        if replace {
            if fs::symlink_metadata(&dest).is_ok_and(|m| m.is_dir()) {
                set_mode(&dest, 0o755)?;
            }
            rustix::fs::renameat_with(
                rustix::fs::CWD,
                &draft.tmp,
                rustix::fs::CWD,
                &dest,
                rustix::fs::RenameFlags::EXCHANGE,
            )
            .map_err(std::io::Error::from)
            .at(&dest)?;
        } else {
            fs::rename(&draft.tmp, &dest)
                // Someone else put it in place first: theirs is as good as ours.
                .or_else(|e| if dest.exists() { Ok(()) } else { Err(e) })
                .at(&dest)?;
        }
        set_mode(&dest, 0o555)?;
        crate::failpoint::hit("materialise.after_rename");
        // What is left under the draft's name (a replaced tree) goes with it.
        drop(draft);
        Ok(dest)
    }

    // ---- verify ---------------------------------------------------------------

    /// Re-hashes objects; returns every problem found. `only` limits it to one release.
    pub fn verify(&self, only: Option<&Hash>) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        // One release is checked with everything it runs with.
        let ids = match only {
            Some(id) => {
                let mut ids = self.closure(id).unwrap_or_default();
                ids.push(*id);
                ids
            }
            None => self.release_ids()?,
        };
        let mut trees: Vec<(Hash, Manifest)> = Vec::new();
        let mut chunks_needed: HashMap<Hash, Hash> = HashMap::new();
        let mut files_needed: HashMap<PathBuf, (Hash, Hash)> = HashMap::new();
        // Each distinct file content (hash and chunks), with a release and path that have it.
        let mut contents: HashMap<(Hash, Vec<crate::manifest::ChunkRef>), (Hash, String)> =
            HashMap::new();
        for id in &ids {
            report.releases += 1;
            let manifest = match self.manifest(id) {
                Ok(m) => m,
                Err(e) => {
                    report
                        .problems
                        .push(Problem::new(&format!("manifest {id}"), e.to_string()));
                    continue;
                }
            };
            for (name, dep) in &manifest.depends {
                if !self.has_release(dep) {
                    report.problems.push(Problem::new(
                        &format!("release {id}"),
                        format!("its dependency `{name}` ({dep}) is not in the store"),
                    ));
                }
            }
            match self.signature(id).and_then(|s| s.check(id, "signature")) {
                Ok(_) => {}
                Err(e) => report
                    .problems
                    .push(Problem::new(&format!("signature {id}"), e.to_string())),
            }
            for (path, mode, _, hash, chunks) in manifest.files() {
                for c in chunks {
                    chunks_needed.entry(c.0).or_insert(*id);
                }
                files_needed.insert(self.file_path(hash, mode), (*hash, *id));
                contents
                    .entry((*hash, chunks.to_vec()))
                    .or_insert_with(|| (*id, path.to_string()));
            }
            if fs::symlink_metadata(self.tree_path(id)).is_ok() {
                trees.push((*id, manifest));
            }
        }

        // Files of several chunks are read in order and hashed whole; the chunks read so
        // (and found good) are not read again below, where the rest are.
        let contents: Vec<_> = contents.into_iter().collect();
        let (several, single): (Vec<_>, Vec<_>) = contents
            .into_iter()
            .partition(|((_, chunks), _)| chunks.len() > 1);
        let read_lens: std::sync::Mutex<HashMap<Hash, u32>> = Default::default();
        let read = |h: &Hash| {
            let data = self.read_chunk(h)?;
            read_lens
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(*h, data.len() as u32);
            Ok(data)
        };
        let mut content_problems: Vec<Problem> =
            crate::par::map(&several, |f| content_problem(f, &|_| None, &read))
                .into_iter()
                .flatten()
                .collect();
        let mut lens = read_lens.into_inner().unwrap_or_else(|e| e.into_inner());

        let all_chunks: Vec<Hash> = if only.is_some() {
            chunks_needed.keys().copied().collect()
        } else {
            self.all_chunks()?
        };
        report.chunks = all_chunks.len();
        let unread: Vec<Hash> = all_chunks
            .iter()
            .filter(|h| !lens.contains_key(h))
            .copied()
            .collect();
        let chunk_results = crate::par::map(&unread, |h| match self.read_chunk(h) {
            Ok(data) => Ok(data.len() as u32),
            Err(e) => {
                // A packed chunk is named with its pack: the file to look at.
                let name = match self.packs.locate(h) {
                    Some(loc) => format!("chunk {h} in pack {}", loc.pack()),
                    None => format!("chunk {h}"),
                };
                Err(Problem::new(&name, e.to_string()))
            }
        });
        let mut damaged = false;
        for (h, r) in unread.iter().zip(chunk_results) {
            match r {
                Ok(n) => {
                    lens.insert(*h, n);
                }
                Err(p) => {
                    damaged = true;
                    report.problems.push(p);
                }
            }
        }
        // Files of one chunk: their hash is the chunk's, their length as just read.
        let read = |h: &Hash| self.read_chunk(h);
        content_problems.extend(
            single
                .iter()
                .filter_map(|f| content_problem(f, &|h| lens.get(h).copied(), &read)),
        );
        report.problems.extend(content_problems);
        if damaged {
            // A build takes an unchanged file's chunks on trust from its directory's last
            // build: with those records gone, the next build reads every file again and
            // replaces a damaged chunk it finds.
            self.forget_builds();
        }
        for (name, why) in self.packs.bad() {
            report.problems.push(Problem::new(
                &format!("pack {}", self.packs.path(&name).display()),
                why,
            ));
        }
        if only.is_none() {
            let present: HashSet<Hash> = all_chunks.iter().copied().collect();
            for (h, rel) in &chunks_needed {
                if !present.contains(h) {
                    report.problems.push(Problem::new(
                        &format!("chunk {h}"),
                        format!("missing (needed by release {})", rel.short()),
                    ));
                }
            }
        }

        let files: Vec<(PathBuf, Hash)> = if only.is_some() {
            files_needed
                .iter()
                .filter(|(p, _)| p.exists())
                .map(|(p, (h, _))| (p.clone(), *h))
                .collect()
        } else {
            self.cache_files()?
        };
        report.files = files.len();
        let file_problems = crate::par::map(&files, |(path, h)| match hash_file(path) {
            Ok(actual) if actual == *h => None,
            Ok(actual) => {
                // No longer trusted without a re-hash: the next materialise rebuilds it.
                if let Ok(f) = File::open(path) {
                    let _ = f
                        .set_times(fs::FileTimes::new().set_modified(std::time::SystemTime::now()));
                }
                Some(Problem::new(
                    &format!("file {}", path.display()),
                    format!("content hashes to {}, not {}", actual.short(), h.short()),
                ))
            }
            Err(e) => Some(Problem::new(
                &format!("file {}", path.display()),
                e.to_string(),
            )),
        });
        let mut bad_files = HashSet::new();
        for ((path, _), problem) in files.iter().zip(file_problems) {
            if let Some(p) = problem {
                bad_files.insert(path.clone());
                report.problems.push(p);
            }
        }
        let good_files: HashSet<&Path> = files
            .iter()
            .map(|(p, _)| p.as_path())
            .filter(|p| !bad_files.contains(*p))
            .collect();
        // Each tree's files: one that is a link to a cache file just checked is as good as
        // that file (whatever its stamp); any other is re-hashed.
        let trust = |path: &Path, _: &fs::Metadata, _: &Hash, _: u64| {
            if bad_files.contains(path) {
                Trust::Bad
            } else if good_files.contains(path) {
                Trust::Good
            } else {
                Trust::Unknown
            }
        };
        for (id, manifest) in &trees {
            let problems = self.check_tree(manifest, &self.tree_path(id), &trust);
            if !problems.is_empty() {
                report.damaged_trees.push(*id);
                report.problems.extend(problems);
            }
        }
        report.bad_files = bad_files.into_iter().collect();
        report.problems.sort_by(|a, b| a.object.cmp(&b.object));
        Ok(report)
    }

    /// Rebuilds from verified chunks what `verify` found damaged (`report`): each bad cache
    /// file is removed (made again when a tree next needs it), then each damaged tree (a
    /// tree with a link to a bad cache file is one) is rebuilt and swapped in by one
    /// exchanging rename, as `materialise_checked` does.
    pub fn repair(&self, report: &VerifyReport) -> Result<Repaired> {
        let _lock = self.lock_shared()?;
        let mut repaired = Repaired::default();
        for path in &report.bad_files {
            match fs::remove_file(path) {
                Ok(()) => repaired.files += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => repaired.failed.push(Problem::new(
                    &format!("file {}", path.display()),
                    format!("cannot remove it: {e}"),
                )),
            }
        }
        for id in &report.damaged_trees {
            let rebuilt = self.manifest(id).and_then(|manifest| {
                let tree = self.write_new_tree(id, &manifest)?;
                self.place(tree, true)?;
                Ok(format!(
                    "release {}@{} ({})",
                    manifest.app,
                    manifest.version,
                    id.short()
                ))
            });
            match rebuilt {
                Ok(release) => repaired.trees.push(release),
                Err(e) => repaired.failed.push(Problem::new(
                    &format!("tree {}", self.tree_path(id).display()),
                    format!("cannot rebuild it: {e}"),
                )),
            }
        }
        Ok(repaired)
    }

    /// Removes every directory's build record (see `build::Seen`); best effort.
    fn forget_builds(&self) {
        let dir = self.dir.join("builds");
        if let Ok(rd) = fs::read_dir(&dir) {
            for e in rd.flatten() {
                let _ = fs::remove_file(e.path());
            }
        }
    }

    /// Checks a materialised tree against its manifest: every entry is there with its type,
    /// size and symlink target and no write bit, and nothing else is. A file that is a link
    /// to its cache file is as good as `trust` says that file is (a materialise trusts its
    /// stamp; `verify`, its own re-hash); any other file is re-hashed. Nothing is looked up
    /// below a directory that is not one in the tree: a symlink there is never followed.
    /// Each problem names the release and the entry's path in it.
    fn check_tree(&self, manifest: &Manifest, tree: &Path, trust: &TrustCache<'_>) -> Vec<Problem> {
        let release = format!("release {}@{}", manifest.app, manifest.version);
        let name = |p: &str| format!("{release} `{p}` in tree {}/{p}", tree.display());
        if !fs::symlink_metadata(tree).is_ok_and(|m| m.is_dir()) {
            return vec![Problem::new(
                &format!("{release} tree {}", tree.display()),
                "is not a directory".into(),
            )];
        }
        let mut problems = Vec::new();
        // The release's directories, parents first; those that are whole directories in
        // the tree, with the root ("").
        let mut dirs: HashSet<&str> = HashSet::from([""]);
        for entry in &manifest.entries {
            if let Entry::Dir { path, .. } = entry
                && dirs.contains(parent_dir(path))
            {
                match self.check_entry(tree, entry, trust) {
                    Some(why) => problems.push(Problem::new(&name(path), why)),
                    None => {
                        dirs.insert(path);
                    }
                }
            }
        }
        let others: Vec<&Entry> = manifest
            .entries
            .iter()
            .filter(|e| !matches!(e, Entry::Dir { .. }) && dirs.contains(parent_dir(e.path())))
            .collect();
        // In slices, so each thread takes a run of entries (they share directories).
        let slices: Vec<&[&Entry]> = others.chunks(256).collect();
        let found = crate::par::map(&slices, |slice| {
            slice
                .iter()
                .filter_map(|e| self.check_entry(tree, e, trust).map(|why| (e.path(), why)))
                .collect::<Vec<_>>()
        });
        problems.extend(
            found
                .into_iter()
                .flatten()
                .map(|(path, why)| Problem::new(&name(path), why)),
        );
        let known: HashSet<&str> = manifest.entries.iter().map(|e| e.path()).collect();
        for dir in &dirs {
            let path = tree.join(dir);
            for e in fs::read_dir(&path).into_iter().flatten().flatten() {
                let file_name = e.file_name();
                let file_name = file_name.to_string_lossy();
                let rel = match *dir {
                    "" => file_name.into_owned(),
                    _ => format!("{dir}/{file_name}"),
                };
                if !known.contains(rel.as_str()) {
                    problems.push(Problem::new(&name(&rel), "not in the release".into()));
                }
            }
        }
        problems
    }

    /// What is wrong with one entry of a tree (see `check_tree`), if anything.
    fn check_entry(&self, tree: &Path, entry: &Entry, trust: &TrustCache<'_>) -> Option<String> {
        let path = tree.join(entry.path());
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Some("missing".into()),
            Err(e) => return Some(e.to_string()),
        };
        let writable = || (meta.mode() & 0o222 != 0).then(|| "writable".to_string());
        match entry {
            Entry::Dir { .. } if !meta.is_dir() => Some("is not a directory".into()),
            Entry::Dir { .. } => writable(),
            Entry::Symlink { .. } if !meta.file_type().is_symlink() => {
                Some("is not a symlink".into())
            }
            Entry::Symlink { target, .. } => (fs::read_link(&path).ok().as_deref()
                != Some(Path::new(target)))
            .then(|| "symlink target changed".into()),
            Entry::File { .. } if !meta.is_file() => Some("is not a file".into()),
            Entry::File { size, .. } if meta.len() != *size => Some(format!(
                "content changed ({} bytes, not {size})",
                meta.len()
            )),
            Entry::File {
                mode, hash, size, ..
            } => {
                let cache = self.file_path(hash, *mode);
                let trusted = fs::metadata(&cache)
                    .ok()
                    .filter(|c| c.ino() == meta.ino() && c.dev() == meta.dev())
                    .map_or(Trust::Unknown, |c| trust(&cache, &c, hash, *size));
                let good = match trusted {
                    Trust::Good => true,
                    Trust::Bad => false,
                    Trust::Unknown => hash_file(&path).ok() == Some(*hash),
                };
                match good {
                    false if trusted == Trust::Bad => Some(format!(
                        "content changed (as in its cache file {}, the same file)",
                        cache.display()
                    )),
                    false => Some("content changed".into()),
                    true => writable(),
                }
            }
        }
    }

    /// Every stored chunk, loose or packed, once.
    fn all_chunks(&self) -> Result<Vec<Hash>> {
        let mut all: HashSet<Hash> = self.chunks_sweeping(false)?.into_iter().collect();
        all.extend(self.packs.all()?.into_iter().map(|(h, _)| h));
        Ok(all.into_iter().collect())
    }

    fn chunks_sweeping(&self, sweep_staged: bool) -> Result<Vec<Hash>> {
        let dir = self.dir.join("objects/chunks");
        let mut out = Vec::new();
        for sub in fs::read_dir(&dir).at(&dir)? {
            let sub = sub.at(&dir)?.path();
            for e in fs::read_dir(&sub).at(&sub)? {
                let e = e.at(&sub)?;
                if let Some(h) = e.file_name().to_str().and_then(|n| n.parse().ok()) {
                    out.push(h);
                } else if sweep_staged && e.file_name().to_string_lossy().starts_with(".tmp-") {
                    // Left by a crashed writer (gc holds the exclusive lock: no live ones).
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        Ok(out)
    }

    fn cache_files(&self) -> Result<Vec<(PathBuf, Hash)>> {
        let dir = self.dir.join("files");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).at(&dir)? {
            let path = e.at(&dir)?.path();
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
            if let Ok(h) = stem.parse() {
                out.push((path, h));
            }
        }
        Ok(out)
    }

    // ---- gc ---------------------------------------------------------------------

    /// Removes every release that is neither among the newest `keep` of its app nor in
    /// `roots`, then every chunk, cache file and tree no kept release needs.
    /// The releases `gc(keep, roots)` would remove, newest first (nothing is removed).
    pub fn gc_would_remove(&self, keep: usize, roots: &HashSet<Hash>) -> Result<Vec<ReleaseMeta>> {
        let _lock = self.lock_shared()?;
        let (keeping, releases) = self.gc_keeping(keep, roots)?;
        Ok(releases
            .into_iter()
            .filter(|r| !keeping.contains(&r.release))
            .collect())
    }

    /// What gc keeps: each app's `keep` newest releases, the `roots`, and everything those
    /// depend on; with every stored release, newest first.
    fn gc_keeping(
        &self,
        keep: usize,
        roots: &HashSet<Hash>,
    ) -> Result<(HashSet<Hash>, Vec<ReleaseMeta>)> {
        let mut per_app: HashMap<String, usize> = HashMap::new();
        let releases = self.releases()?;
        let mut keeping: HashSet<Hash> = HashSet::new();
        for r in &releases {
            let n = per_app.entry(r.app.clone()).or_default();
            *n += 1;
            if *n <= keep || roots.contains(&r.release) {
                keeping.insert(r.release);
            }
        }
        // What a kept release runs with is kept with it, however old.
        for id in keeping.clone() {
            keeping.extend(self.closure(&id)?);
        }
        Ok((keeping, releases))
    }

    pub fn gc(&self, keep: usize, roots: &HashSet<Hash>) -> Result<GcReport> {
        let _lock = self.lock_exclusive()?;
        let mut report = GcReport::default();
        let (keeping, releases) = self.gc_keeping(keep, roots)?;
        let mut kept = Vec::new();
        for r in releases {
            if keeping.contains(&r.release) {
                kept.push(r.release);
            } else {
                // The manifest goes first: once it is gone the release no longer exists.
                let _ = fs::remove_file(self.manifest_path(&r.release));
                let _ = fs::remove_file(self.sig_path(&r.release));
                let _ = fs::remove_file(self.meta_path(&r.release));
                report.releases_removed.push(r);
                crate::failpoint::hit("gc.release_removed");
            }
        }
        let mut live_chunks = HashSet::new();
        let mut live_files = HashSet::new();
        let live_trees: HashSet<String> = kept.iter().map(|h| h.to_hex()).collect();
        for id in &kept {
            let m = self.manifest(id)?;
            for (_, mode, _, hash, chunks) in m.files() {
                live_chunks.extend(chunks.iter().map(|c| c.0));
                live_files.insert(self.file_path(hash, mode));
            }
        }
        for h in self.chunks_sweeping(true)? {
            if !live_chunks.contains(&h) {
                let p = self.chunk_path(&h);
                report.bytes_freed += fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
                fs::remove_file(&p).at(&p)?;
                report.chunks_removed += 1;
            }
        }
        crate::failpoint::hit("gc.before_merge");
        self.gc_packs(&live_chunks, &mut report)?;
        crate::failpoint::hit("gc.after_merge");
        for (p, _) in self.cache_files()? {
            if !live_files.contains(&p) {
                report.bytes_freed += fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
                fs::remove_file(&p).at(&p)?;
                report.files_removed += 1;
            }
        }
        crate::failpoint::hit("gc.files_removed");
        let trees = self.dir.join("trees");
        for e in fs::read_dir(&trees).at(&trees)? {
            let p = e.at(&trees)?.path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if !live_trees.contains(name) {
                // Out of trees/ in one rename, then removed: never half a tree in place. (A
                // directory moved to another parent must be writable.)
                let dead = self.tmp_path("dead-tree");
                set_mode(&p, 0o755)?;
                fs::rename(&p, &dead).at(&p)?;
                crate::failpoint::hit("gc.tree_moved");
                remove_tree(&dead);
            }
        }
        // No writer holds the shared lock now, so anything in tmp/ is left over from a crash.
        let tmp = self.dir.join("tmp");
        for e in fs::read_dir(&tmp).at(&tmp)? {
            remove_tree(&e.at(&tmp)?.path());
        }
        Ok(report)
    }
}

impl Store {
    /// Removes packs with nothing live in them; a pack with some dead objects, or one of
    /// several small ones, has its live objects written into a new pack first (each live
    /// object kept once), then goes.
    fn gc_packs(&self, live: &HashSet<Hash>, report: &mut GcReport) -> Result<()> {
        let contents = self.packs.contents()?;
        // Live objects copied by this gc. (A live object of a dirty pack is copied even when a
        // pack that stays also holds it: that copy was not checked, this one is.)
        let mut kept: HashSet<Hash> = HashSet::new();
        // Packs with no dead object stay as they are, unless they are small and there are
        // several (a transfer leaves packs of a few MiB): those are merged.
        let size = |entries: &[IndexEntry]| entries.iter().map(|e| e.2 as u64).sum::<u64>();
        let small = |entries: &[IndexEntry]| size(entries) < PACK_TARGET / 4;
        let smalls = contents.iter().filter(|(_, e)| small(e)).count();
        let dirty: Vec<_> = contents
            .into_iter()
            .filter(|(_, entries)| {
                !(entries.iter().all(|(h, _, _)| live.contains(h))
                    && !(smalls > 1 && small(entries)))
            })
            .collect();
        if dirty.is_empty() {
            return Ok(());
        }
        let writer = self.pack_writer();
        // Live chunks whose copies so far failed their check, with the packs holding them.
        let mut unresolved: HashMap<Hash, Vec<&str>> = HashMap::new();
        for (name, entries) in &dirty {
            // A transfer's small packs hold the chunks it decoded from deltas, stored
            // uncompressed: those are compressed now (the encoder backs off after
            // incompressible ones, as a build's does).
            let recompress = small(entries);
            let mut enc = chunk::Encoder::default();
            for (h, offset, len) in entries {
                if !live.contains(h) {
                    report.bytes_freed += *len as u64;
                    report.chunks_removed += 1;
                    continue;
                }
                if kept.contains(h) || self.chunk_path(h).exists() {
                    continue;
                }
                let object = self.packs.read_at(name, *offset, *len)?;
                // Only a good copy moves; a damaged one is left where `verify` finds it. A
                // compressed copy moves only when it decodes back to the chunk.
                if let Ok(data) = chunk::decode(&object, h) {
                    let object = match recompress && chunk::is_raw(&object) {
                        true => Some(enc.encode(&data))
                            .filter(|o| !chunk::is_raw(o) && chunk::decode(o, h).is_ok())
                            .unwrap_or(object),
                        false => object,
                    };
                    writer.put(h, &object)?;
                    kept.insert(*h);
                    unresolved.remove(h);
                } else {
                    unresolved.entry(*h).or_default().push(name);
                }
            }
        }
        writer.finish()?;
        // The copies must be durable before the originals go.
        self.sync()?;
        crate::failpoint::hit("gc.merge_synced");
        let stay: HashSet<&str> = unresolved.into_values().flatten().collect();
        for (name, _) in &dirty {
            if stay.contains(name.as_str()) {
                continue;
            }
            let p = self.packs.path(name);
            fs::remove_file(&p).at(&p)?;
        }
        self.packs.rescan()
    }
}

type Content = ((Hash, Vec<crate::manifest::ChunkRef>), (Hash, String));

/// The problem with a file content of `verify`, if its chunks do not make it. A chunk that
/// cannot be read is left to the chunk check, which names it.
fn content_problem(
    ((hash, chunks), (id, path)): &Content,
    len: &dyn Fn(&Hash) -> Option<u32>,
    read: &dyn Fn(&Hash) -> Result<Vec<u8>>,
) -> Option<Problem> {
    match crate::content::check_file(hash, chunks, len, read) {
        Ok(Err(why)) => Some(Problem::new(&format!("release {id} file `{path}`"), why)),
        Ok(Ok(())) | Err(_) => None,
    }
}

#[derive(Debug, Default, Serialize)]
pub struct VerifyReport {
    pub releases: usize,
    pub chunks: usize,
    pub files: usize,
    pub problems: Vec<Problem>,
    /// What `repair` rebuilt before this report was made (set by its caller).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub repaired: Vec<String>,
    /// The releases whose materialised tree differs from their manifest.
    #[serde(skip)]
    pub damaged_trees: Vec<Hash>,
    /// The cache files whose content is not what their name says.
    #[serde(skip)]
    pub bad_files: Vec<PathBuf>,
}

impl VerifyReport {
    /// Whether `Store::repair` has something to rebuild.
    pub fn repairable(&self) -> bool {
        !self.damaged_trees.is_empty() || !self.bad_files.is_empty()
    }
}

/// What `Store::repair` did.
#[derive(Debug, Default)]
pub struct Repaired {
    /// The releases whose tree was rebuilt.
    pub trees: Vec<String>,
    /// Bad cache files removed.
    pub files: usize,
    /// What could not be rebuilt, with why.
    pub failed: Vec<Problem>,
}

/// What a tree check makes of a file that is a link to its cache file (`check_tree`).
#[derive(Clone, Copy, PartialEq)]
enum Trust {
    /// As good as it is named: the file is not read.
    Good,
    /// Known bad: the file is changed.
    Bad,
    /// Not known: the file is re-hashed.
    Unknown,
}

/// How a tree check trusts a cache file: by its path, its metadata, its hash and size.
type TrustCache<'a> = dyn Fn(&Path, &fs::Metadata, &Hash, u64) -> Trust + Sync + 'a;

/// A release's tree, as `materialise_checked` found it.
#[derive(Debug)]
pub struct Materialised {
    pub path: PathBuf,
    /// What was wrong with the tree in place, which was rebuilt (empty: it was whole, or new).
    pub rebuilt: Vec<Problem>,
}

#[derive(Debug, Serialize)]
pub struct Problem {
    pub object: String,
    pub reason: String,
}

impl Problem {
    fn new(object: &str, reason: String) -> Problem {
        Problem {
            object: object.to_string(),
            reason,
        }
    }
}

#[derive(Debug, Default, Serialize)]
pub struct GcReport {
    pub releases_removed: Vec<ReleaseMeta>,
    pub chunks_removed: usize,
    pub files_removed: usize,
    pub bytes_freed: u64,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Whether a cache file carries the stamp of `hash` at its size (see `stamp`).
fn is_stamped(m: &fs::Metadata, hash: &Hash, size: u64) -> bool {
    m.len() == size && m.mtime_nsec() == stamp_nanos(hash)
}

/// The nanoseconds a cache file's mtime is given once it is durable, from its hash. A file
/// that still carries them, at its size, is trusted without re-hashing: writing to it (say,
/// through a link in a release tree) sets its mtime to the time of the write. On a
/// filesystem that keeps no nanoseconds the stamp never matches, and every use re-hashes.
fn stamp_nanos(hash: &Hash) -> i64 {
    i64::from(u32::from_le_bytes(hash.0[..4].try_into().expect("4 bytes")) % 1_000_000_000)
}

/// A cache file checked (made, or re-hashed) by this materialise, as it was then.
struct Unstamped {
    path: PathBuf,
    hash: Hash,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
}

impl Unstamped {
    fn of(path: &Path, m: &fs::Metadata, hash: Hash) -> Unstamped {
        use std::os::unix::fs::MetadataExt;
        Unstamped {
            path: path.to_path_buf(),
            hash,
            ino: m.ino(),
            size: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
        }
    }
}

/// Stamps cache files that are still as they were checked (best effort: an unstamped file
/// is re-hashed at its next use). A file written since keeps its new mtime.
fn stamp(files: &[Unstamped]) {
    use std::os::unix::fs::MetadataExt;
    crate::par::map(files, |u| {
        let Ok(f) = File::open(&u.path) else { return };
        let Ok(m) = f.metadata() else { return };
        if (m.ino(), m.len(), (m.mtime(), m.mtime_nsec())) != (u.ino, u.size, u.mtime) {
            return;
        }
        let at = std::time::UNIX_EPOCH
            + std::time::Duration::new(m.mtime().max(0) as u64, stamp_nanos(&u.hash) as u32);
        let _ = f.set_times(fs::FileTimes::new().set_modified(at));
    });
}

/// Flushes the filesystem that holds `path`.
fn syncfs(path: &Path) -> Result<()> {
    let f = File::open(path).at(path)?;
    rustix::fs::syncfs(&f)
        .map_err(std::io::Error::from)
        .at(path)
}

pub fn hash_file(path: &Path) -> Result<Hash> {
    let mut f = File::open(path).at(path)?;
    let mut hasher = blake3::Hasher::new();
    std::io::copy(&mut f, &mut hasher).at(path)?;
    Ok(hasher.finalize().into())
}

/// Raw chunk data, verified, kept for the rest of one piece of work (a transfer): the same
/// base chunk serves many deltas, and a received release's tree needs the chunks just
/// decoded. Up to 64 MiB; beyond that, chunks are read each time.
pub struct ChunkCache {
    map: std::sync::Mutex<HashMap<Hash, Arc<Vec<u8>>>>,
    budget: Budget,
}

impl Default for ChunkCache {
    fn default() -> ChunkCache {
        ChunkCache {
            map: Default::default(),
            budget: Budget::new(64 << 20),
        }
    }
}

/// Bytes a cache may still keep.
pub(crate) struct Budget {
    used: AtomicU64,
    limit: u64,
}

impl Budget {
    pub(crate) fn new(limit: u64) -> Budget {
        Budget {
            used: AtomicU64::new(0),
            limit,
        }
    }

    /// Takes `n` bytes of it; false (and nothing taken) when they would exceed it.
    pub(crate) fn take(&self, n: u64) -> bool {
        if self.used.fetch_add(n, Ordering::Relaxed) + n > self.limit {
            self.used.fetch_sub(n, Ordering::Relaxed);
            return false;
        }
        true
    }

    pub(crate) fn give_back(&self, n: u64) {
        self.used.fetch_sub(n, Ordering::Relaxed);
    }
}

impl ChunkCache {
    fn get(&self, h: &Hash) -> Option<Arc<Vec<u8>>> {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(h)
            .cloned()
    }

    /// Keeps `data`, which must be chunk `h`'s verified raw content.
    pub fn keep(&self, h: &Hash, data: &Arc<Vec<u8>>) {
        let size = data.len() as u64;
        if !self.budget.take(size) {
            return;
        }
        let old = self
            .map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(*h, data.clone());
        if old.is_some() {
            self.budget.give_back(size);
        }
    }
}

/// As many threads as there are cores (see `par::map_on`).
const CORES: usize = usize::MAX;

/// A release tree begun in `tmp/` (by `materialise` or `draft_tree`); removed unless
/// `place_tree` put it in place.
pub struct Draft {
    id: Hash,
    tmp: PathBuf,
    unstamped: Vec<Unstamped>,
    /// The manifest's entries written so far, by index.
    done: Vec<bool>,
}

#[cfg(test)]
impl Draft {
    /// How many of the manifest's entries it has written (directories included).
    pub(crate) fn written(&self) -> usize {
        self.done.iter().filter(|d| **d).count()
    }
}

impl Drop for Draft {
    fn drop(&mut self) {
        if self.tmp.exists() {
            remove_tree(&self.tmp);
        }
    }
}

/// Writes one entry of a tree whose directories exist: a symlink, or a file as a hard link
/// to its cache file `cached` (a copy where the filesystem refuses the link).
fn place_entry(dest: &Path, entry: &Entry, cached: Option<&Path>) -> Result<()> {
    let path = dest.join(entry.path());
    match (entry, cached) {
        (Entry::Symlink { target, .. }, _) => std::os::unix::fs::symlink(target, &path).at(&path),
        (Entry::File { .. }, Some(cached)) => match fs::hard_link(cached, &path) {
            Ok(()) => Ok(()),
            // Never through an existing name: that would write into the shared cache file.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(e).at(&path),
            Err(_) => fs::copy(cached, &path).map(|_| ()).at(&path),
        },
        (Entry::File { .. }, None) => Err(Error::invalid(
            path.display().to_string(),
            "no cache file to link this file to",
        )),
        (Entry::Dir { .. }, _) => Ok(()),
    }
}

/// The directory of a release path (`""`: the release root).
fn parent_dir(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(dir, _)| dir)
}

/// Makes a tree's directories in its root `dest`.
fn tree_dirs(manifest: &Manifest, dest: &Path) -> Result<()> {
    for entry in &manifest.entries {
        if let Entry::Dir { .. } = entry {
            let path = dest.join(entry.path());
            fs::create_dir(&path).at(&path)?;
        }
    }
    Ok(())
}

/// Makes a written tree's directories read-only, deepest first (not its root `dest`).
fn seal_dirs(manifest: &Manifest, dest: &Path) -> Result<()> {
    let dirs = manifest
        .entries
        .iter()
        .filter(|e| matches!(e, Entry::Dir { .. }))
        .map(|e| dest.join(e.path()))
        .collect::<Vec<_>>();
    for d in dirs.iter().rev() {
        set_mode(d, 0o555)?;
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).at(path)
}

/// Removes a tree even where it was made read-only.
pub fn remove_tree(path: &Path) {
    if let Ok(meta) = fs::symlink_metadata(path) {
        if meta.is_dir() {
            let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o755));
            if let Ok(rd) = fs::read_dir(path) {
                for e in rd.flatten() {
                    remove_tree(&e.path());
                }
            }
            let _ = fs::remove_dir(path);
        } else {
            let _ = fs::remove_file(path);
        }
    }
}
