//! TLS on the proxy's own listener (`tls.cert_file`, `tls.key_file`):
//! HTTP/1.1 and HTTP/2 chosen by ALPN, answers' links in `https`; the
//! certificate re-read on SIGHUP by a running binary while a keep-alive
//! client stays connected (new connections get the new certificate, the
//! process lives on, a bad file keeps the old one); a bad certificate
//! refused at start-up with one line.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::common::*;

/// A test CA, and server certificates for 127.0.0.1 it signs.
struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

/// One issued server certificate, as the files the proxy reads.
struct Issued {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl Ca {
    fn new() -> Ca {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(DnType::CommonName, "trp listener test CA");
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    fn issue(&self, name: &str) -> Issued {
        use rcgen::{CertificateParams, DnType, KeyPair};
        let mut p = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    fn connector(&self, alpn: &[&[u8]]) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut c = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsConnector::from(Arc::new(c))
    }
}

/// Write `issued` where the proxy reads it (replacing what was there).
fn install(issued: &Issued, dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert, &issued.cert_pem).unwrap();
    std::fs::write(&key, &issued.key_pem).unwrap();
    (cert, key)
}

async fn connect(ca: &Ca, addr: &str, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    ca.connector(alpn)
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap()
}

fn peer_cert(s: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    s.get_ref().1.peer_certificates().unwrap()[0].clone()
}

/// A Participant answer whose link the proxy rewrites to the request's
/// origin.
fn participant() -> Responder {
    Arc::new(|_s: &Seen| {
        json(
            200,
            r#"{"sid":"MB1","url":"https://conversations.twilio.com/v1/Conversations/CH1/Participants/MB1"}"#,
        )
    })
}

const PATH: &str = "/v1/Conversations/CH1/Participants/MB1";

/// One GET over an HTTP/1.1 connection already open: status and the
/// answer's `url`.
async fn get_h1(
    send: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    authority: &str,
) -> (u16, String) {
    let req = hyper::Request::get(PATH)
        .header("host", authority)
        .body(Empty::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    (status, v["url"].as_str().unwrap_or_default().to_string())
}

async fn h1(stream: TlsStream<TcpStream>) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

#[tokio::test]
async fn http1_and_h2_by_alpn_with_https_links() {
    let up = upstream(participant()).await;
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = install(&ca.issue("listener"), dir.path());
    let mut c = test_config(&up.url());
    c.tls.cert_file = Some(cert);
    c.tls.key_file = Some(key);
    let proxy = start_proxy(c).await;
    let addr = proxy.addr.to_string();
    let want_url = format!("https://{addr}{PATH}");

    // HTTP/1.1: offered alone, and the fallback when nothing is offered.
    for alpn in [&[b"http/1.1".as_slice()][..], &[]] {
        let stream = connect(&ca, &addr, alpn).await;
        let chosen = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        assert_eq!(
            chosen,
            (!alpn.is_empty()).then(|| b"http/1.1".to_vec()),
            "{alpn:?}"
        );
        let mut send = h1(stream).await;
        for _ in 0..2 {
            // Two requests on one connection: keep-alive over TLS.
            assert_eq!(get_h1(&mut send, &addr).await, (200, want_url.clone()));
        }
    }

    // HTTP/2, preferred when offered.
    let stream = connect(&ca, &addr, &[b"h2", b"http/1.1"]).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(b"h2".as_slice()));
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get(format!("https://{addr}{PATH}"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["url"], want_url.as_str());

    // Plain HTTP on the TLS port gets no HTTP answer.
    let answer = raw_exchange(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(!answer.starts_with("HTTP/1.1 "), "{answer}");
    assert_eq!(up.requests().len(), 5);
    proxy.stop().await;
}

#[tokio::test]
async fn sighup_reloads_the_certificate_without_dropping_connections() {
    let up = upstream(participant()).await;
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    let first = ca.issue("first");
    let (cert, key) = install(&first, dir.path());
    let env = [
        ("TRP_TLS_CERT_FILE", cert.to_str().unwrap()),
        ("TRP_TLS_KEY_FILE", key.to_str().unwrap()),
    ];
    let proxy = spawn_proxy(&up.url(), &env).await;
    let addr = proxy.addr.clone();

    let kept = connect(&ca, &addr, &[b"http/1.1"]).await;
    assert_eq!(peer_cert(&kept), first.der);
    let mut kept = h1(kept).await;
    assert_eq!(get_h1(&mut kept, &addr).await.0, 200);

    let second = ca.issue("second");
    install(&second, dir.path());
    proxy.signal("HUP");
    let log = proxy.log_with("certificate reloaded").await;
    assert!(log.contains("certificate reloaded"), "{log}");
    assert!(proxy_alive(&proxy), "SIGHUP ended the proxy:\n{log}");

    // The open connection was kept, and still works.
    assert_eq!(get_h1(&mut kept, &addr).await.0, 200);
    // A new connection gets the new certificate.
    let fresh = connect(&ca, &addr, &[b"http/1.1"]).await;
    assert_eq!(peer_cert(&fresh), second.der);
    assert_eq!(get_h1(&mut h1(fresh).await, &addr).await.0, 200);

    // A bad file at reload keeps the certificate in use, in one line.
    std::fs::write(&cert, "not a certificate\n").unwrap();
    proxy.signal("HUP");
    let log = proxy.log_with("keeping the previous certificate").await;
    let failed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("keeping the previous certificate"))
        .collect();
    assert_eq!(failed.len(), 1, "{log}");
    assert!(failed[0].contains("tls.crt"), "{}", failed[0]);
    assert!(!log.contains("PRIVATE KEY"), "key material logged:\n{log}");
    assert!(proxy_alive(&proxy));
    let after = connect(&ca, &addr, &[b"http/1.1"]).await;
    assert_eq!(peer_cert(&after), second.der);
    assert_eq!(get_h1(&mut h1(after).await, &addr).await.0, 200);
    assert_eq!(get_h1(&mut kept, &addr).await.0, 200);
}

fn proxy_alive(p: &Running) -> bool {
    // `Running` owns the child; a zero-signal `kill` tells whether it lives.
    std::process::Command::new("kill")
        .args(["-0", &p.child.id().to_string()])
        .status()
        .unwrap()
        .success()
        && !std::fs::read_to_string(format!("/proc/{}/stat", p.child.id()))
            .unwrap_or_default()
            .contains(") Z ")
}

/// `serve` with the given TLS files: its exit status and stderr.
fn serve_with(cert: &Path, key: &Path) -> (std::process::ExitStatus, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .arg("--store")
        .arg(format!("sqlite://{}/journal.db", dir.path().display()))
        .env("TRP_TLS_CERT_FILE", cert)
        .env("TRP_TLS_KEY_FILE", key)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_bad_certificate_is_refused_at_start_with_one_line() {
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    let good = ca.issue("good");
    let (cert, key) = install(&good, dir.path());
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let other_key = dir.path().join("other.key");
    std::fs::write(&other_key, ca.issue("other").key_pem).unwrap();
    let missing = dir.path().join("missing.crt");
    for (c, k, says) in [
        (&garbage, &key, "garbage.pem"),
        (&missing, &key, "missing.crt"),
        (&cert, &garbage, "garbage.pem"),
        (&cert, &other_key, "does not match"),
    ] {
        let (status, err) = serve_with(c, k);
        assert!(!status.success(), "started with {c:?} and {k:?}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(says) && err.contains("tls"), "{err}");
        assert!(!err.contains("PRIVATE KEY"), "{err}");
    }
    // Half a setting is a configuration error naming the missing key.
    for (set, names) in [
        ("TRP_TLS_CERT_FILE", "tls.key_file"),
        ("TRP_TLS_KEY_FILE", "tls.cert_file"),
        ("TRP_TLS_CLIENT_CA_FILE", "tls.client_ca_file"),
    ] {
        let out = std::process::Command::new(bin())
            .arg("check-config")
            .env(set, &cert)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{set}: {err}");
        assert!(err.contains(names), "{set}: {err}");
    }
}

#[tokio::test]
async fn a_silent_client_is_closed_after_header_read_timeout_during_the_handshake() {
    use tokio::io::AsyncReadExt;
    let up = upstream(participant()).await;
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = install(&ca.issue("listener"), dir.path());
    let mut c = test_config(&up.url());
    c.tls.cert_file = Some(cert);
    c.tls.key_file = Some(key);
    c.limits.header_read_timeout_ms = 300;
    let proxy = start_proxy(c).await;
    // Connected, never says hello: the proxy hangs up (EOF or reset).
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "a silent client kept its TLS slot: {read:?}"
    );
    // A client that does complete the handshake is served.
    let mut send = h1(connect(&ca, &proxy.addr.to_string(), &[]).await).await;
    assert_eq!(get_h1(&mut send, &proxy.addr.to_string()).await.0, 200);
    proxy.stop().await;
}

#[tokio::test]
async fn client_certificates_are_required_with_a_client_ca() {
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair};
    let up = upstream(participant()).await;
    let ca = Ca::new();
    let clients = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = install(&ca.issue("listener"), dir.path());
    let clients_pem = dir.path().join("clients-ca.crt");
    std::fs::write(&clients_pem, clients.cert.pem()).unwrap();
    let mut c = test_config(&up.url());
    c.tls.cert_file = Some(cert);
    c.tls.key_file = Some(key);
    c.tls.client_ca_file = Some(clients_pem);
    let proxy = start_proxy(c).await;
    let addr = proxy.addr.to_string();

    // The app's certificate, from the clients' CA (and one from another CA).
    let app_cert = |issuer: &Ca| {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(DnType::CommonName, "payments-app");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &issuer.cert, &issuer.key).unwrap();
        (
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
    };
    let connector = |auth: Option<(Vec<CertificateDer<'static>>, _)>| {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let b = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let config = match auth {
            None => b.with_no_client_auth(),
            Some((chain, key)) => b.with_client_auth_cert(chain, key).unwrap(),
        };
        TlsConnector::from(Arc::new(config))
    };
    // Answered only with a certificate from the clients' CA: without one,
    // or with another CA's, the handshake or the first exchange fails.
    let attempt = |connector: TlsConnector| {
        let addr = addr.clone();
        async move {
            let tcp = TcpStream::connect(&addr).await.unwrap();
            let name = ServerName::try_from("127.0.0.1").unwrap();
            let Ok(stream) = connector.connect(name, tcp).await else {
                return None;
            };
            let (mut send, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .ok()?;
            tokio::spawn(conn);
            let req = hyper::Request::get(PATH)
                .header("host", &addr)
                .body(Empty::<Bytes>::new())
                .unwrap();
            Some(send.send_request(req).await.ok()?.status().as_u16())
        }
    };
    assert_eq!(
        attempt(connector(Some(app_cert(&clients)))).await,
        Some(200)
    );
    assert_eq!(attempt(connector(None)).await, None);
    assert_eq!(attempt(connector(Some(app_cert(&ca)))).await, None);
    assert_eq!(up.requests().len(), 1);
    proxy.stop().await;
}
