//! Moving a release to another store over any byte stream (an ssh channel, in practice),
//! sending only the chunks the other side lacks.
//!
//! The conversation, in records `[tag u8][len u32 LE][payload]`:
//! 1. sender: `OFFER` (the release id);
//! 2. receiver: `DONE` at once when it has the release, else `HAVE`: the ids of its newest
//!    releases of the same app, any of which can serve as a base;
//! 3. sender: `MANIFEST` (zstd-compressed, against a base's manifest when it has one of
//!    them too), `SIGNATURE`;
//! 4. receiver: checks both (the id must be the offered one, the signer trusted there),
//!    then `WANT` (the 32-byte ids of the chunks it lacks);
//! 5. sender: per wanted chunk, either `CHUNK` (id + stored object, already compressed) or
//!    `DELTA` (id, the base chunks it is compressed against: the same region of the same
//!    file in the base release, and the zstd frame), whichever is smaller; then `END`;
//! 6. receiver: `DONE` (JSON: what it added) once the release is committed, or `ERROR`.
//!
//! The receiver verifies every chunk as it arrives and stores it at once, so a transfer cut
//! off halfway leaves valid chunks behind and the next attempt only asks for the rest. The
//! release appears (its manifest is committed) only when every chunk is there.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::chunk;
use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::keys::ReleaseSignature;
use crate::manifest::{MAX_MANIFEST_BYTES, Manifest};
use crate::objpack::PackWriter;
use crate::store::{Budget, ChunkCache, Store};

const TAG_MANIFEST: u8 = 1;
const TAG_SIGNATURE: u8 = 2;
const TAG_WANT: u8 = 3;
const TAG_CHUNK: u8 = 4;
const TAG_END: u8 = 5;
const TAG_DONE: u8 = 6;
const TAG_ERROR: u8 = 7;
const TAG_OFFER: u8 = 8;
const TAG_HAVE: u8 = 9;
const TAG_DELTA: u8 = 10;

/// How many of its releases of the app a receiver offers as bases.
const MAX_BASES: usize = 4;
/// A manifest sent against a base's manifest: both must fit this window (128 MiB).
const MANIFEST_WINDOW_LOG: u32 = 27;

const MAX_RECORD: u32 = 64 << 20;

/// What the receiving side reports once the release is in its store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Received {
    pub release: String,
    pub app: String,
    pub version: String,
    /// It had the release already: nothing travelled.
    pub already: bool,
    pub new_chunks: usize,
    /// Chunks of the release it had before (from an earlier release or an interrupted run).
    pub had_chunks: usize,
}

/// What the sender saw.
#[derive(Debug, Clone, Serialize)]
pub struct Sent {
    pub received: Received,
    pub chunks_sent: usize,
    /// Every byte the sender wrote (records and headers): the payload on the wire.
    pub bytes_sent: u64,
    /// Chunks sent as deltas against the base release.
    pub chunks_delta: usize,
    /// The base release the manifest and deltas were made against.
    pub base: Option<String>,
}

/// Progress of a send: bytes of chunk objects written so far, out of the total wanted.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub sent: u64,
    pub total: u64,
}

fn io(what: &str) -> impl Fn(std::io::Error) -> Error + '_ {
    move |err| stream(what, err.to_string())
}

/// A fault of the stream to `peer` (not of either store).
fn stream(peer: &str, message: impl Into<String>) -> Error {
    Error::Stream {
        peer: peer.to_string(),
        message: message.into(),
    }
}

struct Counting<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn write_record(w: &mut impl Write, tag: u8, parts: &[&[u8]]) -> std::io::Result<()> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut head = [0u8; 5];
    head[0] = tag;
    head[1..].copy_from_slice(&(len as u32).to_le_bytes());
    w.write_all(&head)?;
    for p in parts {
        w.write_all(p)?;
    }
    Ok(())
}

fn read_record(r: &mut impl Read, what: &str) -> Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    r.read_exact(&mut head).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            stream(what, "the connection closed in the middle of a transfer")
        } else {
            io(what)(e)
        }
    })?;
    let len = u32::from_le_bytes(head[1..].try_into().expect("4 bytes"));
    if len > MAX_RECORD {
        return Err(stream(
            what,
            format!("oversized transfer record ({len} bytes)"),
        ));
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            stream(what, "the connection closed in the middle of a transfer")
        } else {
            io(what)(e)
        }
    })?;
    Ok((head[0], payload))
}

#[derive(Serialize, Deserialize)]
struct WireErr {
    message: String,
    hint: Option<String>,
    /// The receiver does not trust the signer (the sender knows the fix better).
    #[serde(default)]
    untrusted: bool,
}

fn remote_error(payload: &[u8]) -> Error {
    match serde_json::from_slice::<WireErr>(payload) {
        Ok(e) => Error::Remote {
            message: e.message,
            hint: e.hint,
            untrusted: e.untrusted,
        },
        Err(_) => Error::Remote {
            message: String::from_utf8_lossy(payload).into_owned(),
            hint: None,
            untrusted: false,
        },
    }
}

fn expect_done(tag: u8, payload: &[u8], what: &str) -> Result<Received> {
    match tag {
        TAG_DONE => serde_json::from_slice(payload)
            .map_err(|e| stream(what, format!("bad answer from the receiver: {e}"))),
        TAG_ERROR => Err(remote_error(payload)),
        other => Err(stream(
            what,
            format!("unexpected answer from the receiver (record {other})"),
        )),
    }
}

/// Chunks in their wire form, kept by one `send` for the next: a fleet deploy sends one
/// release, against one base, to many hosts, and each chunk is read and encoded once.
pub struct Encoded {
    #[allow(clippy::type_complexity)]
    forms: std::sync::Mutex<HashMap<(Hash, Option<Hash>), Arc<std::sync::Mutex<Option<Form>>>>>,
    /// At most 256 MiB of wire forms are kept (beyond it, chunks are encoded per send).
    budget: Budget,
    /// The delta bases, read once: neighbouring changed chunks share them.
    bases: ChunkCache,
}

impl Default for Encoded {
    fn default() -> Encoded {
        Encoded {
            forms: Default::default(),
            budget: Budget::new(256 << 20),
            bases: ChunkCache::default(),
        }
    }
}

/// A chunk's stored size and its wire form.
type Form = Arc<(u64, Wire)>;

impl Encoded {
    /// The wire form of chunk `h` against `base`, made by `make` unless another send made it
    /// (or is making it: that one is waited for).
    fn get(
        &self,
        h: &Hash,
        base: Option<Hash>,
        make: impl FnOnce() -> Result<(u64, Wire)>,
    ) -> Result<Form> {
        let cell = self
            .forms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((*h, base))
            .or_default()
            .clone();
        let mut slot = cell.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = slot.as_ref() {
            return Ok(f.clone());
        }
        let form = Arc::new(make()?);
        let size = match &form.1 {
            Wire::Whole(o) => o.len(),
            Wire::Delta(b, d) => b.len() * 32 + d.len(),
        } as u64;
        if self.budget.take(size) {
            *slot = Some(form.clone());
        }
        Ok(form)
    }
}

/// Sends release `id` from `store` to a `receive` at the other end of `(input, output)`.
/// `what` names the other end in errors (`web1`); `encoded` may be shared by the sends of
/// one release to several receivers.
pub fn send(
    store: &Store,
    id: &Hash,
    encoded: &Encoded,
    mut input: impl Read,
    output: impl Write,
    what: &str,
    mut progress: impl FnMut(Progress),
) -> Result<Sent> {
    let manifest_bytes = store.manifest_bytes(id)?;
    let manifest = store.manifest(id)?;
    let sig = store.signature(id)?;
    let mut w = Counting {
        inner: std::io::BufWriter::with_capacity(256 << 10, output),
        bytes: 0,
    };
    write_record(&mut w, TAG_OFFER, &[&id.0]).map_err(io(what))?;
    w.flush().map_err(io(what))?;
    let (tag, payload) = read_record(&mut input, what)?;
    if tag != TAG_HAVE {
        let received = expect_done(tag, &payload, what)?;
        return Ok(Sent {
            received,
            chunks_sent: 0,
            bytes_sent: w.bytes,
            chunks_delta: 0,
            base: None,
        });
    }
    // A base both sides hold: the receiver's newest that is here too.
    let base: Option<(Hash, Manifest, Vec<u8>)> = payload
        .chunks_exact(32)
        .map(|c| Hash(c.try_into().expect("32 bytes")))
        .filter(|b| b != id && store.has_release(b))
        .find_map(|b| {
            let bytes = store.manifest_bytes(&b).ok()?;
            let m = store.manifest(&b).ok()?;
            (m.app == manifest.app).then_some((b, m, bytes))
        });
    let packed = match &base {
        Some((b, _, base_bytes)) => {
            let z = (base_bytes.len() + manifest_bytes.len() <= 1 << MANIFEST_WINDOW_LOG)
                .then(|| {
                    chunk::delta_encode_window(base_bytes, &manifest_bytes, MANIFEST_WINDOW_LOG)
                })
                .flatten();
            match z {
                Some(z) => [&[1u8][..], &b.0, &z].concat(),
                None => [
                    &[0u8][..],
                    &zstd::bulk::compress(&manifest_bytes, 9).map_err(io(what))?,
                ]
                .concat(),
            }
        }
        None => [
            &[0u8][..],
            &zstd::bulk::compress(&manifest_bytes, 9).map_err(io(what))?,
        ]
        .concat(),
    };
    write_record(&mut w, TAG_MANIFEST, &[&packed]).map_err(io(what))?;
    write_record(&mut w, TAG_SIGNATURE, &[&sig.to_bytes()]).map_err(io(what))?;
    w.flush().map_err(io(what))?;

    let (tag, payload) = read_record(&mut input, what)?;
    if tag != TAG_WANT {
        return Err(match expect_done(tag, &payload, what) {
            Err(e) => e,
            Ok(_) => stream(what, "the receiver answered before the chunks"),
        });
    }
    if payload.len() % 32 != 0 {
        return Err(stream(what, "bad chunk list from the receiver"));
    }
    let needed = manifest.chunk_set();
    let mut want = Vec::with_capacity(payload.len() / 32);
    for c in payload.chunks_exact(32) {
        let h = Hash(c.try_into().expect("32 bytes"));
        if !needed.contains(&h) {
            return Err(stream(
                what,
                format!("the receiver asked for chunk {h}, not part of this release"),
            ));
        }
        want.push(h);
    }
    let total: u64 = want.iter().map(|h| store.chunk_size(h).unwrap_or(0)).sum();
    let places = base
        .as_ref()
        .map(|(_, base_manifest, _)| Places::new(&manifest, base_manifest));
    let mut sent = 0;
    let mut deltas = 0;
    progress(Progress { sent, total });
    // Deltas cost CPU (reading the base chunks, matching against them): a batch of chunks is
    // encoded on every core, then written in order.
    let base_id = base.as_ref().map(|(b, _, _)| *b);
    for batch in want.chunks(WIRE_BATCH) {
        let forms = crate::par::map(batch, |h| {
            encoded.get(h, base_id, || {
                wire_form(store, h, places.as_ref(), &encoded.bases)
            })
        });
        for (h, e) in batch.iter().zip(forms) {
            let e = e?;
            let (object_len, form) = (e.0, &e.1);
            match form {
                Wire::Delta(bases, d) => {
                    let mut head = Vec::with_capacity(34 + bases.len() * 32);
                    head.extend_from_slice(&h.0);
                    head.extend_from_slice(&(bases.len() as u16).to_le_bytes());
                    for b in bases {
                        head.extend_from_slice(&b.0);
                    }
                    write_record(&mut w, TAG_DELTA, &[&head, d]).map_err(io(what))?;
                    deltas += 1;
                }
                Wire::Whole(object) => {
                    write_record(&mut w, TAG_CHUNK, &[&h.0, object]).map_err(io(what))?
                }
            }
            sent += object_len;
            progress(Progress { sent, total });
        }
    }
    write_record(&mut w, TAG_END, &[]).map_err(io(what))?;
    w.flush().map_err(io(what))?;
    let (tag, payload) = read_record(&mut input, what)?;
    let received = expect_done(tag, &payload, what)?;
    Ok(Sent {
        received,
        chunks_sent: want.len(),
        bytes_sent: w.bytes,
        chunks_delta: deltas,
        base: base.map(|(b, _, _)| b.to_hex()),
    })
}

/// Chunks encoded together for the wire (see `send`).
const WIRE_BATCH: usize = 16;

/// How one chunk travels.
enum Wire {
    Whole(Vec<u8>),
    Delta(Vec<Hash>, Vec<u8>),
}

/// A wanted chunk in its smaller form: as stored, or as a delta against the base chunks
/// around the same place in the same file. Also the stored size (for progress).
fn wire_form(
    store: &Store,
    h: &Hash,
    places: Option<&Places<'_>>,
    bases: &ChunkCache,
) -> Result<(u64, Wire)> {
    let (object, raw) = store.chunk_verified(h)?;
    let len = object.len() as u64;
    let delta = places.and_then(|p| p.base_for(h)).and_then(|bases_of_h| {
        let mut prefix = Vec::new();
        for b in &bases_of_h {
            prefix.extend_from_slice(&store.read_chunk_cached(b, bases).ok()?);
        }
        let d = chunk::delta_encode(&prefix, &raw)?;
        (d.len() + 34 + bases_of_h.len() * 32 < object.len()).then_some((bases_of_h, d))
    });
    Ok(match delta {
        Some((bases, d)) => (len, Wire::Delta(bases, d)),
        None => (len, Wire::Whole(object)),
    })
}

/// Where each chunk of a release sits (file and offset), and the chunks of the same file in
/// the base release: what a changed chunk is likely to resemble.
struct Places<'a> {
    /// Each chunk's file, and where it sits in that file's base version: its offsets, moved
    /// by as much as the nearest chunk both versions share moved (content inserted or
    /// removed before it shifts everything after).
    at: std::collections::HashMap<Hash, (&'a str, u64, u64)>,
    base_files: std::collections::HashMap<&'a str, Vec<(u64, u64, Hash)>>,
}

impl<'a> Places<'a> {
    fn new(manifest: &'a Manifest, base: &'a Manifest) -> Places<'a> {
        let mut base_files = std::collections::HashMap::new();
        for e in &base.entries {
            if let crate::manifest::Entry::File { path, chunks, .. } = e {
                let mut off = 0u64;
                let mut v = Vec::with_capacity(chunks.len());
                for c in chunks {
                    v.push((off, off + c.1 as u64, c.0));
                    off += c.1 as u64;
                }
                base_files.insert(path.as_str(), v);
            }
        }
        let mut at = std::collections::HashMap::new();
        for e in &manifest.entries {
            if let crate::manifest::Entry::File { path, chunks, .. } = e {
                let in_base: HashMap<Hash, u64> = base_files
                    .get(path.as_str())
                    .map(|v: &Vec<(u64, u64, Hash)>| v.iter().map(|&(s, _, h)| (h, s)).collect())
                    .unwrap_or_default();
                // The shift at each chunk: from the last shared chunk before it, else from
                // the first one after it, else none.
                let mut offsets = Vec::with_capacity(chunks.len());
                let mut off = 0u64;
                for c in chunks {
                    offsets.push(off);
                    off += c.1 as u64;
                }
                // Where a shared chunk is: how far it moved.
                let anchors: Vec<Option<i64>> = chunks
                    .iter()
                    .zip(&offsets)
                    .map(|(c, &o)| in_base.get(&c.0).map(|&b| b as i64 - o as i64))
                    .collect();
                let mut shifts = anchors.clone();
                let mut last = None;
                for s in shifts.iter_mut() {
                    match s {
                        Some(v) => last = Some(*v),
                        None => *s = last,
                    }
                }
                let mut next = None;
                for (s, a) in shifts.iter_mut().zip(&anchors).rev() {
                    match a {
                        Some(v) => next = Some(*v),
                        None if s.is_none() => *s = next,
                        None => {}
                    }
                }
                for ((c, o), s) in chunks.iter().zip(&offsets).zip(&shifts) {
                    let start = (*o as i64 + s.unwrap_or(0)).max(0) as u64;
                    at.entry(c.0)
                        .or_insert((path.as_str(), start, start + c.1 as u64));
                }
            }
        }
        Places { at, base_files }
    }

    /// The base chunks that overlap where `h` sits in the base version of its file, in file
    /// order, within the size a delta base may have. (A wider neighbourhood made deltas no
    /// smaller in the fleet bench, and bigger bases cost the sender CPU to index.)
    fn base_for(&self, h: &Hash) -> Option<Vec<Hash>> {
        let (path, start, end) = *self.at.get(h)?;
        let file = self.base_files.get(path)?;
        let mut out = Vec::new();
        let mut size = 0u64;
        for &(s, e, c) in file {
            if e > start && s < end {
                size += e - s;
                if size > chunk::MAX_DELTA_BASE as u64 {
                    break;
                }
                out.push(c);
            }
        }
        (!out.is_empty()).then_some(out)
    }
}

/// Refuses a transfer before it starts (the receiver cannot take it): the sender's next
/// read gets `message` and `hint` as the error.
pub fn refuse(output: &mut impl Write, message: String, hint: Option<String>) {
    refuse_with(
        output,
        WireErr {
            message,
            hint,
            untrusted: false,
        },
    );
}

fn refuse_with(output: &mut impl Write, e: WireErr) {
    let body = serde_json::to_vec(&e).expect("serialises");
    let _ = write_record(output, TAG_ERROR, &[&body]);
    let _ = output.flush();
}

/// The receiving end: reads a release from `input` into `store`, answering on `output`.
/// Any refusal is also sent to the sender, in words and with a hint.
pub fn receive(store: &Store, mut input: impl Read, mut output: impl Write) -> Result<Received> {
    let result = receive_inner(store, &mut input, &mut output);
    match &result {
        Ok(r) => {
            let body = serde_json::to_vec(r).expect("serialises");
            write_record(&mut output, TAG_DONE, &[&body]).map_err(io("<sender>"))?;
        }
        Err(e) => refuse_with(
            &mut output,
            WireErr {
                message: e.to_string(),
                hint: e.hint(),
                untrusted: matches!(e, Error::Untrusted { .. }),
            },
        ),
    }
    let _ = output.flush();
    result
}

fn receive_inner(
    store: &Store,
    input: &mut impl Read,
    output: &mut impl Write,
) -> Result<Received> {
    let what = "<sender>";
    let _lock = store.lock_shared()?;
    let (tag, offer) = read_record(input, what)?;
    if tag != TAG_OFFER || offer.len() != 32 {
        return Err(stream(what, "a transfer must start with an offer"));
    }
    let offered = Hash(offer[..].try_into().expect("32 bytes"));
    if store.has_release(&offered) {
        let manifest = store.manifest(&offered)?;
        let n = manifest.chunk_set().len();
        return Ok(Received {
            release: offered.to_hex(),
            app: manifest.app,
            version: manifest.version,
            already: true,
            new_chunks: 0,
            had_chunks: n,
        });
    }
    // Bases: the newest releases here (the sender picks one of the same app it has too).
    let mut metas = store.releases().unwrap_or_default();
    metas.sort_by_key(|m| std::cmp::Reverse(m.stored_at));
    let mut have = Vec::new();
    for m in metas.iter().take(MAX_BASES * 4) {
        have.extend_from_slice(&m.release.0);
    }
    write_record(output, TAG_HAVE, &[&have]).map_err(io(what))?;
    output.flush().map_err(io(what))?;

    let (tag, packed) = read_record(input, what)?;
    if tag != TAG_MANIFEST || packed.is_empty() {
        return Err(stream(what, "a manifest must follow the offer"));
    }
    let manifest_bytes = match packed[0] {
        0 => zstd::bulk::decompress(&packed[1..], MAX_MANIFEST_BYTES as usize)
            .map_err(|e| stream(what, format!("undecodable manifest: {e}")))?,
        1 if packed.len() > 33 => {
            let base = Hash(packed[1..33].try_into().expect("32 bytes"));
            let base_bytes = store.manifest_bytes(&base)?;
            decode_manifest_delta(&base_bytes, &packed[33..])
                .map_err(|e| stream(what, format!("undecodable manifest: {e}")))?
        }
        _ => return Err(stream(what, "unknown manifest encoding")),
    };
    let id = Hash::of(&manifest_bytes);
    if id != offered {
        return Err(stream(
            what,
            format!("the manifest is not release {} as offered", offered.short()),
        ));
    }
    let manifest = Manifest::from_bytes(&manifest_bytes, &format!("release {}", id.short()))?;
    let (tag, sig_bytes) = read_record(input, what)?;
    if tag != TAG_SIGNATURE {
        return Err(stream(what, "a signature must follow the manifest"));
    }
    let sig = ReleaseSignature::from_bytes(&sig_bytes, what)?;
    let sig_what = format!(
        "release {} ({}@{})",
        id.short(),
        manifest.app,
        manifest.version
    );
    store.keys().check_trusted(&id, &sig, &sig_what)?;
    let needed = manifest.chunk_set();
    let mut want: Vec<Hash> = needed
        .iter()
        .filter(|h| !store.has_chunk(h))
        .copied()
        .collect();
    want.sort();
    let mut list = Vec::with_capacity(want.len() * 32);
    for h in &want {
        list.extend_from_slice(&h.0);
    }
    write_record(output, TAG_WANT, &[&list]).map_err(io(what))?;
    output.flush().map_err(io(what))?;
    let mut pending: HashSet<Hash> = want.iter().copied().collect();
    // `want` is sorted.
    let present = |h: &Hash| want.binary_search(h).is_err();
    let packs = store.pack_writer().seal_every(RECEIVE_PACK);
    let cache = ChunkCache::default();
    let stop = std::sync::atomic::AtomicBool::new(false);
    // A received release is deployed next: its tree is begun while the chunks arrive (the
    // files it already has), and finished once they are in. Only a head start: when that
    // fails, `materialise` does the whole tree when the release is deployed.
    let (arrived, sealed, draft) = std::thread::scope(|s| {
        // No thread to spare: no head start.
        let draft = std::thread::Builder::new()
            .spawn_scoped(s, || store.draft_tree(&id, &manifest, &present, &stop))
            .ok();
        let arrived = receive_chunks(store, input, &mut pending, &packs, &cache);
        // In, or broken off: the draft stops, and what arrived is kept at once (verified,
        // the next transfer resumes from it).
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let sealed = packs.finish();
        (arrived, sealed, draft.map(|d| d.join()))
    });
    arrived?;
    sealed?;
    if let Some(h) = pending.iter().next() {
        return Err(stream(
            what,
            format!("the transfer ended without chunk {h}"),
        ));
    }
    crate::failpoint::hit("receive.chunks_in");
    // The commit and the rest of the tree side by side; the tree goes in place after both.
    let (committed, completed) = std::thread::scope(|s| {
        let completed = match draft {
            Some(Ok(Ok(Some(mut d)))) => std::thread::Builder::new()
                .spawn_scoped(s, || {
                    store.complete_tree(&mut d, &manifest, &cache).map(|()| d)
                })
                .ok(),
            _ => None,
        };
        let committed = store.commit_release(&manifest, &sig);
        (committed, completed.map(|c| c.join()))
    });
    committed?;
    if let Some(Ok(Ok(draft))) = completed {
        crate::failpoint::hit("receive.tree_completed");
        let _ = store.place_tree(draft);
    }
    Ok(Received {
        release: id.to_hex(),
        app: manifest.app,
        version: manifest.version,
        already: false,
        new_chunks: want.len(),
        had_chunks: needed.len() - want.len(),
    })
}

/// Packs of received chunks are sealed this often, so a cut transfer that could not seal
/// its last pack still keeps the ones before.
const RECEIVE_PACK: u64 = 2 << 20;

/// Reads chunk records until `END`, verifying each and putting it into `packs`. Delta bases
/// are read through `cache`, and the chunks decoded from deltas kept there (the release's
/// tree needs them next).
fn receive_chunks(
    store: &Store,
    input: &mut impl Read,
    pending: &mut HashSet<Hash>,
    packs: &PackWriter<'_>,
    cache: &ChunkCache,
) -> Result<()> {
    let what = "<sender>";
    loop {
        let (tag, payload) = read_record(input, what)?;
        match tag {
            TAG_CHUNK => {
                if payload.len() < 33 {
                    return Err(stream(what, "chunk record too short"));
                }
                let h = Hash(payload[..32].try_into().expect("32 bytes"));
                if !pending.remove(&h) {
                    return Err(stream(what, format!("chunk {h} was not asked for")));
                }
                let object = &payload[32..];
                chunk::decode(object, &h).map_err(|reason| {
                    stream(what, format!("chunk {h} arrived corrupt: {reason}"))
                })?;
                packs.put(&h, object)?;
            }
            TAG_DELTA => {
                if payload.len() < 34 {
                    return Err(stream(what, "delta record too short"));
                }
                let h = Hash(payload[..32].try_into().expect("32 bytes"));
                if !pending.remove(&h) {
                    return Err(stream(what, format!("chunk {h} was not asked for")));
                }
                let n = u16::from_le_bytes([payload[32], payload[33]]) as usize;
                let body = payload
                    .get(34 + n * 32..)
                    .ok_or_else(|| stream(what, "delta record too short"))?;
                let mut prefix = Vec::new();
                for b in payload[34..34 + n * 32].chunks_exact(32) {
                    let b = Hash(b.try_into().expect("32 bytes"));
                    prefix.extend_from_slice(&store.read_chunk_cached(&b, cache)?);
                    if prefix.len() > chunk::MAX_DELTA_BASE {
                        return Err(stream(what, "delta base too large"));
                    }
                }
                let raw = chunk::delta_decode(&prefix, body, &h).map_err(|reason| {
                    stream(what, format!("chunk {h} arrived corrupt: {reason}"))
                })?;
                // Stored as it is (see `Encoder::uncompressed`); the tree is made of it next.
                store.put_chunk_packed(&h, &raw, &mut chunk::Encoder::uncompressed(), packs)?;
                cache.keep(&h, &Arc::new(raw));
            }
            TAG_END => break,
            other => {
                return Err(stream(
                    what,
                    format!("unexpected record {other} in a transfer"),
                ));
            }
        }
    }
    Ok(())
}

/// A manifest compressed against the base release's manifest (its id is checked after).
fn decode_manifest_delta(base: &[u8], delta: &[u8]) -> Result<Vec<u8>, String> {
    use zstd::zstd_safe::{DCtx, DParameter};
    let size = match zstd::zstd_safe::get_frame_content_size(delta) {
        Ok(Some(n)) if n <= MAX_MANIFEST_BYTES => n as usize,
        _ => return Err("no usable size in the frame".into()),
    };
    let mut dctx = DCtx::create();
    dctx.set_parameter(DParameter::WindowLogMax(MANIFEST_WINDOW_LOG))
        .map_err(|c| format!("zstd error {c}"))?;
    dctx.ref_prefix(base)
        .map_err(|c| format!("zstd error {c}"))?;
    let mut out = Vec::with_capacity(size);
    dctx.decompress(&mut out, delta)
        .map_err(|c| zstd::zstd_safe::get_error_name(c).to_string())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::{BuildInput, build};
    use std::os::unix::net::UnixStream;

    fn store_in(dir: &std::path::Path) -> Store {
        Store::open(dir).unwrap()
    }

    fn release(store: &Store, src: &std::path::Path, version: &str) -> Hash {
        build(
            store,
            BuildInput {
                dir: src,
                app: "app",
                version: Some(version),
                runtime: Default::default(),
                depends: Default::default(),
                exclude: &[],
                remember: false,
            },
        )
        .unwrap()
        .release
    }

    #[test]
    fn chunks_decoded_from_deltas_are_stored_as_they_are_and_compressed_by_gc() {
        let tmp = tempfile::tempdir().unwrap();
        // Compressible, and no two chunks alike.
        let mut text: Vec<u8> = (0..60_000)
            .flat_map(|i| format!("line {i}: the quick brown fox {}\n", i % 97).into_bytes())
            .collect();
        let src = source(tmp.path(), &[("log.txt", &text)]);
        let a = store_in(&tmp.path().join("a"));
        let v1 = release(&a, &src, "1");
        let b_root = tmp.path().join("b");
        trusting(&b_root, &a);
        transfer(&a, &b_root, &v1).0.unwrap();
        let middle = text.len() / 2;
        text[middle..middle + 2000].copy_from_slice(&[b'#'; 2000]);
        std::fs::write(src.join("log.txt"), &text).unwrap();
        let v2 = release(&a, &src, "2");
        let sent = transfer(&a, &b_root, &v2).0.unwrap();
        assert!(sent.chunks_delta >= 1, "{sent:?}");
        let b = store_in(&b_root);
        let new: Vec<Hash> = b
            .manifest(&v2)
            .unwrap()
            .chunk_set()
            .difference(&b.manifest(&v1).unwrap().chunk_set())
            .copied()
            .collect();
        assert!(!new.is_empty());
        let raw_size: u64 = new.iter().map(|h| b.chunk_size(h).unwrap()).sum();
        assert!(
            new.iter()
                .all(|h| chunk::is_raw(&b.chunk_object(h).unwrap()))
        );

        // gc merges the transfers' small packs, compressing what came uncompressed.
        let kept = [v1, v2].into_iter().collect();
        b.gc(2, &kept).unwrap();
        let b = store_in(&b_root);
        assert!(
            new.iter()
                .all(|h| !chunk::is_raw(&b.chunk_object(h).unwrap()))
        );
        let size: u64 = new.iter().map(|h| b.chunk_size(h).unwrap()).sum();
        assert!(size * 2 < raw_size, "{size} of {raw_size}");
        assert!(b.verify(None).unwrap().problems.is_empty());
    }

    #[test]
    fn a_draft_stopped_anywhere_is_completed_whole() {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir_all(src.join("a/b/c")).unwrap();
        std::fs::create_dir_all(src.join("d")).unwrap();
        std::fs::write(src.join("big.bin"), crate::chunk::tests::noise(3 << 20, 5)).unwrap();
        std::fs::write(src.join("a/same.txt"), "same").unwrap();
        std::fs::write(src.join("a/b/c/same.txt"), "same").unwrap();
        std::fs::write(src.join("d/same.txt"), "same").unwrap();
        std::fs::write(src.join("a/b/empty"), "").unwrap();
        std::fs::write(src.join("d/other.txt"), "other").unwrap();
        std::os::unix::fs::symlink("../a/same.txt", src.join("d/link")).unwrap();
        let store = store_in(&tmp.path().join("s"));
        let id = release(&store, &src, "1");
        let manifest = store.manifest(&id).unwrap();
        let files = manifest.entries.len();
        // Its cache files made and stamped, as after an earlier deploy: a draft links them.
        crate::store::remove_tree(&store.materialise(&id).unwrap());
        for stop_after in [0, 1, 2, 4, 6, files * 4] {
            let stop = AtomicBool::new(stop_after == 0);
            let asked = AtomicUsize::new(0);
            let present = |_: &Hash| {
                if asked.fetch_add(1, Ordering::Relaxed) + 1 >= stop_after {
                    stop.store(true, Ordering::Relaxed);
                }
                true
            };
            let mut draft = store
                .draft_tree(&id, &manifest, &present, &stop)
                .unwrap()
                .unwrap();
            if stop_after == files * 4 {
                // Never stopped: every entry was a link to a stamped cache file.
                assert_eq!(draft.written(), files);
            }
            store
                .complete_tree(&mut draft, &manifest, &ChunkCache::default())
                .unwrap();
            let tree = store.place_tree(draft).unwrap();
            for rel in [
                "big.bin",
                "a/same.txt",
                "a/b/c/same.txt",
                "d/same.txt",
                "a/b/empty",
                "d/other.txt",
            ] {
                assert_eq!(
                    std::fs::read(tree.join(rel)).unwrap(),
                    std::fs::read(src.join(rel)).unwrap(),
                    "{rel}, stopped after {stop_after}"
                );
            }
            assert_eq!(
                std::fs::read_link(tree.join("d/link")).unwrap(),
                std::path::Path::new("../a/same.txt")
            );
            assert_eq!(leftover_trees(&store), 0);
            crate::store::remove_tree(&tree);
        }

        // A cache file written through (its stamp broken) is not linked by a draft; the
        // completion re-checks it and builds it again.
        let stop = AtomicBool::new(false);
        let first = store.materialise(&id).unwrap();
        let through = first.join("d/other.txt");
        std::fs::set_permissions(
            &through,
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )
        .unwrap();
        std::fs::write(&through, "OTHER").unwrap();
        crate::store::remove_tree(&first);
        let mut draft = store
            .draft_tree(&id, &manifest, &|_| true, &stop)
            .unwrap()
            .unwrap();
        assert_eq!(
            draft.written(),
            files - 1,
            "all but the written-through file"
        );
        store
            .complete_tree(&mut draft, &manifest, &ChunkCache::default())
            .unwrap();
        let tree = store.place_tree(draft).unwrap();
        assert_eq!(std::fs::read(tree.join("d/other.txt")).unwrap(), b"other");
    }

    #[test]
    fn a_broken_stream_is_named_as_such() {
        let tmp = tempfile::tempdir().unwrap();
        let src = source(tmp.path(), &[("a.txt", b"a")]);
        let a = store_in(&tmp.path().join("a"));
        let v1 = release(&a, &src, "1");
        // The other end is gone before the offer is answered.
        let (ours, theirs) = UnixStream::pair().unwrap();
        drop(theirs);
        let sent = send(
            &a,
            &v1,
            &Encoded::default(),
            ours.try_clone().unwrap(),
            ours,
            "web1",
            |_| {},
        );
        match sent {
            Err(Error::Stream { peer, .. }) => assert_eq!(peer, "web1"),
            other => panic!("{other:?}"),
        }
    }

    /// Trees begun and not put in place (under the store's `tmp/`).
    fn leftover_trees(store: &Store) -> usize {
        let tmp = store.tmp_path("x");
        std::fs::read_dir(tmp.parent().unwrap())
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("tree-"))
                    .count()
            })
            .unwrap_or(0)
    }

    /// `tmp/src`, holding `files`.
    fn source(tmp: &std::path::Path, files: &[(&str, &[u8])]) -> std::path::PathBuf {
        let src = tmp.join("src");
        std::fs::create_dir(&src).unwrap();
        for (name, data) in files {
            std::fs::write(src.join(name), data).unwrap();
        }
        src
    }

    /// The store at `root`, trusting `signer`'s key.
    fn trusting(root: &std::path::Path, signer: &Store) -> Store {
        let s = store_in(root);
        s.keys()
            .trust(&signer.keys().public_key().unwrap(), "deployer")
            .unwrap();
        s
    }

    /// Runs a receive on its own thread over a socket pair; returns both ends' results.
    fn transfer(
        from: &Store,
        to_root: &std::path::Path,
        id: &Hash,
    ) -> (Result<Sent>, Result<Received>) {
        transfer_with(from, to_root, id, &Encoded::default())
    }

    fn transfer_with(
        from: &Store,
        to_root: &std::path::Path,
        id: &Hash,
        encoded: &Encoded,
    ) -> (Result<Sent>, Result<Received>) {
        let (a, b) = UnixStream::pair().unwrap();
        let root = to_root.to_owned();
        let t = std::thread::spawn(move || {
            let store = store_in(&root);
            receive(&store, b.try_clone().unwrap(), b)
        });
        let sent = send(from, id, encoded, a.try_clone().unwrap(), a, "peer", |_| {});
        (sent, t.join().unwrap())
    }

    #[test]
    fn sends_of_one_release_share_its_encoded_chunks() {
        let tmp = tempfile::tempdir().unwrap();
        let src = source(
            tmp.path(),
            &[("big.bin", &noise(2 << 20, 3)), ("small.txt", b"v1")],
        );
        let a_root = tmp.path().join("a");
        let a = store_in(&a_root);
        let v1 = release(&a, &src, "1");
        let (b_root, c_root) = (tmp.path().join("b"), tmp.path().join("c"));
        for r in [&b_root, &c_root] {
            trusting(r, &a);
        }
        let shared = Encoded::default();
        let (sent, got) = transfer_with(&a, &b_root, &v1, &shared);
        sent.unwrap();
        got.unwrap();

        // The sender's chunks are gone: only what the first send encoded can serve the second.
        fn packs(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
            for e in std::fs::read_dir(dir).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    packs(&p, out);
                } else if p.extension().is_some_and(|x| x == "pack") {
                    out.push(p);
                }
            }
        }
        let mut found = Vec::new();
        packs(&a_root, &mut found);
        assert!(!found.is_empty());
        for p in &found {
            std::fs::remove_file(p).unwrap();
        }
        let a = store_in(&a_root);
        let (sent, _) = transfer(&a, &c_root, &v1);
        assert!(
            sent.is_err(),
            "without the shared forms the chunks cannot be read"
        );
        // This machine's store failed, not the stream.
        assert!(
            !matches!(sent, Err(Error::Stream { .. })),
            "{:?}",
            sent.err()
        );
        let (sent, got) = transfer_with(&a, &c_root, &v1, &shared);
        sent.unwrap();
        got.unwrap();
        assert!(
            store_in(&c_root)
                .verify(Some(&v1))
                .unwrap()
                .problems
                .is_empty()
        );
    }

    use crate::chunk::tests::noise;

    #[test]
    fn sends_only_missing_chunks_and_refuses_untrusted_signers() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir(&src).unwrap();
        let mut big = noise(8 << 20, 7);
        std::fs::write(src.join("big.bin"), &big).unwrap();
        std::fs::write(src.join("small.txt"), "v1").unwrap();
        // Links out of the release (a virtualenv's interpreter) travel as they are.
        std::os::unix::fs::symlink("/usr/bin/python3", src.join("python3")).unwrap();
        std::os::unix::fs::symlink("../shared/data", src.join("data")).unwrap();
        let a = store_in(&tmp.path().join("a"));
        let v1 = release(&a, &src, "1");
        let b_root = tmp.path().join("b");

        // A host that does not trust the signer refuses, adds no release, and says why.
        let (sent, got) = transfer(&a, &b_root, &v1);
        let err = sent.unwrap_err().to_string();
        assert!(err.contains("does not trust"), "{err}");
        assert!(got.is_err());
        assert!(!store_in(&b_root).has_release(&v1));

        store_in(&b_root)
            .keys()
            .trust(&a.keys().public_key().unwrap(), "deployer")
            .unwrap();
        let (sent, got) = transfer(&a, &b_root, &v1);
        let sent = sent.unwrap();
        got.unwrap();
        assert!(
            sent.bytes_sent > 8 << 20,
            "incompressible data travels whole"
        );
        assert!(store_in(&b_root).has_release(&v1));
        let tree = store_in(&b_root).materialise(&v1).unwrap();
        for (link, target) in [("python3", "/usr/bin/python3"), ("data", "../shared/data")] {
            assert_eq!(
                std::fs::read_link(tree.join(link)).unwrap(),
                std::path::Path::new(target)
            );
        }
        assert!(
            store_in(&b_root)
                .verify(Some(&v1))
                .unwrap()
                .problems
                .is_empty()
        );

        // 100 KiB changed in the middle of 8 MiB: a few chunks travel, not the file.
        big[4 << 20..(4 << 20) + (100 << 10)].copy_from_slice(&noise(100 << 10, 9));
        std::fs::write(src.join("big.bin"), &big).unwrap();
        let v2 = release(&a, &src, "2");
        let (sent, _) = transfer(&a, &b_root, &v2);
        let sent = sent.unwrap();
        // The changed chunks travel as deltas against v1's: about the 100 KiB that changed.
        assert!(sent.chunks_delta >= 1, "{sent:?}");
        assert_eq!(sent.base.as_deref(), Some(v1.to_hex().as_str()));
        assert!(
            sent.bytes_sent < 200 << 10,
            "sent {} bytes",
            sent.bytes_sent
        );
        assert!(sent.received.had_chunks > 0);
        assert!(
            store_in(&b_root)
                .verify(Some(&v2))
                .unwrap()
                .problems
                .is_empty()
        );
        // Its tree was written while it arrived (the unchanged file) and after (the changed
        // one): in place, whole, with nothing left over.
        let tree = store_in(&b_root).tree_path(&v2);
        assert_eq!(std::fs::read(tree.join("big.bin")).unwrap(), big);
        assert_eq!(std::fs::read(tree.join("small.txt")).unwrap(), b"v1");
        assert_eq!(leftover_trees(&store_in(&b_root)), 0);

        // 2 MiB inserted at the front and 10 KiB changed further on: the changed chunk is
        // still sent as a delta against the base chunk it moved away from.
        let mut moved = noise(2 << 20, 11);
        let mut later = big.clone();
        later[6 << 20..(6 << 20) + (10 << 10)].copy_from_slice(&noise(10 << 10, 12));
        moved.extend_from_slice(&later);
        std::fs::write(src.join("big.bin"), &moved).unwrap();
        let v3 = release(&a, &src, "3");
        let (sent3, _) = transfer(&a, &b_root, &v3);
        let sent3 = sent3.unwrap();
        assert!(sent3.chunks_delta >= 1, "{sent3:?}");
        assert!(
            sent3.bytes_sent < (2 << 20) + (150 << 10),
            "sent {} bytes",
            sent3.bytes_sent
        );
        assert_eq!(
            std::fs::read(store_in(&b_root).tree_path(&v3).join("big.bin")).unwrap(),
            moved
        );

        // Again: nothing but the manifest.
        let (sent, _) = transfer(&a, &b_root, &v2);
        let sent = sent.unwrap();
        assert!(sent.received.already);
        assert_eq!(sent.chunks_sent, 0);
    }

    /// Keeps a copy of every byte written through it.
    struct Tee<W> {
        inner: W,
        log: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    }

    impl<W: Write> Write for Tee<W> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let n = self.inner.write(buf)?;
            self.log.lock().unwrap().extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.inner.flush()
        }
    }

    #[test]
    fn damaged_or_truncated_streams_add_no_release() {
        let tmp = tempfile::tempdir().unwrap();
        let src = source(
            tmp.path(),
            &[
                ("a.bin", &noise(400 << 10, 5)),
                ("b.txt", "some text\n".repeat(500).as_bytes()),
            ],
        );
        let a = store_in(&tmp.path().join("a"));
        let v1 = release(&a, &src, "1");
        let trusting = |name: &str| trusting(&tmp.path().join(name), &a);

        // What a sender says to a store that has nothing (no base, every chunk wanted).
        let b = trusting("b");
        let (x, y) = UnixStream::pair().unwrap();
        let broot = tmp.path().join("b");
        let t = std::thread::spawn(move || receive(&store_in(&broot), y.try_clone().unwrap(), y));
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let out = Tee {
            inner: x.try_clone().unwrap(),
            log: log.clone(),
        };
        send(&a, &v1, &Encoded::default(), x, out, "peer", |_| {}).unwrap();
        t.join().unwrap().unwrap();
        assert!(b.has_release(&v1));
        let stream = log.lock().unwrap().clone();

        // Replayed whole, it is accepted; cut short or with any byte changed, it is refused
        // and the release does not appear (or, if a change is harmless, it verifies).
        let replay = |bytes: &[u8], name: &str| {
            let st = trusting(name);
            let r = receive(&st, std::io::Cursor::new(bytes.to_vec()), std::io::sink());
            (r, st)
        };
        let (r, st) = replay(&stream, "whole");
        r.unwrap();
        assert!(st.verify(Some(&v1)).unwrap().problems.is_empty());
        let step = (stream.len() / 25).max(1);
        for cut in (0..stream.len()).step_by(step) {
            let (r, st) = replay(&stream[..cut], &format!("cut{cut}"));
            assert!(r.is_err(), "a stream cut at {cut} was accepted");
            assert!(!st.has_release(&v1));
        }
        for at in (0..stream.len()).step_by((stream.len() / 53).max(1)) {
            let mut bad = stream.clone();
            bad[at] ^= 0x5a;
            let (r, st) = replay(&bad, &format!("flip{at}"));
            match r {
                Err(_) => assert!(!st.has_release(&v1), "flip at {at}: refused but stored"),
                Ok(_) => assert!(st.verify(Some(&v1)).unwrap().problems.is_empty()),
            }
        }
        // A store that does not trust the signer takes nothing, whatever the stream.
        let (r, st) = (
            receive(
                &store_in(&tmp.path().join("untrusting")),
                std::io::Cursor::new(stream.clone()),
                std::io::sink(),
            ),
            store_in(&tmp.path().join("untrusting")),
        );
        assert!(r.unwrap_err().to_string().contains("does not trust"));
        assert!(!st.has_release(&v1));
    }

    #[test]
    fn an_interrupted_transfer_resumes_and_corrupt_chunks_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let src = source(tmp.path(), &[("big.bin", &noise(6 << 20, 3))]);
        let a = store_in(&tmp.path().join("a"));
        let v1 = release(&a, &src, "1");
        let b_root = tmp.path().join("b");
        let b = trusting(&b_root, &a);
        let total = a.manifest(&v1).unwrap().chunk_set().len();
        assert!(total > 4);

        // The sender dies after two chunks: what arrived stays, the release does not appear.
        let (s, r) = UnixStream::pair().unwrap();
        let root = b_root.clone();
        let t = std::thread::spawn(move || receive(&store_in(&root), r.try_clone().unwrap(), r));
        let mut reader = s.try_clone().unwrap();
        let mut w = s;
        let manifest = a.manifest_bytes(&v1).unwrap();
        write_record(&mut w, TAG_OFFER, &[&v1.0]).unwrap();
        let (tag, _) = read_record(&mut reader, "t").unwrap();
        assert_eq!(tag, TAG_HAVE);
        let packed = [&[0u8][..], &zstd::bulk::compress(&manifest, 3).unwrap()].concat();
        write_record(&mut w, TAG_MANIFEST, &[&packed]).unwrap();
        write_record(
            &mut w,
            TAG_SIGNATURE,
            &[&a.signature(&v1).unwrap().to_bytes()],
        )
        .unwrap();
        let (tag, want) = read_record(&mut reader, "t").unwrap();
        assert_eq!(tag, TAG_WANT);
        let wanted: Vec<Hash> = want
            .chunks_exact(32)
            .map(|c| Hash(c.try_into().unwrap()))
            .collect();
        for h in &wanted[..2] {
            write_record(&mut w, TAG_CHUNK, &[&h.0, &a.chunk_object(h).unwrap()]).unwrap();
        }
        // A corrupt third chunk is refused by name.
        let mut bad = a.chunk_object(&wanted[2]).unwrap();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        write_record(&mut w, TAG_CHUNK, &[&wanted[2].0, &bad]).unwrap();
        let err = t.join().unwrap().unwrap_err().to_string();
        assert!(
            err.contains(&wanted[2].to_hex()) && err.contains("corrupt"),
            "{err}"
        );
        drop(w);
        assert!(!b.has_release(&v1));
        assert!(!b.has_chunk(&wanted[2]));
        // No tree, and no part of one.
        assert!(!b.tree_path(&v1).exists());
        assert_eq!(leftover_trees(&b), 0);

        // The next attempt asks only for what is still missing.
        let (sent, got) = transfer(&a, &b_root, &v1);
        let sent = sent.unwrap();
        got.unwrap();
        assert_eq!(sent.chunks_sent, total - 2);
        assert_eq!(sent.received.had_chunks, 2);
        assert!(b.verify(Some(&v1)).unwrap().problems.is_empty());
    }
}
