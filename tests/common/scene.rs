//! The scene builder every repair test sets up its Twilio with: a stale
//! identity and what it has to lose, said in one sentence.
//!
//! ```ignore
//! let (emu, kim) = Scene::new()
//!     .user("kim")
//!     .friendly("Kim K")
//!     .attributes(r#"{"vip":true}"#)
//!     .member_of_another()
//!     .armed(FaultMode::Block)
//!     .build()
//!     .await;
//! ```
//!
//! What the sentence does not say is not made. Without `friendly`,
//! `attributes` or `role` no User is created up front (the first
//! participant create makes a bare one); without `armed` the identity is
//! not made stale. The scene is made in its own service (unless
//! `in_default_service` or `next_to`), in this order: the User, the other
//! memberships, the conversations the creates go to, and last the
//! identity added to the first of those and removed again, which makes the
//! next create there meet the fault.
//!
//! A sentence ends with one of:
//! - [`Scene::build_in`]: in an emulator the caller started (several
//!   scenes may share one; its fault settings are the caller's);
//! - [`Scene::build`]: in an emulator of its own, whose fault hits this
//!   identity;
//! - [`Scene::start`]: that, with an in-process proxy in front (a
//!   [`Stack`]);
//! - [`Scene::emulator`], [`Scene::stack`]: the same without making
//!   anything in it (a helper library under test makes the rest).

use twilio_emulator::{EmulatorConfig, FaultMode};
use twilio_repair_proxy::config::Config;

use super::*;

/// A User role that is not the service's default, so that a User re-made
/// with defaults shows.
pub const USER_ROLE: &str = "RL0123456789abcdef0123456789abcdef";
/// A membership role that is not the default either.
pub const MEMBER_ROLE: &str = "RLfedcba9876543210fedcba9876543210";

/// An emulator setting: the participant fault in `mode` for `identities`.
pub fn affected(mode: FaultMode, identities: &[&str]) -> impl FnOnce(&mut EmulatorConfig) + use<> {
    let identities: Vec<String> = identities.iter().map(|s| s.to_string()).collect();
    move |c| {
        c.fault_mode = mode;
        c.fault_identities = identities;
    }
}

type EmuTweak = Box<dyn FnOnce(&mut EmulatorConfig) + Send>;
type ProxyTweak = Box<dyn FnOnce(&mut Config) + Send>;

/// Where the scene is made.
enum Service {
    Own,
    Default,
    /// Another scene's service (`Some(is)`, `None` for the default one)
    /// and its conversations.
    Beside(Option<String>, Vec<String>),
}

/// What a scene is to be: see the module docs.
pub struct Scene {
    identity: String,
    friendly: Option<String>,
    attributes: Option<String>,
    role: Option<String>,
    others: Vec<(Option<String>, Option<String>)>,
    targets: usize,
    service: Service,
    fault: Option<FaultMode>,
    stale: bool,
    auth: (String, String),
    store: StoreKind,
    emu_tweaks: Vec<EmuTweak>,
    proxy_tweaks: Vec<ProxyTweak>,
    rewriting: bool,
}

/// One of the identity's other memberships, as the scene made it.
#[derive(Debug, Clone)]
pub struct Membership {
    /// Its conversation.
    pub ch: String,
    pub attributes: Option<String>,
    pub role: Option<String>,
}

/// What a [`Scene`] made.
#[derive(Debug, Clone)]
pub struct Built {
    /// The service (`None`: the account's default one).
    pub is: Option<String>,
    /// `/v1/Services/IS...`, or `/v1` on the default service.
    pub base: String,
    pub identity: String,
    /// The User made up front (with the fields below), if any.
    pub user_sid: Option<String>,
    pub friendly: Option<String>,
    pub attributes: Option<String>,
    pub role: Option<String>,
    pub others: Vec<Membership>,
    /// The conversations the creates go to; when armed, the identity was
    /// just removed from the first one.
    pub targets: Vec<String>,
}

impl Default for Scene {
    fn default() -> Self {
        Self::new()
    }
}

impl Scene {
    /// Identity `kim`, no User up front, its own service, one conversation
    /// to create into, no fault, an SQLite journal for the proxy.
    pub fn new() -> Self {
        Scene {
            identity: "kim".into(),
            friendly: None,
            attributes: None,
            role: None,
            others: Vec::new(),
            targets: 1,
            service: Service::Own,
            fault: None,
            stale: false,
            auth: (ACCOUNT.into(), TOKEN.into()),
            store: StoreKind::Sqlite,
            emu_tweaks: Vec::new(),
            proxy_tweaks: Vec::new(),
            rewriting: false,
        }
    }
    pub fn user(mut self, identity: &str) -> Self {
        self.identity = identity.into();
        self
    }
    /// The User exists up front with this friendly name.
    pub fn friendly(mut self, name: &str) -> Self {
        self.friendly = Some(name.into());
        self
    }
    /// The User exists up front with these attributes.
    pub fn attributes(mut self, json: &str) -> Self {
        self.attributes = Some(json.into());
        self
    }
    /// The User exists up front with this role.
    pub fn role(mut self, sid: &str) -> Self {
        self.role = Some(sid.into());
        self
    }
    /// A member of one more conversation (default attributes and role).
    pub fn member_of_another(mut self) -> Self {
        self.others.push((None, None));
        self
    }
    /// A member of one more conversation, with attributes of its own there.
    pub fn member_of_another_with(mut self, attributes: &str) -> Self {
        self.others.push((Some(attributes.into()), None));
        self
    }
    /// ... and a role of its own there.
    pub fn member_of_another_as(mut self, attributes: &str, role: &str) -> Self {
        self.others
            .push((Some(attributes.into()), Some(role.into())));
        self
    }
    /// A member of `n` more conversations, each with its own attributes
    /// (`{"seat":i,"note":"other i"}`) and [`MEMBER_ROLE`].
    pub fn member_of_others(mut self, n: usize) -> Self {
        for i in 0..n {
            let attributes = format!(r#"{{"seat":{i},"note":"other {i}"}}"#);
            self = self.member_of_another_as(&attributes, MEMBER_ROLE);
        }
        self
    }
    /// The creates go to `n` conversations (0: none is made).
    pub fn creating_into(mut self, n: usize) -> Self {
        self.targets = n;
        self
    }
    /// Made under `/v1` (the account's default service).
    pub fn in_default_service(mut self) -> Self {
        self.service = Service::Default;
        self
    }
    /// Made in `other`'s service, creating into `other`'s conversations.
    pub fn next_to(mut self, other: &Built) -> Self {
        self.service = Service::Beside(other.is.clone(), other.targets.clone());
        self
    }
    /// Made with this account's credentials (the emulator's own by default).
    pub fn of_account(mut self, sid: &str, token: &str) -> Self {
        self.auth = (sid.into(), token.into());
        self
    }
    /// The emulator's participant fault hits this identity in `mode` (when
    /// the scene starts the emulator), nothing made stale yet.
    pub fn faulty(mut self, mode: FaultMode) -> Self {
        self.fault = Some(mode);
        self
    }
    /// [`Scene::faulty`], and the identity is stale in the first
    /// conversation: the next create there meets the fault.
    pub fn armed(mut self, mode: FaultMode) -> Self {
        self.fault = Some(mode);
        self.stale = true;
        self
    }
    /// More emulator settings (when the scene starts the emulator).
    pub fn emulator_with(
        mut self,
        tweak: impl FnOnce(&mut EmulatorConfig) + Send + 'static,
    ) -> Self {
        self.emu_tweaks.push(Box::new(tweak));
        self
    }
    /// The proxy's journal (for [`Scene::start`] and [`Scene::stack`]).
    pub fn on(mut self, store: StoreKind) -> Self {
        self.store = store;
        self
    }
    /// More proxy settings (after short backoffs and the journal).
    pub fn proxy(mut self, tweak: impl FnOnce(&mut Config) + Send + 'static) -> Self {
        self.proxy_tweaks.push(Box::new(tweak));
        self
    }
    /// The proxy rewrites Twilio's links to its own address
    /// (`public_base_url`) and marks what it forwards (`Via`).
    pub fn rewriting_links(mut self) -> Self {
        self.rewriting = true;
        self
    }

    /// Start the emulator this scene is made in; make nothing yet.
    pub async fn emulator(&mut self) -> Emu {
        let (fault, identity) = (self.fault, self.identity.clone());
        let tweaks = std::mem::take(&mut self.emu_tweaks);
        start_emulator(move |c| {
            if let Some(mode) = fault {
                affected(mode, &[&identity])(c);
            }
            for t in tweaks {
                t(c);
            }
        })
        .await
    }

    /// The emulator and a proxy in front of it; nothing made.
    pub async fn stack(mut self) -> Stack {
        let emu = self.emulator().await;
        self.proxy_in_front_of(emu).await
    }

    /// Make the scene in an emulator of its own.
    pub async fn build(mut self) -> (Emu, Built) {
        let emu = self.emulator().await;
        let built = self.build_in(&emu).await;
        (emu, built)
    }

    /// Make the scene in an emulator of its own, then start a proxy in
    /// front of it.
    pub async fn start(mut self) -> (Stack, Built) {
        let emu = self.emulator().await;
        let built = self.make(&emu).await;
        (self.proxy_in_front_of(emu).await, built)
    }

    /// Make the scene in `emu`, whose fault settings are the caller's
    /// (when armed, its mode must be the one said).
    pub async fn build_in(self, emu: &Emu) -> Built {
        if let (Some(mode), true) = (self.fault, self.stale) {
            let fault = emu.control_json("/__emulator/fault").await;
            assert_eq!(
                fault["mode"],
                serde_json::json!(mode),
                "armed in another mode"
            );
        }
        self.make(emu).await
    }

    async fn make(&self, emu: &Emu) -> Built {
        let (is, existing) = match &self.service {
            Service::Own => (
                Some(
                    self.create(emu, "/v1/Services", &[("FriendlyName", "test")])
                        .await,
                ),
                None,
            ),
            Service::Default => (None, None),
            Service::Beside(is, targets) => (is.clone(), Some(targets.clone())),
        };
        let base = base(is.as_deref());
        let mut user_sid = None;
        if self.friendly.is_some() || self.attributes.is_some() || self.role.is_some() {
            let mut form = vec![("Identity", self.identity.as_str())];
            form.extend(self.friendly.as_deref().map(|v| ("FriendlyName", v)));
            form.extend(self.attributes.as_deref().map(|v| ("Attributes", v)));
            form.extend(self.role.as_deref().map(|v| ("RoleSid", v)));
            user_sid = Some(self.create(emu, &format!("{base}/Users"), &form).await);
        }
        let mut others = Vec::new();
        for (attributes, role) in &self.others {
            let ch = self.conversation(emu, &base).await;
            let mut form = vec![("Identity", self.identity.as_str())];
            form.extend(attributes.as_deref().map(|v| ("Attributes", v)));
            form.extend(role.as_deref().map(|v| ("RoleSid", v)));
            self.create(
                emu,
                &format!("{base}/Conversations/{ch}/Participants"),
                &form,
            )
            .await;
            others.push(Membership {
                ch,
                attributes: attributes.clone(),
                role: role.clone(),
            });
        }
        let targets = match existing {
            Some(targets) => targets,
            None => {
                let mut targets = Vec::new();
                for _ in 0..self.targets {
                    targets.push(self.conversation(emu, &base).await);
                }
                targets
            }
        };
        if self.stale {
            let ch = targets
                .first()
                .expect("armed, but no conversation to create into");
            let participants = format!("{base}/Conversations/{ch}/Participants");
            let mb = self
                .create(emu, &participants, &[("Identity", self.identity.as_str())])
                .await;
            let (s, v) = self
                .call(
                    emu,
                    reqwest::Method::DELETE,
                    &format!("{participants}/{mb}"),
                    &[],
                )
                .await;
            assert_eq!(s, 204, "{v}");
        }
        Built {
            is,
            base,
            identity: self.identity.clone(),
            user_sid,
            friendly: self.friendly.clone(),
            attributes: self.attributes.clone(),
            role: self.role.clone(),
            others,
            targets,
        }
    }

    async fn call(
        &self,
        emu: &Emu,
        method: reqwest::Method,
        path: &str,
        form: &[(&str, &str)],
    ) -> (u16, serde_json::Value) {
        emu.call_as((&self.auth.0, &self.auth.1), method, path, form)
            .await
    }

    /// POST, assert 201; the new resource's SID.
    async fn create(&self, emu: &Emu, path: &str, form: &[(&str, &str)]) -> String {
        let (s, v) = self.call(emu, reqwest::Method::POST, path, form).await;
        assert_eq!(s, 201, "POST {path}: {v}");
        v["sid"].as_str().unwrap().to_string()
    }

    async fn conversation(&self, emu: &Emu, base: &str) -> String {
        self.create(
            emu,
            &format!("{base}/Conversations"),
            &[("FriendlyName", "c")],
        )
        .await
    }

    async fn proxy_in_front_of(self, emu: Emu) -> Stack {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut config = fast_config(&emu.origin());
        config.store = store_url(self.store).await;
        if self.rewriting {
            config.public_base_url = twilio_repair_proxy::config::PublicBaseUrl::Fixed(format!(
                "http://{}",
                listener.local_addr().unwrap()
            ));
            config.add_forwarded_headers = true;
        }
        for t in self.proxy_tweaks {
            t(&mut config);
        }
        let proxy = start_proxy_on(listener, config).await;
        Stack {
            emu,
            proxy,
            http: reqwest::Client::new(),
        }
    }
}

impl Emu {
    /// Wait (an event, at most 3 s) until a repair has deleted a User: the
    /// moment a test lands something in the middle of a repair.
    pub async fn until_user_deleted(&self) {
        for _ in 0..300 {
            if self
                .requests()
                .await
                .iter()
                .any(|(m, p)| m == "DELETE" && p.contains("/Users/US"))
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("no User was deleted within 3 s");
    }

    /// GET a control-API document (`/__emulator/...`) as JSON.
    pub async fn control_json(&self, path: &str) -> serde_json::Value {
        self.http
            .get(self.url(path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

impl Built {
    /// `Some(IS...)`, or `None` on the default service (for [`Stack::create`]).
    pub fn is(&self) -> Option<&str> {
        self.is.as_deref()
    }
    /// The first conversation the creates go to (the armed one).
    pub fn target(&self) -> &str {
        &self.targets[0]
    }
    /// The conversation of the first other membership.
    pub fn other(&self) -> &str {
        &self.others[0].ch
    }
    pub fn participants(&self, ch: &str) -> String {
        format!("{}/Conversations/{ch}/Participants", self.base)
    }
    /// The identity's participant in `ch`, by identity.
    pub fn participant(&self, ch: &str) -> String {
        format!("{}/{}", self.participants(ch), self.identity)
    }
    /// The User, by identity.
    pub fn user_path(&self) -> String {
        format!("{}/Users/{}", self.base, self.identity)
    }
    /// The other memberships' conversations as a regex alternation.
    pub fn other_sids(&self) -> String {
        self.others
            .iter()
            .map(|m| m.ch.as_str())
            .collect::<Vec<_>>()
            .join("|")
    }
}

/// Do two JSON texts say the same (or, not JSON, read the same)?
pub fn same_json(a: &str, b: &str) -> bool {
    match (
        serde_json::from_str::<serde_json::Value>(a),
        serde_json::from_str::<serde_json::Value>(b),
    ) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}
