//! The ACME client's errors: each names the directory URL, domain or file at fault;
//! `hint()` adds the likely fix, never part of the message.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    /// The directory's server cannot be reached: refused, no such host, or its TLS
    /// certificate is not trusted (`trust`).
    #[error("cannot reach ACME directory {url}: {cause}")]
    Unreachable {
        url: String,
        cause: String,
        trust: bool,
    },
    /// The URL answers, but not with an ACME directory.
    #[error("{url} is not an ACME directory: {cause}")]
    InvalidDirectory { url: String, cause: String },
    /// The ACME server refused a request (account, order, finalization), with its detail.
    #[error("ACME server {url} refused to {what}: {detail}")]
    Refused {
        url: String,
        what: String,
        detail: String,
    },
    /// The ACME server could not validate the HTTP-01 answer for `domain`.
    #[error("HTTP-01 challenge for {domain} failed: {detail}")]
    ChallengeFailed { domain: String, detail: String },
    /// The ACME server offered no HTTP-01 challenge for `domain`.
    #[error("ACME server {url} offers no HTTP-01 challenge for {domain}")]
    NoHttpChallenge { url: String, domain: String },
    #[error("certificate for {domains} not issued within {}s (while {stage})", timeout.as_secs_f32())]
    Timeout {
        domains: String,
        timeout: Duration,
        stage: &'static str,
    },
    /// The certificate the ACME server issued does not parse.
    #[error("certificate for {domains} from {url} is unreadable: {cause}")]
    BadCertificate {
        url: String,
        domains: String,
        cause: String,
    },
    /// `[proxy.acme] ca` cannot be read or holds no certificate.
    #[error("CA file {}: {cause}", path.display())]
    BadCa { path: PathBuf, cause: String },
    /// A file of ours that does not parse (account.json, a stored certificate or key).
    #[error("{}: {cause}", path.display())]
    BadFile { path: PathBuf, cause: String },
    #[error("`{name}` is not a certificate name: {cause}")]
    BadName { name: String, cause: &'static str },
    #[error("no domains to order a certificate for")]
    NoDomains,
    #[error("{}: {err}", path.display())]
    Io { path: PathBuf, err: std::io::Error },
    /// A failure inside the client that names nothing of the caller's.
    #[error("ACME client for {url}: {cause}")]
    Internal { url: String, cause: String },
}

impl AcmeError {
    /// The likely fix, for a `hint:` line.
    pub fn hint(&self) -> Option<String> {
        match self {
            AcmeError::Unreachable { trust: true, .. } => Some(
                "the directory's certificate is not trusted: give its CA's certificate (PEM) in `[proxy.acme] ca`".into(),
            ),
            AcmeError::Unreachable { .. } => Some(
                "check `[proxy.acme] directory` and that the ACME server runs and is reachable from this host; a directory with a private CA also needs `[proxy.acme] ca`".into(),
            ),
            AcmeError::InvalidDirectory { .. } => Some(
                "`[proxy.acme] directory` takes the directory URL, e.g. https://acme-v02.api.letsencrypt.org/directory".into(),
            ),
            AcmeError::ChallengeFailed { domain, .. } => Some(format!(
                "the ACME server fetches http://{domain}/.well-known/acme-challenge/...: {domain}'s DNS must point at this host and port 80 must be open to it"
            )),
            AcmeError::NoHttpChallenge { .. } => Some(
                "drover answers HTTP-01 only: use an ACME server that offers it for this name".into(),
            ),
            AcmeError::Timeout { .. } => {
                Some("the ACME server is slow or overloaded: try again later".into())
            }
            AcmeError::BadCa { .. } => {
                Some("`[proxy.acme] ca` takes a file of PEM certificates".into())
            }
            AcmeError::BadFile { path, .. } => Some(format!(
                "remove {} to have it made anew",
                path.display()
            )),
            _ => None,
        }
    }
}
