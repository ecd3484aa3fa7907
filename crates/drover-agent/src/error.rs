//! The agent's errors, by what went wrong: each names the app, generation, key or port at
//! fault; `hint()` and `details()` add the fix and extra lines, never part of the message.
//! The one conversion into the wire's `WireError` is here.

use std::time::Duration;

use drover_wire::WireError;

/// An error answered to a client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no app named `{app}` on this host")]
    UnknownApp { app: String },
    #[error("app `{app}` has no live generation")]
    NotDeployed { app: String },
    #[error("app `{app}` has no generation {generation}")]
    UnknownGeneration { app: String, generation: u64 },
    /// A generation whose release gc removed (it was outside `--keep`).
    #[error(
        "generation {generation} of `{app}` ran {version} ({release}), whose release gc has removed from this host's store"
    )]
    ReleaseCollected {
        app: String,
        generation: u64,
        version: String,
        release: String,
    },
    #[error("app `{app}` has no earlier live generation to roll back to")]
    NoEarlierGeneration { app: String },
    #[error("generation {generation} is already the live generation of `{app}`")]
    AlreadyLive { app: String, generation: u64 },
    #[error("generation {generation} of `{app}` is unreadable")]
    UnreadableGeneration { app: String, generation: u64 },
    /// A generation whose release id does not parse (its file was changed by hand).
    #[error("generation {generation} of `{app}`: {message}")]
    BadReleaseId {
        app: String,
        generation: u64,
        message: String,
    },
    #[error("release {app}@{version} has no process `{process}`")]
    UnknownProcess {
        app: String,
        version: String,
        process: String,
        /// The release's processes, for the hint.
        processes: Vec<String>,
    },
    /// `[app] user` or `[process.NAME] user` names no user of this host.
    #[error(
        "release {app}@{version}: key `{key}` names user `{user}`, which this host does not have"
    )]
    UnknownUser {
        app: String,
        version: String,
        key: String,
        user: String,
    },
    /// A user to run as, given to an agent that cannot switch users.
    #[error(
        "release {app}@{version}: key `{key}` names user `{user}`, but this agent runs as `{agent_user}` and cannot switch users"
    )]
    CannotSwitchUser {
        app: String,
        version: String,
        key: String,
        user: String,
        agent_user: String,
    },

    #[error("`{app}` has no canary in progress")]
    NoCanary { app: String },
    #[error("a canary of `{app}` (generation {generation}) is in progress")]
    CanaryInProgress { app: String, generation: u64 },
    #[error("--canary takes a percentage from 1 to 99, not {weight}")]
    CanaryOutOfRange { weight: u8 },
    #[error(
        "a canary cannot change `[proxy]` (its port or settings): the live proxy serves both generations"
    )]
    CanaryChangesProxy,
    /// Another deploy (or stop, start, rollback, ...) holds the app's deploy lock.
    #[error("app `{app}` is locked: a deploy by {holder} has been running since {}", fmt_time(*since))]
    Locked {
        app: String,
        holder: String,
        /// Unix time the holder took the lock.
        since: u64,
    },

    #[error("`{app}` has no proxy")]
    NoProxy { app: String },
    #[error("cannot serve `{app}` on port {port}: {why}")]
    PortClaimed { app: String, port: u16, why: String },
    #[error("`{app}`: {message}")]
    Certificate {
        app: String,
        message: String,
        hint: Option<String>,
    },
    #[error("cannot bind port {port} for the proxy of `{app}`: {err}")]
    PortInUse {
        app: String,
        port: u16,
        err: std::io::Error,
    },

    #[error("`{key}` is not a host config value of `{app}`")]
    NotHostConfig { app: String, key: String },
    #[error("`{key}` is not a valid environment variable name")]
    BadEnvKey { key: String },
    #[error("`{key}` is both a config value and a secret")]
    SecretShadowsValue { key: String },
    #[error("required config key `{key}` is not set (drover.toml [config] required)")]
    RequiredKeyUnset { app: String, key: String },
    /// A config value, a release's runtime or all the values together beyond
    /// `drover_config`'s bounds (its message, naming the key, and its hint).
    #[error("{message}")]
    Bounds {
        message: String,
        hint: Option<String>,
    },
    #[error(transparent)]
    Secrets(#[from] drover_config::secrets::SecretsError),
    #[error(transparent)]
    Store(#[from] drover_store::Error),
    /// An I/O error, with what the agent was doing (naming the file, app or instance).
    #[error("{what}: {err}")]
    Io { what: String, err: std::io::Error },

    #[error("release hook `{hook}` failed")]
    HookFailed { hook: String, details: Vec<String> },
    /// The health gate: an instance died before it was healthy.
    #[error("{instance} exited during start-up ({status})")]
    Exited {
        instance: String,
        status: String,
        details: Vec<String>,
    },
    /// The health gate: not every instance passed the health check in time. `details`: each
    /// one's probes in short, its last answer, whether it still runs, its last log lines.
    #[error("health check did not pass within {}", drover_config::Seconds(*timeout))]
    Unhealthy {
        timeout: Duration,
        details: Vec<String>,
        /// Where an instance listens instead of `$PORT`, when that is why (else the hint
        /// is to give it longer).
        port_hint: Option<String>,
    },
    /// A switch to a new generation that failed before it went live: the old one serves on.
    #[error("deploy of {app}@{version} (generation {generation}) failed: {cause}")]
    DeployFailed {
        app: String,
        version: String,
        generation: u64,
        cause: Box<Error>,
    },
    #[error("start of `{app}` failed: {cause}")]
    StartFailed { app: String, cause: Box<Error> },
    /// A fleet deploy the deployer did not confirm: the app went back.
    #[error("{reason}: `{app}` is back on {}", back_on.map_or("no generation (stopped)".to_string(), |g| format!("generation {g}")))]
    Unconfirmed {
        app: String,
        reason: String,
        /// The generation it is back on (None: it was stopped).
        back_on: Option<u64>,
    },

    #[error("bad request: {0}")]
    BadRequest(String),
    #[error(
        "process {client} has {open} connections to the agent open already (at most {max} per client)"
    )]
    ClientBusy {
        client: u32,
        open: usize,
        max: usize,
    },
    #[error("the agent serves {open} connections already (at most {max})")]
    AgentBusy { open: usize, max: usize },
    #[error("the agent cannot start a thread for this request: {err}")]
    NoThread { err: std::io::Error },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// `err` as an I/O error while doing `what` (naming the file, app or instance).
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |err| Error::Io { what, err }
    }

    /// A value out of `drover_config`'s bounds: its message and hint.
    pub(crate) fn bounds((message, hint): (String, Option<String>)) -> Error {
        Error::Bounds { message, hint }
    }

    /// A likely fix, shown as a `hint:` line under the error.
    pub fn hint(&self) -> Option<String> {
        let history = |app: &str| Some(format!("`drover history {app}` lists its generations"));
        let wait = || {
            Some(
                "wait for the other requests to finish (a `drover logs -f` holds one), then try again"
                    .to_string(),
            )
        };
        match self {
            Error::UnknownApp { .. } => Some("`drover status` lists the apps this host runs".into()),
            Error::ReleaseCollected { app, version, .. } => Some(format!(
                "bring it back: `drover unpack` an archive of it (`drover pack {app}@{version}` where it is stored), or build that version again and deploy it; `drover gc --keep N` keeps the releases of each app's N newest generations"
            )),
            Error::NotDeployed { .. } => Some("deploy it first: `drover deploy DIR`".into()),
            Error::UnknownGeneration { app, .. } | Error::NoEarlierGeneration { app } => {
                history(app)
            }
            Error::UnknownProcess { processes, .. } => {
                Some(format!("its processes: {}", processes.join(", ")))
            }
            Error::UnknownUser { user, .. } => Some(format!(
                "create it on the host (`useradd --system {user}`), or remove the key to run as {}",
                crate::confine::DEFAULT_USER
            )),
            Error::CannotSwitchUser { .. } => Some(
                "run the agent as root to run apps as other users, or remove the key".into(),
            ),
            Error::CanaryInProgress { app, .. } => Some(format!(
                "finish it first: `drover promote {app}` or `drover abort {app}`"
            )),
            Error::Locked { .. } => Some("wait for it to finish, then try again".into()),
            Error::NoProxy { .. } => Some("set `[proxy] port` in its drover.toml".into()),
            Error::Certificate { hint, .. } => hint.clone(),
            Error::PortClaimed { .. } => Some(
                "apps share a port only by distinct `[proxy] hosts` (or `path_prefix`): change them, or `[proxy] port`"
                    .into(),
            ),
            Error::PortInUse { port, err, .. }
                if err.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                Some(format!(
                    "port {port} is below 1024, which only root (or CAP_NET_BIND_SERVICE) may bind: run the agent as root, or pick a port from 1024 up"
                ))
            }
            Error::PortInUse { .. } => {
                Some("another program or app uses that port: change `[proxy] port`".into())
            }
            Error::NotHostConfig { app, .. } => Some(format!(
                "`drover config list {app}` shows each value's source"
            )),
            Error::SecretShadowsValue { key } => Some(format!(
                "remove one of them: `drover secrets rm {key}` or the [env] entry"
            )),
            Error::RequiredKeyUnset { app, key } => Some(format!(
                "set it in [env], in the environment's env, with `drover config set {app} {key}=...`, or as a secret"
            )),
            Error::Bounds { hint, .. } => hint.clone(),
            Error::Secrets(e) => e.hint(),
            Error::Store(e) => e.hint(),
            Error::Unhealthy { port_hint, .. } => port_hint.clone().or_else(|| {
                Some(
                    "if the app needs longer to start, raise `[health] timeout` in its drover.toml"
                        .into(),
                )
            }),
            Error::DeployFailed { cause, .. } | Error::StartFailed { cause, .. } => cause.hint(),
            Error::BadRequest(_) => {
                Some("the CLI and the agent may be different drover versions".into())
            }
            Error::ClientBusy { .. } | Error::AgentBusy { .. } => wait(),
            Error::NoThread { .. } => Some(
                "the host is out of threads or memory (a pids or process limit?): stop something, then try again"
                    .into(),
            ),
            Error::AlreadyLive { .. }
            | Error::UnreadableGeneration { .. }
            | Error::BadReleaseId { .. }
            | Error::NoCanary { .. }
            | Error::CanaryOutOfRange { .. }
            | Error::CanaryChangesProxy
            | Error::BadEnvKey { .. }
            | Error::Io { .. }
            | Error::HookFailed { .. }
            | Error::Exited { .. }
            | Error::Unconfirmed { .. } => None,
        }
    }

    /// Extra lines shown under the message: a hook's or an instance's last log lines, the
    /// last health answers.
    pub fn details(&self) -> &[String] {
        match self {
            Error::HookFailed { details, .. }
            | Error::Exited { details, .. }
            | Error::Unhealthy { details, .. } => details,
            Error::DeployFailed { cause, .. } | Error::StartFailed { cause, .. } => cause.details(),
            _ => &[],
        }
    }
}

/// The one way an agent error goes on the wire.
impl From<&Error> for WireError {
    fn from(e: &Error) -> WireError {
        WireError {
            message: e.to_string(),
            hint: e.hint(),
            details: e.details().to_vec(),
        }
    }
}

/// A lock's start, for its message: how long ago, and when.
fn fmt_time(secs: u64) -> String {
    let ago = crate::state::now().saturating_sub(secs);
    format!("{ago}s ago (unix time {secs})")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io() -> std::io::Error {
        std::io::Error::from(std::io::ErrorKind::AddrInUse)
    }

    fn deploy_failed(cause: Error) -> Error {
        Error::DeployFailed {
            app: "web".into(),
            version: "2.0".into(),
            generation: 7,
            cause: Box::new(cause),
        }
    }

    /// One of each variant.
    fn every_kind() -> Vec<Error> {
        let app = || "web".to_string();
        let details = || vec!["last health answer: web.0: connect: refused".to_string()];
        vec![
            Error::UnknownApp { app: app() },
            Error::NotDeployed { app: app() },
            Error::UnknownGeneration {
                app: app(),
                generation: 3,
            },
            Error::NoEarlierGeneration { app: app() },
            Error::AlreadyLive {
                app: app(),
                generation: 3,
            },
            Error::UnreadableGeneration {
                app: app(),
                generation: 3,
            },
            Error::BadReleaseId {
                app: app(),
                generation: 3,
                message: "`x` is not a hash".into(),
            },
            Error::UnknownProcess {
                app: app(),
                version: "1.0".into(),
                process: "wrk".into(),
                processes: vec!["web".into(), "worker".into()],
            },
            Error::UnknownUser {
                app: app(),
                version: "1.0".into(),
                key: "process.web.user".into(),
                user: "nosuch".into(),
            },
            Error::CannotSwitchUser {
                app: app(),
                version: "1.0".into(),
                key: "app.user".into(),
                user: "root".into(),
                agent_user: "nobody".into(),
            },
            Error::NoCanary { app: app() },
            Error::CanaryInProgress {
                app: app(),
                generation: 3,
            },
            Error::CanaryOutOfRange { weight: 100 },
            Error::CanaryChangesProxy,
            Error::Locked {
                app: app(),
                holder: "ann".into(),
                since: 0,
            },
            Error::NoProxy { app: app() },
            Error::PortClaimed {
                app: app(),
                port: 443,
                why: "a.test is claimed by app `other`".into(),
            },
            Error::Certificate {
                app: app(),
                message: "/etc/ssl/a.pem: the certificate has expired".into(),
                hint: Some("renew it".into()),
            },
            Error::PortInUse {
                app: app(),
                port: 8080,
                err: io(),
            },
            Error::NotHostConfig {
                app: app(),
                key: "K".into(),
            },
            Error::BadEnvKey { key: "1K".into() },
            Error::SecretShadowsValue { key: "K".into() },
            Error::RequiredKeyUnset {
                app: app(),
                key: "K".into(),
            },
            Error::bounds(("`K`: too big".into(), Some("keep it in a file".into()))),
            Error::Secrets(drover_config::secrets::SecretsError::NotRecipient {
                what: "secrets.toml".into(),
                key: "K".into(),
                recipient: "age1xyz".into(),
            }),
            Error::Store(drover_store::Error::NotFound("web@9".into())),
            Error::io("cannot stage the switch")(io()),
            Error::HookFailed {
                hook: "./migrate".into(),
                details: details(),
            },
            Error::Exited {
                instance: "web.0".into(),
                status: "exit status: 1".into(),
                details: details(),
            },
            Error::Unhealthy {
                timeout: Duration::from_secs(5),
                details: details(),
                port_hint: None,
            },
            Error::Unhealthy {
                timeout: Duration::from_secs(5),
                details: details(),
                port_hint: Some("web.0 listens on no TCP port, not on $PORT (41234)".into()),
            },
            deploy_failed(Error::NoProxy { app: app() }),
            Error::StartFailed {
                app: app(),
                cause: Box::new(Error::CanaryChangesProxy),
            },
            Error::Unconfirmed {
                app: app(),
                reason: "the deployer declined the new generation".into(),
                back_on: Some(2),
            },
            Error::BadRequest("unknown variant `Nope`".into()),
            Error::ClientBusy {
                client: 7,
                open: 16,
                max: 16,
            },
            Error::AgentBusy {
                open: 128,
                max: 128,
            },
            Error::NoThread { err: io() },
        ]
    }

    #[test]
    fn a_failed_health_gate_keeps_its_details_and_hint_on_the_wire() {
        let e = deploy_failed(Error::Unhealthy {
            timeout: Duration::from_secs(5),
            details: vec![
                "last health answer: web.0: connect: refused".into(),
                "last lines of web.0:".into(),
                "  web | listening".into(),
            ],
            port_hint: None,
        });
        let wire = WireError::from(&e);
        assert_eq!(
            wire.message,
            "deploy of web@2.0 (generation 7) failed: health check did not pass within 5s"
        );
        assert_eq!(wire.details.len(), 3);
        assert_eq!(wire.details[2], "  web | listening");
        assert!(
            wire.hint
                .as_deref()
                .is_some_and(|h| h.contains("[health] timeout")),
            "{wire:?}"
        );
        // An instance that died in start-up: its last lines, no hint to give.
        let e = Error::StartFailed {
            app: "web".into(),
            cause: Box::new(Error::Exited {
                instance: "web.0".into(),
                status: "exit status: 3".into(),
                details: vec!["last lines of web.0:".into(), "  web | boom".into()],
            }),
        };
        let wire = WireError::from(&e);
        assert_eq!(
            wire.message,
            "start of `web` failed: web.0 exited during start-up (exit status: 3)"
        );
        assert_eq!(wire.details, ["last lines of web.0:", "  web | boom"]);
        assert_eq!(wire.hint, None);
    }

    #[test]
    fn a_store_error_keeps_the_stores_message_and_hint() {
        let store = || drover_store::Error::Missing {
            kind: "chunk",
            id: "abc123".into(),
        };
        let wire = WireError::from(&Error::from(store()));
        assert_eq!(wire.message, store().to_string());
        assert_eq!(wire.hint, store().hint());
        assert!(wire.hint.is_some());
        // Also when it failed a deploy.
        let wire = WireError::from(&deploy_failed(store().into()));
        assert_eq!(
            wire.message,
            format!("deploy of web@2.0 (generation 7) failed: {}", store())
        );
        assert_eq!(wire.hint, store().hint());
        // The secrets file's too.
        let secrets = Error::Secrets(drover_config::secrets::SecretsError::NotRecipient {
            what: "secrets.toml".into(),
            key: "K".into(),
            recipient: "age1xyz".into(),
        });
        assert!(WireError::from(&secrets).hint.unwrap().contains("age1xyz"));
    }

    #[test]
    fn the_message_never_holds_the_hint_and_goes_on_the_wire_as_it_is() {
        let all = every_kind();
        let hinted = all.iter().filter(|e| e.hint().is_some()).count();
        assert!(hinted > all.len() / 2, "{hinted} of {}", all.len());
        for e in &all {
            let message = e.to_string();
            assert!(!message.contains("hint"), "{message}");
            if let Some(h) = e.hint() {
                assert!(!message.contains(&h), "{message} holds its hint {h}");
            }
            assert!(!message.contains('\n'), "{message}");
            let wire = WireError::from(e);
            assert_eq!(wire.message, message);
            assert_eq!(wire.hint, e.hint());
            assert_eq!(wire.details, e.details());
        }
    }

    #[test]
    fn a_busy_agent_says_how_many_and_when_to_try_again() {
        let e = Error::ClientBusy {
            client: 7,
            open: 16,
            max: 16,
        };
        assert_eq!(
            e.to_string(),
            "process 7 has 16 connections to the agent open already (at most 16 per client)"
        );
        assert!(e.hint().unwrap().starts_with("wait for the other requests"));
        assert_eq!(
            Error::CanaryOutOfRange { weight: 0 }.to_string(),
            "--canary takes a percentage from 1 to 99, not 0"
        );
    }
}
