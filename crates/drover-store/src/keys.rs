//! Release signing: the local ed25519 signing key (made on first use), the trusted keys,
//! and the signature that travels with every release. Public keys read `ed25519:<hex>`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::hash::Hash;

const PREFIX: &str = "ed25519:";

/// A public key as shown to users: `ed25519:` then 64 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(pub VerifyingKey);

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{PREFIX}{}", hex(self.0.as_bytes()))
    }
}

impl std::str::FromStr for PublicKey {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<PublicKey, String> {
        let s = s.trim();
        let body = s.strip_prefix(PREFIX).ok_or_else(|| {
            format!("`{s}` is not a drover public key (expected `{PREFIX}<64 hex digits>`)")
        })?;
        let bytes: [u8; 32] = unhex(body)
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| format!("`{s}` is not a drover public key (expected 64 hex digits)"))?;
        VerifyingKey::from_bytes(&bytes)
            .map(PublicKey)
            .map_err(|e| format!("`{s}` is not a valid ed25519 key: {e}"))
    }
}

/// What is stored beside a release: who signed it and the signature over its id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseSignature {
    pub key: String,
    pub sig: String,
}

fn message(id: &Hash) -> Vec<u8> {
    format!("drover-release-v1:{id}").into_bytes()
}

impl ReleaseSignature {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a signature always serialises")
    }

    pub fn from_bytes(bytes: &[u8], what: &str) -> Result<ReleaseSignature> {
        serde_json::from_slice(bytes)
            .map_err(|e| Error::invalid(what, format!("bad release signature: {e}")))
    }

    /// Checks the signature over `id`; returns the signer.
    pub fn check(&self, id: &Hash, what: &str) -> Result<PublicKey> {
        let key: PublicKey = self
            .key
            .parse()
            .map_err(|e: String| Error::invalid(what, e))?;
        let sig: [u8; 64] = unhex(&self.sig)
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| Error::invalid(what, "signature is not 128 hex digits"))?;
        key.0
            .verify_strict(&message(id), &Signature::from_bytes(&sig))
            .map_err(|_| {
                Error::invalid(what, format!("bad signature by {key} over release {id}"))
            })?;
        Ok(key)
    }
}

/// The keys under `ROOT/keys`: `signing.key` (0600) and `trusted/*.pub`.
#[derive(Debug, Clone)]
pub struct Keyring {
    dir: PathBuf,
}

impl Keyring {
    pub fn new(root: &Path) -> Keyring {
        Keyring {
            dir: root.join("keys"),
        }
    }

    fn signing_path(&self) -> PathBuf {
        self.dir.join("signing.key")
    }

    fn trusted_dir(&self) -> PathBuf {
        self.dir.join("trusted")
    }

    /// The local signing key, created on first use.
    pub fn signing_key(&self) -> Result<SigningKey> {
        let path = self.signing_path();
        match fs::read_to_string(&path) {
            Ok(text) => parse_secret(&text).ok_or_else(|| {
                Error::invalid(path.display().to_string(), "not a drover signing key")
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut secret = [0u8; 32];
                getrandom::fill(&mut secret)
                    .map_err(|e| Error::invalid("random source", e.to_string()))?;
                let key = SigningKey::from_bytes(&secret);
                self.write_secret(&key)?;
                Ok(key)
            }
            Err(e) => Err(e).at(&path),
        }
    }

    /// Replaces the local signing key with one read from a file written by `drover keys export`.
    pub fn import(&self, file: &Path) -> Result<PublicKey> {
        let text = fs::read_to_string(file).at(file)?;
        let key = parse_secret(&text).ok_or_else(|| {
            Error::invalid(
                file.display().to_string(),
                "not a drover signing key (expected `drover-secret-key:<64 hex digits>`)",
            )
        })?;
        self.write_secret(&key)?;
        Ok(PublicKey(key.verifying_key()))
    }

    /// The text of the signing key, for `drover keys export`.
    pub fn export(&self) -> Result<String> {
        Ok(secret_text(&self.signing_key()?))
    }

    fn write_secret(&self, key: &SigningKey) -> Result<()> {
        let path = self.signing_path();
        drover_config::secrets::write_private(&path, secret_text(key).as_bytes()).at(&path)
    }

    pub fn public_key(&self) -> Result<PublicKey> {
        Ok(PublicKey(self.signing_key()?.verifying_key()))
    }

    pub fn sign(&self, id: &Hash) -> Result<ReleaseSignature> {
        let key = self.signing_key()?;
        let sig = key.sign(&message(id));
        Ok(ReleaseSignature {
            key: PublicKey(key.verifying_key()).to_string(),
            sig: hex(&sig.to_bytes()),
        })
    }

    /// Keys whose releases this store accepts: the local key and every trusted one.
    pub fn trusted(&self) -> Result<Vec<(String, PublicKey)>> {
        let mut out = vec![("local".to_string(), self.public_key()?)];
        let dir = self.trusted_dir();
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e).at(&dir),
        };
        let mut extra = Vec::new();
        for entry in rd {
            let path = entry.at(&dir)?.path();
            if path.extension().is_some_and(|e| e == "pub") {
                let text = fs::read_to_string(&path).at(&path)?;
                let key = text
                    .parse()
                    .map_err(|e: String| Error::invalid(path.display().to_string(), e))?;
                let name = path
                    .file_stem()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                extra.push((name, key));
            }
        }
        extra.sort_by(|a, b| a.0.cmp(&b.0));
        out.extend(extra);
        Ok(out)
    }

    pub fn trust(&self, key: &PublicKey, name: &str) -> Result<PathBuf> {
        if !drover_config::valid_name(name) {
            return Err(Error::invalid_hinted(
                format!("key name `{name}`"),
                "not a valid name",
                "use letters, digits, `-` and `_`",
            ));
        }
        let dir = self.trusted_dir();
        fs::create_dir_all(&dir).at(&dir)?;
        let path = dir.join(format!("{name}.pub"));
        fs::write(&path, format!("{key}\n")).at(&path)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).at(&path)?;
        Ok(path)
    }

    /// Checks a release signature and that its signer is trusted.
    pub fn check_trusted(
        &self,
        id: &Hash,
        sig: &ReleaseSignature,
        what: &str,
    ) -> Result<PublicKey> {
        let signer = sig.check(id, what)?;
        if self.trusted()?.iter().any(|(_, k)| *k == signer) {
            Ok(signer)
        } else {
            Err(Error::Untrusted {
                what: what.to_string(),
                key: signer.to_string(),
            })
        }
    }
}

fn secret_text(key: &SigningKey) -> String {
    format!("drover-secret-key:{}\n", hex(key.as_bytes()))
}

fn parse_secret(text: &str) -> Option<SigningKey> {
    let body = text.trim().strip_prefix("drover-secret-key:")?;
    let bytes: [u8; 32] = unhex(body)?.try_into().ok()?;
    Some(SigningKey::from_bytes(&bytes))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_check() {
        let dir = tempfile::tempdir().unwrap();
        let ring = Keyring::new(dir.path());
        let id = Hash::of(b"release");
        let sig = ring.sign(&id).unwrap();
        assert_eq!(
            ring.check_trusted(&id, &sig, "r").unwrap(),
            ring.public_key().unwrap()
        );
        assert!(sig.check(&Hash::of(b"other"), "r").is_err());

        let other_dir = tempfile::tempdir().unwrap();
        let other = Keyring::new(other_dir.path());
        let foreign = other.sign(&id).unwrap();
        let err = ring.check_trusted(&id, &foreign, "r").unwrap_err();
        assert!(matches!(err, Error::Untrusted { .. }), "{err}");
        ring.trust(&other.public_key().unwrap(), "ci").unwrap();
        ring.check_trusted(&id, &foreign, "r").unwrap();
    }

    #[test]
    fn a_bad_key_name_says_what_names_are_in_the_hint_not_the_message() {
        let dir = tempfile::tempdir().unwrap();
        let ring = Keyring::new(dir.path());
        let err = ring.trust(&ring.public_key().unwrap(), "a b").unwrap_err();
        assert_eq!(err.to_string(), "key name `a b`: not a valid name");
        assert_eq!(
            err.hint().as_deref(),
            Some("use letters, digits, `-` and `_`")
        );
        assert!(!dir.path().join("keys/trusted/a b.pub").exists());
    }

    #[test]
    fn key_text_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let ring = Keyring::new(dir.path());
        let pk = ring.public_key().unwrap();
        assert_eq!(pk.to_string().parse::<PublicKey>().unwrap(), pk);
        assert!("ed25519:zz".parse::<PublicKey>().is_err());
        let mode = fs::metadata(dir.path().join("keys/signing.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
