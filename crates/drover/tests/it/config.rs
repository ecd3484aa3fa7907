//! Config layers and secrets end to end: real agent, real processes, real files.

use std::fs;
use std::io::Write;
use std::path::Path;
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
