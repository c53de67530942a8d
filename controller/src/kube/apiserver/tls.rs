//! TLS of the aggregated API server: the serving certificate, and client certificates checked
//! against the front proxy's requestheader CA during the handshake.
//!
//! A client certificate is *optional* (Go's `VerifyClientCertIfGiven`, as cdi-apiserver): probes
//! and discovery come without one. A certificate that does not chain to the CA fails the
//! handshake; one that does is handed to the request handlers as [`Peer::Verified`] with its
//! CommonName, so [`super::frontproxy::authenticate`] can check the allowed names.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::server::WebPkiClientVerifier;
use uploader::tls::TlsListener;

use super::ApiServerError;
use super::frontproxy::{Peer, subject_common_name};

/// The server configuration: certificate chain and key from PEM files, client certificates
/// verified against `client_ca_pem` (the requestheader CA) when given.
///
/// # Errors
/// [`ApiServerError::Tls`] naming what cannot be read or used.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca_pem: &str,
) -> Result<Arc<rustls::ServerConfig>, ApiServerError> {
    let tls = |what: String| ApiServerError::Tls(what);
    let mut roots = RootCertStore::empty();
    let cas: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(client_ca_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| tls(format!("reading requestheader-client-ca-file: {e}")))?;
    let (added, _) = roots.add_parsable_certificates(cas);
    if added == 0 {
        return Err(tls("requestheader-client-ca-file holds no usable CA certificate".to_owned()));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| tls(format!("client certificate verifier: {e}")))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect)
        .map_err(|e| tls(format!("reading certificates from {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(tls(format!("no PEM certificate in {}", cert.display())));
    }
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key)
        .map_err(|e| tls(format!("reading the private key {}: {e}", key.display())))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(format!("TLS protocol versions: {e}")))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| tls(format!("TLS certificate {} and its key: {e}", cert.display())))?;
    // kube-apiserver's proxy speaks HTTP/1.1 (and h2, which we do not offer).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The client of one connection: its verified certificate's name, if any.
#[derive(Debug, Clone)]
pub struct ConnectionPeer {
    pub peer: Peer,
    pub address: SocketAddr,
}

impl Connected<IncomingStream<'_, TlsListener>> for ConnectionPeer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        let (_, session) = stream.io().get_ref();
        // rustls hands out only certificates its verifier accepted.
        let peer = match session.peer_certificates().and_then(<[_]>::first) {
            Some(leaf) => Peer::Verified { common_name: subject_common_name(leaf) },
            None => Peer::Anonymous,
        };
        Self { peer, address: *stream.remote_addr() }
    }
}
