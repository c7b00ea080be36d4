//! The check-and-repair workflow (being written).

use std::net::SocketAddr;

use axum::body::Body;
use http::{Method, Response};
use hyper::body::Incoming;

use crate::forward::{ForwardError, Forwarder};
use crate::routing::Origin;

pub struct Repairer;

impl Repairer {
    pub fn intercepts(&self, _method: &Method, _path: &str) -> bool {
        false
    }

    pub async fn handle(
        &self,
        _parts: http::request::Parts,
        _body: Incoming,
        _origin: &Origin,
        _peer: Option<SocketAddr>,
        _forwarder: &Forwarder,
    ) -> (Result<Response<Body>, ForwardError>, Option<&'static str>) {
        unimplemented!()
    }
}
