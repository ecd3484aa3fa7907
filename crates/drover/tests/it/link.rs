//! The fleet deploy over in-process host links: the host side of each serve session runs on
//! a thread of the test, against a drover root of its own and that root's real agent. Lock,
//! transfer, switch, confirm and revert are carried out as over ssh, without sshd or root.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use drover_fleet::error::{Exit, Kinded};
use drover_fleet::{Connected, DeployPlan, HostLink, InProcess, Locks, Target};

use crate::common::{AgentHandle, TestContext};

/// One host: a root and its agent.
struct Host {
    cx: TestContext,
    _agent: AgentHandle,
}

/// `n` hosts named h1..hN, trusting the deployer's signing key.
fn hosts(deployer: &TestContext, n: usize) -> Vec<Host> {
    let key = deployer
        .drover(&["keys"])
        .success()
        .stdout
        .trim()
        .to_string();
    (0..n)
        .map(|_| {
            let cx = TestContext::new();
            let agent = cx.start_agent();
            cx.drover(&["keys", "trust", &key, "--name", "deployer"])
                .success();
            Host { cx, _agent: agent }
        })
        .collect()
}

/// The example app at `version`, deployed one host at a time to environment `prod`: h1..hN.
fn app(cx: &TestContext, n: usize, version: &str, health: Option<&str>) -> PathBuf {
    let names: Vec<String> = (1..=n).map(|i| format!("\"h{i}\"")).collect();
    let health = health.map_or(String::new(), |h| format!("[health]\n{h}\n\n"));
    cx.hello_app(
        "app",
        version,
        &format!(
            "{health}[ssh]\ntimeout = \"3s\"\n\n[environments.prod]\nhosts = [{}]\nstrategy = {{ kind = \"rolling\", batch = 1 }}\n",
            names.join(", ")
        ),
    )
}

/// Every phase the deploy reported, per host.
#[derive(Default)]
struct Phases(Mutex<Vec<(usize, String)>>);

impl drover_fleet::Progress for Phases {
    fn phase(&self, host: usize, text: &str) {
        self.0.lock().unwrap().push((host, text.to_string()));
    }
    fn bytes(&self, _: usize, _: u64, _: u64) {}
    fn finish(&self) {}
}

impl Phases {
    fn of(&self, host: usize) -> Vec<String> {
        let all = self.0.lock().unwrap();
        all.iter()
            .filter(|(h, _)| *h == host)
            .map(|(_, p)| p.clone())
            .collect()
    }
}

fn links(hosts: &[Host]) -> Vec<InProcess> {
    hosts
        .iter()
        .enumerate()
        .map(|(i, h)| InProcess::new(&format!("h{}", i + 1), &h.cx.root, Duration::from_secs(3)))
        .collect()
}

/// Builds the app in `dir` in the deployer's store and deploys it to `hosts` in-process.
fn deploy(
    deployer: &TestContext,
    dir: &Path,
    hosts: &[Host],
    phases: &Phases,
) -> anyhow::Result<drover_fleet::Deployed> {
    deploy_waiting(deployer, dir, hosts, phases, None)
}

/// `deploy`, waiting up to `lock_wait` for another holder's lock.
fn deploy_waiting(
    deployer: &TestContext,
    dir: &Path,
    hosts: &[Host],
    phases: &Phases,
    lock_wait: Option<Duration>,
) -> anyhow::Result<drover_fleet::Deployed> {
    let built = deployer.build(dir, &[]);
    let store = drover_store::Store::open(&deployer.root).unwrap();
    let target = Target::require(dir, "prod").unwrap();
    let id: drover_store::Hash = built["release"].as_str().unwrap().parse().unwrap();
    let plan = DeployPlan {
        lock_wait,
        ..DeployPlan::of(id, &store.manifest(&id).unwrap(), None)
    };
    let conn = Connected::of(
        &target.env.hosts,
        links(hosts).into_iter().map(Ok).collect(),
    );
    drover_fleet::deploy(&store, &target, &plan, conn, phases, Instant::now())
}

fn generation(h: &Host) -> serde_json::Value {
    h.cx.app_status("hello")["generation"].clone()
}

fn audit(h: &Host) -> Vec<serde_json::Value> {
    let out =
        h.cx.drover(&["remote", "audit-read", "--env", "prod"])
            .success();
    out.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn in_process_hosts_are_locked_sent_switched_confirmed_and_released_without_sshd() {
    let cx = TestContext::new();
    let hosts = hosts(&cx, 3);
    let dir = app(&cx, 3, "1.0", None);
    let phases = Phases::default();
    let done = deploy(&cx, &dir, &hosts, &phases).unwrap();
    assert!(done.failure.is_none(), "{:?}", done.failure);
    assert!(done.report.ok);
    assert!(done.stuck.is_empty(), "{:?}", done.stuck);
    for (i, h) in hosts.iter().enumerate() {
        assert_eq!(
            done.report.hosts[i].state, "live",
            "{:?}",
            done.report.hosts
        );
        assert_eq!(generation(h), 1);
        assert!(done.report.hosts[i].bytes_sent > 0);
        // Each host went through every step, in order.
        let seen = phases.of(i);
        let at = |p: &str| {
            seen.iter()
                .position(|s| s.starts_with(p))
                .unwrap_or_else(|| panic!("no `{p}` in {seen:?}"))
        };
        assert!(at("checking and locking") < at("sending"));
        assert!(at("sending") < at("switching"));
        assert!(at("switching") < at("live: generation 1"));
        // The lock is given back and the deploy audited on the host.
        assert!(!h.cx.root.join("locks/prod.json").exists());
        let entries = audit(h);
        assert_eq!(entries.len(), 1, "{entries:?}");
        assert_eq!(entries[0]["action"], "deploy");
        assert_eq!(entries[0]["to"], 1);
    }

    // A second version: each host gets only what it lacks, and all move to generation 2.
    let first = done.report.hosts[0].bytes_sent;
    let dir = app(&cx, 3, "2.0", None);
    let done = deploy(&cx, &dir, &hosts, &phases).unwrap();
    assert!(done.failure.is_none(), "{:?}", done.failure);
    for (i, h) in hosts.iter().enumerate() {
        assert_eq!(generation(h), 2);
        assert!(
            done.report.hosts[i].bytes_sent < first,
            "{} then {}",
            first,
            done.report.hosts[i].bytes_sent
        );
    }
}

#[test]
fn in_process_a_host_failing_its_health_gate_sends_every_switched_host_back() {
    let cx = TestContext::new();
    let hosts = hosts(&cx, 3);
    let done = deploy(&cx, &app(&cx, 3, "1.0", None), &hosts, &Phases::default()).unwrap();
    assert!(done.report.ok);

    // v2 fails its health check on h2 only (a marker in its root; the check runs in the
    // release tree, ROOT/store/trees/ID).
    std::fs::write(hosts[1].cx.root.join("break-v2"), "").unwrap();
    let dir = app(
        &cx,
        3,
        "2.0",
        Some("command = \"test ! -e ../../../break-v2\"\ntimeout = \"3s\""),
    );
    let done = deploy(&cx, &dir, &hosts, &Phases::default()).unwrap();
    let failure = done.failure.expect("the deploy failed");
    let kind = failure.downcast_ref::<Kinded>().expect("a kinded failure");
    assert_eq!(kind.exit, Exit::RolledBack, "{failure:#}");
    assert!(!done.report.ok);
    let states: Vec<&str> = done.report.hosts.iter().map(|h| h.state.as_str()).collect();
    assert_eq!(states, ["reverted", "failed", "unchanged"]);
    let why = done.report.hosts[1].error.as_deref().unwrap();
    assert!(
        why.starts_with("h2:") && why.contains("health command"),
        "{why}"
    );
    // Every host runs v1 again: h1 by its revert (a rollback, generation 3), h2 never
    // confirmed (back on generation 1), h3 never touched.
    let live: Vec<serde_json::Value> = hosts
        .iter()
        .map(|h| h.cx.app_status("hello")["version"].clone())
        .collect();
    assert_eq!(live, ["1.0", "1.0", "1.0"]);
    assert_eq!(generation(&hosts[0]), 3);
    assert_eq!(generation(&hosts[1]), 1);
    assert_eq!(generation(&hosts[2]), 1);
    for h in &hosts {
        assert!(!h.cx.root.join("locks/prod.json").exists());
    }
    let last = audit(&hosts[0]).pop().unwrap();
    assert_eq!(last["outcome"], "reverted", "{last}");
}

#[test]
fn in_process_a_held_lock_stops_a_second_deployer_naming_its_holder() {
    let cx = TestContext::new();
    let hosts = hosts(&cx, 2);
    let dir = app(&cx, 2, "1.0", None);
    let held = links(&hosts);
    let refs: Vec<&InProcess> = held.iter().collect();
    let ask = drover_fleet::LockAsk {
        message: Some("release freeze".into()),
        wait: None,
    };
    let mut lock = Locks::acquire_with("prod", &refs, "a test's deploy", &ask, |_| {}).unwrap();
    assert!(hosts[0].cx.root.join("locks/prod.json").exists());

    let err = match deploy(&cx, &dir, &hosts, &Phases::default()) {
        Ok(_) => panic!("deployed under another holder's lock"),
        Err(e) => e,
    };
    let kind = err.downcast_ref::<Kinded>().expect("a kinded error");
    assert_eq!(kind.exit, Exit::Locked);
    let text = format!("{err:#}");
    assert!(
        text.contains("environment `prod` is locked on h1")
            && text.contains("a test's deploy")
            && text.contains("\"release freeze\""),
        "{text}"
    );
    // Nothing was deployed, and the holder still holds it.
    for h in &hosts {
        let apps = h.cx.status();
        assert!(
            apps.as_array().unwrap().iter().all(|a| a["app"] != "hello"),
            "{apps}"
        );
    }
    assert!(hosts[0].cx.root.join("locks/prod.json").exists());

    // A deploy that may wait: it waits while the lock is held, saying for whom, and goes on
    // once it is given back.
    let phases = Phases::default();
    let done = std::thread::scope(|s| {
        let waiting =
            s.spawn(|| deploy_waiting(&cx, &dir, &hosts, &phases, Some(Duration::from_secs(60))));
        crate::common::wait_for("the deploy to wait", Duration::from_secs(30), || {
            phases
                .of(0)
                .iter()
                .any(|p| p.starts_with("waiting for the lock"))
        });
        assert!(!waiting.is_finished());
        assert!(lock.release().is_empty());
        waiting.join().unwrap()
    })
    .unwrap();
    assert!(done.report.ok, "{:?}", done.report.hosts);
    let said = phases.of(0);
    assert!(
        said.iter()
            .any(|p| p.contains("waiting for the lock") && p.contains("release freeze")),
        "{said:?}"
    );
    for l in held {
        l.close();
    }
}

#[test]
fn in_process_the_release_hook_runs_once_for_the_fleet_before_any_switch() {
    let cx = TestContext::new();
    let hosts = hosts(&cx, 3);
    let ran = cx.path("hooks.log");
    // The hook says where it ran (its tree is under the host's root) and appends a line.
    let hook = |extra: &str| {
        format!(
            "[hooks]\nrelease = \"sh -c 'echo migrating; pwd >> {}{extra}'\"\n",
            ran.display()
        )
    };
    let with_hook = |version: &str, hooks: &str| {
        let dir = app(&cx, 3, version, None);
        let toml = std::fs::read_to_string(dir.join("drover.toml"))
            .unwrap()
            .replace(
                "name = \"hello\"\n",
                &format!("name = \"hello\"\n{}", crate::common::as_test_user()),
            );
        std::fs::write(dir.join("drover.toml"), format!("{toml}\n{hooks}")).unwrap();
        dir
    };
    let phases = Phases::default();
    let done = deploy(&cx, &with_hook("1.0", &hook("")), &hosts, &phases).unwrap();
    assert!(done.failure.is_none(), "{:?}", done.failure);
    let lines = std::fs::read_to_string(&ran).unwrap();
    assert_eq!(lines.lines().count(), 1, "{lines}");
    assert!(
        lines.starts_with(hosts[0].cx.root.to_str().unwrap()),
        "{lines}"
    );
    // Its output reached the deployer, before any host switched.
    let seen = phases.of(0);
    let at = |p: &str| seen.iter().position(|s| s.starts_with(p));
    let hook_said = at("hook | migrating").unwrap_or_else(|| panic!("{seen:?}"));
    assert!(hook_said < at("switching").unwrap(), "{seen:?}");
    for i in 1..3 {
        assert!(
            !phases.of(i).iter().any(|p| p.contains("hook")),
            "{:?}",
            phases.of(i)
        );
    }
    for h in &hosts {
        assert_eq!(generation(h), 1);
    }

    // With release_on, on the first host of that role.
    let dir = with_hook("2.0", &format!("{}release_on = \"db\"\n", hook("")));
    let toml = std::fs::read_to_string(dir.join("drover.toml")).unwrap();
    std::fs::write(
        dir.join("drover.toml"),
        format!("{toml}\n[environments.prod.roles.db]\nhosts = [\"h2\"]\n"),
    )
    .unwrap();
    let done = deploy(&cx, &dir, &hosts, &Phases::default()).unwrap();
    assert!(done.failure.is_none(), "{:?}", done.failure);
    let lines = std::fs::read_to_string(&ran).unwrap();
    assert_eq!(lines.lines().count(), 2, "{lines}");
    assert!(
        lines
            .lines()
            .nth(1)
            .unwrap()
            .starts_with(hosts[1].cx.root.to_str().unwrap()),
        "{lines}"
    );

    // A failing hook switches nothing: every host stays on generation 2.
    let done = deploy(
        &cx,
        &with_hook("3.0", &hook("; exit 3")),
        &hosts,
        &Phases::default(),
    )
    .unwrap();
    let failure = done.failure.expect("the hook failed");
    assert_eq!(
        failure.downcast_ref::<Kinded>().unwrap().exit,
        Exit::RolledBack
    );
    let text = format!("{failure:#}");
    assert!(
        text.contains("the release hook failed on h1, so no host was switched"),
        "{text}"
    );
    let states: Vec<&str> = done.report.hosts.iter().map(|h| h.state.as_str()).collect();
    assert_eq!(states, ["failed", "unchanged", "unchanged"]);
    assert_eq!(std::fs::read_to_string(&ran).unwrap().lines().count(), 3);
    for h in &hosts {
        assert_eq!(generation(h), 2);
        assert_eq!(h.cx.app_status("hello")["version"], "2.0");
    }
}
