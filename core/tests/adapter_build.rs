//! A built-in adapter built from scratch the way a user without a workspace build meets it: a
//! fresh cache, a static build for nodes that need one, found again without building.
//!
//! This file holds one test because it sets `XDG_CACHE_HOME` for its whole process.

use std::time::Instant;

use chaos::backend::workspace_binary::{Linkage, VERSION, builtin_adapter};

#[tokio::test]
#[ignore = "opt-in job .ci/systems: a fresh static cargo build of an adapter takes minutes"]
async fn a_builtin_adapter_is_built_statically_once_into_a_fresh_cache() {
    let cache = tempfile::tempdir().unwrap();
    // SAFETY: the only test of this binary; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("XDG_CACHE_HOME", cache.path()) };
    let echo = builtin_adapter("chaos-adapter-echo").unwrap();
    assert!(
        echo.cache_dir().starts_with(cache.path()),
        "{}",
        echo.cache_dir().display()
    );

    let started = Instant::now();
    let built = echo
        .obtain(Linkage::Static)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "chaos-adapter-echo: {} in {:.0?}",
        built.display(),
        started.elapsed()
    );
    let output = std::process::Command::new(&built)
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("chaos-adapter-echo {VERSION}")
    );
    // A static build by hand under a target directory would be found first; otherwise it is the
    // cache's, where the next process finds it.
    if built.starts_with(cache.path()) {
        assert!(echo.obtainable().is_ok());
        assert_eq!(echo.obtain(Linkage::Static).await.unwrap(), built);
    }
}
