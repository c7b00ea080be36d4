//! SID continuity after a repair (`src/repair/alias.rs`): the repaired
//! create tells the app which SIDs changed, and requests naming the old
//! SIDs go to the new resources, in their own account and service only,
//! across restarts and replicas. Once per journal store where the store is
//! what is tested.

use crate::common::*;
use twilio_repair_proxy::emulator::FaultMode;

const ACCOUNT_B: &str = "ACbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const TOKEN_B: &str = "tokenofaccountb";

/// One answer through the proxy: status, `X-Repair-Sid-Alias` values, JSON.
struct Answer {
    status: u16,
    user_sid: Vec<String>,
    aliases: Vec<String>,
    json: serde_json::Value,
}

/// What answers: an in-process proxy or a spawned one (`http://host:port`).
trait At {
    fn at(&self, path: &str) -> String;
}
impl At for Proxy {
    fn at(&self, path: &str) -> String {
        self.url(path)
    }
}
impl At for Running {
    fn at(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

async fn call(
    http: &reqwest::Client,
    proxy: &impl At,
    method: reqwest::Method,
    path: &str,
    form: &[(&str, &str)],
    auth: (&str, &str),
) -> Answer {
    let mut req = http
        .request(method, proxy.at(path))
        .basic_auth(auth.0, Some(auth.1));
    if !form.is_empty() {
        req = req.form(form);
    }
    let r = req.send().await.unwrap();
    let values = |name: &str| -> Vec<String> {
        r.headers()
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    };
    let (user_sid, aliases) = (values("x-repair-user-sid"), values("x-repair-sid-alias"));
    let status = r.status().as_u16();
    Answer {
        status,
        user_sid,
        aliases,
        json: r.json().await.unwrap_or(serde_json::Value::Null),
    }
}

/// The SIDs Kim had before the repair: her User's, and her participant's
/// in each other conversation.
struct Before {
    user: String,
    members: Vec<(String, String)>,
}

async fn sids_of(emu: &Emu, kim: &Built) -> Before {
    let (s, u) = emu.get(&kim.user_path()).await;
    assert_eq!(s, 200, "{u}");
    let mut members = Vec::new();
    for m in &kim.others {
        let (s, p) = emu.get(&kim.participant(&m.ch)).await;
        assert_eq!(s, 200, "{p}");
        members.push((m.ch.clone(), p["sid"].as_str().unwrap().to_string()));
    }
    Before {
        user: u["sid"].as_str().unwrap().to_string(),
        members,
    }
}

/// A block repair of Kim (two other memberships) through the proxy; the
/// proxy's store URL is kept for a second proxy on the same store.
async fn repaired(store: StoreKind) -> (Stack, Built, Before, Answer) {
    let (st, kim) = kim().on(store).start().await;
    let before = sids_of(&st.emu, &kim).await;
    let created = create(&st.http, &st.proxy, &kim).await;
    assert_eq!(created.status, 201, "{}", created.json);
    (st, kim, before, created)
}

/// Kim, with a User of her own and two other memberships, stale (block).
fn kim() -> Scene {
    Scene::new()
        .user("kim")
        .friendly("Kim K")
        .member_of_others(2)
        .armed(FaultMode::Block)
}

async fn create(http: &reqwest::Client, proxy: &impl At, kim: &Built) -> Answer {
    call(
        http,
        proxy,
        reqwest::Method::POST,
        &kim.participants(kim.target()),
        &[("Identity", "kim")],
        (ACCOUNT, TOKEN),
    )
    .await
}

async fn get(http: &reqwest::Client, proxy: &impl At, path: &str) -> Answer {
    call(
        http,
        proxy,
        reqwest::Method::GET,
        path,
        &[],
        (ACCOUNT, TOKEN),
    )
    .await
}

async fn the_repaired_create_tells_the_app_which_sids_changed(store: StoreKind) {
    let (st, kim, before, created) = repaired(store).await;
    let after = sids_of(&st.emu, &kim).await;
    assert_ne!(before.user, after.user, "the User was recreated");
    assert_eq!(
        created.user_sid,
        vec![format!("{}={}", before.user, after.user)]
    );
    let mut told = created.aliases.clone();
    told.sort();
    let mut want: Vec<String> = before
        .members
        .iter()
        .zip(&after.members)
        .map(|((_, old), (_, new))| format!("{old}={new}"))
        .collect();
    want.sort();
    assert_eq!(told, want, "one alias per restored membership");

    // Listed on the incident page and in its support bundle.
    let inc = admin_json(&st.proxy.admin, "/incidents").await;
    let id = inc["incidents"][0]["id"].as_i64().unwrap();
    for path in [
        format!("/ui/incidents/{id}"),
        format!("/ui/incidents/{id}/bundle"),
    ] {
        let r = st.http.get(st.proxy.admin_url(&path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let text = r.text().await.unwrap();
        for ((_, old), (_, new)) in before.members.iter().zip(&after.members) {
            assert!(text.contains(old) && text.contains(new), "{path}: {text}");
        }
        assert!(text.contains(&after.user), "{path}: {text}");
    }
    st.proxy.stop().await;
}

async fn get_and_delete_by_each_old_sid_act_on_the_new_resources(store: StoreKind) {
    let (st, kim, before, _) = repaired(store).await;
    let after = sids_of(&st.emu, &kim).await;
    let b = &kim.base;

    let old_user = format!("{b}/Users/{}", before.user);
    let a = get(&st.http, &st.proxy, &old_user).await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(a.json["sid"], after.user.as_str(), "Twilio's JSON, new SID");
    assert_eq!(a.json["friendly_name"], "Kim K");
    assert_eq!(a.aliases, vec![format!("{}={}", before.user, after.user)]);

    let a = get(&st.http, &st.proxy, &format!("{old_user}/Conversations")).await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(a.json["conversations"].as_array().unwrap().len(), 3);
    assert_eq!(a.aliases.len(), 1);

    for ((ch, old), (_, new)) in before.members.iter().zip(&after.members) {
        let p = format!("{b}/Conversations/{ch}/Participants/{old}");
        let a = get(&st.http, &st.proxy, &p).await;
        assert_eq!(a.status, 200, "{}", a.json);
        assert_eq!(a.json["sid"], new.as_str());
        assert_eq!(a.aliases, vec![format!("{old}={new}")]);

        let a = call(
            &st.http,
            &st.proxy,
            reqwest::Method::DELETE,
            &p,
            &[],
            (ACCOUNT, TOKEN),
        )
        .await;
        assert_eq!(a.status, 204, "{}", a.json);
        assert_eq!(a.aliases, vec![format!("{old}={new}")]);
        let (s, _) = st.emu.get(&kim.participant(ch)).await;
        assert_eq!(s, 404, "the new participant was the one removed");
    }
    // Requests that name no old SID are not rewritten (nor marked).
    let a = get(&st.http, &st.proxy, &format!("{b}/Users/{}", after.user)).await;
    assert_eq!(a.status, 200);
    assert!(a.aliases.is_empty());
    st.proxy.stop().await;
}

async fn aliases_survive_a_restart_and_are_honoured_by_another_replica(store: StoreKind) {
    // Proxy processes, so that the first can be killed (-9) and its
    // SQLite journal taken over.
    let (emu, kim) = kim().build().await;
    let before = sids_of(&emu, &kim).await;
    let dir = tempfile::tempdir().unwrap().keep();
    let store_url = match store {
        StoreKind::Sqlite => format!("sqlite://{}/journal.db", dir.display()),
        StoreKind::Postgres => fresh_pg_database().await,
    };
    let http = reqwest::Client::new();
    let first = spawn_proxy_with_store(&dir, &store_url, &emu.origin(), &[]).await;
    let created = create(&http, &first, &kim).await;
    assert_eq!(created.status, 201, "{}", created.json);
    let after = sids_of(&emu, &kim).await;
    let old_user = format!("{}/Users/{}", kim.base, before.user);
    let user_alias = vec![format!("{}={}", before.user, after.user)];
    if store == StoreKind::Postgres {
        // Another replica on the same PostgreSQL, the first still running.
        let second = spawn_proxy_with_store(&dir, &store_url, &emu.origin(), &[]).await;
        let a = get(&http, &second, &old_user).await;
        assert_eq!(a.status, 200, "{}", a.json);
        assert_eq!(a.json["sid"], after.user.as_str());
        assert_eq!(a.aliases, user_alias);
    }
    first.signal("KILL");
    drop(first);
    let restarted = spawn_proxy_with_store(&dir, &store_url, &emu.origin(), &[]).await;
    let (ch, old) = &before.members[0];
    let p = format!("{}/Conversations/{ch}/Participants/{old}", kim.base);
    let a = get(&http, &restarted, &p).await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(a.json["sid"], after.members[0].1.as_str());
    assert_eq!(a.aliases, vec![format!("{old}={}", after.members[0].1)]);
    let a = get(&http, &restarted, &old_user).await;
    assert_eq!(a.json["sid"], after.user.as_str());
    assert_eq!(a.aliases, user_alias);
}

#[tokio::test]
async fn another_accounts_request_naming_an_old_sid_gets_twilios_own_404() {
    let (st, kim, before, _) = repaired(StoreKind::Sqlite).await;
    st.emu.add_account(ACCOUNT_B, TOKEN_B, None).await;
    let b = &kim.base;
    for path in [
        format!("{b}/Users/{}", before.user),
        format!(
            "{b}/Conversations/{}/Participants/{}",
            before.members[0].0, before.members[0].1
        ),
    ] {
        let a = call(
            &st.http,
            &st.proxy,
            reqwest::Method::GET,
            &path,
            &[],
            (ACCOUNT_B, TOKEN_B),
        )
        .await;
        assert_eq!(a.status, 404, "{path}: {}", a.json);
        assert_eq!(a.json["code"], 20404, "Twilio's own answer");
        assert!(a.aliases.is_empty(), "{path}: {:?}", a.aliases);
    }
    // Nor across services: the same SID under another service of the
    // same account.
    let (s, other) = st.emu.post("/v1/Services", &[("FriendlyName", "x")]).await;
    assert_eq!(s, 201);
    let is2 = other["sid"].as_str().unwrap();
    let a = get(
        &st.http,
        &st.proxy,
        &format!("/v1/Services/{is2}/Users/{}", before.user),
    )
    .await;
    assert_eq!(a.status, 404, "{}", a.json);
    assert!(a.aliases.is_empty());
    // And the default-service form names the account's default service,
    // not this one.
    let a = get(&st.http, &st.proxy, &format!("/v1/Users/{}", before.user)).await;
    assert_eq!(a.status, 404, "{}", a.json);
    assert!(a.aliases.is_empty());
    st.proxy.stop().await;
}

#[tokio::test]
async fn an_identity_repaired_twice_resolves_to_the_newest_sid() {
    let (st, kim, before, _) = repaired(StoreKind::Sqlite).await;
    let middle = sids_of(&st.emu, &kim).await;
    // Kim goes stale again: removed from the conversation she was just
    // added to, and added back through the proxy.
    let ch = kim.target();
    let (s, p) = st.emu.get(&kim.participant(ch)).await;
    assert_eq!(s, 200, "{p}");
    assert_eq!(
        st.emu
            .delete(&format!(
                "{}/{}",
                kim.participants(ch),
                p["sid"].as_str().unwrap()
            ))
            .await,
        204
    );
    let again = create(&st.http, &st.proxy, &kim).await;
    assert_eq!(again.status, 201, "{}", again.json);
    let newest = sids_of(&st.emu, &kim).await;
    assert_ne!(newest.user, middle.user, "repaired a second time");
    assert_eq!(
        again.user_sid,
        vec![format!("{}={}", middle.user, newest.user)]
    );

    let a = get(
        &st.http,
        &st.proxy,
        &format!("{}/Users/{}", kim.base, before.user),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(a.json["sid"], newest.user.as_str());
    assert_eq!(a.aliases, vec![format!("{}={}", before.user, newest.user)]);
    let (ch, old) = &before.members[1];
    let a = get(
        &st.http,
        &st.proxy,
        &format!("{}/Conversations/{ch}/Participants/{old}", kim.base),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(a.json["sid"], newest.members[1].1.as_str());
    st.proxy.stop().await;
}

macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            use super::StoreKind;
            $( #[tokio::test] async fn $name() { super::$name(StoreKind::Sqlite).await } )*
        }
        mod postgres {
            use super::StoreKind;
            $( #[tokio::test] async fn $name() { super::$name(StoreKind::Postgres).await } )*
        }
    };
}

on_both_stores!(
    the_repaired_create_tells_the_app_which_sids_changed,
    get_and_delete_by_each_old_sid_act_on_the_new_resources,
    aliases_survive_a_restart_and_are_honoured_by_another_replica,
);
