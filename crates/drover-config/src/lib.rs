//! `drover.toml`: the app's own description of how to build and run it.
//! Parsing is strict (unknown keys are errors) and every error names the file, line and key.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub mod fleet;
#[doc(hidden)]
pub mod fuzzing;
pub mod secrets;
mod template;
pub use template::init_template;

/// The file name drover looks for in an app directory.
pub const FILE_NAME: &str = "drover.toml";

/// A parsed `drover.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub app: AppSection,
    #[serde(default)]
    pub build: BuildSection,
    #[serde(default)]
    pub process: BTreeMap<String, Process>,
    #[serde(default)]
    pub health: Option<Health>,
    #[serde(default)]
    pub proxy: Option<Proxy>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// What the merged configuration must hold.
    #[serde(default)]
    pub config: ConfigSchema,
    #[serde(default)]
    pub hooks: Hooks,
    /// `[depends] NAME = "app@version"` (or a release id): releases this one runs with,
    /// resolved at build time and pinned by id in the manifest.
    #[serde(default)]
    pub depends: BTreeMap<String, String>,
    /// `[provides]`: what the releases that depend on this one get.
    #[serde(default)]
    pub provides: Provides,
    #[serde(default)]
    pub environments: BTreeMap<String, Environment>,
    #[serde(default)]
    pub ssh: fleet::Ssh,
}

/// `[config] required = ["DATABASE_URL"]`: keys a deploy refuses to go without (from any
/// layer, or a secret).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigSchema {
    #[serde(default)]
    pub required: Vec<String>,
}

/// The part of `drover.toml` a release carries: how to run the app, not where.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Runtime {
    pub process: BTreeMap<String, Process>,
    pub health: Option<Health>,
    pub proxy: Option<Proxy>,
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub config: ConfigSchema,
    pub hooks: Hooks,
    /// `[app] user`: the user the app's processes and hooks run as (left out of the
    /// manifest when unset, so releases that do not set it keep their ids).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Provides::is_empty")]
    pub provides: Provides,
}

/// `[provides]` of a release: what each release depending on it gets. `path` entries
/// (directories relative to the release's tree) go first on their `PATH`; in an `env`
/// value, every `{tree}` is replaced by the release's materialised tree, the rest is kept
/// as written.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Provides {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub path: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

/// What `{tree}` in a `[provides] env` value stands for.
pub const TREE_PLACEHOLDER: &str = "{tree}";

impl Provides {
    pub fn is_empty(&self) -> bool {
        self.path.is_empty() && self.env.is_empty()
    }

    /// Each `path` entry a relative path inside the tree, each `env` name a valid one.
    pub fn check(&self) -> Result<(), (String, Option<String>)> {
        for p in &self.path {
            let path = Path::new(p);
            if p.is_empty()
                || path.is_absolute()
                || path
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                return Err((
                    format!("key `provides.path`: `{p}` must be a directory inside the release"),
                    Some("write it relative to the release's top, e.g. \"bin\"".into()),
                ));
            }
        }
        for k in self.env.keys() {
            if !valid_env_name(k) {
                return Err((
                    format!("key `provides.env.{k}`: `{k}` is not a valid variable name"),
                    None,
                ));
            }
        }
        check_env_values(&self.env, |k| format!("key `provides.env.{k}`"))
    }
}

/// The variable a dependency's tree is named by: `DROVER_DEP_` and the name upper-cased,
/// `-` as `_`.
pub fn dep_variable(name: &str) -> String {
    format!(
        "{DEP_VARIABLE_PREFIX}{}",
        name.to_ascii_uppercase().replace('-', "_")
    )
}

/// What every dependency's tree variable starts with.
pub const DEP_VARIABLE_PREFIX: &str = "DROVER_DEP_";

fn valid_env_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The most instances one process may ask for (`[process.NAME] instances`).
pub const MAX_INSTANCES: u32 = 256;

/// The largest config value (one `[env]` entry, from any layer), in bytes.
pub const MAX_ENV_VALUE: usize = 64 << 10;

/// The largest merged environment of a generation (keys and values), in bytes.
pub const MAX_ENV_TOTAL: usize = 256 << 10;

/// Sizes in messages: `64 KiB`.
fn kib(n: usize) -> String {
    format!("{} KiB", n >> 10)
}

/// Checks one config layer's values against `MAX_ENV_VALUE`; `key_of` names a key as the
/// message shows it (``key `env.NAME` ``, `` `NAME` (host config) ``).
pub fn check_env_values<'a>(
    layer: impl IntoIterator<Item = (&'a String, &'a String)>,
    key_of: impl Fn(&str) -> String,
) -> Result<(), (String, Option<String>)> {
    for (k, v) in layer {
        if v.len() > MAX_ENV_VALUE {
            return Err((
                format!(
                    "{}: the value is {} bytes, more than the {} a config value may hold",
                    key_of(k),
                    v.len(),
                    kib(MAX_ENV_VALUE)
                ),
                Some(
                    "keep large data in a file of the release and put its path in the value".into(),
                ),
            ));
        }
    }
    Ok(())
}

/// Checks a merged environment against `MAX_ENV_TOTAL`.
pub fn check_env_total(env: &BTreeMap<String, String>) -> Result<(), (String, Option<String>)> {
    let total: usize = env.iter().map(|(k, v)| k.len() + v.len()).sum();
    if total > MAX_ENV_TOTAL {
        return Err((
            format!(
                "the config values add up to {total} bytes, more than the {} a generation may hold",
                kib(MAX_ENV_TOTAL)
            ),
            Some("keep large data in a file of the release and put its path in a value".into()),
        ));
    }
    Ok(())
}

impl Runtime {
    /// The bounds on values that the types do not give: ports, instance counts, config
    /// value sizes. Messages name the key; the caller names the file or release.
    pub fn check_bounds(&self) -> Result<(), (String, Option<String>)> {
        let own = self
            .process
            .iter()
            .filter_map(|(name, p)| Some((format!("process.{name}.user"), p.user.as_deref()?)));
        let app = self.user.as_deref().map(|u| ("app.user".to_string(), u));
        for (key, user) in app.into_iter().chain(own) {
            if !valid_user_name(user) {
                return Err((
                    format!("key `{key}` is {user:?}: not a user name"),
                    Some(
                        "name a user of the host (letters, digits, `_`, `-`, `.`), or \"root\""
                            .into(),
                    ),
                ));
            }
        }
        for (name, p) in &self.process {
            if p.instances == 0 || p.instances > MAX_INSTANCES {
                return Err((
                    format!(
                        "key `process.{name}.instances` is {}: it must be from 1 to {MAX_INSTANCES}",
                        p.instances
                    ),
                    (p.instances == 0).then_some("use `drover stop APP` to stop an app".into()),
                ));
            }
        }
        if let Some(Seconds(interval)) = self.health.as_ref().and_then(|h| h.interval)
            && interval.is_zero()
        {
            return Err((
                "key `health.interval` is 0: live instances would be probed without a pause".into(),
                Some(
                    "use a duration such as \"10s\" (how often each live instance is probed)"
                        .into(),
                ),
            ));
        }
        if let Some(proxy) = &self.proxy
            && proxy.port == 0
        {
            return Err((
                "key `proxy.port` is 0: it must be a port from 1 to 65535".into(),
                Some("the proxy holds this port for the app's whole life: pick a fixed one".into()),
            ));
        }
        if let Some(proxy) = &self.proxy {
            check_proxy_hosts(proxy)?;
        }
        check_env_values(&self.env, |k| format!("key `env.{k}`"))?;
        check_env_total(&self.env)
    }
}

/// `[proxy] hosts`, `path_prefix` and `default`: valid names, each once; a prefix and
/// `default` only beside hosts.
fn check_proxy_hosts(proxy: &Proxy) -> Result<(), (String, Option<String>)> {
    let mut seen = std::collections::BTreeSet::new();
    for h in &proxy.hosts {
        if !valid_host_name(h) {
            return Err((
                format!("key `proxy.hosts` has {h:?}: not a host name"),
                Some(
                    "write lowercase names such as \"app.example.com\" or \"*.example.com\", without scheme, port or path"
                        .into(),
                ),
            ));
        }
        if !seen.insert(h) {
            return Err((format!("key `proxy.hosts` names {h:?} twice"), None));
        }
    }
    if let Some(p) = &proxy.path_prefix
        && (!p.starts_with('/')
            || p.len() < 2
            || p.ends_with('/')
            || p.contains(['?', '#', ' ', '%']))
    {
        return Err((
            format!("key `proxy.path_prefix` is {p:?}: not a path prefix"),
            Some("write a path such as \"/api\" (a leading `/`, no trailing one)".into()),
        ));
    }
    match (&proxy.tls, &proxy.acme) {
        (Some(Tls::Acme(_)), None) => {
            return Err((
                "key `proxy.tls` is \"acme\" but there is no [proxy.acme]".into(),
                Some("add [proxy.acme] with directory = \"https://...\" (and email)".into()),
            ));
        }
        (Some(Tls::Acme(_)), Some(_)) if proxy.hosts.is_empty() => {
            return Err((
                "key `proxy.tls` is \"acme\" but `proxy.hosts` is empty".into(),
                Some("name the hosts to order certificates for".into()),
            ));
        }
        (Some(Tls::Acme(_)), Some(a))
            if !(a.directory.starts_with("https://") || a.directory.starts_with("http://")) =>
        {
            return Err((
                format!("key `proxy.acme.directory` is {:?}: not a URL", a.directory),
                Some("write the directory's https:// URL".into()),
            ));
        }
        (None, _) if proxy.http_port.is_some() || proxy.redirect_http.is_some() => {
            let key = if proxy.http_port.is_some() {
                "http_port"
            } else {
                "redirect_http"
            };
            return Err((
                format!("key `proxy.{key}` needs `proxy.tls`"),
                Some("without TLS, `proxy.port` is the plain-HTTP port".into()),
            ));
        }
        _ => {}
    }
    if proxy.tls.is_some() && proxy.http_port() == proxy.port {
        return Err((
            format!(
                "key `proxy.http_port` is {}, the same as `proxy.port`",
                proxy.http_port()
            ),
            Some("TLS and plain HTTP need two ports (443 and 80, say)".into()),
        ));
    }
    if proxy.hosts.is_empty() && (proxy.path_prefix.is_some() || proxy.default) {
        let key = if proxy.default {
            "default"
        } else {
            "path_prefix"
        };
        return Err((
            format!("key `proxy.{key}` needs `proxy.hosts`"),
            Some("an app without hosts has its port to itself: name the hosts it answers".into()),
        ));
    }
    Ok(())
}

/// A user name as `useradd` takes it: 1 to 32 letters, digits, `_`, `-` or `.`, not
/// starting with `-` (nothing a command line or a passwd line could read otherwise).
pub fn valid_user_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

impl Config {
    pub fn runtime(&self) -> Runtime {
        Runtime {
            process: self.process.clone(),
            health: self.health.clone(),
            proxy: self.proxy.clone(),
            env: self.env.clone(),
            config: self.config.clone(),
            hooks: self.hooks.clone(),
            provides: self.provides.clone(),
            user: self.app.user.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AppSection {
    pub name: String,
    #[serde(default)]
    pub version: Option<String>,
    /// The user the app runs as (a user name, or "root").
    #[serde(default)]
    pub user: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BuildSection {
    /// Shell command run (with `sh -c`) in a scratch copy of the app directory.
    #[serde(default)]
    pub command: Option<String>,
    /// Directory, relative to the app directory, that becomes the release.
    #[serde(default)]
    pub output: Option<String>,
    /// Top-level names left out of the release (besides `.git`).
    #[serde(default)]
    pub exclude: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Process {
    pub command: String,
    #[serde(default)]
    pub http: bool,
    #[serde(default = "one")]
    pub instances: u32,
    /// How long a graceful stop waits after `stop_signal` before SIGKILL.
    #[serde(default = "default_stop_timeout")]
    pub stop_timeout: Seconds,
    /// The user this process runs as, instead of `[app] user` (left out of the manifest
    /// when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The signal that asks the process to stop (default TERM): a worker that finishes its
    /// job on, say, USR1 gets USR1, then `stop_timeout` to exit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<StopSignal>,
}

/// The signals a process may be asked to stop with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum StopSignal {
    #[serde(rename = "TERM", alias = "SIGTERM")]
    Term,
    #[serde(rename = "INT", alias = "SIGINT")]
    Int,
    #[serde(rename = "QUIT", alias = "SIGQUIT")]
    Quit,
    #[serde(rename = "HUP", alias = "SIGHUP")]
    Hup,
    #[serde(rename = "USR1", alias = "SIGUSR1")]
    Usr1,
    #[serde(rename = "USR2", alias = "SIGUSR2")]
    Usr2,
    #[serde(rename = "WINCH", alias = "SIGWINCH")]
    Winch,
}

fn one() -> u32 {
    1
}

fn default_stop_timeout() -> Seconds {
    Seconds(Duration::from_secs(10))
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// HTTP path probed with GET on each instance's `$PORT`; must answer 2xx.
    #[serde(default)]
    pub path: Option<String>,
    /// A command run in the release directory; exit 0 means healthy.
    #[serde(default)]
    pub command: Option<String>,
    #[serde(default = "default_health_timeout")]
    pub timeout: Seconds,
    /// How often a live instance is probed once it passed its health check (default
    /// `DEFAULT_HEALTH_INTERVAL`; left out of the manifest when unset, so releases that do
    /// not set it keep their ids). The health check itself probes as fast as it can.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Seconds>,
}

/// How often a live instance is probed when `[health] interval` is not set.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(10);

impl Health {
    /// `[health] interval`, or its default.
    pub fn interval(&self) -> Duration {
        self.interval.map_or(DEFAULT_HEALTH_INTERVAL, |s| s.0)
    }
}

fn default_health_timeout() -> Seconds {
    Seconds(Duration::from_secs(30))
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Proxy {
    /// The app's public port on each host, held by drover's proxy for the app's whole life.
    pub port: u16,
    /// `rolling` (old instances drain and stop after the switch) or `blue-green` (old
    /// instances stay warm for `keep_warm`, so a rollback is an instant switch).
    #[serde(default)]
    pub strategy: Strategy,
    #[serde(default = "default_keep_warm")]
    pub keep_warm: Seconds,
    /// How long old instances may finish in-flight requests before they are stopped.
    #[serde(default = "default_drain")]
    pub drain_timeout: Seconds,
    #[serde(default = "default_request_timeout")]
    pub request_timeout: Seconds,
    /// Largest request body, in bytes.
    #[serde(default = "default_max_body")]
    pub max_body: u64,
    /// A client must send its request head within this (slowloris guard).
    #[serde(default = "default_header_timeout")]
    pub header_timeout: Seconds,
    // The keys below are left out of a release's manifest when unset, so that releases of
    // apps that do not set them keep their ids; their defaults are the proxy's own.
    /// A client connection with no request in flight is closed after this (default 60s).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "positive"
    )]
    pub idle_timeout: Option<Seconds>,
    /// A request body must arrive whole within this, or the client gets 408 (default 60s).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "positive"
    )]
    pub body_timeout: Option<Seconds>,
    /// Client connections at most (default: half of the file descriptors the agent's proxy
    /// may use); one more closes the longest idle one, or gets 503 if all are busy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<std::num::NonZeroUsize>,
    /// Host names the app answers on `port` (`app.example.com`, `*.example.com`): apps that
    /// name hosts share the port, each request going to the app that claims its Host.
    /// Without hosts, the app holds the port alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// With `hosts`: only requests whose path is this prefix or under it (`/api`: `/api`
    /// and `/api/...`), the longest prefix winning among the apps of one host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// With `hosts`: this app also gets requests for a host no app on the port claims
    /// (without one such app, they get 404).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub default: bool,
    /// TLS on `port`: `{ cert = "PATH", key = "PATH" }` (PEM files on the host, watched and
    /// reloaded) or `"acme"` (ordered from `[proxy.acme]`). Plain HTTP then goes to
    /// `http_port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
    /// With `tls`: the plain-HTTP port (default 80), which answers 308 to https (but the
    /// ACME challenges) unless `redirect_http = false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_http: Option<bool>,
    /// With `tls = "acme"`: where certificates are ordered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acme: Option<Acme>,
}

/// `[proxy] tls`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Tls {
    /// A certificate chain and its key, PEM files on the host.
    Files { cert: PathBuf, key: PathBuf },
    /// `"acme"`: certificates ordered for the app's hosts.
    Acme(AcmeMode),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AcmeMode {
    Acme,
}

impl<'de> Deserialize<'de> for Tls {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Files {
            cert: PathBuf,
            key: PathBuf,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Str(String),
            Files(Files),
        }
        let what = "write `tls = { cert = \"PATH\", key = \"PATH\" }` (PEM files on the host) or `tls = \"acme\"`";
        match Raw::deserialize(d)
            .map_err(|_| serde::de::Error::custom(format!("not a TLS setting: {what}")))?
        {
            Raw::Str(s) if s == "acme" => Ok(Tls::Acme(AcmeMode::Acme)),
            Raw::Str(s) => Err(serde::de::Error::custom(format!(
                "`{s}` is not a TLS setting: {what}"
            ))),
            Raw::Files(f) => Ok(Tls::Files {
                cert: f.cert,
                key: f.key,
            }),
        }
    }
}

/// `[proxy.acme]`: an ACME directory (Let's Encrypt's, or a private one).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Acme {
    /// The directory URL, e.g. `https://acme-v02.api.letsencrypt.org/directory`.
    pub directory: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// PEM roots to trust for the directory's own TLS (a private ACME server's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
}

impl Proxy {
    /// The plain-HTTP port beside a TLS one.
    pub fn http_port(&self) -> u16 {
        self.http_port.unwrap_or(80)
    }

    /// Does the plain-HTTP port answer 308 to https?
    pub fn redirects(&self) -> bool {
        self.redirect_http.unwrap_or(true)
    }
}

/// A host name as `[proxy] hosts` takes it: lowercase DNS labels (letters, digits, `-`),
/// dot-separated, at most 253 bytes, optionally under one leading `*.` wildcard label.
pub fn valid_host_name(name: &str) -> bool {
    let bare = name.strip_prefix("*.").unwrap_or(name);
    !bare.is_empty()
        && name.len() <= 253
        && bare.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// A duration that must be more than zero.
fn positive<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Seconds>, D::Error> {
    let s = Seconds::deserialize(d)?;
    if s.0.is_zero() {
        return Err(serde::de::Error::custom(ZERO_TIMEOUT.0));
    }
    Ok(Some(s))
}

fn default_header_timeout() -> Seconds {
    Seconds(Duration::from_secs(10))
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    #[default]
    Rolling,
    BlueGreen,
}

fn default_keep_warm() -> Seconds {
    Seconds(Duration::from_secs(300))
}

fn default_drain() -> Seconds {
    Seconds(Duration::from_secs(30))
}

fn default_request_timeout() -> Seconds {
    Seconds(Duration::from_secs(60))
}

fn default_max_body() -> u64 {
    16 << 20
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    /// Runs once per deploy, before any switch (migrations).
    #[serde(default)]
    pub release: Option<String>,
    /// Fleet deploys: the role on whose first host the release hook runs (default: the
    /// environment's first host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_on: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Environment {
    /// `[user@]host[:port]`: a fleet deploy over ssh. Without hosts, the environment is a
    /// config layer for deploys on this machine.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// How the hosts switch: `{ kind = "rolling", batch = 1 }`, `"25%"`, `all-at-once`,
    /// `canary`.
    #[serde(default)]
    pub strategy: fleet::Rollout,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Named roles: a config layer above the environment's (`[environments.NAME.roles.ROLE]`).
    #[serde(default)]
    pub roles: BTreeMap<String, Role>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Role {
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The environment's hosts that play this role (its layer applies on them).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// The processes (`[process.NAME]`) this role's hosts run; empty: all of them.
    #[serde(default)]
    pub processes: Vec<String>,
}

/// A duration written as `"30s"`, `"500ms"`, `"2m"`, `"1h"` or a bare number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seconds(pub Duration);

impl Seconds {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("`{s}` {}", NOT_A_DURATION.0))?;
        let secs = |per: u64| {
            n.checked_mul(per)
                .map(Duration::from_secs)
                .ok_or_else(|| format!("`{s}` is too long a duration"))
        };
        let d = match unit.trim() {
            "" | "s" => Duration::from_secs(n),
            "ms" => Duration::from_millis(n),
            "m" => secs(60)?,
            "h" => secs(3600)?,
            other => {
                return Err(format!("`{other}` {} `{s}`", NOT_A_UNIT.0));
            }
        };
        // Longer would overflow a deadline (`Instant + d`) somewhere; no wait needs a year.
        if d > Seconds::MAX {
            return Err(format!(
                "`{s}` is too long a duration (at most 366 days, \"8784h\")"
            ));
        }
        Ok(Seconds(d))
    }

    /// The longest duration any setting takes.
    pub const MAX: Duration = Duration::from_secs(366 * 24 * 3600);
}

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl Serialize for Seconds {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(Seconds(Duration::from_secs(n))),
            Raw::Str(s) => Seconds::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

/// Why a `drover.toml` could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {err}", path.display())]
    Read { path: PathBuf, err: std::io::Error },
    #[error("{}: {message}", path.display())]
    Invalid {
        path: PathBuf,
        message: String,
        hint: Option<String>,
    },
}

impl ConfigError {
    /// The likely fix, where there is one (never part of the message).
    pub fn hint(&self) -> Option<String> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Invalid { hint, .. } => hint.clone(),
        }
    }
}

impl Config {
    /// Reads `drover.toml` from an app directory.
    pub fn load_dir(dir: &Path) -> Result<Config, ConfigError> {
        Self::load(&dir.join(FILE_NAME))
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError::Read {
            path: path.to_owned(),
            err,
        })?;
        Self::parse(&text, path)
    }

    /// Parses the text of a `drover.toml`; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let message = e.to_string().trim_end().to_string();
            let hint = did_you_mean(&message).or_else(|| value_fix(&message));
            ConfigError::Invalid {
                path: path.to_owned(),
                message: format!("invalid drover.toml\n{message}"),
                hint,
            }
        })?;
        config
            .validate()
            .map_err(|(message, hint)| ConfigError::Invalid {
                path: path.to_owned(),
                message,
                hint,
            })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), (String, Option<String>)> {
        if !valid_name(&self.app.name) {
            return Err((
                format!(
                    "key `app.name`: `{}` is not a valid app name",
                    self.app.name
                ),
                Some("use letters, digits, `-` and `_`, starting with a letter or digit".into()),
            ));
        }
        if let Some(v) = &self.app.version
            && !valid_version(v)
        {
            return Err((
                format!("key `app.version`: `{v}` is not a valid version"),
                Some("use letters, digits and `.-_+`, at most 64 characters".into()),
            ));
        }
        if let Some(out) = &self.build.output {
            let p = Path::new(out);
            if p.is_absolute()
                || p.components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                return Err((
                    format!("key `build.output`: `{out}` must be a path inside the app directory"),
                    None,
                ));
            }
        }
        for (name, p) in &self.process {
            if !valid_name(name) {
                return Err((
                    format!("key `process.{name}`: `{name}` is not a valid process name"),
                    None,
                ));
            }
            if p.command.trim().is_empty() {
                return Err((format!("key `process.{name}.command` is empty"), None));
            }
        }
        self.runtime().check_bounds()?;
        self.provides.check()?;
        for (name, spec) in &self.depends {
            if !valid_name(name) {
                return Err((
                    format!("key `depends.{name}`: `{name}` is not a valid dependency name"),
                    Some(
                        "use letters, digits, `-` and `_`, starting with a letter or digit".into(),
                    ),
                ));
            }
            if spec.trim().is_empty() {
                return Err((
                    format!("key `depends.{name}` is empty"),
                    Some(format!(
                        "write `{name} = \"{name}@VERSION\"` or a release id"
                    )),
                ));
            }
        }
        if let Some(h) = &self.health {
            match (&h.path, &h.command) {
                (None, None) => {
                    return Err((
                        "key `health`: set either `path` (HTTP GET) or `command`".into(),
                        None,
                    ));
                }
                (Some(_), Some(_)) => {
                    return Err((
                        "key `health`: set only one of `path` and `command`".into(),
                        None,
                    ));
                }
                (Some(p), None) if !p.starts_with('/') => {
                    return Err((
                        format!("key `health.path`: `{p}` must start with `/`"),
                        Some(format!("write \"/{p}\"")),
                    ));
                }
                _ => {}
            }
            if h.path.is_some() && !self.process.values().any(|p| p.http) {
                return Err((
                    "key `health.path` needs a process with `http = true` to probe".into(),
                    Some("add `http = true` to the web process, or use `health.command`".into()),
                ));
            }
        }
        for key in self.env.keys() {
            if !valid_env_key(key) {
                return Err((
                    format!("key `env.{key}` is not a valid environment variable name"),
                    None,
                ));
            }
        }
        for key in &self.config.required {
            if !valid_env_key(key) {
                return Err((
                    format!(
                        "key `config.required`: `{key}` is not a valid environment variable name"
                    ),
                    None,
                ));
            }
        }
        if self.ssh.parallel == 0 {
            return Err((
                "key `ssh.parallel` must be at least 1".into(),
                Some("it is how many hosts are worked on at once".into()),
            ));
        }
        for (name, e) in &self.environments {
            let mut seen = std::collections::BTreeSet::new();
            for h in &e.hosts {
                let spec = fleet::HostSpec::checked(h).map_err(|m| {
                    (
                        format!("key `environments.{name}.hosts`: {m}"),
                        Some(fleet::HostSpec::HINT.into()),
                    )
                })?;
                if !seen.insert(spec) {
                    return Err((
                        format!("key `environments.{name}.hosts`: `{h}` is listed twice"),
                        None,
                    ));
                }
            }
            let mut role_of = BTreeMap::new();
            for (role, r) in &e.roles {
                for p in &r.processes {
                    if !self.process.contains_key(p) {
                        return Err((
                            format!(
                                "key `environments.{name}.roles.{role}.processes`: there is no `[process.{p}]`"
                            ),
                            Some(format!(
                                "processes: {}",
                                self.process.keys().cloned().collect::<Vec<_>>().join(", ")
                            )),
                        ));
                    }
                }
                for h in &r.hosts {
                    if !e.hosts.contains(h) {
                        return Err((
                            format!(
                                "key `environments.{name}.roles.{role}.hosts`: `{h}` is not one of the environment's hosts"
                            ),
                            Some(format!("add it to `environments.{name}.hosts`")),
                        ));
                    }
                    if let Some(other) = role_of.insert(h.clone(), role.clone()) {
                        return Err((
                            format!(
                                "key `environments.{name}.roles`: host `{h}` is in both `{other}` and `{role}`"
                            ),
                            None,
                        ));
                    }
                }
            }
            check_env_values(&e.env, |k| format!("key `environments.{name}.env.{k}`"))?;
            for (role, r) in &e.roles {
                check_env_values(&r.env, |k| {
                    format!("key `environments.{name}.roles.{role}.env.{k}`")
                })?;
            }
            for key in e.env.keys() {
                if !valid_env_key(key) {
                    return Err((
                        format!(
                            "key `environments.{name}.env.{key}` is not a valid environment variable name"
                        ),
                        None,
                    ));
                }
            }
        }
        Ok(())
    }
}

/// App and process names: used in paths and on the command line.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

pub fn valid_version(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+'))
}

pub fn valid_env_key(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Messages of values that do not read (raised while toml reads them, so they reach
/// `Config::parse` inside toml's message, never as an error of their own), each with its
/// fix: `value_fix` finds it for the hint.
const ZERO_TIMEOUT: (&str, &str) = (
    "a timeout of 0 would close every connection at once",
    "use a duration such as \"60s\"",
);
const NOT_A_UNIT: (&str, &str) = (
    "is not a duration unit in",
    "the units are ms, s, m and h: \"500ms\", \"30s\", \"2m\", \"1h\"",
);
const NOT_A_DURATION: (&str, &str) = (
    "is not a duration",
    "write a duration such as \"30s\", \"500ms\" or \"2m\"",
);

/// The fix for a value toml could not read because of one of our own checks (its message
/// is the last line of toml's, under the line it quotes).
fn value_fix(message: &str) -> Option<String> {
    let last = message.lines().last()?;
    [ZERO_TIMEOUT, NOT_A_UNIT, NOT_A_DURATION]
        .iter()
        .find(|(m, _)| last.contains(m))
        .map(|(_, fix)| fix.to_string())
}

/// Turns toml's "unknown field `x`, expected one of `a`, `b`" into a "did you mean" hint.
fn did_you_mean(message: &str) -> Option<String> {
    let rest = message.split("unknown field `").nth(1)?;
    let (unknown, rest) = rest.split_once('`')?;
    let candidates: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
    let best = candidates
        .iter()
        .map(|c| (strsim::jaro_winkler(unknown, c), *c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))?;
    Some(format!("did you mean `{}`?", best.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, String> {
        // The message, then its hint, as the binary prints them.
        Config::parse(s, Path::new("app/drover.toml")).map_err(|e| match e.hint() {
            Some(h) => format!("{e}\nhint: {h}"),
            None => e.to_string(),
        })
    }

    #[test]
    fn depends_and_provides_are_checked() {
        let base = "[app]\nname = \"a\"\n";
        let ok = parse(&format!(
            "{base}[depends]\nnode = \"node@24.1.0\"\n[provides]\npath = [\"bin\"]\nenv = {{ NODE_HOME = \"{{tree}}\" }}\n"
        ))
        .unwrap();
        assert_eq!(ok.depends["node"], "node@24.1.0");
        assert_eq!(ok.runtime().provides.path, ["bin"]);
        let e = parse(&format!("{base}[provides]\npath = [\"../bin\"]\n")).unwrap_err();
        assert!(e.contains("key `provides.path`: `../bin`"), "{e}");
        let e = parse(&format!("{base}[provides]\nenv = {{ \"A-B\" = \"x\" }}\n")).unwrap_err();
        assert!(e.contains("provides.env.A-B"), "{e}");
        let e = parse(&format!("{base}[depends]\n\"no.dots\" = \"x@1\"\n")).unwrap_err();
        assert!(e.contains("key `depends.no.dots`"), "{e}");
        assert_eq!(dep_variable("my-node"), "DROVER_DEP_MY_NODE");
    }

    #[test]
    fn fleet_keys_are_checked() {
        let base = "[app]\nname = \"a\"\n[process.web]\ncommand = \"x\"\n";
        let e = parse(&format!("{base}[ssh]\nparallel = 0\n")).unwrap_err();
        assert!(e.contains("ssh.parallel"), "{e}");
        let e = parse(&format!("{base}[environments.p]\nhosts = [\"a b\"]\n")).unwrap_err();
        assert!(e.contains("environments.p.hosts"), "{e}");
        let e = parse(&format!("{base}[environments.p]\nhosts = [\"a\", \"a\"]\n")).unwrap_err();
        assert!(e.contains("listed twice"), "{e}");
        let e = parse(&format!(
            "{base}[environments.p]\nhosts = [\"a\"]\n[environments.p.roles.r]\nhosts = [\"b\"]\n"
        ))
        .unwrap_err();
        assert!(e.contains("not one of the environment's hosts"), "{e}");
        let e = parse(&format!(
            "{base}[environments.p]\nhosts = [\"a\"]\nstrategy = {{ kind = \"rolling\", batch = \"0%\" }}\n"
        ))
        .unwrap_err();
        assert!(e.contains("not a host count"), "{e}");
        let e = parse(&format!(
            "{base}[environments.p]\nhosts = [\"a\"]\nstrategy = {{ kind = \"blue\" }}\n"
        ))
        .unwrap_err();
        assert!(e.contains("unknown variant `blue`"), "{e}");
        let ok = parse(&format!(
            "{base}[environments.p]\nhosts = [\"a\", \"u@b:2222\"]\nstrategy = {{ kind = \"canary\", hosts = 1, pause = \"5m\" }}\n"
        ))
        .unwrap();
        assert_eq!(
            ok.environments["p"].strategy.batches(2),
            vec![vec![0], vec![1]]
        );
    }

    #[test]
    fn user_keys_name_users_and_stay_out_of_the_manifest_unset() {
        let base = "[app]\nname = \"a\"\n";
        let c = parse(&format!(
            "{base}user = \"www-data\"\n[process.web]\ncommand = \"x\"\nuser = \"root\"\n[process.w]\ncommand = \"y\"\n"
        ))
        .unwrap();
        let rt = c.runtime();
        assert_eq!(rt.user.as_deref(), Some("www-data"));
        assert_eq!(rt.process["web"].user.as_deref(), Some("root"));
        assert_eq!(rt.process["w"].user, None);
        let e = parse(&format!(
            "{base}[process.web]\ncommand = \"x\"\nuser = \"a b\"\n"
        ))
        .unwrap_err();
        assert!(
            e.contains("`process.web.user`") && e.contains("\"a b\""),
            "{e}"
        );
        let e = parse(&format!("{base}user = \"-x\"\n")).unwrap_err();
        assert!(e.contains("`app.user`") && e.contains("hint:"), "{e}");
        // Unset, neither key is in the runtime a manifest carries (release ids stay).
        let plain = parse(&format!("{base}[process.web]\ncommand = \"x\"\n")).unwrap();
        let json = toml::to_string(&plain.runtime()).unwrap();
        assert!(!json.contains("user"), "{json}");
    }

    #[test]
    fn minimal() {
        let c = parse("[app]\nname = \"hello\"\n").unwrap();
        assert_eq!(c.app.name, "hello");
        assert!(c.process.is_empty());
    }

    #[test]
    fn a_values_fix_is_its_hint_never_its_message() {
        let proxy = "[app]\nname = \"a\"\n[process.web]\ncommand = \"x\"\nhttp = true\n[proxy]\nport = 8080\n";
        let hosts = "[app]\nname = \"a\"\n[environments.p]\nhosts = [\"a b\"]\n";
        for (text, message, hint) in [
            (
                format!("{proxy}idle_timeout = \"0s\"\n"),
                "a timeout of 0 would close every connection at once",
                "use a duration such as \"60s\"",
            ),
            (
                format!("{proxy}drain_timeout = \"soon\"\n"),
                "`soon` is not a duration",
                "write a duration such as \"30s\", \"500ms\" or \"2m\"",
            ),
            (
                format!("{proxy}drain_timeout = \"5d\"\n"),
                "`d` is not a duration unit in `5d`",
                "the units are ms, s, m and h",
            ),
            (
                hosts.to_string(),
                "`a b` is not a host (empty, or has spaces)",
                "write `[user@]host[:port]`",
            ),
        ] {
            let e = Config::parse(&text, Path::new("drover.toml")).unwrap_err();
            let shown = e.to_string();
            assert!(shown.contains(message), "{shown}");
            assert!(!shown.contains(hint), "{shown} holds its hint");
            let got = e.hint().unwrap_or_default();
            assert!(got.starts_with(hint), "{text}: {got}");
        }
        // A value quoting those words gets no such hint.
        let e = Config::parse(
            &format!("{proxy}[env]\nA = [\"is not a duration\"]\n"),
            Path::new("drover.toml"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("A = [\"is not a duration\"]"), "{e}");
        assert_eq!(e.hint(), None, "{e}");
    }

    #[test]
    fn proxy_connection_keys() {
        let base = "[app]\nname = \"a\"\n[process.web]\ncommand = \"x\"\nhttp = true\n[proxy]\nport = 8080\n";
        let c = parse(&format!(
            "{base}idle_timeout = \"5s\"\nbody_timeout = \"500ms\"\nmax_connections = 100\n"
        ))
        .unwrap();
        let p = c.proxy.unwrap();
        assert_eq!(p.idle_timeout, Some(Seconds(Duration::from_secs(5))));
        assert_eq!(p.body_timeout, Some(Seconds(Duration::from_millis(500))));
        assert_eq!(p.max_connections.map(|n| n.get()), Some(100));
        for bad in [
            "idle_timeout = \"0s\"",
            "body_timeout = 0",
            "max_connections = 0",
        ] {
            let e = parse(&format!("{base}{bad}\n")).unwrap_err();
            assert!(e.contains("line 8") && e.contains(bad), "{bad}: {e}");
        }
        // Unset, they stay out of a release's manifest (its id does not change).
        let p = parse(base).unwrap().proxy.unwrap();
        let json = toml::to_string(&p).unwrap();
        assert!(
            !json.contains("idle_timeout") && !json.contains("max_connections"),
            "{json}"
        );
    }

    #[test]
    fn full_example_parses() {
        let c = parse(&init_template("hello")).unwrap();
        assert_eq!(c.app.name, "hello");
        let web = &c.process["web"];
        assert!(web.http);
        assert_eq!(web.instances, 1);
        assert_eq!(c.health.unwrap().timeout, Seconds(Duration::from_secs(30)));
    }

    #[test]
    fn health_interval_is_a_positive_duration_left_out_of_the_manifest_when_unset() {
        let base = "[app]\nname = \"x\"\n[process.web]\ncommand = \"a\"\nhttp = true\n[health]\npath = \"/up\"\n";
        let h = parse(base).unwrap().health.unwrap();
        assert_eq!(h.interval(), DEFAULT_HEALTH_INTERVAL);
        let json = toml::to_string(&h).unwrap();
        assert!(!json.contains("interval"), "{json}");
        let h = parse(&format!("{base}interval = \"250ms\"\n"))
            .unwrap()
            .health
            .unwrap();
        assert_eq!(h.interval(), Duration::from_millis(250));
        let e = parse(&format!("{base}interval = \"0s\"\n")).unwrap_err();
        assert!(
            e.contains("app/drover.toml") && e.contains("key `health.interval` is 0"),
            "{e}"
        );
        assert!(e.contains("\nhint: use a duration such as \"10s\""), "{e}");
        let e = parse(&format!("{base}interval = \"often\"\n")).unwrap_err();
        assert!(
            e.contains("app/drover.toml")
                && e.contains("interval = \"often\"")
                && e.contains("`often` is not a duration"),
            "{e}"
        );
    }

    #[test]
    fn durations_are_bounded() {
        assert_eq!(Seconds::parse("8784h").unwrap().0, Seconds::MAX);
        for long in [
            "8785h",
            "31622401",
            "99999999999999s",
            "18446744073709551615m",
        ] {
            let e = Seconds::parse(long).unwrap_err();
            assert!(e.contains("too long a duration"), "{long}: {e}");
        }
        let e = parse("[app]\nname = \"x\"\n[health]\ntimeout = \"99999999999s\"\n").unwrap_err();
        assert!(e.contains("health.timeout") || e.contains("timeout"), "{e}");
        assert!(e.contains("too long a duration"), "{e}");
    }

    #[test]
    fn unknown_key_names_line_and_suggests() {
        let err = parse("[app]\nname = \"x\"\nverison = \"1\"\n").unwrap_err();
        assert!(err.contains("app/drover.toml"), "{err}");
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("verison"), "{err}");
        assert!(err.contains("did you mean `version`?"), "{err}");
    }

    #[test]
    fn unknown_section_suggests() {
        let err = parse("[app]\nname = \"x\"\n[proces.web]\ncommand = \"x\"\n").unwrap_err();
        assert!(err.contains("did you mean `process`?"), "{err}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let err = parse("[app]\nname = \"../x\"\n").unwrap_err();
        assert!(err.contains("app.name"), "{err}");
        let err = parse("[app]\nname = \"x\"\n[process.web]\ncommand = \"a\"\ninstances = 0\n")
            .unwrap_err();
        assert!(err.contains("process.web.instances"), "{err}");
        let err = parse(
            "[app]\nname = \"x\"\n[process.web]\ncommand = \"a\"\nhttp = true\n[health]\npath = \"up\"\n",
        )
        .unwrap_err();
        assert!(err.contains("health.path"), "{err}");
        let err = parse("[app]\nname = \"x\"\n[health]\ntimeout = \"3 weeks\"\npath = \"/\"\n")
            .unwrap_err();
        assert!(err.contains("duration"), "{err}");
    }

    #[test]
    fn proxy_hosts_are_names_each_once_and_a_prefix_is_a_path() {
        let base = "[app]\nname = \"x\"\n[process.web]\ncommand = \"a\"\nhttp = true\n[proxy]\nport = 443\n";
        parse(&format!(
            "{base}hosts = [\"app.example.com\", \"*.example.org\"]\npath_prefix = \"/api\"\ndefault = true\n"
        ))
        .unwrap();
        let c = parse(&format!(
            "{base}hosts = [\"a.test\"]\ntls = \"acme\"\nhttp_port = 8080\n[proxy.acme]\ndirectory = \"https://acme.test/dir\"\n"
        ))
        .unwrap();
        let p = c.proxy.unwrap();
        assert_eq!(p.tls, Some(Tls::Acme(AcmeMode::Acme)));
        assert_eq!((p.http_port(), p.redirects()), (8080, true));
        let c = parse(&format!(
            "{base}tls = {{ cert = \"c.pem\", key = \"k.pem\" }}\n"
        ))
        .unwrap();
        assert!(matches!(c.proxy.unwrap().tls, Some(Tls::Files { .. })));
        for (extra, key) in [
            ("hosts = [\"https://app.example.com\"]\n", "proxy.hosts"),
            ("hosts = [\"App.example.com\"]\n", "proxy.hosts"),
            ("hosts = [\"a.example.com\", \"a.example.com\"]\n", "twice"),
            (
                "hosts = [\"a.example.com\"]\npath_prefix = \"api\"\n",
                "proxy.path_prefix",
            ),
            (
                "hosts = [\"a.example.com\"]\npath_prefix = \"/api/\"\n",
                "proxy.path_prefix",
            ),
            ("path_prefix = \"/api\"\n", "needs `proxy.hosts`"),
            ("default = true\n", "needs `proxy.hosts`"),
            ("tls = \"acem\"\n", "not a TLS setting"),
            ("tls = { cert = \"c.pem\" }\n", "not a TLS setting"),
            ("hosts = [\"a.test\"]\ntls = \"acme\"\n", "no [proxy.acme]"),
            ("http_port = 8080\n", "needs `proxy.tls`"),
            (
                "tls = { cert = \"c\", key = \"k\" }\nhttp_port = 443\n",
                "the same as `proxy.port`",
            ),
            (
                "hosts = [\"a.test\"]\ntls = \"acme\"\n[proxy.acme]\ndirectory = \"acme.test\"\n",
                "proxy.acme.directory",
            ),
        ] {
            let e = parse(&format!("{base}{extra}")).unwrap_err();
            assert!(
                e.contains(key) && e.contains("app/drover.toml"),
                "{extra}: {e}"
            );
        }
    }

    #[test]
    fn ports_instances_and_config_values_are_bounded() {
        let base = "[app]\nname = \"x\"\n[process.web]\ncommand = \"a\"\n";
        let e = parse(&format!("{base}[proxy]\nport = 0\n")).unwrap_err();
        assert!(
            e.contains("app/drover.toml") && e.contains("proxy.port") && e.contains("1 to 65535"),
            "{e}"
        );
        let e = parse(&format!("{base}[proxy]\nport = 70000\n")).unwrap_err();
        assert!(e.contains("app/drover.toml") && e.contains("port"), "{e}");
        let e = parse(&format!("{base}instances = 100000\n")).unwrap_err();
        assert!(
            e.contains("process.web.instances") && e.contains("from 1 to 256"),
            "{e}"
        );
        parse(&format!("{base}instances = 256\n[proxy]\nport = 65535\n")).unwrap();
        let big = "v".repeat(MAX_ENV_VALUE + 1);
        let e = parse(&format!("{base}[env]\nBIG = \"{big}\"\n")).unwrap_err();
        assert!(e.contains("env.BIG") && e.contains("64 KiB"), "{e}");
        let e = parse(&format!("{base}[environments.p.env]\nBIG = \"{big}\"\n")).unwrap_err();
        assert!(e.contains("environments.p.env.BIG"), "{e}");
        let fit = "v".repeat(MAX_ENV_VALUE);
        let many: String = (0..5).map(|i| format!("K{i} = \"{fit}\"\n")).collect();
        let e = parse(&format!("{base}[env]\n{many}")).unwrap_err();
        assert!(e.contains("256 KiB"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(Seconds::parse("30s").unwrap().0, Duration::from_secs(30));
        assert_eq!(
            Seconds::parse("250ms").unwrap().0,
            Duration::from_millis(250)
        );
        assert_eq!(Seconds::parse("2m").unwrap().0, Duration::from_secs(120));
        assert!(Seconds::parse("x").is_err());
        assert_eq!(Seconds(Duration::from_millis(1500)).to_string(), "1500ms");
    }
}
