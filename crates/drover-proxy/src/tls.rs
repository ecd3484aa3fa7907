//! TLS for the proxy's listeners: certificate pairs loaded from PEM files and checked,
//! served by host name (SNI), reloaded when their files change, and the accept step.
//!
//! Built on rustls with the ring provider, passed explicitly: nothing here installs or needs
//! a process-wide default provider.

mod certs;
mod pair;
#[cfg(test)]
mod testca;
mod watch;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

pub use certs::Certs;
pub use pair::{Pair, TlsError, load_pair, load_pair_at};
pub use watch::{Reload, Watch};

/// The ALPN protocol of the TLS-ALPN-01 ACME challenge (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// A server config answering with `certs`' certificates: TLS 1.3 and 1.2, ALPN `h2` then
/// `http/1.1` (and `acme-tls/1` with `acme_alpn`), sessions resumed by stateless tickets
/// (rotated every 6 hours, per process) or, for TLS 1.2 clients without tickets, by an
/// in-memory cache.
pub fn server_config(certs: Arc<Certs>, acme_alpn: bool) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Setup)?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if acme_alpn {
        config.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
    }
    config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(TlsError::Setup)?;
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(4096);
    Ok(Arc::new(config))
}

/// Runs the TLS handshake on an accepted connection, for at most `timeout`; the stream with
/// the negotiated ALPN protocol and the client's SNI name, if any.
pub async fn accept<S>(
    acceptor: &TlsAcceptor,
    stream: S,
    timeout: Duration,
) -> io::Result<(TlsStream<S>, Option<Vec<u8>>, Option<String>)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let tls = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(tls) => tls?,
        Err(_) => {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("TLS handshake not done within {} ms", timeout.as_millis()),
            ));
        }
    };
    let (_, conn) = tls.get_ref();
    let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
    let sni = conn.server_name().map(str::to_owned);
    Ok((tls, alpn, sni))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use rustls::pki_types::{CertificateDer, ServerName};
    use rustls::{ClientConfig, HandshakeKind, RootCertStore};
    use rustls_pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use x509_cert::der::Decode;

    use super::testca::{Ca, KeyKind};
    use super::*;

    /// A TLS server on 127.0.0.1 that answers each connection with `SNI ALPN` and closes it.
    async fn server(certs: Arc<Certs>) -> std::net::SocketAddr {
        let acceptor = TlsAcceptor::from(server_config(certs, false).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok((mut tls, alpn, sni)) =
                        accept(&acceptor, tcp, Duration::from_secs(10)).await
                    else {
                        return;
                    };
                    let alpn = alpn.map(|a| String::from_utf8(a).unwrap());
                    let line =
                        format!("{} {}\n", sni.unwrap_or_default(), alpn.unwrap_or_default());
                    let _ = tls.write_all(line.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        addr
    }

    fn client(ca: &Path, alpn: &[&[u8]], tls12_only: bool) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(ca).unwrap())
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions: &[&rustls::SupportedProtocolVersion] = if tls12_only {
            &[&rustls::version::TLS12]
        } else {
            &[&rustls::version::TLS13, &rustls::version::TLS12]
        };
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    struct Seen {
        /// The leaf the server sent.
        leaf: Vec<u8>,
        /// Its subjectAltName DNS names.
        names: Vec<String>,
        alpn: Option<Vec<u8>>,
        /// What the server's `accept` saw: `SNI ALPN`.
        reply: String,
        kind: Option<HandshakeKind>,
    }

    async fn connect(
        addr: std::net::SocketAddr,
        config: Arc<ClientConfig>,
        host: &str,
    ) -> io::Result<Seen> {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from(host.to_string()).unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await?;
        let (_, conn) = tls.get_ref();
        let leaf = conn.peer_certificates().unwrap()[0].to_vec();
        let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
        let kind = conn.handshake_kind();
        let mut reply = String::new();
        tls.read_to_string(&mut reply).await?;
        let cert = x509_cert::Certificate::from_der(&leaf).unwrap();
        let names = pair::tests_dns_names(&cert);
        Ok(Seen {
            leaf,
            names,
            alpn,
            reply: reply.trim_end().to_string(),
            kind,
        })
    }

    fn der(pem: &Path) -> Vec<u8> {
        CertificateDer::from_pem_file(pem).unwrap().to_vec()
    }

    #[tokio::test]
    async fn serves_each_host_its_certificate_and_reloads_it() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new(dir.path());
        let (a1, a1_key) = ca.issue("a1", &["a.test"], KeyKind::Pkcs8);
        let (a2, a2_key) = ca.issue("a2", &["a.test"], KeyKind::Pkcs1);
        let (_, stray_key) = ca.issue("stray", &["a.test"], KeyKind::Pkcs8);
        let (b, b_key) = ca.issue("b", &["b.test"], KeyKind::Sec1);
        let (a_cert, a_key) = (dir.path().join("a.pem"), dir.path().join("a.key"));
        std::fs::copy(&a1, &a_cert).unwrap();
        std::fs::copy(&a1_key, &a_key).unwrap();

        let certs = Arc::new(Certs::new());
        let mut watch = Watch::new(certs.clone());
        watch.add("a.test", &a_cert, &a_key).unwrap();
        watch.add("b.test", &b, &b_key).unwrap();
        let addr = server(certs.clone()).await;
        let both: &[&[u8]] = &[b"h2", b"http/1.1"];
        let fresh = || client(&ca.cert, both, false);

        let seen = connect(addr, fresh(), "a.test").await.unwrap();
        assert_eq!(seen.names, ["a.test"]);
        assert_eq!(seen.leaf, der(&a1));
        assert_eq!(seen.alpn.as_deref(), Some(&b"h2"[..]));
        assert_eq!(seen.reply, "a.test h2");
        let seen = connect(addr, fresh(), "b.test").await.unwrap();
        assert_eq!(seen.names, ["b.test"]);
        assert_eq!(seen.leaf, der(&b));
        let seen = connect(addr, client(&ca.cert, &[b"http/1.1"], false), "b.test")
            .await
            .unwrap();
        assert_eq!(seen.reply, "b.test http/1.1");
        // No certificate for a name nobody has: the handshake fails.
        assert!(connect(addr, fresh(), "c.test").await.is_err());

        // TLS 1.2 too, and both versions resume a session.
        for tls12 in [false, true] {
            let config = client(&ca.cert, both, tls12);
            let first = connect(addr, config.clone(), "a.test").await.unwrap();
            assert_eq!(first.kind, Some(HandshakeKind::Full), "tls12: {tls12}");
            let again = connect(addr, config, "a.test").await.unwrap();
            assert_eq!(again.kind, Some(HandshakeKind::Resumed), "tls12: {tls12}");
            assert_eq!(again.reply, "a.test h2");
        }

        // A new pair for a.test is served from the next connection on.
        let tmp = dir.path().join("new.tmp");
        std::fs::copy(&a2_key, &tmp).unwrap();
        std::fs::rename(&tmp, &a_key).unwrap();
        std::fs::copy(&a2, &tmp).unwrap();
        std::fs::rename(&tmp, &a_cert).unwrap();
        let reloads = watch.poll();
        assert_eq!(reloads.len(), 1);
        assert_eq!(reloads[0].host, "a.test");
        reloads[0].result.as_ref().unwrap();
        let seen = connect(addr, fresh(), "a.test").await.unwrap();
        assert_eq!(seen.leaf, der(&a2));
        assert_eq!(seen.names, ["a.test"]);
        assert_eq!(
            connect(addr, fresh(), "b.test").await.unwrap().leaf,
            der(&b)
        );

        // A key that does not match keeps the pair serving, and poll says which file.
        std::fs::copy(&stray_key, &tmp).unwrap();
        std::fs::rename(&tmp, &a_key).unwrap();
        let reloads = watch.poll();
        let err = reloads[0].result.as_ref().unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
        assert!(err.to_string().contains(a_key.to_str().unwrap()), "{err}");
        assert_eq!(
            connect(addr, fresh(), "a.test").await.unwrap().leaf,
            der(&a2)
        );
    }

    #[tokio::test]
    async fn a_handshake_that_does_not_come_times_out() {
        let acceptor = TlsAcceptor::from(server_config(Arc::new(Certs::new()), true).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _silent = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        let err = accept(&acceptor, tcp, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
    }

    #[test]
    fn acme_alpn_is_offered_only_when_asked() {
        let certs = Arc::new(Certs::new());
        let plain = server_config(certs.clone(), false).unwrap();
        assert_eq!(plain.alpn_protocols, [b"h2".to_vec(), b"http/1.1".to_vec()]);
        let acme = server_config(certs, true).unwrap();
        assert_eq!(acme.alpn_protocols.last().unwrap(), ACME_TLS_ALPN);
    }
}
