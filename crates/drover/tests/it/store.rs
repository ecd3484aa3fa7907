//! The release store end to end: build, verify, checkout, pack/unpack, gc, keys, crashes.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use drover_store::pack::{PackWriter, TAG_MANIFEST, TAG_SIGNATURE};
use drover_store::{ChunkRef, Entry, Hash, Keyring, Manifest};

use crate::common::{
    NOBODY, TestContext, http_get, in_writable, make_writable, noise, to_run, unprivileged,
    wait_for, whole_or_none,
};

const HELLO: &str = "[app]\nname = \"hello\"\nversion = \"1.0.0\"\n\n[process.web]\ncommand = \"./run\"\nhttp = true\n\n[health]\npath = \"/up\"\n";

#[test]
fn same_tree_gives_same_id_and_stores_nothing_twice() {
    let cx = TestContext::new();
    let files = [
        ("run", "#!/bin/sh\necho hi\n"),
        ("lib/a.txt", "alpha"),
        ("lib/b.txt", "beta"),
    ];
    let a = cx.app("a", HELLO, &files);
    let first = cx.build(&a, &[]);
    assert_eq!(first["app"], "hello");
    assert_eq!(first["version"], "1.0.0");
    assert_eq!(first["files"], 4);
    assert!(first["stored_bytes"].as_u64().unwrap() > 0);
    let second = cx.build(&a, &[]);
    assert_eq!(second["release"], first["release"]);
    assert_eq!(second["stored_bytes"], 0);

    // The same content elsewhere, created in another order with other times: same id.
    let b = cx.app(
        "b",
        HELLO,
        &[
            ("lib/b.txt", "beta"),
            ("lib/a.txt", "alpha"),
            ("run", "#!/bin/sh\necho hi\n"),
        ],
    );
    std::thread::sleep(Duration::from_millis(1100));
    fs::write(b.join("lib/a.txt"), "alpha").unwrap();
    let third = cx.build(&b, &[]);
    assert_eq!(third["release"], first["release"]);
    assert_eq!(third["stored_bytes"], 0);

    // A different mode is a different release.
    fs::set_permissions(b.join("run"), fs::Permissions::from_mode(0o755)).unwrap();
    let fourth = cx.build(&b, &[]);
    assert_ne!(fourth["release"], first["release"]);

    let list = cx.drover(&["releases", "hello", "--json"]).success().json();
    assert_eq!(list.as_array().unwrap().len(), 2);
    cx.drover(&["verify"]).success();
}

#[test]
fn one_changed_region_of_a_big_file_stores_only_a_little() {
    let cx = TestContext::new();
    let app = cx.app("big", "[app]\nname = \"big\"\n", &[]);
    let mut data = noise(7, 200 << 20);
    fs::write(app.join("blob.bin"), &data).unwrap();
    let v1 = cx.build(&app, &["--version", "1"]);
    assert!(v1["stored_bytes"].as_u64().unwrap() > 190 << 20);

    // Change one 1 MB region in the middle.
    let start = 97 << 20;
    data[start..start + (1 << 20)].copy_from_slice(&noise(8, 1 << 20));
    fs::write(app.join("blob.bin"), &data).unwrap();
    let v2 = cx.build(&app, &["--version", "2"]);
    let stored = v2["stored_bytes"].as_u64().unwrap();
    assert_ne!(v1["release"], v2["release"]);
    assert!(stored < 3 << 20, "second build stored {stored} bytes");
    assert!(stored > 1 << 20, "the changed MB must be stored ({stored})");
}

fn objects(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for sub in [
        "store/objects/manifests",
        "store/objects/sigs",
        "store/files",
    ] {
        for e in fs::read_dir(root.join(sub)).unwrap() {
            out.push(e.unwrap().path());
        }
    }
    for d in fs::read_dir(root.join("store/objects/chunks")).unwrap() {
        for e in fs::read_dir(d.unwrap().path()).unwrap() {
            out.push(e.unwrap().path());
        }
    }
    out.sort();
    out
}

/// The pack files of a store (where a build puts its chunks).
fn packs(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out: Vec<_> = fs::read_dir(root.join("store/objects/packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    out.sort();
    out
}

/// Bytes of chunk data a store holds or is writing (packs, loose chunks, staged files).
fn chunk_bytes(root: &Path) -> u64 {
    fn walk(p: &Path) -> u64 {
        match fs::symlink_metadata(p) {
            Ok(m) if m.is_dir() => fs::read_dir(p)
                .map(|rd| rd.flatten().map(|e| walk(&e.path())).sum())
                .unwrap_or(0),
            Ok(m) => m.len(),
            Err(_) => 0,
        }
    }
    ["store/objects/packs", "store/objects/chunks", "store/tmp"]
        .iter()
        .map(|d| walk(&root.join(d)))
        .sum()
}

/// Removes the verified file cache, so a checkout has to read chunks.
fn clear_file_cache(root: &Path) {
    for e in fs::read_dir(root.join("store/files")).unwrap() {
        fs::remove_file(e.unwrap().path()).unwrap();
    }
}

#[test]
fn any_corrupted_byte_is_found_and_never_materialised() {
    let cx = TestContext::new();
    let mut files: Vec<(String, String)> = (0..5)
        .map(|i| {
            (
                format!("f{i}.txt"),
                format!("file {i}\n").repeat(3000 * (i + 1)),
            )
        })
        .collect();
    files.push(("run".into(), "#!/bin/sh\n".into()));
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let app = cx.app("app", HELLO, &refs);
    let built = cx.build(&app, &[]);
    let id = built["release"].as_str().unwrap().to_string();
    // Materialise once so the file cache exists and is checked too.
    cx.drover(&["checkout", &id, cx.path("co").to_str().unwrap()])
        .success();
    // A release imported from an archive keeps its chunks as loose files: those are checked
    // one by one below, the build's pack after that.
    let src = TestContext::new();
    let other_files: Vec<(String, String)> = (0..3)
        .map(|i| (format!("o{i}.txt"), format!("other {i}\n").repeat(4000)))
        .collect();
    let other_refs: Vec<(&str, &str)> = other_files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let other = src.app("other", "[app]\nname = \"other\"\n", &other_refs);
    let other_id = src.build(&other, &[])["release"]
        .as_str()
        .unwrap()
        .to_string();
    let archive = src.path("other.pack");
    src.drover(&["pack", &other_id, "-o", archive.to_str().unwrap()])
        .success();
    let key = src.drover(&["keys"]).success().stdout.trim().to_string();
    cx.drover(&["keys", "trust", &key]).success();
    cx.drover(&["unpack", archive.to_str().unwrap()]).success();
    cx.drover(&["verify"]).success();

    let all = objects(&cx.root);
    let loose_chunks = all
        .iter()
        .filter(|p| p.to_str().unwrap().contains("/chunks/"))
        .count();
    assert!(loose_chunks >= 3 && all.len() >= 12, "{all:?}");
    for (n, obj) in all.iter().enumerate() {
        make_writable(obj);
        let original = fs::read(obj).unwrap();
        let mut bad = original.clone();
        let at = (n * 7919) % bad.len();
        bad[at] ^= 0x40;
        fs::write(obj, &bad).unwrap();

        let run = cx.drover(&["verify"]).failure();
        let name = obj.file_name().unwrap().to_str().unwrap();
        let hash = name.split('.').next().unwrap();
        assert!(
            run.stderr.contains(hash),
            "verify did not name {name}:\n{}",
            run.stderr
        );

        if obj.to_str().unwrap().contains("/chunks/") {
            // A corrupted chunk is never written into a tree (with no cached copy to use).
            clear_file_cache(&cx.root);
            let dest = cx.path(&format!("co-{n}"));
            let run = cx
                .drover(&["checkout", &other_id, dest.to_str().unwrap()])
                .failure();
            assert!(run.stderr.contains(hash), "{}", run.stderr);
            assert!(run.stderr.contains("corrupt"), "{}", run.stderr);
            if dest.exists() {
                drover_store::remove_tree(&dest);
            }
        }
        fs::write(obj, &original).unwrap();
    }
    cx.drover(&["verify"]).success();

    // The chunks are in packs (one per build thread at most): a damaged byte anywhere in
    // one (header, objects, index, trailer) is found, named (the pack, or the chunk it
    // spoils), and never materialised.
    let packs = packs(&cx.root);
    assert!(!packs.is_empty() && packs.len() <= 8, "{packs:?}");
    for (p, pack) in packs.iter().enumerate() {
        let pack_name = pack.file_name().unwrap().to_str().unwrap().to_string();
        make_writable(pack);
        let original = fs::read(pack).unwrap();
        let len = original.len();
        let mut places: Vec<usize> = (0..40).map(|k| (k * len / 40 + k * 7919) % len).collect();
        places.extend([3, len - 60, len - 20, len - 12, len - 1]);
        for (n, at) in places.into_iter().enumerate() {
            let mut bad = original.clone();
            bad[at] ^= 0x40;
            fs::write(pack, &bad).unwrap();
            let run = cx.drover(&["verify"]).failure();
            assert!(
                run.stderr.contains(&pack_name),
                "byte {at} of {len}: verify did not name the pack:\n{}",
                run.stderr
            );
            clear_file_cache(&cx.root);
            let dest = cx.path(&format!("co-pack-{p}-{n}"));
            let run = cx
                .drover(&["checkout", &id, dest.to_str().unwrap()])
                .failure();
            assert!(
                run.stderr.contains("corrupt") || run.stderr.contains("missing"),
                "byte {at}: {}",
                run.stderr
            );
            if dest.exists() {
                drover_store::remove_tree(&dest);
            }
        }
        fs::write(pack, &original).unwrap();
    }
    cx.drover(&["verify"]).success();

    // Missing chunks are named too: packs gone, or one loose chunk.
    for pack in &packs {
        fs::remove_file(pack).unwrap();
    }
    let run = cx.drover(&["verify"]).failure();
    assert!(run.stderr.contains("missing"), "{}", run.stderr);
    cx.build(&app, &[]);
    cx.drover(&["verify"]).success();
    let chunk = all
        .iter()
        .find(|p| p.to_str().unwrap().contains("/chunks/"))
        .unwrap();
    fs::remove_file(chunk).unwrap();
    let run = cx.drover(&["verify"]).failure();
    let hash = chunk.file_name().unwrap().to_str().unwrap();
    assert!(
        run.stderr.contains("missing") && run.stderr.contains(hash),
        "{}",
        run.stderr
    );
}

#[test]
fn checkout_is_read_only_and_shares_disk() {
    use std::os::unix::fs::MetadataExt;
    let cx = TestContext::new();
    let app = cx.app(
        "app",
        HELLO,
        &[("run", "x"), ("data/shared.txt", "same content")],
    );
    fs::set_permissions(app.join("run"), fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("data/shared.txt", app.join("link")).unwrap();
    let v1 = cx.build(&app, &["--version", "1"]);
    fs::write(app.join("new.txt"), "new").unwrap();
    let v2 = cx.build(&app, &["--version", "2"]);
    let (a, b) = (cx.path("a"), cx.path("b"));
    cx.drover(&[
        "checkout",
        v1["release"].as_str().unwrap(),
        a.to_str().unwrap(),
    ])
    .success();
    cx.drover(&["checkout", "hello@2", b.to_str().unwrap()])
        .success();
    let ma = fs::metadata(a.join("data/shared.txt")).unwrap();
    let mb = fs::metadata(b.join("data/shared.txt")).unwrap();
    assert_eq!(ma.ino(), mb.ino(), "identical files share one inode");
    assert_eq!(ma.mode() & 0o777, 0o444);
    assert_eq!(fs::metadata(a.join("run")).unwrap().mode() & 0o777, 0o555);
    assert_eq!(
        fs::read_link(a.join("link")).unwrap(),
        Path::new("data/shared.txt")
    );
    assert_eq!(fs::metadata(a.join("data")).unwrap().mode() & 0o777, 0o555);
    assert!(b.join("new.txt").exists() && !a.join("new.txt").exists());
    assert_ne!(v1["release"], v2["release"]);

    // An existing directory is never overwritten.
    let run = cx
        .drover(&["checkout", "hello@1", a.to_str().unwrap()])
        .failure();
    assert!(run.stderr.contains("already exists"), "{}", run.stderr);
    assert!(
        run.stderr.contains(
            "\nhint: checkout writes a new directory: give a path that does not exist yet"
        ),
        "{}",
        run.stderr
    );
}

#[test]
fn a_rebuild_reads_only_changed_files_and_misses_no_change() {
    let cx = TestContext::new();
    let big = noise(300_000, 3);
    let app = cx.app("app", HELLO, &[("a.txt", "aaaa"), ("b.txt", "bbbb")]);
    fs::write(app.join("big.bin"), &big).unwrap();
    let content = |built: &serde_json::Value, name: &str, file: &str| {
        let dest = cx.path(name);
        cx.drover(&[
            "checkout",
            built["release"].as_str().unwrap(),
            dest.to_str().unwrap(),
        ])
        .success();
        fs::read(dest.join(file)).unwrap()
    };
    // Files changed within the last moments are read every time (their timestamps could
    // still be shared with a later write); these have settled.
    std::thread::sleep(Duration::from_millis(2100));
    let first = cx.build(&app, &[]);
    assert_eq!(first["unchanged_files"], 0, "nothing to reuse yet: {first}");
    let again = cx.build(&app, &[]);
    assert_eq!(again["unchanged_files"], 4, "{again}");
    assert_eq!(again["release"], first["release"]);

    // Same size, other bytes, at once: read again.
    fs::write(app.join("a.txt"), "AAAA").unwrap();
    let second = cx.build(&app, &[]);
    assert_eq!(second["unchanged_files"], 3, "{second}");
    assert_eq!(content(&second, "co2", "a.txt"), b"AAAA");
    // And again within the same instant: a.txt has not settled, so it is read.
    fs::write(app.join("a.txt"), "aAaA").unwrap();
    let third = cx.build(&app, &[]);
    assert_eq!(content(&third, "co3", "a.txt"), b"aAaA");
    // A mode change is a change too.
    fs::set_permissions(app.join("b.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    let fourth = cx.build(&app, &[]);
    assert_ne!(fourth["release"], third["release"]);
    assert_eq!(content(&fourth, "co4", "big.bin"), big);

    // Chunks lost since (the release's manifest is still there): every file is read again
    // and its chunks are stored anew.
    for p in packs(&cx.root) {
        fs::remove_file(p).unwrap();
    }
    let fifth = cx.build(&app, &[]);
    assert_eq!(fifth["unchanged_files"], 0, "{fifth}");
    assert_eq!(fifth["release"], fourth["release"]);
    cx.drover(&["verify", fifth["release"].as_str().unwrap()])
        .success();
    assert_eq!(content(&fifth, "co5", "big.bin"), big);
}

#[test]
fn a_cache_file_written_through_a_tree_is_not_shared_again() {
    use std::os::unix::fs::MetadataExt;
    let cx = TestContext::new();
    let app = cx.app("app", HELLO, &[("data.txt", "the released bytes")]);
    let built = cx.build(&app, &[]);
    let id = built["release"].as_str().unwrap();
    let (a, b, c) = (cx.path("a"), cx.path("b"), cx.path("c"));
    cx.drover(&["checkout", id, a.to_str().unwrap()]).success();
    cx.drover(&["checkout", id, b.to_str().unwrap()]).success();
    let ino = |p: &Path| fs::metadata(p).unwrap().ino();
    assert_eq!(ino(&a.join("data.txt")), ino(&b.join("data.txt")));
    // An app (or a person) writes into its release: same size, other bytes. Through the
    // link, the shared cache file changes too.
    make_writable(&a.join("data.txt"));
    fs::write(a.join("data.txt"), "THE RELEASED BYTES").unwrap();
    cx.drover(&["checkout", id, c.to_str().unwrap()]).success();
    assert_eq!(
        fs::read_to_string(c.join("data.txt")).unwrap(),
        "the released bytes",
        "the next tree gets a rebuilt copy, not the written one"
    );
    assert_ne!(ino(&a.join("data.txt")), ino(&c.join("data.txt")));

    // Damage that leaves the file's times alone (bit rot, a restore keeping mtimes) is not
    // seen by a checkout, which trusts the stamp; `verify` finds it, and once it has, the
    // next checkout rebuilds the file.
    let cached = c.join("data.txt");
    let times = fs::metadata(&cached).unwrap();
    make_writable(&cached);
    fs::write(&cached, "the released BYTES").unwrap();
    let f = fs::File::open(&cached).unwrap();
    f.set_times(fs::FileTimes::new().set_modified(times.modified().unwrap()))
        .unwrap();
    let run = cx.drover(&["verify"]).failure();
    let said = format!("{}{}", run.stdout, run.stderr);
    assert!(said.contains("content hashes to"), "{said}");
    let d = cx.path("d");
    cx.drover(&["checkout", id, d.to_str().unwrap()]).success();
    assert_eq!(
        fs::read_to_string(d.join("data.txt")).unwrap(),
        "the released bytes"
    );
}

#[test]
fn build_runs_in_a_scratch_copy() {
    let cx = TestContext::new();
    let toml = "[app]\nname = \"built\"\nversion = \"1\"\n[build]\ncommand = \"mkdir -p out && echo generated > out/gen.txt && touch dirty-marker && echo to-stdout\"\noutput = \"out\"\n";
    let app = cx.app("src", toml, &[("input.txt", "source")]);
    let run = cx
        .drover(&["build", app.to_str().unwrap(), "--json"])
        .success();
    let built = run.json();
    assert_eq!(built["files"], 1);
    assert!(
        !app.join("dirty-marker").exists(),
        "the build touched the user's tree"
    );
    assert!(!app.join("out").exists());
    assert!(
        run.stderr.contains("to-stdout"),
        "build output goes to stderr"
    );
    let co = cx.path("co");
    cx.drover(&["checkout", "built", co.to_str().unwrap()])
        .success();
    assert_eq!(
        fs::read_to_string(co.join("gen.txt")).unwrap(),
        "generated\n"
    );

    // A failing build command fails the build and stores nothing.
    let bad = cx.app(
        "bad",
        "[app]\nname = \"bad\"\n[build]\ncommand = \"exit 3\"\n",
        &[],
    );
    let before = cx.snapshot_root();
    let run = cx.drover(&["build", bad.to_str().unwrap()]).failure();
    assert!(run.stderr.contains("exit 3"), "{}", run.stderr);
    assert_eq!(cx.snapshot_root(), before);
}

#[test]
fn bad_input_is_named_and_changes_nothing() {
    let cx = TestContext::new();
    cx.drover(&["keys"]).success();
    let before = cx.snapshot_root();

    let typo = cx.app(
        "typo",
        "[app]\nname = \"x\"\n\n[process.web]\ncomand = \"./run\"\n",
        &[],
    );
    let run = cx.drover(&["build", typo.to_str().unwrap()]).failure();
    assert!(run.stderr.contains("typo/drover.toml"), "{}", run.stderr);
    assert!(run.stderr.contains("line 5"), "{}", run.stderr);
    assert!(
        run.stderr.contains("did you mean `command`?"),
        "{}",
        run.stderr
    );

    let missing = cx.path("nothing-here");
    let run = cx.drover(&["build", missing.to_str().unwrap()]).failure();
    assert!(
        run.stderr.contains("nothing-here/drover.toml"),
        "{}",
        run.stderr
    );

    // A link that reads as inside the release but leads out of it through another link.
    let escape = cx.app("escape", "[app]\nname = \"x\"\n", &[("d/f", "f")]);
    std::os::unix::fs::symlink("..", escape.join("d/up")).unwrap();
    std::os::unix::fs::symlink("d/up/../etc/passwd", escape.join("pw")).unwrap();
    let run = cx.drover(&["build", escape.to_str().unwrap()]).failure();
    assert!(
        run.stderr.contains("`pw`") && run.stderr.contains("out of the release"),
        "{}",
        run.stderr
    );

    let fifo = cx.app("fifo", "[app]\nname = \"x\"\n", &[]);
    let status = std::process::Command::new("mkfifo")
        .arg(fifo.join("pipe"))
        .status()
        .unwrap();
    assert!(status.success());
    let run = cx.drover(&["build", fifo.to_str().unwrap()]).failure();
    assert!(
        run.stderr.contains("pipe") && run.stderr.contains("named pipe"),
        "{}",
        run.stderr
    );

    let run = cx
        .drover(&["build", typo.to_str().unwrap(), "--version", "a/b"])
        .failure();
    assert!(run.stderr.contains("--version"), "{}", run.stderr);

    let run = cx.drover(&["verify", "nosuchapp"]).failure();
    assert!(
        run.stderr.contains("nosuchapp") && run.stderr.contains("hint:"),
        "{}",
        run.stderr
    );
    assert_eq!(cx.snapshot_root(), before);
}

#[test]
fn init_writes_a_config_that_builds() {
    let cx = TestContext::new();
    let dir = cx.path("my-app");
    cx.drover(&["init", dir.to_str().unwrap()]).success();
    let text = fs::read_to_string(dir.join("drover.toml")).unwrap();
    assert!(
        text.contains("name = \"my-app\"") && text.contains("# "),
        "{text}"
    );
    fs::write(dir.join("server"), "#!/bin/sh\n").unwrap();
    let built = cx.build(&dir, &[]);
    assert_eq!(built["app"], "my-app");
    let run = cx.drover(&["init", dir.to_str().unwrap()]).failure();
    assert!(run.stderr.contains("already exists"), "{}", run.stderr);
}

#[test]
fn gc_keeps_the_newest_releases() {
    let cx = TestContext::new();
    let app = cx.app(
        "app",
        "[app]\nname = \"app\"\n",
        &[("common.txt", "shared by all")],
    );
    let mut ids = Vec::new();
    for v in 1..=4 {
        fs::write(app.join("v.txt"), format!("version {v}").repeat(10_000)).unwrap();
        ids.push(
            cx.build(&app, &["--version", &v.to_string()])["release"]
                .as_str()
                .unwrap()
                .to_string(),
        );
        // Releases are ordered by when the store received them (whole seconds).
        std::thread::sleep(Duration::from_millis(1050));
    }
    cx.drover(&["checkout", &ids[0], cx.path("old").to_str().unwrap()])
        .success();
    // Each build put its new chunks in a pack or two (one per build thread); the first
    // build's also hold common.txt, which the kept releases still need.
    let before_packs = packs(&cx.root).len();
    assert!((4..=8).contains(&before_packs), "{before_packs}");
    let before = chunk_bytes(&cx.root);
    let chunks_before = cx.drover(&["verify", "--json"]).success().json()["chunks"]
        .as_u64()
        .unwrap();
    let report = cx.drover(&["gc", "--keep", "2", "--json"]).success().json();
    assert_eq!(report["releases_removed"].as_array().unwrap().len(), 2);
    assert!(report["chunks_removed"].as_u64().unwrap() >= 2);
    // The second build's packs went whole; what is live in the others (common.txt from the
    // first, the kept versions' chunks) was merged into one pack, as small packs are.
    assert_eq!(packs(&cx.root).len(), 1, "{:?}", packs(&cx.root));
    let after = chunk_bytes(&cx.root);
    assert!(after < before, "packs took {before} bytes, now {after}");
    // Exactly the removed versions' v.txt chunks are gone.
    let chunks_after = cx.drover(&["verify", "--json"]).success().json()["chunks"]
        .as_u64()
        .unwrap();
    assert_eq!(chunks_after, chunks_before - 2);
    let left: Vec<String> = cx
        .drover(&["releases", "--json"])
        .success()
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["release"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left, vec![ids[3].clone(), ids[2].clone()]);
    cx.drover(&["verify"]).success();
    let co = cx.path("co");
    cx.drover(&["checkout", &ids[2], co.to_str().unwrap()])
        .success();
    assert_eq!(
        fs::read_to_string(co.join("common.txt")).unwrap(),
        "shared by all"
    );
    let run = cx
        .drover(&["checkout", &ids[0], cx.path("gone").to_str().unwrap()])
        .failure();
    assert!(run.stderr.contains("no release matches"), "{}", run.stderr);
}

#[test]
fn pack_and_unpack_move_a_release_between_stores() {
    let src = TestContext::new();
    let app = src.app("app", HELLO, &[("run", "x"), ("big.bin", "")]);
    fs::write(app.join("big.bin"), noise(3, 3 << 20)).unwrap();
    let id = src.build(&app, &[])["release"]
        .as_str()
        .unwrap()
        .to_string();
    let archive = src.path("hello.pack");
    src.drover(&["pack", "hello", "-o", archive.to_str().unwrap()])
        .success();

    let dst = TestContext::new();
    // Untrusted until the signer's key is trusted.
    let run = dst.drover(&["unpack", archive.to_str().unwrap()]).failure();
    assert!(
        run.stderr.contains("does not trust") && run.stderr.contains("drover keys trust"),
        "{}",
        run.stderr
    );
    assert!(
        dst.drover(&["releases", "--json"])
            .success()
            .json()
            .as_array()
            .unwrap()
            .is_empty()
    );
    let key = src.drover(&["keys"]).success().stdout.trim().to_string();
    dst.drover(&["keys", "trust", &key, "--name", "builder"])
        .success();
    let out = dst
        .drover(&["unpack", archive.to_str().unwrap(), "--json"])
        .success()
        .json();
    assert_eq!(out["release"], id.as_str());
    assert_eq!(out["added"], true);
    dst.drover(&["verify", &id]).success();
    let co = dst.path("co");
    dst.drover(&["checkout", &id, co.to_str().unwrap()])
        .success();
    assert_eq!(fs::read(co.join("big.bin")).unwrap(), noise(3, 3 << 20));
    // Importing again adds nothing.
    let again = dst
        .drover(&["unpack", archive.to_str().unwrap(), "--json"])
        .success()
        .json();
    assert_eq!(again["added"], false);

    // --allow-untrusted takes a validly signed release from an unknown key.
    let third = TestContext::new();
    third
        .drover(&["unpack", archive.to_str().unwrap(), "--allow-untrusted"])
        .success();
    third.drover(&["verify"]).success();
}

/// Builds a manifest with the given entries, signs it with `ring`, writes an archive.
fn hostile_archive(path: &Path, ring: &Keyring, entries: Vec<Entry>, chunks: &[(Hash, Vec<u8>)]) {
    let m = Manifest {
        format: 1,
        app: "evil".into(),
        version: "1".into(),
        runtime: Default::default(),
        depends: Default::default(),
        entries,
    };
    let bytes = m.to_bytes();
    let sig = ring.sign(&Hash::of(&bytes)).unwrap();
    let mut w = PackWriter::new(fs::File::create(path).unwrap()).unwrap();
    w.record(TAG_MANIFEST, &bytes).unwrap();
    w.record(TAG_SIGNATURE, &sig.to_bytes()).unwrap();
    for (h, data) in chunks {
        w.chunk(h, &drover_store::chunk::encode(data)).unwrap();
    }
    w.finish().unwrap();
}

fn file_entry(path: &str, data: &[u8]) -> Entry {
    Entry::File {
        path: path.into(),
        mode: 0o644,
        size: data.len() as u64,
        hash: Hash::of(data),
        chunks: vec![ChunkRef(Hash::of(data), data.len() as u32)],
    }
}

#[test]
fn unpack_refuses_hostile_archives_and_adds_nothing() {
    let cx = TestContext::new();
    cx.drover(&["keys"]).success();
    let ring = Keyring::new(&cx.root);
    let data = b"payload".to_vec();
    let chunk = vec![(Hash::of(&data), data.clone())];
    let dir = |p: &str| Entry::Dir {
        path: p.into(),
        mode: 0o755,
    };
    let link = |p: &str, t: &str| Entry::Symlink {
        path: p.into(),
        target: t.into(),
    };

    // A link out of the release is kept as it is, never written through.
    let outside = cx.path("outside");
    fs::create_dir(&outside).unwrap();
    let outside_path = outside.to_str().unwrap();
    let cases: Vec<(&str, Vec<Entry>, &str)> = vec![
        (
            "dotdot",
            vec![file_entry("../escape.txt", &data)],
            "escapes",
        ),
        (
            "nested-dotdot",
            vec![dir("a"), file_entry("a/../../x", &data)],
            "escapes",
        ),
        (
            "absolute",
            vec![file_entry("/etc/cron.d/evil", &data)],
            "absolute path",
        ),
        (
            "through-symlink",
            vec![link("l", "."), file_entry("l/x", &data)],
            "not a directory",
        ),
        (
            "through-symlink-outside",
            vec![link("l", outside_path), file_entry("l/x", &data)],
            "not a directory",
        ),
        (
            "symlink-chain",
            vec![
                dir("a"),
                link("a/l", ".."),
                link("b", "a/l/.."),
                file_entry("f", &data),
            ],
            "out of the release",
        ),
        (
            "symlink-chain-to-etc",
            {
                let mut deep = vec![dir("d")];
                let mut path = "d".to_string();
                for i in 0..11 {
                    path = format!("{path}/d{i}");
                    deep.push(dir(&path));
                }
                deep.push(link(&format!("{path}/up"), &"../".repeat(12)));
                deep.push(link("etc", &format!("{path}/up/{}etc", "../".repeat(12))));
                deep.push(file_entry("f", &data));
                deep
            },
            "out of the release",
        ),
        (
            "symlink-loop",
            vec![link("a", "b"), link("b", "a"), file_entry("f", &data)],
            "loop",
        ),
    ];
    let before = cx.snapshot_root();
    for (name, entries, needle) in cases {
        let path = cx.path(&format!("{name}.pack"));
        hostile_archive(&path, &ring, entries, &chunk);
        let run = cx.drover(&["unpack", path.to_str().unwrap()]).failure();
        assert!(run.stderr.contains(needle), "{name}: {}", run.stderr);
        assert!(
            run.stderr.contains(&format!("{name}.pack")),
            "{name}: error must name the file: {}",
            run.stderr
        );
        assert_eq!(cx.snapshot_root(), before, "{name} changed the store");
    }

    // A device file: the manifest's entry type is not one a release can hold.
    let good = cx.path("good.pack");
    hostile_archive(&good, &ring, vec![file_entry("ok.txt", &data)], &chunk);
    let bytes = fs::read(&good).unwrap();
    let manifest_start = 8 + 9;
    let len = u64::from_le_bytes(bytes[9..17].try_into().unwrap()) as usize;
    let text = String::from_utf8(bytes[manifest_start..manifest_start + len].to_vec()).unwrap();
    let device = text.replacen("\"type\":\"file\"", "\"type\":\"chardev\"", 1);
    let mut w = PackWriter::new(fs::File::create(cx.path("device.pack")).unwrap()).unwrap();
    w.record(TAG_MANIFEST, device.as_bytes()).unwrap();
    w.finish().unwrap();
    let run = cx
        .drover(&["unpack", cx.path("device.pack").to_str().unwrap()])
        .failure();
    assert!(run.stderr.contains("chardev"), "{}", run.stderr);

    // Truncated at every length: always refused, never a partial import.
    for cut in [0, 5, 8, 12, 17, bytes.len() / 2, bytes.len() - 1] {
        let p = cx.path("cut.pack");
        fs::write(&p, &bytes[..cut]).unwrap();
        let run = cx.drover(&["unpack", p.to_str().unwrap()]).failure();
        assert!(run.stderr.contains("cut.pack"), "{}", run.stderr);
        assert!(
            run.stderr.contains("truncated") || run.stderr.contains("too short"),
            "cut at {cut}: {}",
            run.stderr
        );
    }
    // Trailing garbage.
    let mut trailing = bytes.clone();
    trailing.extend_from_slice(b"junk");
    fs::write(cx.path("trailing.pack"), &trailing).unwrap();
    let run = cx
        .drover(&["unpack", cx.path("trailing.pack").to_str().unwrap()])
        .failure();
    assert!(run.stderr.contains("trailing"), "{}", run.stderr);

    // Oversized: a record that claims more than any manifest may hold.
    let mut huge = b"DRVPACK1".to_vec();
    huge.push(TAG_MANIFEST);
    huge.extend_from_slice(&(1u64 << 40).to_le_bytes());
    fs::write(cx.path("huge.pack"), &huge).unwrap();
    let run = cx
        .drover(&["unpack", cx.path("huge.pack").to_str().unwrap()])
        .failure();
    assert!(run.stderr.contains("oversized"), "{}", run.stderr);

    // A chunk whose bytes do not match its name.
    let mut w = PackWriter::new(fs::File::create(cx.path("badchunk.pack")).unwrap()).unwrap();
    let m = Manifest {
        format: 1,
        app: "evil".into(),
        version: "1".into(),
        runtime: Default::default(),
        depends: Default::default(),
        entries: vec![file_entry("ok.txt", &data)],
    };
    w.record(TAG_MANIFEST, &m.to_bytes()).unwrap();
    w.record(TAG_SIGNATURE, &ring.sign(&m.id()).unwrap().to_bytes())
        .unwrap();
    w.chunk(&Hash::of(&data), &drover_store::chunk::encode(b"different"))
        .unwrap();
    w.finish().unwrap();
    let run = cx
        .drover(&["unpack", cx.path("badchunk.pack").to_str().unwrap()])
        .failure();
    assert!(run.stderr.contains("corrupt"), "{}", run.stderr);

    // A bad signature: valid key, signature over something else.
    let mut w = PackWriter::new(fs::File::create(cx.path("badsig.pack")).unwrap()).unwrap();
    w.record(TAG_MANIFEST, &m.to_bytes()).unwrap();
    w.record(
        TAG_SIGNATURE,
        &ring.sign(&Hash::of(b"another release")).unwrap().to_bytes(),
    )
    .unwrap();
    w.chunk(&Hash::of(&data), &drover_store::chunk::encode(&data))
        .unwrap();
    w.finish().unwrap();
    let run = cx
        .drover(&["unpack", cx.path("badsig.pack").to_str().unwrap()])
        .failure();
    assert!(run.stderr.contains("bad signature"), "{}", run.stderr);
    let run = cx
        .drover(&[
            "unpack",
            cx.path("badsig.pack").to_str().unwrap(),
            "--allow-untrusted",
        ])
        .failure();
    assert!(run.stderr.contains("bad signature"), "{}", run.stderr);

    // An untrusted key.
    let stranger = tempfile::tempdir().unwrap();
    let path = cx.path("stranger.pack");
    hostile_archive(
        &path,
        &Keyring::new(stranger.path()),
        vec![file_entry("ok.txt", &data)],
        &chunk,
    );
    let run = cx.drover(&["unpack", path.to_str().unwrap()]).failure();
    assert!(run.stderr.contains("does not trust"), "{}", run.stderr);

    // Not an archive at all.
    fs::write(cx.path("text.pack"), "hello, this is not an archive").unwrap();
    let run = cx
        .drover(&["unpack", cx.path("text.pack").to_str().unwrap()])
        .failure();
    assert!(
        run.stderr.contains("not a drover archive"),
        "{}",
        run.stderr
    );

    assert_eq!(
        cx.snapshot_root(),
        before,
        "a refused archive changed the store"
    );
    // And the good one goes in.
    cx.drover(&["unpack", good.to_str().unwrap()]).success();
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
}

#[test]
fn kill_9_during_build_or_unpack_leaves_a_store_that_verifies() {
    let cx = TestContext::new();
    let app = cx.app("app", "[app]\nname = \"app\"\n", &[]);
    for i in 0..8 {
        fs::write(app.join(format!("part{i}.bin")), noise(100 + i, 12 << 20)).unwrap();
    }
    // Kill builds at several points of writing their packs: early, midway and late (96 MiB
    // of new chunk data per round).
    let mut killed_midway = 0;
    for (round, threshold) in [1u64 << 20, 30 << 20, 75 << 20].into_iter().enumerate() {
        fs::write(app.join("round.txt"), format!("{round}")).unwrap();
        let base = chunk_bytes(&cx.root);
        let mut child = cx
            .command()
            .args([
                "build",
                app.to_str().unwrap(),
                "--version",
                &format!("r{round}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut finished = false;
        wait_for("chunks to appear", Duration::from_secs(60), || {
            if let Ok(Some(_)) = child.try_wait() {
                finished = true;
                return true;
            }
            chunk_bytes(&cx.root) >= base + threshold
        });
        child.kill().ok();
        child.wait().unwrap();
        if !finished {
            killed_midway += 1;
        }
        let run = cx.drover(&["verify"]);
        assert!(
            run.status.success(),
            "round {round} (finished: {finished}): {}",
            run.stderr
        );
        // Change the data so the next round writes new chunks.
        for i in 0..8 {
            fs::write(
                app.join(format!("part{i}.bin")),
                noise(1000 * (round as u64 + 1) + i, 12 << 20),
            )
            .unwrap();
        }
    }
    assert!(
        killed_midway >= 2,
        "builds finished before they could be killed"
    );
    // A full build afterwards works and verifies.
    let built = cx.build(&app, &["--version", "final"]);
    cx.drover(&["verify", built["release"].as_str().unwrap()])
        .success();

    // Now unpack into a fresh store and kill it midway.
    let archive = cx.path("a.pack");
    cx.drover(&["pack", "app@final", "-o", archive.to_str().unwrap()])
        .success();
    let dst = TestContext::new();
    let key = cx.drover(&["keys"]).success().stdout.trim().to_string();
    dst.drover(&["keys", "trust", &key]).success();
    let tmp = dst.root.join("store/tmp");
    let mut child = dst
        .command()
        .args(["unpack", archive.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("unpack to start staging", Duration::from_secs(60), || {
        matches!(child.try_wait(), Ok(Some(_)))
            || fs::read_dir(&tmp)
                .map(|rd| {
                    rd.flatten().any(|e| {
                        fs::read_dir(e.path())
                            .map(|r| r.count() > 50)
                            .unwrap_or(false)
                    })
                })
                .unwrap_or(false)
    });
    let finished = matches!(child.try_wait(), Ok(Some(_)));
    child.kill().ok();
    let status = child.wait().unwrap();
    assert!(!finished, "unpack finished before it could be killed");
    let run = dst.drover(&["verify"]);
    assert!(
        run.status.success(),
        "after killed unpack ({status}): {}",
        run.stderr
    );
    // The interrupted import never shows as a release, and a retry completes it.
    let listed = to_run(dst.command().args(["releases", "--json"]).output().unwrap()).json();
    assert!(listed.as_array().unwrap().len() <= 1);
    dst.drover(&["unpack", archive.to_str().unwrap()]).success();
    dst.drover(&["verify"]).success();
}

// ---- checkout: what a failure leaves --------------------------------------------------

#[test]
fn a_failed_checkout_removes_what_it_made_and_only_that() {
    let cx = TestContext::new();
    let app = cx.app(
        "app",
        HELLO,
        &[
            ("run", "x"),
            ("data/big.txt", &"some data\n".repeat(20_000)),
        ],
    );
    let id = cx.build(&app, &[])["release"].as_str().unwrap().to_string();
    // A damaged chunk, and no cache file to use instead: the checkout fails midway, after
    // it made its directory and some of the tree.
    let pack = &packs(&cx.root)[0];
    make_writable(pack);
    let original = fs::read(pack).unwrap();
    let mut bad = original.clone();
    bad[original.len() / 2] ^= 0x40;
    fs::write(pack, &bad).unwrap();
    clear_file_cache(&cx.root);
    let dest = cx.path("co");
    let run = cx
        .drover(&["checkout", &id, dest.to_str().unwrap()])
        .failure();
    assert!(
        run.stderr.contains("corrupt") || run.stderr.contains("missing"),
        "{}",
        run.stderr
    );
    assert!(
        fs::symlink_metadata(&dest).is_err(),
        "the failed checkout left {}",
        dest.display()
    );
    // Repaired, a retry into the same directory works.
    fs::write(pack, &original).unwrap();
    cx.drover(&["checkout", &id, dest.to_str().unwrap()])
        .success();
    assert_eq!(fs::read_to_string(dest.join("run")).unwrap(), "x");

    // A directory that was there before is never removed, empty or not, nor a symlink.
    let empty = cx.path("empty");
    fs::create_dir(&empty).unwrap();
    let full = cx.path("full");
    fs::create_dir(&full).unwrap();
    fs::write(full.join("mine.txt"), "mine").unwrap();
    let link = cx.path("link");
    std::os::unix::fs::symlink("nowhere", &link).unwrap();
    for there in [&empty, &full, &link] {
        let run = cx
            .drover(&["checkout", &id, there.to_str().unwrap()])
            .failure();
        assert!(run.stderr.contains("already exists"), "{}", run.stderr);
    }
    assert!(empty.is_dir());
    assert_eq!(fs::read_to_string(full.join("mine.txt")).unwrap(), "mine");
    assert_eq!(fs::read_link(&link).unwrap(), Path::new("nowhere"));
}

#[test]
fn symlinks_are_checked_through_the_links_they_pass() {
    // Each link alone stays inside; through `a/l`, `b` is the tree's parent.
    let cx = TestContext::new();
    cx.drover(&["keys"]).success();
    let app = cx.app("chain", "[app]\nname = \"x\"\n", &[("a/f.txt", "f")]);
    std::os::unix::fs::symlink("..", app.join("a/l")).unwrap();
    std::os::unix::fs::symlink("a/l/..", app.join("b")).unwrap();
    let before = cx.snapshot_root();
    let run = cx.drover(&["build", app.to_str().unwrap()]).failure();
    assert!(
        run.stderr.contains("symlink `b`") && run.stderr.contains("out of the release"),
        "{}",
        run.stderr
    );
    assert_eq!(cx.snapshot_root(), before);

    // Links that stay inside, through links, still build and check out as they were.
    let ok = cx.app("inside", "[app]\nname = \"y\"\n", &[("a/b/f.txt", "deep")]);
    std::os::unix::fs::symlink("..", ok.join("a/b/up")).unwrap();
    std::os::unix::fs::symlink("b/up/b", ok.join("a/l")).unwrap();
    std::os::unix::fs::symlink("a/l/up/l/f.txt", ok.join("f")).unwrap();
    let built = cx.build(&ok, &[]);
    let co = cx.path("co");
    cx.drover(&[
        "checkout",
        built["release"].as_str().unwrap(),
        co.to_str().unwrap(),
    ])
    .success();
    assert_eq!(fs::read_to_string(co.join("f")).unwrap(), "deep");
}

/// A trusted store and a keyring to sign hostile releases with.
fn store_with_key() -> (TestContext, Keyring) {
    let cx = TestContext::new();
    cx.drover(&["keys"]).success();
    let ring = Keyring::new(&cx.root);
    (cx, ring)
}

fn file_of(path: &str, hash: Hash, chunks: Vec<ChunkRef>) -> Entry {
    Entry::File {
        path: path.into(),
        mode: 0o644,
        size: chunks.iter().map(|c| u64::from(c.1)).sum(),
        hash,
        chunks,
    }
}

#[test]
fn unpack_refuses_archives_that_lie_about_sizes() {
    let (cx, ring) = store_with_key();
    let before = cx.snapshot_root();
    // One compressible chunk of 1 MiB, said to be one byte long, 50 times over: a file of
    // 50 bytes by its manifest, 50 MiB on disk (its hash is that of the 50 MiB).
    let mib = vec![0u8; 1 << 20];
    let h = Hash::of(&mib);
    let liar = cx.path("liar.pack");
    hostile_archive(
        &liar,
        &ring,
        vec![file_of(
            "big",
            Hash::of(&mib.repeat(50)),
            vec![ChunkRef(h, 1); 50],
        )],
        &[(h, mib.clone())],
    );
    assert!(fs::metadata(&liar).unwrap().len() < 64 << 10);
    let run = cx.drover(&["unpack", liar.to_str().unwrap()]).failure();
    assert!(
        run.stderr.contains("liar.pack")
            && run.stderr.contains("`big`")
            && run.stderr.contains("1048576 bytes long, not 1"),
        "{}",
        run.stderr
    );
    assert_eq!(cx.snapshot_root(), before);

    // Honest sizes, but more than the limit: 64 MiB from a few KiB.
    let wide = cx.path("wide.pack");
    hostile_archive(
        &wide,
        &ring,
        vec![file_of(
            "big",
            Hash::of(&mib.repeat(64)),
            vec![ChunkRef(h, 1 << 20); 64],
        )],
        &[(h, mib.clone())],
    );
    let run = cx
        .drover(&["unpack", wide.to_str().unwrap(), "--max-size", "32M"])
        .failure();
    assert!(
        run.stderr.contains("wide.pack")
            && run.stderr.contains("evil@1")
            && run.stderr.contains("more than the limit")
            && run.stderr.contains("hint:")
            && run.stderr.contains("--max-size"),
        "{}",
        run.stderr
    );
    assert_eq!(cx.snapshot_root(), before);
    let run = cx
        .drover(&["unpack", wide.to_str().unwrap(), "--max-size", "lots"])
        .failure();
    assert!(run.stderr.contains("not a size"), "{}", run.stderr);

    // By default, up to 16 GiB: 17 GiB is refused before a chunk is read.
    let huge = cx.path("huge.pack");
    hostile_archive(
        &huge,
        &ring,
        vec![file_of(
            "big",
            Hash::of(b"?"),
            vec![ChunkRef(h, 1 << 20); 17 << 10],
        )],
        &[(h, mib.clone())],
    );
    let run = cx.drover(&["unpack", huge.to_str().unwrap()]).failure();
    assert!(run.stderr.contains("more than the limit"), "{}", run.stderr);
    assert_eq!(cx.snapshot_root(), before);

    // Within the limit it goes in, and checks out at its size.
    cx.drover(&["unpack", wide.to_str().unwrap(), "--max-size", "64M"])
        .success();
    let co = cx.path("co");
    cx.drover(&["checkout", "evil", co.to_str().unwrap()])
        .success();
    assert_eq!(fs::metadata(co.join("big")).unwrap().len(), 64 << 20);
}

#[test]
fn unpack_refuses_files_their_chunks_do_not_make_and_verify_finds_them() {
    let (cx, ring) = store_with_key();
    let before = cx.snapshot_root();
    let (a, b) = (noise(1, 100_000), noise(2, 70_000));
    let (ha, hb) = (Hash::of(&a), Hash::of(&b));
    let whole = Hash::of(&[a.clone(), b.clone()].concat());
    let (ra, rb) = (ChunkRef(ha, a.len() as u32), ChunkRef(hb, b.len() as u32));
    let chunks = [(ha, a.clone()), (hb, b.clone())];
    let cases: Vec<(&str, Entry, &str)> = vec![
        (
            "wrong-hash",
            file_of("f", Hash::of(b"other"), vec![ra, rb]),
            "hashes to",
        ),
        (
            "out-of-order",
            file_of("f", whole, vec![rb, ra]),
            "hashes to",
        ),
        (
            "wrong-lengths",
            file_of(
                "f",
                whole,
                vec![
                    ChunkRef(ha, a.len() as u32 + 5),
                    ChunkRef(hb, b.len() as u32 - 5),
                ],
            ),
            "bytes long",
        ),
        ("one-chunk", file_of("f", hb, vec![ra]), "hashes to"),
    ];
    let good = file_of("f", whole, vec![ra, rb]);
    for (name, entry, needle) in &cases {
        let path = cx.path(&format!("{name}.pack"));
        let only_a = [chunks[0].clone()];
        let sent: &[(Hash, Vec<u8>)] = if *name == "one-chunk" {
            &only_a
        } else {
            &chunks
        };
        hostile_archive(&path, &ring, vec![entry.clone()], sent);
        let run = cx.drover(&["unpack", path.to_str().unwrap()]).failure();
        assert!(
            run.stderr.contains(&format!("{name}.pack"))
                && run.stderr.contains("file `f`")
                && run.stderr.contains(needle),
            "{name}: {}",
            run.stderr
        );
        assert_eq!(cx.snapshot_root(), before, "{name} changed the store");
    }
    let path = cx.path("good.pack");
    hostile_archive(&path, &ring, vec![good], &chunks);
    cx.drover(&["unpack", path.to_str().unwrap()]).success();
    cx.drover(&["verify"]).success();

    // Such releases already in a store (put there by the library, as an older drover's
    // unpack did) are named by `verify`.
    let store = drover_store::Store::open(&cx.root).unwrap();
    for (name, entry, needle) in &cases {
        let m = Manifest {
            format: 1,
            app: "evil".into(),
            version: name.to_string(),
            runtime: Default::default(),
            depends: Default::default(),
            entries: vec![entry.clone()],
        };
        store
            .commit_release(&m, &ring.sign(&m.id()).unwrap())
            .unwrap();
        let run = cx.drover(&["verify"]).failure();
        assert!(
            run.stderr.contains(&format!("release {} file `f`", m.id()))
                && run.stderr.contains(needle),
            "{name}: {}",
            run.stderr
        );
        let run = cx.drover(&["verify", &m.id().to_hex()]).failure();
        assert!(run.stderr.contains(needle), "{name}: {}", run.stderr);
        for dir in ["store/objects/manifests", "store/objects/sigs"] {
            fs::remove_file(cx.root.join(dir).join(m.id().to_hex())).unwrap();
        }
    }
    cx.drover(&["verify"]).success();
}

/// Flips the middle byte of a store object file (which is read-only).
fn damage(path: &Path) {
    make_writable(path);
    let mut bytes = fs::read(path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    fs::write(path, &bytes).unwrap();
}

#[test]
fn unpack_and_build_replace_damaged_objects() {
    let cx = TestContext::new();
    let app = cx.app("app", "[app]\nname = \"app\"\n", &[]);
    let data = noise(5, 300_000);
    fs::write(app.join("data.bin"), &data).unwrap();
    // Settled: the next builds take the file from the directory's build record.
    std::thread::sleep(Duration::from_millis(2100));
    let id = cx.build(&app, &["--version", "1"])["release"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(cx.build(&app, &["--version", "1"])["unchanged_files"], 2);
    let archive = cx.path("app.pack");
    cx.drover(&["pack", &id, "-o", archive.to_str().unwrap()])
        .success();
    let checkout = |name: &str| {
        clear_file_cache(&cx.root);
        let dest = cx.path(name);
        cx.drover(&["checkout", &id, dest.to_str().unwrap()])
            .success();
        assert_eq!(fs::read(dest.join("data.bin")).unwrap(), data);
    };
    let manifest = cx.root.join("store/objects/manifests").join(&id);
    // The pack with data.bin's chunks (drover.toml's may be in another).
    let pack = packs(&cx.root)
        .into_iter()
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();

    // A damaged chunk (packed, stored raw: the middle of the pack is in its data), then the
    // manifest: unpack of a good archive replaces each.
    for (n, object) in [&pack, &manifest].into_iter().enumerate() {
        damage(object);
        cx.drover(&["verify"]).failure();
        let out = cx
            .drover(&["unpack", archive.to_str().unwrap(), "--json"])
            .success()
            .json();
        cx.drover(&["verify"]).success();
        checkout(&format!("co-unpack-{n}"));
        assert_eq!(out["repaired"], 1, "{out}");
    }
    // The repaired chunk is a loose copy now; damaged too, unpack replaces it as well.
    let loose = objects(&cx.root)
        .into_iter()
        .find(|p| p.to_str().unwrap().contains("/chunks/"))
        .unwrap();
    damage(&loose);
    cx.drover(&["verify"]).failure();
    let out = cx
        .drover(&["unpack", archive.to_str().unwrap(), "--json"])
        .success()
        .json();
    assert_eq!(out["repaired"], 1, "{out}");
    cx.drover(&["verify"]).success();
    // As does `verify --repair`, before it checks.
    damage(&loose);
    let run = cx
        .drover(&["verify", "--repair", archive.to_str().unwrap()])
        .success();
    assert!(
        run.stderr.contains("1 damaged objects replaced"),
        "{}",
        run.stderr
    );

    // A build replaces them too: the chunk (even where the file is unchanged since the last
    // build: `verify` saw the damage), then the manifest.
    damage(&loose);
    cx.drover(&["verify"]).failure();
    let built = cx.build(&app, &["--version", "1"]);
    assert_eq!(built["release"], id.as_str());
    assert!(built["stored_bytes"].as_u64().unwrap() > 0, "{built}");
    cx.drover(&["verify"]).success();
    checkout("co-build-0");
    damage(&manifest);
    let built = cx.build(&app, &["--version", "1"]);
    assert!(built["stored_bytes"].as_u64().unwrap() > 0, "{built}");
    cx.drover(&["verify"]).success();
    checkout("co-build-1");
}

#[test]
fn unpack_names_what_is_not_an_archive() {
    let cx = TestContext::new();
    let dir = cx.path("somedir");
    fs::create_dir(&dir).unwrap();
    let run = cx.drover(&["unpack", dir.to_str().unwrap()]).failure();
    assert!(
        run.stderr.contains(&format!(
            "{} is a directory, not a drover archive",
            dir.display()
        )),
        "{}",
        run.stderr
    );
    for (name, bytes) in [
        ("short.pack", &b"DRV"[..]),
        ("text.pack", b"hello, not an archive"),
    ] {
        let p = cx.path(name);
        fs::write(&p, bytes).unwrap();
        let run = cx.drover(&["unpack", p.to_str().unwrap()]).failure();
        assert!(
            run.stderr.contains(name) && run.stderr.contains("not a drover archive"),
            "{}",
            run.stderr
        );
    }
}

#[test]
fn a_crash_at_any_step_of_build_or_unpack_leaves_no_half_release() {
    use std::os::unix::process::ExitStatusExt;
    let files: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| (format!("f{i}.bin"), noise(40 + i, 150_000)))
        .collect();
    let write_app = |cx: &TestContext| {
        let app = cx.app("app", "[app]\nname = \"app\"\nversion = \"1\"\n", &[]);
        for (name, data) in &files {
            fs::write(app.join(name), data).unwrap();
        }
        app
    };
    // The release both commands make, and an archive of it.
    let src = TestContext::new();
    let id = src.build(&write_app(&src), &[])["release"]
        .as_str()
        .unwrap()
        .to_string();
    let archive = src.path("app.pack");
    src.drover(&["pack", &id, "-o", archive.to_str().unwrap()])
        .success();
    let key = src.drover(&["keys"]).success().stdout.trim().to_string();

    let points: Vec<&str> = drover_store::failpoint::POINTS
        .iter()
        .copied()
        .filter(|p| {
            ["build.", "unpack.", "commit."]
                .iter()
                .any(|a| p.starts_with(a))
        })
        .collect();
    assert!(points.len() >= 8, "{points:?}");
    let mut runs = 0;
    for point in points {
        for command in ["build", "unpack"] {
            if point.starts_with(if command == "build" {
                "unpack."
            } else {
                "build."
            }) {
                continue;
            }
            let cx = TestContext::new();
            let args: Vec<String> = if command == "build" {
                vec!["build".into(), write_app(&cx).display().to_string()]
            } else {
                cx.drover(&["keys", "trust", &key]).success();
                vec!["unpack".into(), archive.display().to_string()]
            };
            let out = cx
                .command()
                .args(&args)
                .env("DROVER_FAILPOINT", point)
                .output()
                .unwrap();
            let run = to_run(out);
            assert_eq!(
                run.status.signal(),
                Some(9),
                "{command} did not reach {point}: {}\n{}",
                run.status,
                run.stderr
            );
            let what = format!("{command} killed at {point}");
            // Either no release or the whole one.
            if whole_or_none(&cx, &id, &what) {
                let co = cx.path("co-crashed");
                cx.drover(&["checkout", &id, co.to_str().unwrap()])
                    .success();
            }
            // The same command again completes it.
            let again = cx.drover(&args.iter().map(String::as_str).collect::<Vec<_>>());
            let again = again.success();
            assert_eq!(again.stdout.trim(), id, "{what}: {}", again.stderr);
            cx.drover(&["verify", &id]).success();
            let co = cx.path("co");
            cx.drover(&["checkout", &id, co.to_str().unwrap()])
                .success();
            for (name, data) in &files {
                assert_eq!(&fs::read(co.join(name)).unwrap(), data, "{what}");
            }
            runs += 1;
        }
    }
    assert!(runs >= 13, "{runs}");
}

#[test]
fn a_receiver_killed_at_any_step_leaves_no_half_release_and_the_next_transfer_completes() {
    use std::io::Write;
    use std::os::unix::process::ExitStatusExt;
    let files: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| (format!("f{i}.bin"), noise(70 + i, 150_000)))
        .collect();
    let src = TestContext::new();
    let app = src.app("app", "[app]\nname = \"app\"\nversion = \"1\"\n", &[]);
    for (name, data) in &files {
        fs::write(app.join(name), data).unwrap();
    }
    let id = src.build(&app, &[])["release"]
        .as_str()
        .unwrap()
        .to_string();
    let key = src.drover(&["keys"]).success().stdout.trim().to_string();
    let store = drover_store::Store::open(&src.root).unwrap();
    let hash: Hash = id.parse().unwrap();

    // A transfer into `dst`'s `remote serve`, as a fleet deploy makes it over ssh.
    let transfer = |dst: &TestContext, point: Option<&str>| {
        let mut cmd = dst.command();
        cmd.args(["remote", "serve"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(p) = point {
            cmd.env("DROVER_FAILPOINT", p);
        }
        let mut child = cmd.spawn().unwrap();
        let mut to = child.stdin.take().unwrap();
        let from = child.stdout.take().unwrap();
        to.write_all(b"{\"op\":\"receive\"}\n").unwrap();
        let sent = drover_store::transfer::send(
            &store,
            &hash,
            &drover_store::transfer::Encoded::default(),
            from,
            &mut to,
            "dst",
            |_| {},
        );
        drop(to);
        let out = child.wait_with_output().unwrap();
        (sent.is_ok(), to_run(out))
    };

    let points: Vec<&str> = drover_store::failpoint::POINTS
        .iter()
        .copied()
        .filter(|p| p.starts_with("receive.") || p.starts_with("commit."))
        .collect();
    assert!(points.len() >= 7, "{points:?}");
    for point in points {
        let dst = TestContext::new();
        dst.drover(&["keys", "trust", &key]).success();
        let (sent, run) = transfer(&dst, Some(point));
        assert!(!sent, "{point}: the transfer went through");
        assert_eq!(
            run.status.signal(),
            Some(9),
            "the receiver did not reach {point}: {}\n{}",
            run.status,
            run.stderr
        );
        let what = format!("receiver killed at {point}");
        whole_or_none(&dst, &id, &what);
        // The next transfer completes it, and the release checks out whole.
        let (sent, run) = transfer(&dst, None);
        assert!(sent && run.status.success(), "{what}: {}", run.stderr);
        dst.drover(&["verify", &id]).success();
        let co = dst.path("co");
        dst.drover(&["checkout", &id, co.to_str().unwrap()])
            .success();
        for (name, data) in &files {
            assert_eq!(&fs::read(co.join(name)).unwrap(), data, "{what}");
        }
    }
}

#[test]
fn with_no_thread_to_spare_build_checkout_and_verify_still_work() {
    let files: Vec<(String, Vec<u8>)> = (0..40)
        .map(|i| (format!("d{}/f{i}.bin", i % 4), noise(90 + i, 20_000)))
        .collect();
    let cx = TestContext::new();
    let app = cx.app("app", "[app]\nname = \"app\"\nversion = \"1\"\n", &[]);
    for (name, data) in &files {
        fs::create_dir_all(app.join(name).parent().unwrap()).unwrap();
        fs::write(app.join(name), data).unwrap();
    }
    cx.drover(&["keys"]).success();
    let Some(cgroup) =
        crate::common::PidsCgroup::new(&format!("drover-test-par-{}", std::process::id()))
    else {
        assert!(
            !rustix::process::geteuid().is_root(),
            "as root, a pids cgroup must be possible here"
        );
        eprintln!("no pids cgroup can be made by this user: nothing to limit");
        return;
    };
    // One task in all: the command's own thread. Each command joins the cgroup, then
    // becomes drover.
    cgroup.set_max("1");
    let procs = cgroup.0.join("cgroup.procs");
    let limited = |args: &[&str]| {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("echo $$ > {} && exec \"$@\"", procs.display()))
            .arg("sh")
            .arg(crate::common::drover_bin())
            .args(args)
            .env("DROVER_ROOT", &cx.root)
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        to_run(out)
    };
    let built = limited(&["build", app.to_str().unwrap(), "--json"]);
    assert!(built.status.success(), "{}", built.stderr);
    let id = built.json()["release"].as_str().unwrap().to_string();
    let co = cx.path("co");
    let run = limited(&["checkout", &id, co.to_str().unwrap()]);
    assert!(run.status.success(), "{}", run.stderr);
    let run = limited(&["verify"]);
    assert!(run.status.success(), "{}", run.stderr);
    cgroup.set_max("max");
    for (name, data) in &files {
        assert_eq!(&fs::read(co.join(name)).unwrap(), data);
    }
}

/// A Python virtualenv in `dir` (`python3 -m venv`). As root, the venv module is installed
/// (`python3-venv`) when it is missing.
fn python_venv(dir: &Path) {
    let make = || {
        std::process::Command::new("python3")
            .args(["-m", "venv", "--without-pip"])
            .arg(dir)
            .output()
    };
    let made =
        |out: &std::io::Result<std::process::Output>| matches!(out, Ok(o) if o.status.success());
    let mut out = make();
    if !made(&out) && rustix::process::geteuid().is_root() {
        let status = std::process::Command::new("apt-get")
            .args(["install", "-y", "python3-venv"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status();
        assert!(
            matches!(status, Ok(s) if s.success()),
            "apt-get install -y python3-venv failed: {status:?}"
        );
        out = make();
    }
    assert!(
        made(&out),
        "python3 -m venv {} failed (install python3-venv): {out:?}",
        dir.display()
    );
}

/// Every symlink under `dir`, by its path below `dir`, with its target.
fn links_under(dir: &Path, prefix: &str, out: &mut Vec<(String, std::path::PathBuf)>) {
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let rel = format!("{prefix}{}", e.file_name().to_str().unwrap());
        let ft = e.file_type().unwrap();
        if ft.is_symlink() {
            out.push((rel, fs::read_link(e.path()).unwrap()));
        } else if ft.is_dir() {
            links_under(&e.path(), &format!("{rel}/"), out);
        }
    }
}

#[test]
fn a_python_virtualenv_builds_runs_from_its_tree_and_travels() {
    let cx = TestContext::new();
    cx.drover(&["keys"]).success();
    // Run by a root agent as root: the venv links an interpreter of this machine's, which
    // may live where no other user reaches (pyenv's, under /root).
    let user = if rustix::process::geteuid().is_root() {
        "user = \"root\"\n"
    } else {
        ""
    };
    let app = cx.app(
        "pyapp",
        &format!(
            "[app]\nname = \"pyapp\"\nversion = \"1\"\n{user}\n[process.web]\ncommand = \"exec venv/bin/python -m web\"\nhttp = true\n\n[health]\npath = \"/up\"\ntimeout = \"10s\"\n"
        ),
        &[],
    );
    python_venv(&app.join("venv"));
    // The app's modules, installed in the venv: one that greets, one that serves HTTP.
    let lib = app.join("venv/lib");
    let python = fs::read_dir(&lib).unwrap().next().unwrap().unwrap().path();
    let site = python.join("site-packages");
    fs::write(
        site.join("greet.py"),
        "import sys\nprint('hello from', sys.prefix)\n",
    )
    .unwrap();
    fs::write(
        site.join("web.py"),
        "import http.server, os, sys\n\
         class H(http.server.BaseHTTPRequestHandler):\n\
         \x20   def do_GET(self):\n\
         \x20       body = ('hello from ' + sys.prefix).encode()\n\
         \x20       self.send_response(200)\n\
         \x20       self.send_header('Content-Length', str(len(body)))\n\
         \x20       self.end_headers()\n\
         \x20       self.wfile.write(body)\n\
         \x20   def log_message(self, *args):\n\
         \x20       pass\n\
         http.server.HTTPServer(('127.0.0.1', int(os.environ['PORT'])), H).serve_forever()\n",
    )
    .unwrap();
    // Compiled ahead, checked by nothing but their own hash: python then writes no
    // __pycache__ into a tree (which it could as root).
    let status = std::process::Command::new("python3")
        .args([
            "-m",
            "compileall",
            "-q",
            "--invalidation-mode",
            "unchecked-hash",
        ])
        .arg(&site)
        .status()
        .unwrap();
    assert!(status.success());
    let mut links = Vec::new();
    links_under(&app, "", &mut links);
    assert!(
        links.iter().any(|(_, t)| t.is_absolute()),
        "a virtualenv links its interpreter by absolute path: {links:?}"
    );
    let id = cx.build(&app, &[])["release"].as_str().unwrap().to_string();

    // Its links as they were, and its python runs from the tree, taking the tree's venv.
    let runs_in = |tree: &Path| {
        for (rel, target) in &links {
            assert_eq!(&fs::read_link(tree.join(rel)).unwrap(), target, "{rel}");
        }
        let out = std::process::Command::new(tree.join("venv/bin/python"))
            .args(["-c", "import greet"])
            .env_remove("PYTHONDONTWRITEBYTECODE")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("hello from {}\n", tree.join("venv").display())
        );
    };
    let co = cx.path("co");
    cx.drover(&["checkout", &id, co.to_str().unwrap()])
        .success();
    runs_in(&co);
    // Materialised in the store, where the agent runs it.
    let run = cx.drover(&["checkout", &id]).success();
    let tree = std::path::PathBuf::from(run.stdout.trim());
    assert!(
        tree.ends_with(format!("store/trees/{id}")),
        "{}",
        run.stdout
    );
    runs_in(&tree);
    cx.drover(&["verify"]).success();

    // Deployed: the agent runs it from its tree.
    let _agent = cx.start_agent();
    cx.drover(&["deploy", &id]).success();
    let ports = cx.live_ports("pyapp");
    assert!(!ports.is_empty(), "{}", cx.status());
    for port in ports {
        let (code, body) = http_get(port, "/").unwrap();
        assert_eq!(code, 200);
        assert_eq!(body, format!("hello from {}", tree.join("venv").display()));
    }
    cx.drover(&["verify"]).success();

    // Packed, unpacked into another root, and run there.
    let archive = cx.path("pyapp.pack");
    cx.drover(&["pack", &id, "-o", archive.to_str().unwrap()])
        .success();
    let other = TestContext::new();
    other
        .drover(&["unpack", archive.to_str().unwrap(), "--allow-untrusted"])
        .success();
    let run = other.drover(&["checkout", &id]).success();
    runs_in(Path::new(run.stdout.trim()));
    other.drover(&["verify"]).success();
}

/// Every file and directory of `tree` (its top included) carries no write bit, not even
/// its owner's.
fn assert_read_only(tree: &Path) {
    fn walk(p: &Path) {
        let m = fs::symlink_metadata(p).unwrap();
        if m.file_type().is_symlink() {
            return;
        }
        assert_eq!(
            m.permissions().mode() & 0o222,
            0,
            "{} is writable",
            p.display()
        );
        if m.is_dir() {
            for e in fs::read_dir(p).unwrap() {
                walk(&e.unwrap().path());
            }
        }
    }
    walk(tree);
}

#[test]
fn a_changed_tree_is_named_by_verify_and_repaired() {
    let cx = TestContext::new();
    cx.drover(&["keys"]).success();
    let app = cx.app(
        "tree",
        "[app]\nname = \"tree\"\nversion = \"1\"\n",
        &[("a.txt", "a"), ("sub/b.txt", "b"), ("c.txt", "c")],
    );
    let id = cx.build(&app, &[])["release"].as_str().unwrap().to_string();
    let tree = std::path::PathBuf::from(cx.drover(&["checkout", &id]).success().stdout.trim());
    assert_read_only(&tree);
    let damage = || {
        // a.txt written through the tree (so into the cache file it is a link to), its
        // mtime kept; sub/b.txt made writable; a file added; one removed.
        let a = tree.join("a.txt");
        let mtime = fs::metadata(&a).unwrap().modified().unwrap();
        make_writable(&a);
        fs::write(&a, "A").unwrap();
        fs::set_permissions(&a, fs::Permissions::from_mode(0o444)).unwrap();
        fs::File::open(&a)
            .unwrap()
            .set_times(fs::FileTimes::new().set_modified(mtime))
            .unwrap();
        make_writable(&tree.join("sub/b.txt"));
        in_writable(&tree.join("sub"), || {
            fs::write(tree.join("sub/new.txt"), "new").unwrap()
        });
        in_writable(&tree, || fs::remove_file(tree.join("c.txt")).unwrap());
    };
    damage();
    let run = cx.drover(&["verify"]).failure();
    for (rel, why) in [
        ("a.txt", "content changed"),
        ("sub/b.txt", "writable"),
        ("sub/new.txt", "not in the release"),
        ("c.txt", "missing"),
    ] {
        let line = run
            .stderr
            .lines()
            .find(|l| l.contains(&format!("`{rel}`")))
            .unwrap_or_else(|| panic!("verify did not name {rel}:\n{}", run.stderr));
        assert!(
            line.contains("release tree@1") && line.contains(&id) && line.contains(why),
            "{rel}: {line}"
        );
    }
    // The cache file a.txt is a link to is bad too.
    assert!(run.stderr.contains("store/files/"), "{}", run.stderr);

    let run = cx.drover(&["verify", "--repair"]).success();
    assert!(
        run.stderr.contains("rebuilt the tree of release tree@1"),
        "{}",
        run.stderr
    );
    cx.drover(&["verify"]).success();
    assert_eq!(fs::read_to_string(tree.join("a.txt")).unwrap(), "a");
    assert_eq!(fs::read_to_string(tree.join("c.txt")).unwrap(), "c");
    assert!(!tree.join("sub/new.txt").exists());
    assert_read_only(&tree);
    // The cache file was made again: a new checkout links the good content.
    let co = cx.path("co");
    cx.drover(&["checkout", &id, co.to_str().unwrap()])
        .success();
    assert_eq!(fs::read_to_string(co.join("a.txt")).unwrap(), "a");

    // Once verify has named the damage, the next materialise (the agent's, before it
    // starts an instance) rebuilds the tree too.
    damage();
    cx.drover(&["verify"]).failure();
    let store = drover_store::Store::open(&cx.root).unwrap();
    let path = store.materialise(&id.parse().unwrap()).unwrap();
    assert_eq!(path, tree);
    cx.drover(&["verify"]).success();
    assert_eq!(fs::read_to_string(tree.join("a.txt")).unwrap(), "a");
    assert_read_only(&tree);
}

#[test]
fn a_tree_takes_no_write_even_from_its_owner() {
    let root = rustix::process::geteuid().is_root();
    let cx = TestContext::new();
    cx.drover(&["keys"]).success();
    let app = cx.app(
        "ro",
        "[app]\nname = \"ro\"\n",
        &[
            ("a.txt", "a"),
            ("bin/run", "#!/bin/sh\n"),
            ("sub/b.txt", "b"),
        ],
    );
    fs::set_permissions(app.join("bin/run"), fs::Permissions::from_mode(0o755)).unwrap();
    let id = cx.build(&app, &["--version", "1"])["release"]
        .as_str()
        .unwrap()
        .to_string();
    let co = cx.path("co");
    cx.drover(&["checkout", &id, co.to_str().unwrap()])
        .success();
    let tree = std::path::PathBuf::from(cx.drover(&["checkout", &id]).success().stdout.trim());
    for t in [&co, &tree] {
        assert_read_only(t);
    }
    // Owned by an unprivileged user, which then tries to write into them.
    let user = |script: &str| {
        let mut c = if root {
            let mut c = std::process::Command::new("setpriv");
            c.arg(format!("--reuid={NOBODY}"))
                .arg(format!("--regid={NOBODY}"))
                .arg("--clear-groups")
                .arg("sh");
            c
        } else {
            std::process::Command::new("sh")
        };
        c.arg("-c").arg(script).output().unwrap()
    };
    if root {
        // The way down to the trees open to that user (nothing else of theirs).
        for d in [
            cx.dir.path(),
            &cx.root,
            &cx.root.join("store"),
            &cx.root.join("store/trees"),
        ] {
            fs::set_permissions(d, fs::Permissions::from_mode(0o711)).unwrap();
        }
        for t in [&co, &tree] {
            let status = std::process::Command::new("chown")
                .args(["-R", &format!("{NOBODY}:{NOBODY}")])
                .arg(t)
                .status()
                .unwrap();
            assert!(status.success());
        }
    }
    for t in [&co, &tree] {
        let t = t.display();
        let out = user(&format!("test -r {t}/a.txt && cat {t}/a.txt"));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "a", "{out:?}");
        for write in [
            format!("echo x >> {t}/a.txt"),
            format!("echo x > {t}/sub/b.txt"),
            format!("echo x > {t}/new.txt"),
            format!("echo x > {t}/sub/new.txt"),
            format!("rm -f {t}/a.txt"),
            format!("mkdir {t}/d"),
            format!("mv {t}/sub {t}/moved"),
        ] {
            let out = user(&write);
            assert!(!out.status.success(), "`{write}` succeeded");
        }
    }
    assert_eq!(fs::read_to_string(co.join("a.txt")).unwrap(), "a");
    assert_eq!(fs::read_to_string(tree.join("sub/b.txt")).unwrap(), "b");
    assert!(!tree.join("new.txt").exists() && tree.join("sub").exists());
    cx.drover(&["verify"]).success();
    // gc still removes such a tree, once its release goes.
    fs::write(app.join("a.txt"), "a2").unwrap();
    cx.build(&app, &["--version", "2"]);
    cx.drover(&["gc", "--keep", "1"]).success();
    assert!(
        fs::symlink_metadata(&tree).is_err(),
        "gc left {}",
        tree.display()
    );
    cx.drover(&["verify"]).success();
}

#[test]
fn an_unprivileged_owner_repairs_and_collects_its_trees() {
    let cx = TestContext::new();
    let app = cx.app(
        "own",
        "[app]\nname = \"own\"\nversion = \"1\"\n",
        &[("a.txt", "a"), ("sub/b.txt", "b")],
    );
    // The user's own root, 0700, and the whole test directory theirs.
    fs::create_dir(&cx.root).unwrap();
    fs::set_permissions(&cx.root, fs::Permissions::from_mode(0o700)).unwrap();
    if rustix::process::geteuid().is_root() {
        let status = std::process::Command::new("chown")
            .args(["-R", &format!("{NOBODY}:{NOBODY}")])
            .arg(cx.dir.path())
            .status()
            .unwrap();
        assert!(status.success());
    }
    let drover = |args: &[&str]| to_run(unprivileged(&cx).args(args).output().unwrap());
    drover(&["keys"]).success();
    let id = drover(&["build", app.to_str().unwrap(), "--json"])
        .success()
        .json()["release"]
        .as_str()
        .unwrap()
        .to_string();
    let tree = std::path::PathBuf::from(drover(&["checkout", &id]).success().stdout.trim());
    let damage = || {
        in_writable(&tree.join("sub"), || {
            fs::write(tree.join("sub/extra.txt"), "x").unwrap()
        });
        in_writable(&tree, || fs::remove_file(tree.join("a.txt")).unwrap());
    };
    damage();
    drover(&["verify"]).failure();
    let run = drover(&["verify", "--repair"]).success();
    assert!(run.stderr.contains("rebuilt the tree"), "{}", run.stderr);
    drover(&["verify"]).success();
    assert_eq!(fs::read_to_string(tree.join("a.txt")).unwrap(), "a");
    assert!(!tree.join("sub/extra.txt").exists());
    assert_read_only(&tree);

    // The next materialise rebuilds it as well.
    damage();
    let run = drover(&["checkout", &id]).success();
    assert!(run.stderr.contains("rebuilt"), "{}", run.stderr);
    drover(&["verify"]).success();
    assert_read_only(&tree);

    // gc removes it with its release.
    fs::write(app.join("a.txt"), "a2").unwrap();
    drover(&["build", app.to_str().unwrap(), "--version", "2"]).success();
    drover(&["gc", "--keep", "1"]).success();
    assert!(
        fs::symlink_metadata(&tree).is_err(),
        "gc left {}",
        tree.display()
    );
    drover(&["verify"]).success();
}

#[test]
fn links_out_of_a_release_are_never_followed_by_materialise_repair_or_gc() {
    let cx = TestContext::new();
    cx.drover(&["keys"]).success();
    // A directory outside, writable, that the release's links point to.
    let outside = cx.path("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("keep.txt"), "keep").unwrap();
    let app = cx.app(
        "links",
        "[app]\nname = \"links\"\nversion = \"1\"\n",
        &[("a.txt", "a"), ("sub/b.txt", "b")],
    );
    std::os::unix::fs::symlink(&outside, app.join("abs")).unwrap();
    std::os::unix::fs::symlink("../../outside", app.join("sub/rel")).unwrap();
    std::os::unix::fs::symlink("abs/keep.txt", app.join("through")).unwrap();
    let id = cx.build(&app, &[])["release"].as_str().unwrap().to_string();
    let tree = std::path::PathBuf::from(cx.drover(&["checkout", &id]).success().stdout.trim());
    assert_eq!(fs::read_link(tree.join("abs")).unwrap(), outside);
    assert_eq!(
        fs::read_link(tree.join("sub/rel")).unwrap(),
        Path::new("../../outside")
    );
    // Damaged, repaired, rebuilt by the next materialise, collected: through none of it
    // is anything written or removed where the links point.
    in_writable(&tree, || fs::remove_file(tree.join("a.txt")).unwrap());
    cx.drover(&["verify", "--repair"]).success();
    in_writable(&tree, || fs::remove_file(tree.join("abs")).unwrap());
    in_writable(&tree, || {
        std::os::unix::fs::symlink(outside.join("keep.txt"), tree.join("abs")).unwrap()
    });
    let run = cx.drover(&["verify"]).failure();
    assert!(
        run.stderr.contains("`abs`") && run.stderr.contains("symlink target changed"),
        "{}",
        run.stderr
    );
    let run = cx.drover(&["checkout", &id]).success();
    assert!(run.stderr.contains("rebuilt"), "{}", run.stderr);
    assert_eq!(fs::read_link(tree.join("abs")).unwrap(), outside);
    let co = cx.path("co");
    cx.drover(&["checkout", &id, co.to_str().unwrap()])
        .success();
    fs::write(app.join("a.txt"), "a2").unwrap();
    cx.build(&app, &["--version", "2"]);
    cx.drover(&["gc", "--keep", "1"]).success();
    assert!(fs::symlink_metadata(&tree).is_err());
    drover_store::remove_tree(&co);
    let left: Vec<_> = fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["keep.txt"]);
    assert_eq!(
        fs::read_to_string(outside.join("keep.txt")).unwrap(),
        "keep"
    );
    cx.drover(&["verify"]).success();
}

/// `python3 -v -c 'import NAME'` in `dir`, writing bytecode if it wants to with `write`:
/// what it said (stderr) and printed.
fn python_import(dir: &Path, name: &str, write: bool) -> (String, String) {
    let mut cmd = std::process::Command::new("python3");
    cmd.args(["-v", "-c", &format!("import {name}; print({name}.X)")])
        .current_dir(dir)
        .env_remove("PYTHONDONTWRITEBYTECODE")
        .env_remove("PYTHONPYCACHEPREFIX");
    if !write {
        // Root writes through a tree's mode bits (only the agent's apps get a read-only
        // store): this one may not.
        cmd.env("PYTHONDONTWRITEBYTECODE", "1");
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{out:?}");
    (
        String::from_utf8_lossy(&out.stderr).into_owned(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    )
}

#[test]
fn bytecode_compiled_before_the_build_is_used_from_the_tree_and_a_stale_one_is_not() {
    let cx = TestContext::new();
    let app = cx.app(
        "pyc",
        "[app]\nname = \"pyc\"\nversion = \"1\"\n",
        &[("fresh.py", "X = 'fresh'\n"), ("stale.py", "X = 'old'\n")],
    );
    // Timestamp pycs, as compileall and pip write them; then stale.py changes after.
    let status = std::process::Command::new("python3")
        .args(["-m", "compileall", "-q", "."])
        .current_dir(&app)
        .status()
        .unwrap();
    assert!(status.success());
    std::thread::sleep(std::time::Duration::from_millis(1100));
    fs::write(app.join("stale.py"), "X = 'new'\n").unwrap();

    let id = cx.build(&app, &[])["release"].as_str().unwrap().to_string();
    let run = cx.drover(&["checkout", &id]).success();
    let tree = std::path::PathBuf::from(run.stdout.trim());

    // In the tree, whose files' times are not the build directory's: the fresh pyc is
    // taken as it is, and nothing is compiled or written.
    let (said, printed) = python_import(&tree, "fresh", true);
    assert_eq!(printed, "fresh");
    assert!(
        said.contains("__pycache__/fresh.cpython-") && said.contains(" matches "),
        "{said}"
    );
    assert!(!said.contains("bytecode is stale for 'fresh'"), "{said}");
    assert!(!said.contains("created '"), "{said}");
    // The stale one was not made to look valid: the new source runs.
    let (said, printed) = python_import(&tree, "stale", false);
    assert!(said.contains("bytecode is stale for 'stale'"), "{said}");
    assert_eq!(printed, "new");
    cx.drover(&["verify"]).success();
}
