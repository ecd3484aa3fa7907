//! Everyday operations: gc that keeps rollback targets and says what it does.

use crate::common::{TestContext, http_get};

fn versions(cx: &TestContext) -> Vec<String> {
    let list = cx.drover(&["releases", "hello", "--json"]).success().json();
    let mut v: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["version"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn gc_keeps_the_releases_of_the_newest_generations_and_a_rollback_past_them_says_why() {
    let cx = TestContext::new();
    let _agent = cx.start_agent_with(&["--gc-keep", "0"]);
    for v in ["1", "2", "3"] {
        let dir = cx.hello_app("app", v, "");
        cx.drover(&["deploy", dir.to_str().unwrap()]).success();
    }
    // --dry-run names what would go and removes nothing.
    let run = cx.drover(&["gc", "--keep", "1", "--dry-run"]).success();
    assert!(
        run.stdout.contains("would remove hello@1 ")
            && run.stdout.contains("would remove hello@2 "),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("hello@3"), "{}", run.stdout);
    assert!(
        run.stderr
            .contains("2 releases would go (--keep 1); nothing was removed"),
        "{}",
        run.stderr
    );
    assert_eq!(versions(&cx), ["1", "2", "3"]);
    let gone = cx
        .drover(&["gc", "--keep", "1", "--dry-run", "--json"])
        .success()
        .json();
    assert_eq!(gone.as_array().unwrap().len(), 2, "{gone}");

    // --keep 2: the two newest generations' releases stay; rolling back past them says
    // that gc removed the release, and how to bring it back.
    cx.drover(&["gc", "--keep", "2"]).success();
    assert_eq!(versions(&cx), ["2", "3"]);
    let run = cx.drover(&["rollback", "hello", "--to", "1"]).failure();
    assert!(
        run.stderr.contains("generation 1 of `hello` ran 1")
            && run.stderr.contains("gc has removed"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("hint: bring it back: `drover unpack`"),
        "{}",
        run.stderr
    );
    cx.drover(&["rollback", "hello"]).success();
    assert_eq!(cx.app_status("hello")["version"], "2");
}

#[test]
fn the_agent_collects_after_a_deploy_what_its_gc_keep_does_not_need() {
    let cx = TestContext::new();
    let _agent = cx.start_agent_with(&["--gc-keep", "2"]);
    for v in ["1", "2", "3", "4"] {
        let dir = cx.hello_app("app", v, "");
        cx.drover(&["deploy", dir.to_str().unwrap()]).success();
    }
    crate::common::wait_for(
        "the agent's gc after the deploy",
        std::time::Duration::from_secs(20),
        || versions(&cx) == ["3", "4"],
    );
    // What it kept still deploys, rolls back and verifies.
    cx.drover(&["rollback", "hello"]).success();
    assert_eq!(cx.app_status("hello")["version"], "3");
    cx.drover(&["verify"]).success();
}

#[test]
fn the_agents_systemd_unit_verifies_and_the_shipped_one_is_what_host_unit_prints() {
    let shipped =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dist/drover-agent.service");
    let cx = TestContext::new();
    let printed = cx
        .drover(&[
            "--root",
            "/var/lib/drover",
            "host",
            "unit",
            "--binary",
            "/var/lib/drover/bin/drover",
        ])
        .success()
        .stdout;
    assert_eq!(
        std::fs::read_to_string(&shipped).unwrap(),
        printed,
        "dist/drover-agent.service is stale"
    );
    assert!(printed.contains("KillMode=process") && printed.contains("Restart=always"));

    // A unit for a root of this test, its binary in place: systemd finds nothing wrong.
    std::fs::create_dir_all(cx.root.join("bin")).unwrap();
    let binary = cx.root.join("bin/drover");
    std::fs::copy(crate::common::drover_bin(), &binary).unwrap();
    let unit = cx.path("drover-agent-test.service");
    let text = cx
        .drover(&["host", "unit", "--binary", binary.to_str().unwrap()])
        .success()
        .stdout;
    std::fs::write(&unit, &text).unwrap();
    let verify = |path: &std::path::Path| {
        std::process::Command::new("systemd-analyze")
            .arg("verify")
            .arg(path)
            .output()
            .expect("systemd-analyze (Debian's systemd package)")
    };
    let out = verify(&unit);
    assert!(out.status.success(), "{out:?}");
    // And it would: a unit whose binary is not there fails.
    let broken = cx.path("drover-agent-broken.service");
    std::fs::write(
        &broken,
        text.replace(binary.to_str().unwrap(), "/nonexistent/drover"),
    )
    .unwrap();
    assert!(!verify(&broken).status.success());
}

#[test]
fn an_agent_started_after_it_and_every_app_were_killed_brings_every_app_back() {
    let cx = TestContext::new();
    let mut agent = cx.start_agent();
    for (name, version) in [("one", "1"), ("two", "7")] {
        let dir = cx.named_app(name, name, version, "");
        cx.drover(&["deploy", dir.to_str().unwrap()]).success();
    }
    // As after a power cut: the agent and every app process gone at once.
    agent.kill9();
    crate::common::kill_tagged(&cx.root);
    crate::common::wait_for(
        "every app process gone",
        std::time::Duration::from_secs(10),
        || crate::common::tagged_processes(&cx.root).is_empty(),
    );
    let _agent = cx.start_agent();
    for (name, version) in [("one", "1"), ("two", "7")] {
        crate::common::wait_for(
            &format!("{name} to serve again"),
            std::time::Duration::from_secs(20),
            || {
                let st = cx.app_status(name);
                cx.live_ports(name).into_iter().any(|p| {
                    crate::common::http_get(p, "/")
                        .is_ok_and(|(code, body)| code == 200 && body.contains(version))
                }) && st["state"] != "stopped"
            },
        );
    }
}

#[test]
fn a_worker_is_stopped_with_its_own_signal_and_given_its_own_time() {
    let cx = TestContext::new();
    let _agent = cx.start_agent();
    // Each writes where an app may: its $DROVER_DATA.
    let marks = cx.root.join("apps/hello/data");
    // A worker that finishes its job on USR1 (taking a second), and one that ignores TERM
    // and is killed once its stop_timeout is over.
    let dir = cx.hello_app(
        "app",
        "1",
        "[process.worker]\ncommand = \"sh -c 'trap \\\"sleep 1; echo finished > $DROVER_DATA/worker; exit 0\\\" USR1; while :; do sleep 0.1; done'\"\nstop_signal = \"USR1\"\nstop_timeout = \"10s\"\n\n\
         [process.stubborn]\ncommand = \"sh -c 'trap \\\"echo term >> $DROVER_DATA/stubborn\\\" TERM; while :; do sleep 0.1; done'\"\nstop_timeout = \"1s\"\n",
    );
    cx.drover(&["deploy", dir.to_str().unwrap()]).success();
    let pids = cx.pids("hello");
    assert_eq!(pids.len(), 3, "{}", cx.status());
    cx.drover(&["stop", "hello"]).success();
    crate::common::wait_for(
        "every instance to stop",
        std::time::Duration::from_secs(20),
        || {
            pids.iter()
                .all(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
        },
    );
    // The worker was asked with USR1 and finished its job.
    assert_eq!(
        std::fs::read_to_string(marks.join("worker")).unwrap(),
        "finished\n"
    );
    // The stubborn one got TERM (and was killed after its second).
    assert!(
        std::fs::read_to_string(marks.join("stubborn"))
            .unwrap()
            .contains("term")
    );

    // A signal drover does not know is refused at build, naming the key.
    let bad = cx.hello_app(
        "bad",
        "1",
        "[process.worker]\ncommand = \"true\"\nstop_signal = \"KILL\"\n",
    );
    let run = cx.drover(&["build", bad.to_str().unwrap()]).failure();
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("stop_signal"), "{}", run.stderr);
}

#[test]
fn status_history_and_releases_read_at_a_glance() {
    let cx = TestContext::new();
    let _agent = cx.start_agent_with(&["--gc-keep", "0"]);
    let port = crate::common::free_port();
    for v in ["1", "2"] {
        let dir = cx.hello_app("app", v, &format!("[proxy]\nport = {port}\n"));
        cx.drover(&["deploy", dir.to_str().unwrap()]).success();
        crate::common::http_get(port, "/").unwrap();
    }
    let st = cx.drover(&["status"]).success().stdout;
    // The app's line: its URL and its instances counted in words.
    assert!(
        st.contains(&format!("1 instance  http://127.0.0.1:{port}/")),
        "{st}"
    );
    // A header over the instances, with an uptime each.
    assert!(
        st.contains("INSTANCE") && st.contains("UP") && st.contains("RESTARTS"),
        "{st}"
    );
    let row = st
        .lines()
        .find(|l| l.trim_start().starts_with("web.0"))
        .unwrap();
    assert!(row.contains('s') && row.contains("healthy"), "{row}");
    // Its UP column: seconds (or minutes) since it started.
    assert!(
        row.split_whitespace().any(|w| w.len() > 1
            && w.ends_with(['s', 'm'])
            && w[..w.len() - 1].chars().all(|c| c.is_ascii_digit())),
        "no uptime in {row}"
    );
    // The proxy's releases by version beside their ids; one gc removed is not shown.
    let counted = |st: &str, v: &str| {
        st.lines()
            .any(|l| l.trim_start().starts_with(&format!("{v} (")) && l.contains("1 request"))
    };
    assert!(counted(&st, "1") && counted(&st, "2"), "{st}");
    cx.drover(&["gc", "--keep", "1"]).success();
    let st = cx.drover(&["status"]).success().stdout;
    assert!(
        !st.lines().any(|l| l.trim_start().starts_with("1 (")),
        "{st}"
    );

    // history: a time column, and --json in the table's order (oldest first).
    let h = cx.drover(&["history", "hello"]).success().stdout;
    assert!(h.lines().next().unwrap().contains("TIME"), "{h}");
    let rows: Vec<&str> = h.lines().skip(1).collect();
    assert!(
        rows[0].trim_start().starts_with("1 ") && rows[1].trim_start().starts_with("2 "),
        "{h}"
    );
    assert!(rows[0].contains("Z "), "{h}");
    let j = cx.drover(&["history", "hello", "--json"]).success().json();
    assert_eq!(j[0]["generation"], 1, "{j}");
    assert_eq!(j[1]["generation"], 2, "{j}");
    // releases: when each was stored.
    let r = cx.drover(&["releases"]).success().stdout;
    assert!(r.lines().next().unwrap().contains("STORED"), "{r}");
}

/// As a normal user (nobody when the tests run as root), with an agent of its own: a Node
/// app on a runtime release, its hook, gc, a rollback past gc, stop signals and status.
#[test]
fn as_a_normal_user_a_node_app_on_a_runtime_release_is_deployed_collected_and_read() {
    use std::os::unix::fs::PermissionsExt;
    let node = crate::runtimes::system_node();
    let cx = TestContext::new();
    // Its certificate for the shared TLS port, from a CA made here.
    let ca_dir = cx.path("ca");
    std::fs::create_dir_all(&ca_dir).unwrap();
    let ca = crate::tls::testca::Ca::new(&ca_dir);
    let (cert, key) = ca.issue("node", &["node.test"], crate::tls::testca::KeyKind::Pkcs8);
    let (port, http_port) = (crate::common::free_port(), crate::common::free_port());
    // A runtime: the system's node beside a tool of its own.
    let rt = cx.path("rt");
    std::fs::create_dir_all(rt.join("bin")).unwrap();
    std::fs::write(rt.join("bin/greet"), "#!/bin/sh\necho greet from rt\n").unwrap();
    std::fs::set_permissions(rt.join("bin/greet"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let app = |v: &str| {
        cx.app(
            &format!("node{v}"),
            &format!(
                "[app]\nname = \"nodeapp\"\nversion = \"{v}\"\n\n[depends]\nrt = \"rt@1\"\n\n\
                 [process.web]\ncommand = \"{node} server.js\"\nhttp = true\n\n\
                 [process.worker]\ncommand = \"sh -c 'trap \\\"echo done > $DROVER_DATA/worker; exit 0\\\" USR1; while :; do sleep 0.1; done'\"\nstop_signal = \"USR1\"\n\n\
                 [health]\npath = \"/\"\ntimeout = \"20s\"\n\n\
                 [hooks]\nrelease = \"greet > $DROVER_DATA/hook-{v}\"\n\n\
                 [proxy]\nport = {port}\nhttp_port = {http_port}\nhosts = [\"node.test\"]\n\
                 tls = {{ cert = {cert:?}, key = {key:?} }}\n",
                node = node.display(),
                cert = cert.display().to_string(),
                key = key.display().to_string(),
            ),
            &[(
                "server.js",
                &format!(
                    "require('http').createServer((q, r) => r.end('node ' + process.version + ' v{v}\\n')).listen(process.env.PORT, '127.0.0.1', () => console.log('listening on ' + process.env.PORT));\n"
                ),
            )],
        )
    };
    let (v1, v2) = (app("1"), app("2"));
    std::fs::create_dir(&cx.root).unwrap();
    std::fs::set_permissions(&cx.root, std::fs::Permissions::from_mode(0o700)).unwrap();
    if rustix::process::geteuid().is_root() {
        let status = std::process::Command::new("chown")
            .arg("-R")
            .arg(format!("{n}:{n}", n = crate::common::NOBODY))
            .arg(cx.dir.path())
            .status()
            .unwrap();
        assert!(status.success());
    }
    let drover = |args: &[&str]| {
        crate::common::to_run(
            crate::common::unprivileged(&cx)
                .args(args)
                .output()
                .unwrap(),
        )
    };
    let mut agent = crate::common::unprivileged(&cx)
        .args(["agent", "--gc-keep", "0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct Stop<'a>(&'a TestContext, &'a mut std::process::Child);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            let _ = self.1.kill();
            let _ = self.1.wait();
            crate::common::kill_tagged(&self.0.root);
        }
    }
    let _stop = Stop(&cx, &mut agent);
    crate::common::wait_for("the agent", std::time::Duration::from_secs(20), || {
        drover(&["status", "--json"]).status.success()
    });
    drover(&[
        "import",
        rt.to_str().unwrap(),
        "--name",
        "rt",
        "--version",
        "1",
    ])
    .success();
    for v in [&v1, &v2] {
        drover(&["deploy", v.to_str().unwrap()]).success();
    }
    let all = drover(&["status", "--json"]).success().json();
    let st = all
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["app"] == "nodeapp")
        .unwrap();
    let web = st["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["process"] == "web")
        .unwrap();
    let (code, body) = http_get(web["port"].as_u64().unwrap() as u16, "/").unwrap();
    assert_eq!(code, 200);
    assert!(
        body.starts_with("node v") && body.ends_with(" v2\n"),
        "{body}"
    );
    // Its own user, protected by the trees' mode bits; the hook found the runtime's tool.
    assert!(
        web["protection"]
            .as_str()
            .unwrap()
            .starts_with("mode bits, user "),
        "{web}"
    );
    assert!(web["started"].as_u64().is_some(), "{web}");
    let data = cx.root.join("apps/nodeapp/data");
    assert_eq!(
        std::fs::read_to_string(data.join("hook-2")).unwrap(),
        "greet from rt\n"
    );
    let text = drover(&["status"]).success().stdout;
    assert!(
        text.contains("2 instances") && text.contains("INSTANCE"),
        "{text}"
    );
    // Behind a shared TLS port of an agent that is not root: by host name, over HTTP/2.
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-w",
            "\n%{http_version}",
            "--cacert",
        ])
        .arg(&ca.cert)
        .arg("--resolve")
        .arg(format!("node.test:{port}:127.0.0.1"))
        .arg(format!("https://node.test:{port}/"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(" v2\n") && text.ends_with('2'), "{text}");
    // Its log lines, stamped, found by text and time across both generations.
    let logs = drover(&["logs", "nodeapp", "--since", "1h", "--grep", "listening"])
        .success()
        .stdout;
    let lines: Vec<&str> = logs.lines().collect();
    assert_eq!(lines.len(), 2, "{logs}");
    for (line, g) in lines.iter().zip(["g1", "g2"]) {
        let (at, rest) = drover_wire::time::split_stamp(line);
        assert!(
            at.is_some() && rest.starts_with(&format!("{g} web.0 | listening on ")),
            "{logs}"
        );
    }

    // gc keeps what the newest generation needs (the runtime too), and a rollback past it
    // says gc removed the release.
    drover(&["gc", "--keep", "1"]).success();
    let rel = drover(&["releases", "--json"]).success().json();
    let names: Vec<String> = rel
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{}@{}",
                r["app"].as_str().unwrap(),
                r["version"].as_str().unwrap()
            )
        })
        .collect();
    assert!(
        names.contains(&"rt@1".into()) && names.contains(&"nodeapp@2".into()),
        "{names:?}"
    );
    assert!(!names.contains(&"nodeapp@1".into()), "{names:?}");
    let run = drover(&["rollback", "nodeapp", "--to", "1"]).failure();
    assert!(run.stderr.contains("gc has removed"), "{}", run.stderr);

    // Stopped: the worker is asked with its own signal.
    drover(&["stop", "nodeapp"]).success();
    crate::common::wait_for(
        "the worker's USR1",
        std::time::Duration::from_secs(20),
        || std::fs::read_to_string(data.join("worker")).is_ok_and(|t| t == "done\n"),
    );
}

/// The lines of a running `drover logs -f`, as they come.
struct Follow {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
    taken: Vec<usize>,
}

impl Follow {
    fn start(cx: &TestContext, args: &[&str]) -> Follow {
        let mut child = cx
            .command()
            .arg("logs")
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        Follow {
            child,
            lines,
            seen: Vec::new(),
            taken: Vec::new(),
        }
    }

    /// Waits (up to 20 s) for a line containing `text` that no call returned before (in
    /// whatever order the lines came); returns it.
    fn until(&mut self, text: &str) -> String {
        if let Some(k) =
            (0..self.seen.len()).find(|k| !self.taken.contains(k) && self.seen[*k].contains(text))
        {
            self.taken.push(k);
            return self.seen[k].clone();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(text) {
                        self.taken.push(self.seen.len() - 1);
                        return l;
                    }
                }
                Err(_) => panic!("no line with `{text}` in {:#?}", self.seen),
            }
        }
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn logs_follow_the_app_across_deploys_rollbacks_and_restarts_stamped_since_and_grep() {
    let cx = TestContext::new();
    let _agent = cx.start_agent();
    let talker = "[process.talker]\ncommand = \"sh -c 'echo hello from $DROVER_VERSION; trap \\\"echo bye from $DROVER_VERSION; exit 0\\\" TERM; while :; do sleep 0.1; done'\"\n";
    let v1 = cx.hello_app("v1", "1", talker);
    let v2 = cx.hello_app("v2", "2", talker);
    cx.drover(&["deploy", v1.to_str().unwrap()]).success();
    let mut follow = Follow::start(&cx, &["hello", "-f", "-n", "1", "--grep", "from"]);
    // Every line carries the time it was written, then its generation and process.
    let first = follow.until("hello from 1");
    let (at, rest) = drover_wire::time::split_stamp(&first);
    let now = drover_wire::time::now_ms();
    assert!(at.is_some_and(|t| t <= now && t + 120_000 > now), "{first}");
    assert_eq!(rest, "g1 talker.0 | hello from 1");

    // A deploy: the old instance's last words and the new one's first, in one stream.
    cx.drover(&["deploy", v2.to_str().unwrap()]).success();
    follow.until("g1 talker.0 | bye from 1");
    follow.until("g2 talker.0 | hello from 2");
    let before_rollback = drover_wire::time::now_ms();
    // A rollback, then a restart after a crash: still the same stream.
    cx.drover(&["rollback", "hello"]).success();
    let back = follow.until("hello from 1");
    assert!(back.contains(" g3 talker.0 | "), "{back}");
    let pid = cx.app_status("hello")["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["process"] == "talker")
        .unwrap()["pid"]
        .as_u64()
        .unwrap();
    let _ = std::process::Command::new("kill")
        .args(["-9", "--", &format!("-{pid}")])
        .status();
    let restarted = follow.until("hello from 1");
    // The restarted instance's own first line, written after the rollback's.
    let stamp_of = |l: &str| drover_wire::time::split_stamp(l).0.unwrap();
    assert!(restarted.contains(" g3 talker.0 | "), "{restarted}");
    assert!(
        stamp_of(&restarted) > stamp_of(&back),
        "{back} then {restarted}"
    );
    // --grep held all along: the web process's lines never came.
    assert!(
        follow.seen.iter().all(|l| l.contains("from")),
        "{:#?}",
        follow.seen
    );
    drop(follow);
    // ...though the web instances did write while it followed (their start lines).
    let unfiltered = cx
        .drover(&["logs", "hello", "--since", "1h"])
        .success()
        .stdout;
    assert!(
        unfiltered.contains("g2 web.0 | hello: listening")
            && unfiltered.contains("g3 web.0 | hello: listening"),
        "{unfiltered}"
    );

    // --since: every generation's lines from then on, and nothing before.
    let since = drover_wire::time::stamp(before_rollback);
    let run = cx
        .drover(&["logs", "hello", "--since", &since, "--grep", "from"])
        .success();
    assert!(
        run.stdout.contains("g2 talker.0 | bye from 2"),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("hello from 2"), "{}", run.stdout);
    assert_eq!(run.stdout.matches("g3 talker.0 | hello from 1").count(), 2);
    let run = cx
        .drover(&["logs", "hello", "--since", "1h", "--grep", "bye"])
        .success();
    let byes: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(byes.len(), 2, "{}", run.stdout);
    assert!(byes[0].ends_with("bye from 1") && byes[1].ends_with("bye from 2"));

    // A --since drover cannot read is refused, saying what it takes.
    let run = cx
        .drover(&["logs", "hello", "--since", "yesterday"])
        .failure();
    assert!(
        run.stderr.contains("--since") && run.stderr.contains("10m"),
        "{}",
        run.stderr
    );
}
