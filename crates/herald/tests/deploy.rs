//! The Kubernetes manifests against the code: what the schemas (validated offline in .ci/run with
//! kubernetes-validate) cannot know — settings the binary reads, subcommands, the drain time and
//! queue names.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use yaml_rust2::{Yaml, YamlLoader};

fn base() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kubernetes/base")
}

fn documents(file: &str) -> Vec<Yaml> {
    let text = std::fs::read_to_string(base().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    YamlLoader::load_from_str(&text).expect("valid YAML")
}

fn one(file: &str) -> Yaml {
    documents(file).remove(0)
}

fn config() -> BTreeMap<String, String> {
    one("configmap.yaml")["data"]
        .as_hash()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.as_str().unwrap().to_string(), v.as_str().map(str::to_string).unwrap_or_default()))
        .collect()
}

#[test]
fn every_resource_the_kustomization_lists_exists() {
    for resource in one("kustomization.yaml")["resources"].as_vec().unwrap() {
        let file = resource.as_str().unwrap();
        assert!(base().join(file).exists(), "{file} is listed but missing");
    }
}

#[test]
fn configuration_names_only_settings_the_binary_reads() {
    let known: Vec<String> = herald::cli::environment_variables().into_iter().map(|(name, _)| name).collect();
    let secret = one("secret.yaml");
    let secret_keys: Vec<String> =
        secret["stringData"].as_hash().unwrap().keys().map(|k| k.as_str().unwrap().to_string()).collect();
    for name in config().keys().chain(secret_keys.iter()).filter(|name| name.starts_with("HERALD_")) {
        assert!(known.contains(name), "{name} is set in deploy/ but not read by herald");
    }
}

#[test]
fn deployments_run_real_subcommands_with_the_right_probes_and_drain_time() {
    let subcommands: Vec<String> = <herald::cli::Cli as clap::CommandFactory>::command()
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .collect();
    let api = one("api-deployment.yaml");
    let container = &api["spec"]["template"]["spec"]["containers"][0];
    assert!(subcommands.iter().any(|s| Some(s.as_str()) == container["args"][0].as_str()));
    assert_eq!(container["readinessProbe"]["httpGet"]["path"].as_str(), Some("/readyz"));
    assert_eq!(container["livenessProbe"]["httpGet"]["path"].as_str(), Some("/healthz"));
    assert_eq!(config()["HERALD_HTTP_ADDR"], "0.0.0.0:8080");
    assert_eq!(container["ports"][0]["containerPort"].as_i64(), Some(8080));

    let worker = one("worker-deployment.yaml");
    assert_eq!(worker["spec"]["template"]["spec"]["containers"][0]["args"][0].as_str(), Some("worker"));
    let termination = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"].as_i64().unwrap();
    let drain: i64 = config()["HERALD_WORKER_GRACE_SECONDS"].parse().unwrap();
    assert!(
        termination >= drain + 10,
        "the pod is killed ({termination} s) before the worker's drain ({drain} s) ends"
    );
}

#[test]
fn workers_scale_on_the_queues_the_topology_declares() {
    let prefix = config()["HERALD_AMQP_PREFIX"].clone();
    let scaled =
        documents("worker-scaledobject.yaml").into_iter().find(|d| d["kind"].as_str() == Some("ScaledObject")).unwrap();
    assert_eq!(scaled["spec"]["scaleTargetRef"]["name"].as_str(), Some("herald-worker"));
    let triggers = scaled["spec"]["triggers"].as_vec().unwrap();
    let queues: Vec<&str> = triggers.iter().map(|t| t["metadata"]["queueName"].as_str().unwrap()).collect();
    // Every shard queue of each channel (`herald.sms`, `herald.sms.1`, ...), summed.
    let pattern = |channel: &str| format!("^{}\\.{channel}(\\.[0-9]+)?$", prefix.replace('.', "\\."));
    assert_eq!(queues, [pattern("email"), pattern("sms"), pattern("push")]);
    for trigger in triggers {
        let metadata = &trigger["metadata"];
        assert_eq!(metadata["protocol"].as_str(), Some("http"), "queue name patterns need the management API");
        assert_eq!((metadata["useRegex"].as_str(), metadata["operation"].as_str()), (Some("true"), Some("sum")));
    }
    let topology = herald_broker::Topology { prefix: prefix.clone(), ..Default::default() };
    assert_eq!(topology.shard_queue(herald_core::Channel::Sms, 3), format!("{prefix}.sms.3"), "the pattern's shape");
    assert_eq!(one("rabbitmq-cluster.yaml")["spec"]["replicas"].as_i64(), Some(3));
}

#[test]
fn pods_expose_metrics_where_prometheus_looks() {
    let port_of = |address: &str| address.rsplit(':').next().unwrap().parse::<i64>().unwrap();
    // The API serves /metrics on its HTTP port; the worker on HERALD_METRICS_ADDR.
    let cases = [
        ("api-deployment.yaml", "http", config()["HERALD_HTTP_ADDR"].clone()),
        ("worker-deployment.yaml", "metrics", config().get("HERALD_METRICS_ADDR").cloned().unwrap_or_default()),
    ];
    for (file, port_name, address) in cases {
        assert!(address.starts_with("0.0.0.0:"), "{file}: listen on every interface, not {address:?}");
        let template = &one(file)["spec"]["template"];
        let container = &template["spec"]["containers"][0];
        let container_port = container["ports"]
            .as_vec()
            .unwrap_or_else(|| panic!("{file} declares no ports"))
            .iter()
            .find(|p| p["name"].as_str() == Some(port_name))
            .unwrap_or_else(|| panic!("{file} has no port named {port_name}"))["containerPort"]
            .as_i64()
            .unwrap();
        assert_eq!(container_port, port_of(&address), "{file}: port {port_name} is not the one herald listens on");
        let annotations = &template["metadata"]["annotations"];
        assert_eq!(annotations["prometheus.io/scrape"].as_str(), Some("true"), "{file}");
        assert_eq!(annotations["prometheus.io/port"].as_str(), Some(container_port.to_string().as_str()), "{file}");
        assert_eq!(annotations["prometheus.io/path"].as_str(), Some("/metrics"), "{file}");
    }
}
