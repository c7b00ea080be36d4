//! The proxy as an operator runs it: the real binary as a child process.
//! Memory under a 100 MB stream, SIGTERM draining, logs free of secrets,
//! `check-config`.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// An upstream that drains request bodies (counting bytes) and can answer
/// with a large streamed body or slowly.
async fn sink_upstream() -> (String, Arc<AtomicU64>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let received = Arc::new(AtomicU64::new(0));
    let rec = received.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let rec = rec.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let rec = rec.clone();
                    async move {
                        let path = req.uri().path().to_string();
                        let mut body = req.into_body();
                        let mut n = 0u64;
                        while let Some(Ok(f)) = body.frame().await {
                            if let Some(d) = f.data_ref() {
                                n += d.len() as u64;
                            }
                        }
                        rec.fetch_add(n, Ordering::SeqCst);
                        if path == "/slow" {
                            tokio::time::sleep(Duration::from_millis(1500)).await;
                        }
                        let resp: Response<
                            http_body_util::combinators::BoxBody<Bytes, std::io::Error>,
                        > = if path == "/download" {
                            // 100 MiB in 64 KiB frames, generated lazily.
                            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
                            let stream = futures_util::stream::iter((0..1600).map(move |_| {
                                Ok::<_, std::io::Error>(hyper::body::Frame::data(chunk.clone()))
                            }));
                            Response::new(http_body_util::StreamBody::new(stream).boxed())
                        } else {
                            Response::new(
                                Full::new(Bytes::from(format!("{{\"received\":{n}}}")))
                                    .map_err(|never| match never {})
                                    .boxed(),
                            )
                        };
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (format!("http://{addr}"), received)
}

const HUNDRED_MIB: u64 = 100 * 1024 * 1024;
/// Ceiling on the proxy's peak resident memory while 100 MiB stream through
/// each way: far below the body size, so the body cannot have been buffered.
const RSS_CEILING_KIB: u64 = 48 * 1024;

#[tokio::test]
async fn hundred_megabytes_stream_both_ways_with_flat_memory() {
    let (up, received) = sink_upstream().await;
    let proxy = spawn_proxy(&up, &[]).await;
    let client = reqwest::Client::new();

    let chunk = Bytes::from(vec![b'u'; 64 * 1024]);
    let chunks = (0..1600).map(move |_| Ok::<_, std::io::Error>(chunk.clone()));
    let resp = client
        .post(format!("http://{}/v1/Services/IS0/Media", proxy.addr))
        .header("content-length", HUNDRED_MIB.to_string())
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.text().await.unwrap(),
        format!("{{\"received\":{HUNDRED_MIB}}}")
    );
    assert_eq!(received.load(Ordering::SeqCst), HUNDRED_MIB);

    let mut resp = client
        .get(format!("http://{}/download", proxy.addr))
        .send()
        .await
        .unwrap();
    let mut got = 0u64;
    while let Some(c) = resp.chunk().await.unwrap() {
        got += c.len() as u64;
    }
    assert_eq!(got, HUNDRED_MIB);
    let peak = proxy.peak_rss_kib();
    assert!(peak < RSS_CEILING_KIB, "peak RSS {peak} KiB");
}

#[tokio::test]
async fn sigterm_drains_in_flight_request_and_exits_zero() {
    drains_in_flight_request_and_exits_zero_on("TERM").await;
}

/// nginx's graceful stop (its images' `STOPSIGNAL`): the same drain, not
/// the default action's immediate end (exit by signal, request cut).
#[tokio::test]
async fn sigquit_drains_in_flight_request_and_exits_zero_as_nginx_does() {
    drains_in_flight_request_and_exits_zero_on("QUIT").await;
}

async fn drains_in_flight_request_and_exits_zero_on(sig: &str) {
    let (up, _) = sink_upstream().await;
    let mut proxy = spawn_proxy(&up, &[]).await;
    let url = format!("http://{}/slow", proxy.addr);
    let slow = tokio::spawn(async move { reqwest::Client::new().get(url).send().await });
    // The request is in flight (the upstream holds /slow for 1.5 s).
    metric_becomes(&proxy.admin, "trp_in_flight_requests", 1.0).await;
    proxy.signal(sig);
    // Draining: not ready any more, no new connections (each polled with
    // a deadline: the drain begins just after the signal).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ready = reqwest::Client::new()
            .get(format!("http://{}/readyz", proxy.admin))
            .send()
            .await
            .unwrap();
        let refused = tokio::net::TcpStream::connect(&proxy.addr).await.is_err();
        if ready.status() == 503 && refused {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "after SIG{sig}: /readyz {}, new connections refused: {refused}",
            ready.status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let resp = slow.await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    let status = tokio::task::spawn_blocking(move || proxy.child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn secrets_and_bodies_never_reach_the_logs() {
    let (up, _) = sink_upstream().await;
    let proxy = spawn_proxy(
        &up,
        &[("TRP_LOG_LEVEL", "trace"), ("TRP_LOG_FORMAT", "json")],
    )
    .await;
    let token = "Zm9vLXN1cGVyLXNlY3JldC10b2tlbg";
    let client = reqwest::Client::new();
    for path in ["/v1/Conversations", "/slow"] {
        let r = client
            .post(format!("http://{}{path}?PageSize=5", proxy.addr))
            .header("authorization", format!("Basic {token}"))
            .body("Identity=body-marker-7731&Attributes=%7B%7D")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // An error path too: an unreachable upstream.
    let dead = spawn_proxy(
        &format!("http://127.0.0.1:{}", free_port()),
        &[("TRP_LOG_LEVEL", "trace"), ("TRP_LOG_FORMAT", "json")],
    )
    .await;
    let r = client
        .post(format!("http://{}/v1/Conversations", dead.addr))
        .header("authorization", format!("Basic {token}"))
        .body("Identity=body-marker-7731")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    // Both access lines are written (waited for, with a deadline).
    let logs = [
        proxy.log_with("\"status\":200").await,
        dead.log_with("\"status\":502").await,
    ];
    for log in logs {
        assert!(
            log.contains("\"status\":200") || log.contains("\"status\":502"),
            "access log missing: {log}"
        );
        assert!(!log.contains(token), "token leaked");
        assert!(!log.contains("body-marker-7731"), "body leaked");
        assert!(
            !log.to_ascii_lowercase().contains("authorization"),
            "auth header named in logs"
        );
    }
    assert!(
        proxy
            .log_with("\"path\":\"/v1/Conversations\"")
            .await
            .contains("\"path\":\"/v1/Conversations\"")
    );
}

#[test]
fn check_config_prints_masked_config_and_names_bad_keys() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "store = \"postgres://trp:hunter2@db:5432/trp\"\n").unwrap();
    let out = Command::new(bin())
        .args(["check-config", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("postgres://trp:****@db:5432/trp"), "{text}");
    assert!(!text.contains("hunter2"));
    assert!(text.contains("connect_timeout_ms"));

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[limits]\nconect_timeout_ms = 3\n").unwrap();
    let out = Command::new(bin())
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("limits.conect_timeout_ms"), "{err}");

    let out = Command::new(bin())
        .arg("check-config")
        .env("TRP_LIMITS_IDLE_TIMEOUT_MS", "-5")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("limits.idle_timeout_ms"));
}

/// A minimal HTTP `CONNECT` proxy that records the targets it tunnels to.
async fn connect_proxy() -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = l.accept().await {
            let seen = seen2.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if client.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_string();
                let target = head.split_whitespace().nth(1).unwrap_or("").to_string();
                assert!(head.starts_with("CONNECT "), "{head}");
                seen.lock().unwrap().push(target.clone());
                let Ok(mut upstream) = tokio::net::TcpStream::connect(&target).await else {
                    return;
                };
                client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await
                    .unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    (format!("http://{addr}"), seen)
}

#[tokio::test]
async fn egress_honours_http_proxy_and_no_proxy() {
    let (up, received) = sink_upstream().await;
    let up_authority = up.trim_start_matches("http://").to_string();
    let (egress, tunnels) = connect_proxy().await;
    let via_proxy = spawn_proxy(
        &up,
        &[
            ("HTTP_PROXY", egress.as_str()),
            ("HTTPS_PROXY", egress.as_str()),
            ("NO_PROXY", ""),
            ("no_proxy", ""),
        ],
    )
    .await;
    let r = reqwest::Client::new()
        .post(format!("http://{}/v1/Conversations", via_proxy.addr))
        .body("FriendlyName=x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "{\"received\":14}");
    assert_eq!(*tunnels.lock().unwrap(), vec![up_authority.clone()]);
    assert!(
        via_proxy
            .log_with("egress through an HTTP proxy")
            .await
            .contains("egress through an HTTP proxy")
    );

    // NO_PROXY bypasses the egress proxy.
    let direct = spawn_proxy(
        &up,
        &[
            ("HTTP_PROXY", egress.as_str()),
            ("NO_PROXY", "127.0.0.1"),
            ("no_proxy", "127.0.0.1"),
        ],
    )
    .await;
    let r = reqwest::Client::new()
        .get(format!("http://{}/v1/Conversations", direct.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        tunnels.lock().unwrap().len(),
        1,
        "NO_PROXY must bypass the egress proxy"
    );
    assert_eq!(received.load(Ordering::SeqCst), 14);
}

/// Run `check-config` with extra flags, environment and an optional config
/// file; (exit code, stdout, stderr).
fn check_config(
    args: &[&str],
    env: &[(&str, &str)],
    file: Option<&str>,
) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(bin());
    cmd.arg("check-config").args(args);
    if let Some(text) = file {
        let path = dir.path().join("config.toml");
        std::fs::write(&path, text).unwrap();
        cmd.arg("--config").arg(path);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Assert that `check-config` refused the configuration with one line that
/// names `key` (exit 2, as documented).
fn assert_refused(what: &str, (code, _, err): (Option<i32>, String, String), key: &str) {
    assert_eq!(code, Some(2), "{what}: accepted, stderr: {err}");
    assert_eq!(err.trim().lines().count(), 1, "{what}: not one line: {err}");
    assert!(
        err.contains(key),
        "{what}: the error does not name {key}: {err}"
    );
}

#[test]
fn check_config_refuses_urls_with_bad_ports_schemes_hosts_or_credentials() {
    // Issue 10 #14: `--upstream http://127.0.0.1:65616` was accepted and
    // traffic (with Authorization) went to port 80.
    let bad_flags: &[(&[&str], &str)] = &[
        (&["--upstream", "http://127.0.0.1:65616"], "`upstream`"),
        (&["--upstream", "http://127.0.0.1:0"], "`upstream`"),
        (&["--upstream", "http://127.0.0.1:"], "`upstream`"),
        (&["--upstream", "ftp://127.0.0.1:21"], "`upstream`"),
        (&["--upstream", "http://127.0.0.1:4010/v1"], "`upstream`"),
        (&["--upstream", "http://ho st:4010"], "`upstream`"),
    ];
    for (args, key) in bad_flags {
        assert_refused(&format!("{args:?}"), check_config(args, &[], None), key);
    }
    let bad_env: &[(&str, &str, &str)] = &[
        (
            "TRP_DEFAULT_UPSTREAM",
            "https://api.twilio.com:99999",
            "`default_upstream`",
        ),
        (
            "TRP_PUBLIC_BASE_URL",
            "http://127.0.0.1:70000",
            "`public_base_url`",
        ),
        ("TRP_UPSTREAM", "http://127.0.0.1:65536", "`upstream`"),
        (
            "TRP_STORE",
            "postgres://trp:s3cret@db:654321/trp",
            "`store`",
        ),
        ("TRP_STORE", "postgres://trp:s3cret@db:5432x/trp", "`store`"),
        (
            "TRP_ALLOWED_HOSTS",
            "https://evil.example",
            "`allowed_hosts`",
        ),
        ("TRP_PROXY_HOSTS", "proxy.local:8080", "`proxy_hosts`"),
    ];
    for (name, value, key) in bad_env {
        let what = format!("{name}={value}");
        let out = check_config(&[], &[(name, value)], None);
        assert!(
            !out.2.contains("s3cret"),
            "{what}: password shown: {}",
            out.2
        );
        assert_refused(&what, out, key);
    }
    // Credentials in an origin would be sent as part of the Host header:
    // refused, and the password is not echoed.
    let out = check_config(
        &["--upstream", "http://trp:s3cret@127.0.0.1:4010"],
        &[],
        None,
    );
    assert!(!out.2.contains("s3cret"), "password shown: {}", out.2);
    assert_refused("userinfo", out, "`upstream`");
    let route =
        "[[route]]\nprefix = \"/v1\"\nupstream = \"https://conversations.twilio.com:65536\"\n";
    assert_refused(
        "route",
        check_config(&[], &[], Some(route)),
        "route[0].upstream",
    );

    // The edges that are fine stay fine.
    for good in [
        "http://127.0.0.1:65535",
        "http://127.0.0.1:1",
        "http://[::1]:4010",
        "https://conversations.twilio.com",
        "http://emulator:4010/",
    ] {
        let (code, _, err) = check_config(&["--upstream", good], &[], None);
        assert_eq!(code, Some(0), "{good} refused: {err}");
    }
    let (code, _, err) = check_config(
        &[],
        &[(
            "TRP_STORE",
            "postgres://trp:s3cret@db:5432/trp?sslmode=require",
        )],
        None,
    );
    assert_eq!(code, Some(0), "{err}");

    // `serve` refuses it too, before it listens: no request ever leaves.
    let out = Command::new(bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args(["--upstream", "http://127.0.0.1:65616"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`upstream`") && err.contains("65535"), "{err}");
}

/// One integer setting of `config/default.toml` and the range its
/// `# Allowed: MIN to MAX` comment documents.
#[derive(Debug)]
struct NumericSetting {
    key: String,
    min: i64,
    max: i64,
}

/// Every integer setting of the compiled-in defaults, with its documented
/// range. Derived from the file itself, so a new setting cannot escape the
/// range tests: one without an `Allowed:` line fails here.
fn numeric_settings() -> Vec<NumericSetting> {
    use twilio_repair_proxy::config::DEFAULT_TOML;
    // The integer keys, as TOML sees them.
    fn walk(v: &toml::Value, prefix: &str, out: &mut Vec<String>) {
        match v {
            toml::Value::Table(t) => {
                for (k, child) in t {
                    let path = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(child, &path, out);
                }
            }
            toml::Value::Array(items) => {
                for item in items {
                    let mut inner = Vec::new();
                    walk(item, prefix, &mut inner);
                    assert!(
                        inner.is_empty(),
                        "integer settings inside `{prefix}` entries: extend this test"
                    );
                }
            }
            toml::Value::Integer(_) => out.push(prefix.to_string()),
            _ => {}
        }
    }
    let parsed: toml::Value = DEFAULT_TOML.parse().unwrap();
    let mut keys = Vec::new();
    walk(&parsed, "", &mut keys);
    assert!(keys.len() >= 20, "{keys:?}");
    // Their documented ranges: the comment line right above each key.
    let allowed = regex::Regex::new(r"^# Allowed: (\d+) to (\d+)\b").unwrap();
    let lines: Vec<&str> = DEFAULT_TOML.lines().collect();
    let mut section = String::new();
    let mut documented = std::collections::BTreeMap::new();
    for (i, line) in lines.iter().enumerate() {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim_matches(|c| c == '[' || c == ']').to_string();
            continue;
        }
        let Some((name, _)) = line.split_once(" = ") else {
            continue;
        };
        let key = if section.is_empty() {
            name.to_string()
        } else {
            format!("{section}.{name}")
        };
        if let Some(c) = i.checked_sub(1).and_then(|j| allowed.captures(lines[j])) {
            documented.insert(key, (c[1].parse().unwrap(), c[2].parse().unwrap()));
        }
    }
    keys.into_iter()
        .map(|key| {
            let (min, max) = *documented.get(&key).unwrap_or_else(|| {
                panic!("config/default.toml: `{key}` has no `# Allowed: MIN to MAX` line above it")
            });
            NumericSetting { key, min, max }
        })
        .collect()
}

fn env_name(key: &str) -> String {
    format!("TRP_{}", key.replace('.', "_").to_uppercase())
}

#[test]
fn every_numeric_setting_is_range_checked_as_documented() {
    // Issue 10 #15: the documented bounds are the enforced ones (in-process,
    // through the configuration loader: environment layer).
    use twilio_repair_proxy::config::{Config, Overrides};
    let load = |key: &str, value: String| {
        Config::load(None, vec![(env_name(key), value)], &Overrides::default())
    };
    for s in numeric_settings() {
        for ok in [s.min, s.max] {
            if let Err(e) = load(&s.key, ok.to_string()) {
                panic!("{} = {ok} is documented as allowed but refused: {e}", s.key);
            }
        }
        let mut bad = vec![s.max + 1, -1];
        if s.min > 0 {
            bad.push(s.min - 1);
        }
        for v in bad {
            let e = match load(&s.key, v.to_string()) {
                Ok(_) => panic!(
                    "{} = {v} is outside the documented range but accepted",
                    s.key
                ),
                Err(e) => e.to_string(),
            };
            assert!(e.contains(&format!("`{}`", s.key)), "{e}");
            assert!(
                e.contains(&format!("must be between {} and {}", s.min, s.max)),
                "{e}"
            );
        }
    }
}

#[test]
fn every_numeric_setting_at_its_type_maximum_is_a_load_time_error() {
    // Issue 10 #15: `9223372036854775807` passed `check-config`, then
    // overflowed `Instant + Duration` in the workflow. Every duration, size
    // and count, at i64::MAX and u64::MAX, through the environment and a
    // file: `check-config` exits 2 with one line naming the key.
    for s in numeric_settings() {
        let name = env_name(&s.key);
        let (section, leaf) = match s.key.rsplit_once('.') {
            Some((t, k)) => (format!("[{t}]\n"), k.to_string()),
            None => (String::new(), s.key.clone()),
        };
        for max in [i64::MAX.to_string(), u64::MAX.to_string()] {
            let what = format!("{name}={max}");
            assert_refused(&what, check_config(&[], &[(&name, &max)], None), &s.key);
            let file = format!("{section}{leaf} = {max}\n");
            let what = format!("file: {}", file.replace('\n', " "));
            assert_refused(&what, check_config(&[], &[], Some(&file)), &s.key);
        }
    }
}

/// Start `serve` with its admin listener on `admin_ip` (a free port) and
/// extra environment; wait until it is ready and return its log so far.
async fn start_up_log(admin_ip: &str, env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr.log");
    let admin_port = free_port();
    let mut cmd = Command::new(bin());
    cmd.arg("serve")
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--admin-listen", &format!("{admin_ip}:{admin_port}")])
        .args(["--upstream", "http://127.0.0.1:9"])
        .arg("--store")
        .arg(format!("sqlite://{}/journal.db", dir.path().display()))
        .env_remove("RUST_LOG")
        .env_remove("TRP_ADMIN_TOKEN")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    wait_ready(&format!("http://127.0.0.1:{admin_port}/readyz")).await;
    // The start-up warnings come before this line (the log is written by
    // its own thread, so wait for it rather than for the listener).
    let mut text = String::new();
    for _ in 0..200 {
        text = std::fs::read_to_string(&log).unwrap();
        if text.contains("proxy listening") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(text.contains("proxy listening"), "{text}");
    text
}

#[tokio::test]
async fn admin_plane_beyond_loopback_without_a_token_is_warned_about_at_start_up() {
    // Issue 10 #8: an admin listener on 0.0.0.0 (as the sidecar manifest
    // had it) served incidents and the journal to any pod, silently.
    const WARNING: &str = "admin plane is reachable beyond loopback without a token";
    let open = start_up_log("0.0.0.0", &[]).await;
    assert!(open.contains(WARNING), "no warning: {open}");
    assert!(
        open.contains("TRP_ADMIN_TOKEN"),
        "the warning says how to fix it: {open}"
    );
    let token = "a-long-enough-admin-token-0123";
    let guarded = start_up_log("0.0.0.0", &[("TRP_ADMIN_TOKEN", token)]).await;
    assert!(!guarded.contains(WARNING), "{guarded}");
    assert!(
        !guarded.contains(token),
        "the token reached the log: {guarded}"
    );
    let local = start_up_log("127.0.0.1", &[]).await;
    assert!(!local.contains(WARNING), "{local}");
}

/// A reload that removes `admin.token` while the admin listener is
/// reachable beyond loopback is warned about as at start-up; the start
/// with a token was not. (Bound to 0.0.0.0, reached on 127.0.0.1 only.)
#[tokio::test]
async fn a_reload_that_removes_the_admin_token_beyond_loopback_is_warned_about() {
    const WARNING: &str = "admin plane is reachable beyond loopback without a token";
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr.log");
    let file = dir.path().join("proxy.toml");
    let token = "a-long-enough-admin-token-0123";
    std::fs::write(&file, format!("[admin]\ntoken = \"{token}\"\n")).unwrap();
    let admin_port = free_port();
    let mut child = Command::new(bin())
        .arg("serve")
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--admin-listen", &format!("0.0.0.0:{admin_port}")])
        .args(["--upstream", "http://127.0.0.1:9"])
        .arg("--store")
        .arg(format!("sqlite://{}/journal.db", dir.path().display()))
        .env("TRP_CONFIG", &file)
        .env_remove("RUST_LOG")
        .env_remove("TRP_ADMIN_TOKEN")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_ready(&format!("http://127.0.0.1:{admin_port}/readyz")).await;
    // A new file renamed over the old one: one reload, no token.
    let tmp = dir.path().join("proxy.new");
    std::fs::write(&tmp, "").unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    let mut text = String::new();
    for _ in 0..400 {
        text = std::fs::read_to_string(&log).unwrap();
        if text.contains("configuration reloaded") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let (before, after) = text
        .split_once("proxy listening")
        .unwrap_or_else(|| panic!("{text}"));
    assert!(!before.contains(WARNING), "a token at start-up: {text}");
    assert!(after.contains("configuration reloaded"), "{text}");
    assert!(after.contains(WARNING), "no warning at the reload: {text}");
    assert!(!text.contains(token), "the token reached the log: {text}");
}

/// `healthcheck` takes a host name and, when it fails, says why.
#[tokio::test]
async fn healthcheck_accepts_a_host_name_and_says_why_it_failed() {
    let up = upstream(Arc::new(|_| json(200, "{}"))).await;
    let proxy = spawn_proxy(&up.url(), &[]).await;
    let port = proxy.admin.rsplit(':').next().unwrap().to_string();
    let run = |addr: String| {
        tokio::task::spawn_blocking(move || {
            Command::new(bin())
                .args(["healthcheck", "--admin", &addr, "--timeout", "5"])
                .output()
                .unwrap()
        })
    };
    let ok = run(format!("localhost:{port}")).await.unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    drop(proxy);
    let down = run(format!("localhost:{port}")).await.unwrap();
    assert_eq!(down.status.code(), Some(1));
    let err = String::from_utf8_lossy(&down.stderr);
    assert!(
        err.contains(&format!("localhost:{port}")) && err.contains("cannot connect"),
        "{err}"
    );
}

/// `check-config --probe-store` says whether the journal can be opened,
/// changing nothing; a store that cannot is one line, exit 3.
#[tokio::test]
async fn check_config_probes_the_store_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let good = format!("sqlite://{}/journal.db", dir.path().display());
    let probe = |store: String| {
        tokio::task::spawn_blocking(move || {
            Command::new(bin())
                .args(["check-config", "--probe-store", "--store", &store])
                .env("TRP_STORE_OPTIONS_CONNECT_TIMEOUT_MS", "2000")
                .output()
                .unwrap()
        })
    };
    // Missing file: an SQLite journal is only read, never created here.
    let out = probe(good.clone()).await.unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(!dir.path().join("journal.db").exists(), "nothing created");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("cannot be opened"), "{err}");
    // A PostgreSQL nobody listens on: one line naming it, password masked.
    let port = free_port();
    let out = probe(format!("postgres://trp:s3cret@127.0.0.1:{port}/trp"))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot be opened") && !err.contains("s3cret"),
        "{err}"
    );
    // The test cluster's database can.
    let out = probe(pg_admin_url()).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("can be opened"));
}
