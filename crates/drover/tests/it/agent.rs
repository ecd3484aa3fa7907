//! The host agent end to end: real agent, real app processes, real HTTP.

use std::fs;
use std::process::{Command, Stdio};
use std::time::Duration;

use drover_store::remove_tree;

use crate::common::{
    AgentHandle, NOBODY, PidsCgroup, TestContext, free_port, http_get, in_writable, kill_tagged,
    make_writable, release_ids, tagged_processes, to_run, unprivileged, wait_for,
};

fn serves(cx: &TestContext, version: &str) {
    serves_on(cx.live_ports("hello"), version);
}

#[test]
fn deploy_rollback_and_a_failed_deploy_that_keeps_the_old_version() {
    let cx = TestContext::new();
    let _agent = cx.start_agent();
    let v1 = cx.hello_app("v1", "1.0.0", "[env]\nGREETING = \"one\"\n");
    let out = cx
        .drover(&["deploy", v1.to_str().unwrap(), "--json"])
        .success()
        .json();
    assert_eq!(out["generation"], 1);
    assert_eq!(out["version"], "1.0.0");
    serves(&cx, "1.0.0");

    let v2 = cx.hello_app("v2", "2.0.0", "[env]\nGREETING = \"two\"\n");
    cx.drover(&["deploy", v2.to_str().unwrap()]).success();
    serves(&cx, "2.0.0");
    let status = cx.app_status("hello");
    assert_eq!(status["generation"], 2);
    let inst = &status["instances"].as_array().unwrap()[0];
    assert!(inst["pid"].as_u64().is_some() && inst["port"].as_u64().is_some());
    assert_eq!(inst["healthy"], true);

    cx.drover(&["rollback", "hello"]).success();
    serves(&cx, "1.0.0");
    assert_eq!(cx.app_status("hello")["generation"], 3);

    // v3's health check fails: v1 keeps serving, exit non-zero with the last answer.
    let before = cx.live_ports("hello");
    let v3 = cx.hello_app(
        "v3",
        "3.0.0",
        "[health]\npath = \"/broken\"\ntimeout = \"2s\"\n",
    );
    let run = cx.drover(&["deploy", v3.to_str().unwrap()]).failure();
    assert!(
        run.stderr.contains("health check did not pass"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("\nhint: if the app needs longer to start, raise `[health] timeout`"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("404"),
        "the last health answer is shown: {}",
        run.stderr
    );
    assert!(
        run.stderr.contains("listening on"),
        "the last log lines are shown: {}",
        run.stderr
    );
    assert_eq!(cx.live_ports("hello"), before);
    serves(&cx, "1.0.0");
    let history = cx.drover(&["history", "hello", "--json"]).success().json();
    let gens = history.as_array().unwrap();
    assert_eq!(gens.len(), 4);
    assert_eq!(gens[3]["outcome"], "failed");
    assert_eq!(gens[3]["version"], "3.0.0");
    assert_eq!(gens[2]["outcome"], "live");
    assert_eq!(gens[2]["kind"], "rollback");
    // No v3 process survives.
    wait_for("v3 instances to stop", Duration::from_secs(10), || {
        tagged_processes(&cx.root)
            .iter()
            .all(|(_, tag)| !tag.starts_with("hello/4/"))
    });

    // Rollback to an explicit generation, and diff between generations.
    cx.drover(&["rollback", "hello", "--to", "2"]).success();
    serves(&cx, "2.0.0");
    let diff = cx
        .drover(&["diff", "hello", "1", "2", "--json"])
        .success()
        .json();
    assert_eq!(diff["env_changed"], serde_json::json!(["GREETING"]));
    assert_eq!(diff["files_changed"], serde_json::json!(["drover.toml"]));
}

#[test]
fn bad_input_gets_clear_errors_and_changes_nothing() {
    let cx = TestContext::new();
    let _agent = cx.start_agent();
    let v1 = cx.hello_app("v1", "1", "");
    cx.drover(&["deploy", v1.to_str().unwrap()]).success();
    let history = cx.drover(&["history", "hello", "--json"]).success().stdout;

    let bad = cx.app(
        "bad",
        "[app]\nname = \"hello\"\n[process.web]\ncommand = \"./hello\"\nhttp = yes\n",
        &[],
    );
    let run = cx.drover(&["deploy", bad.to_str().unwrap()]).failure();
    assert!(
        run.stderr.contains("bad/drover.toml") && run.stderr.contains("line 5"),
        "{}",
        run.stderr
    );

    let run = cx.drover(&["rollback", "nosuch"]).failure();
    assert!(
        run.stderr.contains("no app named `nosuch`"),
        "{}",
        run.stderr
    );
    let run = cx.drover(&["status", "nosuch"]).failure();
    assert!(
        run.stderr.contains("nosuch") && run.stderr.contains("hint:"),
        "{}",
        run.stderr
    );
    let run = cx.drover(&["rollback", "hello", "--to", "99"]).failure();
    assert!(run.stderr.contains("no generation 99"), "{}", run.stderr);
    let run = cx.drover(&["rollback", "hello"]).failure();
    assert!(
        run.stderr.contains("no earlier live generation"),
        "{}",
        run.stderr
    );
    let run = cx.drover(&["deploy", "no-such-release"]).failure();
    assert!(run.stderr.contains("no release matches"), "{}", run.stderr);

    assert_eq!(
        cx.drover(&["history", "hello", "--json"]).success().stdout,
        history
    );
    serves(&cx, "1");
}

#[test]
fn crashing_processes_restart_with_backoff() {
    let cx = TestContext::new();
    let _agent = cx.start_agent();
    let app = cx.app(
        "crashy",
        "[app]\nname = \"crashy\"\nversion = \"1\"\n[process.worker]\ncommand = \"echo started; sleep 1; exit 3\"\n",
        &[],
    );
    cx.drover(&["deploy", app.to_str().unwrap()]).success();
    wait_for("two restarts", Duration::from_secs(20), || {
        cx.app_status("crashy")["instances"][0]["restarts"]
            .as_u64()
            .unwrap_or(0)
            >= 2
    });
    let logs = cx.drover(&["logs", "crashy", "-n", "10"]).success().stdout;
    assert!(logs.matches("worker.0 | started").count() >= 2, "{logs}");
    let text = cx.drover(&["status", "crashy"]).success().stdout;
    assert!(text.contains("restarts"), "{text}");
    // The delay between restarts grows.
    let agent_log = std::fs::read_to_string(cx.path("agent.log")).unwrap();
    assert!(
        agent_log.contains("restarting in 200ms") && agent_log.contains("restarting in 400ms"),
        "{agent_log}"
    );
}

#[test]
fn two_deploys_at_once_one_fails_fast_naming_the_holder() {
    let cx = TestContext::new();
    let _agent = cx.start_agent();
    let slow = cx.hello_app("slow", "1", "[health]\npath = \"/up\"\ntimeout = \"20s\"\n");
    fs::write(
        slow.join("drover.toml"),
        fs::read_to_string(slow.join("drover.toml"))
            .unwrap()
            .replace(
                "command = \"./hello\"",
                "command = \"sleep 3; exec ./hello\"",
            ),
    )
    .unwrap();
    let first = cx
        .command()
        .args(["deploy", slow.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(
        "the first deploy to hold the lock",
        Duration::from_secs(20),
        || {
            cx.drover(&["status", "--json"])
                .json()
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["state"] == "deploying")
        },
    );
    let started = std::time::Instant::now();
    let run = cx.drover(&["deploy", slow.to_str().unwrap()]).failure();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the second deploy did not fail fast"
    );
    assert!(
        run.stderr.contains("locked") && run.stderr.contains("since"),
        "{}",
        run.stderr
    );
    let out = first.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serves(&cx, "1");
}

#[test]
fn the_agent_restarting_does_not_stop_the_apps() {
    let cx = TestContext::new();
    let mut agent = cx.start_agent();
    let v1 = cx.hello_app("v1", "1", "");
    cx.drover(&["deploy", v1.to_str().unwrap()]).success();
    let pids: Vec<u64> = cx.pids("hello");
    let ports = cx.live_ports("hello");
    agent.kill9();
    serves_without_agent(&cx, &ports);
    let _agent2 = cx.start_agent();
    let after: Vec<u64> = cx.pids("hello");
    assert_eq!(
        pids, after,
        "the restarted agent adopted the running instances"
    );
    serves(&cx, "1");
}

fn serves_without_agent(cx: &TestContext, ports: &[u16]) {
    // With no agent at all, the instances are still there and answering.
    let procs = tagged_processes(&cx.root);
    assert!(!procs.is_empty());
    assert!(!ports.is_empty());
    for port in ports {
        let (code, body) = http_get(*port, "/").unwrap();
        assert_eq!(code, 200);
        assert!(body.contains("version 1"), "{body}");
    }
}

#[test]
fn kill_9_of_the_agent_during_a_deploy_leaves_exactly_one_generation() {
    let cx = TestContext::new();
    let v1 = cx.hello_app("v1", "1", "");
    let v2 = cx.hello_app("v2", "2", "[health]\npath = \"/up\"\ntimeout = \"20s\"\n");
    // v2 starts slowly, so the deploy has phases to interrupt.
    fs::write(
        v2.join("drover.toml"),
        fs::read_to_string(v2.join("drover.toml")).unwrap().replace(
            "command = \"./hello\"",
            "command = \"sleep 0.6; exec ./hello\"",
        ),
    )
    .unwrap();
    let mut seen = std::collections::HashSet::new();
    for (round, delay_ms) in [50u64, 400, 900, 1500, 3000].into_iter().enumerate() {
        let mut agent = cx.start_agent();
        if round == 0 {
            cx.drover(&["deploy", v1.to_str().unwrap()]).success();
        }
        let target = if cx.app_status("hello")["version"] == "2" {
            &v1
        } else {
            &v2
        };
        let mut deploy = cx
            .command()
            .args(["deploy", target.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        agent.kill9();
        let _ = deploy.wait();
        let _agent = cx.start_agent();
        let status = cx.app_status("hello");
        let generation = status["generation"].as_u64().unwrap();
        let version = status["version"].as_str().unwrap().to_string();
        seen.insert(version.clone());
        // Every app process belongs to the live generation, and they all serve it.
        wait_for("stray instances to stop", Duration::from_secs(15), || {
            tagged_processes(&cx.root)
                .iter()
                .all(|(_, tag)| tag.starts_with(&format!("hello/{generation}/")))
        });
        wait_for(
            "the live instances to answer",
            Duration::from_secs(15),
            || {
                let ports = cx.live_ports("hello");
                !ports.is_empty()
                    && ports.iter().all(|p| {
                        http_get(*p, "/")
                            .is_ok_and(|(_, b)| b.contains(&format!("version {version}")))
                    })
            },
        );
        let history = cx.drover(&["history", "hello", "--json"]).success().json();
        assert!(
            history
                .as_array()
                .unwrap()
                .iter()
                .all(|g| g["outcome"] != "pending"),
            "{history}"
        );
        drop(_agent);
    }
    // The kills landed both before and after the switch.
    assert!(seen.len() == 2, "only ever saw {seen:?}");
}

#[test]
fn release_hook_runs_once_before_the_switch_and_its_failure_aborts() {
    let cx = TestContext::new();
    let _agent = cx.start_agent();
    // Where an app may write: its $DROVER_DATA.
    let marker = cx.root.join("apps/hello/data/migrations.log");
    let hook = |cmd: &str| format!("[hooks]\nrelease = \"{cmd}\"\n");
    let v1 = cx.hello_app(
        "v1",
        "1",
        &hook("echo migrated-$DROVER_VERSION >> $DROVER_DATA/migrations.log"),
    );
    cx.drover(&["deploy", v1.to_str().unwrap()]).success();
    assert_eq!(fs::read_to_string(&marker).unwrap(), "migrated-1\n");
    let v2 = cx.hello_app("v2", "2", &hook("echo failing; exit 1"));
    let run = cx.drover(&["deploy", v2.to_str().unwrap()]).failure();
    assert!(
        run.stderr.contains("release hook") && run.stderr.contains("failing"),
        "{}",
        run.stderr
    );
    serves(&cx, "1");
    assert_eq!(fs::read_to_string(&marker).unwrap(), "migrated-1\n");
}

#[test]
fn run_logs_stop_start_and_up() {
    let cx = TestContext::new();
    let v1 = cx.hello_app("v1", "1", "[env]\nGREETING = \"hi there\"\n");
    // `up` starts the agent itself and prints the URL.
    let run = cx.drover(&["up", v1.to_str().unwrap()]).success();
    let url = run
        .stdout
        .lines()
        .find(|l| l.starts_with("http://"))
        .unwrap_or_else(|| panic!("{}", run.stdout));
    let port: u16 = url
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let (_, body) = http_get(port, "/").unwrap();
    assert!(
        body.contains("hi there") && body.contains("version 1"),
        "{body}"
    );
    let agent_pid = fs::read_to_string(cx.root.join("agent.pid")).unwrap();

    let out = cx
        .drover(&[
            "run",
            "hello",
            "--",
            "sh",
            "-c",
            "echo $GREETING/$DROVER_VERSION/$(ls hello)",
        ])
        .success();
    assert_eq!(out.stdout.trim(), "hi there/1/hello");
    let out = cx.drover(&["run", "hello", "--", "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7));

    let logs = cx.drover(&["logs", "hello"]).success().stdout;
    assert!(logs.contains("web.0 | hello: listening on"), "{logs}");

    cx.drover(&["stop", "hello"]).success();
    assert_eq!(cx.app_status("hello")["state"], "stopped");
    wait_for("instances to stop", Duration::from_secs(10), || {
        tagged_processes(&cx.root).is_empty()
    });
    assert!(http_get(port, "/").is_err());
    cx.drover(&["start", "hello"]).success();
    serves(&cx, "1");

    // `up` again reuses the running agent.
    let v2 = cx.hello_app("v2", "2", "");
    cx.drover(&["up", v2.to_str().unwrap()]).success();
    serves(&cx, "2");
    assert_eq!(
        fs::read_to_string(cx.root.join("agent.pid")).unwrap(),
        agent_pid
    );
    let pid = agent_pid.trim().parse::<u32>().unwrap();
    let _ = std::process::Command::new("kill")
        .arg("-9")
        .arg(pid.to_string())
        .status();
    crate::common::kill_tagged(&cx.root);
}

#[test]
fn gc_keeps_what_generations_point_to() {
    let cx = TestContext::new();
    let _agent = cx.start_agent();
    let mut ids = Vec::new();
    for v in ["1", "2", "3"] {
        let d = cx.hello_app(&format!("v{v}"), v, "");
        ids.push(cx.build(&d, &[])["release"].as_str().unwrap().to_string());
        std::thread::sleep(Duration::from_millis(1050));
    }
    cx.drover(&["deploy", &ids[0]]).success();
    let report = cx.drover(&["gc", "--keep", "1", "--json"]).success().json();
    let removed = release_ids(&report["releases_removed"]);
    assert_eq!(removed, vec![ids[1].as_str()]);
    cx.drover(&["verify"]).success();
    serves(&cx, "1");
    cx.drover(&["deploy", &ids[2]]).success();
    cx.drover(&["rollback", "hello"]).success();
    serves(&cx, "1");
}

#[test]
fn a_process_that_exits_at_start_up_fails_the_deploy_at_once() {
    let cx = TestContext::new();
    let _agent = cx.start_agent();
    let v1 = cx.hello_app("v1", "1", "");
    cx.drover(&["deploy", v1.to_str().unwrap()]).success();
    let bad = cx.hello_app("bad", "2", "[health]\npath = \"/up\"\ntimeout = \"30s\"\n");
    fs::write(
        bad.join("drover.toml"),
        fs::read_to_string(bad.join("drover.toml"))
            .unwrap()
            .replace(
                "command = \"./hello\"",
                "command = \"echo cannot open database >&2; exit 2\"",
            ),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let run = cx.drover(&["deploy", bad.to_str().unwrap()]).failure();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "it waited for the health timeout"
    );
    assert!(
        run.stderr
            .contains("web.0 exited during start-up (exit status: 2)"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("last lines of web.0:")
            && run.stderr.contains("web.0 | cannot open database"),
        "{}",
        run.stderr
    );
    serves(&cx, "1");
}

#[test]
fn many_apps_side_by_side_and_logs_follow() {
    let cx = TestContext::new();
    let _agent = cx.start_agent();
    for name in ["alpha", "beta", "gamma"] {
        let d = cx.named_app(name, name, "1", "");
        cx.drover(&["deploy", d.to_str().unwrap()]).success();
    }
    let all = cx.status();
    assert_eq!(all.as_array().unwrap().len(), 3);
    for name in ["alpha", "beta", "gamma"] {
        for port in cx.live_ports(name) {
            let (_, body) = http_get(port, "/").unwrap();
            assert!(body.contains("version 1"));
        }
    }
    // `logs -f` streams new lines as they come.
    let mut child = cx
        .command()
        .args(["logs", "beta", "-f", "-n", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    // Make new output: kill an instance; the agent restarts it and it logs "listening".
    std::thread::sleep(Duration::from_millis(300));
    let pid = cx.app_status("beta")["instances"][0]["pid"]
        .as_u64()
        .unwrap();
    let _ = std::process::Command::new("kill")
        .args(["-9", "--", &format!("-{pid}")])
        .status();
    let line = rx
        .recv_timeout(Duration::from_secs(15))
        .expect("a followed log line");
    let (at, rest) = drover_wire::time::split_stamp(&line);
    assert!(at.is_some() && rest.starts_with("g1 web.0 | "), "{line}");
    let _ = child.kill();
    let _ = child.wait();
}

// ---- release trees: an unprivileged user, damaged trees, crash points ---------------------

/// A `drover agent` a test started with a command of its own (a crash point in its
/// environment); on drop it and every app process of the root go away.
struct OwnAgent {
    child: std::process::Child,
    root: std::path::PathBuf,
}

impl OwnAgent {
    /// Starts `drover agent` with `cmd` and waits until it answers.
    fn start(cx: &TestContext, mut cmd: Command) -> OwnAgent {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(cx.path("agent.log"))
            .unwrap();
        let child = cmd
            .arg("agent")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start agent");
        let agent = OwnAgent {
            child,
            root: cx.root.clone(),
        };
        wait_for("the agent to answer", Duration::from_secs(20), || {
            cx.command()
                .args(["status", "--json"])
                .output()
                .is_ok_and(|o| o.status.success())
        });
        agent
    }
}

impl Drop for OwnAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        kill_tagged(&self.root);
    }
}

fn serves_on(ports: Vec<u16>, version: &str) {
    assert!(!ports.is_empty(), "no live instances");
    for port in ports {
        let (code, body) = http_get(port, "/").unwrap();
        assert_eq!(code, 200);
        assert!(
            body.contains(&format!("version {version}")),
            "port {port} answered {body}"
        );
    }
}

#[test]
fn an_unprivileged_user_brings_an_app_up_rolls_back_and_collects() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let cx = TestContext::new();
    let dirs: Vec<_> = ["1", "2", "3"]
        .iter()
        .map(|v| cx.hello_app(&format!("v{v}"), v, ""))
        .collect();
    // The user's own root, 0700, and the whole test directory theirs.
    fs::create_dir(&cx.root).unwrap();
    fs::set_permissions(&cx.root, fs::Permissions::from_mode(0o700)).unwrap();
    if rustix::process::geteuid().is_root() {
        let status = Command::new("chown")
            .arg("-R")
            .arg(format!("{NOBODY}:{NOBODY}"))
            .arg(cx.dir.path())
            .status()
            .unwrap();
        assert!(status.success());
    }
    let drover = |args: &[&str]| to_run(unprivileged(&cx).args(args).output().unwrap());
    let ports = || -> Vec<u16> {
        let all = drover(&["status", "--json"]).success().json();
        let a = all
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["app"] == "hello")
            .cloned()
            .unwrap_or_else(|| panic!("no hello in {all}"));
        crate::common::live_ports_of(&a)
    };
    // `up` starts the agent, as the user: it and the apps go at the end.
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

    let build = |d: &std::path::Path| -> String {
        drover(&["build", d.to_str().unwrap(), "--json"])
            .success()
            .json()["release"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let ids: Vec<String> = dirs[..2].iter().map(|d| build(d)).collect();
    drover(&["up", dirs[0].to_str().unwrap()]).success();
    serves_on(ports(), "1");
    drover(&["deploy", dirs[1].to_str().unwrap()]).success();
    serves_on(ports(), "2");
    drover(&["rollback", "hello"]).success();
    serves_on(ports(), "1");

    // The trees are the user's, and read-only for everyone.
    let trees = cx.root.join("store/trees");
    for id in &ids {
        let meta = fs::metadata(trees.join(id)).unwrap();
        if rustix::process::geteuid().is_root() {
            assert_eq!(meta.uid(), NOBODY);
        }
        assert_eq!(meta.mode() & 0o777, 0o555, "tree {id}");
        let file = fs::metadata(trees.join(id).join("hello")).unwrap();
        assert_eq!(file.mode() & 0o222, 0, "tree {id}: its files are read-only");
    }

    // A newer release, never deployed: gc keeps it and the live one, and removes v2 with
    // its tree.
    build(&dirs[2]);
    let report = drover(&["gc", "--keep", "1", "--json"]).success().json();
    let removed = release_ids(&report["releases_removed"]);
    assert_eq!(removed, vec![ids[1].as_str()]);
    assert!(!trees.join(&ids[1]).exists(), "gc removed v2's tree");
    assert!(trees.join(&ids[0]).exists());
    drover(&["verify"]).success();
    serves_on(ports(), "1");
}

/// The example server greeting with the content of its file `greeting.txt`.
fn greeting_app(cx: &TestContext, greeting: &str) -> std::path::PathBuf {
    let d = cx.hello_app("greeting", "1", "");
    fs::write(d.join("greeting.txt"), greeting).unwrap();
    // Nested directories, a symlink, one content at two paths: all part of a whole tree.
    fs::create_dir_all(d.join("static/css")).unwrap();
    fs::write(d.join("static/css/site.css"), greeting).unwrap();
    fs::create_dir_all(d.join("empty")).unwrap();
    std::os::unix::fs::symlink("static/css", d.join("css")).unwrap();
    let toml = fs::read_to_string(d.join("drover.toml")).unwrap().replace(
        "command = \"./hello\"",
        "command = \"GREETING=$(cat greeting.txt) exec ./hello\"",
    );
    fs::write(d.join("drover.toml"), toml).unwrap();
    d
}

fn greets(cx: &TestContext, greeting: &str) {
    let ports = cx.live_ports("hello");
    assert!(!ports.is_empty(), "no live instances: {}", cx.status());
    for port in ports {
        let (code, body) = http_get(port, "/").unwrap();
        assert_eq!(code, 200);
        assert!(body.starts_with(greeting), "port {port} answered {body}");
    }
}

#[test]
fn a_damaged_tree_is_named_by_verify_and_rebuilt_before_a_deploy_switches_to_it() {
    use std::os::unix::fs::MetadataExt;
    let cx = TestContext::new();
    let _agent = cx.start_agent();
    let d = greeting_app(&cx, "good");
    let id = cx.build(&d, &[])["release"].as_str().unwrap().to_string();
    cx.drover(&["deploy", &id]).success();
    greets(&cx, "good");
    let tree = cx.root.join("store/trees").join(&id);
    // The cache file the tree's greeting.txt is a link to.
    let ino = fs::metadata(tree.join("greeting.txt")).unwrap().ino();
    let cached = fs::read_dir(cx.root.join("store/files"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| fs::metadata(p).unwrap().ino() == ino)
        .expect("greeting.txt is a link to a cache file");
    let cached_name = cached.file_name().unwrap().to_str().unwrap().to_string();

    let damages: [(&str, &dyn Fn()); 5] = [
        ("bit rot in a cache file, mtime kept", &|| {
            let mtime = fs::metadata(&cached).unwrap().modified().unwrap();
            make_writable(&cached);
            fs::write(&cached, "evil").unwrap();
            let f = fs::File::open(&cached).unwrap();
            f.set_times(fs::FileTimes::new().set_modified(mtime))
                .unwrap();
        }),
        ("a file replaced in the tree", &|| {
            in_writable(&tree, || {
                fs::remove_file(tree.join("greeting.txt")).unwrap();
                fs::write(tree.join("greeting.txt"), "evil").unwrap();
            })
        }),
        ("an extra file in the tree", &|| {
            let dir = tree.join("static/css");
            in_writable(&dir, || fs::write(dir.join("extra.txt"), "extra").unwrap())
        }),
        ("the tree a symlink to a copy of it", &|| {
            let copy = cx.path("copy");
            fs::rename(&tree, &copy).unwrap();
            std::os::unix::fs::symlink(&copy, &tree).unwrap();
        }),
        ("the tree a dangling symlink", &|| {
            remove_tree(&tree);
            std::os::unix::fs::symlink(cx.path("nowhere"), &tree).unwrap();
        }),
    ];
    let names = [
        cached_name.as_str(),
        &format!("{id}/greeting.txt"),
        &format!("{id}/static/css/extra.txt"),
        &format!("{id}: is not a directory"),
        &format!("{id}: is not a directory"),
    ];
    for (n, ((what, damage), name)) in damages.iter().zip(names).enumerate() {
        damage();
        let run = cx.drover(&["verify"]).failure();
        assert!(
            run.stderr.contains(name),
            "{what}: verify did not name {name}:\n{}",
            run.stderr
        );
        let run = cx.drover(&["deploy", &id]).success();
        assert!(
            run.stderr.contains("damaged") && run.stderr.contains("rebuilt"),
            "{what}: the deploy did not say it rebuilt the tree:\n{}",
            run.stderr
        );
        greets(&cx, "good");
        assert!(!tree.join("static/css/extra.txt").exists(), "{what}");
        assert!(fs::symlink_metadata(&tree).unwrap().is_dir(), "{what}");
        cx.drover(&["verify"]).success();
        let log = fs::read_to_string(cx.path("agent.log")).unwrap();
        assert_eq!(
            log.matches("rebuilt").count(),
            n + 1,
            "{what}: agent log:\n{log}"
        );
    }
    // A whole tree is taken as it is.
    let run = cx.drover(&["deploy", &id]).success();
    assert!(!run.stderr.contains("rebuilt"), "{}", run.stderr);
    greets(&cx, "good");
}

/// Checks that a process ended by SIGKILL: the crash point it was given was reached.
#[track_caller]
fn killed_at(status: std::process::ExitStatus, point: &str, log: &str) {
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(9),
        "crash point {point} was not reached ({status}):\n{log}"
    );
}

/// What a crash must never leave in `trees/`: anything but whole trees, sealed.
#[track_caller]
fn no_half_tree(cx: &TestContext) {
    use std::os::unix::fs::MetadataExt;
    for e in fs::read_dir(cx.root.join("store/trees")).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        assert!(
            name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()),
            "not a tree in trees/: {}",
            p.display()
        );
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o555, "{name}");
    }
    // Each tree of a stored release is checked, entry by entry, against its manifest.
    cx.drover(&["verify"]).success();
}

/// The crash points of one area (`prefix` = "gc." ...), as drover_store lists them.
fn points(prefix: &str) -> Vec<&'static str> {
    let found: Vec<_> = drover_store::failpoint::POINTS
        .iter()
        .copied()
        .filter(|p| p.starts_with(prefix))
        .collect();
    assert!(!found.is_empty(), "no crash point starts with {prefix}");
    found
}

#[test]
fn a_crash_at_each_step_of_materialise_leaves_the_old_generation_serving() {
    // Every materialise point there is: a new one is covered without a word here.
    for point in points("materialise.") {
        let cx = TestContext::new();
        let v1 = cx.hello_app("v1", "1", "");
        let v2 = cx.hello_app("v2", "2", "");
        let id2 = cx.build(&v2, &[])["release"].as_str().unwrap().to_string();
        let mut first = cx.start_agent();
        cx.drover(&["deploy", v1.to_str().unwrap()]).success();
        serves(&cx, "1");
        first.kill9();

        let mut cmd = cx.command();
        cmd.env("DROVER_FAILPOINT", point);
        let mut agent = OwnAgent::start(&cx, cmd);
        cx.drover(&["deploy", &id2]).failure();
        let status = agent.child.wait().unwrap();
        let log = fs::read_to_string(cx.path("agent.log")).unwrap();
        killed_at(status, point, &log);
        assert!(log.contains(&format!("crash point {point}")), "{log}");

        no_half_tree(&cx);
        let mut again = cx.start_agent();
        serves(&cx, "1");
        cx.drover(&["deploy", &id2]).success();
        serves(&cx, "2");
        no_half_tree(&cx);

        // The same point while a damaged tree is replaced: the tree in place is the damaged
        // one or the rebuilt one, whole either way.
        cx.drover(&["rollback", "hello"]).success();
        serves(&cx, "1");
        let tree = cx.root.join("store/trees").join(&id2);
        in_writable(&tree, || fs::write(tree.join("extra.txt"), "x").unwrap());
        again.kill9();
        let mut cmd = cx.command();
        cmd.env("DROVER_FAILPOINT", point);
        let mut agent = OwnAgent::start(&cx, cmd);
        cx.drover(&["deploy", &id2]).failure();
        let status = agent.child.wait().unwrap();
        killed_at(status, point, "");
        let run = cx.drover(&["verify", "--json"]);
        let problems: Vec<String> = match run.status.success() {
            true => Vec::new(),
            false => run.json()["problems"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["object"].as_str().unwrap().to_string())
                .collect(),
        };
        let extra = format!("{id2}/extra.txt");
        assert!(
            problems.iter().all(|p| p.ends_with(&extra)),
            "{point}: {problems:?}"
        );
        let _again = cx.start_agent();
        serves(&cx, "1");
        let run = cx.drover(&["deploy", &id2]).success();
        assert_eq!(
            run.stderr.contains("rebuilt"),
            !problems.is_empty(),
            "{point}: a tree still damaged is rebuilt, a rebuilt one kept:\n{}",
            run.stderr
        );
        serves(&cx, "2");
        no_half_tree(&cx);
    }
}

#[test]
fn a_crash_at_each_step_of_gc_leaves_a_store_that_verifies() {
    let cx = TestContext::new();
    let mut agents = vec![cx.start_agent()];
    for (round, point) in points("gc.").into_iter().enumerate() {
        // Three releases deployed, each with its tree: gc keeps the live one, removes two.
        for k in 0..3 {
            let d = cx.hello_app(&format!("r{round}-{k}"), &format!("{round}.{k}"), "");
            cx.drover(&["deploy", d.to_str().unwrap()]).success();
        }
        let live = format!("{round}.2");
        serves(&cx, &live);
        let out = cx
            .command()
            .args(["gc", "--keep", "1"])
            .env("DROVER_FAILPOINT", point)
            .output()
            .unwrap();
        let run = to_run(out);
        killed_at(run.status, point, &run.stderr);
        assert!(
            run.stderr.contains(&format!("crash point {point}")),
            "{}",
            run.stderr
        );

        no_half_tree(&cx);
        agents.last_mut().unwrap().kill9();
        agents.push(cx.start_agent());
        serves(&cx, &live);
        let report = cx.drover(&["gc", "--keep", "1", "--json"]).success().json();
        assert!(report["releases_removed"].is_array());
        no_half_tree(&cx);
        assert_eq!(
            fs::read_dir(cx.root.join("store/trees")).unwrap().count(),
            1,
            "only the live release's tree is left"
        );
        serves(&cx, &live);
    }
}

// ---- what the agent trusts: signatures on every use, its socket ----------------------

const SLEEPER: &str =
    "[app]\nname = \"sleeper\"\nversion = \"1\"\n\n[process.main]\ncommand = \"sleep 600\"\n";

#[test]
fn deploy_checks_the_stored_signature_every_time() {
    let cx = TestContext::new();
    let _agent = cx.start_agent();
    let app = cx.app("sleeper", SLEEPER, &[("data.txt", "data")]);
    let id = cx.build(&app, &[])["release"].as_str().unwrap().to_string();
    let sig = cx.root.join("store/objects/sigs").join(&id);
    let good = fs::read(&sig).unwrap();

    // Garbage in the signature file, then a valid signature over another release.
    let other = drover_store::Keyring::new(&cx.root)
        .sign(&drover_store::Hash::of(b"another release"))
        .unwrap()
        .to_bytes();
    for bad in [b"garbage".to_vec(), other] {
        fs::write(&sig, &bad).unwrap();
        {
            let run = cx.drover(&["deploy", &id]).failure();
            assert!(
                run.stderr
                    .contains(&format!("release sleeper@1 ({})", &id[..12]))
                    && run.stderr.contains(&sig.display().to_string())
                    && run.stderr.contains("does not check")
                    && run.stderr.contains("hint: "),
                "{}",
                run.stderr
            );
            assert!(tagged_processes(&cx.root).is_empty());
            assert!(!cx.root.join("apps/sleeper/gens").exists());
        }
    }
    // Signed by a key the store does not trust (any more).
    let stranger = tempfile::tempdir().unwrap();
    let foreign = drover_store::Keyring::new(stranger.path())
        .sign(&id.parse().unwrap())
        .unwrap();
    fs::write(&sig, foreign.to_bytes()).unwrap();
    let run = cx.drover(&["deploy", &id]).failure();
    assert!(
        run.stderr.contains("which this store does not trust")
            && run.stderr.contains(&sig.display().to_string()),
        "{}",
        run.stderr
    );

    // A deploy from the source builds the release again: signed anew by this store's key.
    fs::write(&sig, b"garbage").unwrap();
    cx.drover(&["deploy", app.to_str().unwrap()]).success();
    assert_ne!(fs::read(&sig).unwrap(), b"garbage");
    cx.drover(&["verify"]).success();
    cx.drover(&["stop", "sleeper"]).success();

    // With its own signature back, it deploys; a signature damaged afterwards stops a start.
    fs::write(&sig, &good).unwrap();
    cx.drover(&["deploy", &id]).success();
    cx.drover(&["stop", "sleeper"]).success();
    fs::write(&sig, b"garbage").unwrap();
    let run = cx.drover(&["start", "sleeper"]).failure();
    assert!(run.stderr.contains("does not check"), "{}", run.stderr);
    assert!(
        tagged_processes(&cx.root).is_empty(),
        "{:?}",
        tagged_processes(&cx.root)
    );
}

/// `drover agent` under `umask 000`, its output in the test's dir.
fn agent_with_umask_000(cx: &TestContext, failpoint: Option<&str>) -> std::process::Child {
    let mut c = std::process::Command::new("sh");
    c.arg("-c")
        .arg("umask 000; exec \"$0\" agent")
        .arg(crate::common::drover_bin())
        .env("DROVER_ROOT", &cx.root)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(f) = failpoint {
        c.env("DROVER_FAILPOINT", f);
    }
    c.spawn().unwrap()
}

/// Every socket under `dir`, with whether a user other than its owner could connect to it
/// (write on the socket, search on every directory from `dir` down to it).
fn sockets(dir: &std::path::Path, open_above: bool, out: &mut Vec<(std::path::PathBuf, bool)>) {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    for e in fs::read_dir(dir).unwrap().flatten() {
        let m = fs::symlink_metadata(e.path()).unwrap();
        let mode = m.permissions().mode();
        if m.file_type().is_socket() {
            out.push((e.path(), open_above && mode & 0o022 != 0));
        } else if m.is_dir() {
            sockets(&e.path(), open_above && mode & 0o011 != 0, out);
        }
    }
}

#[test]
fn the_agent_socket_is_never_open_to_others_even_with_umask_000() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::ExitStatusExt;
    let cx = TestContext::new();
    let sock = cx.root.join("agent.sock");
    // Killed right after its bind: no socket anyone else could reach is left at any path.
    let mut child = agent_with_umask_000(&cx, Some("agent.socket_bound"));
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(9), "the crash point was not reached");
    let mut found = Vec::new();
    sockets(&cx.root, true, &mut found);
    assert!(!found.is_empty(), "no socket was bound");
    assert!(
        found.iter().all(|(_, open)| !open),
        "reachable by others: {found:?}"
    );

    // Started again: the socket is 0600 from the first moment it exists at its path.
    let mut child = agent_with_umask_000(&cx, None);
    let mut first = None;
    wait_for("agent.sock", Duration::from_secs(20), || {
        first = fs::symlink_metadata(&sock)
            .ok()
            .map(|m| m.permissions().mode() & 0o777);
        first.is_some()
    });
    assert_eq!(first, Some(0o600));
    wait_for("the agent to answer", Duration::from_secs(20), || {
        cx.drover(&["status", "--json"]).status.success()
    });
    // The crashed agent's private directory is gone; only agent.sock remains.
    let mut found = Vec::new();
    sockets(&cx.root, true, &mut found);
    assert_eq!(found.iter().map(|(p, _)| p).collect::<Vec<_>>(), [&sock]);
    let _ = child.kill();
    let _ = child.wait();
}

/// `drover ARGS` as the unprivileged user 65534, from `/`.
fn as_nobody(cx: &TestContext, root: &std::path::Path, args: &[&str]) -> crate::common::Run {
    use std::os::unix::process::CommandExt;
    let out = cx
        .command()
        .env("DROVER_ROOT", root)
        .current_dir("/")
        .uid(65534)
        .gid(65534)
        .args(args)
        .output()
        .unwrap();
    crate::common::to_run(out)
}

#[test]
fn another_users_root_and_socket_are_named_with_the_way_out() {
    use std::os::unix::fs::PermissionsExt;
    let cx = TestContext::new();
    fs::set_permissions(cx.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    cx.drover(&["releases"]).success();
    let root = cx.root.display().to_string();

    // root's root, for a user who is not root: named, with --root as the way out.
    let run = as_nobody(&cx, &cx.root, &["agent"]).failure();
    assert!(
        run.stderr.contains(&format!("{root} is owned by uid 0")) && run.stderr.contains("--root"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    // One that cannot be made (or seen) there.
    let private = cx.path("private");
    fs::create_dir(&private).unwrap();
    fs::set_permissions(&private, fs::Permissions::from_mode(0o700)).unwrap();
    let run = as_nobody(&cx, &private.join("root"), &["agent"]).failure();
    assert!(
        run.stderr
            .contains(&private.join("root").display().to_string())
            && run.stderr.contains("Permission denied")
            && run.stderr.contains("--root"),
        "{}",
        run.stderr
    );

    // A root of its own whose socket is another user's: not "no agent is running".
    let ok = std::process::Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(&cx.root)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let sock = cx.root.join("agent.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    fs::set_permissions(&sock, fs::Permissions::from_mode(0o600)).unwrap();
    let app = cx.app("sleeper", SLEEPER, &[]);
    for args in [vec!["status"], vec!["up", app.to_str().unwrap()]] {
        let run = as_nobody(&cx, &cx.root, &args).failure();
        assert!(
            run.stderr.contains(&format!(
                "{} exists, but this user (uid 65534) may not connect to it",
                sock.display()
            )) && run.stderr.contains("hint: "),
            "{args:?}: {}",
            run.stderr
        );
        assert!(!run.stderr.contains("no drover agent"), "{}", run.stderr);
    }
}

/// The status code the proxy on `port` answers a POST with a `len`-byte body.
fn post_status(port: u16, len: usize) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {len}\r\n\r\n{}",
        "b".repeat(len)
    )
    .unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).unwrap();
    String::from_utf8_lossy(&head[9..12]).parse().unwrap()
}

/// What answers on the public port `port`: the version, or None when nothing listens.
fn public_version(port: u16) -> Option<String> {
    let (_, body) = http_get(port, "/").ok()?;
    let v = body.split("version ").nth(1)?;
    Some(
        v.split(|c: char| !c.is_ascii_alphanumeric() && c != '.')
            .next()?
            .to_string(),
    )
}

#[test]
fn the_public_port_and_proxy_settings_move_only_with_the_live_generation() {
    let cx = TestContext::new();
    let _agent = cx.start_agent();
    let (a, b) = (free_port(), free_port());
    let proxied = |dir: &str, version: &str, port: u16, extra: &str| {
        cx.hello_app(
            dir,
            version,
            &format!("[proxy]\nport = {port}\nmax_body = 100000\n{extra}"),
        )
    };
    let v1 = proxied("v1", "1", a, "");
    cx.drover(&["deploy", v1.to_str().unwrap()]).success();
    assert_eq!(public_version(a).as_deref(), Some("1"));

    // Another port and body limit, and a health check that fails: nothing of it serves.
    let v2 = cx.hello_app(
        "v2",
        "2",
        &format!(
            "[proxy]\nport = {b}\nmax_body = 10\n[health]\npath = \"/broken\"\ntimeout = \"2s\"\n"
        ),
    );
    cx.drover(&["deploy", v2.to_str().unwrap()]).failure();
    assert_eq!(public_version(a).as_deref(), Some("1"));
    assert_eq!(public_version(b), None, "port {b} answers");
    assert_ne!(post_status(a, 1000), 413);
    assert_eq!(cx.app_status("hello")["proxy"]["port"], a);
    let text = cx.drover(&["status", "hello"]).success().stdout;
    assert!(text.contains(&format!("port {a}")), "{text}");

    // A successful deploy moves port and settings with its generation.
    let v3 = cx.hello_app("v3", "3", &format!("[proxy]\nport = {b}\nmax_body = 10\n"));
    cx.drover(&["deploy", v3.to_str().unwrap()]).success();
    assert_eq!(public_version(b).as_deref(), Some("3"));
    assert_eq!(post_status(b, 1000), 413);
    assert_eq!(cx.app_status("hello")["proxy"]["port"], b);
    wait_for("port A to close", Duration::from_secs(10), || {
        public_version(a).is_none()
    });

    // A rollback moves them back.
    cx.drover(&["rollback", "hello"]).success();
    assert_eq!(public_version(a).as_deref(), Some("1"));
    assert_ne!(post_status(a, 1000), 413);
    assert_eq!(cx.app_status("hello")["proxy"]["port"], a);
    wait_for("port B to close", Duration::from_secs(10), || {
        public_version(b).is_none()
    });

    // Other settings on the same port: a new proxy on the same socket.
    let v4 = cx.hello_app("v4", "4", &format!("[proxy]\nport = {a}\nmax_body = 10\n"));
    cx.drover(&["deploy", v4.to_str().unwrap()]).success();
    assert_eq!(public_version(a).as_deref(), Some("4"));
    assert_eq!(post_status(a, 1000), 413);
    assert_eq!(cx.app_status("hello")["proxy"]["port"], a);
}

#[test]
fn a_crash_at_each_durable_step_of_the_switch_leaves_exactly_one_generation_live() {
    use std::os::unix::process::ExitStatusExt;
    for (point, survivor) in [
        ("agent.switch.pending", "1"),
        ("agent.switch.before_rename", "1"),
        ("agent.switch.after_rename", "2"),
        ("agent.switch.before_stop_old", "2"),
    ] {
        let cx = TestContext::new();
        let port = free_port();
        let v1 = cx.hello_app("v1", "1", &format!("[proxy]\nport = {port}\n"));
        let v2 = cx.hello_app("v2", "2", &format!("[proxy]\nport = {port}\n"));
        // v1's deploy passes each point once; v2's dies at its second.
        let failpoint = format!("{point}#2");
        let mut agent = cx.start_agent_env(&[], &[("DROVER_FAILPOINT", &failpoint)]);
        cx.drover(&["deploy", v1.to_str().unwrap()]).success();
        cx.drover(&["deploy", v2.to_str().unwrap()]).failure();
        let mut status = None;
        wait_for("the agent to die", Duration::from_secs(20), || {
            status = agent.child.try_wait().unwrap();
            status.is_some()
        });
        assert_eq!(
            status.unwrap().signal(),
            Some(9),
            "{point}: the agent was not killed there"
        );

        let _agent = cx.start_agent();
        let app = cx.app_status("hello");
        let generation = app["generation"].as_u64().unwrap();
        assert_eq!(app["version"], survivor, "{point}: {app}");
        let history = cx.drover(&["history", "hello", "--json"]).success().json();
        let live: Vec<u64> = history
            .as_array()
            .unwrap()
            .iter()
            .filter(|g| g["outcome"] == "live")
            .map(|g| g["generation"].as_u64().unwrap())
            .collect();
        assert_eq!(live, vec![generation], "{point}: {history}");
        assert!(
            history
                .as_array()
                .unwrap()
                .iter()
                .all(|g| g["outcome"] != "pending"),
            "{point}: {history}"
        );
        wait_for(
            "the other generation's instances to stop",
            Duration::from_secs(15),
            || {
                let procs = tagged_processes(&cx.root);
                !procs.is_empty()
                    && procs
                        .iter()
                        .all(|(_, tag)| tag.starts_with(&format!("hello/{generation}/")))
            },
        );
        assert_eq!(
            public_version(port).as_deref(),
            Some(survivor),
            "{point}: the public port"
        );
        serves(&cx, survivor);

        // A retried deploy goes through.
        cx.drover(&["deploy", v2.to_str().unwrap()]).success();
        assert_eq!(public_version(port).as_deref(), Some("2"), "{point}");
        serves(&cx, "2");
        drop(_agent);
        drop(agent);
    }
}

/// Reads what has arrived on each connection so far; true for those that got a whole line.
fn lines_arrived(conns: &mut [(std::os::unix::net::UnixStream, Vec<u8>)]) -> usize {
    use std::io::Read;
    let mut done = 0;
    for (s, buf) in conns.iter_mut() {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = s.read(&mut chunk) {
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        if buf.contains(&b'\n') {
            done += 1;
        }
    }
    done
}

#[test]
fn stalled_connections_beyond_the_bound_are_refused_and_the_agent_still_answers() {
    let cx = TestContext::new();
    let mut agent = cx.start_agent();
    let v1 = cx.hello_app("v1", "1", "");
    cx.drover(&["deploy", v1.to_str().unwrap()]).success();
    let sock = cx.root.join("agent.sock");
    let mut held: Vec<(std::os::unix::net::UnixStream, Vec<u8>)> = (0..150)
        .map(|_| {
            let s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
            s.set_nonblocking(true).unwrap();
            (s, Vec::new())
        })
        .collect();
    // All but 16 (the bound per client) are answered at once, with a refusal.
    wait_for("the refusals", Duration::from_secs(20), || {
        lines_arrived(&mut held) == 150 - 16
    });
    let refusal = held
        .iter()
        .find(|(_, b)| !b.is_empty())
        .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
        .unwrap();
    assert!(
        refusal.contains("at most 16 per client") && refusal.contains("hint"),
        "{refusal}"
    );
    // Other clients are served, and the agent is up.
    assert_eq!(cx.app_status("hello")["state"], "running");
    serves(&cx, "1");
    assert!(agent.child.try_wait().unwrap().is_none());
    let v2 = cx.hello_app("v2", "2", "");
    cx.drover(&["deploy", v2.to_str().unwrap()]).success();
    serves(&cx, "2");
    drop(held);
    assert!(agent.child.try_wait().unwrap().is_none());
}

/// Waits until the agent runs no request or retire thread: the tasks it holds then are the
/// ones it keeps (its monitor, its proxies), so that a pids limit set from them is exact.
fn wait_settled(agent: &AgentHandle) {
    let tasks = format!("/proc/{}/task", agent.child.id());
    wait_for(
        "the agent's requests to end",
        Duration::from_secs(15),
        || {
            fs::read_dir(&tasks).unwrap().flatten().all(|t| {
                let comm = fs::read_to_string(t.path().join("comm")).unwrap_or_default();
                !matches!(comm.trim(), "drover-request" | "drover-retire")
            })
        },
    );
}

/// A pids cgroup named `name` to put the agent in, and the agent, serving `hello` 1 with
/// `instances` web instances; None when this user can make no pids cgroup.
fn hello_and_a_pids_cgroup(
    cx: &TestContext,
    name: &str,
    instances: u32,
) -> Option<(PidsCgroup, AgentHandle)> {
    let Some(cgroup) = PidsCgroup::new(&format!("{name}-{}", std::process::id())) else {
        // Root can make one wherever the suite runs (cgroup v1 or v2); another user may not.
        assert!(
            !rustix::process::geteuid().is_root(),
            "as root, a pids cgroup must be possible here"
        );
        eprintln!("no pids cgroup can be made by this user: nothing to limit");
        return None;
    };
    let agent = cx.start_agent();
    let v1 = cx.hello_app("v1", "1", "");
    let toml = fs::read_to_string(v1.join("drover.toml")).unwrap().replace(
        "http = true",
        &format!("http = true\ninstances = {instances}"),
    );
    fs::write(v1.join("drover.toml"), toml).unwrap();
    cx.drover(&["deploy", v1.to_str().unwrap()]).success();
    Some((cgroup, agent))
}

#[test]
fn under_a_pids_limit_a_deploy_fails_cleanly_and_the_agent_stays_up() {
    let cx = TestContext::new();
    let Some((cgroup, mut agent)) = hello_and_a_pids_cgroup(&cx, "drover-test", 8) else {
        return;
    };
    fs::write(cgroup.0.join("cgroup.procs"), agent.child.id().to_string()).unwrap();

    // No thread to spare: the connection is refused, by a reply that says why.
    wait_settled(&agent);
    cgroup.set_max(&cgroup.current().to_string());
    let run = cx.drover(&["status"]).failure();
    assert!(
        run.stderr.contains("cannot start a thread") && run.stderr.contains("hint:"),
        "{}",
        run.stderr
    );
    // Room for the request and one instance: the new generation's second cannot start.
    cgroup.set_max(&(cgroup.current() + 2).to_string());
    let run = cx
        .drover(&["config", "set", "hello", "GREETING=again"])
        .failure();
    assert!(run.stderr.contains("cannot start web."), "{}", run.stderr);
    assert!(agent.child.try_wait().unwrap().is_none(), "the agent died");
    cgroup.set_max("max");

    let app = cx.app_status("hello");
    assert_eq!(app["generation"], 1);
    let history = cx.drover(&["history", "hello", "--json"]).success().json();
    assert_eq!(history[1]["outcome"], "failed", "{history}");
    wait_for(
        "the failed generation's instances to go",
        Duration::from_secs(15),
        || {
            tagged_processes(&cx.root)
                .iter()
                .all(|(_, t)| t.starts_with("hello/1/"))
                && cx.app_status("hello")["instances"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|i| i["generation"] == 1 && i["state"] == "running")
        },
    );
    serves(&cx, "1");
    cx.drover(&["config", "set", "hello", "GREETING=again"])
        .success();
    serves(&cx, "1");
    cx.drover(&["stop", "hello"]).success();
}

#[test]
fn a_start_that_cannot_start_every_instance_leaves_none_running() {
    let cx = TestContext::new();
    let Some((cgroup, mut agent)) = hello_and_a_pids_cgroup(&cx, "drover-test-start", 4) else {
        return;
    };
    cx.drover(&["stop", "hello"]).success();
    wait_for("the app to stop", Duration::from_secs(15), || {
        tagged_processes(&cx.root).is_empty()
    });
    fs::write(cgroup.0.join("cgroup.procs"), agent.child.id().to_string()).unwrap();

    // Room for the request and one instance: the second cannot start.
    wait_settled(&agent);
    cgroup.set_max(&(cgroup.current() + 2).to_string());
    let run = cx.drover(&["start", "hello"]).failure();
    assert!(run.stderr.contains("cannot start web."), "{}", run.stderr);
    assert!(agent.child.try_wait().unwrap().is_none(), "the agent died");
    // The one that did start is stopped again: a failed start runs nothing.
    wait_for(
        "the started instance to go",
        Duration::from_secs(15),
        || tagged_processes(&cx.root).is_empty(),
    );
    assert_eq!(cx.app_status("hello")["state"], "stopped");
    cgroup.set_max("max");

    cx.drover(&["start", "hello"]).success();
    serves(&cx, "1");
    cx.drover(&["stop", "hello"]).success();
}

// ---- a fleet deploy's confirm, spoken to the agent directly ------------------------------

/// A fleet-style deploy of `release` over the agent's socket: waits for the confirm request
/// and answers `word` (none: says nothing and closes nothing until the reply). Returns the
/// reply line.
fn deploy_and_confirm(cx: &TestContext, release: &str, word: Option<bool>, within: u64) -> String {
    use std::io::{BufRead, BufReader, Write};
    let mut sock = std::os::unix::net::UnixStream::connect(cx.root.join("agent.sock")).unwrap();
    let req = drover_wire::Request::Deploy {
        release: release.into(),
        who: "tester".into(),
        canary: None,
        environment: Some("prod".into()),
        env_layer: Default::default(),
        role: None,
        role_layer: Default::default(),
        secrets: None,
        confirm_within: Some(within),
        processes: None,
        skip_release_hook: false,
    };
    writeln!(sock, "{}", serde_json::to_string(&req).unwrap()).unwrap();
    let mut reader = BufReader::new(sock.try_clone().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "the agent hung up"
        );
        if line.contains(drover_wire::AWAITING_CONFIRM) {
            if let Some(confirm) = word {
                let c = drover_wire::Confirm { confirm };
                writeln!(sock, "{}", serde_json::to_string(&c).unwrap()).unwrap();
            }
        } else if line.starts_with("{\"ok\"") || line.starts_with("{\"error\"") {
            return line;
        }
    }
}

#[test]
fn a_deploy_the_deployer_declines_or_never_confirms_goes_back_by_the_revert_rule() {
    let cx = TestContext::new();
    let _agent = cx.start_agent();
    let v1 = cx.hello_app("v1", "1", "");
    cx.drover(&["deploy", v1.to_str().unwrap()]).success();
    serves(&cx, "1");
    let v2 = cx.hello_app("v2", "2", "");
    let id = cx.build(&v2, &[])["release"].as_str().unwrap().to_string();

    // Declined: back on generation 1 at once, and the audit log says why.
    let reply = deploy_and_confirm(&cx, &id, Some(false), 60);
    assert!(
        reply.contains("the deployer declined the new generation")
            && reply.contains("back on generation 1"),
        "{reply}"
    );
    serves(&cx, "1");
    // Confirmed: kept.
    let reply = deploy_and_confirm(&cx, &id, Some(true), 60);
    assert!(reply.starts_with("{\"ok\""), "{reply}");
    serves(&cx, "2");
    // No word within the time: back on the generation it came from (4, on v2: the
    // declined deploy was 2, its revert 3).
    let v3 = cx.hello_app("v3", "3", "");
    let id3 = cx.build(&v3, &[])["release"].as_str().unwrap().to_string();
    let reply = deploy_and_confirm(&cx, &id3, None, 1);
    assert!(
        reply.contains("did not confirm within 1s") && reply.contains("back on generation 4"),
        "{reply}"
    );
    serves(&cx, "2");
    let audit = fs::read_to_string(cx.root.join("audit.jsonl")).unwrap();
    let reverts: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|e: &serde_json::Value| e["action"] == "auto-revert")
        .collect();
    assert_eq!(reverts.len(), 2, "{audit}");
    assert_eq!(reverts[0]["outcome"], "reverted");
    assert_eq!(reverts[0]["to"], 1);
    assert_eq!(reverts[0]["environment"], "prod");
    assert!(reverts[0]["reason"].as_str().unwrap().contains("declined"));
    assert_eq!(
        (&reverts[0]["from"], &reverts[1]["from"]),
        (&2.into(), &5.into())
    );
    assert_eq!(reverts[1]["to"], 4);
}
