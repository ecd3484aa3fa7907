//! Apps cannot write into release trees or the store, even as root: each process runs in a
//! mount namespace of its own where the store is read-only, as `drover-app` unless its
//! app names a user, and writes into `$DROVER_DATA` and its own `$TMPDIR`.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::{TestContext, wait_for};

/// Writes a report of what it could write to `$DROVER_DATA/report-NAME`; with `serve`,
/// then stays running.
const PROBE: &str = r#"#!/bin/sh
name=$1
try() { if ( eval "$2" ) 2>"$TMPDIR/err"; then echo "$1: wrote"; else echo "$1: refused: $(cat "$TMPDIR/err")"; fi; }
{
  echo "uid: $(id -u)"
  echo "tmpdir: $TMPDIR"
  echo "cwd: $(pwd)"
  try tree 'echo x > ./planted'
  try file 'echo x >> ./probe.sh'
  try store 'echo x > "$STORE/planted"'
  try cache 'for f in "$STORE"/files/*; do echo x >> "$f" || exit 1; done'
  try remount 'mount -o remount,rw,bind "$(pwd)"'
  try keys 'cat "$STORE/../keys/signing.key" > /dev/null'
  try socket 'ls "$STORE/../agent.sock"'
  try data 'echo "$name" >> "$DROVER_DATA/runs"'
  try tmp 'echo x > "$TMPDIR/mark"'
} > "$DROVER_DATA/report-$name.part"
mv "$DROVER_DATA/report-$name.part" "$DROVER_DATA/report-$name"
if [ "$2" = serve ]; then exec sleep 1000; fi
"#;

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// An app of processes that report what they could write; `extra` goes into `drover.toml`
/// after `[app]`'s own keys.
fn probe_app(cx: &TestContext, dir: &str, version: &str, app_keys: &str, extra: &str) -> PathBuf {
    cx.app(
        dir,
        &format!(
            "[app]\nname = \"probe\"\nversion = \"{version}\"\n{app_keys}\n[process.web]\ncommand = \"sh ./probe.sh $DROVER_PROCESS serve\"\n{extra}\n[env]\nSTORE = \"{}\"\n",
            cx.root.join("store").display()
        ),
        &[("probe.sh", PROBE)],
    )
}

fn data_dir(cx: &TestContext) -> PathBuf {
    cx.root.join("apps/probe/data")
}

/// The report of the process named `name`, once written.
fn report(cx: &TestContext, name: &str) -> String {
    let path = data_dir(cx).join(format!("report-{name}"));
    wait_for(
        &format!("{}", path.display()),
        Duration::from_secs(20),
        || path.exists(),
    );
    fs::read_to_string(&path).unwrap()
}

/// A line of a report: `tree: refused: ...`.
fn line<'a>(report: &'a str, key: &str) -> &'a str {
    report
        .lines()
        .find(|l| l.starts_with(&format!("{key}: ")))
        .unwrap_or_else(|| panic!("no {key} in\n{report}"))
}

#[track_caller]
fn refused(report: &str, key: &str, errors: &[&str]) {
    let l = line(report, key);
    assert!(
        l.starts_with(&format!("{key}: refused")) && errors.iter().any(|e| l.contains(e)),
        "{key} should be refused with one of {errors:?}:\n{report}"
    );
}

fn uid_of_pid(pid: u64) -> u32 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .unwrap_or_else(|| panic!("{status}"));
    uid.split_whitespace().next().unwrap().parse().unwrap()
}

fn uid_of(user: &str) -> u32 {
    let out = Command::new("id").args(["-u", user]).output().unwrap();
    assert!(out.status.success(), "no user {user}");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Every file of the store's shared cache with its content: unchanged by the apps.
fn cache(cx: &TestContext) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out: Vec<_> = fs::read_dir(cx.root.join("store/files"))
        .unwrap()
        .flatten()
        .map(|e| (e.path(), fs::read(e.path()).unwrap()))
        .collect();
    out.sort();
    out
}

fn pids(cx: &TestContext) -> Vec<u64> {
    cx.app_status("probe")["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["state"] == "running")
        .map(|i| i["pid"].as_u64().unwrap())
        .collect()
}

#[test]
fn a_root_app_cannot_write_its_tree_or_the_store() {
    if !is_root() {
        eprintln!("needs root: a mount namespace per process");
        return;
    }
    let cx = TestContext::new();
    let _agent = cx.start_agent();
    let v1 = probe_app(&cx, "v1", "1", "user = \"root\"", "");
    cx.drover(&["deploy", v1.to_str().unwrap()]).success();
    let before = cache(&cx);
    let r = report(&cx, "web.0");
    assert_eq!(line(&r, "uid"), "uid: 0", "{r}");
    // Root ignores mode bits: only the read-only mount stops it.
    refused(&r, "tree", &["Read-only file system"]);
    refused(&r, "file", &["Read-only file system"]);
    refused(&r, "store", &["Read-only file system"]);
    // The store's shared cache is out of its sight.
    refused(
        &r,
        "cache",
        &["Read-only file system", "Directory nonexistent"],
    );
    // Nor can it remount its tree writable.
    refused(
        &r,
        "remount",
        &["ermission denied", "must be superuser", "not permitted"],
    );
    // The rest of the drover root is out of its sight: the keys, the agent's socket.
    refused(&r, "keys", &["No such file"]);
    refused(&r, "socket", &["No such file"]);
    assert_eq!(line(&r, "data"), "data: wrote", "{r}");
    let pid = pids(&cx)[0];
    assert_eq!(uid_of_pid(pid), 0);
    let status = cx.app_status("probe");
    assert_eq!(
        status["instances"][0]["protection"], "read-only store, user root",
        "{status}"
    );
    assert_eq!(cache(&cx), before, "the store's cache files are unchanged");
    assert!(!cx.root.join("store/planted").exists());
    cx.drover(&["verify"]).success();
}

#[test]
fn apps_run_as_drover_app_by_default_and_keep_their_data_across_deploys_and_rollbacks() {
    if !is_root() {
        eprintln!("needs root: apps run as another user");
        return;
    }
    let cx = TestContext::new();
    let _agent = cx.start_agent();
    let v1 = probe_app(&cx, "v1", "1", "", "instances = 2\n");
    cx.drover(&["deploy", v1.to_str().unwrap()]).success();
    let app_uid = uid_of("drover-app");
    let (r0, r1) = (report(&cx, "web.0"), report(&cx, "web.1"));
    for r in [&r0, &r1] {
        assert_eq!(line(r, "uid"), format!("uid: {app_uid}"), "{r}");
        refused(r, "tree", &["Read-only file system", "Permission denied"]);
        refused(r, "file", &["Read-only file system", "Permission denied"]);
        refused(
            r,
            "store",
            &["Read-only file system", "Permission denied", "No such file"],
        );
        assert_eq!(line(r, "data"), "data: wrote", "{r}");
        assert_eq!(line(r, "tmp"), "tmp: wrote", "{r}");
        // Its working directory is its release tree.
        assert!(
            line(r, "cwd").contains(&cx.root.join("store/trees").display().to_string()),
            "{r}"
        );
    }
    for pid in pids(&cx) {
        assert_eq!(uid_of_pid(pid), app_uid);
    }
    let status = cx.app_status("probe");
    assert_eq!(
        status["instances"][0]["protection"], "read-only store, user drover-app",
        "{status}"
    );
    let text = cx.drover(&["status"]).success().stdout;
    assert!(
        text.contains("(read-only store, user drover-app)"),
        "{text}"
    );

    // Each instance has a $TMPDIR of its own, the app's user's alone.
    let tmp0 = PathBuf::from(line(&r0, "tmpdir").trim_start_matches("tmpdir: "));
    let tmp1 = PathBuf::from(line(&r1, "tmpdir").trim_start_matches("tmpdir: "));
    assert_ne!(tmp0, tmp1);
    for t in [&tmp0, &tmp1] {
        assert!(t.starts_with(&cx.root), "{}", t.display());
        let m = fs::metadata(t).unwrap();
        assert_eq!(
            (m.uid(), m.mode() & 0o777),
            (app_uid, 0o700),
            "{}",
            t.display()
        );
        assert!(t.join("mark").exists());
    }
    let data = fs::metadata(data_dir(&cx)).unwrap();
    assert_eq!((data.uid(), data.mode() & 0o777), (app_uid, 0o700));

    // $DROVER_DATA stays through a deploy and a rollback; the stopped instances' $TMPDIRs go.
    fs::remove_file(data_dir(&cx).join("report-web.0")).unwrap();
    let v2 = probe_app(&cx, "v2", "2", "", "");
    cx.drover(&["deploy", v2.to_str().unwrap()]).success();
    report(&cx, "web.0");
    wait_for(
        "the old instances' TMPDIRs to go",
        Duration::from_secs(20),
        || !tmp0.exists() && !tmp1.exists(),
    );
    fs::remove_file(data_dir(&cx).join("report-web.0")).unwrap();
    fs::remove_file(data_dir(&cx).join("report-web.1")).unwrap();
    cx.drover(&["rollback", "probe"]).success();
    report(&cx, "web.0");
    report(&cx, "web.1");
    let runs = fs::read_to_string(data_dir(&cx).join("runs")).unwrap();
    let mut lines: Vec<&str> = runs.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        ["web.0", "web.0", "web.0", "web.1", "web.1"],
        "{runs}"
    );
    cx.drover(&["verify"]).success();
}

#[test]
fn a_release_hook_and_drover_run_are_confined_too() {
    if !is_root() {
        eprintln!("needs root: a mount namespace per process");
        return;
    }
    let cx = TestContext::new();
    let _agent = cx.start_agent();
    let v1 = probe_app(
        &cx,
        "v1",
        "1",
        "",
        "[hooks]\nrelease = \"sh ./probe.sh hook\"\n",
    );
    cx.drover(&["deploy", v1.to_str().unwrap()]).success();
    let before = cache(&cx);
    let app_uid = uid_of("drover-app");
    let hook = report(&cx, "hook");
    cx.drover(&["run", "probe", "--", "sh", "./probe.sh", "run"])
        .success();
    let run = report(&cx, "run");
    for r in [&hook, &run] {
        assert_eq!(line(r, "uid"), format!("uid: {app_uid}"), "{r}");
        refused(r, "tree", &["Read-only file system", "Permission denied"]);
        refused(r, "file", &["Read-only file system", "Permission denied"]);
        refused(
            r,
            "store",
            &["Read-only file system", "Permission denied", "No such file"],
        );
        assert_eq!(line(r, "data"), "data: wrote", "{r}");
        assert_eq!(line(r, "tmp"), "tmp: wrote", "{r}");
    }
    // The run's own TMPDIR is gone with it.
    let tmp = line(&run, "tmpdir")
        .trim_start_matches("tmpdir: ")
        .to_string();
    assert!(!Path::new(&tmp).exists(), "{tmp}");
    // As root, the hook and the run still find the store read-only.
    let v2 = probe_app(
        &cx,
        "v2",
        "2",
        "user = \"root\"",
        "[hooks]\nrelease = \"sh ./probe.sh hook2\"\n",
    );
    cx.drover(&["deploy", v2.to_str().unwrap()]).success();
    cx.drover(&["run", "probe", "--", "sh", "./probe.sh", "run2"])
        .success();
    for r in [report(&cx, "hook2"), report(&cx, "run2")] {
        assert_eq!(line(&r, "uid"), "uid: 0", "{r}");
        refused(&r, "file", &["Read-only file system"]);
        refused(
            &r,
            "cache",
            &["Read-only file system", "Directory nonexistent"],
        );
        refused(&r, "keys", &["No such file"]);
    }
    let after = cache(&cx);
    assert!(
        before.iter().all(|f| after.contains(f)),
        "the store's cache files are unchanged"
    );
    cx.drover(&["verify"]).success();
}

#[test]
fn an_unknown_user_is_refused_at_deploy_naming_its_key() {
    let cx = TestContext::new();
    let _agent = cx.start_agent();
    let v1 = probe_app(&cx, "v1", "1", "", "user = \"no-such-user\"\n");
    let run = cx.drover(&["deploy", v1.to_str().unwrap()]).failure();
    assert!(
        run.stderr.contains("`process.web.user`") && run.stderr.contains("no-such-user"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("hint:"), "{}", run.stderr);
    // Nothing was written or started.
    assert!(!cx.root.join("apps/probe").exists());
    let v1 = probe_app(&cx, "v1b", "1", "user = \"nobody-here\"", "");
    let run = cx.drover(&["deploy", v1.to_str().unwrap()]).failure();
    assert!(
        run.stderr.contains("`app.user`") && run.stderr.contains("nobody-here"),
        "{}",
        run.stderr
    );
    assert!(!cx.root.join("apps/probe").exists());
}

#[test]
fn an_unprivileged_agent_runs_apps_as_itself_protected_by_mode_bits() {
    use crate::common::{NOBODY, kill_tagged, to_run, unprivileged};
    use std::os::unix::fs::PermissionsExt;
    let cx = TestContext::new();
    let v1 = probe_app(&cx, "v1", "1", "", "");
    let as_root = probe_app(&cx, "v2", "2", "user = \"root\"", "");
    fs::create_dir(&cx.root).unwrap();
    fs::set_permissions(&cx.root, fs::Permissions::from_mode(0o700)).unwrap();
    if is_root() {
        let status = Command::new("chown")
            .arg("-R")
            .arg(format!("{NOBODY}:{NOBODY}"))
            .arg(cx.dir.path())
            .status()
            .unwrap();
        assert!(status.success());
    }
    struct Stop<'a>(&'a TestContext);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            if let Ok(pid) = fs::read_to_string(self.0.root.join("agent.pid")) {
                let _ = Command::new("kill").arg("-9").arg(pid.trim()).status();
            }
            kill_tagged(&self.0.root);
        }
    }
    let _stop = Stop(&cx);
    let drover = |args: &[&str]| to_run(unprivileged(&cx).args(args).output().unwrap());
    drover(&["up", v1.to_str().unwrap()]).success();
    let me = rustix::process::geteuid().as_raw();
    let uid = if is_root() { NOBODY } else { me };
    let r = report(&cx, "web.0");
    assert_eq!(line(&r, "uid"), format!("uid: {uid}"), "{r}");
    // No write bit anywhere in the tree: its own user cannot write it either.
    refused(&r, "tree", &["Permission denied"]);
    refused(&r, "file", &["Permission denied"]);
    assert_eq!(line(&r, "data"), "data: wrote", "{r}");
    assert_eq!(line(&r, "tmp"), "tmp: wrote", "{r}");
    let all = drover(&["status", "--json"]).success().json();
    let protection = all[0]["instances"][0]["protection"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(protection.starts_with("mode bits, user "), "{all}");
    if is_root() {
        assert_eq!(protection, "mode bits, user nobody");
    }
    // It cannot run an app as another user: refused before anything changes.
    let run = drover(&["deploy", as_root.to_str().unwrap()]).failure();
    assert!(
        run.stderr.contains("`app.user`") && run.stderr.contains("`root`"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("hint:"), "{}", run.stderr);
    let all = drover(&["status", "--json"]).success().json();
    assert_eq!(all[0]["generation"], 1, "{all}");
    drover(&["verify"]).success();
}
