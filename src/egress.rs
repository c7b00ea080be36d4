//! Egress through an HTTP proxy: `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`
//! and `NO_PROXY` (and their lower-case forms), read once at start-up with
//! curl's rules.
//!
//! A destination the rules send through a proxy is reached with an HTTP
//! `CONNECT` tunnel to it (with `Proxy-Authorization` when the proxy URL
//! carries credentials); TLS to Twilio then runs inside the tunnel, so
//! certificate and host-name checks are end to end and the egress proxy
//! sees only the host name. Plain-http upstreams (an emulator) are tunnelled
//! the same way. Other destinations are connected to directly.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower::Service;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Connects directly or through a `CONNECT` tunnel, as the proxy rules say.
#[derive(Clone)]
pub struct EgressConnector {
    direct: HttpConnector,
    matcher: Arc<Matcher>,
}

impl EgressConnector {
    /// With the rules from the environment.
    pub fn from_env(direct: HttpConnector) -> Self {
        let matcher = Matcher::from_env();
        for (scheme, probe) in [
            ("https", "https://conversations.twilio.com"),
            ("http", "http://twilio.com"),
        ] {
            if let Some(i) = probe
                .parse::<Uri>()
                .ok()
                .and_then(|u| matcher.intercept(&u))
            {
                // Host and port only: never the proxy's credentials.
                tracing::info!(
                    scheme,
                    proxy_host = i.uri().host().unwrap_or(""),
                    proxy_port = i.uri().port_u16().unwrap_or(0),
                    "egress through an HTTP proxy (CONNECT) unless NO_PROXY matches"
                );
            }
        }
        EgressConnector {
            direct,
            matcher: Arc::new(matcher),
        }
    }
}

impl Service<Uri> for EgressConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        match self.matcher.intercept(&dst) {
            Some(intercept) => {
                let mut tunnel = Tunnel::new(intercept.uri().clone(), self.direct.clone());
                if let Some(auth) = intercept.basic_auth() {
                    tunnel = tunnel.with_auth(auth.clone());
                }
                Box::pin(async move { tunnel.call(dst).await.map_err(Into::into) })
            }
            None => {
                let mut direct = self.direct.clone();
                Box::pin(async move { direct.call(dst).await.map_err(Into::into) })
            }
        }
    }
}
