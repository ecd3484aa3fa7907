//! One-file release archives for `drover pack` / `drover unpack`.
//!
//! Format: the magic `DRVPACK1`, then records `[tag u8][len u64 LE][payload]`: the manifest,
//! its signature, one record per chunk (32-byte hash + stored object), and an end record
//! holding the chunk count and the BLAKE3 of every byte before it. Unpacking checks all of it
//! in a staging directory and adds nothing to the store unless the whole archive is good.
//! A release that depends on others is packed after them, each as such an archive, in one
//! file: dependencies first, each unpacked (all or nothing) before the next.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{BufRead, Read, Write};
use std::path::PathBuf;

use crate::chunk;
use crate::error::{Error, IoContext, Result};
use crate::hash::Hash;
use crate::keys::ReleaseSignature;
use crate::manifest::{MAX_MANIFEST_BYTES, Manifest};
use crate::store::{Store, remove_tree};

pub const MAGIC: &[u8; 8] = b"DRVPACK1";
pub const TAG_END: u8 = 0;
pub const TAG_MANIFEST: u8 = 1;
pub const TAG_SIGNATURE: u8 = 2;
pub const TAG_CHUNK: u8 = 3;

const MAX_SIG_BYTES: u64 = 64 << 10;
const MAX_CHUNK_RECORD: u64 = 32 + 1 + (chunk::MAX_CHUNK as u64) * 2;

/// Writes archive records, hashing everything written (used by `pack`, and by tests that
/// need to craft hostile archives).
pub struct PackWriter<W: Write> {
    out: W,
    hasher: blake3::Hasher,
    chunks: u64,
}

impl<W: Write> PackWriter<W> {
    pub fn new(mut out: W) -> std::io::Result<Self> {
        out.write_all(MAGIC)?;
        let mut hasher = blake3::Hasher::new();
        hasher.update(MAGIC);
        Ok(PackWriter {
            out,
            hasher,
            chunks: 0,
        })
    }

    pub fn record(&mut self, tag: u8, payload: &[u8]) -> std::io::Result<()> {
        let mut head = [0u8; 9];
        head[0] = tag;
        head[1..].copy_from_slice(&(payload.len() as u64).to_le_bytes());
        self.out.write_all(&head)?;
        self.out.write_all(payload)?;
        self.hasher.update(&head);
        self.hasher.update(payload);
        if tag == TAG_CHUNK {
            self.chunks += 1;
        }
        Ok(())
    }

    pub fn chunk(&mut self, h: &Hash, object: &[u8]) -> std::io::Result<()> {
        let mut payload = Vec::with_capacity(32 + object.len());
        payload.extend_from_slice(&h.0);
        payload.extend_from_slice(object);
        self.record(TAG_CHUNK, &payload)
    }

    pub fn finish(mut self) -> std::io::Result<W> {
        let mut payload = Vec::with_capacity(40);
        payload.extend_from_slice(&self.chunks.to_le_bytes());
        payload.extend_from_slice(self.hasher.finalize().as_bytes());
        self.record(TAG_END, &payload)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Writes a release's dependencies (`Store::closure`, each before what depends on it), then
/// the release: each its manifest, signature and every chunk it needs (each verified).
pub fn pack(store: &Store, id: &Hash, mut out: impl Write) -> Result<PackStats> {
    let dependencies = store.closure(id)?;
    let mut chunks = 0;
    let mut chunk_bytes = 0;
    for dep in &dependencies {
        let s = pack_one(store, dep, &mut out)?;
        chunks += s.chunks;
        chunk_bytes += s.chunk_bytes;
    }
    let mut stats = pack_one(store, id, &mut out)?;
    stats.chunks += chunks;
    stats.chunk_bytes += chunk_bytes;
    stats.dependencies = dependencies;
    Ok(stats)
}

fn pack_one(store: &Store, id: &Hash, out: impl Write) -> Result<PackStats> {
    let manifest_bytes = store.manifest_bytes(id)?;
    let manifest = store.manifest(id)?;
    let sig = store.signature(id)?;
    let io = |e| Error::Io {
        path: PathBuf::from("<archive>"),
        err: e,
    };
    let mut w = PackWriter::new(out).map_err(io)?;
    w.record(TAG_MANIFEST, &manifest_bytes).map_err(io)?;
    w.record(TAG_SIGNATURE, &sig.to_bytes()).map_err(io)?;
    let mut chunks: Vec<Hash> = manifest.chunk_set().into_iter().collect();
    chunks.sort();
    let mut bytes = 0;
    for h in &chunks {
        let (object, _) = store.chunk_verified(h)?;
        bytes += object.len() as u64;
        w.chunk(h, &object).map_err(io)?;
    }
    w.finish().map_err(io)?;
    Ok(PackStats {
        release: *id,
        chunks: chunks.len(),
        chunk_bytes: bytes,
        dependencies: Vec::new(),
    })
}

#[derive(Debug, serde::Serialize)]
pub struct PackStats {
    pub release: Hash,
    /// Chunks and their bytes, of the release and its dependencies.
    pub chunks: usize,
    pub chunk_bytes: u64,
    /// The releases packed before it, which it runs with.
    pub dependencies: Vec<Hash>,
}

#[derive(Debug, serde::Serialize)]
pub struct Unpacked {
    pub release: Hash,
    pub app: String,
    pub version: String,
    /// False when the store already had this release.
    pub added: bool,
    pub new_chunks: usize,
    /// Damaged objects of the store (chunks, the manifest or signature) replaced by the
    /// archive's good ones.
    pub repaired: usize,
    /// The releases unpacked before it from the same file, which it runs with.
    pub dependencies: Vec<Unpacked>,
}

/// The largest release `unpack` accepts by default: the sum of its file sizes.
pub const DEFAULT_MAX_SIZE: u64 = 16 << 30;

/// Options for `unpack`.
#[derive(Debug, Clone, Copy)]
pub struct UnpackOptions {
    /// Accept a release whose signer is not trusted (the signature must still be valid).
    pub allow_untrusted: bool,
    /// Refuse a release whose files add up to more bytes than this.
    pub max_size: u64,
}

impl Default for UnpackOptions {
    fn default() -> UnpackOptions {
        UnpackOptions {
            allow_untrusted: false,
            max_size: DEFAULT_MAX_SIZE,
        }
    }
}

/// Reads an archive, checks everything, then adds it to the store; on any error the store
/// is left exactly as it was. `what` names the archive in errors. Where the store already
/// holds the release, a damaged object of it is replaced by the archive's.
pub fn unpack(
    store: &Store,
    input: impl Read,
    what: &str,
    opts: UnpackOptions,
) -> Result<Unpacked> {
    let _lock = store.lock_shared()?;
    let mut input = std::io::BufReader::new(input);
    // Every archive in the file is read and checked before any of them is stored.
    let mut checked: Vec<Checked> = Vec::new();
    let result = (|| {
        loop {
            let staging = store.tmp_path("unpack");
            fs::create_dir(&staging).at(&staging)?;
            let c = unpack_staged(store, &mut input, what, opts, &staging);
            match c {
                Ok(c) => checked.push(c),
                Err(e) => {
                    remove_tree(&staging);
                    return Err(e);
                }
            }
            // Another archive follows: this one was a dependency of what comes after.
            let rest = input.fill_buf().at(std::path::Path::new(what))?;
            if rest.is_empty() {
                break;
            }
            let n = rest.len().min(MAGIC.len());
            if rest[..n] != MAGIC[..n] {
                return Err(Error::invalid(what, "trailing data after the end record"));
            }
        }
        // Each release's dependencies come before it in the file, or are here already.
        let mut before: HashSet<Hash> = HashSet::new();
        for c in &checked {
            for (name, dep) in &c.manifest.depends {
                if !before.contains(dep) && !store.has_release(dep) {
                    return Err(Error::invalid_hinted(
                        format!(
                            "{what}: release {}@{} ({})",
                            c.manifest.app,
                            c.manifest.version,
                            c.id.short()
                        ),
                        format!(
                            "its dependency `{name}` ({}) is neither in the archive nor in the store",
                            dep.short()
                        ),
                        "pack the release with this drover (it carries the dependencies), or unpack the dependency first",
                    ));
                }
            }
            before.insert(c.id);
        }
        crate::failpoint::hit("unpack.checked");
        let mut done = Vec::new();
        for c in &checked {
            done.push(commit_checked(store, c, opts)?);
        }
        let mut last = done.pop().expect("at least one archive was read");
        last.dependencies = done;
        Ok(last)
    })();
    for c in &checked {
        remove_tree(&c.staging);
    }
    result
}

/// One archive of a file, read and checked, its new chunks in `staging`.
struct Checked {
    id: Hash,
    manifest: Manifest,
    sig: ReleaseSignature,
    staged: HashSet<Hash>,
    repaired: usize,
    staging: PathBuf,
}

struct Reader<R: Read> {
    input: R,
    hasher: blake3::Hasher,
    what: String,
}

impl<R: Read> Reader<R> {
    fn exact(&mut self, buf: &mut [u8]) -> Result<()> {
        self.input.read_exact(buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                Error::invalid(
                    &self.what,
                    "not a drover archive, or a truncated one (it ends before its end record)",
                )
            } else {
                Error::Io {
                    path: PathBuf::from(&self.what),
                    err: e,
                }
            }
        })?;
        self.hasher.update(buf);
        Ok(())
    }

    /// Reads one record, refusing lengths over `max` for its tag.
    fn record(&mut self) -> Result<(u8, Vec<u8>)> {
        let mut head = [0u8; 9];
        self.exact(&mut head)?;
        let tag = head[0];
        let len = u64::from_le_bytes(head[1..].try_into().expect("8 bytes"));
        let max = match tag {
            TAG_END => 40,
            TAG_MANIFEST => MAX_MANIFEST_BYTES,
            TAG_SIGNATURE => MAX_SIG_BYTES,
            TAG_CHUNK => MAX_CHUNK_RECORD,
            other => {
                return Err(Error::invalid(
                    &self.what,
                    format!("unknown record type {other}"),
                ));
            }
        };
        if len > max {
            return Err(Error::invalid(
                &self.what,
                format!("oversized record: {len} bytes where at most {max} are allowed"),
            ));
        }
        let mut payload = vec![0u8; len as usize];
        self.exact(&mut payload)?;
        Ok((tag, payload))
    }
}

fn unpack_staged(
    store: &Store,
    input: impl Read,
    what: &str,
    opts: UnpackOptions,
    staging: &std::path::Path,
) -> Result<Checked> {
    let mut r = Reader {
        input,
        hasher: blake3::Hasher::new(),
        what: what.to_string(),
    };
    let mut magic = [0u8; 8];
    r.exact(&mut magic).map_err(|e| match e {
        Error::Invalid { .. } => Error::invalid(
            what,
            "not a drover archive (too short: it ends before the DRVPACK1 header)",
        ),
        other => other,
    })?;
    if &magic != MAGIC {
        return Err(Error::invalid(
            what,
            "not a drover archive (it does not start with the DRVPACK1 header)",
        ));
    }
    let (tag, manifest_bytes) = r.record()?;
    if tag != TAG_MANIFEST {
        return Err(Error::invalid(what, "the first record is not a manifest"));
    }
    let id = Hash::of(&manifest_bytes);
    let manifest =
        Manifest::from_bytes(&manifest_bytes, &format!("{what}: release {}", id.short()))?;
    let (tag, sig_bytes) = r.record()?;
    if tag != TAG_SIGNATURE {
        return Err(Error::invalid(what, "the second record is not a signature"));
    }
    let sig = ReleaseSignature::from_bytes(&sig_bytes, what)?;
    let sig_what = format!(
        "{what}: release {} ({}@{})",
        id.short(),
        manifest.app,
        manifest.version
    );
    // The sizes are the manifest's word until the chunks are checked below: a lie there is
    // refused then.
    if manifest.bytes() > opts.max_size {
        return Err(Error::TooLarge {
            what: sig_what,
            file: what.to_string(),
            size: manifest.bytes(),
            limit: opts.max_size,
        });
    }
    if opts.allow_untrusted {
        sig.check(&id, &sig_what)?;
    } else {
        store.keys().check_trusted(&id, &sig, &sig_what)?;
    }

    let needed = manifest.chunk_set();
    let mut staged: HashSet<Hash> = HashSet::new();
    // Every chunk's true length (the archive's copies are decoded as they come).
    let mut lens: HashMap<Hash, u32> = HashMap::new();
    // Chunks the store holds damaged, replaced from the archive.
    let mut repaired = 0;
    let mut count = 0u64;
    loop {
        let before_end = r.hasher.clone();
        let (tag, payload) = r.record()?;
        match tag {
            TAG_CHUNK => {
                count += 1;
                if payload.len() < 33 {
                    return Err(Error::invalid(what, "chunk record too short"));
                }
                let h = Hash(payload[..32].try_into().expect("32 bytes"));
                if !needed.contains(&h) {
                    return Err(Error::invalid(
                        what,
                        format!("chunk {h} is not part of release {}", id.short()),
                    ));
                }
                let object = &payload[32..];
                let data = chunk::decode(object, &h).map_err(|reason| {
                    Error::invalid(what, format!("chunk {h} is corrupt: {reason}"))
                })?;
                if lens.insert(h, data.len() as u32).is_some() {
                    continue;
                }
                // A stored copy is trusted only once it reads back as this chunk.
                let stored = store.has_chunk(&h);
                if !stored || store.read_chunk(&h).is_err() {
                    repaired += usize::from(stored);
                    staged.insert(h);
                    let p = staging.join(h.to_hex());
                    fs::write(&p, object).at(&p)?;
                }
            }
            TAG_END => {
                let n = u64::from_le_bytes(
                    payload
                        .get(..8)
                        .and_then(|n| n.try_into().ok())
                        .ok_or_else(|| Error::invalid(what, "short end record"))?,
                );
                let digest = payload
                    .get(8..40)
                    .ok_or_else(|| Error::invalid(what, "short end record"))?;
                if n != count || digest != before_end.finalize().as_bytes() {
                    return Err(Error::invalid(
                        what,
                        "end record does not match the archive's content",
                    ));
                }
                break;
            }
            _ => {
                return Err(Error::invalid(
                    what,
                    "unexpected record after the signature",
                ));
            }
        }
    }
    // Chunks the archive left out must be in the store, and good.
    for h in &needed {
        if lens.contains_key(h) {
            continue;
        }
        match store.read_chunk(h) {
            Ok(data) => {
                lens.insert(*h, data.len() as u32);
            }
            Err(Error::Missing { .. }) => {
                return Err(Error::invalid(
                    what,
                    format!("chunk {h} is missing from the archive"),
                ));
            }
            Err(e) => {
                return Err(Error::invalid(
                    what,
                    format!(
                        "chunk {h} is missing from the archive, and this store's copy is bad: {e}"
                    ),
                ));
            }
        }
    }
    check_contents(store, &manifest, &lens, &staged, staging)
        .map_err(|m| Error::invalid(&sig_what, m))?;
    Ok(Checked {
        id,
        manifest,
        sig,
        staged,
        repaired,
        staging: staging.to_path_buf(),
    })
}

/// Adds one checked archive's release (and its new or repaired chunks) to the store.
fn commit_checked(store: &Store, c: &Checked, opts: UnpackOptions) -> Result<Unpacked> {
    let Checked {
        id,
        manifest,
        sig,
        staged,
        staging,
        ..
    } = c;
    let (id, staging) = (*id, staging.as_path());
    let mut repaired = c.repaired;
    let had = store.release_intact(&id);
    if had && staged.is_empty() {
        return Ok(Unpacked {
            release: id,
            app: manifest.app.clone(),
            version: manifest.version.clone(),
            added: false,
            new_chunks: 0,
            repaired: 0,
            dependencies: Vec::new(),
        });
    }
    for h in staged {
        store.adopt_chunk_file(h, &staging.join(h.to_hex()))?;
        crate::failpoint::hit("unpack.chunk_adopted");
    }
    crate::failpoint::hit("unpack.adopted");
    let new_chunks = staged.len() - repaired;
    let mut added = false;
    if !had {
        // A damaged manifest or signature is replaced; a missing one is the release added.
        repaired += usize::from(store.has_release(&id));
        added = !store.has_release(&id);
        store.commit_release_with(manifest, sig, opts.allow_untrusted)?;
    } else {
        // Repaired chunks are durable before this returns, as a commit's are.
        store.sync()?;
    }
    Ok(Unpacked {
        release: id,
        app: manifest.app.clone(),
        version: manifest.version.clone(),
        added,
        new_chunks,
        repaired,
        dependencies: Vec::new(),
    })
}

/// Checks that every file of `manifest` is what its chunks make (see `content::check_file`):
/// chunks just staged are read from `staging`, the rest from the store. `lens` holds every
/// chunk's true length.
fn check_contents(
    store: &Store,
    manifest: &Manifest,
    lens: &HashMap<Hash, u32>,
    staged: &HashSet<Hash>,
    staging: &std::path::Path,
) -> std::result::Result<(), String> {
    let read = |h: &Hash| -> Result<Vec<u8>> {
        if staged.contains(h) {
            let p = staging.join(h.to_hex());
            let object = fs::read(&p).at(&p)?;
            chunk::decode(&object, h).map_err(|reason| Error::Corrupt {
                kind: "chunk",
                id: h.to_hex(),
                reason,
            })
        } else {
            store.read_chunk(h)
        }
    };
    let mut seen = HashSet::new();
    let files: Vec<_> = manifest
        .files()
        .filter(|(_, _, _, hash, chunks)| seen.insert((**hash, *chunks)))
        .collect();
    let len = |h: &Hash| lens.get(h).copied();
    let results =
        crate::par::map(
            &files,
            |(path, _, _, hash, chunks)| match crate::content::check_file(hash, chunks, &len, &read)
            {
                Ok(Ok(())) => Ok(()),
                Ok(Err(why)) => Err(format!("file `{path}`: {why}")),
                Err(e) => Err(format!("file `{path}`: {e}")),
            },
        );
    results.into_iter().collect()
}
