//! Moving a release to another store over any byte stream (an ssh channel, in practice),
//! sending only the chunks the other side lacks.
//!
//! The conversation, in records `[tag u8][len u32 LE][payload]`:
//! 1. sender: `MANIFEST` (zstd-compressed manifest bytes), `SIGNATURE`;
//! 2. receiver: checks both (the signer must be trusted there), then `WANT` (the 32-byte
//!    ids of the chunks it lacks), or `DONE` at once when it already has the release;
//! 3. sender: one `CHUNK` (id + stored object, already compressed) per wanted chunk, `END`;
//! 4. receiver: `DONE` (JSON: what it added) once the release is committed, or `ERROR`.
//!
//! The receiver verifies every chunk as it arrives and stores it at once, so a transfer cut
//! off halfway leaves valid chunks behind and the next attempt only asks for the rest. The
//! release appears (its manifest is committed) only when every chunk is there.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::chunk;
use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::keys::ReleaseSignature;
use crate::manifest::{MAX_MANIFEST_BYTES, Manifest};
use crate::store::Store;

const TAG_MANIFEST: u8 = 1;
const TAG_SIGNATURE: u8 = 2;
const TAG_WANT: u8 = 3;
const TAG_CHUNK: u8 = 4;
const TAG_END: u8 = 5;
const TAG_DONE: u8 = 6;
const TAG_ERROR: u8 = 7;

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
}

/// Progress of a send: bytes of chunk objects written so far, out of the total wanted.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub sent: u64,
    pub total: u64,
}

fn io(what: &str) -> impl Fn(std::io::Error) -> Error + '_ {
    move |err| Error::Io {
        path: PathBuf::from(what),
        err,
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
            Error::invalid(what, "the connection closed in the middle of a transfer")
        } else {
            io(what)(e)
        }
    })?;
    let len = u32::from_le_bytes(head[1..].try_into().expect("4 bytes"));
    if len > MAX_RECORD {
        return Err(Error::invalid(
            what,
            format!("oversized transfer record ({len} bytes)"),
        ));
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Error::invalid(what, "the connection closed in the middle of a transfer")
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
}

fn remote_error(payload: &[u8]) -> Error {
    match serde_json::from_slice::<WireErr>(payload) {
        Ok(e) => Error::Remote {
            message: e.message,
            hint: e.hint,
        },
        Err(_) => Error::Remote {
            message: String::from_utf8_lossy(payload).into_owned(),
            hint: None,
        },
    }
}

fn expect_done(tag: u8, payload: &[u8], what: &str) -> Result<Received> {
    match tag {
        TAG_DONE => serde_json::from_slice(payload)
            .map_err(|e| Error::invalid(what, format!("bad answer from the receiver: {e}"))),
        TAG_ERROR => Err(remote_error(payload)),
        other => Err(Error::invalid(
            what,
            format!("unexpected answer from the receiver (record {other})"),
        )),
    }
}

/// Sends release `id` from `store` to a `receive` at the other end of `(input, output)`.
/// `what` names the other end in errors (`web1`).
pub fn send(
    store: &Store,
    id: &Hash,
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
    let packed = zstd::bulk::compress(&manifest_bytes, 9).map_err(io(what))?;
    write_record(&mut w, TAG_MANIFEST, &[&packed]).map_err(io(what))?;
    write_record(&mut w, TAG_SIGNATURE, &[&sig.to_bytes()]).map_err(io(what))?;
    w.flush().map_err(io(what))?;

    let (tag, payload) = read_record(&mut input, what)?;
    let want: Vec<Hash> = match tag {
        TAG_WANT => {
            if payload.len() % 32 != 0 {
                return Err(Error::invalid(what, "bad chunk list from the receiver"));
            }
            let needed = manifest.chunk_set();
            let mut want = Vec::with_capacity(payload.len() / 32);
            for c in payload.chunks_exact(32) {
                let h = Hash(c.try_into().expect("32 bytes"));
                if !needed.contains(&h) {
                    return Err(Error::invalid(
                        what,
                        format!("the receiver asked for chunk {h}, not part of this release"),
                    ));
                }
                want.push(h);
            }
            want
        }
        _ => {
            let received = expect_done(tag, &payload, what)?;
            return Ok(Sent {
                received,
                chunks_sent: 0,
                bytes_sent: w.bytes,
            });
        }
    };
    let total: u64 = want.iter().map(|h| store.chunk_size(h).unwrap_or(0)).sum();
    let mut sent = 0;
    progress(Progress { sent, total });
    for h in &want {
        let object = store.chunk_object(h)?;
        chunk::decode(&object, h).map_err(|reason| Error::Corrupt {
            kind: "chunk",
            id: h.to_hex(),
            reason,
        })?;
        write_record(&mut w, TAG_CHUNK, &[&h.0, &object]).map_err(io(what))?;
        sent += object.len() as u64;
        progress(Progress { sent, total });
    }
    write_record(&mut w, TAG_END, &[]).map_err(io(what))?;
    w.flush().map_err(io(what))?;
    let (tag, payload) = read_record(&mut input, what)?;
    let received = expect_done(tag, &payload, what)?;
    Ok(Sent {
        received,
        chunks_sent: want.len(),
        bytes_sent: w.bytes,
    })
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
        Err(e) => {
            let body = serde_json::to_vec(&WireErr {
                message: e.to_string(),
                hint: e.hint(),
            })
            .expect("serialises");
            let _ = write_record(&mut output, TAG_ERROR, &[&body]);
        }
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
    let (tag, packed) = read_record(input, what)?;
    if tag != TAG_MANIFEST {
        return Err(Error::invalid(
            what,
            "a transfer must start with a manifest",
        ));
    }
    let manifest_bytes = zstd::bulk::decompress(&packed, MAX_MANIFEST_BYTES as usize)
        .map_err(|e| Error::invalid(what, format!("undecodable manifest: {e}")))?;
    let id = Hash::of(&manifest_bytes);
    let manifest = Manifest::from_bytes(&manifest_bytes, &format!("release {}", id.short()))?;
    let (tag, sig_bytes) = read_record(input, what)?;
    if tag != TAG_SIGNATURE {
        return Err(Error::invalid(what, "a signature must follow the manifest"));
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
    if store.has_release(&id) {
        return Ok(Received {
            release: id.to_hex(),
            app: manifest.app,
            version: manifest.version,
            already: true,
            new_chunks: 0,
            had_chunks: needed.len(),
        });
    }
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
    loop {
        let (tag, payload) = read_record(input, what)?;
        match tag {
            TAG_CHUNK => {
                if payload.len() < 33 {
                    return Err(Error::invalid(what, "chunk record too short"));
                }
                let h = Hash(payload[..32].try_into().expect("32 bytes"));
                if !pending.remove(&h) {
                    return Err(Error::invalid(what, format!("chunk {h} was not asked for")));
                }
                let object = &payload[32..];
                chunk::decode(object, &h).map_err(|reason| {
                    Error::invalid(what, format!("chunk {h} arrived corrupt: {reason}"))
                })?;
                store.put_chunk_object(&h, object)?;
            }
            TAG_END => break,
            other => {
                return Err(Error::invalid(
                    what,
                    format!("unexpected record {other} in a transfer"),
                ));
            }
        }
    }
    if let Some(h) = pending.iter().next() {
        return Err(Error::invalid(
            what,
            format!("the transfer ended without chunk {h}"),
        ));
    }
    store.commit_release(&manifest, &sig)?;
    Ok(Received {
        release: id.to_hex(),
        app: manifest.app,
        version: manifest.version,
        already: false,
        new_chunks: want.len(),
        had_chunks: needed.len() - want.len(),
    })
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
                exclude: &[],
            },
        )
        .unwrap()
        .release
    }

    /// Runs a receive on its own thread over a socket pair; returns both ends' results.
    fn transfer(
        from: &Store,
        to_root: &std::path::Path,
        id: &Hash,
    ) -> (Result<Sent>, Result<Received>) {
        let (a, b) = UnixStream::pair().unwrap();
        let root = to_root.to_owned();
        let t = std::thread::spawn(move || {
            let store = store_in(&root);
            receive(&store, b.try_clone().unwrap(), b)
        });
        let sent = send(from, id, a.try_clone().unwrap(), a, "peer", |_| {});
        (sent, t.join().unwrap())
    }

    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn sends_only_missing_chunks_and_refuses_untrusted_signers() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir(&src).unwrap();
        let mut big = noise(8 << 20, 7);
        std::fs::write(src.join("big.bin"), &big).unwrap();
        std::fs::write(src.join("small.txt"), "v1").unwrap();
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
        assert!(sent.bytes_sent < 3 << 20, "sent {} bytes", sent.bytes_sent);
        assert!(sent.received.had_chunks > 0);

        // Again: nothing but the manifest.
        let (sent, _) = transfer(&a, &b_root, &v2);
        let sent = sent.unwrap();
        assert!(sent.received.already);
        assert_eq!(sent.chunks_sent, 0);
    }

    #[test]
    fn an_interrupted_transfer_resumes_and_corrupt_chunks_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("big.bin"), noise(6 << 20, 3)).unwrap();
        let a = store_in(&tmp.path().join("a"));
        let v1 = release(&a, &src, "1");
        let b_root = tmp.path().join("b");
        let b = store_in(&b_root);
        b.keys()
            .trust(&a.keys().public_key().unwrap(), "d")
            .unwrap();
        let total = a.manifest(&v1).unwrap().chunk_set().len();
        assert!(total > 4);

        // The sender dies after two chunks: what arrived stays, the release does not appear.
        let (s, r) = UnixStream::pair().unwrap();
        let root = b_root.clone();
        let t = std::thread::spawn(move || receive(&store_in(&root), r.try_clone().unwrap(), r));
        let mut reader = s.try_clone().unwrap();
        let mut w = s;
        let manifest = a.manifest_bytes(&v1).unwrap();
        write_record(
            &mut w,
            TAG_MANIFEST,
            &[&zstd::bulk::compress(&manifest, 3).unwrap()],
        )
        .unwrap();
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

        // The next attempt asks only for what is still missing.
        let (sent, got) = transfer(&a, &b_root, &v1);
        let sent = sent.unwrap();
        got.unwrap();
        assert_eq!(sent.chunks_sent, total - 2);
        assert_eq!(sent.received.had_chunks, 2);
        assert!(b.verify(Some(&v1)).unwrap().problems.is_empty());
    }
}
