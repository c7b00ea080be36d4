//! Tests of loading, layering (file, then `TRP_*` environment) and range checks
//! of the settings.

use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_parse_and_route_conversations() {
    let c = Config::defaults();
    assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.admin_listen.to_string(), "127.0.0.1:9090");
    assert_eq!(c.store, "sqlite://data/journal.db");
    assert!(c.upstream.is_none());
    assert!(c.route.iter().any(
        |r| r.prefix == "/v1/Services" && r.upstream == "https://conversations.twilio.com"
    ));
}

#[test]
fn precedence_file_env_flags() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.toml");
    std::fs::write(
        &f,
        "listen = \"127.0.0.1:1000\"\n[limits]\nconnect_timeout_ms = 7\n",
    )
    .unwrap();
    let c = Config::load(Some(&f), env(&[]), &Overrides::default()).unwrap();
    assert_eq!(c.listen.port(), 1000);
    assert_eq!(c.limits.connect_timeout_ms, 7);
    let c = Config::load(
        Some(&f),
        env(&[
            ("TRP_LISTEN", "127.0.0.1:2000"),
            ("TRP_LIMITS_CONNECT_TIMEOUT_MS", "9"),
        ]),
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(c.listen.port(), 2000);
    assert_eq!(c.limits.connect_timeout_ms, 9);
    let o = Overrides {
        listen: Some("127.0.0.1:3000".parse().unwrap()),
        ..Default::default()
    };
    let c = Config::load(Some(&f), env(&[("TRP_LISTEN", "127.0.0.1:2000")]), &o).unwrap();
    assert_eq!(c.listen.port(), 3000);
}

#[test]
fn reserved_prefixes_are_paths_from_the_environment_too() {
    let c = Config::defaults();
    assert_eq!(c.reserved_prefixes, vec!["/__emulator".to_string()]);
    let load = |v: &str| {
        Config::load(
            None,
            env(&[("TRP_RESERVED_PREFIXES", v)]),
            &Overrides::default(),
        )
    };
    let c = load("/internal, /__emulator/").unwrap();
    assert_eq!(c.reserved_prefixes, vec!["/internal", "/__emulator/"]);
    assert!(load("").unwrap().reserved_prefixes.is_empty());
    for bad in ["/", "//", "internal", "/a?b", "/a b", "/a#b"] {
        let e = load(bad).unwrap_err().to_string();
        assert!(
            e.starts_with("invalid value for `reserved_prefixes`"),
            "{bad}: {e}"
        );
    }
}

#[test]
fn unknown_keys_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.toml");
    std::fs::write(&f, "[limits]\nconect_timeout_ms = 7\n").unwrap();
    let e = Config::load(Some(&f), env(&[]), &Overrides::default()).unwrap_err();
    assert_eq!(e.to_string(), "unknown key `limits.conect_timeout_ms`");
    let e = Config::load(None, env(&[("TRP_LISTN", "x")]), &Overrides::default()).unwrap_err();
    assert!(e.to_string().contains("TRP_LISTN"), "{e}");
}

#[test]
fn bad_values_name_the_key() {
    let e = Config::load(
        None,
        env(&[("TRP_LIMITS_CONNECT_TIMEOUT_MS", "soon")]),
        &Overrides::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("limits.connect_timeout_ms"), "{e}");
    let e = Config::load(
        None,
        env(&[("TRP_UPSTREAM", "ftp://x")]),
        &Overrides::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("`upstream`"), "{e}");
    let e = Config::load(
        None,
        env(&[("TRP_LISTEN", "nowhere")]),
        &Overrides::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("listen"), "{e}");
}

#[test]
fn every_range_names_an_integer_setting() {
    let base: Value = DEFAULT_TOML.parse().unwrap();
    for (key, min, max) in RANGES {
        assert!(
            matches!(lookup(&base, key), Some(Value::Integer(_))),
            "RANGES names `{key}`, which is no integer setting of config/default.toml"
        );
        assert!(min <= max, "{key}");
        let line = format!("# Allowed: {min} to {max}");
        assert!(
            DEFAULT_TOML.contains(&line),
            "config/default.toml does not document `{line}` for {key}"
        );
    }
}

#[test]
fn admin_token_is_never_shown() {
    let secret = "0123456789abcdef-not-for-eyes";
    let c = Config::load(
        None,
        env(&[("TRP_ADMIN_TOKEN", secret)]),
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(c.admin.token.as_ref().unwrap().expose(), secret);
    assert!(!format!("{c:?}").contains(secret));
    assert!(!c.to_masked_toml().contains(secret));
    let e = Config::load(
        None,
        env(&[("TRP_ADMIN_TOKEN", "with space 0123456789")]),
        &Overrides::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("`admin.token`") && !e.contains("0123456789"),
        "{e}"
    );
}

#[test]
fn masks_store_password() {
    assert_eq!(
        mask_url_password("postgres://trp:s3cret@db:5432/trp"),
        "postgres://trp:****@db:5432/trp"
    );
    let c = Config::load(
        None,
        env(&[("TRP_STORE", "postgres://trp:s3cret@db:5432/trp")]),
        &Overrides::default(),
    )
    .unwrap();
    let shown = c.to_masked_toml();
    assert!(!shown.contains("s3cret"));
    assert!(shown.contains("****"));
}

#[test]
fn upstream_ca_file_is_read_and_checked_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let load = |path: &std::path::Path| {
        Config::load(
            None,
            env(&[("TRP_UPSTREAM_CA_FILE", path.to_str().unwrap())]),
            &Overrides::default(),
        )
    };
    let missing = dir.path().join("missing.pem");
    let e = load(&missing).unwrap_err().to_string();
    assert!(
        e.contains("`upstream_ca_file`") && e.contains("cannot read"),
        "{e}"
    );
    let no_pem = dir.path().join("no.pem");
    std::fs::write(&no_pem, "not a certificate\n").unwrap();
    let e = load(&no_pem).unwrap_err().to_string();
    assert!(
        e.contains("`upstream_ca_file`") && e.contains("no PEM certificate"),
        "{e}"
    );
    let bad = dir.path().join("bad.pem");
    std::fs::write(
        &bad,
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let e = load(&bad).unwrap_err().to_string();
    assert!(
        e.contains("`upstream_ca_file`") && e.contains("certificate 1"),
        "{e}"
    );
    // Unset by default.
    assert!(Config::defaults().upstream_ca_file.is_none());
}

#[test]
fn public_base_url_is_request_by_default_and_takes_off_or_an_origin() {
    assert_eq!(Config::defaults().public_base_url, PublicBaseUrl::Request);
    let load = |v: &str| {
        Config::load(
            None,
            env(&[("TRP_PUBLIC_BASE_URL", v)]),
            &Overrides::default(),
        )
    };
    assert_eq!(load("off").unwrap().public_base_url, PublicBaseUrl::Off);
    assert_eq!(
        load("Request").unwrap().public_base_url,
        PublicBaseUrl::Request
    );
    assert_eq!(
        load("https://proxy.example:8443").unwrap().public_base_url,
        PublicBaseUrl::Fixed("https://proxy.example:8443".into())
    );
    for bad in ["of", "http://x/path", "ftp://x", ""] {
        let e = load(bad).unwrap_err().to_string();
        assert!(e.contains("`public_base_url`"), "{bad}: {e}");
    }
}

#[test]
fn durations_take_integers_or_humantime_text_in_files_and_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.toml");
    std::fs::write(
        &f,
        "[limits]\nconnect_timeout_ms = \"5s\"\nidle_timeout_ms = 250\n[repair]\nsid_alias_retention_secs = \"30days\"\n",
    )
    .unwrap();
    let c = Config::load(
        Some(&f),
        env(&[("TRP_LIMITS_RESPONSE_HEADER_TIMEOUT_MS", "1m 30s")]),
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(c.limits.connect_timeout_ms, 5000);
    assert_eq!(c.limits.idle_timeout_ms, 250);
    assert_eq!(c.limits.response_header_timeout_ms, 90_000);
    assert_eq!(c.repair.sid_alias_retention_secs, 30 * 86_400);
    let load_env = |v: &str| {
        Config::load(
            None,
            env(&[("TRP_LIMITS_CONNECT_TIMEOUT_MS", v)]),
            &Overrides::default(),
        )
    };
    assert_eq!(load_env("250ms").unwrap().limits.connect_timeout_ms, 250);
    assert_eq!(load_env(" 42 ").unwrap().limits.connect_timeout_ms, 42);
    for bad in ["soon", "1500us", "5 parsecs", "-5s"] {
        let e = load_env(bad).unwrap_err().to_string();
        assert!(e.contains("limits.connect_timeout_ms"), "{bad}: {e}");
    }
    // Range checks apply to the converted value.
    let e = load_env("2days").unwrap_err().to_string();
    assert!(e.contains("must be between"), "{e}");
}
