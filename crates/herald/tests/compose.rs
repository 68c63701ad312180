//! `docker-compose.yml` cannot be run here (no Docker engine), so it is checked against the
//! code: services, images, commands, ports, and every `HERALD_*` variable it sets; and the
//! observability profile against the files it mounts (Prometheus scrape targets, Grafana
//! provisioning). tests/observability.rs checks the alert rules and the dashboard.

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
    assert_eq!(
        names,
        ["api", "grafana", "jaeger", "migrate", "moto", "postgres", "prometheus", "rabbitmq", "tests", "worker"]
    );
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
fn no_published_port_clashes_with_a_postgresql_or_rabbitmq_installed_on_the_host() {
    let compose = compose();
    let mut host_ports = Vec::new();
    for (name, service) in services(&compose) {
        for port in service["ports"].as_vec().into_iter().flatten() {
            let port = port.as_str().unwrap();
            let host = port.rsplit_once(':').map_or(port, |(host, _)| host);
            let host = host.rsplit(':').next().unwrap().to_string();
            host_ports.push((name.clone(), host));
        }
    }
    for (name, host) in &host_ports {
        // PostgreSQL, RabbitMQ (AMQP, management, Erlang distribution, epmd).
        assert!(
            !["5432", "5672", "15672", "25672", "4369"].contains(&host.as_str()),
            "{name} publishes host port {host}"
        );
    }
    let published = |service: &str| host_ports.iter().filter(|(n, _)| n == service).count();
    assert_eq!((published("postgres"), published("rabbitmq")), (1, 2), "{host_ports:?}");
}

#[test]
fn the_test_profile_runs_the_bootstrap_then_readmes_test_command() {
    let compose = compose();
    let services = services(&compose);
    let tests = &services["tests"];
    assert_eq!(tests["profiles"].as_vec().unwrap()[0].as_str(), Some("test"), "only with --profile test");
    let command: Vec<&str> = tests["command"].as_vec().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    let script = command.last().unwrap();
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let test_command = "cargo test --workspace --locked";
    assert!(readme.contains(&format!("{test_command}   # the whole suite")), "README's test command changed");
    assert_eq!(*script, format!("scripts/bootstrap && {test_command}"));
    assert!(root().join("scripts/bootstrap").exists());
    let ci = std::fs::read_to_string(root().join(".ci/run")).unwrap();
    assert!(ci.contains("scripts/bootstrap --ci") && ci.trim_end().ends_with(test_command), "CI takes the same path");
    let environment = environment(tests);
    assert!(environment["HERALD_MOTO_SERVER"].starts_with(&environment["HERALD_VENV"]), "{environment:?}");
    // The repository is mounted, so the bootstrap and the sources are the checkout's own.
    let volumes: Vec<&str> = tests["volumes"].as_vec().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(volumes.contains(&".:/herald") && tests["working_dir"].as_str() == Some("/herald"), "{volumes:?}");
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

const OBSERVABILITY: [&str; 3] = ["grafana", "jaeger", "prometheus"];

/// Traces are off unless the user names a collector; the documented one is the profile's Jaeger.
#[test]
fn traces_go_to_jaeger_only_when_asked() {
    let text = std::fs::read_to_string(root().join("docker-compose.yml")).unwrap();
    assert!(text.contains("HERALD_OTLP_ENDPOINT: ${HERALD_OTLP_ENDPOINT:-}"), "an empty default keeps traces off");
    let compose = compose();
    let services = services(&compose);
    for (name, service) in herald_services(&services) {
        assert!(environment(service).contains_key("HERALD_OTLP_ENDPOINT"), "{name} cannot be given a collector");
    }
    let jaeger = &services["jaeger"];
    let published: Vec<&str> = jaeger["ports"].as_vec().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    assert_eq!(published, ["16686:16686"], "the Jaeger UI on the host; OTLP stays inside the network");
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    assert!(readme.contains("HERALD_OTLP_ENDPOINT=http://jaeger:4318 docker compose --profile observability up"));
}

fn yaml_file(path: &str) -> Yaml {
    let text = std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}")).remove(0)
}

/// The port of a `host:port` listen address or URL authority.
fn port(address: &str) -> &str {
    address.trim_end_matches('/').rsplit(':').next().unwrap()
}

/// `10s`, `1m` as seconds.
fn seconds(duration: &str) -> u64 {
    let (number, unit) = duration.split_at(duration.len() - 1);
    let number: u64 = number.parse().unwrap_or_else(|_| panic!("duration {duration}"));
    match unit {
        "s" => number,
        "m" => number * 60,
        _ => panic!("duration {duration}: unexpected unit"),
    }
}

/// A service's bind mounts from the repository: (source relative to the root, target).
fn binds(service: &Yaml) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for volume in service["volumes"].as_vec().map(Vec::as_slice).unwrap_or_default() {
        let (source, target) = match volume.as_str() {
            Some(short) => {
                let parts: Vec<&str> = short.split(':').collect();
                (parts[0].to_string(), parts.get(1).copied().unwrap_or_default().to_string())
            }
            None => (
                volume["source"].as_str().unwrap_or_default().to_string(),
                volume["target"].as_str().unwrap_or_default().to_string(),
            ),
        };
        if source.starts_with('.') {
            out.push((source.trim_start_matches("./").to_string(), target));
        }
    }
    out
}

/// Where a service mounts `source` (a path relative to the repository root).
fn mount_target(service: &Yaml, source: &str) -> String {
    binds(service).into_iter().find(|(from, _)| from == source).unwrap_or_else(|| panic!("{source} is not mounted")).1
}

#[test]
fn observability_services_start_only_with_their_profile() {
    let compose = compose();
    let services = services(&compose);
    for (name, service) in &services {
        let profiles: Vec<&str> =
            service["profiles"].as_vec().map(|p| p.iter().map(|v| v.as_str().unwrap()).collect()).unwrap_or_default();
        if OBSERVABILITY.contains(&name.as_str()) {
            assert_eq!(profiles, ["observability"], "{name} must start only with --profile observability");
            let image = service["image"].as_str().expect("an image");
            let tag = image.rsplit_once(':').map(|(_, tag)| tag).unwrap_or("latest");
            assert!(tag != "latest" && tag.chars().any(|c| c.is_ascii_digit()), "{name}: pin a version, not {image}");
        } else if name == "tests" {
            assert_eq!(profiles, ["test"], "the test suite runs only with --profile test");
        } else {
            assert!(profiles.is_empty(), "{name} has profiles {profiles:?}: plain `docker compose up` would skip it");
        }
    }
}

#[test]
fn every_file_the_stack_mounts_exists() {
    let compose = compose();
    let services = services(&compose);
    let mut mounted = 0;
    for (name, service) in &services {
        for (source, target) in binds(service) {
            assert!(root().join(&source).exists(), "{name} mounts {source}, which is missing");
            assert!(target.starts_with('/'), "{name} mounts {source} at {target:?}");
            mounted += 1;
        }
    }
    assert!(mounted >= 4, "the observability services mount their configuration");
}

#[test]
fn prometheus_scrapes_the_api_and_every_worker() {
    let compose = compose();
    let services = services(&compose);
    let prometheus = &services["prometheus"];
    let config_dir = mount_target(prometheus, "deploy/prometheus");
    let flags: Vec<&str> = prometheus["command"].as_vec().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(flags.contains(&format!("--config.file={config_dir}/prometheus.yml").as_str()), "{flags:?}");
    assert!(prometheus["ports"].as_vec().unwrap().iter().any(|p| p.as_str() == Some("9090:9090")));

    let config = yaml_file("deploy/prometheus/prometheus.yml");
    let interval = seconds(config["global"]["scrape_interval"].as_str().unwrap());
    assert!((5..=15).contains(&interval), "scrape every 5 to 15 s, not {interval} s");
    let rule_files = config["rule_files"].as_vec().expect("rule_files");
    assert!(!rule_files.is_empty());
    for file in rule_files {
        let file = file.as_str().unwrap();
        assert!(root().join("deploy/prometheus").join(file).exists(), "rule file {file} is missing");
    }
    let jobs = config["scrape_configs"].as_vec().unwrap();
    let path_of = |job: &Yaml| job["metrics_path"].as_str().unwrap_or("/metrics").to_string();

    // The API: its HTTP port, at /metrics.
    let api_port = port(&environment(&services["api"])["HERALD_HTTP_ADDR"]).to_string();
    let api_target = format!("api:{api_port}");
    let api_job = jobs
        .iter()
        .find(|job| {
            job["static_configs"].as_vec().is_some_and(|configs| {
                configs.iter().any(|c| c["targets"].as_vec().unwrap().iter().any(|t| t.as_str() == Some(&api_target)))
            })
        })
        .unwrap_or_else(|| panic!("no job scrapes {api_target}"));
    assert_eq!(path_of(api_job), "/metrics");

    // Workers: every replica of the scaled service, found by DNS, on HERALD_METRICS_ADDR's port.
    let worker = &services["worker"];
    let metrics_addr =
        environment(worker).get("HERALD_METRICS_ADDR").cloned().expect("worker sets HERALD_METRICS_ADDR");
    assert!(metrics_addr.starts_with("0.0.0.0:"), "{metrics_addr}: other containers must reach it");
    assert!(worker["ports"].is_badvalue(), "the worker is scaled: a published port would collide");
    let worker_job = jobs
        .iter()
        .find(|job| {
            job["dns_sd_configs"].as_vec().is_some_and(|sd| {
                sd.iter().any(|c| c["names"].as_vec().unwrap().iter().any(|n| n.as_str() == Some("worker")))
            })
        })
        .expect("a job discovers the workers by DNS (dns_sd_configs, names: [worker])");
    let sd = &worker_job["dns_sd_configs"][0];
    assert_eq!(sd["type"].as_str(), Some("A"));
    assert_eq!(
        sd["port"].as_i64().map(|p| p.to_string()).as_deref(),
        Some(port(&metrics_addr)),
        "Prometheus scrapes workers on another port than HERALD_METRICS_ADDR ({metrics_addr})"
    );
    assert_eq!(path_of(worker_job), "/metrics");
}

#[test]
fn grafana_reads_the_provisioned_datasource_and_dashboards() {
    let compose = compose();
    let services = services(&compose);
    let grafana = &services["grafana"];
    let env = environment(grafana);
    assert_eq!(env["GF_AUTH_ANONYMOUS_ENABLED"], "true");
    assert_eq!(env["GF_AUTH_ANONYMOUS_ORG_ROLE"], "Viewer");
    assert!(grafana["ports"].as_vec().unwrap().iter().any(|p| p.as_str() == Some("3000:3000")));
    assert!(!grafana["depends_on"]["prometheus"].is_badvalue(), "grafana starts after prometheus");
    for kind in ["datasources", "dashboards"] {
        let target = mount_target(grafana, &format!("deploy/grafana/provisioning/{kind}"));
        assert_eq!(target, format!("/etc/grafana/provisioning/{kind}"));
    }

    let datasources = yaml_file("deploy/grafana/provisioning/datasources/prometheus.yml");
    let datasource = &datasources["datasources"][0];
    assert_eq!(datasource["type"].as_str(), Some("prometheus"));
    let url = datasource["url"].as_str().unwrap();
    let published = services["prometheus"]["ports"][0].as_str().unwrap();
    assert_eq!(
        url,
        format!("http://prometheus:{}", port(published)),
        "the datasource must reach the prometheus service"
    );
    let scrape =
        yaml_file("deploy/prometheus/prometheus.yml")["global"]["scrape_interval"].as_str().unwrap().to_string();
    assert_eq!(
        datasource["jsonData"]["timeInterval"].as_str(),
        Some(scrape.as_str()),
        "Grafana's $__rate_interval assumes the scrape interval"
    );

    let providers = yaml_file("deploy/grafana/provisioning/dashboards/herald.yml");
    let provider = &providers["providers"][0];
    assert_eq!(provider["type"].as_str(), Some("file"));
    let dashboards = mount_target(grafana, "deploy/grafana/dashboards");
    assert_eq!(provider["options"]["path"].as_str(), Some(dashboards.as_str()));
    let home = &env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"];
    let file = home.strip_prefix(&format!("{dashboards}/")).expect("the home dashboard is a provisioned one");
    assert!(root().join("deploy/grafana/dashboards").join(file).exists(), "{home} is not in deploy/grafana/dashboards");
}
