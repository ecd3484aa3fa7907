//! Object packs (`objects/packs/*.pack`): many small chunk objects in one file, so a build of
//! thousands of small files creates a few files instead of one inode per chunk.
//!
//! A pack is written once under `tmp/` and renamed in whole; it never changes after that
//! (`gc` writes the live objects of a pack into a new one and removes the old). Layout:
//!
//! ```text
//! "DRVPACK1" | object bytes ... | index: n × (hash 32 B, offset u64, len u32) | index offset u64 | n u64 | "DRVPACK1"
//! ```
//!
//! Every object in a pack is an encoded chunk object, verified against its hash when read,
//! exactly as a loose one is.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use crate::error::{Error, IoContext, Result};
use crate::hash::Hash;

const MAGIC: &[u8; 8] = b"DRVPACK1";
const ENTRY: usize = 32 + 8 + 4;
const TRAILER: usize = 8 + 8 + 8;

/// One object of a pack: its name, where it starts, how long it is.
pub type IndexEntry = (Hash, u64, u32);

/// A pack is sealed once it holds this many bytes.
pub const PACK_TARGET: u64 = 64 << 20;

#[derive(Debug)]
struct PackFile {
    name: String,
    file: File,
}

#[derive(Debug, Clone)]
pub struct Loc {
    pack: Arc<PackFile>,
    offset: u64,
    len: u32,
}

impl Loc {
    pub fn len(&self) -> u64 {
        self.len as u64
    }

    pub fn pack(&self) -> &str {
        &self.pack.name
    }
}

#[derive(Debug, Default)]
struct Loaded {
    scanned: bool,
    packs: HashMap<String, Arc<PackFile>>,
    index: HashMap<Hash, Loc>,
    /// Packs that could not be read, with why (reported by `verify`).
    bad: Vec<(String, String)>,
}

/// The packs of one store, indexed in memory on first use. Open pack files stay readable
/// after `gc` removes them, so a stale index still reads correct data; a miss rescans.
#[derive(Debug)]
pub struct Packs {
    dir: PathBuf,
    loaded: RwLock<Loaded>,
}

impl Packs {
    pub fn new(dir: PathBuf) -> Packs {
        Packs {
            dir,
            loaded: RwLock::new(Loaded::default()),
        }
    }

    fn ensure_scanned(&self) {
        let scanned = self
            .loaded
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .scanned;
        if !scanned {
            let _ = self.rescan();
        }
    }

    /// Reads the pack directory again: indexes new packs, forgets removed ones.
    pub fn rescan(&self) -> Result<()> {
        let mut names = Vec::new();
        for e in fs::read_dir(&self.dir).at(&self.dir)? {
            let e = e.at(&self.dir)?;
            if let Some(n) = e.file_name().to_str()
                && n.ends_with(".pack")
            {
                names.push(n.to_string());
            }
        }
        let mut l = self.loaded.write().unwrap_or_else(|e| e.into_inner());
        l.scanned = true;
        l.bad.retain(|(n, _)| names.contains(n));
        let removed = l.packs.keys().any(|n| !names.contains(n));
        if removed {
            // Rebuilt from the packs that are left (one may hold what a removed one did).
            l.packs.retain(|n, _| names.contains(n));
            let kept: Vec<Arc<PackFile>> = l.packs.values().cloned().collect();
            l.index.clear();
            for pack in kept {
                if let Ok(entries) = index_of(&pack.file) {
                    insert(&mut l.index, &pack, entries);
                }
            }
        }
        for name in names {
            if l.packs.contains_key(&name) || l.bad.iter().any(|(n, _)| *n == name) {
                continue;
            }
            match read_index(&self.dir.join(&name)) {
                Ok((file, entries)) => {
                    let pack = Arc::new(PackFile {
                        name: name.clone(),
                        file,
                    });
                    insert(&mut l.index, &pack, entries);
                    l.packs.insert(name, pack);
                }
                Err(e) => l.bad.push((name, e.to_string())),
            }
        }
        Ok(())
    }

    pub fn locate(&self, h: &Hash) -> Option<Loc> {
        self.ensure_scanned();
        self.loaded
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .index
            .get(h)
            .cloned()
    }

    /// The object's bytes, if a pack holds it (unverified: callers decode it).
    pub fn read(&self, h: &Hash) -> Result<Option<Vec<u8>>> {
        let Some(loc) = self.locate(h) else {
            return Ok(None);
        };
        let mut buf = vec![0u8; loc.len as usize];
        let path = self.dir.join(&loc.pack.name);
        loc.pack
            .file
            .read_exact_at(&mut buf, loc.offset)
            .at(&path)?;
        Ok(Some(buf))
    }

    /// Every packed object, with its pack.
    pub fn all(&self) -> Result<Vec<(Hash, Loc)>> {
        self.rescan()?;
        let l = self.loaded.read().unwrap_or_else(|e| e.into_inner());
        Ok(l.index.iter().map(|(h, loc)| (*h, loc.clone())).collect())
    }

    /// Packs that could not be read, with why.
    pub fn bad(&self) -> Vec<(String, String)> {
        self.ensure_scanned();
        self.loaded
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .bad
            .clone()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Every pack, with the objects it holds.
    pub fn contents(&self) -> Result<Vec<(String, Vec<IndexEntry>)>> {
        self.rescan()?;
        let l = self.loaded.read().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for (name, pack) in &l.packs {
            out.push((name.clone(), index_of(&pack.file).at(&self.dir.join(name))?));
        }
        Ok(out)
    }

    /// Reads one object at a known place in an indexed pack.
    pub fn read_at(&self, name: &str, offset: u64, len: u32) -> Result<Vec<u8>> {
        let pack = {
            let l = self.loaded.read().unwrap_or_else(|e| e.into_inner());
            l.packs.get(name).cloned()
        };
        let Some(pack) = pack else {
            return Err(Error::Missing {
                kind: "pack",
                id: name.to_string(),
            });
        };
        let mut buf = vec![0u8; len as usize];
        pack.file
            .read_exact_at(&mut buf, offset)
            .at(&self.dir.join(name))?;
        Ok(buf)
    }

    fn register(&self, name: &str, path: &Path) -> Result<()> {
        let (file, entries) = read_index(path).at(path)?;
        let pack = Arc::new(PackFile {
            name: name.to_string(),
            file,
        });
        let mut l = self.loaded.write().unwrap_or_else(|e| e.into_inner());
        insert(&mut l.index, &pack, entries);
        l.packs.insert(name.to_string(), pack);
        Ok(())
    }
}

fn insert(index: &mut HashMap<Hash, Loc>, pack: &Arc<PackFile>, entries: Vec<IndexEntry>) {
    for (h, offset, len) in entries {
        index.insert(
            h,
            Loc {
                pack: pack.clone(),
                offset,
                len,
            },
        );
    }
}

fn read_index(path: &Path) -> std::io::Result<(File, Vec<IndexEntry>)> {
    let file = File::open(path)?;
    let entries = index_of(&file)?;
    Ok((file, entries))
}

fn bad_pack(why: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad pack: {why}"))
}

fn index_of(file: &File) -> std::io::Result<Vec<IndexEntry>> {
    let size = file.metadata()?.len();
    if size < (MAGIC.len() + TRAILER) as u64 {
        return Err(bad_pack("too short"));
    }
    let mut trailer = [0u8; TRAILER];
    file.read_exact_at(&mut trailer, size - TRAILER as u64)?;
    let mut head = [0u8; 8];
    file.read_exact_at(&mut head, 0)?;
    if &trailer[16..] != MAGIC || &head != MAGIC {
        return Err(bad_pack("no DRVPACK1 header or trailer"));
    }
    let at = u64::from_le_bytes(trailer[..8].try_into().unwrap_or_default());
    let n = u64::from_le_bytes(trailer[8..16].try_into().unwrap_or_default());
    let index_len = n
        .checked_mul(ENTRY as u64)
        .ok_or_else(|| bad_pack("count"))?;
    if at < MAGIC.len() as u64 || at.checked_add(index_len) != Some(size - TRAILER as u64) {
        return Err(bad_pack("index out of place"));
    }
    let mut index = vec![0u8; index_len as usize];
    file.read_exact_at(&mut index, at)?;
    let mut out = Vec::with_capacity(n as usize);
    for e in index.chunks_exact(ENTRY) {
        let h = Hash(e[..32].try_into().unwrap_or_default());
        let offset = u64::from_le_bytes(e[32..40].try_into().unwrap_or_default());
        let len = u32::from_le_bytes(e[40..44].try_into().unwrap_or_default());
        if offset < MAGIC.len() as u64 || offset + len as u64 > at {
            return Err(bad_pack("object out of bounds"));
        }
        out.push((h, offset, len));
    }
    Ok(out)
}

struct Open {
    file: File,
    path: PathBuf,
    len: u64,
    entries: Vec<IndexEntry>,
}

/// Appends objects to packs; seals a pack when it reaches its target size and the last one on
/// `finish`. Objects are readable (and count as stored) once their pack is sealed. Safe to
/// share between threads.
pub struct PackWriter<'a> {
    packs: &'a Packs,
    tmp: PathBuf,
    target: u64,
    open: Mutex<Option<Open>>,
    flushing: Mutex<Vec<std::thread::JoinHandle<std::io::Result<()>>>>,
}

impl<'a> PackWriter<'a> {
    /// `tmp`: a directory on the same filesystem as the packs.
    pub fn new(packs: &'a Packs, tmp: PathBuf) -> PackWriter<'a> {
        PackWriter {
            packs,
            tmp,
            target: PACK_TARGET,
            open: Mutex::new(None),
            flushing: Mutex::new(Vec::new()),
        }
    }

    /// Seals a pack once it holds `bytes` (instead of `PACK_TARGET`).
    pub fn seal_every(mut self, bytes: u64) -> PackWriter<'a> {
        self.target = bytes;
        self
    }

    pub fn put(&self, h: &Hash, object: &[u8]) -> Result<()> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.is_none() {
            *open = Some(self.start()?);
        }
        let Some(o) = open.as_mut() else {
            return Ok(());
        };
        o.file.write_all(object).at(&o.path)?;
        o.entries.push((*h, o.len, object.len() as u32));
        o.len += object.len() as u64;
        if o.len >= self.target
            && let Some(full) = open.take()
        {
            self.seal(full)?;
        }
        Ok(())
    }

    /// Seals the pack being written, if any.
    pub fn finish(self) -> Result<()> {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(o) = open {
            self.seal(o)?;
        }
        let flushing =
            std::mem::take(&mut *self.flushing.lock().unwrap_or_else(|e| e.into_inner()));
        for t in flushing {
            let _ = t.join();
        }
        Ok(())
    }

    fn start(&self) -> Result<Open> {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = self
            .tmp
            .join(format!("pack-{}-{n}.pack", std::process::id()));
        let mut file = File::create(&path).at(&path)?;
        file.write_all(MAGIC).at(&path)?;
        Ok(Open {
            file,
            path,
            len: MAGIC.len() as u64,
            entries: Vec::new(),
        })
    }

    fn seal(&self, mut o: Open) -> Result<()> {
        let result = (|| {
            let mut index = Vec::with_capacity(o.entries.len() * ENTRY + TRAILER);
            for (h, offset, len) in &o.entries {
                index.extend_from_slice(&h.0);
                index.extend_from_slice(&offset.to_le_bytes());
                index.extend_from_slice(&len.to_le_bytes());
            }
            // Named by its index: the same objects at the same places give the same name.
            let name = format!("{}.pack", Hash::of(&index).to_hex());
            index.extend_from_slice(&o.len.to_le_bytes());
            index.extend_from_slice(&(o.entries.len() as u64).to_le_bytes());
            index.extend_from_slice(MAGIC);
            o.file.write_all(&index).at(&o.path)?;
            let dest = self.packs.path(&name);
            fs::rename(&o.path, &dest).at(&dest)?;
            self.packs.register(&name, &dest)
        })();
        if result.is_ok() {
            // Written back while the build goes on, so the commit's syncfs has less to wait for.
            let file = o.file;
            let t = std::thread::spawn(move || file.sync_data());
            self.flushing
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(t);
            return Ok(());
        }
        if result.is_err() {
            let _ = fs::remove_file(&o.path);
        }
        result
    }
}

impl Drop for PackWriter<'_> {
    fn drop(&mut self) {
        // Not finished (an error stopped the build): its objects were never committed.
        if let Some(o) = self.open.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = fs::remove_file(&o.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_objects_read_back_after_a_rescan_and_a_damaged_pack_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let packs_dir = dir.path().join("packs");
        let tmp = dir.path().join("tmp");
        fs::create_dir_all(&packs_dir).unwrap();
        fs::create_dir_all(&tmp).unwrap();
        let packs = Packs::new(packs_dir.clone());
        let objects: Vec<Vec<u8>> = (0..100u32)
            .map(|i| format!("object {i}").repeat(i as usize + 1).into_bytes())
            .collect();
        let w = PackWriter::new(&packs, tmp.clone());
        for o in &objects {
            w.put(&Hash::of(o), o).unwrap();
        }
        assert!(
            packs.locate(&Hash::of(&objects[0])).is_none(),
            "not sealed yet"
        );
        w.finish().unwrap();
        assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0);

        // Another process's view: a fresh index from the directory.
        let other = Packs::new(packs_dir.clone());
        for o in &objects {
            assert_eq!(other.read(&Hash::of(o)).unwrap().as_deref(), Some(&o[..]));
        }
        assert!(other.read(&Hash::of(b"absent")).unwrap().is_none());
        assert!(other.bad().is_empty());

        // A truncated pack is reported by name, not read.
        let name = fs::read_dir(&packs_dir)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let f = fs::OpenOptions::new().write(true).open(&name).unwrap();
        f.set_len(100).unwrap();
        let third = Packs::new(packs_dir);
        assert!(third.read(&Hash::of(&objects[0])).unwrap().is_none());
        let bad = third.bad();
        assert_eq!(bad.len(), 1);
        assert!(name.to_string_lossy().ends_with(&bad[0].0), "{bad:?}");
    }
}
