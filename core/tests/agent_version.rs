//! An agent of another version is refused up front with one clear line, through every door a
//! user meets it: the agent lookup, and creating a `netns` cluster.
//!
//! This file holds one test because it sets `CHAOS_AGENT_BIN` for its whole process.

use std::os::unix::fs::PermissionsExt;

use chaos::backend::agent_binary::{AGENT_BIN_ENV, AGENT_VERSION, Linkage, agent_binary};
use chaos::backend::{ClusterOptions, new_cluster};

#[tokio::test]
async fn an_agent_of_another_version_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("chaos-agent");
    // Answers `--version` like a real agent of version 0.0.1 would (clap's format).
    std::fs::write(&fake, "#!/bin/sh\necho 'chaos-agent 0.0.1'\n").unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    // SAFETY: the only test of this binary; nothing else reads the environment concurrently.
    unsafe { std::env::set_var(AGENT_BIN_ENV, &fake) };

    let err = agent_binary(Linkage::Any).await.unwrap_err().to_string();
    eprintln!("{err}");
    assert!(err.contains("chaos-agent 0.0.1"), "{err}");
    assert!(
        err.contains(&format!("the chaos library is {AGENT_VERSION}")),
        "{err}"
    );
    assert!(err.contains(&format!("unset {AGENT_BIN_ENV}")), "the fix: {err}");
    assert!(!err.contains('\n'), "one line: {err}");

    match chaos::backend::registry::available("netns") {
        Err(why) if !why.contains(AGENT_BIN_ENV) => {
            chaos_testkit::skip("an_agent_of_another_version_is_a_clear_error", "netns", &why)
        }
        _ => {
            let err = match new_cluster("netns", ClusterOptions::default()).await {
                Ok(_) => panic!("a netns cluster was made with an agent of another version"),
                Err(e) => e.to_string(),
            };
            eprintln!("{err}");
            assert!(err.contains("chaos-agent 0.0.1"), "{err}");
            assert_eq!(err.matches("netns backend").count(), 1, "one prefix: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }
}
