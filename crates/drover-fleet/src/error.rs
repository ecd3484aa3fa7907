//! The errors drover's commands share with the fleet: a message with a hint, and the kind
//! of failure an error is (its exit code).

/// A message with a hint for the user.
#[derive(Debug)]
pub struct Hinted {
    pub message: String,
    pub hint: String,
}

impl Hinted {
    pub fn hint(&self) -> Option<String> {
        Some(self.hint.clone())
    }
}

impl std::fmt::Display for Hinted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Hinted {}

pub fn hinted(message: impl Into<String>, hint: impl Into<String>) -> anyhow::Error {
    Hinted {
        message: message.into(),
        hint: hint.into(),
    }
    .into()
}

/// The first hint along an error's chain of causes.
pub fn hint_of(err: &anyhow::Error) -> Option<String> {
    err.chain().find_map(|cause| {
        if let Some(e) = cause.downcast_ref::<drover_store::Error>() {
            e.hint()
        } else if let Some(e) = cause.downcast_ref::<drover_config::secrets::SecretsError>() {
            e.hint()
        } else if let Some(e) = cause.downcast_ref::<drover_config::ConfigError>() {
            e.hint()
        } else if let Some(k) = cause.downcast_ref::<Kinded>() {
            k.hint.clone()
        } else {
            cause.downcast_ref::<Hinted>().and_then(Hinted::hint)
        }
    })
}

/// What kind of failure an error is: its exit code (listed in the README).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Anything else that failed.
    Failed = 1,
    /// Bad usage or input: flags, `drover.toml`, an archive or manifest, a release name.
    Input = 2,
    /// A deploy failed and every host is back on (or never left) its previous generation.
    RolledBack = 3,
    /// A deploy failed and left hosts on the new release (`--keep-partial`) or in a state
    /// drover could not learn (a host lost, a revert that failed).
    Partial = 4,
    /// Another holder has the environment's lock.
    Locked = 5,
}

/// An error of a kind other than a plain failure: its message (with its causes) and hint
/// as they were, and its exit code.
#[derive(Debug)]
pub struct Kinded {
    pub exit: Exit,
    pub message: String,
    pub hint: Option<String>,
}

impl std::fmt::Display for Kinded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Kinded {}

/// `err`, exiting with `exit`'s code.
pub fn kinded(exit: Exit, err: anyhow::Error) -> anyhow::Error {
    Kinded {
        exit,
        message: format!("{err:#}"),
        hint: hint_of(&err),
    }
    .into()
}
