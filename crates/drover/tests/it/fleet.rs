//! Fleet deploys over real ssh: every host is a network namespace with its own sshd and
//! drover root (see `hosts.rs`); the controller is the drover binary under test.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::common::{TestContext, noise, wait_for};
use crate::hosts::{Fleet, FleetOptions};

const ONE_BY_ONE: &str = "{ kind = \"rolling\", batch = 1 }";

/// An app directory running the example server behind the proxy on port 8080, deployed to
/// every host of `fleet` as environment `prod`.
fn fleet_app(
    cx: &TestContext,
    fleet: &Fleet,
    version: &str,
    strategy: &str,
    command: &str,
) -> PathBuf {
    let hosts: Vec<String> = fleet
        .hosts
        .iter()
        .map(|h| format!("\"{}\"", h.name))
        .collect();
    let dir = cx.hello_app(
        "app",
        version,
        &format!(
            "[proxy]\nport = 8080\ndrain_timeout = \"1s\"\n\n\
             [ssh]\nconfig = \"{}\"\ntimeout = \"3s\"\n\n\
             [environments.prod]\nhosts = [{}]\nstrategy = {strategy}\n",
            fleet.ssh_config.display(),
            hosts.join(", ")
        ),
    );
    let toml = std::fs::read_to_string(dir.join("drover.toml")).unwrap();
    std::fs::write(
        dir.join("drover.toml"),
        toml.replace("command = \"./hello\"", &format!("command = {command:?}")),
    )
    .unwrap();
    dir
}

/// Adds `text` at the end of the app directory's drover.toml.
fn append_config(dir: &Path, text: &str) {
    let toml = std::fs::read_to_string(dir.join("drover.toml")).unwrap();
    std::fs::write(dir.join("drover.toml"), toml + text).unwrap();
}

/// `drover CMD -e prod --dir DIR --json`, successful.
fn env_json(cx: &TestContext, dir: &Path, cmd: &str) -> serde_json::Value {
    env_ok(cx, dir, &[cmd, "--json"]).json()
}

fn setup(cx: &TestContext, dir: &Path) {
    env_ok(cx, dir, &["host", "setup"]);
}

fn deploy(cx: &TestContext, dir: &Path) -> crate::common::Run {
    cx.drover(&["deploy", dir.to_str().unwrap(), "-e", "prod", "--json"])
}

/// `drover deploy DIR -e prod [--json]`, running in the background.
fn spawn_deploy(cx: &TestContext, dir: &Path, json: bool) -> std::process::Child {
    cx.command()
        .args(["deploy", dir.to_str().unwrap(), "-e", "prod"])
        .args(json.then_some("--json"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// `drover ARGS… -e prod --dir DIR`, successful.
fn env_ok(cx: &TestContext, dir: &Path, args: &[&str]) -> crate::common::Run {
    let mut all = args.to_vec();
    all.extend(["-e", "prod", "--dir", dir.to_str().unwrap()]);
    cx.drover(&all).success()
}

/// When (ms into the deploy) `host` first entered a phase starting with `phase`, from the
/// `--json` progress events of a deploy.
fn event_ms(run: &crate::common::Run, host: &str, phase: &str) -> u64 {
    run.stdout
        .lines()
        .filter(|l| l.starts_with('{') && l.contains("\"phase\""))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|e| e["host"] == host && e["phase"].as_str().unwrap().starts_with(phase))
        .unwrap_or_else(|| panic!("no `{phase}` event for {host}: {}", run.stdout))["elapsed_ms"]
        .as_u64()
        .unwrap()
}

/// `drover deploy DIR -e ENV`, which must fail with every one of `words` in its stderr.
fn deploy_fails_saying(
    cx: &TestContext,
    dir: &Path,
    env: &str,
    words: &[&str],
) -> crate::common::Run {
    let run = cx
        .drover(&["deploy", dir.to_str().unwrap(), "-e", env])
        .failure();
    for w in words {
        assert!(run.stderr.contains(w), "no `{w}` in:\n{}", run.stderr);
    }
    run
}

/// The version host `i` serves on the app's port, if it answers.
fn serving(fleet: &Fleet, i: usize) -> Option<String> {
    let (code, body) = fleet.http_get(i, 8080, "/", Duration::from_secs(2))?;
    if code != 200 {
        return None;
    }
    let v = body.split("(version ").nth(1)?.split(',').next()?;
    Some(v.to_string())
}

fn assert_all_serve(fleet: &Fleet, version: &str) {
    for i in 0..fleet.hosts.len() {
        assert_eq!(
            serving(fleet, i).as_deref(),
            Some(version),
            "{} should serve {version}",
            fleet.hosts[i].name
        );
    }
}

/// Waits until host `i`'s agent has written a generation of hello at `version` (it is
/// starting it).
fn wait_starting(fleet: &Fleet, i: usize, version: &str) {
    let gens = fleet.hosts[i].root.join("apps/hello/gens");
    let what = format!("{} to start {version}", fleet.hosts[i].name);
    wait_for(&what, Duration::from_secs(60), || {
        std::fs::read_dir(&gens).unwrap().flatten().any(|e| {
            std::fs::read_to_string(e.path())
                .is_ok_and(|t| t.contains(&format!("\"version\": \"{version}\"")))
        })
    });
}

/// The final JSON report of a fleet deploy (the last line of stdout).
fn report(run: &crate::common::Run) -> serde_json::Value {
    let start = run.stdout.rfind("\n{\n").map(|i| i + 1).unwrap_or(0);
    serde_json::from_str(&run.stdout[start..])
        .unwrap_or_else(|e| panic!("no report ({e}):\n{}\n{}", run.stdout, run.stderr))
}

#[test]
fn rolling_deploy_to_four_hosts_keeps_three_serving_and_sends_only_changed_chunks() {
    let fleet = Fleet::new(4);
    let cx = TestContext::new();
    let dir = fleet_app(&cx, &fleet, "1.0", ONE_BY_ONE, "./hello");
    // 4 MiB of data that does not compress: what v2 must not send again.
    std::fs::write(dir.join("assets.bin"), noise(11, 4 << 20)).unwrap();
    setup(&cx, &dir);

    let before: Vec<u64> = (0..4).map(|i| fleet.wire_bytes(i)).collect();
    let r1 = report(&deploy(&cx, &dir).success());
    let v1_wire: Vec<u64> = (0..4).map(|i| fleet.wire_bytes(i) - before[i]).collect();
    assert_all_serve(&fleet, "1.0");
    assert!(r1["ok"].as_bool().unwrap());

    // v2: a new version and one small changed file.
    let dir = fleet_app(&cx, &fleet, "2.0", ONE_BY_ONE, "./hello");
    std::fs::write(dir.join("CHANGELOG"), "2.0: faster\n").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let fleet = Arc::new(fleet);
    let poller = {
        let (stop, fleet) = (stop.clone(), fleet.clone());
        std::thread::spawn(move || {
            let mut rounds = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let up = (0..4).filter(|&i| serving(&fleet, i).is_some()).count();
                rounds.push(up);
                std::thread::sleep(Duration::from_millis(10));
            }
            rounds
        })
    };
    let before: Vec<u64> = (0..4).map(|i| fleet.wire_bytes(i)).collect();
    let run = deploy(&cx, &dir).success();
    let v2_wire: Vec<u64> = (0..4).map(|i| fleet.wire_bytes(i) - before[i]).collect();
    stop.store(true, Ordering::Relaxed);
    let rounds = poller.join().unwrap();
    assert!(rounds.len() > 20, "polled only {} times", rounds.len());
    let least = rounds.iter().min().copied().unwrap();
    assert!(
        least >= 3,
        "only {least} hosts served at one moment: {rounds:?}"
    );
    assert_all_serve(&fleet, "2.0");

    // Batches of one: each host starts switching only once the one before is live.
    for (a, b) in [("h1", "h2"), ("h2", "h3"), ("h3", "h4")] {
        assert!(
            event_ms(&run, b, "switching") >= event_ms(&run, a, "live"),
            "{b} switched before {a} was live: {}",
            run.stdout
        );
    }
    let r2 = report(&run);
    for (i, h) in r2["hosts"].as_array().unwrap().iter().enumerate() {
        assert_eq!(h["state"], "live", "{h}");
        let sent_v1 = r1["hosts"][i]["bytes_sent"].as_u64().unwrap();
        let sent_v2 = h["bytes_sent"].as_u64().unwrap();
        assert!(sent_v1 > 4 << 20, "v1 sends the assets: {sent_v1}");
        assert!(
            sent_v2 < 512 << 10,
            "v2 sent {sent_v2} bytes to {}",
            h["host"]
        );
        // On the wire (ssh, TCP and all), measured at the host's interface.
        assert!(v1_wire[i] > 4 << 20, "{v1_wire:?}");
        assert!(v2_wire[i] < v1_wire[i] / 4, "v1 {v1_wire:?} v2 {v2_wire:?}");
    }

    // Every host's audit log has both deploys; history -e merges them.
    let hist = env_json(&cx, &dir, "history");
    let entries = hist.as_array().unwrap();
    assert_eq!(entries.len(), 8, "{hist:#}");
    for h in &fleet.hosts {
        let mine: Vec<_> = entries
            .iter()
            .filter(|e| e["host"] == h.name.as_str())
            .collect();
        assert_eq!(mine.len(), 2);
        assert_eq!(mine[0]["version"], "2.0");
        assert_eq!(mine[0]["outcome"], "ok");
    }
    let status = env_json(&cx, &dir, "status");
    for h in status.as_array().unwrap() {
        assert_eq!(h["result"][0]["version"], "2.0", "{h}");
    }

    // The whole environment back to v1 at once, and the audit logs say so.
    env_ok(&cx, &dir, &["rollback"]);
    assert_all_serve(&fleet, "1.0");
    let hist = env_json(&cx, &dir, "history");
    assert_eq!(hist[0]["action"], "rollback", "{hist:#}");
    assert_eq!(hist[0]["outcome"], "ok", "{hist:#}");

    // Canary: one host first; only once it is live (and a pause) do the other three switch.
    let dir = fleet_app(
        &cx,
        &fleet,
        "3.0",
        "{ kind = \"canary\", hosts = 1, pause = \"1s\" }",
        "./hello",
    );
    let run = deploy(&cx, &dir).success();
    let canary_live = event_ms(&run, "h1", "live");
    for h in ["h2", "h3", "h4"] {
        assert!(
            event_ms(&run, h, "switching") >= canary_live + 1000,
            "{h} switched before the canary was live and the pause over: {}",
            run.stdout
        );
    }
    assert_all_serve(&fleet, "3.0");
}

#[test]
fn a_host_failing_its_health_check_returns_every_host_to_v1() {
    let fleet = Fleet::new(3);
    let cx = TestContext::new();
    let dir = fleet_app(&cx, &fleet, "1.0", ONE_BY_ONE, "./hello");
    setup(&cx, &dir);
    deploy(&cx, &dir).success();
    assert_all_serve(&fleet, "1.0");

    // v2 runs everywhere, but its health check fails on h2 only (a marker in its root).
    std::fs::write(fleet.hosts[1].root.join("break-v2"), "").unwrap();
    let dir = fleet_app(&cx, &fleet, "2.0", ONE_BY_ONE, "./hello");
    let toml = std::fs::read_to_string(dir.join("drover.toml")).unwrap();
    let health = "[health]\npath = \"/up\"\ntimeout = \"10s\"\n";
    assert!(toml.contains(health));
    std::fs::write(
        dir.join("drover.toml"),
        toml.replace(
            health,
            // Run in the release tree, ROOT/store/trees/ID: the marker is in ROOT.
            "[health]\ncommand = \"test ! -e ../../../break-v2\"\ntimeout = \"3s\"\n",
        ),
    )
    .unwrap();
    let run = deploy(&cx, &dir).failure();
    // Failed, and every host back on (or never off) its previous generation.
    assert_eq!(run.status.code(), Some(3), "{}", run.stderr);
    let r = report(&run);
    assert_eq!(r["ok"], false);
    assert_eq!(r["hosts"][0]["state"], "reverted", "{r:#}");
    assert_eq!(r["hosts"][1]["state"], "failed", "{r:#}");
    assert_eq!(r["hosts"][2]["state"], "unchanged", "{r:#}");
    let why = r["hosts"][1]["error"].as_str().unwrap();
    assert!(
        why.starts_with("h2:") && why.contains("health command"),
        "{why}"
    );
    assert!(run.stderr.contains("h2"), "{}", run.stderr);
    assert_all_serve(&fleet, "1.0");

    // The same, read by a person: a summary line per host.
    let run = cx
        .drover(&["deploy", dir.to_str().unwrap(), "-e", "prod"])
        .failure();
    assert!(
        run.stdout.contains("h1  reverted to generation"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("h2  failed: h2:"), "{}", run.stdout);
    assert!(run.stdout.contains("h3  unchanged"), "{}", run.stdout);
    assert!(run.stderr.contains("batch 2 of 3 failed"), "{}", run.stderr);
    assert_all_serve(&fleet, "1.0");

    // --keep-partial leaves h1 on v2, and says so.
    let run = cx
        .drover(&[
            "deploy",
            dir.to_str().unwrap(),
            "-e",
            "prod",
            "--keep-partial",
        ])
        .failure();
    assert!(run.stderr.contains("--keep-partial"), "{}", run.stderr);
    assert_eq!(run.status.code(), Some(4), "hosts left on the new release");
    assert!(run.stdout.contains("LEFT on hello@2.0"), "{}", run.stdout);
    assert_eq!(serving(&fleet, 0).as_deref(), Some("2.0"));
    assert_eq!(serving(&fleet, 1).as_deref(), Some("1.0"));
}

#[test]
fn a_host_cut_off_mid_transfer_or_mid_switch_ends_all_or_back_within_the_timeouts() {
    let fleet = Fleet::new(3);
    let cx = TestContext::new();
    let strategy = ONE_BY_ONE;
    let dir = fleet_app(&cx, &fleet, "1.0", strategy, "./hello");
    setup(&cx, &dir);
    deploy(&cx, &dir).success();

    // Mid-transfer: h3's link is slowed, then cut while its chunks travel.
    let dir = fleet_app(&cx, &fleet, "2.0", strategy, "./hello");
    std::fs::write(dir.join("big.bin"), noise(5, 24 << 20)).unwrap();
    let veth = fleet.hosts[2].veth.clone();
    let tc = |args: &str| {
        let st = std::process::Command::new("tc")
            .args(args.split_whitespace())
            .status()
            .unwrap();
        assert!(st.success(), "tc {args}");
    };
    tc(&format!(
        "qdisc add dev {veth} root tbf rate 40mbit burst 64kb latency 400ms"
    ));
    let start_bytes = fleet.wire_bytes(2);
    let started = Instant::now();
    let child = spawn_deploy(&cx, &dir, true);
    wait_for("h3's transfer to start", Duration::from_secs(60), || {
        fleet.wire_bytes(2) > start_bytes + (4 << 20)
    });
    fleet.cut(2);
    let run = crate::common::to_run(child.wait_with_output().unwrap());
    let took = started.elapsed();
    assert!(!run.status.success());
    assert!(took < Duration::from_secs(45), "took {took:?}");
    assert_eq!(run.status.code(), Some(3), "no host switched");
    let r = report(&run);
    assert_eq!(r["hosts"][2]["state"], "failed", "{r:#}");
    let full = r["hosts"][0]["bytes_sent"].as_u64().unwrap();
    assert!(
        run.stderr.contains("no host was switched"),
        "{}",
        run.stderr
    );
    // h3 could not be told to give the lock back: that is said, with the way out.
    assert!(
        run.stderr.contains("still held on h3")
            && run.stderr.contains("drover lock release -e prod"),
        "{}",
        run.stderr
    );
    fleet.restore(2);
    tc(&format!("qdisc del dev {veth} root"));
    assert_all_serve(&fleet, "1.0");
    env_ok(&cx, &dir, &["lock", "release"]);

    // The next attempt resumes: h3 is sent only what it still lacks.
    let r = report(&deploy(&cx, &dir).success());
    let resumed = r["hosts"][2]["bytes_sent"].as_u64().unwrap();
    assert!(full > 24 << 20, "{r:#}");
    assert!(resumed < full - (2 << 20), "resumed {resumed} of {full}");
    assert_all_serve(&fleet, "2.0");

    // Mid-switch: v3 takes 4 s to start on h2; h2 is cut off while it starts. h1 goes back
    // at once; h2, never confirmed, returns to v2 by itself.
    std::fs::write(fleet.hosts[1].root.join("slow-v3"), "").unwrap();
    let dir = fleet_app(
        &cx,
        &fleet,
        "3.0",
        strategy,
        "sh -c 'test -e \"$DROVER_AGENT_ROOT/slow-v3\" && sleep 4; exec ./hello'",
    );
    let started = Instant::now();
    let child = spawn_deploy(&cx, &dir, true);
    // Cut as soon as h2's agent has written the new generation: it is starting v3.
    wait_starting(&fleet, 1, "3.0");
    assert_eq!(serving(&fleet, 0).as_deref(), Some("3.0"));
    fleet.cut(1);
    let run = crate::common::to_run(child.wait_with_output().unwrap());
    assert!(!run.status.success());
    assert!(started.elapsed() < Duration::from_secs(45));
    assert_eq!(run.status.code(), Some(4), "h2's state is unknown");
    let r = report(&run);
    assert_eq!(r["hosts"][0]["state"], "reverted", "{r:#}");
    assert_eq!(r["hosts"][1]["state"], "unreachable", "{r:#}");
    assert_eq!(r["hosts"][2]["state"], "unchanged", "{r:#}");
    assert_eq!(serving(&fleet, 0).as_deref(), Some("2.0"));
    fleet.restore(1);
    env_ok(&cx, &dir, &["lock", "release"]);
    wait_for(
        "h2 to return to 2.0 by itself",
        Duration::from_secs(30),
        || serving(&fleet, 1).as_deref() == Some("2.0"),
    );
    assert_all_serve(&fleet, "2.0");
    let audit = std::fs::read_to_string(fleet.hosts[1].root.join("audit.jsonl")).unwrap();
    assert!(audit.contains("auto-revert"), "{audit}");
}

#[test]
fn two_deploys_at_once_the_second_fails_fast_naming_the_lock_holder() {
    let fleet = Fleet::new(2);
    let cx = TestContext::new();
    let dir = fleet_app(
        &cx,
        &fleet,
        "1.0",
        "\"all-at-once\"",
        "sh -c 'sleep 3; exec ./hello'",
    );
    // A bad strategy is refused before anything happens, naming the key.
    let run = cx
        .drover(&["deploy", dir.to_str().unwrap(), "-e", "prod"])
        .failure();
    assert!(run.stderr.contains("strategy"), "{}", run.stderr);
    assert_eq!(run.status.code(), Some(2), "bad input");
    let dir = fleet_app(
        &cx,
        &fleet,
        "1.0",
        "{ kind = \"all-at-once\" }",
        "sh -c 'sleep 3; exec ./hello'",
    );
    setup(&cx, &dir);
    let first = spawn_deploy(&cx, &dir, false);
    let lock = fleet.hosts[1].root.join("locks/prod.json");
    wait_for(
        "the first deploy to hold the lock",
        Duration::from_secs(30),
        || lock.exists(),
    );
    let t = Instant::now();
    let second = cx
        .drover(&["deploy", dir.to_str().unwrap(), "-e", "prod"])
        .failure();
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert_eq!(second.status.code(), Some(5), "locked by another holder");
    assert!(
        second.stderr.contains("is locked on h1") && second.stderr.contains("deploy of hello@1.0"),
        "{}",
        second.stderr
    );
    assert!(
        second.stderr.contains("drover lock release -e prod"),
        "{}",
        second.stderr
    );
    let first = crate::common::to_run(first.wait_with_output().unwrap()).success();
    assert!(
        first.stdout.contains("live on all 2 hosts"),
        "{}",
        first.stdout
    );
    assert!(!lock.exists(), "the lock is given back");
    let st = env_ok(&cx, &dir, &["lock", "status"]);
    assert_eq!(st.stdout.matches("free").count(), 2, "{}", st.stdout);

    // max_unavailable: with h2's app stopped, a batch of one more would make two down.
    let h2 = &fleet.hosts[1].root;
    let mut stop = cx.command();
    stop.env("DROVER_ROOT", h2).args(["stop", "hello"]);
    assert!(stop.status().unwrap().success());
    let dir = fleet_app(
        &cx,
        &fleet,
        "2.0",
        "{ kind = \"rolling\", batch = 1, max_unavailable = 1 }",
        "./hello",
    );
    let run = cx
        .drover(&["deploy", dir.to_str().unwrap(), "-e", "prod"])
        .failure();
    assert!(
        run.stderr
            .contains("batch 1 of 2 not started: 1 hosts are unavailable (h2)"),
        "{}",
        run.stderr
    );
    assert_eq!(serving(&fleet, 0).as_deref(), Some("1.0"));
}

#[test]
fn a_lock_held_with_a_message_holds_deploys_off_and_a_deploy_can_wait_for_it() {
    let fleet = Fleet::new(1);
    let cx = TestContext::new();
    let dir = fleet_app(&cx, &fleet, "1.0", ONE_BY_ONE, "./hello");
    setup(&cx, &dir);
    let run = env_ok(&cx, &dir, &["lock", "acquire", "-m", "release freeze"]);
    assert!(
        run.stderr.contains("holding the lock of `prod`"),
        "{}",
        run.stderr
    );
    let st = env_ok(&cx, &dir, &["lock", "status"]);
    assert!(st.stdout.contains("\"release freeze\""), "{}", st.stdout);
    // A deploy fails at once, saying why the lock is held.
    let run = cx
        .drover(&["deploy", dir.to_str().unwrap(), "-e", "prod"])
        .failure();
    assert_eq!(run.status.code(), Some(5), "{}", run.stderr);
    assert!(run.stderr.contains("\"release freeze\""), "{}", run.stderr);

    // With --lock-wait it waits, and deploys once the lock is given back.
    let said = cx.path("waiting.err");
    let waiting = cx
        .command()
        .args([
            "deploy",
            dir.to_str().unwrap(),
            "-e",
            "prod",
            "--lock-wait",
            "60s",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&said).unwrap())
        .spawn()
        .unwrap();
    wait_for(
        "the deploy to wait for the lock",
        Duration::from_secs(30),
        || std::fs::read_to_string(&said).is_ok_and(|t| t.contains("waiting for the lock")),
    );
    env_ok(&cx, &dir, &["lock", "release"]);
    let out = waiting.wait_with_output().unwrap();
    let text = std::fs::read_to_string(&said).unwrap();
    assert!(out.status.success(), "{text}");
    assert_eq!(serving(&fleet, 0).as_deref(), Some("1.0"));
    let st = env_ok(&cx, &dir, &["lock", "status"]);
    assert!(st.stdout.contains("free"), "{}", st.stdout);

    // gc on every host of the environment.
    let run = env_ok(&cx, &dir, &["gc", "--keep", "1", "--dry-run"]);
    assert!(
        run.stdout
            .contains("h1  0 releases would go (--keep 1); nothing was removed"),
        "{}",
        run.stdout
    );
}

#[test]
fn ssh_and_install_problems_are_named_per_host() {
    let fleet = Fleet::with(FleetOptions {
        hosts: 3,
        unknown_key: vec![1],
        refuse_login: vec![2],
    });
    let cx = TestContext::new();
    let dir = fleet_app(&cx, &fleet, "1.0", "{ kind = \"all-at-once\" }", "./hello");
    let dir_str = dir.to_str().unwrap();
    let toml = std::fs::read_to_string(dir.join("drover.toml")).unwrap();
    std::fs::write(
        dir.join("drover.toml"),
        toml + "\n[environments.one]\nhosts = [\"h1\"]\n",
    )
    .unwrap();
    let before = fleet
        .hosts
        .iter()
        .map(|h| h.root.exists() && std::fs::read_dir(&h.root).unwrap().count() > 0)
        .collect::<Vec<_>>();

    let run = cx.drover(&["deploy", dir_str, "-e", "prod"]).failure();
    assert!(
        run.stderr.contains("h2: unknown or changed host key"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("h3: login refused"), "{}", run.stderr);
    assert!(!run.stderr.contains("h1: unreachable"), "{}", run.stderr);

    deploy_fails_saying(
        &cx,
        &dir,
        "one",
        &["h1: drover is not installed there", "drover host setup h1"],
    );
    let after = fleet
        .hosts
        .iter()
        .map(|h| h.root.exists() && std::fs::read_dir(&h.root).unwrap().count() > 0)
        .collect::<Vec<_>>();
    assert_eq!(before, after, "nothing was written on any host");

    // Set up, then a host whose drover differs is named, with the fix.
    cx.drover(&["host", "setup", "-e", "one", "--dir", dir_str])
        .success();
    let bin = fleet.hosts[0].root.join("bin/drover");
    let mut bytes = std::fs::read(&bin).unwrap();
    bytes.extend_from_slice(b"\0another build");
    // Replaced as an upgrade would (the running agent keeps the old file open).
    std::fs::write(bin.with_extension("other"), bytes).unwrap();
    std::fs::set_permissions(
        bin.with_extension("other"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::rename(bin.with_extension("other"), &bin).unwrap();
    deploy_fails_saying(
        &cx,
        &dir,
        "one",
        &["h1: runs drover", "drover host setup h1"],
    );
    let run = cx
        .drover(&["host", "setup", "-e", "one", "--dir", dir_str])
        .success();
    assert!(run.stdout.contains("replaced drover"), "{}", run.stdout);

    // A host that no longer trusts the deployer's key refuses the release: the deploy says
    // so, names the host and the fix, and still gives the lock back there (the refusal
    // ends that host's session; the lock is released over a new one).
    let trusted = fleet.hosts[0].root.join("keys/trusted");
    let keys: Vec<_> = std::fs::read_dir(&trusted)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(!keys.is_empty());
    for k in &keys {
        std::fs::rename(k, k.with_extension("off")).unwrap();
    }
    deploy_fails_saying(
        &cx,
        &dir,
        "one",
        &[
            "h1: ",
            "which this store does not trust",
            "hint: `drover host setup h1` trusts",
        ],
    );
    let locks = cx
        .drover(&["lock", "status", "-e", "one", "--dir", dir_str])
        .success();
    assert!(locks.stdout.contains("h1  free"), "{}", locks.stdout);
    for k in &keys {
        std::fs::rename(k.with_extension("off"), k).unwrap();
    }
    let run = cx.drover(&["deploy", dir_str, "-e", "one"]).success();
    assert!(run.stdout.contains("live on all 1 hosts"), "{}", run.stdout);
}

#[test]
fn roles_choose_each_hosts_processes_and_config_layer() {
    let fleet = Fleet::new(2);
    let cx = TestContext::new();
    let dir = fleet_app(&cx, &fleet, "1.0", "{ kind = \"all-at-once\" }", "./hello");
    append_config(
        &dir,
        "\n[process.worker]\ncommand = \"sh -c 'echo working as $ROLE_NAME; exec sleep 600'\"\n\n\
                [environments.prod.roles.web]\nhosts = [\"h1\"]\nprocesses = [\"web\"]\nenv = { ROLE_NAME = \"web\" }\n\n\
                [environments.prod.roles.jobs]\nhosts = [\"h2\"]\nprocesses = [\"worker\"]\nenv = { ROLE_NAME = \"jobs\" }\n",
    );
    setup(&cx, &dir);
    deploy(&cx, &dir).success();
    let status = env_json(&cx, &dir, "status");
    let procs = |i: usize| -> Vec<String> {
        status[i]["result"][0]["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["process"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(procs(0), ["web"], "{status:#}");
    assert_eq!(procs(1), ["worker"], "{status:#}");
    assert_eq!(serving(&fleet, 0).as_deref(), Some("1.0"));
    let logs = env_ok(&cx, &dir, &["logs", "hello", "-n", "5"]);
    assert!(
        logs.stdout.contains("h2 | ") && logs.stdout.contains("working as jobs"),
        "{}",
        logs.stdout
    );

    // A role naming a process the app does not have is refused before anything moves.
    let toml = std::fs::read_to_string(dir.join("drover.toml")).unwrap();
    std::fs::write(
        dir.join("drover.toml"),
        toml.replace("processes = [\"worker\"]", "processes = [\"wrker\"]"),
    )
    .unwrap();
    let run = cx
        .drover(&["deploy", dir.to_str().unwrap(), "-e", "prod"])
        .failure();
    assert!(
        run.stderr
            .contains("environments.prod.roles.jobs.processes")
            && run.stderr.contains("[process.wrker]"),
        "{}",
        run.stderr
    );
}

/// How many `drover remote relay` processes connect to `ip` right now.
fn relays_to(ip: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|cmdline| {
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.windows(3)
                .any(|w| w[0] == b"remote" && w[1] == b"relay" && w[2] == ip.as_bytes())
        })
        .count()
}

#[test]
fn ssh_connects_through_drovers_relay_unless_the_ssh_config_says_how() {
    let fleet = Fleet::new(1);
    let cx = TestContext::new();
    let dir = fleet_app(&cx, &fleet, "1.0", "{ kind = \"all-at-once\" }", "./hello");
    let ip = fleet.hosts[0].ip.clone();
    // Persistent masters (the default, said here because the test depends on it: ssh then
    // drops a ProxyCommand's stderr).
    let toml = std::fs::read_to_string(dir.join("drover.toml"))
        .unwrap()
        .replace("[ssh]\n", "[ssh]\npersist = \"60s\"\n");
    std::fs::write(dir.join("drover.toml"), &toml).unwrap();

    // By default drover opens the TCP connection and relays it to ssh; the relay lives as
    // long as the (persistent) master connection, and everything goes through it.
    let before = relays_to(&ip);
    setup(&cx, &dir);
    assert_eq!(relays_to(&ip), before + 1, "one relay under the new master");
    let run = deploy(&cx, &dir).success();
    assert_eq!(report(&run)["hosts"][0]["state"], "live", "{}", run.stdout);
    assert_eq!(serving(&fleet, 0).as_deref(), Some("1.0"));

    // A host that cannot be reached is named as such, with the relay's words (ssh drops a
    // ProxyCommand's stderr once ControlPersist is on: the relay writes to the master's log).
    std::fs::write(
        dir.join("drover.toml"),
        toml.clone() + "\n[environments.closed]\nhosts = [\"h1:1\"]\n",
    )
    .unwrap();
    let since = std::time::SystemTime::now() - Duration::from_secs(1);
    deploy_fails_saying(
        &cx,
        &dir,
        "closed",
        &["h1:1: unreachable", "Connection refused"],
    );
    // And those words came from the relay: ssh itself says them too when it connects on its
    // own, but only through a ProxyCommand does it then get as far as the banner exchange.
    let through_relay = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("drover-ssh-"))
        .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
        // This run's logs, not an earlier one's.
        .filter(|log| {
            log.metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t >= since)
        })
        .filter_map(|log| std::fs::read_to_string(log.path()).ok())
        .any(|log| {
            log.contains(&format!("connect to host {ip} port 1: Connection refused"))
                && log.contains("kex_exchange_identification")
        });
    assert!(
        through_relay,
        "the relay made the connection and wrote why it failed"
    );

    // A ProxyCommand in the user's ssh config file is what ssh runs, not the relay.
    let mark = cx.path("proxy-used");
    let config = std::fs::read_to_string(&fleet.ssh_config)
        .unwrap()
        .replacen(
            "Host h1\n",
            &format!(
                "Host h1\n    ProxyCommand sh -c 'echo used >> {}; exec {} remote relay %h %p'\n",
                mark.display(),
                crate::common::drover_bin().display()
            ),
            1,
        );
    let proxied = cx.path("ssh_config_proxied");
    std::fs::write(&proxied, config).unwrap();
    std::fs::write(
        dir.join("drover.toml"),
        toml.replace(
            &format!("config = \"{}\"", fleet.ssh_config.display()),
            &format!("config = \"{}\"", proxied.display()),
        ),
    )
    .unwrap();
    let status = env_json(&cx, &dir, "status");
    assert!(status.to_string().contains("\"h1\""), "{status}");
    assert_eq!(
        std::fs::read_to_string(&mark).unwrap_or_default().trim(),
        "used",
        "the user's ProxyCommand ran"
    );

    // `relay = false`: ssh connects by itself.
    std::fs::write(
        dir.join("drover.toml"),
        toml.replace("[ssh]\n", "[ssh]\nrelay = false\n"),
    )
    .unwrap();
    let before = relays_to(&ip);
    let status = env_json(&cx, &dir, "status");
    assert!(status.to_string().contains("\"h1\""), "{status}");
    assert_eq!(relays_to(&ip), before, "no relay for a new master");
}

/// How many `drover remote serve` sessions run on host `i`.
fn serve_sessions(fleet: &Fleet, i: usize) -> usize {
    fleet
        .processes(i)
        .iter()
        .filter(|c| c.contains("drover") && c.contains(" remote serve"))
        .count()
}

/// Waits until host `i` runs exactly one generation of hello, that of `version`, and
/// serves it: every instance the agent has is of the live generation, and HTTP answers with
/// its version.
fn settles_on(cx: &TestContext, fleet: &Fleet, i: usize, version: &str) {
    let root = &fleet.hosts[i].root;
    let mut last = String::new();
    let one = |last: &mut String| {
        let out = cx
            .command()
            .env("DROVER_ROOT", root)
            .args(["status", "--json"])
            .output()
            .unwrap();
        *last = String::from_utf8_lossy(&out.stdout).into_owned();
        let Ok(apps) = serde_json::from_slice::<Vec<drover_wire::AppStatus>>(&out.stdout) else {
            return false;
        };
        let Some(app) = apps.iter().find(|a| a.app == "hello") else {
            return false;
        };
        app.version.as_deref() == Some(version)
            && !app.instances.is_empty()
            && app
                .instances
                .iter()
                .all(|x| Some(x.generation) == app.generation && x.healthy)
            && serving(fleet, i).as_deref() == Some(version)
    };
    let start = Instant::now();
    while !one(&mut last) {
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "{} never settled on {version} alone; its status:\n{last}",
            fleet.hosts[i].name
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `lock status --json`: the holder on each host (`None`: free).
fn lock_holders(cx: &TestContext, dir: &Path) -> Vec<Option<String>> {
    let st = env_ok(cx, dir, &["lock", "status", "--json"]).json();
    st.as_array()
        .unwrap_or_else(|| panic!("{st:#}"))
        .iter()
        .map(|h| h["result"]["holder"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn a_hosts_serve_session_ends_within_the_timeout_once_its_link_is_gone() {
    let fleet = Fleet::new(1);
    let cx = TestContext::new();
    let dir = fleet_app(&cx, &fleet, "1.0", ONE_BY_ONE, "./hello");
    setup(&cx, &dir);
    deploy(&cx, &dir).success();

    // v2 takes 4 s to start: h1 is cut off while it starts, its serve session waiting for
    // the deployer's next line.
    let slow = fleet.hosts[0].root.join("slow-v2");
    std::fs::write(&slow, "").unwrap();
    let dir = fleet_app(
        &cx,
        &fleet,
        "2.0",
        ONE_BY_ONE,
        "sh -c 'test -e \"$DROVER_AGENT_ROOT/slow-v2\" && sleep 4; exec ./hello'",
    );
    let child = spawn_deploy(&cx, &dir, true);
    wait_starting(&fleet, 0, "2.0");
    assert_eq!(serve_sessions(&fleet, 0), 1, "{:#?}", fleet.processes(0));
    fleet.cut(0);
    // [ssh] timeout is 3 s: the session takes the deployer for gone soon after.
    wait_for(
        "h1's `drover remote serve` to end",
        Duration::from_secs(3 + 5),
        || serve_sessions(&fleet, 0) == 0,
    );
    let run = crate::common::to_run(child.wait_with_output().unwrap());
    assert!(!run.status.success());
    assert_eq!(report(&run)["hosts"][0]["state"], "unreachable");
    fleet.restore(0);

    // The deploy was never confirmed: h1 is back on 1.0; the lock it could not give back
    // is shown, and released; the next deploy goes through.
    settles_on(&cx, &fleet, 0, "1.0");
    let holders = lock_holders(&cx, &dir);
    assert!(
        holders[0]
            .as_ref()
            .is_some_and(|h| h.contains("deploy of hello@2.0")),
        "{holders:?}"
    );
    env_ok(&cx, &dir, &["lock", "release"]);
    assert_eq!(lock_holders(&cx, &dir), vec![None]);
    std::fs::remove_file(&slow).unwrap();
    deploy(&cx, &dir).success();
    assert_all_serve(&fleet, "2.0");
}

/// A fleet deploy of 2.0 to two hosts on 1.0, one at a time, killed at crash point `point`
/// of the fleet's confirm, in the deployer or (`on_host`) in h1's serve session, once h1 is
/// live. h1 ends on `h1_ends_on` alone and serves it, h2 on 1.0; the lock shows and can be
/// released; the deploy, run again, succeeds.
fn killed_at_the_confirm(point: &str, on_host: bool, h1_ends_on: &str) {
    use std::os::unix::process::ExitStatusExt;
    let fleet = Fleet::new(2);
    let cx = TestContext::new();
    let dir = fleet_app(&cx, &fleet, "1.0", ONE_BY_ONE, "./hello");
    setup(&cx, &dir);
    deploy(&cx, &dir).success();

    let dir = fleet_app(&cx, &fleet, "2.0", ONE_BY_ONE, "./hello");
    let mut cmd = cx.command();
    cmd.args(["deploy", dir.to_str().unwrap(), "-e", "prod"]);
    if on_host {
        // The hosts' sshd accepts DROVER_FAILPOINT: the serve sessions get it.
        let toml = std::fs::read_to_string(dir.join("drover.toml")).unwrap();
        std::fs::write(
            dir.join("drover.toml"),
            toml.replace(
                "timeout = \"3s\"\n",
                &format!("timeout = \"3s\"\noptions = [\"SetEnv=DROVER_FAILPOINT={point}\"]\n"),
            ),
        )
        .unwrap();
    } else {
        cmd.env("DROVER_FAILPOINT", point);
    }
    let run = crate::common::to_run(cmd.output().unwrap());
    let said = format!("{}\n{}", run.stdout, run.stderr);
    if on_host {
        // The deployer lives on, and names what ended h1's session. h1 never went live
        // for it (unconfirmed, it goes back by itself) and no other host switched: exit 3.
        assert_eq!(run.status.code(), Some(3), "{said}");
        assert!(
            run.stderr
                .contains(&format!("h1: drover: crash point {point}")),
            "{said}"
        );
    } else {
        assert_eq!(run.status.signal(), Some(9), "{said}");
        assert!(
            run.stderr.contains(&format!("crash point {point}")),
            "{said}"
        );
    }

    settles_on(&cx, &fleet, 0, h1_ends_on);
    settles_on(&cx, &fleet, 1, "1.0");
    let audit = std::fs::read_to_string(fleet.hosts[0].root.join("audit.jsonl")).unwrap();
    assert_eq!(
        audit.contains("auto-revert"),
        h1_ends_on == "1.0",
        "{audit}"
    );
    // A killed deployer leaves its lock on every host; a deployer that lives gives it back.
    let dir = fleet_app(&cx, &fleet, "2.0", ONE_BY_ONE, "./hello");
    let holders = lock_holders(&cx, &dir);
    for h in &holders {
        assert_eq!(
            h.as_ref()
                .is_some_and(|h| h.contains("deploy of hello@2.0")),
            !on_host,
            "{holders:?}"
        );
    }
    env_ok(&cx, &dir, &["lock", "release"]);
    assert_eq!(lock_holders(&cx, &dir), vec![None, None]);
    deploy(&cx, &dir).success();
    assert_all_serve(&fleet, "2.0");
}

#[test]
fn a_deployer_killed_before_it_confirms_leaves_every_host_on_the_old_generation() {
    killed_at_the_confirm("fleet.confirm-before-send", false, "1.0");
}

#[test]
fn a_deployer_killed_once_it_confirmed_leaves_that_host_on_the_new_generation() {
    killed_at_the_confirm("fleet.confirm-after-send", false, "2.0");
}

#[test]
fn a_serve_session_killed_with_the_confirm_unpassed_returns_its_host_to_the_old_generation() {
    killed_at_the_confirm("serve.confirm-received", true, "1.0");
}

/// `drover run APP -e prod ARGS… -- CMD` in the app directory: its output and exit.
fn run_on(cx: &TestContext, dir: &Path, args: &[&str], input: &[u8]) -> crate::common::Run {
    use std::io::Write;
    let mut child = cx
        .command()
        .args(["run", "hello", "-e", "prod", "--dir", dir.to_str().unwrap()])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    crate::common::to_run(child.wait_with_output().unwrap())
}

#[test]
fn run_goes_to_the_first_host_a_named_one_a_role_or_all_and_gives_a_terminal_with_t() {
    let fleet = Fleet::new(2);
    let cx = TestContext::new();
    let dir = fleet_app(&cx, &fleet, "1.0", "{ kind = \"all-at-once\" }", "./hello");
    append_config(&dir, "\n[environments.prod.roles.db]\nhosts = [\"h2\"]\n");
    setup(&cx, &dir);
    deploy(&cx, &dir).success();
    let data = |i: usize| format!("data {}", fleet.hosts[i].root.display());
    let show = ["--", "sh", "-c", "echo \"data $DROVER_DATA\""];

    // By default the first host, its output as it is, and the command's exit status.
    let run = run_on(&cx, &dir, &show, b"").success();
    assert!(run.stdout.starts_with(&data(0)), "{}", run.stdout);
    assert!(!run.stdout.contains(&data(1)), "{}", run.stdout);
    let run = run_on(&cx, &dir, &["--", "sh", "-c", "exit 7"], b"");
    assert_eq!(run.status.code(), Some(7), "{}", run.stderr);

    // A named host, with this process's stdin.
    let run = run_on(
        &cx,
        &dir,
        &["--host", "h2", "--", "cat"],
        b"rows from stdin\n",
    )
    .success();
    assert_eq!(run.stdout, "rows from stdin\n");

    // Every host, or a role's: each line prefixed by its host.
    let mut show_all = vec!["--all"];
    show_all.extend(show);
    let run = run_on(&cx, &dir, &show_all, b"").success();
    for i in 0..2 {
        let want = format!("h{} | {}", i + 1, data(i));
        assert!(run.stdout.contains(&want), "{want} in {}", run.stdout);
    }
    let mut show_db = vec!["--role", "db"];
    show_db.extend(show);
    let run = run_on(&cx, &dir, &show_db, b"").success();
    assert!(run.stdout.starts_with(&data(1)), "{}", run.stdout);
    assert!(!run.stdout.contains(&data(0)), "{}", run.stdout);

    // One host failing fails the run, naming it, with its exit status.
    let fail_on_h2 = format!(
        "case \"$DROVER_DATA\" in {}*) echo broken >&2; exit 4;; esac; echo fine",
        fleet.hosts[1].root.display()
    );
    let run = run_on(&cx, &dir, &["--all", "--", "sh", "-c", &fail_on_h2], b"");
    assert_eq!(run.status.code(), Some(4), "{}", run.stderr);
    assert!(run.stdout.contains("h1 | fine"), "{}", run.stdout);
    assert!(
        run.stderr.contains("h2 | broken") && run.stderr.contains("failed on 1 of 2 hosts: h2"),
        "{}",
        run.stderr
    );

    // Wrong names are refused, naming what the environment has.
    let run = run_on(&cx, &dir, &["--host", "h9", "--", "true"], b"").failure();
    assert!(
        run.stderr.contains("h9") && run.stderr.contains("h1, h2"),
        "{}",
        run.stderr
    );
    let run = run_on(&cx, &dir, &["--role", "cache", "--", "true"], b"").failure();
    assert!(
        run.stderr.contains("cache") && run.stderr.contains("db"),
        "{}",
        run.stderr
    );
    let run = run_on(&cx, &dir, &["--all", "-t", "--", "true"], b"").failure();
    assert!(run.stderr.contains("--host HOST"), "{}", run.stderr);

    // -t: the command on the host has a terminal (this end's is one `script` makes).
    let on_terminal = |tty: bool| {
        let line = format!(
            "{} run hello -e prod --dir {}{} -- tty",
            crate::common::drover_bin().display(),
            dir.display(),
            if tty { " -t" } else { "" }
        );
        let out = std::process::Command::new("script")
            .args(["-qec", &line, "/dev/null"])
            .env("DROVER_ROOT", cx.path("root"))
            .env("TERM", "xterm")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let with = on_terminal(true);
    assert!(with.contains("/dev/pts/"), "{with}");
    let without = on_terminal(false);
    assert!(without.contains("not a tty"), "{without}");
}

#[test]
fn setup_copies_nothing_to_a_host_whose_machine_or_glibc_cannot_run_the_binary() {
    use drover_fleet::elf::craft::elf64;
    let fleet = Fleet::new(1);
    let cx = TestContext::new();
    let dir = cx.path("app");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("drover.toml"),
        format!(
            "[app]\nname = \"x\"\nversion = \"1\"\n\n[process.main]\ncommand = \"true\"\n\n\
             [ssh]\nconfig = \"{}\"\ntimeout = \"3s\"\n",
            fleet.ssh_config.display()
        ),
    )
    .unwrap();
    let dir_str = dir.to_str().unwrap();
    let installed = fleet.hosts[0].root.join("bin/drover");
    let setup = |extra: &[&str]| {
        let mut args = vec!["host", "setup", "h1", "--dir", dir_str];
        args.extend_from_slice(extra);
        cx.drover(&args)
    };
    let write_elf = |name: &str, bytes: Vec<u8>| {
        let path = cx.path(name);
        std::fs::write(&path, bytes).unwrap();
        path.to_str().unwrap().to_string()
    };
    let arm = write_elf(
        "drover-aarch64",
        elf64(183, Some("/lib/ld-linux-aarch64.so.1"), &["GLIBC_2.17"]),
    );
    let new_glibc = write_elf(
        "drover-glibc-2.99",
        elf64(
            62,
            Some("/lib64/ld-linux-x86-64.so.2"),
            &["GLIBC_2.17", "GLIBC_2.99"],
        ),
    );
    let getconf = std::process::Command::new("getconf")
        .arg("GNU_LIBC_VERSION")
        .output()
        .unwrap();
    let host_glibc = String::from_utf8(getconf.stdout).unwrap();
    let host_glibc = host_glibc.trim().trim_start_matches("glibc ");

    // Another machine: refused before anything is copied, naming both and the fix.
    let run = setup(&["--binary", &arm]).failure();
    let all = format!("{}{}", run.stdout, run.stderr);
    assert!(
        all.contains(&format!(
            "host h1 is x86_64 (Linux); {arm} is built for aarch64"
        )),
        "{all}"
    );
    assert!(
        run.stderr
            .contains("hint: pass --binary PATH with a drover built for x86_64"),
        "{}",
        run.stderr
    );
    assert!(!installed.exists(), "nothing was copied to h1");

    // A binary that needs a newer glibc than the host's.
    let run = setup(&["--binary", &new_glibc]).failure();
    let all = format!("{}{}", run.stdout, run.stderr);
    assert!(
        all.contains(&format!(
            "host h1 has glibc {host_glibc}; {new_glibc} needs glibc 2.99"
        )),
        "{all}"
    );
    assert!(
        run.stderr.contains("dist/build-release.sh"),
        "{}",
        run.stderr
    );
    assert!(!installed.exists(), "nothing was copied to h1");

    // A file that is not a binary, or is not there, is named.
    let script = write_elf("not-elf", b"#!/bin/sh\necho hi\n".to_vec());
    let run = setup(&["--binary", &script]).failure();
    assert!(
        run.stderr
            .contains(&format!("{script} is not an ELF executable")),
        "{}",
        run.stderr
    );
    let missing = cx.path("missing").to_str().unwrap().to_string();
    let run = setup(&["--binary", &missing]).failure();
    assert!(
        run.stderr
            .contains(&format!("cannot read the binary {missing}")),
        "{}",
        run.stderr
    );
    assert!(!installed.exists(), "nothing was copied to h1");

    // This drover fits: installed as ever; then a misfit leaves it as it was, even forced.
    let run = setup(&[]).success();
    assert!(run.stdout.contains("installed drover"), "{}", run.stdout);
    let ours = std::fs::read(crate::common::drover_bin()).unwrap();
    assert!(std::fs::read(&installed).unwrap() == ours);
    setup(&["--force", "--binary", &arm]).failure();
    assert!(
        std::fs::read(&installed).unwrap() == ours,
        "h1 keeps its drover"
    );
    // `--binary` naming a copy of this drover: the same build, already there.
    let copy = write_elf("drover-copy", ours.clone());
    let run = setup(&["--binary", &copy]).success();
    assert!(run.stdout.contains("already up to date"), "{}", run.stdout);
    assert!(!run.stderr.contains("note:"), "{}", run.stderr);
    // Another build that fits: installed and running there, and the note says deploys from
    // this drover will refuse it.
    let mut bytes = ours.clone();
    bytes.extend_from_slice(b"\0another build");
    let other = write_elf("drover-other", bytes.clone());
    let run = setup(&["--binary", &other]).success();
    assert!(run.stdout.contains("replaced drover"), "{}", run.stdout);
    assert!(
        run.stderr
            .contains(&format!("note: the hosts run {other} (build ")),
        "{}",
        run.stderr
    );
    assert!(std::fs::read(&installed).unwrap() == bytes);
}
