//! drover's releases and the content-addressed store that holds them on every host.
//!
//! A release is a [`Manifest`] (files, modes, symlinks, how to run the app) whose hash is the
//! release id, plus FastCDC chunks named by BLAKE3 and stored zstd-compressed. See
//! ARCHITECTURE.md for the on-disk layout and its invariants.

pub mod build;
pub mod chunk;
mod content;
mod deps;
mod error;
pub mod failpoint;
#[doc(hidden)]
pub mod fuzzing;
mod hash;
pub mod keys;
pub mod manifest;
mod objpack;
pub mod pack;
mod par;
mod pyc;
mod store;
pub mod transfer;

pub use build::{BuildInput, Built, build};
pub use deps::SYSTEM_PATH;
pub use error::{Error, IoContext, Result};
pub use hash::Hash;
pub use keys::{Keyring, PublicKey, ReleaseSignature};
pub use manifest::{ChunkRef, Entry, Manifest};
pub use store::{
    ChunkCache, GcReport, Materialised, Problem, ReleaseMeta, Store, StoreLock, VerifyReport,
    hash_file, remove_tree,
};
