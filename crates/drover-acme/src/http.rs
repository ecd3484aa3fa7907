//! The HTTPS client the ACME protocol runs over (rustls with ring, the roots of
//! `[proxy.acme] ca` or the platform's), and how its failures read: what could not be
//! reached, and whether the cause is an untrusted certificate.

use std::error::Error as StdError;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use instant_acme::{BodyWrapper, HttpClient, Problem};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::AcmeError;

pub(crate) type Http = HyperClient<HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>;

/// How long a TCP connect to the ACME server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// An HTTPS client for the directory at `url`, trusting the certificates in `ca`, or the
/// platform's roots without one.
pub(crate) fn client(url: &str, ca: Option<&Path>) -> Result<Http, AcmeError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let internal = |cause: String| AcmeError::Internal {
        url: url.to_string(),
        cause,
    };
    let builder = match ca {
        Some(path) => {
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| internal(e.to_string()))?
                .with_root_certificates(roots(path)?)
                .with_no_client_auth();
            HttpsConnectorBuilder::new().with_tls_config(config)
        }
        None => HttpsConnectorBuilder::new()
            .with_provider_and_platform_verifier(provider)
            .map_err(|e| internal(format!("cannot load the platform's roots: {e}")))?,
    };
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let connector = builder.https_only().enable_http1().wrap_connector(http);
    // No connection outlives its request: between two calls nothing drives the runtime, so
    // a pooled connection the server closed meanwhile would fail the next request.
    Ok(HyperClient::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(connector))
}

/// Every certificate in the PEM file at `path`, as trust roots.
fn roots(path: &Path) -> Result<rustls::RootCertStore, AcmeError> {
    let bad = |cause: String| AcmeError::BadCa {
        path: path.to_path_buf(),
        cause,
    };
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| bad(format!("bad PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| bad(format!("bad certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(bad("holds no PEM certificate".into()));
    }
    Ok(roots)
}

/// GET `url`: its status and body.
pub(crate) async fn get(http: &Http, url: &str) -> Result<(u16, Bytes), instant_acme::Error> {
    let request = http::Request::get(url)
        .header(http::header::USER_AGENT, "drover")
        .body(BodyWrapper::default())?;
    let response = HttpClient::request(http, request).await?;
    let status = response.parts.status.as_u16();
    let mut body = response.body;
    let body = body
        .into_bytes()
        .await
        .map_err(instant_acme::Error::Other)?;
    Ok((status, body))
}

/// `err` in one line, its causes joined, and whether it is a certificate the client does
/// not trust.
pub(crate) fn describe(err: &(dyn StdError + 'static)) -> (String, bool) {
    let mut parts: Vec<String> = Vec::new();
    let mut trust = false;
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(tls) = rustls_error(e) {
            trust |= matches!(
                tls,
                rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
            );
        }
        // hyper-util's "client error (Connect)" says nothing its causes do not.
        let wrapper = e.is::<hyper_util::client::legacy::Error>() && e.source().is_some();
        let text = e.to_string();
        if !wrapper && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    (parts.join(": "), trust)
}

/// The rustls error `e` is, or wraps in (nested) I/O errors, whose `source()` skips it.
fn rustls_error<'a>(e: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    if let Some(tls) = e.downcast_ref::<rustls::Error>() {
        return Some(tls);
    }
    let inner = e.downcast_ref::<std::io::Error>()?.get_ref()?;
    rustls_error(inner)
}

/// An ACME problem document's detail, with the subproblems that name an identifier.
pub(crate) fn problem_detail(problem: &Problem) -> String {
    let mut text = problem
        .detail
        .clone()
        .or_else(|| problem.r#type.clone())
        .unwrap_or_else(|| "no detail given".into());
    for sub in &problem.subproblems {
        if let Some(detail) = &sub.detail {
            text.push_str("; ");
            text.push_str(detail);
        }
    }
    text
}

/// Maps a failed ACME request (`what`, e.g. "create an account") against the directory at
/// `url` to our error.
pub(crate) fn acme_error(url: &str, what: &str, err: instant_acme::Error) -> AcmeError {
    match err {
        instant_acme::Error::Api(problem) => AcmeError::Refused {
            url: url.to_string(),
            what: what.to_string(),
            detail: problem_detail(&problem),
        },
        instant_acme::Error::Other(inner) if inner.is::<hyper_util::client::legacy::Error>() => {
            let (cause, trust) = describe(inner.as_ref());
            AcmeError::Unreachable {
                url: url.to_string(),
                cause,
                trust,
            }
        }
        other => {
            let (cause, _) = describe(&other);
            AcmeError::Internal {
                url: url.to_string(),
                cause: format!("cannot {what}: {cause}"),
            }
        }
    }
}
