//! Tests of what every workspace binary shares: names, variables, caches, build commands (the
//! agent's own are in `agent_binary/tests.rs`; a real build runs in `core/tests/adapter_build.rs`,
//! opt-in).

use std::os::unix::fs::PermissionsExt;

use super::*;

/// A script standing in for `bin`: it prints `version_line` for `--version`.
fn fake(dir: &Path, name: &str, version_line: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\necho '{version_line}'\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn each_binary_has_its_variable_and_the_adapters_are_named() {
    assert_eq!(AGENT.env_var(), "CHAOS_AGENT_BIN");
    assert_eq!(AGENT.env_var(), crate::backend::agent_binary::AGENT_BIN_ENV);
    let pg = builtin_adapter("chaos-adapter-postgres").unwrap();
    assert_eq!(pg.env_var(), "CHAOS_ADAPTER_POSTGRES_BIN");
    assert_eq!(pg.package, "chaos-adapters");
    assert!(
        builtin_adapter("chaos-agent").is_none(),
        "the agent is no adapter"
    );
    assert!(builtin_adapter("postgres").is_none());
    assert_eq!(
        builtin_adapter_names(),
        "chaos-adapter-echo, chaos-adapter-redis, chaos-adapter-postgres, chaos-adapter-zookeeper"
    );
}

#[test]
fn an_adapter_of_another_version_is_refused_naming_it() {
    let pg = builtin_adapter("chaos-adapter-postgres").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let old = fake(dir.path(), "old", "chaos-adapter-postgres 0.0.1");
    let err = pg.version_matches(&old).unwrap_err();
    assert!(err.contains("chaos-adapter-postgres 0.0.1"), "{err}");
    assert!(err.contains("CHAOS_ADAPTER_POSTGRES_BIN"), "{err}");
    assert!(!err.contains("agent"), "{err}");
    let same = fake(dir.path(), "same", &format!("chaos-adapter-postgres {VERSION}"));
    assert_eq!(pg.version_matches(&same), Ok(()));
    // Another adapter's answer is not this one's.
    let echo = fake(dir.path(), "echo", &format!("chaos-adapter-echo {VERSION}"));
    assert!(
        pg.version_matches(&echo)
            .unwrap_err()
            .contains("is it a chaos-adapter-postgres?")
    );
}

#[test]
fn adapters_share_a_cache_of_their_own_and_build_their_binary_only() {
    let pg = builtin_adapter("chaos-adapter-postgres").unwrap();
    let echo = builtin_adapter("chaos-adapter-echo").unwrap();
    assert_eq!(
        pg.cache_dir(),
        echo.cache_dir(),
        "one target directory for one package"
    );
    assert_ne!(pg.cache_dir(), AGENT.cache_dir());
    let name = pg.cache_dir().file_name().unwrap().to_str().unwrap().to_string();
    assert!(name.starts_with(&format!("adapters-{VERSION}-")), "{name}");
    let root = pg.sources_root().expect("the workspace holds adapters/");
    let command = pg.manual_command();
    assert!(
        command.contains(&format!(
            "--manifest-path {} --bin chaos-adapter-postgres --target {TARGET}",
            root.join("adapters/Cargo.toml").display()
        )),
        "{command}"
    );
    assert!(command.contains("+crt-static"), "{command}");
    assert_eq!(
        pg.cached_binary(),
        pg.cache_dir()
            .join("target")
            .join(TARGET)
            .join("release")
            .join("chaos-adapter-postgres")
    );
    assert!(
        pg.newest_source(&root).is_some(),
        "adapters/ and check/ have sources"
    );
}

/// In this workspace the test profile's adapters are built beside the test binaries (cargo
/// builds a package's binaries for its integration tests; `cargo build -p chaos-adapters` too):
/// the search finds one for `Any` without building, and it answers `--version`.
#[tokio::test]
async fn a_built_adapter_beside_the_tests_is_found() {
    let echo = builtin_adapter("chaos-adapter-echo").unwrap();
    let beside = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("chaos-adapter-echo"));
    match beside {
        Some(path) if is_executable(&path) && echo.search(Linkage::Any).is_some() => {
            let found = echo.obtain(Linkage::Any).await.unwrap();
            assert!(is_executable(&found), "{}", found.display());
        }
        _ => eprintln!("skipped: chaos-adapter-echo is not built (or stale) in this target directory"),
    }
}
