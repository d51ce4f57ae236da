//! `--transport tls`: the rustls client configuration (the server's own TLS stack, used the
//! other way round). Trust: `--tls-ca FILE` (PEM), else the system bundle; `--tls-insecure`
//! skips certificate checks (benchmarking a server with a self-signed certificate) but still
//! verifies the handshake signatures.
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::conn::TLS;

/// Debian's system CA bundle (ca-certificates), the default trust store.
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Build the client configuration once. `host`: the host part of `--server` (the name checked
/// against the certificate unless `name` is given).
pub fn setup(
    host: &str,
    ca: Option<&Path>,
    insecure: bool,
    name: Option<&str>,
) -> Result<(), String> {
    let provider = Arc::new(ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS: {e}"))?;
    let mut cfg = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
            .with_no_client_auth()
    } else {
        let path = ca.unwrap_or(Path::new(SYSTEM_BUNDLE));
        let mut roots = RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("--tls-ca {}: {e}", path.display()))?;
        for c in certs {
            let c = c.map_err(|e| format!("--tls-ca {}: {e}", path.display()))?;
            roots
                .add(c)
                .map_err(|e| format!("--tls-ca {}: {e}", path.display()))?;
        }
        if roots.is_empty() {
            return Err(format!("--tls-ca {}: no certificate in it", path.display()));
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    // RFC 7443: the ALPN label of TURN over TLS
    cfg.alpn_protocols = vec![b"stun.turn".to_vec()];
    let host = name.unwrap_or(host.trim_start_matches('[').trim_end_matches(']'));
    let server_name = ServerName::try_from(host.to_owned())
        .map_err(|e| format!("TLS server name {host:?}: {e}"))?;
    TLS.set((Arc::new(cfg), server_name))
        .map_err(|_| "TLS configured twice".to_owned())
}

/// `--tls-insecure`: any certificate, but real signature checks on the handshake.
#[derive(Debug)]
struct AnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
