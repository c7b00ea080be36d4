//! PostgreSQL going away under traffic. Its own test binary: it stops the
//! shared test cluster, which no other test may use meanwhile.

mod common;

use std::time::Duration;

use common::*;
use twilio_repair_proxy::emulator::FaultMode;

async fn ready_status(st: &Stack) -> u16 {
    st.http
        .get(st.proxy.admin_url("/readyz"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn wait_ready_status(st: &Stack, want: u16) {
    for _ in 0..200 {
        if ready_status(st).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("/readyz never answered {want}");
}

#[tokio::test]
async fn pass_through_survives_a_database_outage_and_readiness_follows_it() {
    let (st, nora) = Scene::new()
        .user("nora")
        .armed(FaultMode::Block)
        .on(StoreKind::Postgres)
        .proxy(|c| {
            c.store_options.connect_timeout_ms = 500;
            c.store_options.statement_timeout_ms = 500;
        })
        .start()
        .await;
    let (is, ch) = (nora.is().unwrap(), nora.target());
    assert_eq!(ready_status(&st).await, 200);

    pg_ctl("stop");
    let result = std::panic::AssertUnwindSafe(async {
        for _ in 0..10 {
            let r = st
                .http
                .get(st.proxy.url(&format!("/v1/Services/{is}")))
                .basic_auth(ACCOUNT, Some(TOKEN))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "pass-through must not depend on the store");
        }
        wait_ready_status(&st, 503).await;
        // A repair needs the journal: without it the proxy only checks.
        let (status, outcome, body) = st.create(Some(is), ch, &[("Identity", "nora")]).await;
        assert_eq!(status, 404, "{body}");
        assert_eq!(outcome.as_deref(), Some("disabled"));
        let deletes = st
            .emu
            .requests()
            .await
            .iter()
            .filter(|(m, _)| m == "DELETE")
            .count();
        assert_eq!(
            deletes, 1,
            "only the test's own participant delete: no User was deleted"
        );
    });
    let outcome = futures_util::FutureExt::catch_unwind(result).await;
    pg_ctl("start");
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    wait_ready_status(&st, 200).await;
    // And repairs work again.
    let (status, outcome, _) = st.create(Some(is), ch, &[("Identity", "nora")]).await;
    assert_eq!((status, outcome.as_deref()), (201, Some("repaired")));
    st.proxy.stop().await;

    // A proxy (re)started while the database is down still comes up and
    // forwards; it turns ready once the database is back.
    let url = fresh_pg_database().await;
    pg_ctl("stop");
    let result = std::panic::AssertUnwindSafe(async {
        let mut config = test_config(&st.emu.origin());
        config.store = url.clone();
        config.store_options.connect_timeout_ms = 500;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = start_proxy_unready(listener, config).await;
        let r = st
            .http
            .get(proxy.url(&format!("/v1/Services/{is}")))
            .basic_auth(ACCOUNT, Some(TOKEN))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "pass-through works without the database");
        let ready = st
            .http
            .get(proxy.admin_url("/readyz"))
            .send()
            .await
            .unwrap();
        assert_eq!(ready.status(), 503);
        proxy
    });
    let outcome = futures_util::FutureExt::catch_unwind(result).await;
    pg_ctl("start");
    let proxy = match outcome {
        Ok(p) => p,
        Err(panic) => std::panic::resume_unwind(panic),
    };
    // The schema is created in the background once the database answers.
    wait_ready(&proxy.admin_url("/readyz")).await;
    proxy.stop().await;
}
