//! Request ids and W3C trace context from outside: the proxy binary (its
//! tracing setup is process-wide) with OTLP export pointed at an in-test
//! OTLP/HTTP receiver that decodes what it gets, in front of the emulator.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::Value;

use crate::common::*;
use twilio_repair_proxy::emulator::FaultMode;

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// An OTLP/HTTP receiver: every span of every export it was sent.
struct Receiver {
    url: String,
    spans: Arc<Mutex<Vec<Span>>>,
}

async fn receiver() -> Receiver {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let spans = Arc::new(Mutex::new(Vec::new()));
    let got = spans.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let got = got.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let got = got.clone();
                        async move {
                            let path = req.uri().path().to_string();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            if path == "/v1/traces" {
                                let export = ExportTraceServiceRequest::decode(body).unwrap();
                                for rs in export.resource_spans {
                                    for ss in rs.scope_spans {
                                        got.lock().unwrap().extend(ss.spans);
                                    }
                                }
                            }
                            Ok::<_, std::convert::Infallible>(
                                hyper::Response::builder()
                                    .status(200)
                                    .header("content-type", "application/x-protobuf")
                                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                                    .unwrap(),
                            )
                        }
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
            });
        }
    });
    Receiver { url, spans }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Wait (an event, bounded) until the receiver holds a span named `name`.
async fn until_span(r: &Receiver, name: &str) -> Vec<Span> {
    // Bounded: 15 s of 50 ms looks.
    for _ in 0..300 {
        {
            let spans = r.spans.lock().unwrap();
            if spans.iter().any(|s| s.name == name) {
                return spans.clone();
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no `{name}` span exported: {:#?}", r.spans.lock().unwrap());
}

#[tokio::test]
async fn a_repair_continues_the_callers_trace_with_a_span_per_step_and_every_call_carries_it() {
    let otlp = receiver().await;
    let (emu, kim) = Scene::new()
        .user("kim")
        .friendly("Kim")
        .member_of_another()
        .armed(FaultMode::Block)
        .build()
        .await;
    let dir = tempfile::tempdir().unwrap().keep();
    let proxy = spawn_proxy_in(
        &dir,
        &emu.origin(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.url.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
            ("TRP_REPAIR_RETRY_INITIAL_BACKOFF_MS", "10"),
            ("TRP_REPAIR_RETRY_MAX_BACKOFF_MS", "50"),
        ],
    )
    .await;
    emu.clear_requests().await;

    let r = reqwest::Client::new()
        .post(format!(
            "http://{}{}/Conversations/{}/Participants",
            proxy.addr,
            kim.base,
            kim.target()
        ))
        .basic_auth(ACCOUNT, Some(TOKEN))
        .header("traceparent", format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"))
        .header("x-request-id", "app-req-7")
        .form(&[("Identity", "kim")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["x-repair-outcome"], "repaired");
    assert_eq!(r.headers()["x-request-id"], "app-req-7");

    // The last step's span, then the request's (it ends after the repair).
    until_span(&otlp, "replay-create").await;
    let server_name = format!(
        "POST {}/Conversations/{}/Participants",
        kim.base,
        kim.target()
    );
    let all = until_span(&otlp, &server_name).await;
    assert!(
        all.iter().all(|s| hex(&s.trace_id) == CALLER_TRACE),
        "one trace: {all:#?}"
    );
    let server = all
        .iter()
        .find(|s| s.name == server_name)
        .expect("the request's span");
    assert_eq!(
        hex(&server.parent_span_id),
        CALLER_SPAN,
        "under the caller's span"
    );
    let repair = all
        .iter()
        .find(|s| s.name == "repair")
        .expect("a repair span");
    let steps: Vec<&Span> = all
        .iter()
        .filter(|s| s.kind == opentelemetry_proto::tonic::trace::v1::span::SpanKind::Client as i32)
        .collect();
    let step_names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
    for expected in [
        "fetch-participant",
        "fetch-user",
        "delete-user",
        "create-user",
        "replay-create",
    ] {
        assert!(
            step_names.contains(&expected),
            "{expected} in {step_names:?}"
        );
    }
    // Every step span is below the repair (or the request), never a root.
    let ids: std::collections::HashSet<String> = all.iter().map(|s| hex(&s.span_id)).collect();
    assert!(steps.iter().all(|s| ids.contains(&hex(&s.parent_span_id))));
    assert!(ids.contains(&hex(&repair.parent_span_id)));

    // The emulator saw the trace on every call the repair made, each with
    // the span id of a step span.
    let step_ids: std::collections::HashSet<String> =
        steps.iter().map(|s| hex(&s.span_id)).collect();
    let log = emu.log_json().await;
    let repair_calls: Vec<&Value> = log
        .iter()
        .filter(|r| {
            r["headers"]["user-agent"]
                .as_str()
                .is_some_and(|u| u.starts_with("twilio-repair-proxy/"))
                || r["method"] == "POST" && r["path"].as_str().unwrap().ends_with("/Participants")
        })
        .collect();
    assert!(repair_calls.len() >= 6, "{log:#?}");
    for call in &repair_calls {
        let tp = call["headers"]["traceparent"].as_str().unwrap_or("");
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!(parts.len(), 4, "{call}");
        assert_eq!(parts[1], CALLER_TRACE, "{call}");
        if call["headers"]["user-agent"]
            .as_str()
            .is_some_and(|u| u.starts_with("twilio-repair-proxy/"))
            || tp != format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01")
        {
            assert!(step_ids.contains(parts[2]), "{call}");
        }
    }
    // The app's own create went to Twilio with its request id.
    assert!(
        log.iter()
            .any(|r| r["headers"]["x-request-id"] == "app-req-7"),
        "{log:#?}"
    );
    // The repair's log lines name the request.
    let log = proxy.log_with("intercepted 20404").await;
    let line = log
        .lines()
        .find(|l| l.contains("intercepted 20404"))
        .unwrap();
    assert!(line.contains("app-req-7"), "{line}");
    assert!(line.contains("incident="), "{line}");
    assert!(line.contains("repair_id="), "{line}");
}

#[tokio::test]
async fn every_answer_carries_a_request_id_the_clients_or_a_new_one() {
    let (st, kim) = Scene::new().start().await;
    let http = reqwest::Client::new();
    let get = |id: Option<&'static str>| {
        let mut r = http
            .get(st.proxy.url(&format!("{}/Users/nobody", kim.base)))
            .basic_auth(ACCOUNT, Some(TOKEN));
        if let Some(id) = id {
            r = r.header("x-request-id", id);
        }
        r.send()
    };
    let mine = get(Some("app-123")).await.unwrap();
    assert_eq!(mine.headers()["x-request-id"], "app-123");
    let none = get(None).await.unwrap();
    let made = none.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(made.len(), 36, "{made}");
    let other = get(None).await.unwrap();
    assert_ne!(other.headers()["x-request-id"], made.as_str());
    let bad = get(Some("has space")).await.unwrap();
    assert_ne!(bad.headers()["x-request-id"], "has space");
    // Twilio got the same ids.
    let log = st.emu.log_json().await;
    let seen: Vec<&str> = log
        .iter()
        .filter_map(|r| r["headers"]["x-request-id"].as_str())
        .collect();
    assert!(seen.contains(&"app-123"), "{seen:?}");
    assert!(seen.contains(&made.as_str()), "{seen:?}");
    assert!(!seen.contains(&"has space"), "{seen:?}");
    // The proxy's own errors carry one too.
    let refused = http
        .get(st.proxy.url("/__emulator/requests"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 404);
    assert_eq!(refused.headers()["x-request-id"].len(), 36);
    st.proxy.stop().await;
}

#[tokio::test]
async fn the_refused_host_line_names_the_host_and_the_access_line_the_request() {
    let up = upstream(std::sync::Arc::new(|_| json(200, r#"{"ok":true}"#))).await;
    let proxy = spawn_proxy(&up.url(), &[("TRP_LOG_FORMAT", "json")]).await;
    let addr: std::net::SocketAddr = proxy.addr.parse().unwrap();
    let refused = raw_exchange(
        addr,
        b"GET /v1/Users HTTP/1.1\r\nHost: twilio-proxy.payments.example\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(refused.starts_with("HTTP/1.1 421"), "{refused}");
    let line = proxy.log_with("request refused").await;
    assert!(line.contains("twilio-proxy.payments.example"), "{line}");

    let ok = raw_exchange(
        addr,
        b"GET /v1/Users HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: twilio-node/6.2.0\r\nX-Request-Id: app-9\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    let log = proxy.log_with("\"request_id\":\"app-9\"").await;
    let line = log
        .lines()
        .find(|l| l.contains("\"request_id\":\"app-9\""))
        .unwrap();
    let v: Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["client"], "127.0.0.1");
    assert_eq!(v["user_agent"], "twilio-node/6.2.0");
    assert_eq!(v["trace_id"], CALLER_TRACE);
    assert!(v["latency_ms"].is_f64(), "{line}");
}
