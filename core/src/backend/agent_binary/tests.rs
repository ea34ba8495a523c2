//! Tests of the agent search and version check (the build itself runs in `core/tests/agent_cache.rs`
//! and in the external example's test).

use std::os::unix::fs::PermissionsExt;

use super::*;
use crate::backend::workspace_binary::build::{tail, target_dirs};

/// A script standing in for an agent: it prints `version_line` for `--version`.
fn fake_agent(dir: &Path, name: &str, version_line: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\necho '{version_line}'\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn an_agent_of_another_version_is_refused_naming_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    let old = fake_agent(dir.path(), "old", "chaos-agent 0.0.1");
    let err = version_matches(&old).unwrap_err();
    assert!(err.contains("chaos-agent 0.0.1"), "{err}");
    assert!(err.contains(&format!("library is {AGENT_VERSION}")), "{err}");
    assert!(err.contains(AGENT_BIN_ENV), "the fix is named: {err}");
    assert!(!err.contains('\n'), "one line: {err}");

    let same = fake_agent(dir.path(), "same", &format!("chaos-agent {AGENT_VERSION}"));
    assert_eq!(version_matches(&same), Ok(()));

    let other = fake_agent(dir.path(), "other", "something else entirely");
    let err = version_matches(&other).unwrap_err();
    assert!(err.contains("is it a chaos-agent?"), "{err}");
}

#[test]
fn the_static_agent_is_looked_for_in_every_target_directory() {
    assert_eq!(
        AGENT.static_candidates(Path::new("/t")),
        [
            "/t/x86_64-unknown-linux-gnu/release/chaos-agent",
            "/t/x86_64-unknown-linux-gnu/debug/chaos-agent",
        ]
        .map(PathBuf::from)
    );
    // This test binary runs from <target>/debug/deps: its target directory is found.
    let exe = std::env::current_exe().unwrap();
    let dirs = target_dirs(None);
    assert!(
        dirs.iter().any(|d| exe.starts_with(d)),
        "{dirs:?} vs {}",
        exe.display()
    );
}

#[test]
fn the_cache_is_per_version_and_the_sources_are_this_workspace() {
    let cache = cache_dir();
    let name = cache.file_name().unwrap().to_str().unwrap();
    assert!(
        name.starts_with(&format!("agent-{AGENT_VERSION}-")),
        "{}",
        cache.display()
    );
    assert!(cache.parent().unwrap().ends_with("chaos"), "{}", cache.display());
    // Compiled from the workspace: the agent's sources are the workspace's own, so the agent is
    // built from them (not installed from a registry) and the command names its manifest.
    let root = AGENT.sources_root().expect("the workspace holds agent/");
    assert!(root.join("agent/src/main.rs").is_file());
    let command = manual_command();
    assert!(
        command.contains(&format!(
            "--manifest-path {}",
            root.join("agent/Cargo.toml").display()
        )),
        "{command}"
    );
    assert!(command.contains("+crt-static"), "{command}");
}

#[test]
fn build_logs_keep_their_tail() {
    assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
    assert_eq!(tail("a", 5), "a");
}
