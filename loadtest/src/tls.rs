//! TLS for `https://` servers (nginx in front of the instances): one rustls
//! client configuration, built from the `--ca` PEM file, shared by the
//! REST door, the WebSocket handshakes and the bare `epoll` reader.
//!
//! The certificates in the file are trust anchors. scripts/cert's
//! self-signed certificate is marked `CA:TRUE`, and webpki refuses a CA
//! certificate as the server's own (`CaUsedAsEndEntity`) even when it is a
//! trusted root; so a server that presents *exactly* one of the file's
//! certificates is also accepted — pinned — once its name matches the
//! address dialled and its handshake signature verifies. A server with a
//! proper leaf certificate signed by a CA in the file goes through webpki's
//! ordinary chain check.

use anyhow::{Context, bail};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::path::Path;
use std::sync::Arc;

/// The client side of every TLS connection this process makes.
pub type Tls = Arc<rustls::ClientConfig>;

/// A client configuration that trusts the certificates in `ca` (PEM).
///
/// No ALPN (the WebSocket upgrade is HTTP/1.1) and no session resumption:
/// every socket stands for a different phone, so each pays a full
/// handshake, as a crowd of real clients connecting for the first time does.
pub fn client_config(ca: &Path) -> anyhow::Result<Tls> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
        .with_context(|| format!("--ca {}", ca.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("--ca {}: not PEM certificates", ca.display()))?;
    if certs.is_empty() {
        bail!("--ca {}: no certificate in the file", ca.display());
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = TrustOrPin::new(certs, provider.clone())?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// webpki's chain check against the file's certificates as roots, or an
/// exact match with one of them (see the module docs).
#[derive(Debug)]
struct TrustOrPin {
    webpki: Arc<WebPkiServerVerifier>,
    pinned: Vec<CertificateDer<'static>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl TrustOrPin {
    fn new(
        certs: Vec<CertificateDer<'static>>,
        provider: Arc<CryptoProvider>,
    ) -> anyhow::Result<TrustOrPin> {
        let mut roots = RootCertStore::empty();
        let (added, _) = roots.add_parsable_certificates(certs.iter().cloned());
        if added == 0 {
            bail!("--ca: none of the certificates can be a trust anchor");
        }
        let algorithms = provider.signature_verification_algorithms;
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .context("certificate verifier")?;
        Ok(TrustOrPin {
            webpki,
            pinned: certs,
            algorithms,
        })
    }
}

impl ServerCertVerifier for TrustOrPin {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let chain = self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        if chain.is_ok()
            || !self
                .pinned
                .iter()
                .any(|c| c.as_ref() == end_entity.as_ref())
        {
            return chain;
        }
        // The very certificate we were given: it only has to be for this
        // name (the handshake signature is checked separately).
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_name(&parsed, server_name)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Made like scripts/cert's (P-256, CN localhost, SAN localhost,
    /// 127.0.0.1, ::1, `CA:TRUE`), valid until 2126.
    const SCRIPTS_CERT_LIKE: &str = "-----BEGIN CERTIFICATE-----
MIIB0zCCAXqgAwIBAgIUWQ9ENDMVocE11L+L1e3p2ovx5A8wCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJbG9jYWxob3N0MCAXDTI2MTIwMjE1MzgwOFoYDzIxMjYxMTA4
MTUzODA4WjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAATVP99YDaLAH2/FTamnv79uXPmHTAXdyP8CCk/UZKSz9IItiJrHzgvI
STWZouBgw8bursFKtusP5aqTo/HO7CTJo4GnMIGkMB0GA1UdDgQWBBR9HGRG1A1R
TInTFAKOSbw3+Kg+yDAfBgNVHSMEGDAWgBR9HGRG1A1RTInTFAKOSbw3+Kg+yDAs
BgNVHREEJTAjgglsb2NhbGhvc3SHBH8AAAGHEAAAAAAAAAAAAAAAAAAAAAEwDwYD
VR0TAQH/BAUwAwEB/zAOBgNVHQ8BAf8EBAMCAoQwEwYDVR0lBAwwCgYIKwYBBQUH
AwEwCgYIKoZIzj0EAwIDRwAwRAIgVSG977T99F0t7DCmXDSdhwG4fhx6lQuFKP5Q
OuMsZRECICjdAVWR3RkQAp4n6Cs7c1vtLRxMJ+ZOoxgwcj5NVR4O
-----END CERTIFICATE-----
";

    fn verifier() -> (TrustOrPin, CertificateDer<'static>) {
        let cert = CertificateDer::from_pem_slice(SCRIPTS_CERT_LIKE.as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        (TrustOrPin::new(vec![cert.clone()], provider).unwrap(), cert)
    }

    fn check(v: &TrustOrPin, cert: &CertificateDer<'_>, name: &str) -> Result<(), rustls::Error> {
        let name = ServerName::try_from(name.to_string()).unwrap();
        v.verify_server_cert(cert, &[], &name, &[], UnixTime::now())
            .map(|_| ())
    }

    #[test]
    fn webpki_refuses_a_ca_certificate_as_the_servers_own_even_as_a_root() {
        let (v, cert) = verifier();
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let e = v
            .webpki
            .verify_server_cert(&cert, &[], &name, &[], UnixTime::now())
            .unwrap_err();
        assert!(format!("{e:?}").contains("CaUsedAsEndEntity"), "{e:?}");
    }

    #[test]
    fn the_given_certificate_is_pinned_for_its_own_names_only() {
        let (v, cert) = verifier();
        check(&v, &cert, "127.0.0.1").unwrap();
        check(&v, &cert, "localhost").unwrap();
        assert!(check(&v, &cert, "127.0.0.2").is_err());
        assert!(check(&v, &cert, "example.com").is_err());
        let mut other = cert.as_ref().to_vec();
        let last = other.len() - 1;
        other[last] ^= 1;
        assert!(check(&v, &CertificateDer::from(other), "127.0.0.1").is_err());
    }
}
