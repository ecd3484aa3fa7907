//! Issued certificates on disk (`DIR/certs/NAME.crt` and `NAME.key`, each written
//! atomically with mode 0600), their validity, and when one is due for renewal.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use x509_cert::der::Decode;

use crate::AcmeError;

/// A certificate chain and its private key, as an ACME server issued them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    /// The chain, leaf first, in PEM.
    pub cert_pem: String,
    /// The leaf's private key, PKCS#8 in PEM.
    pub key_pem: String,
    /// The leaf's notBefore (when it was issued, give or take the CA's backdating).
    pub not_before: SystemTime,
    /// The leaf's notAfter.
    pub not_after: SystemTime,
}

impl Issued {
    /// Checks the pair (a chain whose leaf parses, a key that belongs to it) and reads the
    /// leaf's validity. `Err` carries the cause, for the caller to name the source.
    pub(crate) fn from_pem(cert_pem: String, key_pem: String) -> Result<Issued, String> {
        let (not_before, not_after) = validity(&cert_pem)?;
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("bad certificate PEM: {e}"))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| format!("bad key PEM: {e}"))?;
        rustls::sign::CertifiedKey::from_der(chain, key, &rustls::crypto::ring::default_provider())
            .map_err(|e| format!("key does not fit the certificate: {e}"))?;
        Ok(Issued {
            cert_pem,
            key_pem,
            not_before,
            not_after,
        })
    }

    /// Whether this certificate should be renewed at `now` (see [`renew_due`]).
    pub fn renew_due(&self, now: SystemTime) -> bool {
        renew_due(self.not_before, self.not_after, now)
    }

    /// When it becomes due for renewal (see [`renew_at`]).
    pub fn renew_at(&self) -> SystemTime {
        renew_at(self.not_before, self.not_after)
    }
}

/// The leaf's (first certificate's) notBefore and notAfter in a PEM chain.
fn validity(cert_pem: &str) -> Result<(SystemTime, SystemTime), String> {
    let leaf = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .next()
        .ok_or("holds no PEM certificate")?
        .map_err(|e| format!("bad certificate PEM: {e}"))?;
    let cert =
        x509_cert::Certificate::from_der(&leaf).map_err(|e| format!("bad certificate: {e}"))?;
    let validity = cert.tbs_certificate.validity;
    Ok((
        SystemTime::UNIX_EPOCH + validity.not_before.to_unix_duration(),
        SystemTime::UNIX_EPOCH + validity.not_after.to_unix_duration(),
    ))
}

/// Renew once less than a third of the lifetime (`not_before` to `not_after`) is left, and
/// at the latest 30 days before `not_after`: a 90-day certificate at 30 days left, a 6-day
/// one at 2, a year-long one at 30.
pub fn renew_due(not_before: SystemTime, not_after: SystemTime, now: SystemTime) -> bool {
    now > renew_at(not_before, not_after)
}

/// The time from which [`renew_due`] holds: a third of the lifetime (at most 30 days) before
/// `not_after`; for a certificate that ends before it begins, always (the epoch).
pub fn renew_at(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    const AT_MOST: Duration = Duration::from_secs(30 * 24 * 3600);
    match not_after.duration_since(not_before) {
        Ok(lifetime) => not_after - (lifetime / 3).min(AT_MOST),
        Err(_) => SystemTime::UNIX_EPOCH,
    }
}

/// Issued certificates under `DIR/certs`, by name (e.g. the app's or the first domain).
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// The store under `dir` (the directory the [`Client`](crate::Client) keeps its
    /// account in); `dir/certs` is made on the first save.
    pub fn new(dir: &Path) -> Store {
        Store {
            dir: dir.join("certs"),
        }
    }

    /// The paths of `name`'s certificate chain and key.
    pub fn paths(&self, name: &str) -> Result<(PathBuf, PathBuf), AcmeError> {
        check_name(name)?;
        Ok((
            self.dir.join(format!("{name}.crt")),
            self.dir.join(format!("{name}.key")),
        ))
    }

    /// `name`'s certificate, or `None` when there is none, or only half of a pair (a save
    /// cut short: the key of a new certificate beside the old one).
    pub fn load(&self, name: &str) -> Result<Option<Issued>, AcmeError> {
        let (crt, key) = self.paths(name)?;
        let (Some(cert_pem), Some(key_pem)) = (read_optional(&crt)?, read_optional(&key)?) else {
            return Ok(None);
        };
        if let Err(cause) = validity(&cert_pem) {
            return Err(AcmeError::BadFile { path: crt, cause });
        }
        match Issued::from_pem(cert_pem, key_pem) {
            Ok(issued) => Ok(Some(issued)),
            // The certificate reads, so the key is new or unreadable: order anew.
            Err(_) => Ok(None),
        }
    }

    /// Saves `name`'s certificate: the key first, then the chain, each atomically, so that a
    /// save cut short leaves the old pair or a pair [`Store::load`] sees as missing.
    pub fn save(&self, name: &str, issued: &Issued) -> Result<(), AcmeError> {
        let (crt, key) = self.paths(name)?;
        fs::create_dir_all(&self.dir).map_err(|err| AcmeError::Io {
            path: self.dir.clone(),
            err,
        })?;
        write_private(&key, issued.key_pem.as_bytes())?;
        write_private(&crt, issued.cert_pem.as_bytes())
    }
}

/// A name is one file name: no separators, no leading dot, not empty.
fn check_name(name: &str) -> Result<(), AcmeError> {
    let cause = if name.is_empty() {
        "it is empty"
    } else if name.starts_with('.') {
        "it starts with a dot"
    } else if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        "it may hold only letters, digits, `.`, `-` and `_`"
    } else {
        return Ok(());
    };
    Err(AcmeError::BadName {
        name: name.to_string(),
        cause,
    })
}

fn read_optional(path: &Path) -> Result<Option<String>, AcmeError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(AcmeError::Io {
            path: path.to_path_buf(),
            err,
        }),
    }
}

/// Writes `path` atomically with mode 0600: a temporary file beside it, synced, renamed
/// over it, and the directory synced.
pub(crate) fn write_private(path: &Path, data: &[u8]) -> Result<(), AcmeError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |err| AcmeError::Io { path, err }
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    // A leftover temporary file keeps the mode it was made with.
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(io(&tmp))?;
    file.write_all(data).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    drop(file);
    fs::rename(&tmp, path).map_err(io(path))?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn at(days: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + DAY * 20_000 + DAY * days as u32
    }

    #[test]
    fn renews_a_90_day_certificate_with_30_days_left() {
        assert!(!renew_due(at(0), at(90), at(59)));
        assert!(!renew_due(at(0), at(90), at(60)));
        assert!(renew_due(at(0), at(90), at(61)));
    }

    #[test]
    fn renews_a_short_certificate_with_a_third_left() {
        // 6 days: due with less than 2 days left.
        assert!(!renew_due(at(0), at(6), at(3)));
        assert!(renew_due(at(0), at(6), at(5)));
    }

    #[test]
    fn renews_a_long_certificate_30_days_before_it_ends() {
        assert!(!renew_due(at(0), at(365), at(300)));
        assert!(renew_due(at(0), at(365), at(336)));
    }

    #[test]
    fn renews_an_expired_or_inverted_certificate() {
        assert!(renew_due(at(0), at(90), at(91)));
        assert!(renew_due(at(10), at(5), at(0)));
    }

    #[test]
    fn names_are_single_file_names() {
        let store = Store::new(Path::new("/x"));
        for bad in ["", ".hidden", "a/b", "../up", "a b"] {
            assert!(
                matches!(store.paths(bad), Err(AcmeError::BadName { .. })),
                "{bad:?}"
            );
        }
        let (crt, key) = store.paths("www.app-1_x").unwrap();
        assert_eq!(crt, Path::new("/x/certs/www.app-1_x.crt"));
        assert_eq!(key, Path::new("/x/certs/www.app-1_x.key"));
    }

    fn self_signed(name: &str) -> Issued {
        let made = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        Issued::from_pem(made.cert.pem(), made.signing_key.serialize_pem()).unwrap()
    }

    #[test]
    fn saves_and_loads_a_pair() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        assert_eq!(store.load("app").unwrap(), None);
        let issued = self_signed("app.test");
        assert!(issued.not_before < issued.not_after);
        store.save("app", &issued).unwrap();
        assert_eq!(store.load("app").unwrap(), Some(issued.clone()));
        let newer = self_signed("app.test");
        store.save("app", &newer).unwrap();
        assert_eq!(store.load("app").unwrap(), Some(newer));
    }

    #[test]
    fn a_save_cut_short_loads_as_no_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        store.save("app", &self_signed("app.test")).unwrap();
        // The new key is written first: it sits beside the old certificate.
        let (crt, key) = store.paths("app").unwrap();
        write_private(&key, self_signed("app.test").key_pem.as_bytes()).unwrap();
        assert_eq!(store.load("app").unwrap(), None);
        // Only the key, no certificate yet.
        fs::remove_file(&crt).unwrap();
        assert_eq!(store.load("app").unwrap(), None);
    }

    #[test]
    fn a_corrupt_certificate_names_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        store.save("app", &self_signed("app.test")).unwrap();
        let (crt, _) = store.paths("app").unwrap();
        fs::write(&crt, "not a certificate").unwrap();
        let err = store.load("app").unwrap_err();
        assert!(err.to_string().contains("certs/app.crt"), "{err}");
        assert!(err.hint().unwrap().contains("remove"), "{:?}", err.hint());
    }

    #[test]
    fn writes_private_files_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write_private(&path, b"one").unwrap();
        write_private(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!dir.path().join("f.tmp").exists());
    }
}
