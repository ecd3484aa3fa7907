//! Secrets files: each value age-encrypted (armored) to the file's recipients — the hosts'
//! and operators' public keys — so the file is safe to commit. Values are decrypted only in
//! memory, by an identity that is one of the recipients.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use age::secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

const HEADER: &str = "# drover secrets: every value below is encrypted with age to the recipients listed.\n# Safe to commit. Change it with `drover secrets set|rm|rekey`, never by hand.\n";

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("{}: {err}", path.display())]
    Io { path: PathBuf, err: std::io::Error },
    #[error("{what}: {message}")]
    Invalid { what: String, message: String },
    #[error("{what}: this host ({recipient}) is not a recipient of secret `{key}`")]
    NotRecipient {
        what: String,
        key: String,
        recipient: String,
    },
    #[error("{what}: secret `{key}` cannot be decrypted: {reason}")]
    Corrupt {
        what: String,
        key: String,
        reason: String,
    },
}

impl SecretsError {
    pub fn hint(&self) -> Option<String> {
        match self {
            SecretsError::NotRecipient { recipient, .. } => Some(format!(
                "re-encrypt the secrets to this host: `drover secrets rekey --recipient {recipient}`"
            )),
            SecretsError::Corrupt { .. } => Some(
                "the file was changed by hand or cut short: set the secret again with `drover secrets set`"
                    .into(),
            ),
            _ => None,
        }
    }
}

type Result<T, E = SecretsError> = std::result::Result<T, E>;

/// The parsed secrets file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsFile {
    /// age public keys (`age1...`) every value is encrypted to.
    #[serde(default)]
    pub recipients: Vec<String>,
    /// Name → armored age ciphertext.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
}

/// Writes a file only its owner can read (0600), atomically and durably: key material.
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    fs::rename(&tmp, path)
}

/// An age identity (secret key), kept in a 0600 file.
pub struct Identity(age::x25519::Identity);

impl Identity {
    /// Loads the identity at `path`, creating it on first use.
    pub fn load_or_create(path: &Path) -> Result<Identity> {
        let io = |err| SecretsError::Io {
            path: path.to_owned(),
            err,
        };
        match fs::read_to_string(path) {
            Ok(text) => {
                let line = text
                    .lines()
                    .find(|l| l.starts_with("AGE-SECRET-KEY-"))
                    .unwrap_or("");
                line.parse::<age::x25519::Identity>()
                    .map(Identity)
                    .map_err(|e| SecretsError::Invalid {
                        what: path.display().to_string(),
                        message: format!("not an age identity: {e}"),
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let id = age::x25519::Identity::generate();
                let text = Zeroizing::new(format!(
                    "# public key: {}\n{}\n",
                    id.to_public(),
                    id.to_string().expose_secret()
                ));
                write_private(path, text.as_bytes()).map_err(io)?;
                Ok(Identity(id))
            }
            Err(e) => Err(io(e)),
        }
    }

    /// The public key: what goes into a secrets file's recipients.
    pub fn public(&self) -> String {
        self.0.to_public().to_string()
    }
}

fn parse_recipient(r: &str, what: &str) -> Result<age::x25519::Recipient> {
    r.parse().map_err(|e| SecretsError::Invalid {
        what: what.to_string(),
        message: format!("`{r}` is not an age public key: {e}"),
    })
}

impl SecretsFile {
    /// `drover.secrets.toml`, or `drover.secrets.ENV.toml` for an environment.
    pub fn path(dir: &Path, environment: Option<&str>) -> PathBuf {
        match environment {
            Some(e) => dir.join(format!("drover.secrets.{e}.toml")),
            None => dir.join("drover.secrets.toml"),
        }
    }

    /// The file's name in an app directory (`drover.secrets.toml`, or with `.ENV`): how a
    /// deployed copy, which travels without its directory, is named in messages.
    pub fn file_name(environment: Option<&str>) -> String {
        Self::path(Path::new(""), environment).display().to_string()
    }

    /// Reads a secrets file; `None` when there is none.
    pub fn load(path: &Path) -> Result<Option<SecretsFile>> {
        match fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, &path.display().to_string()).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(SecretsError::Io {
                path: path.to_owned(),
                err,
            }),
        }
    }

    pub fn parse(text: &str, what: &str) -> Result<SecretsFile> {
        let file: SecretsFile = toml::from_str(text).map_err(|e| SecretsError::Invalid {
            what: what.to_string(),
            message: format!("not a drover secrets file: {}", e.to_string().trim_end()),
        })?;
        for r in &file.recipients {
            parse_recipient(r, what)?;
        }
        for (key, value) in &file.secrets {
            if !value.contains("-----BEGIN AGE ENCRYPTED FILE-----")
                || !value
                    .trim_end()
                    .ends_with("-----END AGE ENCRYPTED FILE-----")
            {
                return Err(SecretsError::Corrupt {
                    what: what.to_string(),
                    key: key.clone(),
                    reason: "not an armored age message (truncated?)".into(),
                });
            }
            // The header's structure is checked without a key: a value damaged there is
            // named here, where the file is known, not only where it is decrypted.
            let armored = age::armor::ArmoredReader::new(value.as_bytes());
            if let Err(e) = age::Decryptor::new_buffered(armored) {
                return Err(SecretsError::Corrupt {
                    what: what.to_string(),
                    key: key.clone(),
                    reason: e.to_string(),
                });
            }
        }
        Ok(file)
    }

    pub fn to_text(&self) -> String {
        let mut out = String::from(HEADER);
        out.push_str(&toml::to_string(self).expect("a secrets file serialises"));
        out
    }

    /// Writes the file atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let io = |err| SecretsError::Io {
            path: path.to_owned(),
            err,
        };
        let tmp = path.with_extension("toml.tmp");
        fs::write(&tmp, self.to_text()).map_err(io)?;
        fs::rename(&tmp, path).map_err(io)
    }

    fn encrypt(&self, value: &[u8], what: &str) -> Result<String> {
        let recipients: Vec<age::x25519::Recipient> = self
            .recipients
            .iter()
            .map(|r| parse_recipient(r, what))
            .collect::<Result<_>>()?;
        let encryptor =
            age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
                .map_err(|e| SecretsError::Invalid {
                    what: what.to_string(),
                    message: format!("cannot encrypt: {e}"),
                })?;
        let mut out = Vec::new();
        let write = || -> std::io::Result<()> {
            let armor =
                age::armor::ArmoredWriter::wrap_output(&mut out, age::armor::Format::AsciiArmor)?;
            let mut w = encryptor.wrap_output(armor)?;
            w.write_all(value)?;
            w.finish()?.finish()?;
            Ok(())
        };
        write().map_err(|err| SecretsError::Io {
            path: PathBuf::from(what),
            err,
        })?;
        Ok(String::from_utf8(out).expect("armor is ASCII"))
    }

    /// Adds recipients (deduplicated), without re-encrypting existing values.
    pub fn add_recipients(&mut self, more: &[String], what: &str) -> Result<()> {
        for r in more {
            parse_recipient(r, what)?;
            if !self.recipients.contains(r) {
                self.recipients.push(r.clone());
            }
        }
        Ok(())
    }

    pub fn set(&mut self, key: &str, value: &[u8], what: &str) -> Result<()> {
        if !crate::valid_env_key(key) {
            return Err(SecretsError::Invalid {
                what: what.to_string(),
                message: format!("`{key}` is not a valid environment variable name"),
            });
        }
        if self.recipients.is_empty() {
            return Err(SecretsError::Invalid {
                what: what.to_string(),
                message: "no recipients to encrypt to".into(),
            });
        }
        let ct = self.encrypt(value, what)?;
        self.secrets.insert(key.to_string(), ct);
        Ok(())
    }

    /// Decrypts every value, in memory only.
    pub fn decrypt_all(
        &self,
        identity: &Identity,
        what: &str,
    ) -> Result<BTreeMap<String, Zeroizing<String>>> {
        let mut out = BTreeMap::new();
        for (key, ct) in &self.secrets {
            let plain = age::decrypt(&identity.0, ct.as_bytes()).map_err(|e| match e {
                age::DecryptError::NoMatchingKeys => SecretsError::NotRecipient {
                    what: what.to_string(),
                    key: key.clone(),
                    recipient: identity.public(),
                },
                other => SecretsError::Corrupt {
                    what: what.to_string(),
                    key: key.clone(),
                    reason: other.to_string(),
                },
            })?;
            let plain = Zeroizing::new(plain);
            let text = String::from_utf8(plain.to_vec()).map_err(|_| SecretsError::Corrupt {
                what: what.to_string(),
                key: key.clone(),
                reason: "the value is not UTF-8".into(),
            })?;
            out.insert(key.clone(), Zeroizing::new(text));
        }
        Ok(out)
    }

    /// Re-encrypts every value to the current recipients (after adding or removing some).
    pub fn rekey(&mut self, identity: &Identity, what: &str) -> Result<()> {
        let plain = self.decrypt_all(identity, what)?;
        for (k, v) in plain.iter() {
            let ct = self.encrypt(v.as_bytes(), what)?;
            self.secrets.insert(k.clone(), ct);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let host = Identity::load_or_create(&dir.path().join("host.age")).unwrap();
        let other = Identity::load_or_create(&dir.path().join("other.age")).unwrap();
        let again = Identity::load_or_create(&dir.path().join("host.age")).unwrap();
        assert_eq!(host.public(), again.public());

        let mut f = SecretsFile::default();
        f.add_recipients(&[host.public()], "f").unwrap();
        f.set("TOKEN", b"s3cret", "f").unwrap();
        let text = f.to_text();
        assert!(!text.contains("s3cret"));
        let parsed = SecretsFile::parse(&text, "f").unwrap();
        assert_eq!(&*parsed.decrypt_all(&host, "f").unwrap()["TOKEN"], "s3cret");
        let err = parsed.decrypt_all(&other, "f").unwrap_err();
        assert!(matches!(err, SecretsError::NotRecipient { .. }), "{err}");

        let cut = text.replace("-----END AGE ENCRYPTED FILE-----", "");
        assert!(matches!(
            SecretsFile::parse(&cut, "f"),
            Err(SecretsError::Corrupt { .. })
        ));
        // Flip a character inside the ciphertext body.
        let ct = &parsed.secrets["TOKEN"];
        let body_line = ct.lines().nth(1).unwrap();
        let flipped: String = body_line
            .chars()
            .enumerate()
            .map(|(i, c)| {
                if i == 10 {
                    if c == 'A' { 'B' } else { 'A' }
                } else {
                    c
                }
            })
            .collect();
        let mut tampered = parsed.clone();
        tampered
            .secrets
            .insert("TOKEN".into(), ct.replacen(body_line, &flipped, 1));
        assert!(tampered.decrypt_all(&host, "f").is_err());

        let mut f2 = parsed.clone();
        f2.add_recipients(&[other.public()], "f").unwrap();
        f2.rekey(&host, "f").unwrap();
        assert_eq!(&*f2.decrypt_all(&other, "f").unwrap()["TOKEN"], "s3cret");
    }
}
