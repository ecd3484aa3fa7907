//! HTTP-01 answers: the [`Challenges`] a caller publishes them through, and [`ChallengeMap`],
//! the in-memory table the proxy answers `GET /.well-known/acme-challenge/TOKEN` from.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// The path under which an ACME server asks for HTTP-01 answers, on port 80.
pub const CHALLENGE_PATH: &str = "/.well-known/acme-challenge/";

/// Where an order publishes its HTTP-01 answers while the ACME server validates them.
pub trait Challenges: Send + Sync {
    /// Answer `GET /.well-known/acme-challenge/{token}` with `key_authorization`.
    fn put(&self, token: &str, key_authorization: &str);
    /// Stop answering for `token`.
    fn remove(&self, token: &str);
}

/// HTTP-01 answers in memory, shared by cloning: an order puts them, the port-80 listener
/// looks them up.
#[derive(Clone, Debug, Default)]
pub struct ChallengeMap {
    answers: Arc<RwLock<HashMap<String, String>>>,
}

impl ChallengeMap {
    pub fn new() -> ChallengeMap {
        ChallengeMap::default()
    }

    /// The key authorization to answer for `token`, if an order waits on it.
    pub fn get(&self, token: &str) -> Option<String> {
        let answers = self.answers.read().unwrap_or_else(|e| e.into_inner());
        answers.get(token).cloned()
    }

    /// The body to answer a request for `path` with: `Some` for
    /// `/.well-known/acme-challenge/TOKEN` of a published token, else `None` (a 404).
    pub fn answer(&self, path: &str) -> Option<String> {
        let token = path.strip_prefix(CHALLENGE_PATH)?;
        if token.is_empty() || token.contains('/') {
            return None;
        }
        self.get(token)
    }

    pub fn is_empty(&self) -> bool {
        let answers = self.answers.read().unwrap_or_else(|e| e.into_inner());
        answers.is_empty()
    }
}

impl Challenges for ChallengeMap {
    fn put(&self, token: &str, key_authorization: &str) {
        let mut answers = self.answers.write().unwrap_or_else(|e| e.into_inner());
        answers.insert(token.to_string(), key_authorization.to_string());
    }

    fn remove(&self, token: &str) {
        let mut answers = self.answers.write().unwrap_or_else(|e| e.into_inner());
        answers.remove(token);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_published_tokens_under_the_challenge_path_only() {
        let map = ChallengeMap::new();
        let shared = map.clone();
        shared.put("tok", "tok.thumb");
        assert_eq!(map.get("tok").as_deref(), Some("tok.thumb"));
        assert_eq!(
            map.answer("/.well-known/acme-challenge/tok").as_deref(),
            Some("tok.thumb")
        );
        assert_eq!(map.answer("/tok"), None);
        assert_eq!(map.answer("/.well-known/acme-challenge/"), None);
        assert_eq!(map.answer("/.well-known/acme-challenge/tok/x"), None);
        shared.remove("tok");
        assert_eq!(map.get("tok"), None);
        assert!(map.is_empty());
    }
}
