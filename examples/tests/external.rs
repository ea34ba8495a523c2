//! `examples/external` — a project outside this workspace that depends on `chaos` by path —
//! passes its tests with plain `cargo test`, built the way a user's project builds: a fresh,
//! empty target directory and an empty agent cache, so the agent is built by the library itself
//! (nothing of this workspace's build is reused). Its netns and docker tests must run, not skip.
//!
//! Slow by design (a cold build of chaos and of the agent: see the figures in CHANGELOG.md), so
//! it runs as part of the suite only when `CHAOS_REQUIRE` names `external` (CI does) or
//! `CHAOS_EXTERNAL=1` is set; otherwise it is skipped, saying so.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

#[test]
fn the_external_project_passes_from_a_cold_build() {
    let test = "the_external_project_passes_from_a_cold_build";
    if !chaos_testkit::required("external") && std::env::var_os("CHAOS_EXTERNAL").is_none() {
        chaos_testkit::skip(
            test,
            "external",
            &"a cold build of examples/external takes minutes; set CHAOS_EXTERNAL=1 to run it",
        );
        return;
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("external/Cargo.toml");
    let scratch = tempfile::tempdir().unwrap();
    let target = scratch.path().join("target");
    let cache = scratch.path().join("cache");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .args(["test", "--manifest-path"])
        .arg(&manifest)
        .env("CARGO_TARGET_DIR", &target)
        // An empty agent cache: the library must build the agent itself.
        .env("XDG_CACHE_HOME", &cache)
        // The external project's own tests must run on these backends, not skip.
        .env("CHAOS_REQUIRE", "netns,docker")
        .env_remove("CHAOS_AGENT_BIN")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_MAKEFLAGS");
    // What cargo set for this test describes this package, not the external one.
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_BIN_EXE_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_CRATE_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "CARGO_RUSTC_CURRENT_DIR",
                "OUT_DIR",
            ]
            .contains(&name)
        {
            command.env_remove(name);
        }
    }
    let started = Instant::now();
    let output = command.output().expect("running cargo");
    let cold = started.elapsed();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "cargo test of {} failed after {cold:?}:\n{log}",
        manifest.display()
    );
    assert!(log.contains("test result: ok"), "{log}");
    assert!(
        !log.contains("skipping"),
        "a test of the external project skipped:\n{log}"
    );
    let version = chaos::backend::agent_binary::AGENT_VERSION;
    let built = std::fs::read_dir(cache.join("chaos"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("agent-{version}"))
        });
    assert!(
        built,
        "the agent was not built into the empty cache {}",
        cache.display()
    );

    // The second run reuses everything: the project's build and the cached agent.
    let started = Instant::now();
    let again = command.output().expect("running cargo");
    let warm = started.elapsed();
    assert!(
        again.status.success(),
        "second run: {}",
        String::from_utf8_lossy(&again.stderr)
    );
    eprintln!("examples/external: cold {cold:?} (project build + agent build + tests), warm {warm:?}");
}
