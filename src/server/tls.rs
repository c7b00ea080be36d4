//! TLS on the proxy's own listener (`tls.cert_file`, `tls.key_file`):
//! the acceptor, and the certificate swapped on reload.
//!
//! - **Protocols.** rustls with the ring provider, TLS 1.2 and 1.3, ALPN
//!   `h2` then `http/1.1`; a client that offers no ALPN gets HTTP/1.1.
//! - **Handshake.** Done on the worker that serves the connection, holding
//!   the connection's slot, bounded by `limits.header_read_timeout_ms`
//!   (a silent or slow client is dropped, like one that never sends a
//!   request head). Then the connection is served by `conn::run_tls`, under
//!   the same watchdog, eviction and shutdown as a plain one, never parked.
//! - **Reload.** [`TlsListener::reload`] re-reads both files and swaps the
//!   certificate in the resolver: handshakes that start afterwards get the
//!   new one; open connections keep theirs (a TLS session's certificate is
//!   fixed at its handshake) and are never dropped. A file that cannot be
//!   read or parsed, or a key that does not match the certificate, keeps
//!   the old certificate and is one warning line. [`TlsListener::follow`]
//!   reloads on every notice of a [`crate::reload::Reload`] (SIGHUP).
//! - **Client certificates.** With `tls.client_ca_file`, every client must
//!   present a certificate chaining to one of its CAs (mutual TLS), or the
//!   handshake fails. That file is read once, at start-up.
//! - **Bounds.** Each file is read up to [`MAX_PEM_FILE_BYTES`]; a larger
//!   one is refused.
//!
//! Key material is never logged: errors name the file and what is wrong
//! with it, never its content.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

/// Largest certificate chain or key file read (a chain is a few KiB).
pub const MAX_PEM_FILE_BYTES: u64 = 1024 * 1024;

/// Why a certificate or key could not be used. Names the file, never its
/// content.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The I/O error is part of the text (not a `source`), so the
    /// one-line report does not repeat it.
    #[error("tls: cannot read {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("tls: {path} is larger than {MAX_PEM_FILE_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("tls: {path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("tls: {path}: a PEM certificate block is malformed ({reason})")]
    BadCertificate { path: PathBuf, reason: String },
    #[error("tls: {path} holds no usable PEM private key ({reason})")]
    BadKey { path: PathBuf, reason: String },
    #[error("tls: the key in {key} does not match the certificate in {cert} ({reason})")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("tls: {path}: no usable CA certificate for client certificates ({reason})")]
    BadClientCa { path: PathBuf, reason: String },
    #[error("tls: {0}")]
    Config(String),
}

/// The files of the listener's TLS: its certificate and key, and
/// optionally the CA certificates a client's certificate must chain to
/// (mutual TLS; read once, at start-up).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, TlsError> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_PEM_FILE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|error| TlsError::Read {
            path: path.to_path_buf(),
            error,
        })?;
    if bytes.len() as u64 > MAX_PEM_FILE_BYTES {
        return Err(TlsError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    Ok(bytes)
}

impl TlsFiles {
    /// Read and check both files: a chain of at least one certificate, a
    /// private key (PKCS#8, PKCS#1 or SEC1) that the provider can sign with
    /// and that matches the first certificate.
    pub fn load(&self) -> Result<Arc<CertifiedKey>, TlsError> {
        let provider = rustls::crypto::ring::default_provider();
        let cert_bytes = read_bounded(&self.cert)?;
        let chain = CertificateDer::pem_slice_iter(&cert_bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::BadCertificate {
                path: self.cert.clone(),
                reason: e.to_string(),
            })?;
        if chain.is_empty() {
            return Err(TlsError::NoCertificate {
                path: self.cert.clone(),
            });
        }
        let key_bytes = read_bounded(&self.key)?;
        // The PEM parser's own message may quote bytes of the file: a
        // fixed reason instead, for a secret.
        let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|_| TlsError::BadKey {
            path: self.key.clone(),
            reason: "no PKCS#8, PKCS#1 or SEC1 key block, or a malformed one".into(),
        })?;
        let signing =
            provider
                .key_provider
                .load_private_key(key)
                .map_err(|e| TlsError::BadKey {
                    path: self.key.clone(),
                    reason: e.to_string(),
                })?;
        let certified = CertifiedKey::new(chain, signing);
        certified.keys_match().map_err(|e| TlsError::Mismatch {
            cert: self.cert.clone(),
            key: self.key.clone(),
            reason: e.to_string(),
        })?;
        Ok(Arc::new(certified))
    }
}

/// A verifier that requires a client certificate chaining to one of the
/// CA certificates in `path`.
fn client_verifier(
    path: &Path,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let bad = |reason: String| TlsError::BadClientCa {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = read_bounded(path)?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&bytes) {
        roots
            .add(cert.map_err(|e| bad(e.to_string()))?)
            .map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("no PEM certificate".into()));
    }
    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| bad(e.to_string()))
}

/// The certificate every new handshake gets, swappable while serving.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl Current {
    fn get(&self) -> Arc<CertifiedKey> {
        // A poisoned lock still holds a whole `Arc` (the writer only swaps
        // it): use it rather than fail every handshake.
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
    fn set(&self, key: Arc<CertifiedKey>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = key;
    }
}

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

/// The listener's TLS: the acceptor every worker shares, and the files it
/// reloads from.
#[derive(Clone)]
pub struct TlsListener {
    files: TlsFiles,
    current: Arc<Current>,
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListener")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl TlsListener {
    /// Load the certificate (a bad file is an error: the proxy does not
    /// start) and build the acceptor.
    pub fn new(files: TlsFiles) -> Result<TlsListener, TlsError> {
        let current = Arc::new(Current(RwLock::new(files.load()?)));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match &files.client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => builder.with_client_cert_verifier(client_verifier(path, provider)?),
        };
        let mut config = builder.with_cert_resolver(current.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsListener {
            files,
            current,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// Re-read the files; on success new handshakes get the new
    /// certificate, on failure the old one stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let key = self.files.load()?;
        self.current.set(key);
        Ok(())
    }

    /// Reload on every notice from `reloads` until its sender is gone; one
    /// log line per reload.
    pub async fn follow(self, mut reloads: tokio::sync::watch::Receiver<u64>) {
        while reloads.changed().await.is_ok() {
            match self.reload() {
                Ok(()) => tracing::info!(
                    cert = %self.files.cert.display(),
                    "tls: certificate reloaded; new connections use it"
                ),
                Err(e) => tracing::warn!(
                    error = %e,
                    "tls: reload failed; keeping the previous certificate"
                ),
            }
        }
    }

    pub(super) fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }
}

/// One TLS connection's task: the handshake, bounded by
/// `header_read_timeout` and cut by shutdown, then `conn::run_tls`.
pub(super) async fn handshake_then_serve<S>(
    p: Arc<super::conn::Protocols>,
    tls: TlsListener,
    c: super::slots::Conn,
    service: S,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) where
    S: super::ConnService,
{
    let _ = c.stream.set_nodelay(true);
    let handshake =
        tokio::time::timeout(p.opts.header_read_timeout, tls.acceptor().accept(c.stream));
    let stream = tokio::select! {
        done = handshake => match done {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::debug!(peer = %c.peer, error = %e, "tls handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(peer = %c.peer, "tls handshake timed out");
                return;
            }
        },
        _ = shutdown.changed() => return,
    };
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
    super::conn::run_tls(
        p,
        super::conn::TlsConn {
            stream,
            h2,
            peer: c.peer,
            permit: c.permit,
            pressure: c.pressure,
        },
        service,
        shutdown,
    )
    .await;
}
