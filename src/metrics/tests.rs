use super::*;

fn text(m: &Metrics) -> String {
    m.render().unwrap()
}

fn has_line(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

#[test]
fn requests_carry_the_exact_code() {
    let m = Metrics::default();
    m.record_request(RouteClass::Conversations, &Method::POST, 429);
    m.record_request(RouteClass::Conversations, &Method::POST, 429);
    m.record_request(RouteClass::Api, &Method::GET, 200);
    // A code without a slot is counted through the family.
    m.record_request(RouteClass::Other, &Method::PUT, 418);
    m.record_request(RouteClass::Other, &Method::PUT, 418);
    let t = text(&m);
    assert!(
        has_line(
            &t,
            r#"trp_requests_total{route="other",method="PUT",code="418"} 2"#
        ),
        "{t}"
    );
    assert!(has_line(&t, "# TYPE trp_requests_total counter"), "{t}");
    assert!(
        has_line(
            &t,
            r#"trp_requests_total{route="conversations",method="POST",code="429"} 2"#
        ),
        "{t}"
    );
    assert!(
        has_line(
            &t,
            r#"trp_requests_total{route="api",method="GET",code="200"} 1"#
        ),
        "{t}"
    );
    assert!(
        !t.contains("# EOF"),
        "Prometheus text, not OpenMetrics: {t}"
    );
}

#[test]
fn a_request_is_timed_when_its_guard_drops_after_its_answer() {
    let m = Arc::new(Metrics::default());
    let count = r#"trp_request_duration_seconds_count{route="api",method="GET",status="4xx"}"#;
    let mut g = InFlightGuard::new(&m, Instant::now());
    assert_eq!(m.in_flight(), 1);
    g.answered(RouteClass::Api, &Method::GET, 404);
    // Counted at once; timed only when the answer's body ends.
    assert!(text(&m).contains(r#"code="404"} 1"#));
    assert!(!text(&m).contains(count), "{}", text(&m));
    drop(g);
    assert_eq!(m.in_flight(), 0);
    assert!(has_line(&text(&m), &format!("{count} 1")), "{}", text(&m));
    // A guard never answered (a panicking handler) is not timed.
    drop(InFlightGuard::new(&m, Instant::now()));
    assert!(has_line(&text(&m), &format!("{count} 1")), "{}", text(&m));
    m.record_answer(RouteClass::Api, &Method::GET, 502, Duration::from_millis(7));
    let t = text(&m);
    let bucket = |le: &str, n: u32| {
        format!(
            r#"trp_request_duration_seconds_bucket{{route="api",method="GET",status="5xx",le="{le}"}} {n}"#
        )
    };
    assert!(has_line(&t, &bucket("0.005", 0)), "{t}");
    assert!(has_line(&t, &bucket("0.01", 1)), "{t}");
}

#[test]
fn latency_buckets_reach_past_the_deadlines() {
    let m = Metrics::default();
    m.upstream_latency(RouteClass::Conversations, Duration::from_secs(45));
    m.repair_workflow.observe(Duration::from_millis(3));
    let t = text(&m);
    let up = |le: &str, n: u32| {
        format!(r#"trp_upstream_latency_seconds_bucket{{route="conversations",le="{le}"}} {n}"#)
    };
    for (le, n) in [("0.005", 0), ("30", 0), ("60", 1), ("120", 1), ("+Inf", 1)] {
        assert!(has_line(&t, &up(le, n)), "{} in\n{t}", up(le, n));
    }
    assert!(
        has_line(&t, r#"trp_repair_workflow_seconds_bucket{le="0.005"} 1"#),
        "{t}"
    );
    assert!(has_line(&t, "trp_repair_workflow_seconds_count 1"), "{t}");
}

#[test]
fn step_failures_carry_the_step() {
    let m = Metrics::default();
    m.repair_step_failure(StepKind::DeleteUser);
    let t = text(&m);
    assert!(
        has_line(
            &t,
            r#"trp_repair_step_failures_total{step="delete-user"} 1"#
        ),
        "{t}"
    );
    // Every step has its series from the start.
    assert!(
        has_line(&t, r#"trp_repair_step_failures_total{step="fetch-user"} 0"#),
        "{t}"
    );
    let series = t
        .lines()
        .filter(|l| l.starts_with("trp_repair_step_failures_total{"))
        .count();
    assert_eq!(series, StepKind::ALL.len(), "{t}");
}

#[test]
fn connection_gauges_follow_their_guards() {
    let m = Metrics::default();
    let proxy = m.connections(Listener::Proxy);
    let open = proxy.open();
    let parked = proxy.parked();
    let second = m.connections(Listener::Proxy).open();
    let t = text(&m);
    assert!(
        has_line(&t, r#"trp_open_connections{listener="proxy"} 2"#),
        "{t}"
    );
    assert!(
        has_line(&t, r#"trp_parked_connections{listener="proxy"} 1"#),
        "{t}"
    );
    assert!(
        has_line(&t, r#"trp_open_connections{listener="admin"} 0"#),
        "{t}"
    );
    drop((open, parked, second));
    let t = text(&m);
    assert!(
        has_line(&t, r#"trp_open_connections{listener="proxy"} 0"#),
        "{t}"
    );
    assert!(
        has_line(&t, r#"trp_parked_connections{listener="proxy"} 0"#),
        "{t}"
    );
}

#[test]
fn build_info_spans_dropped_and_readiness() {
    let m = Metrics::default();
    m.otlp_spans_dropped(3);
    m.set_readiness(true, false);
    let t = text(&m);
    let info = format!(
        r#"trp_build_info{{version="{}",commit="{BUILD_COMMIT}"}} 1"#,
        env!("CARGO_PKG_VERSION")
    );
    assert!(has_line(&t, &info), "{info} in\n{t}");
    assert!(
        BUILD_COMMIT == "unknown" || BUILD_COMMIT.bytes().all(|b| b.is_ascii_hexdigit()),
        "{BUILD_COMMIT}"
    );
    assert!(has_line(&t, "trp_otlp_spans_dropped_total 3"), "{t}");
    assert!(has_line(&t, "trp_store_ready 1"), "{t}");
    assert!(has_line(&t, "trp_ready 0"), "{t}");
}

#[cfg(target_os = "linux")]
#[test]
fn process_metrics_are_exported() {
    let t = text(&Metrics::default());
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
        "process_threads",
    ] {
        let sample = t
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in\n{t}"));
        let v: f64 = sample.parse().unwrap();
        assert!(v >= 0.0, "{name} {v}");
    }
}

#[test]
fn shield_series_by_class_and_by_account_up_to_the_cap() {
    let m = Metrics::default();
    m.shield_retry(AccountClass::Key, None);
    m.shield_queue_enter(AccountClass::Account, Some("AC1"));
    m.shield_queue_leave(
        AccountClass::Account,
        Some("AC1"),
        Duration::from_millis(20),
    );
    m.shield_retry(AccountClass::Account, Some("AC1"));
    let t = text(&m);
    assert!(
        has_line(&t, r#"trp_shield_retries_total{class="key"} 1"#),
        "{t}"
    );
    assert!(
        has_line(&t, r#"trp_shield_retries_total{class="unknown"} 0"#),
        "{t}"
    );
    assert!(
        has_line(&t, r#"trp_shield_queue_length{class="account"} 0"#),
        "{t}"
    );
    assert!(
        has_line(&t, r#"trp_shield_account_retries_total{account="AC1"} 1"#),
        "{t}"
    );
    assert!(
        has_line(&t, r#"trp_shield_account_queue_length{account="AC1"} 0"#),
        "{t}"
    );
    assert!(
        has_line(
            &t,
            r#"trp_shield_queue_wait_seconds_count{class="account"} 1"#
        ),
        "{t}"
    );
    for i in 0..MAX_LABELLED_ACCOUNTS + 5 {
        m.shield_retry(AccountClass::Account, Some(&format!("AC{i}x")));
    }
    let accounts = text(&m)
        .lines()
        .filter(|l| l.starts_with("trp_shield_account_retries_total{"))
        .count();
    assert_eq!(accounts, MAX_LABELLED_ACCOUNTS);
    // Without account_labels no account series exists at all.
    let quiet = text(&Metrics::default());
    assert!(!quiet.contains("trp_shield_account_"), "{quiet}");
}
