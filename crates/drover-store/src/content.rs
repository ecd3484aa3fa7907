//! Whether a file entry's chunks make the file it describes: each chunk as long as the entry
//! says, and their content, in order, hashing to the file's hash (used by `unpack`, `verify`).

use crate::error::Result;
use crate::hash::Hash;
use crate::manifest::ChunkRef;

/// Checks one file entry (`hash`, `chunks`; its size is the sum of the chunk lengths, which
/// `Manifest::validate` checked). `len` gives a chunk's true length when it is known without
/// reading it; `read` gives its verified raw data. `Ok(Err(why))` when the chunks do not make
/// the file; `Err` when a chunk cannot be read.
pub(crate) fn check_file(
    hash: &Hash,
    chunks: &[ChunkRef],
    len: &dyn Fn(&Hash) -> Option<u32>,
    read: &dyn Fn(&Hash) -> Result<Vec<u8>>,
) -> Result<std::result::Result<(), String>> {
    let wrong_len = |c: &ChunkRef, actual: usize| {
        Err(format!(
            "its chunk {} is {actual} bytes long, not {} as the manifest says",
            c.0.short(),
            c.1
        ))
    };
    let wrong_hash = |actual: Hash| {
        Err(format!(
            "its chunks make content that hashes to {}, not to the file's hash {}",
            actual.short(),
            hash.short()
        ))
    };
    if chunks.len() <= 1 {
        // One chunk (or none): the file's hash is the chunk's, no need to read it again.
        let content = match chunks.first() {
            Some(c) => {
                let actual = match len(&c.0) {
                    Some(n) => n as usize,
                    None => read(&c.0)?.len(),
                };
                if actual != c.1 as usize {
                    return Ok(wrong_len(c, actual));
                }
                c.0
            }
            None => Hash::of(b""),
        };
        return Ok(if content == *hash {
            Ok(())
        } else {
            wrong_hash(content)
        });
    }
    let mut hasher = blake3::Hasher::new();
    for c in chunks {
        let data = read(&c.0)?;
        if data.len() != c.1 as usize {
            return Ok(wrong_len(c, data.len()));
        }
        hasher.update(&data);
    }
    let actual = Hash::from(hasher.finalize());
    Ok(if actual == *hash {
        Ok(())
    } else {
        wrong_hash(actual)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn a_file_is_what_its_chunks_make_in_order() {
        let parts: Vec<Vec<u8>> = vec![b"first ".to_vec(), b"second ".to_vec(), b"third".to_vec()];
        let store: HashMap<Hash, Vec<u8>> =
            parts.iter().map(|p| (Hash::of(p), p.clone())).collect();
        let read = |h: &Hash| Ok(store[h].clone());
        let unknown = |_: &Hash| None;
        let refs: Vec<ChunkRef> = parts
            .iter()
            .map(|p| ChunkRef(Hash::of(p), p.len() as u32))
            .collect();
        let whole = Hash::of(&parts.concat());
        assert_eq!(check_file(&whole, &refs, &unknown, &read).unwrap(), Ok(()));

        let mut swapped = refs.clone();
        swapped.swap(0, 2);
        let why = check_file(&whole, &swapped, &unknown, &read)
            .unwrap()
            .unwrap_err();
        assert!(why.contains("hashes to"), "{why}");

        let mut long = refs.clone();
        long[1].1 += 1;
        let why = check_file(&whole, &long, &unknown, &read)
            .unwrap()
            .unwrap_err();
        assert!(why.contains("bytes long"), "{why}");

        // One chunk: its hash is the file's, its length as known.
        let one = [refs[0]];
        let len = |_: &Hash| Some(6);
        assert_eq!(check_file(&refs[0].0, &one, &len, &read).unwrap(), Ok(()));
        assert!(check_file(&whole, &one, &len, &read).unwrap().is_err());
        let lies = [ChunkRef(refs[0].0, 1)];
        assert!(check_file(&refs[0].0, &lies, &len, &read).unwrap().is_err());
        // No chunk: the empty file.
        assert_eq!(
            check_file(&Hash::of(b""), &[], &len, &read).unwrap(),
            Ok(())
        );
        assert!(check_file(&whole, &[], &len, &read).unwrap().is_err());
    }
}
