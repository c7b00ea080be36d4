//! The Kubernetes layouts under `deploy/kubernetes` are rendered with the
//! real `kubectl kustomize` (offline) and checked: every kustomization
//! under `deploy/` renders; the sidecar is a native, probed init container;
//! the shared layout has two replicas on PostgreSQL, a Service, a
//! PodDisruptionBudget, a NetworkPolicy and TLS from a Secret; no image is
//! `latest` or untagged; nothing runs as root; the admin token comes from a
//! Secret; the proxy's environment is a configuration it accepts. And injecting the sidecar Component into a plain Deployment
//! leaves its containers exactly as they were.

use std::path::{Path, PathBuf};

use serde_yaml::Value;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// kubectl, from `TRP_TEST_KUBECTL` (set by `scripts/test-setup.sh`) or the
/// PATH; a clear failure when there is none.
fn kubectl() -> String {
    let k = std::env::var("TRP_TEST_KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let found = std::process::Command::new(&k)
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "kubectl not found ({k}): these tests render deploy/kubernetes with `kubectl kustomize` \
         (offline, no cluster needed). Install kubectl (CI has it) or set TRP_TEST_KUBECTL"
    );
    k
}

/// `kubectl kustomize DIR`, as one value per document.
fn render(dir: &Path) -> Vec<Value> {
    let out = std::process::Command::new(kubectl())
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl kustomize {}:\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

use serde::Deserialize;

/// Every directory under `dir` holding a `kustomization.yaml`, with its kind.
fn kustomizations(dir: &Path, found: &mut Vec<(PathBuf, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            kustomizations(&path, found);
        } else if path.file_name().is_some_and(|n| n == "kustomization.yaml") {
            let v: Value = serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let kind = v["kind"].as_str().unwrap_or("Kustomization").to_string();
            found.push((path.parent().unwrap().to_path_buf(), kind));
        }
    }
}

fn kind(v: &Value) -> &str {
    v["kind"].as_str().unwrap_or("")
}

fn pod_spec(deployment: &Value) -> &Value {
    &deployment["spec"]["template"]["spec"]
}

fn list(v: &Value) -> &[Value] {
    v.as_sequence().map(Vec::as_slice).unwrap_or(&[])
}

fn named<'a>(containers: &'a Value, name: &str) -> Option<&'a Value> {
    list(containers).iter().find(|c| c["name"] == name)
}

fn env<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    list(&container["env"]).iter().find(|e| e["name"] == name)
}

/// The invariants every rendered Deployment holds: tagged images (never
/// `latest`), no root, and for the proxy's container the probes, a
/// read-only root and the admin token from a Secret.
fn check_deployment(where_: &str, d: &Value) {
    let pod = pod_spec(d);
    let pod_non_root = pod["securityContext"]["runAsNonRoot"] == true;
    let mut proxies = 0;
    for c in list(&pod["containers"])
        .iter()
        .chain(list(&pod["initContainers"]))
    {
        let name = c["name"].as_str().unwrap_or("?");
        let image = c["image"].as_str().unwrap_or("");
        let tag = image.rsplit_once('/').map_or(image, |(_, t)| t);
        assert!(
            (tag.contains(':') || tag.contains('@')) && !tag.ends_with(":latest"),
            "{where_}: container {name} has image `{image}` (pin a tag, never latest)"
        );
        assert!(
            pod_non_root || c["securityContext"]["runAsNonRoot"] == true,
            "{where_}: container {name} may run as root (runAsNonRoot unset)"
        );
        assert!(
            c["securityContext"]["runAsUser"] != 0,
            "{where_}: container {name} runs as uid 0"
        );
        if name != "twilio-repair-proxy" {
            continue;
        }
        proxies += 1;
        assert_eq!(
            c["securityContext"]["runAsNonRoot"], true,
            "{where_}: {c:?}"
        );
        assert_eq!(
            c["securityContext"]["readOnlyRootFilesystem"], true,
            "{where_}"
        );
        assert_eq!(
            c["securityContext"]["allowPrivilegeEscalation"], false,
            "{where_}"
        );
        for (probe, path) in [
            ("startupProbe", "/readyz"),
            ("readinessProbe", "/readyz"),
            ("livenessProbe", "/healthz"),
        ] {
            assert_eq!(c[probe]["httpGet"]["path"], path, "{where_}: {probe}");
            assert_eq!(c[probe]["httpGet"]["port"], "admin", "{where_}: {probe}");
        }
        assert!(
            list(&c["ports"])
                .iter()
                .any(|p| p["name"] == "admin" && p["containerPort"] == 9090),
            "{where_}: no admin port 9090"
        );
        let token = env(c, "TRP_ADMIN_TOKEN").expect("TRP_ADMIN_TOKEN is set");
        assert!(
            token["valueFrom"]["secretKeyRef"]["name"].is_string() && token["value"].is_null(),
            "{where_}: the admin token must come from a Secret: {token:?}"
        );
        assert!(
            c["resources"]["requests"]["cpu"].is_string()
                && c["resources"]["limits"]["memory"].is_string(),
            "{where_}: resources"
        );
        for m in list(&c["volumeMounts"]) {
            assert!(
                list(&pod["volumes"]).iter().any(|v| v["name"] == m["name"]),
                "{where_}: mount {:?} has no volume",
                m["name"]
            );
        }
    }
    assert!(proxies <= 1, "{where_}: {proxies} proxy containers");
}

/// The proxy container's `TRP_*` environment is a configuration
/// `check-config` accepts (a misspelt or unknown key is refused), with
/// placeholders for the values that come from Secrets.
fn check_env_is_a_valid_configuration(where_: &str, d: &Value) {
    let pod = pod_spec(d);
    let Some(proxy) = named(&pod["containers"], "twilio-repair-proxy")
        .or_else(|| named(&pod["initContainers"], "twilio-repair-proxy"))
    else {
        return;
    };
    let mut cmd = std::process::Command::new(crate::common::bin());
    cmd.arg("check-config").env_clear();
    for e in list(&proxy["env"]) {
        let name = e["name"].as_str().unwrap();
        let value = match (name, e["value"].as_str()) {
            (_, Some(v)) => v.to_string(),
            ("TRP_STORE", None) => "postgres://trp@db.example:5432/trp".into(),
            ("TRP_ADMIN_TOKEN", None) => "t".repeat(64),
            // The repair credential: not configuration keys.
            (n, None) if n.starts_with("TRP_REPAIR_") => continue,
            (n, None) => panic!("{where_}: {n} from a Secret has no placeholder here"),
        };
        cmd.env(name, value);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{where_}: the proxy refuses its environment: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The proxy as a native sidecar: an init container that restarts always
/// and listens on loopback only.
fn check_native_sidecar(where_: &str, d: &Value) {
    let pod = pod_spec(d);
    let proxy = named(&pod["initContainers"], "twilio-repair-proxy")
        .unwrap_or_else(|| panic!("{where_}: no twilio-repair-proxy init container"));
    assert_eq!(
        proxy["restartPolicy"], "Always",
        "{where_}: not a native sidecar"
    );
    assert_eq!(
        env(proxy, "TRP_LISTEN").map(|e| &e["value"]),
        Some(&Value::from("127.0.0.1:8080")),
        "{where_}: the sidecar listens on loopback only"
    );
    assert!(named(&pod["containers"], "twilio-repair-proxy").is_none());
}

fn check_shared(where_: &str, docs: &[Value]) {
    let of = |k: &str| docs.iter().filter(|d| kind(d) == k).collect::<Vec<_>>();
    let [d] = of("Deployment")[..] else {
        panic!("{where_}: one Deployment expected")
    };
    assert_eq!(d["spec"]["replicas"], 2, "{where_}");
    let proxy = named(&pod_spec(d)["containers"], "twilio-repair-proxy").expect("proxy container");
    assert!(
        proxy["restartPolicy"].is_null(),
        "{where_}: a main container"
    );
    let store = env(proxy, "TRP_STORE").expect("TRP_STORE");
    assert!(
        store["valueFrom"]["secretKeyRef"]["name"].is_string(),
        "{where_}: store from a Secret"
    );
    let labels = &d["spec"]["template"]["metadata"]["labels"];
    for k in ["PodDisruptionBudget", "NetworkPolicy", "Service"] {
        let found = of(k);
        assert_eq!(found.len(), 1, "{where_}: one {k} expected");
        let selector = match k {
            "Service" => &found[0]["spec"]["selector"],
            "NetworkPolicy" => &found[0]["spec"]["podSelector"]["matchLabels"],
            _ => &found[0]["spec"]["selector"]["matchLabels"],
        };
        for (key, value) in selector.as_mapping().expect("a selector") {
            assert_eq!(
                &labels[key], value,
                "{where_}: the {k} does not select the proxy's pods"
            );
        }
    }
    let np = &of("NetworkPolicy")[0]["spec"];
    let types = list(&np["policyTypes"]);
    assert!(types.contains(&Value::from("Ingress")) && types.contains(&Value::from("Egress")));
    let egress_ports: Vec<&Value> = list(&np["egress"])
        .iter()
        .flat_map(|r| list(&r["ports"]))
        .map(|p| &p["port"])
        .collect();
    for port in [53, 5432, 443] {
        assert!(
            egress_ports.contains(&&Value::from(port)),
            "{where_}: no egress to port {port}"
        );
    }
    // TLS from a Secret, mounted where the two settings point.
    let cert = env(proxy, "TRP_TLS_CERT_FILE").expect("TRP_TLS_CERT_FILE")["value"]
        .as_str()
        .unwrap();
    assert!(env(proxy, "TRP_TLS_KEY_FILE").is_some(), "{where_}");
    let mount = list(&proxy["volumeMounts"])
        .iter()
        .find(|m| cert.starts_with(m["mountPath"].as_str().unwrap_or("\0")))
        .unwrap_or_else(|| panic!("{where_}: {cert} is on no mount"));
    let volume = list(&pod_spec(d)["volumes"])
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    assert!(
        volume["secret"]["secretName"].is_string(),
        "{where_}: TLS not from a Secret"
    );
}

#[test]
fn every_kustomization_renders_and_its_invariants_hold() {
    let mut found = Vec::new();
    kustomizations(&repo("deploy"), &mut found);
    found.sort();
    let mut rendered = Vec::new();
    for (dir, k) in &found {
        if k == "Component" {
            continue; // rendered through the kustomizations that use it
        }
        let rel = dir.strip_prefix(repo("")).unwrap().display().to_string();
        let docs = render(dir);
        for d in docs.iter().filter(|d| kind(d) == "Deployment") {
            check_deployment(&rel, d);
            check_env_is_a_valid_configuration(&rel, d);
        }
        rendered.push((rel, docs));
    }
    let get = |rel: &str| {
        &rendered
            .iter()
            .find(|(r, _)| r == rel)
            .unwrap_or_else(|| panic!("{rel} was not rendered: {found:?}"))
            .1
    };
    let sidecar = get("deploy/kubernetes/examples/sidecar");
    let [d] = &sidecar
        .iter()
        .filter(|d| kind(d) == "Deployment")
        .collect::<Vec<_>>()[..]
    else {
        panic!("examples/sidecar: one Deployment expected")
    };
    check_native_sidecar("examples/sidecar", d);
    check_shared("shared", get("deploy/kubernetes/shared"));
    let example = get("deploy/kubernetes/examples/shared");
    check_shared("examples/shared", example);
    assert!(
        example.iter().any(|d| kind(d) == "PodMonitor"),
        "examples/shared includes the optional PodMonitor"
    );
    assert!(
        example
            .iter()
            .all(|d| d["metadata"]["namespace"] == "payments"),
        "examples/shared: everything in its namespace"
    );
    // The one copy of the container spec never reaches a cluster.
    for (rel, docs) in &rendered {
        assert!(
            docs.iter().all(|d| kind(d) != "PodTemplate"),
            "{rel}: the container template (local-config) leaked into the output"
        );
    }
}

/// `to` as seen from `from` (kustomize refuses absolute component paths).
fn relative(from: &Path, to: &Path) -> PathBuf {
    let (from, to) = (from.canonicalize().unwrap(), to.canonicalize().unwrap());
    let common = from
        .components()
        .zip(to.components())
        .take_while(|(a, b)| a == b)
        .count();
    let mut rel = PathBuf::new();
    for _ in from.components().skip(common) {
        rel.push("..");
    }
    for c in to.components().skip(common) {
        rel.push(c);
    }
    rel
}

/// A plain Deployment with an init container and a volume of its own, as a
/// team might already have it.
const PLAIN: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: plain
spec:
  selector:
    matchLabels: { app: plain }
  template:
    metadata:
      labels: { app: plain }
    spec:
      securityContext: { runAsNonRoot: true }
      initContainers:
        - name: migrate
          image: registry.example.com/migrate:2.0.0
          args: ["up"]
      containers:
        - name: app
          image: registry.example.com/plain:1.2.3
          env:
            - { name: TWILIO_BASE_URL, value: "http://127.0.0.1:8080" }
          volumeMounts:
            - { name: cache, mountPath: /cache }
      volumes:
        - name: cache
          emptyDir: {}
"#;

#[test]
fn injecting_the_sidecar_component_leaves_the_app_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain");
    let injected = dir.path().join("injected");
    for d in [&plain, &injected] {
        std::fs::create_dir(d).unwrap();
        std::fs::write(d.join("deployment.yaml"), PLAIN).unwrap();
    }
    std::fs::write(
        plain.join("kustomization.yaml"),
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [deployment.yaml]\n",
    )
    .unwrap();
    std::fs::write(
        injected.join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [deployment.yaml]\ncomponents: [{}]\n",
            relative(&injected, &repo("deploy/kubernetes/components/sidecar")).display()
        ),
    )
    .unwrap();
    let before = render(&plain);
    let after = render(&injected);
    assert_eq!(
        after.len(),
        1,
        "the Component adds no object of its own: {after:?}"
    );
    let (b, a) = (pod_spec(&before[0]), pod_spec(&after[0]));
    assert_eq!(
        a["containers"], b["containers"],
        "the app's containers changed"
    );
    assert_eq!(a["securityContext"], b["securityContext"]);
    let inits = list(&a["initContainers"]);
    assert_eq!(inits.len(), 2, "{inits:?}");
    // The sidecar comes first: it is started (and ready) before the app's
    // own init containers, which may call Twilio through it too.
    assert_eq!(inits[0]["name"], "twilio-repair-proxy");
    assert_eq!(
        inits[1],
        list(&b["initContainers"])[0],
        "the app's init container changed"
    );
    check_native_sidecar("injected", &after[0]);
    check_deployment("injected", &after[0]);
    let cache = |p: &Value| {
        list(&p["volumes"])
            .iter()
            .find(|v| v["name"] == "cache")
            .cloned()
    };
    assert_eq!(cache(a), cache(b), "the app's volume changed");
    assert_eq!(list(&a["volumes"]).len(), list(&b["volumes"]).len() + 2);
    // Everything else of the Deployment is as it was.
    let strip = |v: &Value| {
        let mut v = v.clone();
        for k in ["initContainers", "volumes"] {
            v["spec"]["template"]["spec"]
                .as_mapping_mut()
                .unwrap()
                .remove(k);
        }
        v
    };
    assert_eq!(strip(&after[0]), strip(&before[0]));
}
