//! ARCHITECTURE.md's dependency rules hold: every crate depends only on the crates its row
//! allows, no crate depends on one listed after it (so nothing depends on a crate above it), and
//! none reaches a crate it must never depend on, directly or through another.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The herald crates named in `cell`.
fn crate_names(cell: &str) -> Vec<String> {
    cell.split('`').skip(1).step_by(2).filter(|name| name.starts_with("herald")).map(str::to_string).collect()
}

struct Rule {
    allowed: BTreeSet<String>,
    never: BTreeSet<String>,
}

/// The rows of the "Dependency rules" table, in order (lowest layer first).
fn rules() -> Vec<(String, Rule)> {
    let text = std::fs::read_to_string(root().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let section = text.split("## Dependency rules").nth(1).expect("a Dependency rules section");
    let section = section.split("\n## ").next().unwrap_or(section);
    section
        .lines()
        .filter(|line| line.starts_with("| `herald"))
        .map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let name = crate_names(cells[1]).remove(0);
            let rule = Rule {
                allowed: crate_names(cells[2]).into_iter().collect(),
                never: crate_names(cells[3]).into_iter().collect(),
            };
            (name, rule)
        })
        .collect()
}

/// Each workspace crate under `crates/` and the herald crates in its `[dependencies]`
/// (dev-dependencies are for tests, which may use anything).
fn dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let mut crates = BTreeMap::new();
    for entry in std::fs::read_dir(root().join("crates")).expect("crates/") {
        let manifest = entry.expect("a directory entry").path().join("Cargo.toml");
        let Ok(text) = std::fs::read_to_string(&manifest) else { continue };
        let name = text
            .lines()
            .find_map(|line| line.strip_prefix("name = "))
            .map(|name| name.trim_matches('"').to_string())
            .expect("a package name");
        let mut section = "";
        let mut herald = BTreeSet::new();
        for line in text.lines() {
            if line.starts_with('[') {
                section = line;
            } else if section == "[dependencies]"
                && let Some(dependency) = line.split(['.', ' ', '=']).next().filter(|d| d.starts_with("herald"))
            {
                herald.insert(dependency.to_string());
            }
        }
        crates.insert(name, herald);
    }
    crates
}

#[test]
fn every_crate_depends_only_on_what_architecture_md_allows() {
    let rules = rules();
    let actual = dependencies();
    let ruled: BTreeSet<&String> = rules.iter().map(|(name, _)| name).collect();
    let present: BTreeSet<&String> = actual.keys().collect();
    assert_eq!(ruled, present, "ARCHITECTURE.md's dependency rules name exactly the crates under crates/");
    for (position, (name, rule)) in rules.iter().enumerate() {
        let below: BTreeSet<&String> = rules[..position].iter().map(|(name, _)| name).collect();
        for allowed in &rule.allowed {
            assert!(below.contains(allowed), "ARCHITECTURE.md lets {name} depend on {allowed}, which is not below it");
        }
        for dependency in &actual[name] {
            assert!(
                rule.allowed.contains(dependency),
                "{name} depends on {dependency}, which ARCHITECTURE.md does not allow"
            );
        }
    }
}

#[test]
fn no_crate_reaches_one_it_must_never_depend_on() {
    let actual = dependencies();
    let reach = |start: &str| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![start.to_string()];
        while let Some(next) = todo.pop() {
            for dependency in actual.get(&next).into_iter().flatten() {
                if seen.insert(dependency.clone()) {
                    todo.push(dependency.clone());
                }
            }
        }
        seen
    };
    let rules = rules();
    let worker = rules.iter().find(|(name, _)| name == "herald-worker").expect("a rule for the worker");
    assert!(worker.1.never.contains("herald-ingest"), "the worker must never depend on ingest");
    for (name, rule) in &rules {
        let reached = reach(name);
        let forbidden: Vec<&String> = reached.intersection(&rule.never).collect();
        assert!(forbidden.is_empty(), "{name} depends on {forbidden:?}, directly or through another crate");
    }
}
