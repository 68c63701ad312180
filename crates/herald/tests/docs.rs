//! The README's configuration table lists exactly the variables the binary reads, with their
//! defaults, so documentation and code cannot drift apart.

use std::path::Path;

#[test]
fn the_readme_configuration_table_matches_the_code() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md")).expect("README.md");
    let documented: Vec<(String, String)> = readme
        .lines()
        .filter(|line| line.starts_with("| `HERALD_"))
        .map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            (cells[1].trim_matches('`').to_string(), cells[2].trim_matches('`').to_string())
        })
        .collect();
    let expected: Vec<(String, String)> = herald::cli::environment_variables()
        .into_iter()
        .map(|(name, default)| (name, default.unwrap_or_else(|| "(none)".into())))
        .collect();
    assert_eq!(documented, expected, "README.md's configuration table is out of date");
}
