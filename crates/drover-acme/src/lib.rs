//! drover's ACME client: an account kept on disk, HTTP-01 orders answered through a
//! [`Challenges`] table the proxy serves, and a [`Store`] of issued certificates.
//!
//! The API is blocking, for the agent's threads: each [`Client`] runs its own
//! current-thread tokio runtime inside. Call it from plain threads, never from async code.

mod challenge;
mod client;
mod error;
mod http;
mod store;

pub use challenge::{CHALLENGE_PATH, ChallengeMap, Challenges};
pub use client::{AcmeConfig, Client};
pub use error::AcmeError;
pub use store::{Issued, Store, renew_at, renew_due};
