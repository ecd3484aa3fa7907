//! The rollout engine: the rules of a fleet deploy, and nothing else.
//!
//! No I/O at all: no files, sockets, processes, threads, sleeping or clock. A [`Plan`]
//! (hosts, batches, pause, `max_unavailable`, `--keep-partial`) and each [`Observation`]
//! (a transfer done or failed, a host healthy, live, failed or unreachable, time passed)
//! give the next [`Action`]s (transfer, check availability, wait until, switch, confirm,
//! revert, done with an outcome per host). An executor carries the actions out (over ssh,
//! in process, in a test script) and reports what it saw; time is what it says it is.
//!
//! The rules, in order:
//! 1. every host gets the release before any host switches; if one fails, none switches;
//! 2. batch by batch, each wholly live before the next starts; between batches, `pause`;
//! 3. with `max_unavailable`, a batch starts only if the hosts outside it that are down,
//!    plus the batch, are at most that many;
//! 4. a host that comes up healthy is confirmed (it keeps the new generation);
//! 5. a failed batch, a lost host or too many unavailable stops the rollout; then every host
//!    that switched is reverted ([`revert_to`]), unless `keep_partial` keeps them.

use std::time::Duration;

use serde::Serialize;

/// A host, by its index in [`Plan::hosts`].
pub type HostId = usize;

/// What a rollout is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Host names, in the environment's order (for messages; the engine uses indices).
    pub hosts: Vec<String>,
    /// The batches, in order: every host in exactly one.
    pub batches: Vec<Vec<HostId>>,
    /// Wait this long before each batch but the first.
    pub pause: Option<Duration>,
    /// At most this many hosts switching or down at once.
    pub max_unavailable: Option<usize>,
    /// On failure, leave the hosts that switched on the new release.
    pub keep_partial: bool,
    /// Run the release's hook (migrations) once, on this host, after every host holds the
    /// release and before any switches; the switches then skip it.
    pub hook_on: Option<HostId>,
}

impl Plan {
    /// Refuses a plan whose batches do not hold every host exactly once.
    pub fn check(&self) -> Result<(), String> {
        let mut seen = vec![false; self.hosts.len()];
        for b in &self.batches {
            if b.is_empty() {
                return Err("a batch is empty".into());
            }
            for &h in b {
                match seen.get_mut(h) {
                    None => return Err(format!("batch names host {h}, past the last")),
                    Some(true) => return Err(format!("host {h} is in two batches")),
                    Some(s) => *s = true,
                }
            }
        }
        match seen.iter().position(|s| !s) {
            Some(h) => Err(format!("host {h} is in no batch")),
            None => Ok(()),
        }
    }
}

/// What became of the deploy on a host so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostState {
    /// Nothing done yet.
    Waiting,
    Sending,
    /// Holds the release; not switched.
    Sent,
    Switching,
    /// Healthy on the new generation, confirmed or about to be.
    Healthy,
    /// On the new generation, kept.
    Live,
    Reverting,
    Reverted,
    /// Left on the new generation after a failure (`keep_partial`).
    Kept,
    Failed,
    Unreachable,
}

/// Where a host ended: the `state` of a deploy report and the `outcome` of its audit entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// On the new release.
    Live,
    /// Back on its previous generation (or stopped, if it had none).
    Reverted,
    /// Left on the new release by `keep_partial`.
    Kept,
    /// Never switched: still on its previous generation.
    Unchanged,
    Failed,
    /// Lost: not told how it ended (an unconfirmed switch reverts by itself).
    Unreachable,
}

impl Outcome {
    /// The word a deploy report uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Live => "live",
            Outcome::Reverted => "reverted",
            Outcome::Kept => "kept",
            Outcome::Unchanged => "unchanged",
            Outcome::Failed => "failed",
            Outcome::Unreachable => "unreachable",
        }
    }

    /// The word a host's audit log uses.
    pub fn audit(self) -> &'static str {
        match self {
            Outcome::Live => "ok",
            Outcome::Reverted => "reverted",
            Outcome::Kept => "kept-partial",
            Outcome::Unchanged => "not-started",
            Outcome::Failed | Outcome::Unreachable => "failed",
        }
    }
}

/// How a host leaves a generation it should not keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Revert {
    /// Roll back to the generation it had.
    Rollback { generation: u64 },
    /// It had none: stop the app.
    Stop,
}

/// The revert rule, for the fleet's all-or-back and for a host whose deployer never
/// confirmed: back to the previous generation, or stopped when there was none.
pub fn revert_to(previous: Option<u64>) -> Revert {
    match previous {
        Some(generation) => Revert::Rollback { generation },
        None => Revert::Stop,
    }
}

/// Something the executor saw, with the time it saw it (since the rollout began).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// The host holds the whole release.
    Sent {
        host: HostId,
    },
    SendFailed {
        host: HostId,
        error: String,
        unreachable: bool,
    },
    /// The answer to [`Action::CheckAvailable`]: which of the asked hosts are down.
    Availability {
        down: Vec<HostId>,
    },
    /// Time passed (the answer to [`Action::WaitUntil`]).
    Tick,
    /// The host's new generation is healthy and awaits its confirm.
    Healthy {
        host: HostId,
    },
    /// The host is on the new generation, `generation`, coming from `previous`.
    Live {
        host: HostId,
        generation: Option<u64>,
        previous: Option<u64>,
    },
    SwitchFailed {
        host: HostId,
        error: String,
        unreachable: bool,
    },
    Reverted {
        host: HostId,
    },
    RevertFailed {
        host: HostId,
        error: String,
    },
    /// The answer to [`Action::RunHook`]: `None` when it succeeded, else why not.
    HookRan {
        error: Option<String>,
    },
}

/// What the executor is to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send the release to these hosts (each reports `Sent` or `SendFailed`).
    Transfer { hosts: Vec<HostId> },
    /// Say whether these hosts are down (one `Availability`).
    CheckAvailable { hosts: Vec<HostId> },
    /// Report a `Tick` at `at` (these hosts wait for it).
    WaitUntil { at: Duration, hosts: Vec<HostId> },
    /// Run the release hook once, on `host` (one `HookRan`).
    RunHook { host: HostId },
    /// Switch batch `batch` (0-based, of `of`) to the new release, health-gated: each host
    /// reports `Healthy`, then `Live` once confirmed, or `SwitchFailed`.
    Switch {
        batch: usize,
        of: usize,
        hosts: Vec<HostId>,
    },
    /// Tell a healthy host to keep the new generation.
    Confirm { host: HostId },
    /// Return a host that switched (`Reverted` or `RevertFailed`).
    Revert { host: HostId, to: Revert },
    /// The rollout is over: every host's outcome is in [`Rollout::hosts`].
    Done { failure: Option<Failure> },
}

/// Why a rollout stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Failure {
    /// The release did not reach these hosts, so no host switched.
    Transfer { hosts: Vec<HostId> },
    /// Batch `batch` (0-based) did not start: `down` hosts outside it were down, and with
    /// its `size` hosts that is more than `max`.
    Unavailable {
        batch: usize,
        of: usize,
        down: Vec<HostId>,
        size: usize,
        max: usize,
    },
    /// These hosts of batch `batch` failed or were lost.
    Batch {
        batch: usize,
        of: usize,
        hosts: Vec<HostId>,
    },
    /// The release hook failed on `host`, so no host switched.
    Hook { host: HostId, error: String },
}

/// One host as the engine knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Host {
    pub state: HostState,
    /// The generation it had before (once it switched).
    pub previous: Option<u64>,
    /// The new generation (once live).
    pub generation: Option<u64>,
    /// It went live on the new release (and so is reverted on failure).
    pub switched: bool,
    pub error: Option<String>,
    /// When it reached its latest state.
    pub at: Duration,
}

impl Host {
    /// Whether it is on the generation it had (or never left it): not kept on the new
    /// release, not lost, not switched and left there by a revert that failed.
    pub fn is_back(&self) -> bool {
        match self.outcome() {
            Outcome::Reverted | Outcome::Unchanged => true,
            Outcome::Failed => !self.switched,
            Outcome::Live | Outcome::Kept | Outcome::Unreachable => false,
        }
    }

    /// Where it ended, once the rollout is done.
    pub fn outcome(&self) -> Outcome {
        match self.state {
            HostState::Live => Outcome::Live,
            HostState::Reverted => Outcome::Reverted,
            HostState::Kept => Outcome::Kept,
            HostState::Unreachable => Outcome::Unreachable,
            HostState::Waiting | HostState::Sent => Outcome::Unchanged,
            _ => Outcome::Failed,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Transferring,
    /// The release hook runs on one host.
    Hooking,
    /// Batch `n` waits for `at`.
    Pausing(usize, Duration),
    /// Batch `n` waits for the availability of the other hosts.
    Checking(usize),
    Switching(usize),
    Reverting,
    Done,
}

/// A rollout in progress.
#[derive(Debug, Clone)]
pub struct Rollout {
    plan: Plan,
    hosts: Vec<Host>,
    phase: Phase,
    failure: Option<Failure>,
    now: Duration,
}

impl Rollout {
    /// A rollout of a checked plan ([`Plan::check`]).
    pub fn new(plan: Plan) -> Rollout {
        debug_assert_eq!(plan.check(), Ok(()));
        let hosts = plan
            .hosts
            .iter()
            .map(|_| Host {
                state: HostState::Waiting,
                previous: None,
                generation: None,
                switched: false,
                error: None,
                at: Duration::ZERO,
            })
            .collect();
        Rollout {
            plan,
            hosts,
            phase: Phase::Transferring,
            failure: None,
            now: Duration::ZERO,
        }
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    pub fn failure(&self) -> Option<&Failure> {
        self.failure.as_ref()
    }

    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// The first actions: every host is sent the release.
    pub fn start(&mut self) -> Vec<Action> {
        if self.hosts.is_empty() {
            self.phase = Phase::Done;
            return vec![Action::Done { failure: None }];
        }
        for h in &mut self.hosts {
            h.state = HostState::Sending;
        }
        vec![Action::Transfer {
            hosts: (0..self.hosts.len()).collect(),
        }]
    }

    /// What follows from `obs`, seen at `now` (since the rollout began). An observation
    /// that does not fit the rollout's phase (a late answer, a host it did not ask) changes
    /// nothing.
    pub fn observe(&mut self, now: Duration, obs: Observation) -> Vec<Action> {
        self.now = self.now.max(now);
        let mut out = Vec::new();
        let switching = |r: &Rollout, b: usize, host: HostId| {
            r.in_batch(b, host)
                && r.hosts
                    .get(host)
                    .is_some_and(|h| matches!(h.state, HostState::Switching | HostState::Healthy))
        };
        match (&self.phase, obs) {
            (Phase::Transferring, Observation::Sent { host })
                if self.is(host, HostState::Sending) =>
            {
                self.set(host, HostState::Sent, None);
                self.after_transfer(&mut out);
            }
            // Whether lost or refused, a host without the release failed the deploy.
            (Phase::Transferring, Observation::SendFailed { host, error, .. })
                if self.is(host, HostState::Sending) =>
            {
                self.set(host, HostState::Failed, Some(error));
                self.after_transfer(&mut out);
            }
            (Phase::Hooking, Observation::HookRan { error: None }) => self.start_batch(0, &mut out),
            (Phase::Hooking, Observation::HookRan { error: Some(error) }) => {
                let host = self.plan.hook_on.unwrap_or_default();
                self.set(host, HostState::Failed, Some(error.clone()));
                self.fail(Failure::Hook { host, error }, &mut out);
            }
            (&Phase::Pausing(b, at), Observation::Tick) if self.now >= at => {
                self.check_batch(b, &mut out);
            }
            (&Phase::Pausing(b, at), Observation::Tick) => out.push(Action::WaitUntil {
                at,
                hosts: self.plan.batches[b].clone(),
            }),
            (&Phase::Checking(b), Observation::Availability { mut down }) => {
                let max = self.plan.max_unavailable.unwrap_or(usize::MAX);
                let size = self.plan.batches[b].len();
                down.sort_unstable();
                down.dedup();
                down.retain(|h| *h < self.hosts.len() && !self.plan.batches[b].contains(h));
                if down.len().saturating_add(size) > max {
                    let of = self.plan.batches.len();
                    let failure = Failure::Unavailable {
                        batch: b,
                        of,
                        down,
                        size,
                        max,
                    };
                    self.fail(failure, &mut out);
                } else {
                    self.switch_batch(b, &mut out);
                }
            }
            (&Phase::Switching(b), Observation::Healthy { host })
                if self.in_batch(b, host) && self.is(host, HostState::Switching) =>
            {
                self.set(host, HostState::Healthy, None);
                out.push(Action::Confirm { host });
            }
            (
                &Phase::Switching(b),
                Observation::Live {
                    host,
                    generation,
                    previous,
                },
            ) if switching(self, b, host) => {
                self.set(host, HostState::Live, None);
                let h = &mut self.hosts[host];
                h.switched = true;
                h.generation = generation;
                h.previous = previous;
                self.after_switch(b, &mut out);
            }
            (
                &Phase::Switching(b),
                Observation::SwitchFailed {
                    host,
                    error,
                    unreachable,
                },
            ) if switching(self, b, host) => {
                let state = if unreachable {
                    HostState::Unreachable
                } else {
                    HostState::Failed
                };
                self.set(host, state, Some(error));
                self.after_switch(b, &mut out);
            }
            (Phase::Reverting, Observation::Reverted { host })
                if self.is(host, HostState::Reverting) =>
            {
                self.set(host, HostState::Reverted, None);
                self.after_revert(&mut out);
            }
            (Phase::Reverting, Observation::RevertFailed { host, error })
                if self.is(host, HostState::Reverting) =>
            {
                let error = format!("could not revert: {error}");
                self.set(host, HostState::Failed, Some(error));
                self.after_revert(&mut out);
            }
            _ => {}
        }
        out
    }

    fn is(&self, host: HostId, state: HostState) -> bool {
        self.hosts.get(host).is_some_and(|h| h.state == state)
    }

    fn in_batch(&self, b: usize, host: HostId) -> bool {
        self.plan.batches[b].contains(&host)
    }

    fn set(&mut self, host: HostId, state: HostState, error: Option<String>) {
        let h = &mut self.hosts[host];
        h.state = state;
        h.at = self.now;
        if error.is_some() {
            h.error = error;
        }
    }

    fn after_transfer(&mut self, out: &mut Vec<Action>) {
        if self.hosts.iter().any(|h| h.state == HostState::Sending) {
            return;
        }
        let failed: Vec<HostId> = (0..self.hosts.len())
            .filter(|&i| self.hosts[i].state == HostState::Failed)
            .collect();
        if !failed.is_empty() {
            self.fail(Failure::Transfer { hosts: failed }, out);
        } else if let Some(host) = self.plan.hook_on.filter(|&h| h < self.hosts.len()) {
            self.phase = Phase::Hooking;
            out.push(Action::RunHook { host });
        } else {
            self.start_batch(0, out);
        }
    }

    fn start_batch(&mut self, b: usize, out: &mut Vec<Action>) {
        match self.plan.pause {
            Some(p) if b > 0 => {
                let at = self.now + p;
                self.phase = Phase::Pausing(b, at);
                out.push(Action::WaitUntil {
                    at,
                    hosts: self.plan.batches[b].clone(),
                });
            }
            _ => self.check_batch(b, out),
        }
    }

    fn check_batch(&mut self, b: usize, out: &mut Vec<Action>) {
        if self.plan.max_unavailable.is_some() {
            self.phase = Phase::Checking(b);
            out.push(Action::CheckAvailable {
                hosts: (0..self.hosts.len())
                    .filter(|h| !self.plan.batches[b].contains(h))
                    .collect(),
            });
        } else {
            self.switch_batch(b, out);
        }
    }

    fn switch_batch(&mut self, b: usize, out: &mut Vec<Action>) {
        self.phase = Phase::Switching(b);
        let hosts = self.plan.batches[b].clone();
        for &h in &hosts {
            self.set(h, HostState::Switching, None);
        }
        out.push(Action::Switch {
            batch: b,
            of: self.plan.batches.len(),
            hosts,
        });
    }

    fn after_switch(&mut self, b: usize, out: &mut Vec<Action>) {
        let batch = &self.plan.batches[b];
        if batch.iter().any(|&h| {
            matches!(
                self.hosts[h].state,
                HostState::Switching | HostState::Healthy
            )
        }) {
            return;
        }
        let failed: Vec<HostId> = batch
            .iter()
            .copied()
            .filter(|&h| self.hosts[h].state != HostState::Live)
            .collect();
        if !failed.is_empty() {
            self.fail(
                Failure::Batch {
                    batch: b,
                    of: self.plan.batches.len(),
                    hosts: failed,
                },
                out,
            );
        } else if b + 1 < self.plan.batches.len() {
            self.start_batch(b + 1, out);
        } else {
            self.done(out);
        }
    }

    /// The rollout stopped: all or back (or, with `keep_partial`, all or as far as it got).
    fn fail(&mut self, failure: Failure, out: &mut Vec<Action>) {
        self.failure = Some(failure);
        let switched: Vec<HostId> = (0..self.hosts.len())
            .filter(|&h| self.hosts[h].switched)
            .collect();
        if self.plan.keep_partial {
            for h in switched {
                self.set(h, HostState::Kept, None);
            }
            return self.done(out);
        }
        if switched.is_empty() {
            return self.done(out);
        }
        self.phase = Phase::Reverting;
        for h in switched {
            self.set(h, HostState::Reverting, None);
            out.push(Action::Revert {
                host: h,
                to: revert_to(self.hosts[h].previous),
            });
        }
    }

    fn after_revert(&mut self, out: &mut Vec<Action>) {
        if !self.hosts.iter().any(|h| h.state == HostState::Reverting) {
            self.done(out);
        }
    }

    fn done(&mut self, out: &mut Vec<Action>) {
        self.phase = Phase::Done;
        out.push(Action::Done {
            failure: self.failure.clone(),
        });
    }
}

#[cfg(test)]
mod tests;
