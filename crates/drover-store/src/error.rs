//! The store's error type: every variant names the file, object or key at fault,
//! and `hint()` adds the likely fix where there is one.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {err}", path.display())]
    Io { path: PathBuf, err: std::io::Error },
    /// Bad input: a file, archive, manifest or key that cannot be accepted.
    #[error("{what}: {message}")]
    Invalid {
        what: String,
        message: String,
        /// The fix, where there is one.
        hint: Option<String>,
    },
    /// An archive whose release expands to more than the import limit.
    #[error(
        "{what} expands to {} of files, more than the limit of {}",
        human(*size),
        human(*limit)
    )]
    TooLarge {
        /// The archive and the release.
        what: String,
        /// Where the archive came from, for the hint (`-` for stdin).
        file: String,
        size: u64,
        limit: u64,
    },
    #[error("no release matches `{0}`")]
    NotFound(String),
    #[error("`{query}` is ambiguous: it matches {}", matches.join(", "))]
    Ambiguous { query: String, matches: Vec<String> },
    #[error("{what} is signed by {key}, which this store does not trust")]
    Untrusted { what: String, key: String },
    /// A stored release's signature file that does not check (unreadable, garbage, or over
    /// another release).
    #[error("{release}: its signature {} does not check: {reason}", path.display())]
    BadSignature {
        release: String,
        path: PathBuf,
        reason: String,
    },
    #[error("{kind} {id} is corrupt: {reason}")]
    Corrupt {
        kind: &'static str,
        id: String,
        reason: String,
    },
    #[error("{kind} {id} is missing from the store")]
    Missing { kind: &'static str, id: String },
    /// The stream to the other end of a transfer broke, or carried what a transfer does not.
    #[error("{peer}: {message}")]
    Stream { peer: String, message: String },
    /// The other end of a transfer refused or failed; its own words.
    #[error("{message}")]
    Remote {
        message: String,
        hint: Option<String>,
        /// It refused because it does not trust the release's signer.
        untrusted: bool,
    },
}

impl Error {
    pub fn invalid(what: impl Into<String>, message: impl Into<String>) -> Error {
        Error::Invalid {
            what: what.into(),
            message: message.into(),
            hint: None,
        }
    }

    /// Bad input, with the fix.
    pub fn invalid_hinted(
        what: impl Into<String>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Error {
        Error::Invalid {
            what: what.into(),
            message: message.into(),
            hint: Some(hint.into()),
        }
    }

    /// A likely fix, shown as a `hint:` line under the error.
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::NotFound(_) => Some("`drover releases` lists what the store holds".into()),
            Error::Ambiguous { .. } => Some("give more digits of the release id".into()),
            Error::Untrusted { key, .. } => Some(format!(
                "if you trust this signer, run `drover keys trust {key}`"
            )),
            Error::Corrupt { .. } | Error::Missing { .. } => Some(
                "run `drover verify` to list every bad object; re-import the release with `drover unpack`".into(),
            ),
            Error::BadSignature { .. } => Some(
                "the file was damaged or replaced: nothing of this release is used; `drover verify` lists every bad object; build the release again or re-import it with `drover unpack`".into(),
            ),
            Error::Remote { hint, .. } | Error::Invalid { hint, .. } => hint.clone(),
            Error::TooLarge { file, size, .. } => Some(format!(
                "if a release this large is expected, raise the limit: `drover unpack {file} --max-size {}G`",
                size.div_ceil(1 << 30)
            )),
            _ => None,
        }
    }
}

/// A byte count for a message: bytes, and MiB or GiB where that reads better.
fn human(n: u64) -> String {
    match n {
        0..1_048_576 => format!("{n} bytes"),
        1_048_576..1_073_741_824 => format!("{n} bytes ({:.1} MiB)", n as f64 / 1_048_576.0),
        _ => format!("{n} bytes ({:.1} GiB)", n as f64 / 1_073_741_824.0),
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches the path to an I/O error.
pub trait IoContext<T> {
    fn at(self, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: &Path) -> Result<T> {
        self.map_err(|err| Error::Io {
            path: path.to_owned(),
            err,
        })
    }
}
