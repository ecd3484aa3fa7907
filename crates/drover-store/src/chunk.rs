//! Content-defined chunking (FastCDC) and the chunk object encoding (raw or zstd).
//! A chunk object is one tag byte then the payload; its name is the BLAKE3 of the raw data.

use std::cell::RefCell;
use std::io::Read;

use crate::hash::Hash;

pub const MIN_CHUNK: usize = 64 << 10;
pub const AVG_CHUNK: usize = 256 << 10;
pub const MAX_CHUNK: usize = 1 << 20;

const TAG_RAW: u8 = 0;
const TAG_ZSTD: u8 = 1;
const ZSTD_LEVEL: i32 = 3;

/// Files up to this size are read whole; larger ones are streamed.
const SLURP_LIMIT: u64 = 8 << 20;

thread_local! {
    // One zstd context per thread: creating one per chunk costs more than compressing it.
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
    static SLURP: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The zstd object of `data` (tag byte, then the frame), compressed straight into place.
fn compress(data: &[u8]) -> Option<Vec<u8>> {
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.is_none() {
            *c = zstd::bulk::Compressor::new(ZSTD_LEVEL).ok();
        }
        let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(data.len()) + 1);
        out.push(TAG_ZSTD);
        let mut cursor = std::io::Cursor::new(&mut out);
        cursor.set_position(1);
        c.as_mut()?.compress_to_buffer(data, &mut cursor).ok()?;
        Some(out)
    })
}

fn decompress(data: &[u8]) -> std::io::Result<Vec<u8>> {
    DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(zstd::bulk::Decompressor::new()?);
        }
        d.as_mut().expect("just set").decompress(data, MAX_CHUNK)
    })
}

/// Encodes raw chunk data as a store object: zstd when that is smaller, else raw.
pub fn encode(data: &[u8]) -> Vec<u8> {
    Encoder::default().encode(data)
}

/// Encodes the chunks of one file in order. After a chunk zstd barely shrinks, the next
/// `SKIP_AFTER_INCOMPRESSIBLE` are stored raw without trying, twice as many after each
/// further failed try (up to 64): media, archives and other compressed data stay
/// incompressible through the file, and trying costs as much as compressing. The encoding
/// never changes a chunk's name (the hash of its raw data).
#[derive(Debug, Default)]
pub struct Encoder {
    skip: u32,
    /// How many to skip after the next incompressible chunk (0: the first time).
    backoff: u32,
    /// Every chunk is stored as it is (see `uncompressed`).
    never: bool,
}

const SKIP_AFTER_INCOMPRESSIBLE: u32 = 7;

impl Encoder {
    /// An encoder that stores every chunk uncompressed: for a transfer's chunks decoded from
    /// deltas, which compressing again costs more than they took to arrive (gc compresses
    /// them later).
    pub fn uncompressed() -> Encoder {
        Encoder {
            never: true,
            ..Encoder::default()
        }
    }

    pub fn encode(&mut self, data: &[u8]) -> Vec<u8> {
        if self.never {
            return raw(data);
        }
        if self.skip > 0 {
            self.skip -= 1;
            return raw(data);
        }
        match compress(data) {
            Some(object) => {
                let compressed = object.len() - 1;
                if compressed as u64 * 100 > data.len() as u64 * 97 {
                    self.skip = self.backoff.max(SKIP_AFTER_INCOMPRESSIBLE);
                    self.backoff = (self.skip * 2).min(64);
                } else {
                    self.backoff = 0;
                }
                if compressed + 1 < data.len() {
                    return object;
                }
                raw(data)
            }
            None => raw(data),
        }
    }
}

/// Whether an object holds its data uncompressed.
pub fn is_raw(object: &[u8]) -> bool {
    object.first() == Some(&TAG_RAW)
}

fn raw(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 1);
    out.push(TAG_RAW);
    out.extend_from_slice(data);
    out
}

/// Largest base a delta is made against (see `delta_encode`).
pub const MAX_DELTA_BASE: usize = 3 << 20;
const DELTA_WINDOW_LOG: u32 = 23;

/// Compresses `data` against `base`, raw content the receiving side also holds (earlier
/// chunks of the same file): what is already in `base` costs a few bytes per match.
pub fn delta_encode(base: &[u8], data: &[u8]) -> Option<Vec<u8>> {
    if base.len() > MAX_DELTA_BASE {
        return None;
    }
    delta_encode_window(base, data, DELTA_WINDOW_LOG)
}

/// As `delta_encode`, with a window of `2^window_log` bytes (which must hold base and data).
pub fn delta_encode_window(base: &[u8], data: &[u8], window_log: u32) -> Option<Vec<u8>> {
    use zstd::zstd_safe::{CCtx, CParameter};
    let mut cctx = CCtx::create();
    cctx.set_parameter(CParameter::CompressionLevel(ZSTD_LEVEL))
        .ok()?;
    cctx.set_parameter(CParameter::WindowLog(window_log)).ok()?;
    cctx.ref_prefix(base).ok()?;
    let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(data.len()));
    cctx.compress2(&mut out, data).ok()?;
    Some(out)
}

/// Undoes `delta_encode` and checks the result against its name.
pub fn delta_decode(base: &[u8], delta: &[u8], expected: &Hash) -> Result<Vec<u8>, String> {
    use zstd::zstd_safe::{DCtx, DParameter};
    if base.len() > MAX_DELTA_BASE {
        return Err("delta base too large".into());
    }
    let mut dctx = DCtx::create();
    dctx.set_parameter(DParameter::WindowLogMax(DELTA_WINDOW_LOG))
        .map_err(|c| format!("zstd error {c}"))?;
    dctx.ref_prefix(base)
        .map_err(|c| format!("zstd error {c}"))?;
    let mut out = Vec::with_capacity(MAX_CHUNK);
    dctx.decompress(&mut out, delta).map_err(|c| {
        format!(
            "cannot decompress the delta: {}",
            zstd::zstd_safe::get_error_name(c)
        )
    })?;
    let actual = Hash::of(&out);
    if actual != *expected {
        return Err(format!("content hashes to {}", actual.short()));
    }
    Ok(out)
}

/// Decodes a store object and checks it against its name. Never returns unverified data.
pub fn decode(object: &[u8], expected: &Hash) -> Result<Vec<u8>, String> {
    let data = match object.split_first() {
        Some((&TAG_RAW, rest)) => rest.to_vec(),
        Some((&TAG_ZSTD, rest)) => {
            decompress(rest).map_err(|e| format!("cannot decompress: {e}"))?
        }
        Some((tag, _)) => return Err(format!("unknown encoding tag {tag}")),
        None => return Err("empty object".into()),
    };
    if data.len() > MAX_CHUNK {
        return Err(format!("{} bytes is over the chunk limit", data.len()));
    }
    let actual = Hash::of(&data);
    if actual != *expected {
        return Err(format!("content hashes to {}", actual.short()));
    }
    Ok(data)
}

/// Splits a reader into content-defined chunks, calling `f` with each one in order.
pub fn for_each_chunk(
    mut reader: impl Read,
    size_hint: u64,
    mut f: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> std::io::Result<()> {
    if size_hint <= SLURP_LIMIT {
        // One buffer per thread, reused from file to file: no fresh pages to fault in.
        let mut buf = SLURP.with(|b| std::mem::take(&mut *b.borrow_mut()));
        buf.clear();
        let result = (|| {
            reader.read_to_end(&mut buf)?;
            for c in fastcdc::v2020::FastCDC::new(&buf, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK) {
                f(&buf[c.offset..c.offset + c.length])?;
            }
            Ok(())
        })();
        if buf.capacity() <= 2 * SLURP_LIMIT as usize {
            SLURP.with(|b| *b.borrow_mut() = buf);
        }
        return result;
    }
    for c in fastcdc::v2020::StreamCDC::new(reader, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK) {
        let c = c.map_err(|e| match e {
            fastcdc::v2020::Error::IoError(io) => io,
            other => std::io::Error::other(other.to_string()),
        })?;
        f(&c.data)?;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Deterministic incompressible bytes (xorshift).
    pub(crate) fn noise(len: usize, seed: u64) -> Vec<u8> {
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
    fn deltas_round_trip_and_are_small_for_small_changes() {
        let base = noise(300_000, 7);
        let mut data = base[1000..250_000].to_vec();
        data[5000..5100].copy_from_slice(&[7u8; 100]);
        let h = Hash::of(&data);
        let d = delta_encode(&base, &data).unwrap();
        assert!(d.len() < 2000, "{} bytes", d.len());
        assert_eq!(delta_decode(&base, &d, &h).unwrap(), data);
        // The wrong base, or a wrong name, is refused.
        let mut other = base.clone();
        other[2000] ^= 1;
        assert!(delta_decode(&other, &d, &h).is_err());
        assert!(delta_decode(&base, &d, &Hash::of(b"x")).is_err());
    }

    #[test]
    fn an_incompressible_chunk_makes_the_next_ones_skip_the_attempt() {
        let noise = noise(100_000, 1);
        let text = b"the same line again\n".repeat(5000);
        let mut enc = Encoder::default();
        assert_eq!(enc.encode(&text)[0], TAG_ZSTD);
        assert_eq!(enc.encode(&noise)[0], TAG_RAW);
        for _ in 0..SKIP_AFTER_INCOMPRESSIBLE {
            let o = enc.encode(&text);
            assert_eq!(o[0], TAG_RAW);
            assert_eq!(decode(&o, &Hash::of(&text)).unwrap(), text);
        }
        assert_eq!(enc.encode(&text)[0], TAG_ZSTD, "it tries again");

        // Failing again and again, it tries less and less often.
        let mut enc = Encoder::default();
        assert_eq!(enc.encode(&noise)[0], TAG_RAW);
        for skipped in [SKIP_AFTER_INCOMPRESSIBLE, 2 * SKIP_AFTER_INCOMPRESSIBLE] {
            for _ in 0..skipped {
                assert_eq!(enc.encode(&text)[0], TAG_RAW);
            }
            assert_eq!(enc.encode(&noise)[0], TAG_RAW, "a try that fails");
        }
        for _ in 0..4 * SKIP_AFTER_INCOMPRESSIBLE {
            assert_eq!(enc.encode(&text)[0], TAG_RAW);
        }
        assert_eq!(enc.encode(&text)[0], TAG_ZSTD);
        // A chunk that compresses starts the count over.
        enc.encode(&noise);
        for _ in 0..SKIP_AFTER_INCOMPRESSIBLE {
            enc.encode(&text);
        }
        assert_eq!(enc.encode(&text)[0], TAG_ZSTD);
    }

    #[test]
    fn encode_decode() {
        let text = b"hello hello hello hello hello hello hello hello".repeat(100);
        let obj = encode(&text);
        assert_eq!(obj[0], TAG_ZSTD);
        assert_eq!(decode(&obj, &Hash::of(&text)).unwrap(), text);
        let noise: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let obj = encode(&noise);
        assert_eq!(decode(&obj, &Hash::of(&noise)).unwrap(), noise);
        let mut bad = encode(&text);
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(decode(&bad, &Hash::of(&text)).is_err());
    }

    #[test]
    fn chunks_cover_the_input() {
        let data: Vec<u8> = (0..3_000_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 7) as u8)
            .collect();
        for hint in [data.len() as u64, u64::MAX] {
            let mut joined = Vec::new();
            for_each_chunk(&data[..], hint, |c| {
                assert!(c.len() <= MAX_CHUNK);
                joined.extend_from_slice(c);
                Ok(())
            })
            .unwrap();
            assert_eq!(joined, data);
        }
    }
}
