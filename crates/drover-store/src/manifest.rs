//! The release manifest: every directory, file and symlink of a release plus how to run it.
//! Its canonical JSON bytes are hashed into the release id; `validate` refuses escaping paths.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Component, Path};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::hash::Hash;

pub const FORMAT: u32 = 1;

/// The largest manifest accepted (from an archive or the store).
pub const MAX_MANIFEST_BYTES: u64 = 256 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub app: String,
    pub version: String,
    pub runtime: drover_config::Runtime,
    /// The releases this one runs with, by the name its config gives each (`[depends]`),
    /// pinned by id: part of the bytes hashed, so a changed dependency is another release.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub depends: BTreeMap<String, Hash>,
    /// Sorted by path (bytewise); a directory comes before what it holds.
    pub entries: Vec<Entry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Entry {
    Dir {
        path: String,
        mode: u32,
    },
    File {
        path: String,
        mode: u32,
        size: u64,
        hash: Hash,
        chunks: Vec<ChunkRef>,
    },
    Symlink {
        path: String,
        target: String,
    },
}

/// Read field by field into one shape, then checked against its type: serde's derive for an
/// internally tagged enum buffers every entry first, which made reading a manifest of 3,000
/// files cost 5 ms.
impl<'de> Deserialize<'de> for Entry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Entry, D::Error> {
        use serde::de::Error as _;
        #[derive(Deserialize)]
        #[serde(rename_all = "lowercase")]
        enum Kind {
            Dir,
            File,
            Symlink,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Any {
            #[serde(rename = "type")]
            kind: Kind,
            path: String,
            mode: Option<u32>,
            size: Option<u64>,
            hash: Option<Hash>,
            chunks: Option<Vec<ChunkRef>>,
            target: Option<String>,
        }
        let e = Any::deserialize(d)?;
        let (kind, fields): (&str, &[&str]) = match e.kind {
            Kind::Dir => ("dir", &["path", "mode"]),
            Kind::File => ("file", &["path", "mode", "size", "hash", "chunks"]),
            Kind::Symlink => ("symlink", &["path", "target"]),
        };
        let present = [
            ("mode", e.mode.is_some()),
            ("size", e.size.is_some()),
            ("hash", e.hash.is_some()),
            ("chunks", e.chunks.is_some()),
            ("target", e.target.is_some()),
        ];
        for (field, here) in present {
            if here && !fields.contains(&field) {
                return Err(D::Error::custom(format!(
                    "unknown field `{field}` in a {kind} entry"
                )));
            }
        }
        let missing =
            |field| D::Error::custom(format!("missing field `{field}` in a {kind} entry"));
        Ok(match e.kind {
            Kind::Dir => Entry::Dir {
                path: e.path,
                mode: e.mode.ok_or_else(|| missing("mode"))?,
            },
            Kind::File => Entry::File {
                path: e.path,
                mode: e.mode.ok_or_else(|| missing("mode"))?,
                size: e.size.ok_or_else(|| missing("size"))?,
                hash: e.hash.ok_or_else(|| missing("hash"))?,
                chunks: e.chunks.ok_or_else(|| missing("chunks"))?,
            },
            Kind::Symlink => Entry::Symlink {
                path: e.path,
                target: e.target.ok_or_else(|| missing("target"))?,
            },
        })
    }
}

/// One content-defined chunk of a file: its hash and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, std::hash::Hash, Serialize, Deserialize)]
pub struct ChunkRef(pub Hash, pub u32);

impl Entry {
    pub fn path(&self) -> &str {
        match self {
            Entry::Dir { path, .. } | Entry::File { path, .. } | Entry::Symlink { path, .. } => {
                path
            }
        }
    }
}

impl Manifest {
    /// The canonical bytes: compact JSON, fields in declaration order, maps sorted.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a manifest always serialises")
    }

    pub fn id(&self) -> Hash {
        Hash::of(&self.to_bytes())
    }

    /// Parses and validates manifest bytes; `what` names their source in errors.
    /// Only canonical bytes are accepted, so one release has exactly one id.
    pub fn from_bytes(bytes: &[u8], what: &str) -> Result<Manifest> {
        let m: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| Error::invalid(what, format!("bad release manifest: {e}")))?;
        m.validate(what)?;
        if m.to_bytes() != bytes {
            return Err(Error::invalid(
                what,
                "release manifest is not in canonical form",
            ));
        }
        Ok(m)
    }

    /// Sum of file sizes: the logical size of the release.
    pub fn bytes(&self) -> u64 {
        self.files().map(|(_, _, size, _, _)| size).sum()
    }

    pub fn file_count(&self) -> usize {
        self.files().count()
    }

    pub fn files(&self) -> impl Iterator<Item = (&str, u32, u64, &Hash, &[ChunkRef])> {
        self.entries.iter().filter_map(|e| match e {
            Entry::File {
                path,
                mode,
                size,
                hash,
                chunks,
            } => Some((path.as_str(), *mode, *size, hash, chunks.as_slice())),
            _ => None,
        })
    }

    /// Every distinct chunk the release needs.
    pub fn chunk_set(&self) -> HashSet<Hash> {
        self.files()
            .flat_map(|(_, _, _, _, chunks)| chunks.iter().map(|c| c.0))
            .collect()
    }

    /// Refuses anything that could escape or confuse a materialised tree.
    pub fn validate(&self, what: &str) -> Result<()> {
        let bad = |msg: String| Err(Error::invalid(what, msg));
        if self.format != FORMAT {
            return bad(format!("unsupported manifest format {}", self.format));
        }
        if !drover_config::valid_name(&self.app) {
            return bad(format!("`{}` is not a valid app name", self.app));
        }
        if !drover_config::valid_version(&self.version) {
            return bad(format!("`{}` is not a valid version", self.version));
        }
        for name in self.depends.keys() {
            if !drover_config::valid_name(name) {
                return bad(format!("`{name}` is not a valid dependency name"));
            }
        }
        if let Err((m, _)) = self.runtime.provides.check() {
            return bad(m);
        }
        let mut dirs: HashSet<&str> = HashSet::new();
        let mut prev: Option<&str> = None;
        let mut has_links = false;
        for entry in &self.entries {
            let path = entry.path();
            check_path(path).or_else(|m| bad(format!("entry `{path}`: {m}")))?;
            if let Some(p) = prev
                && p.as_bytes() >= path.as_bytes()
            {
                return bad(format!("entry `{path}` is duplicated or out of order"));
            }
            prev = Some(path);
            if let Some((parent, _)) = path.rsplit_once('/')
                && !dirs.contains(parent)
            {
                return bad(format!(
                    "entry `{path}`: its parent `{parent}` is not a directory of the release"
                ));
            }
            match entry {
                Entry::Dir { mode, .. } => {
                    if mode & !0o7777 != 0 {
                        return bad(format!("entry `{path}`: bad mode {mode:o}"));
                    }
                    dirs.insert(path);
                }
                Entry::File {
                    mode, size, chunks, ..
                } => {
                    if mode & !0o7777 != 0 {
                        return bad(format!("entry `{path}`: bad mode {mode:o}"));
                    }
                    let sum: u64 = chunks.iter().map(|c| u64::from(c.1)).sum();
                    if sum != *size {
                        return bad(format!(
                            "entry `{path}`: chunks add up to {sum} bytes, not {size}"
                        ));
                    }
                    if chunks
                        .iter()
                        .any(|c| c.1 == 0 || c.1 as usize > crate::chunk::MAX_CHUNK)
                    {
                        return bad(format!("entry `{path}`: a chunk has an impossible length"));
                    }
                }
                Entry::Symlink { target, .. } => {
                    check_symlink(target)
                        .or_else(|m| bad(format!("symlink `{path}` -> `{target}`: {m}")))?;
                    has_links = true;
                }
            }
        }
        // Every manifest read is validated: one without symlinks costs no tree.
        if !has_links {
            return Ok(());
        }
        let links = self.entries.iter().map(|e| match e {
            Entry::Symlink { path, target } => (path.as_str(), Some(target.as_str())),
            other => (other.path(), None),
        });
        check_links(links)
            .or_else(|(path, target, m)| bad(format!("symlink `{path}` -> `{target}`: {m}")))
    }
}

/// Resolves every symlink of a release through the others, as the kernel will in its tree
/// (see `Links`). `entries`: every path of the release with its symlink target (`None` for a
/// directory or file), sorted, each after its parent directory. A link whose target reads as
/// outside the release (absolute, or climbing above its root: see `points_outside`) is a
/// leaf, never resolved further; one that reads as inside must resolve inside, also through
/// the release's other links. The first symlink that does not, or loops, with why.
pub(crate) fn check_links<'a>(
    entries: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
) -> std::result::Result<(), (&'a str, &'a str, String)> {
    let mut links = Links::default();
    let mut ids: HashMap<&str, u32> = HashMap::new();
    for (path, target) in entries {
        let id = links.parent.len() as u32;
        let (parent, name) = match path.rsplit_once('/') {
            Some((dir, name)) => (ids.get(dir).copied().unwrap_or(ROOT), name),
            None => (ROOT, path),
        };
        links.parent.push(parent);
        links.target.push(target);
        links.path.push(path);
        links.children.insert((parent, name), id);
        ids.insert(path, id);
    }
    for id in 0..links.parent.len() as u32 {
        if let Some(target) = links.target[id as usize] {
            let path = links.path[id as usize];
            links.resolve(id, 0).map_err(|m| (path, target, m))?;
        }
    }
    Ok(())
}

/// Symlinks followed within one resolution, at most (the kernel's own limit).
const MAX_LINK_DEPTH: usize = 40;

/// The release root's node id (no entry has it).
const ROOT: u32 = u32::MAX;

/// Where a link leads that points outside the release (no entry has it).
const OUTSIDE: u32 = u32::MAX - 1;

/// A place in a release tree: a node (an entry, or the root), and how many names below it
/// that the release does not hold (or that are below a file). Such a name cannot lead
/// anywhere else, and the kernel refuses a `..` after it; here it is taken as it reads.
#[derive(Clone, Copy)]
struct At {
    node: u32,
    beyond: u32,
}

/// A manifest's tree, to resolve its symlinks the way the kernel will: a target component
/// that names another symlink of the release is replaced by where that one leads, so a `..`
/// after it climbs from there, not from its name.
#[derive(Default)]
struct Links<'a> {
    /// By node id (an entry's place in the list): its parent's id, its symlink target,
    /// its path.
    parent: Vec<u32>,
    target: Vec<Option<&'a str>>,
    path: Vec<&'a str>,
    children: HashMap<(u32, &'a str), u32>,
    /// Where each symlink led; `None` while it is being resolved.
    resolved: HashMap<u32, Option<At>>,
}

impl Links<'_> {
    /// Where symlink `id` leads; an error when that is out of the release, or it loops or
    /// goes through too many symlinks.
    fn resolve(&mut self, id: u32, depth: usize) -> std::result::Result<At, String> {
        match self.resolved.get(&id) {
            Some(Some(done)) => return Ok(*done),
            Some(None) => return Err("it is part of a loop of symlinks".into()),
            None => {}
        }
        if depth > MAX_LINK_DEPTH {
            return Err(format!(
                "it goes through more than {MAX_LINK_DEPTH} symlinks"
            ));
        }
        let target = self.target[id as usize].expect("a symlink");
        let outside = At {
            node: OUTSIDE,
            beyond: 0,
        };
        if points_outside(self.path[id as usize], target) {
            self.resolved.insert(id, Some(outside));
            return Ok(outside);
        }
        self.resolved.insert(id, None);
        let mut at = At {
            node: self.parent[id as usize],
            beyond: 0,
        };
        for part in target.split('/') {
            match part {
                "" | "." => {}
                ".." if at.beyond > 0 => at.beyond -= 1,
                ".." if at.node == ROOT => {
                    return Err(match depth {
                        0 => "target points out of the release".into(),
                        _ => format!(
                            "through symlink `{}`, it points out of the release",
                            self.path[id as usize]
                        ),
                    });
                }
                ".." => at.node = self.parent[at.node as usize],
                name => match self.children.get(&(at.node, name)) {
                    Some(&child) if at.beyond == 0 => {
                        at.node = child;
                        if self.target[child as usize].is_some() {
                            at = self.resolve(child, depth + 1)?;
                            if at.node == OUTSIDE {
                                // Past a link out of the release: nothing of it any more.
                                self.resolved.insert(id, Some(outside));
                                return Ok(outside);
                            }
                        }
                    }
                    _ => at.beyond += 1,
                },
            }
        }
        self.resolved.insert(id, Some(at));
        Ok(at)
    }
}

/// A release path: relative, `/`-separated, normal components only.
pub(crate) fn check_path(path: &str) -> std::result::Result<(), String> {
    if path.is_empty() {
        return Err("empty path".into());
    }
    if path.contains('\0') || path.contains('\\') {
        return Err("path holds a NUL or backslash".into());
    }
    if path.starts_with('/') {
        return Err("absolute path".into());
    }
    for part in path.split('/') {
        match part {
            "" => return Err("empty path component".into()),
            "." | ".." => return Err("path escapes with `.` or `..`".into()),
            _ => {}
        }
    }
    Ok(())
}

/// A symlink's target as a release may hold it: any text but an empty one or one with a NUL.
/// Where it leads is `check_links`' concern.
pub(crate) fn check_symlink(target: &str) -> std::result::Result<(), String> {
    if target.is_empty() || target.contains('\0') {
        return Err("empty target".into());
    }
    Ok(())
}

/// Whether the target of the symlink at `path` reads as outside the release: absolute, or
/// climbing above the release root by its own `..`s. Such a link is kept as it is, a leaf
/// whose target is the host's business; drover never follows it.
pub(crate) fn points_outside(path: &str, target: &str) -> bool {
    if target.starts_with('/') {
        return true;
    }
    // Depth of the link's directory below the release root.
    let mut depth = path.matches('/').count() as i64;
    for c in Path::new(target).components() {
        match c {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return true,
        }
        if depth < 0 {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(entries: Vec<Entry>) -> Manifest {
        Manifest {
            format: FORMAT,
            app: "hello".into(),
            version: "1".into(),
            runtime: Default::default(),
            depends: Default::default(),
            entries,
        }
    }

    fn dir(p: &str) -> Entry {
        Entry::Dir {
            path: p.into(),
            mode: 0o755,
        }
    }

    fn link(p: &str, t: &str) -> Entry {
        Entry::Symlink {
            path: p.into(),
            target: t.into(),
        }
    }

    #[test]
    fn canonical_round_trip() {
        let m = manifest(vec![dir("a"), link("a/l", "../b")]);
        let bytes = m.to_bytes();
        assert_eq!(Manifest::from_bytes(&bytes, "t").unwrap(), m);
        let pretty = serde_json::to_vec_pretty(&m).unwrap();
        let err = Manifest::from_bytes(&pretty, "t").unwrap_err().to_string();
        assert!(err.contains("canonical"), "{err}");
    }

    #[test]
    fn refuses_escapes() {
        for (entries, needle) in [
            (vec![dir("../x")], "escapes"),
            (vec![dir("/etc")], "absolute"),
            (vec![dir("a//b")], "empty path component"),
            (vec![dir("a/b")], "parent `a`"),
            (vec![link("l", "")], "empty target"),
            (vec![dir("b"), dir("a")], "out of order"),
            (vec![dir("a"), dir("a")], "duplicated"),
        ] {
            let err = manifest(entries).validate("m").unwrap_err().to_string();
            assert!(err.contains(needle), "{err} should contain {needle}");
        }
        manifest(vec![dir("a"), link("a/l", "../x"), link("b", "a/./l")])
            .validate("m")
            .unwrap();
    }

    #[test]
    fn links_that_point_outside_are_leaves() {
        // A virtualenv: its interpreter is the host's, by absolute path, and links to it.
        manifest(vec![
            link("etc", "../etc"),
            // Through a link out of the release, the rest is the host's.
            link("passwd", "etc/passwd"),
            link("through", "venv/bin/python3/../.."),
            dir("venv"),
            dir("venv/bin"),
            link("venv/bin/python", "python3"),
            link("venv/bin/python3", "/usr/bin/python3"),
            link("venv/bin/python3.12", "python3"),
            link("venv/lib64", "lib"),
            link("venv/up", "../../x"),
            dir("z"),
            link("z/far", "root/../.."),
            link("z/root", "/"),
        ])
        .validate("m")
        .unwrap();
        // Read as inside, it must stay inside: a link to the tree's parent hidden in a chain
        // of links that each read as inside is still refused.
        let err = manifest(vec![
            dir("a"),
            link("a/l", ".."),
            link("a/out", "/usr"),
            link("b", "a/l/.."),
        ])
        .validate("m")
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("symlink `b`") && err.contains("out of the release"),
            "{err}"
        );
        // Loops stay refused, also next to links outside.
        let err = manifest(vec![link("a", "b"), link("b", "a"), link("c", "/a")])
            .validate("m")
            .unwrap_err()
            .to_string();
        assert!(err.contains("loop"), "{err}");
        // Still no entry under a link, wherever it points.
        let err = manifest(vec![
            link("l", "/tmp"),
            Entry::File {
                path: "l/x".into(),
                mode: 0o644,
                size: 0,
                hash: Hash::of(b""),
                chunks: vec![],
            },
        ])
        .validate("m")
        .unwrap_err()
        .to_string();
        assert!(err.contains("not a directory"), "{err}");
    }

    #[test]
    fn symlinks_are_resolved_through_the_links_they_pass() {
        // Each link alone stays inside; `b` reaches the parent of the tree through `a/l`.
        let err = manifest(vec![dir("a"), link("a/l", ".."), link("b", "a/l/..")])
            .validate("m")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("symlink `b`") && err.contains("out of the release"),
            "{err}"
        );
        // Twelve levels down, a link back up to the root, and one that climbs once more.
        let mut entries = Vec::new();
        let mut deep = String::new();
        for i in 0..12 {
            deep = if deep.is_empty() {
                format!("d{i}")
            } else {
                format!("{deep}/d{i}")
            };
            entries.push(dir(&deep));
        }
        entries.push(link(&format!("{deep}/up"), &"../".repeat(12)));
        entries.push(link("x", &format!("{deep}/up/../etc")));
        let err = manifest(entries).validate("m").unwrap_err().to_string();
        assert!(
            err.contains("symlink `x`") && err.contains("out of the release"),
            "{err}"
        );
        // Through a link to a link.
        let err = manifest(vec![
            dir("a"),
            link("a/l", ".."),
            link("a/m", "l"),
            link("b", "a/m/../x"),
        ])
        .validate("m")
        .unwrap_err()
        .to_string();
        assert!(err.contains("symlink `b`"), "{err}");
        // Loops, short and long.
        for entries in [
            vec![link("l", "l")],
            vec![link("a", "b"), link("b", "a")],
            vec![dir("d"), link("d/l", "../l2/x"), link("l2", "d/l")],
        ] {
            let err = manifest(entries).validate("m").unwrap_err().to_string();
            assert!(err.contains("loop"), "{err}");
        }
        // A chain longer than the kernel follows.
        let mut entries: Vec<Entry> = (0..50)
            .map(|i| link(&format!("l{i:02}"), &format!("l{:02}", i + 1)))
            .collect();
        entries.push(Entry::File {
            path: "l50".into(),
            mode: 0o644,
            size: 0,
            hash: Hash::of(b""),
            chunks: vec![],
        });
        let err = manifest(entries).validate("m").unwrap_err().to_string();
        assert!(err.contains("more than 40 symlinks"), "{err}");

        // What stays inside still works: relative links, links to links, links through
        // links that come back down, dangling links inside.
        manifest(vec![
            dir("a"),
            dir("a/b"),
            link("a/b/up", ".."),
            link("a/l", "b/up/b"),
            link("c", "a/l/up/../a/b/../../a"),
            link("d", "c"),
            link("e", "d/b/up/b/up/l"),
            link("f", "missing/x"),
            dir("z"),
            link("z/root", ".."),
            link("z/self", "root/z/root/z"),
        ])
        .validate("m")
        .unwrap();
    }

    #[test]
    fn refuses_unknown_entry_types() {
        let json = r#"{"format":1,"app":"x","version":"1","runtime":{"process":{},"health":null,"proxy":null,"env":{},"hooks":{"release":null}},"entries":[{"type":"chardev","path":"null","mode":438}]}"#;
        let err = Manifest::from_bytes(json.as_bytes(), "m")
            .unwrap_err()
            .to_string();
        assert!(err.contains("chardev"), "{err}");
    }

    #[test]
    fn refuses_fields_an_entry_type_does_not_have_or_lacks() {
        let with = |entry: &str| {
            format!(
                r#"{{"format":1,"app":"x","version":"1","runtime":{{"process":{{}},"health":null,"proxy":null,"env":{{}},"hooks":{{"release":null}}}},"entries":[{entry}]}}"#
            )
        };
        let err = |entry: &str| {
            Manifest::from_bytes(with(entry).as_bytes(), "m")
                .unwrap_err()
                .to_string()
        };
        let e = err(r#"{"type":"dir","path":"a","mode":493,"size":1}"#);
        assert!(e.contains("unknown field `size` in a dir entry"), "{e}");
        let e = err(r#"{"type":"file","path":"a","mode":420,"size":0,"chunks":[]}"#);
        assert!(e.contains("missing field `hash` in a file entry"), "{e}");
        let e = err(r#"{"type":"symlink","path":"a","target":"b","colour":"red"}"#);
        assert!(e.contains("unknown field `colour`"), "{e}");
    }
}
