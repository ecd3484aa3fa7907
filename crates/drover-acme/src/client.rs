//! The blocking ACME client: the account in `DIR/account.json`, made once and reused, and
//! HTTP-01 orders, each bounded by a deadline, its answers withdrawn whatever the outcome.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, Order, OrderStatus,
};
use serde::{Deserialize, Serialize};

use crate::AcmeError;
use crate::challenge::Challenges;
use crate::http::{self, Http, acme_error, problem_detail};
use crate::store::{Issued, write_private};

/// Where to get certificates: `[proxy.acme]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcmeConfig {
    /// The ACME directory URL, e.g. `https://acme-v02.api.letsencrypt.org/directory`.
    pub directory: String,
    /// The account's contact, given to the CA as `mailto:`.
    pub email: Option<String>,
    /// PEM certificates to trust for the directory (a private CA's, e.g. pebble's) instead
    /// of the platform's roots.
    pub ca: Option<PathBuf>,
}

/// How long `Client::new` may take to read the directory and load or make the account.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// The first and the longest pause between two polls of an order.
const FIRST_POLL: Duration = Duration::from_millis(250);
const LONGEST_POLL: Duration = Duration::from_secs(5);

const ACCOUNT_FILE: &str = "account.json";
const NO_ACCOUNT: &str = "urn:ietf:params:acme:error:accountDoesNotExist";

/// `account.json`: the credentials and the directory they belong to.
#[derive(Serialize, Deserialize)]
struct StoredAccount {
    directory: String,
    credentials: AccountCredentials,
}

/// The fields an ACME directory must have (RFC 8555 §7.1.1).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct DirectoryCheck {
    new_nonce: String,
    new_account: String,
    new_order: String,
}

/// An ACME account on one directory. Blocking, and safe to share between threads; never
/// call it from inside an async runtime (it runs its own).
pub struct Client {
    config: AcmeConfig,
    account_path: PathBuf,
    http: Http,
    account: Mutex<Account>,
    runtime: tokio::runtime::Runtime,
}

impl Client {
    /// Reads the directory, then the account kept in `dir/account.json`, or makes one
    /// there (mode 0600) when there is none, or only one for another directory.
    pub fn new(config: AcmeConfig, dir: &Path) -> Result<Client, AcmeError> {
        let url = config.directory.clone();
        if !url.starts_with("https://") {
            return Err(AcmeError::InvalidDirectory {
                url,
                cause: "an ACME directory is an https:// URL".into(),
            });
        }
        let http = http::client(&url, config.ca.as_deref())?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| AcmeError::Internal {
                url: url.clone(),
                cause: format!("cannot start a runtime: {e}"),
            })?;
        std::fs::create_dir_all(dir).map_err(|err| AcmeError::Io {
            path: dir.to_path_buf(),
            err,
        })?;
        let account_path = dir.join(ACCOUNT_FILE);
        let setup = async {
            check_directory(&http, &url).await?;
            match read_account(&account_path)? {
                Some(stored) if stored.directory == url => {
                    Account::builder_with_http(Box::new(http.clone()))
                        .from_credentials(stored.credentials)
                        .await
                        .map_err(|e| acme_error(&url, "restore the account", e))
                }
                _ => create_account(&http, &config, &account_path).await,
            }
        };
        let account = runtime
            .block_on(async { tokio::time::timeout(SETUP_TIMEOUT, setup).await })
            .map_err(|_| AcmeError::Unreachable {
                url: url.clone(),
                cause: format!("no answer within {}s", SETUP_TIMEOUT.as_secs()),
                trust: false,
            })??;
        Ok(Client {
            config,
            account_path,
            http,
            account: Mutex::new(account),
            runtime,
        })
    }

    /// The account's URL at the ACME server.
    pub fn account_id(&self) -> String {
        self.account().id().to_string()
    }

    /// Orders a certificate for `domains` (the first one leads), answering the HTTP-01
    /// challenges through `challenges`, within `timeout` in all. The answers are removed
    /// again whatever the outcome.
    pub fn order(
        &self,
        domains: &[String],
        challenges: &dyn Challenges,
        timeout: Duration,
    ) -> Result<Issued, AcmeError> {
        if domains.is_empty() {
            return Err(AcmeError::NoDomains);
        }
        let stage = Cell::new("creating the order");
        let order = self.order_within(domains, challenges, &stage);
        self.runtime
            .block_on(async { tokio::time::timeout(timeout, order).await })
            .map_err(|_| AcmeError::Timeout {
                domains: domains.join(", "),
                timeout,
                stage: stage.get(),
            })?
    }

    async fn order_within(
        &self,
        domains: &[String],
        challenges: &dyn Challenges,
        stage: &Cell<&'static str>,
    ) -> Result<Issued, AcmeError> {
        let url = &self.config.directory;
        let names = domains.join(", ");
        let identifiers: Vec<Identifier> =
            domains.iter().map(|d| Identifier::Dns(d.clone())).collect();
        let what = format!("create an order for {names}");
        let mut order = match self.account().new_order(&NewOrder::new(&identifiers)).await {
            // The server forgot the account (a test CA restarted): make a new one.
            Err(instant_acme::Error::Api(problem))
                if problem.r#type.as_deref() == Some(NO_ACCOUNT) =>
            {
                let account = create_account(&self.http, &self.config, &self.account_path).await?;
                *self.account.lock().unwrap_or_else(|e| e.into_inner()) = account.clone();
                account.new_order(&NewOrder::new(&identifiers)).await
            }
            other => other,
        }
        .map_err(|e| acme_error(url, &what, e))?;

        stage.set("publishing the HTTP-01 answers");
        let mut published = Published {
            challenges,
            tokens: Vec::new(),
        };
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(|e| acme_error(url, "read an authorization", e))?;
            let domain = authz.identifier().to_string();
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                status => {
                    return Err(AcmeError::ChallengeFailed {
                        domain,
                        detail: format!("its authorization is {status:?}"),
                    });
                }
            }
            let mut challenge = authz.challenge(ChallengeType::Http01).ok_or_else(|| {
                AcmeError::NoHttpChallenge {
                    url: url.clone(),
                    domain: domain.clone(),
                }
            })?;
            challenges.put(&challenge.token, challenge.key_authorization().as_str());
            published.tokens.push(challenge.token.clone());
            challenge.set_ready().await.map_err(|e| {
                acme_error(url, &format!("accept the HTTP-01 answer for {domain}"), e)
            })?;
        }

        stage.set("waiting for the ACME server to validate the HTTP-01 answers");
        let mut pause = FIRST_POLL;
        loop {
            let state = order
                .refresh()
                .await
                .map_err(|e| acme_error(url, "report the order's state", e))?;
            match state.status {
                OrderStatus::Ready | OrderStatus::Valid => break,
                OrderStatus::Invalid => return Err(why_invalid(&mut order, &names).await),
                OrderStatus::Pending | OrderStatus::Processing => {}
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(LONGEST_POLL);
        }
        drop(published);

        stage.set("waiting for the certificate");
        let key_pem = order
            .finalize()
            .await
            .map_err(|e| acme_error(url, &format!("finalize the order for {names}"), e))?;
        let mut pause = FIRST_POLL;
        let cert_pem = loop {
            let certificate = order
                .certificate()
                .await
                .map_err(|e| acme_error(url, &format!("issue the certificate for {names}"), e))?;
            if let Some(cert_pem) = certificate {
                break cert_pem;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(LONGEST_POLL);
        };
        Issued::from_pem(cert_pem, key_pem).map_err(|cause| AcmeError::BadCertificate {
            url: url.clone(),
            domains: names,
            cause,
        })
    }

    fn account(&self) -> Account {
        self.account
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The published answers of one order, withdrawn when it ends, however it ends.
struct Published<'a> {
    challenges: &'a dyn Challenges,
    tokens: Vec<String>,
}

impl Drop for Published<'_> {
    fn drop(&mut self) {
        for token in &self.tokens {
            self.challenges.remove(token);
        }
    }
}

/// Why an order turned invalid: the first failed challenge's domain and the server's detail.
async fn why_invalid(order: &mut Order, names: &str) -> AcmeError {
    let order_error = order.state().error.as_ref().map(problem_detail);
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authz)) = authorizations.next().await {
        if authz.refresh().await.is_err() {
            continue;
        }
        if authz.status != AuthorizationStatus::Invalid {
            continue;
        }
        let domain = authz.identifier().to_string();
        let detail = authz
            .challenges
            .iter()
            .find_map(|c| c.error.as_ref().map(problem_detail))
            .or(order_error)
            .unwrap_or_else(|| "the ACME server marked its authorization invalid".into());
        return AcmeError::ChallengeFailed { domain, detail };
    }
    AcmeError::ChallengeFailed {
        domain: names.to_string(),
        detail: order_error.unwrap_or_else(|| "the ACME server marked the order invalid".into()),
    }
}

/// GETs the directory: an answer, and an ACME directory's JSON.
async fn check_directory(http: &Http, url: &str) -> Result<(), AcmeError> {
    let (status, body) = http::get(http, url)
        .await
        .map_err(|e| acme_error(url, "serve its directory", e))?;
    let invalid = |cause: String| AcmeError::InvalidDirectory {
        url: url.to_string(),
        cause,
    };
    if !(200..300).contains(&status) {
        return Err(invalid(format!("it answers HTTP {status}")));
    }
    serde_json::from_slice::<DirectoryCheck>(&body)
        .map_err(|e| invalid(format!("its answer is not a directory's JSON ({e})")))?;
    Ok(())
}

fn read_account(path: &Path) -> Result<Option<StoredAccount>, AcmeError> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => {
            return Err(AcmeError::Io {
                path: path.to_path_buf(),
                err,
            });
        }
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| AcmeError::BadFile {
            path: path.to_path_buf(),
            cause: format!("not an ACME account ({e})"),
        })
}

/// Makes an account on the directory and keeps its credentials at `path`.
async fn create_account(
    http: &Http,
    config: &AcmeConfig,
    path: &Path,
) -> Result<Account, AcmeError> {
    let url = &config.directory;
    let contact: Vec<String> = config.email.iter().map(|e| format!("mailto:{e}")).collect();
    let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, credentials) = Account::builder_with_http(Box::new(http.clone()))
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            url.clone(),
            None,
        )
        .await
        .map_err(|e| acme_error(url, "create an account", e))?;
    let stored = StoredAccount {
        directory: url.clone(),
        credentials,
    };
    let json = serde_json::to_vec_pretty(&stored).map_err(|e| AcmeError::Internal {
        url: url.clone(),
        cause: format!("cannot encode the account: {e}"),
    })?;
    write_private(path, &json)?;
    Ok(account)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_is_shared_between_the_agents_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<Client>();
        shared::<crate::ChallengeMap>();
    }

    #[test]
    fn a_plain_http_directory_is_refused_before_any_request() {
        let dir = tempfile::tempdir().unwrap();
        let config = AcmeConfig {
            directory: "http://127.0.0.1:1/dir".into(),
            email: None,
            ca: None,
        };
        let err = Client::new(config, dir.path()).err().expect("an error");
        assert!(matches!(err, AcmeError::InvalidDirectory { .. }), "{err}");
        assert!(err.to_string().contains("http://127.0.0.1:1/dir"), "{err}");
        assert!(!dir.path().join(ACCOUNT_FILE).exists());
    }
}
