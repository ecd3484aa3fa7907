//! Config layers and secrets end to end: real agent, real processes, real files.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::common::{Run, TestContext, to_run};

fn set_secret(cx: &TestContext, dir: &Path, key: &str, value: &str, extra: &[&str]) -> Run {
    let mut args = vec!["secrets", "--dir", dir.to_str().unwrap(), "set", key];
    args.extend_from_slice(extra);
    let mut child = cx
        .command()
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(value.as_bytes())
        .unwrap();
    to_run(child.wait_with_output().unwrap())
}

fn printenv(cx: &TestContext, key: &str) -> String {
    cx.drover(&[
        "run",
        "hello",
        "--",
        "sh",
        "-c",
        &format!("printf %s \"${key}\""),
    ])
    .success()
    .stdout
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(meta) = fs::symlink_metadata(&p) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(p);
            } else if meta.is_file()
                && let Ok(bytes) = fs::read(&p)
                && bytes.windows(needle.len()).any(|w| w == needle)
            {
                hits.push(p.display().to_string());
            }
        }
    }
    hits
}

#[test]
fn a_secret_reaches_the_app_and_nothing_on_disk() {
    let cx = TestContext::new();
    let _agent = cx.start_agent();
    let value = format!("tok-{}-very-secret", std::process::id());
    let v1 = cx.hello_app("v1", "1", "[config]\nrequired = [\"API_TOKEN\"]\n");
    set_secret(&cx, &v1, "API_TOKEN", &value, &[]).success();
    let file = fs::read_to_string(v1.join("drover.secrets.toml")).unwrap();
    assert!(
        file.contains("API_TOKEN")
            && file.contains("BEGIN AGE ENCRYPTED FILE")
            && !file.contains(&value),
        "{file}"
    );
    let listed = cx
        .drover(&["secrets", "--dir", v1.to_str().unwrap(), "list"])
        .success();
    assert_eq!(listed.stdout.trim(), "API_TOKEN");

    // `edit` goes through $EDITOR on a file in memory, gone afterwards.
    let edited = cx
        .command()
        .args([
            "secrets",
            "--dir",
            v1.to_str().unwrap(),
            "edit",
            "API_TOKEN",
        ])
        .env("EDITOR", "sed -i s/very-secret/edited/")
        .output()
        .unwrap();
    assert!(
        edited.status.success(),
        "{}",
        String::from_utf8_lossy(&edited.stderr)
    );
    let value = value.replace("very-secret", "edited");
    assert!(fs::read_dir("/dev/shm").unwrap().flatten().all(|e| {
        !e.file_name()
            .to_string_lossy()
            .starts_with("drover-secret-")
    }));
    cx.drover(&["deploy", v1.to_str().unwrap()]).success();
    // The app's processes see it...
    assert_eq!(printenv(&cx, "API_TOKEN"), value);
    let pid = cx.pids("hello")[0];
    let environ = fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(
        environ.windows(value.len()).any(|w| w == value.as_bytes()),
        "the instance's environment lacks the secret"
    );
    // ...and no file of the root (store, generations, logs, keys) nor the test dir holds it.
    let hits = files_containing(cx.dir.path(), value.as_bytes());
    assert!(hits.is_empty(), "plaintext secret found in {hits:?}");
    // Nor any read command's output.
    for args in [
        vec!["status", "--json"],
        vec!["history", "hello", "--json"],
        vec!["config", "list", "hello"],
        vec!["logs", "hello"],
    ] {
        let out = cx.drover(&args).success();
        assert!(
            !out.stdout.contains(&value) && !out.stderr.contains(&value),
            "{args:?} shows the secret"
        );
    }
    let listed = cx.drover(&["config", "list", "hello"]).success().stdout;
    assert!(listed.contains("API_TOKEN=(secret, redacted)"), "{listed}");

    // Changing the secret is a new generation; diff names it without the value.
    set_secret(&cx, &v1, "API_TOKEN", "another-value", &[]).success();
    cx.drover(&["deploy", v1.to_str().unwrap()]).success();
    let diff = cx.drover(&["diff", "hello", "1", "2"]).success().stdout;
    assert!(
        diff.contains("~ secret API_TOKEN (value redacted)"),
        "{diff}"
    );
    assert!(!diff.contains("another-value"));
    cx.drover(&["rollback", "hello"]).success();
    assert_eq!(printenv(&cx, "API_TOKEN"), value);
}

#[test]
fn a_host_that_is_not_a_recipient_cannot_start_the_app() {
    let cx = TestContext::new();
    let _agent = cx.start_agent();
    let v1 = cx.hello_app("v1", "1", "");
    cx.drover(&["deploy", v1.to_str().unwrap()]).success();
    // Secrets made on another machine, for another host.
    let elsewhere = TestContext::new();
    let v2 = cx.hello_app("v2", "2", "");
    let mut child = elsewhere
        .command()
        .args([
            "secrets",
            "--dir",
            v2.to_str().unwrap(),
            "set",
            "DB_PASSWORD",
        ])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"hunter2").unwrap();
    assert!(child.wait().unwrap().success());
    let history = cx.drover(&["history", "hello", "--json"]).success().stdout;
    let run = cx.drover(&["deploy", v2.to_str().unwrap()]).failure();
    let host_key = cx
        .drover(&["host", "key"])
        .success()
        .stdout
        .trim()
        .to_string();
    assert!(host_key.starts_with("age1"), "{host_key}");
    assert!(
        run.stderr.contains("not a recipient") && run.stderr.contains(&host_key),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("drover secrets rekey --recipient"),
        "{}",
        run.stderr
    );
    assert_eq!(
        cx.drover(&["history", "hello", "--json"]).success().stdout,
        history,
        "a generation was recorded"
    );
    let ports = cx.live_ports("hello");
    assert!(
        crate::common::http_get(ports[0], "/")
            .unwrap()
            .1
            .contains("version 1")
    );

    // Once re-encrypted to this host (by the operator who made it), it deploys.
    let rekey = elsewhere.drover(&[
        "secrets",
        "--dir",
        v2.to_str().unwrap(),
        "rekey",
        "--recipient",
        &host_key,
    ]);
    rekey.success();
    cx.drover(&["deploy", v2.to_str().unwrap()]).success();
    assert_eq!(printenv(&cx, "DB_PASSWORD"), "hunter2");
}

#[test]
fn a_tampered_or_truncated_secrets_file_changes_nothing() {
    let cx = TestContext::new();
    let _agent = cx.start_agent();
    let v1 = cx.hello_app("v1", "1", "");
    set_secret(&cx, &v1, "TOKEN", "abc", &[]).success();
    cx.drover(&["deploy", v1.to_str().unwrap()]).success();
    let history = cx.drover(&["history", "hello", "--json"]).success().stdout;
    let good = fs::read_to_string(v1.join("drover.secrets.toml")).unwrap();

    let truncated = &good[..good.len() - 60];
    fs::write(v1.join("drover.secrets.toml"), truncated).unwrap();
    let run = cx.drover(&["deploy", v1.to_str().unwrap()]).failure();
    assert!(run.stderr.contains("drover.secrets.toml"), "{}", run.stderr);
    assert!(
        run.stderr.contains("TOKEN") || run.stderr.contains("not a drover secrets file"),
        "{}",
        run.stderr
    );

    // One character of the ciphertext changed.
    let body_line = good
        .lines()
        .find(|l| l.len() > 40 && !l.contains(['-', ' ', '=', '#']))
        .unwrap();
    let flipped: String = body_line
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if i == 20 {
                if c == 'A' { 'B' } else { 'A' }
            } else {
                c
            }
        })
        .collect();
    fs::write(
        v1.join("drover.secrets.toml"),
        good.replacen(body_line, &flipped, 1),
    )
    .unwrap();
    let run = cx.drover(&["deploy", v1.to_str().unwrap()]).failure();
    assert!(
        run.stderr.contains("secret `TOKEN` cannot be decrypted"),
        "{}",
        run.stderr
    );

    assert_eq!(
        cx.drover(&["history", "hello", "--json"]).success().stdout,
        history
    );
    assert_eq!(printenv(&cx, "TOKEN"), "abc");
}

#[test]
fn config_layers_versioned_like_code() {
    let cx = TestContext::new();
    let _agent = cx.start_agent();
    let v1 = cx.hello_app(
        "v1",
        "1",
        "[env]\nLOG_LEVEL = \"info\"\nREGION = \"app\"\n[environments.staging]\nenv = { REGION = \"eu-staging\" }\n[environments.staging.roles.web]\nenv = { REGION = \"eu-web\" }\n",
    );
    cx.drover(&["deploy", v1.to_str().unwrap(), "-e", "staging"])
        .success();
    assert_eq!(printenv(&cx, "REGION"), "eu-staging");
    let list = cx
        .drover(&["config", "list", "hello", "--json"])
        .success()
        .json();
    let source = |k: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|e| e["key"] == k)
            .unwrap()["source"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(source("REGION"), "environment staging");
    assert_eq!(source("LOG_LEVEL"), "drover.toml [env]");

    // One host-side key: a new generation, same release, health-gated.
    let release = cx.app_status("hello")["release"].clone();
    cx.drover(&["config", "set", "hello", "LOG_LEVEL=debug"])
        .success();
    let status = cx.app_status("hello");
    assert_eq!(status["generation"], 2);
    assert_eq!(status["release"], release);
    assert_eq!(printenv(&cx, "LOG_LEVEL"), "debug");
    assert_eq!(source_of(&cx, "LOG_LEVEL"), "host (drover config set)");
    // The running instance itself got the new value, not only `drover run`.
    assert_eq!(instance_env(&cx, "LOG_LEVEL").as_deref(), Some("debug"));
    let diff = cx
        .drover(&["diff", "hello", "1", "2", "--json"])
        .success()
        .json();
    assert_eq!(diff["env_changed"], serde_json::json!(["LOG_LEVEL"]));
    assert_eq!(diff["files_changed"], serde_json::json!([]));
    // The host value survives the next deploy, and rollback restores the old one.
    cx.drover(&["deploy", v1.to_str().unwrap(), "-e", "staging"])
        .success();
    assert_eq!(printenv(&cx, "LOG_LEVEL"), "debug");
    cx.drover(&["rollback", "hello", "--to", "1"]).success();
    assert_eq!(printenv(&cx, "LOG_LEVEL"), "info");

    // A role's layer sits above its environment's.
    cx.drover(&[
        "deploy",
        v1.to_str().unwrap(),
        "-e",
        "staging",
        "--role",
        "web",
    ])
    .success();
    assert_eq!(printenv(&cx, "REGION"), "eu-web");
    assert_eq!(source_of(&cx, "REGION"), "role web");
    let run = cx
        .drover(&[
            "deploy",
            v1.to_str().unwrap(),
            "-e",
            "staging",
            "--role",
            "db",
        ])
        .failure();
    assert!(run.stderr.contains("no role `db`"), "{}", run.stderr);

    // Bad input: unknown environment, unknown key to unset, a bad pair.
    let run = cx
        .drover(&["deploy", v1.to_str().unwrap(), "-e", "prod"])
        .failure();
    assert!(
        run.stderr.contains("no environment `prod`") && run.stderr.contains("staging"),
        "{}",
        run.stderr
    );
    let run = cx.drover(&["config", "unset", "hello", "NOPE"]).failure();
    assert!(
        run.stderr.contains("`NOPE` is not a host config value"),
        "{}",
        run.stderr
    );
    let run = cx.drover(&["config", "set", "hello", "novalue"]).failure();
    assert!(run.stderr.contains("not KEY=VALUE"), "{}", run.stderr);
}

/// A variable of the live instance's own environment, read from /proc.
fn instance_env(cx: &TestContext, key: &str) -> Option<String> {
    let status = cx.app_status("hello");
    let pid = status["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["generation"] == status["generation"] && i["state"] == "running")?["pid"]
        .as_u64()?;
    let environ = fs::read(format!("/proc/{pid}/environ")).ok()?;
    environ
        .split(|b| *b == 0)
        .filter_map(|kv| std::str::from_utf8(kv).ok())
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")).map(str::to_string))
}

fn source_of(cx: &TestContext, key: &str) -> String {
    let list = cx
        .drover(&["config", "list", "hello", "--json"])
        .success()
        .json();
    list.as_array()
        .unwrap()
        .iter()
        .find(|e| e["key"] == key)
        .unwrap()["source"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn a_missing_required_key_fails_before_anything_starts() {
    let cx = TestContext::new();
    let _agent = cx.start_agent();
    let v1 = cx.hello_app("v1", "1", "");
    cx.drover(&["deploy", v1.to_str().unwrap()]).success();
    let history = cx.drover(&["history", "hello", "--json"]).success().stdout;
    let v2 = cx.hello_app("v2", "2", "[config]\nrequired = [\"DATABASE_URL\"]\n");
    let run = cx.drover(&["deploy", v2.to_str().unwrap()]).failure();
    assert!(
        run.stderr.contains("required config key `DATABASE_URL`"),
        "{}",
        run.stderr
    );
    assert_eq!(
        cx.drover(&["history", "hello", "--json"]).success().stdout,
        history
    );
    assert!(
        crate::common::tagged_processes(&cx.root)
            .iter()
            .all(|(_, t)| t.starts_with("hello/1/"))
    );
    // Set on the host, it deploys.
    cx.drover(&["config", "set", "hello", "DATABASE_URL=postgres://db/app"])
        .success();
    cx.drover(&["deploy", v2.to_str().unwrap()]).success();
    assert_eq!(printenv(&cx, "DATABASE_URL"), "postgres://db/app");
}

// ---- a root another user could change -------------------------------------------------

/// Every command that opens the root, with the arguments it needs to get that far.
fn root_commands(app: &Path, archive: &Path, dest: &Path) -> Vec<Vec<String>> {
    let app = app.to_str().unwrap();
    let archive = archive.to_str().unwrap();
    let dest = dest.to_str().unwrap();
    [
        vec!["releases"],
        vec!["build", app],
        vec!["verify"],
        vec!["checkout", "plain", dest],
        vec!["pack", "plain", "-o", dest],
        vec!["unpack", archive],
        vec!["gc"],
        vec!["keys", "show"],
        vec!["agent"],
        vec!["up", app],
        vec!["deploy", app],
        vec!["rollback", "plain"],
        vec!["status"],
        vec!["history", "plain"],
        vec!["logs", "plain"],
        vec!["stop", "plain"],
        vec!["start", "plain"],
        vec!["run", "plain", "--", "true"],
        vec!["config", "list", "plain"],
        vec!["config", "set", "plain", "A=1"],
        vec!["secrets", "--dir", app, "list"],
        vec!["host", "key"],
        vec!["diff", "plain", "1", "2"],
        vec!["remote", "hello"],
        vec!["remote", "serve"],
    ]
    .into_iter()
    .map(|args| args.into_iter().map(String::from).collect())
    .collect()
}

#[test]
fn a_root_another_user_owns_or_can_write_is_refused_by_every_command() {
    let cx = TestContext::new();
    let app = cx.app(
        "plain",
        "[app]\nname = \"plain\"\nversion = \"1\"\n\n[process.main]\ncommand = \"sleep 600\"\n",
        &[("data.txt", "data")],
    );
    cx.build(&app, &[]);
    let archive = cx.path("plain.drover");
    cx.drover(&["pack", "plain", "-o", archive.to_str().unwrap()])
        .success();
    let dest = cx.path("dest");
    let before = cx.snapshot_root();
    let root = cx.root.display().to_string();

    let refused = |what: &str, expect: &[&str]| {
        for args in root_commands(&app, &archive, &dest) {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let run = cx.drover(&args).failure();
            for e in expect {
                assert!(
                    run.stderr.contains(e),
                    "{what}: `drover {}` did not say {e:?}:\n{}",
                    args.join(" "),
                    run.stderr
                );
            }
            assert!(run.stderr.contains("hint: "), "{}", run.stderr);
            assert_eq!(cx.snapshot_root(), before, "{what}: `{}`", args.join(" "));
            assert!(!dest.exists());
        }
    };

    // The root belongs to another user (she could swap in a store of her own).
    let chown = |uid: &str, path: &Path| {
        let ok = std::process::Command::new("chown")
            .args(["-R", uid])
            .arg(path)
            .status()
            .unwrap()
            .success();
        assert!(ok);
    };
    chown("65534:65534", &cx.root);
    refused(
        "root owned by 65534",
        &[&format!("{root} is owned by uid 65534"), "chown", "--root"],
    );
    chown("0:0", &cx.root);

    // Its store, or its keys, belongs to another user.
    for sub in ["store", "keys"] {
        let p = cx.root.join(sub);
        std::os::unix::fs::chown(&p, Some(65534), None).unwrap();
        refused(
            sub,
            &[&format!("{} is owned by uid 65534", p.display()), "--root"],
        );
        std::os::unix::fs::chown(&p, Some(0), None).unwrap();
    }

    // Writable by group or others: the root, its store, its keys.
    for p in [cx.root.clone(), cx.root.join("store"), cx.root.join("keys")] {
        let mode = fs::metadata(&p).unwrap().permissions().mode();
        for extra in [0o020, 0o002] {
            fs::set_permissions(&p, fs::Permissions::from_mode(mode | extra)).unwrap();
            refused(
                "writable",
                &[
                    &format!("{} is writable by", p.display()),
                    &format!("chmod go-w {}", p.display()),
                ],
            );
        }
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    }

    // A parent others can write to (not sticky) lets them replace the root; sticky is safe.
    let parent = cx.dir.path();
    let mode = fs::metadata(parent).unwrap().permissions().mode();
    fs::set_permissions(parent, fs::Permissions::from_mode(0o777)).unwrap();
    refused(
        "open parent",
        &[
            &format!("{} (above the drover root", parent.display()),
            "writable by group and others",
        ],
    );
    fs::set_permissions(parent, fs::Permissions::from_mode(0o1777)).unwrap();
    cx.drover(&["releases"]).success();
    // A parent owned by another user, likewise.
    fs::set_permissions(parent, fs::Permissions::from_mode(mode)).unwrap();
    std::os::unix::fs::chown(parent, Some(65534), None).unwrap();
    let run = cx.drover(&["releases"]).failure();
    assert!(
        run.stderr.contains("is owned by uid 65534"),
        "{}",
        run.stderr
    );
    std::os::unix::fs::chown(parent, Some(0), None).unwrap();

    // A symlink to the root, owned by another user: she could point it elsewhere.
    let link = cx.path("link");
    std::os::unix::fs::symlink(&cx.root, &link).unwrap();
    let via_link = |args: &[&str]| {
        to_run(
            cx.command()
                .env("DROVER_ROOT", &link)
                .args(args)
                .output()
                .unwrap(),
        )
    };
    via_link(&["releases"]).success();
    std::os::unix::fs::lchown(&link, Some(65534), None).unwrap();
    let run = via_link(&["releases"]).failure();
    assert!(
        run.stderr.contains(&format!(
            "{} is a symlink owned by uid 65534",
            link.display()
        )),
        "{}",
        run.stderr
    );

    // Back as it was, every command works again.
    cx.drover(&["releases"]).success();
    cx.drover(&["verify"]).success();
}

#[test]
fn a_fresh_root_is_made_private() {
    let cx = TestContext::new();
    // Even with a permissive umask.
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("umask 000; exec \"$0\" releases")
        .arg(crate::common::drover_bin())
        .env("DROVER_ROOT", &cx.root)
        .output()
        .unwrap();
    to_run(out).success();
    for p in [cx.root.clone(), cx.root.join("store"), cx.root.join("keys")] {
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", p.display());
    }
    cx.drover(&["releases"]).success();
}

// ---- `secrets edit` killed --------------------------------------------------------------

/// Starts `drover secrets edit TOKEN` with an editor that notes its pid and file, then
/// waits; returns drover, the plaintext's path and the editor's pid.
fn edit_and_wait(cx: &TestContext, app: &Path, tag: &str) -> (std::process::Child, PathBuf, u32) {
    let mark = cx.path(&format!("editor-{tag}"));
    let editor = cx.path("editor.sh");
    fs::write(
        &editor,
        "#!/bin/sh\nprintf '%s\\n%s\\n' \"$$\" \"$1\" > \"$MARK.tmp\" && mv \"$MARK.tmp\" \"$MARK\"\nexec sleep 600\n",
    )
    .unwrap();
    fs::set_permissions(&editor, fs::Permissions::from_mode(0o755)).unwrap();
    let child = cx
        .command()
        .args(["secrets", "--dir", app.to_str().unwrap(), "edit", "TOKEN"])
        .env("EDITOR", &editor)
        .env_remove("VISUAL")
        .env("MARK", &mark)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    crate::common::wait_for("the editor", std::time::Duration::from_secs(20), || {
        mark.exists()
    });
    let text = fs::read_to_string(&mark).unwrap();
    let mut lines = text.lines();
    let pid = lines.next().unwrap().parse().unwrap();
    let file = PathBuf::from(lines.next().unwrap());
    assert_eq!(fs::read_to_string(&file).unwrap(), "plain-value");
    (child, file, pid)
}

fn kill(pid: u32, sig: &str) {
    let _ = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status();
}

#[test]
fn a_killed_secrets_edit_leaves_no_plaintext() {
    use std::os::unix::process::ExitStatusExt;
    let cx = TestContext::new();
    let app = cx.app("plain", "[app]\nname = \"plain\"\nversion = \"1\"\n", &[]);
    set_secret(&cx, &app, "TOKEN", "plain-value", &[]).success();
    for (sig, n) in [("TERM", 15), ("HUP", 1), ("INT", 2)] {
        let (mut drover, file, editor) = edit_and_wait(&cx, &app, sig);
        kill(drover.id(), sig);
        let status = drover.wait().unwrap();
        assert_eq!(status.signal(), Some(n), "{sig}: {status}");
        assert!(!file.exists(), "{sig}: {} is still there", file.display());
        kill(editor, "KILL");
    }

    // SIGKILL cannot be caught: the next `drover secrets` removes what it left.
    let (mut drover, file, editor) = edit_and_wait(&cx, &app, "KILL");
    kill(drover.id(), "KILL");
    drover.wait().unwrap();
    assert!(file.exists());
    let run = cx
        .drover(&["secrets", "--dir", app.to_str().unwrap(), "list"])
        .success();
    assert!(!file.exists(), "{} is still there", file.display());
    assert!(
        run.stderr.contains(&format!("removed {}", file.display())),
        "{}",
        run.stderr
    );
    kill(editor, "KILL");
    // The secret itself is unchanged.
    assert!(run.stdout.contains("TOKEN"));
}

// ---- errors that name what went wrong ---------------------------------------------------

#[test]
fn a_closed_stdout_ends_drover_quietly() {
    let cx = TestContext::new();
    let app = cx.app("plain", "[app]\nname = \"plain\"\nversion = \"1\"\n", &[]);
    cx.build(&app, &[]);
    for args in [
        vec!["releases"],
        vec!["releases", "--json"],
        vec!["keys", "show"],
    ] {
        // The reader is gone before drover writes: every write fails with EPIPE.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = cx.command().args(&args).stdout(writer).output().unwrap();
        let run = to_run(out);
        assert_eq!(run.status.code(), Some(0), "{args:?}: {}", run.stderr);
        assert_eq!(run.stderr, "", "{args:?}");
    }
}

#[test]
fn config_set_over_the_request_limit_names_the_key_and_the_limit() {
    let cx = TestContext::new();
    let _agent = cx.start_agent();
    let pairs: Vec<String> = (0..10)
        .map(|i| format!("K{i}={}", "x".repeat((120 << 10) - i)))
        .collect();
    let mut args = vec!["config", "set", "plain"];
    args.extend(pairs.iter().map(String::as_str));
    let run = cx.drover(&args).failure();
    assert!(
        run.stderr
            .contains("the values of 10 keys are too large together (the largest, `K0`, is 120.0 KiB): the request would be")
            && run.stderr.contains("more than the agent takes (1.0 MiB)")
            && run.stderr.contains("hint: "),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("Broken pipe"), "{}", run.stderr);
}

/// Flips one base64 character of `key`'s armored value: `line` 0 is the first line of the
/// body (the age header), `usize::MAX` the last (the payload).
fn damage_secret(file: &Path, key: &str, line: usize) {
    let text = fs::read_to_string(file).unwrap();
    let start = text.find(&format!("{key} = ")).unwrap();
    let body: Vec<(usize, &str)> = text[start..]
        .split_inclusive('\n')
        .scan(start, |at, l| {
            let here = *at;
            *at += l.len();
            Some((here, l))
        })
        .skip_while(|(_, l)| !l.contains("BEGIN AGE"))
        .skip(1)
        .take_while(|(_, l)| !l.contains("END AGE"))
        .collect();
    let (at, l) = body[line.min(body.len() - 1)];
    let i = at + 10.min(l.len() / 2);
    let c = if &text[i..i + 1] == "A" { "B" } else { "A" };
    let mut damaged = text.clone();
    damaged.replace_range(i..i + 1, c);
    fs::write(file, damaged).unwrap();
}

#[test]
fn a_damaged_secret_names_its_file_and_key() {
    let cx = TestContext::new();
    let _agent = cx.start_agent();
    let app = cx.app(
        "plain",
        "[app]\nname = \"plain\"\nversion = \"1\"\n\n[process.main]\ncommand = \"sleep 600\"\n",
        &[],
    );
    let file = app.join("drover.secrets.toml");
    set_secret(&cx, &app, "TOKEN", "plain-value", &[]).success();
    let good = fs::read_to_string(&file).unwrap();

    // Damaged in its header: found before anything is sent, with the file's path.
    damage_secret(&file, "TOKEN", 0);
    let run = cx.drover(&["deploy", app.to_str().unwrap()]).failure();
    assert!(
        run.stderr.contains(&format!(
            "{}: secret `TOKEN` cannot be decrypted",
            file.display()
        )),
        "{}",
        run.stderr
    );
    // Damaged in its payload: only decrypting finds it, on the host; named as deployed.
    fs::write(&file, &good).unwrap();
    damage_secret(&file, "TOKEN", usize::MAX);
    let run = cx.drover(&["deploy", app.to_str().unwrap()]).failure();
    assert!(
        run.stderr.contains(
            "drover.secrets.toml of `plain` (as deployed): secret `TOKEN` cannot be decrypted"
        ) && run.stderr.contains("hint: "),
        "{}",
        run.stderr
    );
    assert!(!cx.root.join("apps/plain/gens").exists());
}

#[test]
fn ports_instances_and_config_values_are_bounded() {
    let cx = TestContext::new();
    let _agent = cx.start_agent();
    let v1 = cx.hello_app("v1", "1", "");
    cx.drover(&["deploy", v1.to_str().unwrap()]).success();
    let history = cx.drover(&["history", "hello", "--json"]).success().stdout;

    let big = "x".repeat(2 << 20);
    for (extra, words) in [
        (
            format!("[env]\nBIG = \"{big}\"\n"),
            &["env.BIG", "64 KiB"][..],
        ),
        (
            "[proxy]\nport = 0\n".to_string(),
            &["proxy.port", "1 to 65535"][..],
        ),
    ] {
        let bad = cx.hello_app("bad", "2", &extra);
        let run = cx.drover(&["deploy", bad.to_str().unwrap()]).failure();
        assert!(run.stderr.contains("bad/drover.toml"), "{}", run.stderr);
        for w in words {
            assert!(run.stderr.contains(w), "no `{w}` in {}", run.stderr);
        }
    }
    let bad = cx.hello_app("bad", "2", "");
    let toml = fs::read_to_string(bad.join("drover.toml"))
        .unwrap()
        .replace("http = true", "http = true\ninstances = 100000");
    fs::write(bad.join("drover.toml"), toml).unwrap();
    let run = cx.drover(&["deploy", bad.to_str().unwrap()]).failure();
    assert!(
        run.stderr.contains("bad/drover.toml")
            && run.stderr.contains("process.web.instances")
            && run.stderr.contains("from 1 to 256"),
        "{}",
        run.stderr
    );
    // A host value is bounded the same way, by name.
    let run = cx
        .drover(&[
            "config",
            "set",
            "hello",
            &format!("HUGE={}", "y".repeat(70 << 10)),
        ])
        .failure();
    assert!(
        run.stderr.contains("`HUGE`") && run.stderr.contains("64 KiB"),
        "{}",
        run.stderr
    );
    assert_eq!(
        cx.drover(&["history", "hello", "--json"]).success().stdout,
        history
    );

    // Generations whose values add up to far more than one protocol line: `history` lists
    // them all.
    let fat: String = (0..4)
        .map(|i| format!("V{i} = \"{}\"\n", "z".repeat(60 << 10)))
        .collect();
    let v2 = cx.hello_app("v2", "2", &format!("[env]\n{fat}"));
    let id = cx.build(&v2, &[])["release"].as_str().unwrap().to_string();
    for _ in 0..5 {
        cx.drover(&["deploy", &id]).success();
    }
    let gens = cx.drover(&["history", "hello", "--json"]).success().json();
    let gens = gens.as_array().unwrap();
    assert_eq!(gens.len(), 6);
    assert_eq!(gens[5]["env"]["V3"].as_str().unwrap().len(), 60 << 10);
    let text = cx.drover(&["history", "hello"]).success().stdout;
    assert_eq!(text.lines().count(), 7, "{text}");
}
