//! Python bytecode that stays valid in a release tree. A `.pyc` written by `compileall` or
//! pip records its source's mtime and size, and Python trusts it only while they match; in a
//! release tree every file's mtime is its cache file's (see `Store::materialise`), so such a
//! pyc is stale there, and Python would compile the source again at every start and try to
//! write the result into the read-only tree. A build therefore stores each pyc that is valid
//! for its source in the built directory as an unchecked hash-based pyc (PEP 552) of that
//! same source: the same code, valid wherever the release is materialised. A stale pyc, or
//! one whose source is not beside it, is stored as it is.

use std::path::Path;

/// CPython 3.7's magic number, the first with hash-based pycs.
const FIRST_HASH_BASED: u16 = 3394;
/// CPython 3.11's: from it on, source hashes are SipHash-1-3 (SipHash-2-4 before).
const FIRST_SIPHASH13: u16 = 3495;

/// The source a pyc under `__pycache__` was compiled from: `DIR/__pycache__/NAME.TAG.pyc`
/// (TAG such as `cpython-311` or `cpython-311.opt-1`) is `DIR/NAME.py`.
pub fn source_of(rel: &str) -> Option<String> {
    let (dir, file) = rel.rsplit_once('/').unwrap_or(("", rel));
    let file = file.strip_suffix(".pyc")?;
    let dir = if dir == "__pycache__" {
        ""
    } else {
        dir.strip_suffix("/__pycache__")?
    };
    let (name, tag) = file.split_once('.')?;
    if name.is_empty() || tag.is_empty() {
        return None;
    }
    Some(if dir.is_empty() {
        format!("{name}.py")
    } else {
        format!("{dir}/{name}.py")
    })
}

/// `pyc` as an unchecked hash-based pyc of `source`, when it is a timestamp-based pyc
/// valid for `source` (the mtime and size it records are `source`'s): same length, same
/// code. `None`: leave it as it is.
pub fn portable(pyc: &[u8], source: &Path) -> Option<Vec<u8>> {
    if pyc.len() < 16 || &pyc[2..4] != b"\r\n" {
        return None;
    }
    let magic = u16::from_le_bytes([pyc[0], pyc[1]]);
    let flags = u32::from_le_bytes(pyc[4..8].try_into().ok()?);
    if magic < FIRST_HASH_BASED || flags != 0 {
        return None;
    }
    let meta = std::fs::metadata(source).ok()?;
    let mtime = u32::from_le_bytes(pyc[8..12].try_into().ok()?);
    let size = u32::from_le_bytes(pyc[12..16].try_into().ok()?);
    use std::os::unix::fs::MetadataExt;
    if !meta.is_file() || mtime != meta.mtime() as u32 || size != meta.len() as u32 {
        return None;
    }
    let text = std::fs::read(source).ok()?;
    // What the pyc says about its source was true as the source was read.
    if text.len() as u64 != meta.len() {
        return None;
    }
    let key = u64::from(u32::from_le_bytes(pyc[0..4].try_into().ok()?));
    let hash = if magic >= FIRST_SIPHASH13 {
        siphash(1, 3, key, &text)
    } else {
        siphash(2, 4, key, &text)
    };
    let mut out = pyc.to_vec();
    // Hash-based (bit 0), source not checked (bit 1 clear): Python takes it as it is.
    out[4..8].copy_from_slice(&1u32.to_le_bytes());
    out[8..16].copy_from_slice(&hash.to_le_bytes());
    Some(out)
}

/// SipHash-c-d with the key (`k0`, 0), as CPython's `_Py_KeyedHash` computes source hashes.
fn siphash(c: usize, d: usize, k0: u64, data: &[u8]) -> u64 {
    let k1 = 0u64;
    let mut v = [
        k0 ^ 0x736f_6d65_7073_6575,
        k1 ^ 0x646f_7261_6e64_6f6d,
        k0 ^ 0x6c79_6765_6e65_7261,
        k1 ^ 0x7465_6462_7974_6573,
    ];
    fn round(v: &mut [u64; 4]) {
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13) ^ v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16) ^ v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21) ^ v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17) ^ v[2];
        v[2] = v[2].rotate_left(32);
    }
    let mut blocks = data.chunks_exact(8);
    for b in &mut blocks {
        let m = u64::from_le_bytes(b.try_into().expect("8 bytes"));
        v[3] ^= m;
        for _ in 0..c {
            round(&mut v);
        }
        v[0] ^= m;
    }
    let rest = blocks.remainder();
    let mut last = [0u8; 8];
    last[..rest.len()].copy_from_slice(rest);
    last[7] = data.len() as u8;
    let m = u64::from_le_bytes(last);
    v[3] ^= m;
    for _ in 0..c {
        round(&mut v);
    }
    v[0] ^= m;
    v[2] ^= 0xff;
    for _ in 0..d {
        round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CPython 3.11's `_imp.source_hash(importlib.util._RAW_MAGIC_NUMBER, data)`.
    #[test]
    fn source_hashes_are_cpythons() {
        let key = 168_627_623; // 3.11's raw magic number, b"\xa7\r\r\n"
        let hex = |h: u64| {
            h.to_le_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        assert_eq!(hex(siphash(1, 3, key, b"print(1)\n")), "da812d7f407a3059");
        assert_eq!(hex(siphash(1, 3, key, b"")), "738d9cd5d5e87f73");
        let bytes: Vec<u8> = (0..100).collect();
        assert_eq!(hex(siphash(1, 3, key, &bytes)), "bcdfe9323eeab288");
    }

    #[test]
    fn a_pycs_source_is_beside_its_pycache() {
        assert_eq!(
            source_of("app/__pycache__/views.cpython-311.pyc").as_deref(),
            Some("app/views.py")
        );
        assert_eq!(
            source_of("__pycache__/m.cpython-311.opt-1.pyc").as_deref(),
            Some("m.py")
        );
        assert_eq!(source_of("app/views.pyc"), None);
        assert_eq!(source_of("app/__pycache__/x.pyc"), None);
        assert_eq!(source_of("app/__pycache__/notes.txt"), None);
    }

    #[test]
    fn only_a_pyc_valid_for_its_source_is_made_portable() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("m.py");
        std::fs::write(&src, b"print(1)\n").unwrap();
        let m = std::fs::metadata(&src).unwrap();
        let mut pyc = b"\xa7\r\r\n".to_vec();
        pyc.extend_from_slice(&0u32.to_le_bytes());
        pyc.extend_from_slice(&(m.mtime() as u32).to_le_bytes());
        pyc.extend_from_slice(&(m.len() as u32).to_le_bytes());
        pyc.extend_from_slice(b"code");
        let out = portable(&pyc, &src).expect("valid for its source");
        assert_eq!(out.len(), pyc.len());
        assert_eq!(&out[4..8], &1u32.to_le_bytes());
        assert_eq!(
            &out[8..16],
            &siphash(1, 3, 168_627_623, b"print(1)\n").to_le_bytes()
        );
        assert_eq!(&out[16..], b"code");
        // Stale (another size recorded), already hash-based, or no source: as it is.
        let mut stale = pyc.clone();
        stale[12] ^= 1;
        assert!(portable(&stale, &src).is_none());
        assert!(portable(&out, &src).is_none());
        assert!(portable(&pyc, &dir.path().join("gone.py")).is_none());
    }
}
