//! `deploy/` matches the binaries: every Kubernetes manifest parses, kustomizations name files that
//! exist, each ReskFlow container's environment uses only variables its binary reads and passes the
//! binary's own validation (values from the ConfigMap and Secret resolved), container ports are the
//! ports those settings listen on, probes hit paths the binaries serve on the right port, and the
//! Dockerfile builds a target for every image the manifests use, exposing the same ports.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use figment::providers::Serialized;
use figment::Figment;
use reskflow_runtime::Settings;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

/// Every manifest of a kustomization directory, checking its resource list.
fn kustomization(dir: &Path) -> Vec<Value> {
    let k = yaml_docs(&dir.join("kustomization.yaml")).remove(0);
    let mut docs = Vec::new();
    for resource in k["resources"].as_array().expect("resources") {
        let file = dir.join(resource.as_str().expect("a file name"));
        assert!(file.exists(), "{} names {}, which does not exist", dir.display(), file.display());
        docs.extend(yaml_docs(&file));
    }
    docs
}

/// Builds a binary's config as it would from this environment and runs its validation.
fn validate<S: Settings + DeserializeOwned>(binary: &str, env: &HashMap<String, String>) -> S {
    for name in env.keys() {
        assert!(S::ENV_VARS.contains(&name.as_str()), "{binary}: {name} is not a variable {binary} reads");
    }
    let mut figment = Figment::from(Serialized::defaults(S::default()));
    for (name, value) in env {
        let parsed: figment::value::Value = value.parse().unwrap_or_else(|_| value.clone().into());
        figment = figment.merge((name.to_ascii_lowercase(), parsed));
    }
    let config: S =
        figment.extract().unwrap_or_else(|e| panic!("{binary}: the manifest's environment does not load: {e}"));
    if let Err(problems) = config.validate() {
        panic!("{binary}: the manifest's environment is refused: {problems:?}");
    }
    config
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).unwrap_or_else(|| panic!("'{addr}' has no port"))
}

struct Container<'a> {
    doc: &'a Value,
    spec: &'a Value,
}

fn containers(docs: &[Value]) -> Vec<Container<'_>> {
    docs.iter()
        .filter(|d| matches!(d["kind"].as_str(), Some("Deployment" | "StatefulSet")))
        .flat_map(|d| {
            d["spec"]["template"]["spec"]["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |c| Container { doc: d, spec: c })
        })
        .collect()
}

/// The container's environment with `valueFrom` resolved from the ConfigMaps and Secrets.
fn environment(c: &Container<'_>, all: &[Value]) -> HashMap<String, String> {
    let lookup = |kind: &str, name: &str, key: &str| -> String {
        let doc = all
            .iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{kind} {name} is not in the manifests"));
        let field = if kind == "Secret" { "stringData" } else { "data" };
        doc[field][key].as_str().unwrap_or_else(|| panic!("{kind} {name} has no {key}")).to_string()
    };
    let mut env = HashMap::new();
    for e in c.spec["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().expect("env name").to_string();
        let value = if let Some(v) = e["value"].as_str() {
            v.to_string()
        } else if let Some(r) = e["valueFrom"]["configMapKeyRef"].as_object() {
            lookup("ConfigMap", r["name"].as_str().unwrap_or(""), r["key"].as_str().unwrap_or(""))
        } else if let Some(r) = e["valueFrom"]["secretKeyRef"].as_object() {
            lookup("Secret", r["name"].as_str().unwrap_or(""), r["key"].as_str().unwrap_or(""))
        } else if let Some(path) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            match path {
                "status.podIP" => "10.1.2.3".into(),
                _ => "pod-abc".into(),
            }
        } else {
            panic!("env {name}: no value");
        };
        env.insert(name, value);
    }
    env
}

/// `name -> containerPort`.
fn ports(c: &Container<'_>) -> HashMap<String, u16> {
    c.spec["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| (p["name"].as_str().unwrap_or("").to_string(), p["containerPort"].as_u64().unwrap_or(0) as u16))
        .collect()
}

/// A probe's HTTP path and port number (a named port resolved).
fn http_probe(c: &Container<'_>, which: &str) -> Option<(String, u16)> {
    let probe = &c.spec[which]["httpGet"];
    let path = probe["path"].as_str()?.to_string();
    let port = match &probe["port"] {
        Value::String(name) => *ports(c).get(name).unwrap_or_else(|| panic!("{which}: no port named {name}")),
        Value::Number(n) => n.as_u64().unwrap_or(0) as u16,
        _ => panic!("{which}: no port"),
    };
    Some((path, port))
}

#[test]
fn manifests_and_images_match_what_the_binaries_read_listen_on_and_serve() {
    let deploy = root().join("deploy");
    let base = kustomization(&deploy.join("k8s/base"));
    let example = kustomization(&deploy.join("k8s/example"));
    let all: Vec<Value> = base.iter().chain(&example).cloned().collect();
    let dockerfile = std::fs::read_to_string(deploy.join("docker/Dockerfile")).expect("Dockerfile");

    let mut seen = Vec::new();
    for c in containers(&all) {
        let image = c.spec["image"].as_str().expect("image");
        let Some(binary) = image.strip_prefix("reskflow/") else { continue };
        let binary = binary.split(':').next().unwrap_or(binary);
        seen.push(binary.to_string());
        let name = c.doc["metadata"]["name"].as_str().unwrap_or("");
        let env = environment(&c, &all);
        let ports = ports(&c);
        let declared: Vec<u16> = ports.values().copied().collect();
        // What the binary listens on, and which of those serve the probe paths.
        let (listens, probe_paths): (Vec<u16>, Vec<(&str, u16)>) = match binary {
            "control-plane" => {
                let config: reskflow_control_plane::config::Config = validate(binary, &env);
                let (grpc, metrics) = (port_of(&config.grpc_addr), port_of(&config.metrics_addr));
                assert!(!config.grpc_addr.starts_with("127."), "{name}: gRPC must listen beyond the pod");
                (vec![grpc, metrics], vec![("/health", metrics), ("/metrics", metrics)])
            }
            "gateway" => {
                let config: reskflow_gateway::config::Config = validate(binary, &env);
                assert_eq!(config.bind_addr, "0.0.0.0", "{name}: the gateway must listen beyond the pod");
                (vec![config.port], vec![("/health", config.port), ("/ready", config.port), ("/metrics", config.port)])
            }
            "sidecar" => {
                let config: reskflow_sidecar::config::Config = validate(binary, &env);
                let admin = port_of(&config.admin_addr);
                assert!(config.outbound_addr.starts_with("127.0.0.1:"), "{name}: the outbound port stays in the pod");
                (vec![admin], vec![("/health", admin), ("/ready", admin), ("/metrics", admin)])
            }
            other => panic!("{name}: no ReskFlow binary named {other}"),
        };
        for port in &declared {
            assert!(
                listens.contains(port),
                "{name}: containerPort {port} is not one {binary} listens on ({listens:?})"
            );
        }
        for port in &listens {
            assert!(declared.contains(port), "{name}: {binary} listens on {port} but the manifest does not declare it");
        }
        for which in ["readinessProbe", "livenessProbe"] {
            if let Some((path, port)) = http_probe(&c, which) {
                assert!(
                    probe_paths.contains(&(path.as_str(), port)),
                    "{name}: {which} GET {path} on {port}, which {binary} does not serve there ({probe_paths:?})"
                );
            } else if binary == "control-plane" && which == "readinessProbe" {
                assert_eq!(
                    c.spec[which]["grpc"]["port"].as_u64(),
                    Some(u64::from(listens[0])),
                    "{name}: gRPC health probe"
                );
            } else {
                panic!("{name}: {which} missing");
            }
        }
        // The image exists in the Dockerfile, builds the binary, exposes what the manifest uses.
        let stage = format!("AS {binary}\n");
        let at = dockerfile.find(&stage).unwrap_or_else(|| panic!("Dockerfile has no target {binary}"));
        let body = &dockerfile[at..];
        let body = &body[..body[stage.len()..].find("\nFROM ").map_or(body.len(), |i| i + stage.len())];
        assert!(dockerfile.contains(&format!("--bin {binary}")), "the Dockerfile does not build {binary}");
        for port in &listens {
            let exposed =
                body.lines().any(|l| l.starts_with("EXPOSE") && l.split_whitespace().any(|p| p == port.to_string()));
            assert!(exposed, "Dockerfile target {binary} does not EXPOSE {port}");
        }
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen, ["control-plane", "gateway", "sidecar"], "every binary is deployed");

    // The services point at the ports the pods declare.
    for svc in all.iter().filter(|d| d["kind"] == "Service") {
        let selector = &svc["spec"]["selector"]["app"];
        let pods: Vec<Container<'_>> = containers(&all)
            .into_iter()
            .filter(|c| &c.doc["spec"]["template"]["metadata"]["labels"]["app"] == selector)
            .collect();
        assert!(!pods.is_empty(), "service {} selects no pod", svc["metadata"]["name"]);
        for p in svc["spec"]["ports"].as_array().into_iter().flatten() {
            let target = &p["targetPort"];
            let found = pods.iter().any(|c| match target {
                Value::String(name) => ports(c).contains_key(name),
                Value::Number(n) => ports(c).values().any(|v| u64::from(*v) == n.as_u64().unwrap_or(0)),
                _ => false,
            });
            assert!(found, "service {}: targetPort {target} is not a port of its pods", svc["metadata"]["name"]);
        }
    }
}
