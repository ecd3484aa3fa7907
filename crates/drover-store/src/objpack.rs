//! Object packs (`objects/packs/*.pack`): many chunk objects in one file, so a build of
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
//! exactly as a loose one is. Pack names are random (BLAKE3 of the index and a nonce): a
//! new pack never takes the name of an existing one, even with the same objects.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
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

/// Pack files kept open for reading, at most (a store may hold thousands of packs).
const OPEN_FILES: usize = 16;

/// Sealed packs being written back in the background, at most, per writer.
const FLUSHING: usize = 4;

#[derive(Debug, Clone)]
pub struct Loc {
    pack: Arc<str>,
    offset: u64,
    len: u32,
}

impl Loc {
    pub fn len(&self) -> u64 {
        self.len as u64
    }

    pub fn pack(&self) -> &str {
        &self.pack
    }
}

#[derive(Debug, Default)]
struct Loaded {
    scanned: bool,
    /// Indexed packs, by file name.
    packs: HashSet<Arc<str>>,
    index: HashMap<Hash, Loc>,
    /// Packs that are not valid packs, with why (reported by `verify`).
    bad: Vec<(String, String)>,
}

/// The packs of one store, indexed in memory on first use; a miss rescans the directory.
#[derive(Debug)]
pub struct Packs {
    dir: PathBuf,
    loaded: RwLock<Loaded>,
    /// Recently read packs' open files, most recent last.
    files: Mutex<Vec<(Arc<str>, Arc<File>)>>,
}

impl Packs {
    pub fn new(dir: PathBuf) -> Packs {
        Packs {
            dir,
            loaded: RwLock::new(Loaded::default()),
            files: Mutex::new(Vec::new()),
        }
    }

    fn ensure_scanned(&self) -> Result<()> {
        let scanned = self
            .loaded
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .scanned;
        if scanned { Ok(()) } else { self.rescan() }
    }

    /// Reads the pack directory again: indexes new packs, forgets removed ones. A file that
    /// is not a valid pack is listed as bad; any other error (out of file descriptors, an
    /// I/O error) is returned and the pack is tried again next time.
    pub fn rescan(&self) -> Result<()> {
        // Listed under the lock, so a pack sealed meanwhile is not taken for a removed one.
        let mut l = self.loaded.write().unwrap_or_else(|e| e.into_inner());
        let mut names: HashSet<Arc<str>> = HashSet::new();
        for e in fs::read_dir(&self.dir).at(&self.dir)? {
            let e = e.at(&self.dir)?;
            if let Some(n) = e.file_name().to_str()
                && n.ends_with(".pack")
            {
                names.insert(Arc::from(n));
            }
        }
        l.bad.retain(|(n, _)| names.contains(n.as_str()));
        let removed = l.packs.iter().any(|n| !names.contains(n));
        if removed {
            // Rebuilt from the packs that are left (one may hold what a removed one did).
            l.packs.retain(|n| names.contains(n));
            l.index.clear();
            let kept: Vec<Arc<str>> = l.packs.iter().cloned().collect();
            for name in kept {
                match read_index(&self.dir.join(&*name)) {
                    Ok(entries) => insert(&mut l.index, &name, entries),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        l.packs.remove(&name);
                    }
                    Err(e) => {
                        l.packs.remove(&name);
                        return Err(e).at(&self.dir.join(&*name));
                    }
                }
            }
        }
        for name in names {
            if l.packs.contains(&name) || l.bad.iter().any(|(n, _)| **n == *name) {
                continue;
            }
            let path = self.dir.join(&*name);
            match read_index(&path) {
                Ok(entries) => {
                    insert(&mut l.index, &name, entries);
                    l.packs.insert(name);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
                    ) =>
                {
                    l.bad.push((name.to_string(), e.to_string()))
                }
                Err(e) => return Err(e).at(&path),
            }
        }
        l.scanned = true;
        Ok(())
    }

    pub fn locate(&self, h: &Hash) -> Option<Loc> {
        // Unreadable packs count as not holding it: the chunk is stored again, or its read
        // reports the error.
        let _ = self.ensure_scanned();
        self.loaded
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .index
            .get(h)
            .cloned()
    }

    fn open(&self, name: &Arc<str>) -> std::io::Result<Arc<File>> {
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = files.iter().position(|(n, _)| n == name) {
            let hit = files.remove(i);
            let file = hit.1.clone();
            files.push(hit);
            return Ok(file);
        }
        let file = Arc::new(File::open(self.dir.join(&**name))?);
        if files.len() >= OPEN_FILES {
            files.remove(0);
        }
        files.push((name.clone(), file.clone()));
        Ok(file)
    }

    fn forget_file(&self, name: &str) {
        self.files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(n, _)| &**n != name);
    }

    fn read_loc(&self, loc: &Loc) -> std::io::Result<Vec<u8>> {
        let file = self.open(&loc.pack)?;
        let mut buf = vec![0u8; loc.len as usize];
        file.read_exact_at(&mut buf, loc.offset)?;
        Ok(buf)
    }

    /// The object's bytes, if a pack holds it (unverified: callers decode it).
    pub fn read(&self, h: &Hash) -> Result<Option<Vec<u8>>> {
        self.ensure_scanned()?;
        let Some(loc) = self.locate(h) else {
            return Ok(None);
        };
        match self.read_loc(&loc) {
            Ok(buf) => Ok(Some(buf)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Its pack was removed (`gc` rewrote it): look again.
                self.forget_file(&loc.pack);
                self.rescan()?;
                match self.locate(h) {
                    Some(loc) => self.read_loc(&loc).map(Some).at(&self.dir.join(&*loc.pack)),
                    None => Ok(None),
                }
            }
            Err(e) => Err(e).at(&self.dir.join(&*loc.pack)),
        }
    }

    /// Every packed object, with its pack.
    pub fn all(&self) -> Result<Vec<(Hash, Loc)>> {
        self.rescan()?;
        let l = self.loaded.read().unwrap_or_else(|e| e.into_inner());
        Ok(l.index.iter().map(|(h, loc)| (*h, loc.clone())).collect())
    }

    /// Packs that are not valid packs, with why.
    pub fn bad(&self) -> Vec<(String, String)> {
        let _ = self.ensure_scanned();
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
        let names: Vec<Arc<str>> = {
            let l = self.loaded.read().unwrap_or_else(|e| e.into_inner());
            l.packs.iter().cloned().collect()
        };
        let mut out = Vec::new();
        for name in names {
            let path = self.dir.join(&*name);
            out.push((name.to_string(), read_index(&path).at(&path)?));
        }
        Ok(out)
    }

    /// Reads one object at a known place in a pack.
    pub fn read_at(&self, name: &str, offset: u64, len: u32) -> Result<Vec<u8>> {
        let loc = Loc {
            pack: Arc::from(name),
            offset,
            len,
        };
        self.read_loc(&loc).at(&self.dir.join(name))
    }

    /// Indexes a pack this process just sealed (its entries are known: no need to read them).
    fn register(&self, name: &str, entries: Vec<IndexEntry>) {
        let name: Arc<str> = Arc::from(name);
        let mut l = self.loaded.write().unwrap_or_else(|e| e.into_inner());
        insert(&mut l.index, &name, entries);
        l.packs.insert(name);
    }
}

fn insert(index: &mut HashMap<Hash, Loc>, pack: &Arc<str>, entries: Vec<IndexEntry>) {
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

fn read_index(path: &Path) -> std::io::Result<Vec<IndexEntry>> {
    index_of(&File::open(path)?)
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
        if offset < MAGIC.len() as u64 || offset.checked_add(len as u64).is_none_or(|end| end > at)
        {
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

type Flush = std::thread::JoinHandle<std::io::Result<()>>;

/// Appends objects to packs; seals a pack when it reaches its target size and the last ones on
/// `finish`. Objects are readable (and count as stored) once their pack is sealed. Safe to
/// share between threads: each writes into a pack of its own when it can (a slot no other
/// thread holds), so copying into the page cache does not serialise them.
pub struct PackWriter<'a> {
    packs: &'a Packs,
    tmp: PathBuf,
    target: u64,
    open: Vec<Mutex<Option<Open>>>,
    /// Sealed packs being written back to disk while the work goes on.
    flushing: Mutex<Vec<(PathBuf, Flush)>>,
}

impl<'a> PackWriter<'a> {
    /// `tmp`: a directory on the same filesystem as the packs.
    pub fn new(packs: &'a Packs, tmp: PathBuf) -> PackWriter<'a> {
        PackWriter {
            packs,
            tmp,
            target: PACK_TARGET,
            open: (0..crate::par::cores().min(8))
                .map(|_| Mutex::new(None))
                .collect(),
            flushing: Mutex::new(Vec::new()),
        }
    }

    /// Seals a pack once it holds `bytes` (instead of `PACK_TARGET`).
    pub fn seal_every(mut self, bytes: u64) -> PackWriter<'a> {
        self.target = bytes;
        self
    }

    /// The slot this thread writes into: its own if free, else any free one, else its own
    /// once free.
    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Open>> {
        thread_local! {
            static START: usize = {
                static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
                NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            };
        }
        let n = self.open.len();
        let start = START.with(|s| *s) % n;
        for k in 0..n {
            if let Ok(guard) = self.open[(start + k) % n].try_lock() {
                return guard;
            }
        }
        self.open[start].lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn put(&self, h: &Hash, object: &[u8]) -> Result<()> {
        let mut open = self.slot();
        if open.is_none() {
            *open = Some(self.start()?);
        }
        let Some(o) = open.as_mut() else {
            return Ok(());
        };
        // At its place, not at the file's cursor: a failed write leaves no gap in the pack
        // (what it wrote past the end is cut off when the pack is sealed).
        o.file.write_all_at(object, o.len).at(&o.path)?;
        o.entries.push((*h, o.len, object.len() as u32));
        o.len += object.len() as u64;
        if o.len >= self.target
            && let Some(full) = open.take()
        {
            self.seal(full)?;
        }
        Ok(())
    }

    /// Seals the pack being written, if any, and waits until every sealed pack is on disk.
    pub fn finish(self) -> Result<()> {
        for slot in &self.open {
            let open = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(o) = open {
                self.seal(o)?;
            }
        }
        let flushing =
            std::mem::take(&mut *self.flushing.lock().unwrap_or_else(|e| e.into_inner()));
        let mut first_err = None;
        for (path, t) in flushing {
            if let Err(e) = join_flush(t) {
                first_err.get_or_insert(Error::Io { path, err: e });
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn start(&self) -> Result<Open> {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = self
            .tmp
            .join(format!("pack-{}-{n}.pack", std::process::id()));
        let file = File::create(&path).at(&path)?;
        file.write_all_at(MAGIC, 0).at(&path)?;
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
            // A fresh name: the same objects may already be in a pack (one `gc` is about to
            // remove, say), which must not be replaced.
            let mut nonce = [0u8; 16];
            getrandom::fill(&mut nonce)
                .map_err(|e| std::io::Error::other(e.to_string()))
                .at(&o.path)?;
            let name = format!("{}.pack", Hash::of(&[&index[..], &nonce].concat()).to_hex());
            index.extend_from_slice(&o.len.to_le_bytes());
            index.extend_from_slice(&(o.entries.len() as u64).to_le_bytes());
            index.extend_from_slice(MAGIC);
            o.file.write_all_at(&index, o.len).at(&o.path)?;
            o.file.set_len(o.len + index.len() as u64).at(&o.path)?;
            let to = self.packs.path(&name);
            fs::rename(&o.path, &to).at(&to)?;
            self.packs.register(&name, std::mem::take(&mut o.entries));
            Ok(to)
        })();
        match result {
            Ok(to) => {
                // Written back while the work goes on, so the commit's syncfs has less to
                // wait for; a few at a time.
                let mut flushing = self.flushing.lock().unwrap_or_else(|e| e.into_inner());
                if flushing.len() >= FLUSHING {
                    let (path, t) = flushing.remove(0);
                    join_flush(t).at(&path)?;
                }
                let file = std::sync::Arc::new(o.file);
                let theirs = file.clone();
                match std::thread::Builder::new().spawn(move || theirs.sync_data()) {
                    Ok(t) => flushing.push((to, t)),
                    // No thread to spare: written back here, now.
                    Err(_) => file.sync_data().at(&to)?,
                }
                Ok(())
            }
            Err(e) => {
                let _ = fs::remove_file(&o.path);
                Err(e)
            }
        }
    }
}

fn join_flush(t: Flush) -> std::io::Result<()> {
    t.join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the write-back thread panicked")))
}

impl Drop for PackWriter<'_> {
    fn drop(&mut self) {
        // Not finished (an error stopped the work): its objects were never committed.
        for slot in &self.open {
            if let Some(o) = slot.lock().unwrap_or_else(|e| e.into_inner()).take() {
                let _ = fs::remove_file(&o.path);
            }
        }
        for (_, t) in std::mem::take(&mut *self.flushing.lock().unwrap_or_else(|e| e.into_inner()))
        {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A temporary directory with empty `packs` and `tmp` directories in it.
    fn scratch() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let packs_dir = dir.path().join("packs");
        let tmp = dir.path().join("tmp");
        fs::create_dir_all(&packs_dir).unwrap();
        fs::create_dir_all(&tmp).unwrap();
        (dir, packs_dir, tmp)
    }

    #[test]
    fn written_objects_read_back_after_a_rescan_and_a_damaged_pack_is_named() {
        let (_dir, packs_dir, tmp) = scratch();
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

    #[test]
    fn the_same_objects_twice_make_two_packs_and_many_packs_stay_readable() {
        let (_dir, packs_dir, tmp) = scratch();
        let packs = Packs::new(packs_dir.clone());
        let objects: Vec<Vec<u8>> = (0..3 * OPEN_FILES as u32)
            .map(|i| format!("object {i}").into_bytes())
            .collect();
        // One object per pack: more packs than files kept open.
        for _ in 0..2 {
            let w = PackWriter::new(&packs, tmp.clone()).seal_every(1);
            for o in &objects {
                w.put(&Hash::of(o), o).unwrap();
            }
            w.finish().unwrap();
        }
        // A second pack of the same objects never replaces the first (gc relies on it).
        assert_eq!(fs::read_dir(&packs_dir).unwrap().count(), 2 * objects.len());
        let fresh = Packs::new(packs_dir);
        for _ in 0..2 {
            for o in &objects {
                assert_eq!(fresh.read(&Hash::of(o)).unwrap().as_deref(), Some(&o[..]));
            }
        }
        assert!(fresh.files.lock().unwrap().len() <= OPEN_FILES);
    }
}
