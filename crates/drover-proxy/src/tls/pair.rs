//! A certificate chain and its private key read from PEM files, checked before they serve
//! (the key matches the leaf, the leaf is within its dates), with the names the leaf covers.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_cert::Certificate;
use x509_cert::der::Decode;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::pkix::name::GeneralName;

/// A loaded pair: what the resolver serves, and what the leaf says of itself.
#[derive(Debug, Clone)]
pub struct Pair {
    pub key: Arc<CertifiedKey>,
    /// The leaf's subjectAltName DNS names, lowercased (`*.example.com` for a wildcard).
    pub names: Vec<String>,
    pub not_after: SystemTime,
}

impl Pair {
    /// Whether the leaf's names cover `host` (exactly, or by a one-label wildcard).
    pub fn covers(&self, host: &str) -> bool {
        let host = crate::tls::certs::normalize(host);
        let wildcard = crate::tls::certs::wildcard_of(&host);
        self.names
            .iter()
            .any(|n| *n == host || Some(n.as_str()) == wildcard.as_deref())
    }
}

/// Why a certificate or key file cannot serve. Each names the file; `hint()` adds the fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: no such file", path.display())]
    Missing { path: PathBuf },
    #[error("cannot read {}: {err}", path.display())]
    Unreadable { path: PathBuf, err: io::Error },
    #[error("{} is not valid PEM: {message}", path.display())]
    BadPem { path: PathBuf, message: String },
    #[error("{} holds no certificate (no `BEGIN CERTIFICATE` section)", path.display())]
    NoCertificate { path: PathBuf },
    #[error("the certificate in {} does not parse: {message}", path.display())]
    BadCertificate { path: PathBuf, message: String },
    #[error(
        "{} holds no private key (no `BEGIN PRIVATE KEY`, `BEGIN RSA PRIVATE KEY` or `BEGIN EC PRIVATE KEY` section)",
        path.display()
    )]
    NoKey { path: PathBuf },
    #[error("the private key in {} is encrypted", path.display())]
    EncryptedKey { path: PathBuf },
    #[error("the private key in {} is not usable: {message}", path.display())]
    BadKey { path: PathBuf, message: String },
    #[error(
        "the private key in {} does not match the certificate in {}",
        key.display(),
        cert.display()
    )]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    /// `not_after` is RFC 3339 in UTC.
    #[error("the certificate in {} expired at {not_after}", path.display())]
    Expired { path: PathBuf, not_after: String },
    /// `not_before` is RFC 3339 in UTC.
    #[error("the certificate in {} is not valid before {not_before}", path.display())]
    NotYetValid { path: PathBuf, not_before: String },
    #[error("the certificate in {} does not cover `{host}` (it covers {})", path.display(), list(names))]
    NotCovered {
        path: PathBuf,
        host: String,
        names: Vec<String>,
    },
    /// The TLS library refused the configuration (no randomness for session tickets).
    #[error("cannot set up TLS: {0}")]
    Setup(rustls::Error),
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "no DNS name".to_string()
    } else {
        names
            .iter()
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl TlsError {
    /// The likely fix, if there is one.
    pub fn hint(&self) -> Option<String> {
        match self {
            TlsError::Missing { .. } => Some("check the path".into()),
            TlsError::Unreadable { err, .. } if err.kind() == io::ErrorKind::PermissionDenied => {
                Some("the agent reads it as its own user: check the file's owner and mode".into())
            }
            TlsError::Unreadable { .. } => None,
            TlsError::BadPem { .. } => Some(
                "write the file whole and rename it into place: a half-written file is read again once it changes"
                    .into(),
            ),
            TlsError::NoCertificate { path } => Some(format!(
                "give the certificate chain, leaf first (certbot's fullchain.pem), not the key; `openssl x509 -noout -subject -in {}` shows what it holds",
                path.display()
            )),
            TlsError::BadCertificate { .. } => None,
            TlsError::NoKey { .. } => {
                Some("give the private key (certbot's privkey.pem), not the certificate".into())
            }
            TlsError::EncryptedKey { path } => Some(format!(
                "store it unencrypted, readable only by the agent: `openssl pkey -in {0} -out {0}.plain`",
                path.display()
            )),
            TlsError::BadKey { .. } => Some("use an RSA (2048 bits or more), ECDSA P-256/P-384 or Ed25519 key".into()),
            TlsError::KeyMismatch { cert, key } => Some(format!(
                "replace both files together, each by a rename; `openssl x509 -noout -pubkey -in {}` and `openssl pkey -pubout -in {}` print the same key when they match",
                cert.display(),
                key.display()
            )),
            TlsError::Expired { .. } => {
                Some("renew the certificate (e.g. `certbot renew`) and replace the file".into())
            }
            TlsError::NotYetValid { .. } => {
                Some("check this host's clock (`date -u`), or wait until then".into())
            }
            TlsError::NotCovered { host, .. } => Some(format!(
                "issue a certificate whose subjectAltName names `{host}` (or a `*.` wildcard of its parent)"
            )),
            TlsError::Setup(_) => None,
        }
    }
}

/// Reads `cert` (a PEM chain, leaf first) and `key` (PKCS#8, PKCS#1 RSA or SEC1 EC, in PEM)
/// and checks that they match and that the leaf is valid now.
pub fn load_pair(cert: &Path, key: &Path) -> Result<Pair, TlsError> {
    load_pair_at(cert, key, SystemTime::now())
}

/// `load_pair`, with the dates checked against `now`.
pub fn load_pair_at(cert: &Path, key: &Path, now: SystemTime) -> Result<Pair, TlsError> {
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;

    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_pem(cert, e))?;
    let Some(leaf) = chain.first() else {
        return Err(TlsError::NoCertificate { path: cert.into() });
    };
    let parsed = Certificate::from_der(leaf.as_ref()).map_err(|e| TlsError::BadCertificate {
        path: cert.into(),
        message: e.to_string(),
    })?;

    let private = match PrivateKeyDer::from_pem_slice(&key_pem) {
        Ok(private) => private,
        Err(pem::Error::NoItemsFound) if contains(&key_pem, b"ENCRYPTED PRIVATE KEY") => {
            return Err(TlsError::EncryptedKey { path: key.into() });
        }
        Err(pem::Error::NoItemsFound) => return Err(TlsError::NoKey { path: key.into() }),
        Err(e) => return Err(bad_pem(key, e)),
    };
    let signing =
        rustls::crypto::ring::sign::any_supported_type(&private).map_err(|e| TlsError::BadKey {
            path: key.into(),
            message: e.to_string(),
        })?;

    let validity = &parsed.tbs_certificate.validity;
    if now < validity.not_before.to_system_time() {
        return Err(TlsError::NotYetValid {
            path: cert.into(),
            not_before: validity.not_before.to_date_time().to_string(),
        });
    }
    let not_after = validity.not_after.to_system_time();
    if now > not_after {
        return Err(TlsError::Expired {
            path: cert.into(),
            not_after: validity.not_after.to_date_time().to_string(),
        });
    }

    let names = dns_names(&parsed).map_err(|message| TlsError::BadCertificate {
        path: cert.into(),
        message,
    })?;

    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => {}
        // The key type does not tell its public key: nothing to compare.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(_)) => {
            return Err(TlsError::KeyMismatch {
                cert: cert.into(),
                key: key.into(),
            });
        }
        Err(e) => {
            return Err(TlsError::BadCertificate {
                path: cert.into(),
                message: e.to_string(),
            });
        }
    }

    Ok(Pair {
        key: Arc::new(certified),
        names,
        not_after,
    })
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|err| match err.kind() {
        io::ErrorKind::NotFound => TlsError::Missing { path: path.into() },
        _ => TlsError::Unreadable {
            path: path.into(),
            err,
        },
    })
}

fn bad_pem(path: &Path, err: pem::Error) -> TlsError {
    let message = match err {
        pem::Error::MissingSectionEnd { end_marker } => {
            let label = String::from_utf8_lossy(&end_marker);
            format!("its `BEGIN {label}` section has no `END {label}` line")
        }
        pem::Error::IllegalSectionStart { line } => {
            format!("malformed line `{}`", String::from_utf8_lossy(&line).trim())
        }
        pem::Error::Base64Decode(e) => format!("bad base64 ({e})"),
        e => e.to_string(),
    };
    TlsError::BadPem {
        path: path.into(),
        message,
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The subjectAltName DNS names of `cert`, lowercased.
fn dns_names(cert: &Certificate) -> Result<Vec<String>, String> {
    let san = cert
        .tbs_certificate
        .get::<SubjectAltName>()
        .map_err(|e| format!("its subjectAltName does not parse: {e}"))?;
    Ok(san
        .map(|(_, san)| san.0)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|name| match name {
            GeneralName::DnsName(dns) => Some(dns.as_str().to_ascii_lowercase()),
            _ => None,
        })
        .collect())
}

#[cfg(test)]
pub(crate) fn tests_dns_names(cert: &Certificate) -> Vec<String> {
    dns_names(cert).unwrap()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::tls::testca::{Ca, KeyKind};

    #[test]
    fn loads_each_key_format_with_its_names_and_date() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new(dir.path());
        for (i, kind) in [KeyKind::Pkcs8, KeyKind::Sec1, KeyKind::Pkcs1]
            .into_iter()
            .enumerate()
        {
            let (cert, key) = ca.issue(
                &format!("leaf{i}"),
                &["App.Example.test", "*.apps.test"],
                kind,
            );
            let pair = load_pair(&cert, &key).unwrap_or_else(|e| panic!("{kind:?}: {e}"));
            assert_eq!(pair.names, ["app.example.test", "*.apps.test"], "{kind:?}");
            let left = pair.not_after.duration_since(SystemTime::now()).unwrap();
            assert!(left > Duration::from_secs(29 * 86400), "{kind:?}: {left:?}");
            assert_eq!(pair.key.cert.len(), 1);
            assert!(pair.covers("APP.example.test."));
            assert!(pair.covers("x.apps.test"));
            assert!(!pair.covers("apps.test"));
            assert!(!pair.covers("a.b.apps.test"));
        }
    }

    #[test]
    fn a_chain_keeps_its_intermediate_after_the_leaf() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new(dir.path());
        let (cert, key) = ca.issue("leaf", &["a.test"], KeyKind::Pkcs8);
        let chain = dir.path().join("chain.pem");
        let mut pem = std::fs::read(&cert).unwrap();
        pem.extend(std::fs::read(&ca.cert).unwrap());
        std::fs::write(&chain, pem).unwrap();
        let pair = load_pair(&chain, &key).unwrap();
        assert_eq!(pair.key.cert.len(), 2);
    }

    #[test]
    fn each_bad_pair_is_refused_naming_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new(dir.path());
        let (cert, key) = ca.issue("leaf", &["a.test"], KeyKind::Pkcs8);
        let (_, other_key) = ca.issue("other", &["a.test"], KeyKind::Sec1);
        let missing = dir.path().join("nope.pem");
        let half = dir.path().join("half.pem");
        let pem = std::fs::read(&cert).unwrap();
        std::fs::write(&half, &pem[..pem.len() / 2]).unwrap();
        let encrypted = dir.path().join("enc.key");
        crate::tls::testca::openssl(&[
            "pkcs8",
            "-topk8",
            "-in",
            key.to_str().unwrap(),
            "-out",
            encrypted.to_str().unwrap(),
            "-passout",
            "pass:secret",
        ]);

        let err = |cert: &Path, key: &Path| load_pair(cert, key).unwrap_err();

        let e = err(&missing, &key);
        assert!(matches!(e, TlsError::Missing { .. }), "{e}");
        assert!(e.to_string().contains("nope.pem"), "{e}");
        let e = err(&cert, &missing);
        assert!(matches!(e, TlsError::Missing { .. }), "{e}");

        let e = err(&half, &key);
        assert!(matches!(e, TlsError::BadPem { .. }), "{e}");
        assert!(e.to_string().contains("half.pem"), "{e}");
        assert!(e.to_string().contains("no `END CERTIFICATE` line"), "{e}");
        assert!(e.hint().is_some());

        let e = err(&key, &key);
        assert!(matches!(e, TlsError::NoCertificate { .. }), "{e}");
        let e = err(&cert, &cert);
        assert!(matches!(e, TlsError::NoKey { .. }), "{e}");
        let e = err(&cert, &encrypted);
        assert!(matches!(e, TlsError::EncryptedKey { .. }), "{e}");

        let e = err(&cert, &other_key);
        assert!(matches!(e, TlsError::KeyMismatch { .. }), "{e}");
        assert!(e.to_string().contains("other.key"), "{e}");
        assert!(e.to_string().contains("leaf.pem"), "{e}");
        assert!(e.hint().unwrap().contains("openssl pkey -pubout"));

        let dir_as_file = err(dir.path(), &key);
        assert!(
            matches!(dir_as_file, TlsError::Unreadable { .. }),
            "{dir_as_file}"
        );
    }

    #[test]
    fn a_pair_outside_its_dates_is_refused_with_the_date() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new(dir.path());
        let (cert, key) = ca.issue("leaf", &["a.test"], KeyKind::Pkcs8);
        let later = SystemTime::now() + Duration::from_secs(400 * 86400);
        let e = load_pair_at(&cert, &key, later).unwrap_err();
        let TlsError::Expired { not_after, .. } = &e else {
            panic!("{e}")
        };
        // RFC 3339 in UTC: 2026-12-31T23:59:59Z.
        assert_eq!(not_after.len(), 20, "{not_after}");
        assert!(not_after.ends_with('Z'), "{not_after}");
        assert!(e.to_string().contains("leaf.pem"), "{e}");

        let earlier = SystemTime::now() - Duration::from_secs(86400);
        let e = load_pair_at(&cert, &key, earlier).unwrap_err();
        assert!(matches!(e, TlsError::NotYetValid { .. }), "{e}");
        assert!(e.hint().unwrap().contains("clock"));
    }
}
