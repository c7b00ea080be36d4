//! A private test CA and a server certificate for 127.0.0.1 signed by it,
//! for TLS upstreams on 127.0.0.1 (`upstream_ca_file`, HTTP/2 by ALPN).

use std::sync::Arc;

use rustls::pki_types::CertificateDer;

/// A CA made for one test, and a rustls server configuration whose
/// certificate (for `127.0.0.1`) it signed.
pub struct PrivateCa {
    /// The CA certificate in PEM (an `upstream_ca_file`).
    pub pem: String,
    /// The CA certificate in DER (a root for `forward::UpstreamTls`).
    pub der: CertificateDer<'static>,
    /// The server side, offering `alpn` in order.
    pub server: Arc<rustls::ServerConfig>,
}

/// A fresh CA and a server certificate it signed, the server offering the
/// ALPN protocols `alpn`.
pub fn private_ca(alpn: &[&[u8]]) -> PrivateCa {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "trp test CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&server_key, &ca, &ca_key)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![server.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
        )
        .unwrap();
    tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    PrivateCa {
        pem: ca.pem(),
        der: ca.der().clone(),
        server: Arc::new(tls),
    }
}
