//! `docker-compose.yml` cannot be run here (no Docker engine), so it is checked against the
//! code: services, images, commands, ports, and every `HERALD_*` variable it sets.

use std::collections::BTreeMap;
use std::path::Path;

use yaml_rust2::{Yaml, YamlLoader};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().parent().unwrap()
}

fn compose() -> Yaml {
    let text = std::fs::read_to_string(root().join("docker-compose.yml")).expect("docker-compose.yml at the root");
    YamlLoader::load_from_str(&text).expect("valid YAML").remove(0)
}

fn services(compose: &Yaml) -> BTreeMap<String, Yaml> {
    compose["services"]
        .as_hash()
        .expect("a services map")
        .iter()
        .map(|(k, v)| (k.as_str().unwrap().to_string(), v.clone()))
        .collect()
}

/// A service's environment, with YAML merge keys (`<<: *anchor`) resolved.
fn environment(service: &Yaml) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some(map) = service["environment"].as_hash() {
        for (key, value) in map {
            let value_text = |v: &Yaml| {
                v.as_str().map(str::to_string).or_else(|| v.as_i64().map(|n| n.to_string())).unwrap_or_default()
            };
            if key.as_str() == Some("<<") {
                for (k, v) in value.as_hash().expect("merge of a map") {
                    out.insert(k.as_str().unwrap().to_string(), value_text(v));
                }
            } else {
                out.entry(key.as_str().unwrap().to_string()).or_insert_with(|| value_text(value));
            }
        }
    }
    out
}

fn herald_services(services: &BTreeMap<String, Yaml>) -> Vec<(&String, &Yaml)> {
    services.iter().filter(|(_, s)| s["image"].as_str() == Some("herald:local")).collect()
}

#[test]
fn the_stack_has_every_service_with_an_image_or_a_build() {
    let compose = compose();
    let services = services(&compose);
    let names: Vec<&str> = services.keys().map(String::as_str).collect();
    assert_eq!(names, ["api", "migrate", "moto", "postgres", "rabbitmq", "worker"]);
    for (name, service) in &services {
        assert!(service["image"].as_str().is_some() || !service["build"].is_badvalue(), "{name} has no image or build");
        if let Some(dependencies) = service["depends_on"].as_hash() {
            for dependency in dependencies.keys() {
                assert!(services.contains_key(dependency.as_str().unwrap()), "{name} depends on an unknown service");
            }
        }
    }
    let dockerfile = services["migrate"]["build"]["dockerfile"].as_str().unwrap();
    assert!(root().join(dockerfile).exists(), "{dockerfile} is missing");
}

#[test]
fn herald_services_run_real_subcommands_and_set_only_known_variables() {
    let compose = compose();
    let services = services(&compose);
    let known: Vec<String> = herald::cli::environment_variables().into_iter().map(|(name, _)| name).collect();
    let subcommands: Vec<String> = <herald::cli::Cli as clap::CommandFactory>::command()
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .collect();
    let herald_services = herald_services(&services);
    assert_eq!(herald_services.len(), 3);
    for (name, service) in herald_services {
        let command = service["command"][0].as_str().expect("a command");
        assert!(subcommands.iter().any(|s| s == command), "{name} runs unknown subcommand {command}");
        for variable in environment(service).keys().filter(|v| v.starts_with("HERALD_")) {
            assert!(known.contains(variable), "{name} sets {variable}, which the code does not read");
        }
    }
}

#[test]
fn urls_and_ports_point_at_the_services_that_serve_them() {
    let compose = compose();
    let services = services(&compose);
    let api = environment(&services["api"]);
    assert_eq!(api["HERALD_DATABASE_URL"], "postgres://herald:herald@postgres:5432/herald");
    let postgres = environment(&services["postgres"]);
    assert_eq!(
        (postgres["POSTGRES_USER"].as_str(), postgres["POSTGRES_PASSWORD"].as_str(), postgres["POSTGRES_DB"].as_str()),
        ("herald", "herald", "herald")
    );
    assert!(api["HERALD_AMQP_URL"].starts_with("amqp://guest:guest@rabbitmq:5672/"));
    assert!(api["AWS_ENDPOINT_URL"].starts_with("http://moto:5000"));
    assert!(services["moto"]["ports"].as_vec().unwrap().iter().any(|p| p.as_str().unwrap().ends_with(":5000")));

    let listen_port = api["HERALD_HTTP_ADDR"].rsplit(':').next().unwrap().to_string();
    let published: Vec<&str> = services["api"]["ports"].as_vec().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    assert!(
        published.iter().any(|p| p.ends_with(&format!(":{listen_port}"))),
        "api publishes {published:?}, listens on {listen_port}"
    );
    assert!(api["HERALD_BOOTSTRAP_API_KEY"].starts_with("hk_"));
}

#[test]
fn long_running_services_have_health_checks_and_start_in_order() {
    let compose = compose();
    let services = services(&compose);
    for name in ["postgres", "rabbitmq", "moto", "api"] {
        assert!(!services[name]["healthcheck"]["test"].is_badvalue(), "{name} has no health check");
    }
    let probe: Vec<&str> =
        services["api"]["healthcheck"]["test"].as_vec().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(&probe[..3], ["CMD", "herald", "probe"], "the image has no curl: the api probes itself");
    let subcommands: Vec<String> = <herald::cli::Cli as clap::CommandFactory>::command()
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .collect();
    assert!(subcommands.iter().any(|s| s == "probe"));
    assert_eq!(services["worker"]["depends_on"]["api"]["condition"].as_str(), Some("service_healthy"));
    assert_eq!(services["api"]["depends_on"]["migrate"]["condition"].as_str(), Some("service_completed_successfully"));
}
