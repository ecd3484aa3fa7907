//! The certificate each host name is served with: a `ResolvesServerCert` read on every
//! handshake without a lock (a swapped snapshot), changed by `set` and `remove`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Certificates by host name (`app.example.com`, or `*.example.com` for any one label in
/// front of it), case-insensitive.
#[derive(Debug, Default)]
pub struct Certs {
    table: ArcSwap<Table>,
}

#[derive(Debug, Default, Clone)]
struct Table {
    by_host: HashMap<String, Arc<CertifiedKey>>,
    /// The host whose certificate answers a ClientHello without SNI or with a name nobody has.
    default: Option<String>,
}

impl Certs {
    pub fn new() -> Certs {
        Certs::default()
    }

    /// Serves `key` for `host` from the next handshake on.
    pub fn set(&self, host: &str, key: Arc<CertifiedKey>) {
        let host = normalize(host).into_owned();
        self.table.rcu(|t| {
            let mut t = Table::clone(t);
            t.by_host.insert(host.clone(), key.clone());
            t
        });
    }

    /// Stops serving `host`; whether it was served.
    pub fn remove(&self, host: &str) -> bool {
        let host = normalize(host);
        let mut had = false;
        self.table.rcu(|t| {
            let mut t = Table::clone(t);
            had = t.by_host.remove(host.as_ref()).is_some();
            t
        });
        had
    }

    /// The host whose certificate answers a ClientHello without SNI or with an unknown name;
    /// `None` (the default): such a handshake fails.
    pub fn set_default(&self, host: Option<&str>) {
        let host = host.map(|h| normalize(h).into_owned());
        self.table.rcu(|t| {
            let mut t = Table::clone(t);
            t.default = host.clone();
            t
        });
    }

    /// The certificate for a ClientHello's server name: the exact name, else its wildcard,
    /// else the default host's.
    pub fn get(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let table = self.table.load();
        let found = server_name.and_then(|name| {
            let name = normalize(name);
            table
                .by_host
                .get(name.as_ref())
                .or_else(|| wildcard_of(&name).and_then(|w| table.by_host.get(&w)))
        });
        found
            .or_else(|| {
                let default = table.default.as_ref()?;
                table.by_host.get(default)
            })
            .cloned()
    }

    /// The hosts served, sorted.
    pub fn hosts(&self) -> Vec<String> {
        let mut hosts: Vec<String> = self.table.load().by_host.keys().cloned().collect();
        hosts.sort();
        hosts
    }
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.get(hello.server_name())
    }
}

/// Lowercase, without a trailing dot.
pub(crate) fn normalize(host: &str) -> Cow<'_, str> {
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

/// `*.example.com` for `app.example.com`; none for a single label.
pub(crate) fn wildcard_of(host: &str) -> Option<String> {
    let (first, parent) = host.split_once('.')?;
    if first.is_empty() || first == "*" || parent.is_empty() {
        return None;
    }
    Some(format!("*.{parent}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in key told apart by its one "certificate".
    fn key(tag: &str) -> Arc<CertifiedKey> {
        let der = rustls_pki_types::PrivatePkcs8KeyDer::from(ED25519_PKCS8.to_vec());
        let signing = rustls::crypto::ring::sign::any_supported_type(&der.into()).unwrap();
        Arc::new(CertifiedKey::new(
            vec![tag.as_bytes().to_vec().into()],
            signing,
        ))
    }

    fn tag(key: Option<Arc<CertifiedKey>>) -> Option<String> {
        key.map(|k| String::from_utf8(k.cert[0].to_vec()).unwrap())
    }

    /// `openssl genpkey -algorithm ed25519 -outform der`
    const ED25519_PKCS8: [u8; 48] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20, 0x9d, 0x61, 0xb1, 0x9d, 0xef, 0xfd, 0x5a, 0x60, 0xba, 0x84, 0x4a, 0xf4, 0x92, 0xec,
        0x2c, 0xc4, 0x44, 0x49, 0xc5, 0x69, 0x7b, 0x32, 0x69, 0x19, 0x70, 0x3b, 0xac, 0x03, 0x1c,
        0xae, 0x7f, 0x60,
    ];

    #[test]
    fn exact_name_then_wildcard_case_insensitive() {
        let certs = Certs::new();
        certs.set("App.Example.com", key("app"));
        certs.set("*.example.com", key("wild"));
        assert_eq!(
            tag(certs.get(Some("app.example.com"))).as_deref(),
            Some("app")
        );
        assert_eq!(
            tag(certs.get(Some("APP.EXAMPLE.COM."))).as_deref(),
            Some("app")
        );
        assert_eq!(
            tag(certs.get(Some("other.Example.com"))).as_deref(),
            Some("wild")
        );
        // A wildcard covers one label only, and not its parent.
        assert_eq!(tag(certs.get(Some("a.b.example.com"))), None);
        assert_eq!(tag(certs.get(Some("example.com"))), None);
        assert_eq!(tag(certs.get(None)), None);
        assert_eq!(certs.hosts(), ["*.example.com", "app.example.com"]);

        assert!(certs.remove("APP.example.com"));
        assert!(!certs.remove("app.example.com"));
        assert_eq!(
            tag(certs.get(Some("app.example.com"))).as_deref(),
            Some("wild")
        );
    }

    #[test]
    fn no_sni_or_an_unknown_name_gets_the_default_host_if_any() {
        let certs = Certs::new();
        certs.set("a.test", key("a"));
        certs.set("b.test", key("b"));
        assert_eq!(tag(certs.get(Some("c.test"))), None);
        certs.set_default(Some("B.test"));
        assert_eq!(tag(certs.get(None)).as_deref(), Some("b"));
        assert_eq!(tag(certs.get(Some("c.test"))).as_deref(), Some("b"));
        assert_eq!(tag(certs.get(Some("a.test"))).as_deref(), Some("a"));
        // A default host without a certificate serves nothing.
        certs.remove("b.test");
        assert_eq!(tag(certs.get(None)), None);
        certs.set_default(None);
        certs.set("b.test", key("b2"));
        assert_eq!(tag(certs.get(None)), None);
    }

    #[test]
    fn a_set_replaces_the_key_for_the_next_lookup() {
        let certs = Certs::new();
        certs.set("a.test", key("old"));
        let held = certs.get(Some("a.test"));
        certs.set("a.test", key("new"));
        assert_eq!(tag(held).as_deref(), Some("old"));
        assert_eq!(tag(certs.get(Some("a.test"))).as_deref(), Some("new"));
    }
}
