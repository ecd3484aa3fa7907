//! A listening port and the apps behind it: one app holding the port alone, or several
//! that each claim host names (and a path prefix), the request's Host picking the app.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use bytes::Bytes;

use crate::{Shared, conn, fds};

/// What an app claims of a shared port. No hosts: the whole port, alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claim {
    /// Lowercase host names; `*.example.com` claims every name one label under it.
    pub hosts: Vec<String>,
    /// Only paths equal to this or under it (`/api`: `/api`, `/api/x`, not `/apix`).
    pub path_prefix: Option<String>,
    /// Also the requests for hosts nobody claims.
    pub default: bool,
    /// Answer with a 308 to https on this port instead (a plain-HTTP port beside a TLS
    /// one), except for ACME's HTTP-01 challenges.
    pub redirect: Option<u16>,
}

impl Claim {
    /// Where `self` (of one app) and `other` (of another) would both take the same requests:
    /// a host with the same prefix, or both defaults.
    pub fn overlap(&self, other: &Claim) -> Option<String> {
        if self.hosts.is_empty() || other.hosts.is_empty() {
            return Some("the whole port".into());
        }
        if self.path_prefix == other.path_prefix
            && let Some(h) = self.hosts.iter().find(|h| other.hosts.contains(h))
        {
            return Some(format!("{h}{}", self.path_prefix.as_deref().unwrap_or("")));
        }
        (self.default && other.default).then(|| "the default (`[proxy] default`)".into())
    }
}

/// An app behind a port, the port its requests are redirected to instead (if any), and
/// which of its claimed host names took the request (its index in `Claim::hosts`: the
/// counter its response goes to; none for the port alone or the default).
pub(crate) type Routed = (Arc<Shared>, Option<u16>, Option<usize>);

/// The apps claiming one host name: each with its path prefix, the longest first.
type ByPrefix = Vec<(Option<String>, Routed)>;

/// The apps of a port, as requests are routed.
#[derive(Default)]
pub(crate) struct Table {
    /// The app holding the port alone.
    only: Option<Routed>,
    /// Host name (or `*.suffix`) to its apps, longest prefix first.
    hosts: HashMap<String, ByPrefix>,
    default: Option<Routed>,
    /// Every app with its claim, as attached.
    pub(crate) claims: Vec<(Claim, Arc<Shared>)>,
}

impl Table {
    fn of(claims: Vec<(Claim, Arc<Shared>)>) -> Table {
        let mut t = Table::default();
        for (claim, app) in &claims {
            let routed = (app.clone(), claim.redirect, None);
            if claim.hosts.is_empty() {
                t.only = Some(routed);
                continue;
            }
            for (k, h) in claim.hosts.iter().enumerate() {
                let v = t.hosts.entry(h.clone()).or_default();
                v.push((
                    claim.path_prefix.clone(),
                    (app.clone(), claim.redirect, Some(k)),
                ));
            }
            if claim.default {
                t.default = Some(routed);
            }
        }
        for v in t.hosts.values_mut() {
            v.sort_by_key(|(p, _)| std::cmp::Reverse(p.as_ref().map_or(0, String::len)));
        }
        t.claims = claims;
        t
    }

    /// The app for a request to `host` (as sent: any case, maybe with a port) and `path`.
    pub(crate) fn pick(&self, host: Option<&str>, path: &str) -> Option<&Routed> {
        if let Some(only) = &self.only {
            return Some(only);
        }
        let found = host.and_then(|h| {
            let name = strip_port(h).trim_end_matches('.').to_ascii_lowercase();
            if let Some(a) = self.hosts.get(&name).and_then(|v| under(v, path)) {
                return Some(a);
            }
            let (_, parent) = name.split_once('.')?;
            self.hosts
                .get(&format!("*.{parent}"))
                .and_then(|v| under(v, path))
        });
        found.or(self.default.as_ref())
    }

    pub(crate) fn apps(&self) -> impl Iterator<Item = &Arc<Shared>> {
        self.claims.iter().map(|(_, a)| a)
    }
}

/// The first of `apps` (longest prefix first) whose prefix `path` is under.
fn under<'a>(apps: &'a [(Option<String>, Routed)], path: &str) -> Option<&'a Routed> {
    apps.iter()
        .find(|(p, _)| p.as_deref().is_none_or(|p| under_prefix(path, p)))
        .map(|(_, a)| a)
}

/// `host` of `host[:port]` (a bracketed IPv6 literal kept whole).
pub(crate) fn strip_port(h: &str) -> &str {
    if h.starts_with('[') {
        return h.find(']').map_or(h, |i| &h[..=i]);
    }
    h.rsplit_once(':')
        .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
        .map_or(h, |(n, _)| n)
}

/// Is `path` the prefix itself or under it?
fn under_prefix(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'))
}

/// One listening port: its connections and the apps behind it.
pub(crate) struct Front {
    pub(crate) port: u16,
    pub(crate) table: RwLock<Arc<Table>>,
    /// Open client connections.
    pub(crate) conns: Arc<conn::Registry>,
    pub(crate) max_connections: usize,
    /// The answer to a connection over `max_connections`.
    pub(crate) refusal: Bytes,
    pub(crate) fds: Arc<fds::Budget>,
    /// Connection limits (those of the app that opened the port).
    pub(crate) settings: crate::Settings,
    /// Set once a shutdown has closed every connection.
    pub(crate) closed: AtomicBool,
    pub(crate) stop: tokio::sync::Notify,
    /// A TLS port: its handshakes and the certificates of its hosts.
    pub(crate) tls: Option<FrontTls>,
    /// The answers to ACME HTTP-01 challenges (on a plain port).
    pub(crate) challenges: Arc<std::sync::OnceLock<crate::Challenges>>,
}

pub(crate) struct FrontTls {
    pub(crate) acceptor: tokio_rustls::TlsAcceptor,
    pub(crate) watch: std::sync::Mutex<crate::tls::Watch>,
    pub(crate) certs: Arc<crate::tls::Certs>,
}

impl Front {
    pub(crate) fn table(&self) -> Arc<Table> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Puts `app` (named `name`) behind the port with `claim`, in place of what it had; an
    /// overlap with another app's claim changes nothing and names that app.
    pub(crate) fn attach(&self, claim: Claim, app: Arc<Shared>) -> Result<(), String> {
        let mut t = self.table.write().unwrap_or_else(|e| e.into_inner());
        if let Some(why) = conflict(&t, &app.app, &claim) {
            return Err(why);
        }
        let mut claims: Vec<(Claim, Arc<Shared>)> = t
            .claims
            .iter()
            .filter(|(_, a)| a.app != app.app)
            .cloned()
            .collect();
        claims.push((claim, app));
        *t = Arc::new(Table::of(claims));
        self.prune_certificates(&t);
        Ok(())
    }

    /// Stops serving (and watching) the certificates of hosts no app claims any more. A port
    /// held by one app alone keeps its certificate, whatever name it was filed under.
    /// Called with the table just put in place, under its write lock: a concurrent
    /// attach cannot prune by a table older than its own.
    fn prune_certificates(&self, table: &Table) {
        let Some(tls) = &self.tls else {
            return;
        };
        if table.only.is_some() {
            return;
        }
        let mut watch = tls.watch.lock().unwrap_or_else(|e| e.into_inner());
        let gone: Vec<String> = watch
            .hosts()
            .filter(|h| !table.hosts.contains_key(*h))
            .map(str::to_string)
            .collect();
        for h in gone {
            watch.remove(&h);
        }
    }

    /// Takes `app` (this very one) from behind the port: true when no app is left.
    pub(crate) fn detach(&self, app: &Arc<Shared>) -> bool {
        let mut t = self.table.write().unwrap_or_else(|e| e.into_inner());
        let claims: Vec<(Claim, Arc<Shared>)> = t
            .claims
            .iter()
            .filter(|(_, a)| !Arc::ptr_eq(a, app))
            .cloned()
            .collect();
        let empty = claims.is_empty();
        *t = Arc::new(Table::of(claims));
        self.prune_certificates(&t);
        empty
    }

    /// Frees descriptors: the longest idle client connection, and idle backend connections.
    pub(crate) fn make_room(&self) {
        self.conns.close_longest_idle(Instant::now());
        for app in self.table().apps() {
            app.drop_idle();
        }
    }

    pub(crate) fn closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

/// Why app `name` cannot claim `claim` beside the others of `t` (`None`: it can).
pub(crate) fn conflict(t: &Table, name: &str, claim: &Claim) -> Option<String> {
    t.claims
        .iter()
        .filter(|(_, a)| a.app != name)
        .find_map(|(c, a)| {
            claim
                .overlap(c)
                .map(|what| format!("{what} is claimed by app `{}`", a.app))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(hosts: &[&str], prefix: Option<&str>, default: bool) -> Claim {
        Claim {
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            path_prefix: prefix.map(str::to_string),
            default,
            redirect: None,
        }
    }

    #[test]
    fn hosts_prefixes_wildcards_and_the_default_pick_the_app() {
        let app = |n: &str| crate::tests::shared(n);
        let t = Table::of(vec![
            (
                claim(&["shop.test", "www.shop.test"], None, true),
                app("shop"),
            ),
            (claim(&["shop.test"], Some("/api"), false), app("api")),
            (claim(&["*.blog.test"], None, false), app("blog")),
        ]);
        let pick = |h: Option<&str>, p: &str| t.pick(h, p).map(|a| a.0.app.clone());
        assert_eq!(pick(Some("shop.test"), "/").as_deref(), Some("shop"));
        assert_eq!(pick(Some("SHOP.test:8443"), "/api").as_deref(), Some("api"));
        assert_eq!(pick(Some("shop.test"), "/api/x?y").as_deref(), Some("api"));
        assert_eq!(pick(Some("shop.test"), "/apix").as_deref(), Some("shop"));
        assert_eq!(
            pick(Some("www.shop.test."), "/api").as_deref(),
            Some("shop")
        );
        assert_eq!(pick(Some("a.blog.test"), "/").as_deref(), Some("blog"));
        assert_eq!(
            pick(Some("blog.test"), "/").as_deref(),
            Some("shop"),
            "default"
        );
        assert_eq!(pick(None, "/").as_deref(), Some("shop"), "default");
        let no_default = Table::of(vec![(claim(&["a.test"], None, false), app("a"))]);
        assert!(no_default.pick(Some("b.test"), "/").is_none());
        let alone = Table::of(vec![(Claim::default(), app("solo"))]);
        assert_eq!(alone.pick(Some("any"), "/").unwrap().0.app, "solo");
    }

    #[test]
    fn a_claim_overlapping_another_apps_names_it() {
        let t = Table::of(vec![(
            claim(&["a.test"], Some("/api"), true),
            crate::tests::shared("first"),
        )]);
        let e = conflict(
            &t,
            "second",
            &claim(&["b.test", "a.test"], Some("/api"), false),
        );
        assert_eq!(e.as_deref(), Some("a.test/api is claimed by app `first`"));
        assert!(conflict(&t, "second", &claim(&["a.test"], None, false)).is_none());
        let e = conflict(&t, "second", &claim(&["c.test"], None, true)).unwrap();
        assert!(e.contains("default") && e.contains("first"), "{e}");
        // The same app may claim again (a new generation's settings).
        assert!(conflict(&t, "first", &claim(&["a.test"], Some("/api"), true)).is_none());
        // An app holding the port alone overlaps everything.
        assert!(conflict(&t, "second", &Claim::default()).is_some());
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("a.test"), "a.test");
    }
}
