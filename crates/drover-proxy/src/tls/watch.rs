//! Certificate files watched for change: `poll()` (called on the listener's timer) reloads a
//! pair whose files changed and swaps it into `Certs`; a bad new pair leaves the old serving.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use crate::tls::certs::{Certs, normalize};
use crate::tls::pair::{Pair, TlsError, load_pair};

/// The (host, certificate file, key file) triples served from `Certs` and kept up to date.
#[derive(Debug)]
pub struct Watch {
    certs: Arc<Certs>,
    entries: Vec<Entry>,
}

#[derive(Debug)]
struct Entry {
    host: String,
    cert: PathBuf,
    key: PathBuf,
    /// The files as they were when last loaded or tried: a change of either is a reload.
    seen: [Option<Stamp>; 2],
}

/// What tells a file changed: its inode (a rename into place), size and mtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: Option<SystemTime>,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        dev: meta.dev(),
        ino: meta.ino(),
        len: meta.len(),
        mtime: meta.modified().ok(),
    })
}

/// One host's reload by `poll`: the new pair now serving, or why the old one still does.
#[derive(Debug)]
pub struct Reload {
    pub host: String,
    pub result: Result<Pair, TlsError>,
}

impl Watch {
    pub fn new(certs: Arc<Certs>) -> Watch {
        Watch {
            certs,
            entries: Vec::new(),
        }
    }

    /// Loads `cert` and `key` for `host`, serves them and watches both files (replacing
    /// what `host` had). A pair that does not load, or does not cover `host`, changes nothing.
    pub fn add(&mut self, host: &str, cert: &Path, key: &Path) -> Result<Pair, TlsError> {
        let host = normalize(host).into_owned();
        let seen = [stamp(cert), stamp(key)];
        let pair = load_for(&host, cert, key)?;
        self.certs.set(&host, pair.key.clone());
        self.entries.retain(|e| e.host != host);
        self.entries.push(Entry {
            host,
            cert: cert.into(),
            key: key.into(),
            seen,
        });
        Ok(pair)
    }

    /// Stops watching `host` and serving it; whether it was watched.
    pub fn remove(&mut self, host: &str) -> bool {
        let host = normalize(host);
        let before = self.entries.len();
        self.entries.retain(|e| e.host != host);
        if self.entries.len() == before {
            return false;
        }
        self.certs.remove(&host);
        true
    }

    /// The hosts watched, in the order they were added.
    pub fn hosts(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.host.as_str())
    }

    /// Reloads each host whose certificate or key file changed since it was last loaded or
    /// tried, and serves the new pair if it loads. Each change is reported once: a pair that
    /// fails is tried again only when a file changes again, and its old pair keeps serving.
    pub fn poll(&mut self) -> Vec<Reload> {
        let mut reloads = Vec::new();
        for entry in &mut self.entries {
            // Stamped before reading: a change while reading shows at the next poll.
            let now = [stamp(&entry.cert), stamp(&entry.key)];
            if now == entry.seen {
                continue;
            }
            entry.seen = now;
            let result = load_for(&entry.host, &entry.cert, &entry.key);
            if let Ok(pair) = &result {
                self.certs.set(&entry.host, pair.key.clone());
            }
            reloads.push(Reload {
                host: entry.host.clone(),
                result,
            });
        }
        reloads
    }
}

fn load_for(host: &str, cert: &Path, key: &Path) -> Result<Pair, TlsError> {
    let pair = load_pair(cert, key)?;
    if !pair.covers(host) {
        return Err(TlsError::NotCovered {
            path: cert.into(),
            host: host.into(),
            names: pair.names,
        });
    }
    Ok(pair)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::testca::{Ca, KeyKind};

    fn served(certs: &Certs, host: &str) -> Vec<u8> {
        certs.get(Some(host)).unwrap().cert[0].to_vec()
    }

    /// Writes `from`'s bytes to `to` through a rename, as certbot and most tools do.
    fn replace(from: &Path, to: &Path) {
        let tmp = to.with_extension("tmp");
        std::fs::copy(from, &tmp).unwrap();
        std::fs::rename(&tmp, to).unwrap();
    }

    #[test]
    fn a_changed_pair_is_served_and_a_bad_one_keeps_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new(dir.path());
        let (cert1, key1) = ca.issue("one", &["a.test"], KeyKind::Pkcs8);
        let (cert2, key2) = ca.issue("two", &["a.test"], KeyKind::Pkcs8);
        let (cert_b, key_b) = ca.issue("b", &["b.test"], KeyKind::Pkcs8);
        let (live_cert, live_key) = (dir.path().join("live.pem"), dir.path().join("live.key"));
        replace(&cert1, &live_cert);
        replace(&key1, &live_key);

        let certs = Arc::new(Certs::new());
        let mut watch = Watch::new(certs.clone());
        let pair = watch.add("A.test", &live_cert, &live_key).unwrap();
        assert_eq!(pair.names, ["a.test"]);
        let first = served(&certs, "a.test");
        assert!(watch.poll().is_empty(), "nothing changed");

        // A new pair, the key first and then the certificate.
        replace(&key2, &live_key);
        let reloads = watch.poll();
        assert_eq!(reloads.len(), 1);
        let e = reloads[0].result.as_ref().unwrap_err();
        assert!(matches!(e, TlsError::KeyMismatch { .. }), "{e}");
        assert_eq!(served(&certs, "a.test"), first, "the old pair still serves");
        assert!(watch.poll().is_empty(), "an error is reported once");
        replace(&cert2, &live_cert);
        let reloads = watch.poll();
        assert_eq!(reloads[0].host, "a.test");
        reloads[0].result.as_ref().unwrap();
        let second = served(&certs, "a.test");
        assert_ne!(second, first);
        assert_eq!(second, std::fs::read(&cert2).map(|p| der(&p)).unwrap());

        // Half-written in place, then whole.
        let pem = std::fs::read(&cert1).unwrap();
        std::fs::write(&live_cert, &pem[..pem.len() - 40]).unwrap();
        let reloads = watch.poll();
        let e = reloads[0].result.as_ref().unwrap_err();
        assert!(matches!(e, TlsError::BadPem { .. }), "{e}");
        assert!(e.to_string().contains("live.pem"), "{e}");
        assert_eq!(served(&certs, "a.test"), second);

        // A certificate for another name.
        replace(&cert_b, &live_cert);
        replace(&key_b, &live_key);
        let e = watch.poll().remove(0).result.unwrap_err();
        assert!(matches!(e, TlsError::NotCovered { .. }), "{e}");
        assert!(e.to_string().contains("`a.test`"), "{e}");

        // Gone, then back.
        std::fs::remove_file(&live_cert).unwrap();
        let e = watch.poll().remove(0).result.unwrap_err();
        assert!(matches!(e, TlsError::Missing { .. }), "{e}");
        assert_eq!(served(&certs, "a.test"), second);
        replace(&cert1, &live_cert);
        replace(&key1, &live_key);
        watch.poll().remove(0).result.unwrap();
        assert_eq!(served(&certs, "a.test"), first);

        assert!(watch.remove("a.test"));
        assert!(certs.get(Some("a.test")).is_none());
        assert!(watch.poll().is_empty());
    }

    #[test]
    fn a_pair_that_fails_to_add_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new(dir.path());
        let (cert, key) = ca.issue("one", &["a.test"], KeyKind::Pkcs8);
        let (_, other) = ca.issue("two", &["a.test"], KeyKind::Pkcs8);
        let certs = Arc::new(Certs::new());
        let mut watch = Watch::new(certs.clone());
        watch.add("a.test", &cert, &key).unwrap();
        let first = served(&certs, "a.test");
        let e = watch.add("a.test", &cert, &other).unwrap_err();
        assert!(matches!(e, TlsError::KeyMismatch { .. }), "{e}");
        assert!(watch.add("c.test", &cert, &key).is_err());
        assert_eq!(served(&certs, "a.test"), first);
        assert!(certs.get(Some("c.test")).is_none());
        assert_eq!(watch.hosts().collect::<Vec<_>>(), ["a.test"]);
    }

    fn der(pem: &[u8]) -> Vec<u8> {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject;
        CertificateDer::from_pem_slice(pem).unwrap().to_vec()
    }
}
