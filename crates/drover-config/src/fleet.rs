//! The fleet parts of `drover.toml`: `[ssh]`, and an environment's hosts, roles and rollout
//! strategy.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Seconds;

/// `[ssh]`: how drover reaches hosts. The system OpenSSH client does the work, so the user's
/// own ssh config, agent, ProxyJump and known_hosts apply as well.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Ssh {
    /// An ssh_config file (`ssh -F`), relative to the app directory.
    #[serde(default)]
    pub config: Option<String>,
    /// Login user when a host does not name one.
    #[serde(default)]
    pub user: Option<String>,
    /// Port when a host does not name one.
    #[serde(default)]
    pub port: Option<u16>,
    /// Private key file (`ssh -i`), relative to the app directory.
    #[serde(default)]
    pub identity: Option<String>,
    /// Extra `-o` options, as `"Key=value"`.
    #[serde(default)]
    pub options: Vec<String>,
    /// Connecting, and silence from a connected host, longer than this fail that host.
    #[serde(default = "default_ssh_timeout")]
    pub timeout: Seconds,
    /// How many hosts are connected to and sent releases at once.
    #[serde(default = "default_parallel")]
    pub parallel: usize,
    /// The drover root on the hosts (where `drover host setup` installs drover). A host's
    /// sshd may override it for its sessions by setting `DROVER_ROOT`.
    #[serde(default = "default_remote_root")]
    pub root: String,
    /// How long a host's ssh connection stays open for the next drover command to reuse
    /// (ssh `ControlPersist`); "0s" closes it when each command ends.
    #[serde(default = "default_persist")]
    pub persist: Seconds,
    /// drover opens each host's TCP connection itself and relays it to ssh (as its
    /// ProxyCommand), sending at once and acknowledging at once: ssh's own socket waits on
    /// delayed acknowledgements (~40 ms, twice) until its first session runs. Never used for
    /// a host whose ssh config sets ProxyCommand, ProxyJump, BindAddress or BindInterface,
    /// canonicalizes its name or follows CNAMEs, or names it by a scoped IPv6 address;
    /// `false` leaves every connection to ssh.
    #[serde(default = "default_relay")]
    pub relay: bool,
}

impl Default for Ssh {
    fn default() -> Ssh {
        Ssh {
            config: None,
            user: None,
            port: None,
            identity: None,
            options: Vec::new(),
            timeout: default_ssh_timeout(),
            parallel: default_parallel(),
            root: default_remote_root(),
            persist: default_persist(),
            relay: default_relay(),
        }
    }
}

fn default_ssh_timeout() -> Seconds {
    Seconds(std::time::Duration::from_secs(10))
}

fn default_persist() -> Seconds {
    Seconds(std::time::Duration::from_secs(60))
}

fn default_relay() -> bool {
    true
}

fn default_parallel() -> usize {
    8
}

fn default_remote_root() -> String {
    "/var/lib/drover".into()
}

/// A host as written in `hosts`: `[user@]host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostSpec {
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
}

impl HostSpec {
    /// The fix for a host that does not parse.
    pub const HINT: &str = "write `[user@]host[:port]`";

    /// The host, or a message saying why `s` is none, with the fix (`HINT`): for callers
    /// that have no hint of their own to give.
    pub fn parse(s: &str) -> Result<HostSpec, String> {
        HostSpec::checked(s).map_err(|m| format!("{m}; {}", HostSpec::HINT))
    }

    /// The host, or a message saying why `s` is none (without the fix: `HINT`).
    pub fn checked(s: &str) -> Result<HostSpec, String> {
        HostSpec::read(s).map_err(|why| format!("`{s}` is not a host ({why})"))
    }

    /// The host, or why `s` is none.
    fn read(s: &str) -> Result<HostSpec, &'static str> {
        if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("empty, or has spaces");
        }
        let (user, rest) = match s.split_once('@') {
            Some((u, r)) => (Some(u.to_string()), r),
            None => (None, s),
        };
        if user
            .as_deref()
            .is_some_and(|u| u.is_empty() || u.contains('@'))
        {
            return Err("bad user");
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => {
                let port = p.parse::<u16>().map_err(|_| "bad port")?;
                (h.to_string(), Some(port))
            }
            _ => (rest.to_string(), None),
        };
        if host.is_empty() || host.starts_with('-') {
            return Err("bad host name");
        }
        Ok(HostSpec { user, host, port })
    }
}

impl fmt::Display for HostSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(u) = &self.user {
            write!(f, "{u}@")?;
        }
        write!(f, "{}", self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

/// How many hosts: a count or a percentage of the environment's hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    Hosts(u32),
    Percent(u8),
}

impl Count {
    /// The number of hosts out of `total`, at least 1.
    pub fn of(self, total: usize) -> usize {
        let n = match self {
            Count::Hosts(n) => n as usize,
            Count::Percent(p) => (total * p as usize).div_ceil(100),
        };
        n.clamp(1, total.max(1))
    }
}

impl fmt::Display for Count {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Count::Hosts(n) => write!(f, "{n}"),
            Count::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Serialize for Count {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Count::Hosts(n) => s.serialize_u32(*n),
            Count::Percent(_) => s.serialize_str(&self.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Str(String),
        }
        let err = |s: &str| {
            serde::de::Error::custom(format!(
                "`{s}` is not a host count: write a number of hosts (2) or a percentage (\"25%\")"
            ))
        };
        match Raw::deserialize(d)? {
            Raw::Int(n) if n >= 1 && n <= u32::MAX as i64 => Ok(Count::Hosts(n as u32)),
            Raw::Int(n) => Err(err(&n.to_string())),
            Raw::Str(s) => match s.trim().strip_suffix('%').map(|p| p.trim().parse::<u8>()) {
                Some(Ok(p)) if (1..=100).contains(&p) => Ok(Count::Percent(p)),
                _ => match s.trim().parse::<u32>() {
                    Ok(n) if n >= 1 => Ok(Count::Hosts(n)),
                    _ => Err(err(&s)),
                },
            },
        }
    }
}

/// The order in which an environment's hosts switch to a new release.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Rollout {
    /// Every host at once (still all-or-back).
    AllAtOnce,
    /// `batch` hosts at a time; each batch must be healthy before the next starts.
    Rolling {
        #[serde(default = "default_batch")]
        batch: Count,
        /// At most this many hosts may be switching or down at once: it caps `batch`, and a
        /// batch does not start while hosts outside it are down (stopped, or no healthy
        /// instance) so that the two together would exceed it.
        #[serde(default)]
        max_unavailable: Option<Count>,
        /// Wait between batches.
        #[serde(default)]
        pause: Option<Seconds>,
    },
    /// `hosts` first; after `pause`, the rest (`batch` at a time, default all together).
    Canary {
        #[serde(default = "default_canary_hosts")]
        hosts: Count,
        #[serde(default)]
        pause: Option<Seconds>,
        #[serde(default)]
        batch: Option<Count>,
    },
}

fn default_batch() -> Count {
    Count::Percent(25)
}

fn default_canary_hosts() -> Count {
    Count::Hosts(1)
}

impl Default for Rollout {
    fn default() -> Rollout {
        Rollout::Rolling {
            batch: default_batch(),
            max_unavailable: None,
            pause: None,
        }
    }
}

impl Rollout {
    /// Splits `n` hosts (by index, in order) into batches.
    pub fn batches(&self, n: usize) -> Vec<Vec<usize>> {
        let sizes_from = |start: usize, size: usize| -> Vec<Vec<usize>> {
            (start..n)
                .step_by(size.max(1))
                .map(|i| (i..(i + size).min(n)).collect())
                .collect()
        };
        match self {
            Rollout::AllAtOnce => sizes_from(0, n),
            Rollout::Rolling {
                batch,
                max_unavailable,
                ..
            } => {
                let mut size = batch.of(n);
                if let Some(m) = max_unavailable {
                    size = size.min(m.of(n));
                }
                sizes_from(0, size)
            }
            Rollout::Canary { hosts, batch, .. } => {
                let first = hosts.of(n).min(n);
                let mut out = vec![(0..first).collect::<Vec<_>>()];
                let rest = batch.map(|b| b.of(n)).unwrap_or(n);
                out.extend(sizes_from(first, rest));
                out.retain(|b| !b.is_empty());
                out
            }
        }
    }

    pub fn pause(&self) -> Option<std::time::Duration> {
        match self {
            Rollout::AllAtOnce => None,
            Rollout::Rolling { pause, .. } | Rollout::Canary { pause, .. } => pause.map(|p| p.0),
        }
    }

    pub fn max_unavailable(&self, n: usize) -> Option<usize> {
        match self {
            Rollout::Rolling {
                max_unavailable: Some(m),
                ..
            } => Some(m.of(n)),
            _ => None,
        }
    }
}

impl fmt::Display for Rollout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rollout::AllAtOnce => write!(f, "all at once"),
            Rollout::Rolling { batch, .. } => write!(f, "rolling, {batch} at a time"),
            Rollout::Canary { hosts, .. } => write!(f, "canary on {hosts} first, then the rest"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_parse() {
        let h = HostSpec::parse("deploy@web2:2222").unwrap();
        assert_eq!(
            (h.user.as_deref(), h.host.as_str(), h.port),
            (Some("deploy"), "web2", Some(2222))
        );
        assert_eq!(h.to_string(), "deploy@web2:2222");
        assert_eq!(HostSpec::parse("web1").unwrap().port, None);
        for bad in ["", "a b", "@web", "web:x", "-oProxyCommand=x", "web:99999"] {
            assert!(HostSpec::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn batches_cover_every_host_once() {
        let r = Rollout::Rolling {
            batch: Count::Hosts(1),
            max_unavailable: None,
            pause: None,
        };
        assert_eq!(r.batches(3), vec![vec![0], vec![1], vec![2]]);
        let r = Rollout::Rolling {
            batch: Count::Percent(25),
            max_unavailable: None,
            pause: None,
        };
        assert_eq!(
            r.batches(8),
            vec![vec![0, 1], vec![2, 3], vec![4, 5], vec![6, 7]]
        );
        let r = Rollout::Canary {
            hosts: Count::Hosts(1),
            pause: None,
            batch: None,
        };
        assert_eq!(r.batches(4), vec![vec![0], vec![1, 2, 3]]);
        assert_eq!(Rollout::AllAtOnce.batches(3), vec![vec![0, 1, 2]]);
    }
}
