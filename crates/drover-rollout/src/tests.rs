use super::*;

fn plan(n: usize, batches: &[&[HostId]]) -> Plan {
    Plan {
        hosts: (1..=n).map(|i| format!("h{i}")).collect(),
        batches: batches.iter().map(|b| b.to_vec()).collect(),
        pause: None,
        max_unavailable: None,
        keep_partial: false,
        hook_on: None,
    }
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Runs `plan` through `script` (observations at their second), returning the log of
/// what came in and went out, and the engine.
fn run(plan: Plan, script: &[(u64, Observation)]) -> (String, Rollout) {
    let names = plan.hosts.clone();
    let name = |h: &HostId| names.get(*h).cloned().unwrap_or_else(|| format!("#{h}"));
    let list = |hs: &[HostId]| hs.iter().map(name).collect::<Vec<_>>().join(" ");
    let show = |a: &Action| match a {
        Action::Transfer { hosts } => format!("transfer {}", list(hosts)),
        Action::CheckAvailable { hosts } => format!("check-available {}", list(hosts)),
        Action::WaitUntil { at, hosts } => {
            format!("wait-until {}s ({})", at.as_secs(), list(hosts))
        }
        Action::Switch { batch, of, hosts } => {
            format!("switch batch {}/{of}: {}", batch + 1, list(hosts))
        }
        Action::Confirm { host } => format!("confirm {}", name(host)),
        Action::RunHook { host } => format!("run-hook on {}", name(host)),
        Action::Revert { host, to } => format!("revert {} {to:?}", name(host)),
        Action::Done { failure } => format!("done {failure:?}"),
    };
    let mut r = Rollout::new(plan);
    let mut log = String::new();
    for a in r.start() {
        log += &format!("        -> {}\n", show(&a));
    }
    for (t, obs) in script {
        log += &format!("{:>4}s <- {obs:?}\n", t);
        for a in r.observe(secs(*t), obs.clone()) {
            log += &format!("        -> {}\n", show(&a));
        }
    }
    log += "outcomes:";
    for (i, h) in r.hosts().iter().enumerate() {
        log += &format!(" {}={}", name(&i), h.outcome().as_str());
    }
    log += "\n";
    (log, r)
}

fn sent(host: HostId) -> Observation {
    Observation::Sent { host }
}
fn healthy(host: HostId) -> Observation {
    Observation::Healthy { host }
}
fn live(host: HostId, generation: u64) -> Observation {
    Observation::Live {
        host,
        generation: Some(generation),
        previous: generation.checked_sub(1).filter(|g| *g > 0),
    }
}
fn failed(host: HostId, unreachable: bool) -> Observation {
    Observation::SwitchFailed {
        host,
        error: match unreachable {
            true => format!("h{}: connection lost", host + 1),
            false => format!("h{}: health check failed", host + 1),
        },
        unreachable,
    }
}
fn reverted(host: HostId) -> Observation {
    Observation::Reverted { host }
}

/// Healthy then live (generation 2, from 1), for each host.
fn up(t: u64, hosts: &[HostId]) -> Vec<(u64, Observation)> {
    hosts
        .iter()
        .flat_map(|&h| [(t, healthy(h)), (t, live(h, 2))])
        .collect()
}

fn last(actions: &[Action]) -> &Action {
    actions.last().expect("an action")
}

// ---- rules ------------------------------------------------------------------------------

#[test]
fn a_plan_must_hold_every_host_once() {
    assert_eq!(plan(3, &[&[0], &[1, 2]]).check(), Ok(()));
    assert!(
        plan(3, &[&[0], &[1]])
            .check()
            .unwrap_err()
            .contains("host 2")
    );
    assert!(
        plan(2, &[&[0, 1], &[1]])
            .check()
            .unwrap_err()
            .contains("two batches")
    );
    assert!(
        plan(2, &[&[0, 1, 2]])
            .check()
            .unwrap_err()
            .contains("past the last")
    );
    assert!(plan(1, &[&[0], &[]]).check().unwrap_err().contains("empty"));
}

#[test]
fn the_revert_rule() {
    assert_eq!(revert_to(Some(4)), Revert::Rollback { generation: 4 });
    assert_eq!(revert_to(None), Revert::Stop);
}

#[test]
fn no_host_switches_before_every_host_has_the_release() {
    let mut r = Rollout::new(plan(2, &[&[0], &[1]]));
    assert_eq!(r.start(), vec![Action::Transfer { hosts: vec![0, 1] }]);
    assert_eq!(r.observe(secs(1), sent(1)), vec![]);
    let next = r.observe(secs(2), sent(0));
    assert!(matches!(last(&next), Action::Switch { batch: 0, hosts, .. } if hosts == &[0]));
}

#[test]
fn a_failed_transfer_switches_nothing() {
    let mut r = Rollout::new(plan(2, &[&[0, 1]]));
    r.start();
    r.observe(secs(1), sent(0));
    let next = r.observe(
        secs(2),
        Observation::SendFailed {
            host: 1,
            error: "h2: cut".into(),
            unreachable: true,
        },
    );
    assert_eq!(
        next,
        vec![Action::Done {
            failure: Some(Failure::Transfer { hosts: vec![1] })
        }]
    );
    assert_eq!(r.hosts()[0].outcome(), Outcome::Unchanged);
    assert_eq!(r.hosts()[1].outcome(), Outcome::Failed);
    assert_eq!(r.hosts()[1].error.as_deref(), Some("h2: cut"));
    assert!(r.is_done());
}

#[test]
fn a_healthy_host_is_confirmed_and_a_batch_waits_for_all_its_hosts() {
    let mut r = Rollout::new(plan(3, &[&[0, 1], &[2]]));
    r.start();
    for h in 0..3 {
        r.observe(secs(0), sent(h));
    }
    assert_eq!(
        r.observe(secs(1), healthy(0)),
        vec![Action::Confirm { host: 0 }]
    );
    assert_eq!(r.observe(secs(1), live(0, 2)), vec![]);
    assert_eq!(r.hosts()[0].state, HostState::Live);
    r.observe(secs(2), healthy(1));
    let next = r.observe(secs(2), live(1, 2));
    assert!(matches!(last(&next), Action::Switch { batch: 1, .. }));
}

#[test]
fn a_pause_comes_between_batches_not_before_the_first() {
    let mut p = plan(2, &[&[0], &[1]]);
    p.pause = Some(secs(60));
    let mut r = Rollout::new(p);
    r.start();
    r.observe(secs(3), sent(0));
    let next = r.observe(secs(4), sent(1));
    assert!(matches!(last(&next), Action::Switch { batch: 0, .. }));
    r.observe(secs(5), healthy(0));
    let next = r.observe(secs(6), live(0, 2));
    assert_eq!(
        next,
        vec![Action::WaitUntil {
            at: secs(66),
            hosts: vec![1]
        }]
    );
    // Too early: wait on.
    assert!(matches!(
        r.observe(secs(30), Observation::Tick)[..],
        [Action::WaitUntil { at, .. }] if at == secs(66)
    ));
    let next = r.observe(secs(66), Observation::Tick);
    assert!(matches!(last(&next), Action::Switch { batch: 1, .. }));
}

#[test]
fn max_unavailable_counts_the_hosts_down_outside_the_batch() {
    let mut p = plan(4, &[&[0], &[1], &[2], &[3]]);
    p.max_unavailable = Some(2);
    let mut r = Rollout::new(p);
    r.start();
    for h in 0..3 {
        r.observe(secs(0), sent(h));
    }
    // Before the first batch: are the others down?
    assert_eq!(
        r.observe(secs(0), sent(3)),
        vec![Action::CheckAvailable {
            hosts: vec![1, 2, 3]
        }]
    );
    let mut r2 = r.clone();
    // One down outside, plus the batch of one: 2, allowed.
    let next = r.observe(secs(1), Observation::Availability { down: vec![2] });
    assert!(matches!(last(&next), Action::Switch { batch: 0, .. }));
    // Two down: 3 > 2, the rollout stops before switching anything.
    let next = r2.observe(
        secs(1),
        Observation::Availability {
            down: vec![3, 2, 2, 0, 9],
        },
    );
    assert_eq!(
        next,
        vec![Action::Done {
            failure: Some(Failure::Unavailable {
                batch: 0,
                of: 4,
                down: vec![2, 3],
                size: 1,
                max: 2
            })
        }]
    );
}

#[test]
fn a_failed_batch_reverts_every_switched_host_by_the_revert_rule() {
    let mut r = Rollout::new(plan(3, &[&[0], &[1, 2]]));
    r.start();
    for h in 0..3 {
        r.observe(secs(0), sent(h));
    }
    r.observe(secs(1), healthy(0));
    r.observe(
        secs(1),
        Observation::Live {
            host: 0,
            generation: Some(1),
            previous: None,
        },
    );
    r.observe(secs(2), healthy(1));
    r.observe(secs(2), live(1, 5));
    let next = r.observe(secs(3), failed(2, false));
    assert_eq!(
        next,
        vec![
            Action::Revert {
                host: 0,
                to: Revert::Stop
            },
            Action::Revert {
                host: 1,
                to: Revert::Rollback { generation: 4 }
            },
        ]
    );
    assert_eq!(r.observe(secs(4), reverted(1)), vec![]);
    let next = r.observe(
        secs(5),
        Observation::RevertFailed {
            host: 0,
            error: "h1: gone".into(),
        },
    );
    assert!(matches!(
        &next[..],
        [Action::Done { failure: Some(Failure::Batch { batch: 1, hosts, .. }) }] if hosts == &[2]
    ));
    let outcomes: Vec<Outcome> = r.hosts().iter().map(Host::outcome).collect();
    assert_eq!(
        outcomes,
        [Outcome::Failed, Outcome::Reverted, Outcome::Failed]
    );
    assert_eq!(
        r.hosts()[0].error.as_deref(),
        Some("could not revert: h1: gone")
    );
    assert_eq!(r.hosts()[0].at, secs(5));
    // h1 switched and could not be returned; h2 is back; h3 failed its own switch (its
    // agent keeps the old generation).
    let back: Vec<bool> = r.hosts().iter().map(Host::is_back).collect();
    assert_eq!(back, [false, true, true]);
}

#[test]
fn keep_partial_keeps_the_switched_hosts() {
    let mut p = plan(2, &[&[0], &[1]]);
    p.keep_partial = true;
    let mut r = Rollout::new(p);
    r.start();
    r.observe(secs(0), sent(0));
    r.observe(secs(0), sent(1));
    r.observe(secs(1), healthy(0));
    r.observe(secs(1), live(0, 2));
    let next = r.observe(secs(2), failed(1, false));
    assert!(matches!(&next[..], [Action::Done { failure: Some(_) }]));
    assert_eq!(r.hosts()[0].outcome(), Outcome::Kept);
    assert_eq!(r.hosts()[1].outcome(), Outcome::Failed);
    assert!(!r.hosts()[0].is_back() && r.hosts()[1].is_back());
}

#[test]
fn a_host_lost_in_its_switch_is_not_reverted_by_the_deployer() {
    let mut r = Rollout::new(plan(2, &[&[0, 1]]));
    r.start();
    r.observe(secs(0), sent(0));
    r.observe(secs(0), sent(1));
    r.observe(secs(1), healthy(0));
    r.observe(secs(1), live(0, 2));
    r.observe(secs(1), healthy(1));
    let next = r.observe(secs(2), failed(1, true));
    assert_eq!(
        next,
        vec![Action::Revert {
            host: 0,
            to: Revert::Rollback { generation: 1 }
        }]
    );
    assert_eq!(r.hosts()[1].outcome(), Outcome::Unreachable);
    assert!(!r.hosts()[1].is_back());
}

#[test]
fn the_release_hook_runs_once_after_every_transfer_and_before_any_switch() {
    let mut p = plan(3, &[&[0], &[1, 2]]);
    p.hook_on = Some(1);
    let mut r = Rollout::new(p);
    r.start();
    assert!(r.observe(secs(0), sent(0)).is_empty());
    assert!(r.observe(secs(0), sent(1)).is_empty());
    assert_eq!(r.observe(secs(0), sent(2)), [Action::RunHook { host: 1 }]);
    // Nothing else moves it on while it runs.
    assert!(r.observe(secs(1), healthy(0)).is_empty());
    assert!(r.observe(secs(1), Observation::Tick).is_empty());
    let next = r.observe(secs(2), Observation::HookRan { error: None });
    assert!(
        matches!(last(&next), Action::Switch { batch: 0, .. }),
        "{next:?}"
    );
    // A second answer is out of place.
    assert!(
        r.observe(secs(2), Observation::HookRan { error: None })
            .is_empty()
    );
}

#[test]
fn a_failed_release_hook_switches_nothing() {
    let mut p = plan(2, &[&[0], &[1]]);
    p.hook_on = Some(0);
    let mut r = Rollout::new(p);
    r.start();
    r.observe(secs(0), sent(0));
    r.observe(secs(0), sent(1));
    let next = r.observe(
        secs(1),
        Observation::HookRan {
            error: Some("h1: release hook `./migrate` failed".into()),
        },
    );
    assert!(matches!(last(&next), Action::Done { .. }), "{next:?}");
    assert!(
        !next
            .iter()
            .any(|a| matches!(a, Action::Switch { .. } | Action::Revert { .. }))
    );
    assert!(matches!(r.failure(), Some(Failure::Hook { host: 0, .. })));
    assert_eq!(r.hosts()[0].outcome(), Outcome::Failed);
    assert_eq!(r.hosts()[1].outcome(), Outcome::Unchanged);
    assert!(r.hosts().iter().all(Host::is_back));
}

#[test]
fn observations_out_of_place_change_nothing() {
    let mut r = Rollout::new(plan(2, &[&[0], &[1]]));
    r.start();
    // Not switching yet: a Healthy or Live is ignored, as are hosts that do not exist.
    assert_eq!(r.observe(secs(0), healthy(0)), vec![]);
    assert_eq!(r.observe(secs(0), live(0, 2)), vec![]);
    assert_eq!(r.observe(secs(0), sent(7)), vec![]);
    assert_eq!(r.observe(secs(0), Observation::Tick), vec![]);
    r.observe(secs(0), sent(0));
    // A second Sent for the same host does not count twice.
    assert_eq!(r.observe(secs(0), sent(0)), vec![]);
    let next = r.observe(secs(1), sent(1));
    assert!(matches!(last(&next), Action::Switch { batch: 0, .. }));
    // A host of the next batch cannot report in this one.
    assert_eq!(r.observe(secs(1), live(1, 2)), vec![]);
    assert_eq!(r.hosts()[1].state, HostState::Sent);
}

#[test]
fn no_hosts_is_done_at_once() {
    let mut r = Rollout::new(plan(0, &[]));
    assert_eq!(r.start(), vec![Action::Done { failure: None }]);
    assert!(r.is_done());
}

#[test]
fn outcome_words() {
    let words: Vec<(&str, &str)> = [
        Outcome::Live,
        Outcome::Reverted,
        Outcome::Kept,
        Outcome::Unchanged,
        Outcome::Failed,
        Outcome::Unreachable,
    ]
    .iter()
    .map(|o| (o.as_str(), o.audit()))
    .collect();
    assert_eq!(
        words,
        [
            ("live", "ok"),
            ("reverted", "reverted"),
            ("kept", "kept-partial"),
            ("unchanged", "not-started"),
            ("failed", "failed"),
            ("unreachable", "failed"),
        ]
    );
}

// ---- whole rollouts ---------------------------------------------------------------------

fn all_sent(t: u64, n: usize) -> Vec<(u64, Observation)> {
    (0..n).map(|h| (t, sent(h))).collect()
}

#[test]
fn rolling_one_at_a_time() {
    let mut s = all_sent(0, 3);
    s.extend(up(1, &[0]));
    s.extend(up(2, &[1]));
    s.extend(up(3, &[2]));
    let (log, r) = run(plan(3, &[&[0], &[1], &[2]]), &s);
    assert_eq!(r.failure(), None);
    insta::assert_snapshot!(log);
}

#[test]
fn rolling_25_percent_of_eight() {
    let mut s = all_sent(0, 8);
    s.extend(up(1, &[0, 1]));
    s.extend(up(2, &[2, 3]));
    s.extend(up(3, &[4, 5]));
    s.extend(up(4, &[6, 7]));
    let (log, r) = run(plan(8, &[&[0, 1], &[2, 3], &[4, 5], &[6, 7]]), &s);
    assert!(r.hosts().iter().all(|h| h.outcome() == Outcome::Live));
    insta::assert_snapshot!(log);
}

#[test]
fn max_unavailable_stops_a_batch_that_would_take_too_many_down() {
    let mut p = plan(4, &[&[0, 1], &[2, 3]]);
    p.max_unavailable = Some(2);
    let mut s = all_sent(0, 4);
    s.push((0, Observation::Availability { down: vec![] }));
    s.extend(up(1, &[0, 1]));
    // h1 went down meanwhile: with the batch of two, three would be unavailable.
    s.push((2, Observation::Availability { down: vec![0] }));
    s.push((3, reverted(0)));
    s.push((3, reverted(1)));
    let (log, r) = run(p, &s);
    assert!(matches!(
        r.failure(),
        Some(Failure::Unavailable { batch: 1, .. })
    ));
    insta::assert_snapshot!(log);
}

#[test]
fn a_pause_between_batches() {
    let mut p = plan(2, &[&[0], &[1]]);
    p.pause = Some(secs(300));
    let mut s = all_sent(0, 2);
    s.extend(up(1, &[0]));
    s.push((120, Observation::Tick));
    s.push((301, Observation::Tick));
    s.extend(up(302, &[1]));
    let (log, _) = run(p, &s);
    insta::assert_snapshot!(log);
}

#[test]
fn canary_hosts_then_the_rest() {
    let mut p = plan(5, &[&[0], &[1, 2, 3, 4]]);
    p.pause = Some(secs(60));
    let mut s = all_sent(0, 5);
    s.extend(up(2, &[0]));
    s.push((62, Observation::Tick));
    s.extend(up(63, &[1, 2, 3, 4]));
    let (log, r) = run(p, &s);
    assert_eq!(r.failure(), None);
    insta::assert_snapshot!(log);
}

#[test]
fn a_release_hook_between_the_transfer_and_the_first_batch() {
    let mut s = all_sent(0, 3);
    s.push((4, Observation::HookRan { error: None }));
    s.extend(up(5, &[0]));
    s.extend(up(6, &[1, 2]));
    let mut p = plan(3, &[&[0], &[1, 2]]);
    p.hook_on = Some(0);
    let (log, r) = run(p, &s);
    assert_eq!(r.failure(), None);
    insta::assert_snapshot!(log);
}

#[test]
fn a_failing_batch_returns_every_switched_host() {
    let mut s = all_sent(0, 4);
    s.extend(up(1, &[0, 1]));
    s.push((2, healthy(2)));
    s.push((2, live(2, 2)));
    s.push((3, failed(3, false)));
    s.extend([(4, reverted(0)), (4, reverted(1)), (4, reverted(2))]);
    let (log, r) = run(plan(4, &[&[0, 1], &[2, 3]]), &s);
    assert!(matches!(r.failure(), Some(Failure::Batch { batch: 1, .. })));
    insta::assert_snapshot!(log);
}

#[test]
fn a_host_lost_during_the_transfer() {
    let s = vec![
        (0, sent(0)),
        (
            5,
            Observation::SendFailed {
                host: 1,
                error: "h2: connection lost".into(),
                unreachable: true,
            },
        ),
        (5, sent(2)),
    ];
    let (log, _) = run(plan(3, &[&[0], &[1], &[2]]), &s);
    insta::assert_snapshot!(log);
}

#[test]
fn a_host_lost_during_its_switch() {
    let mut s = all_sent(0, 3);
    s.extend(up(1, &[0]));
    s.push((2, healthy(1)));
    s.push((12, failed(1, true)));
    s.push((13, reverted(0)));
    let (log, r) = run(plan(3, &[&[0], &[1], &[2]]), &s);
    assert_eq!(r.hosts()[1].outcome(), Outcome::Unreachable);
    insta::assert_snapshot!(log);
}

#[test]
fn keep_partial_leaves_the_fleet_mixed() {
    let mut p = plan(3, &[&[0], &[1], &[2]]);
    p.keep_partial = true;
    let mut s = all_sent(0, 3);
    s.extend(up(1, &[0]));
    s.push((2, failed(1, false)));
    let (log, _) = run(p, &s);
    insta::assert_snapshot!(log);
}
