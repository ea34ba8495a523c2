//! The docker backend's node image, against the real daemon: the static agent is found or
//! built, the image is built once and then found by its content tag, and a container from it
//! runs busybox, the agent and included host binaries. Skips, saying why, without a daemon.
//! Every container created here is removed; the node image is kept (it is a cache).

#![cfg(feature = "docker")]

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{LogsOptions, RemoveContainerOptions, WaitContainerOptions};
use chaos::backend::docker::LABEL_IMAGE;
use chaos::backend::docker::image::{
    AGENT_PATH, BUSYBOX, IMAGE_REPO, NODE_WORKDIR, is_static_elf, node_image, static_agent,
};
use futures_util::StreamExt;

/// Bound on one test container's whole life.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// The daemon, or `None` after printing why the test is skipped.
async fn docker() -> Option<Docker> {
    let connect = async {
        let docker = Docker::connect_with_defaults().map_err(|e| e.to_string())?;
        let docker = docker.negotiate_version().await.map_err(|e| e.to_string())?;
        docker.ping().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(docker)
    };
    let outcome = tokio::time::timeout(Duration::from_secs(3), connect)
        .await
        .unwrap_or_else(|_| Err("no answer within 3s".into()));
    match outcome {
        Ok(docker) => Some(docker),
        Err(why) => {
            chaos_testkit::skip(
                "docker_image",
                "docker",
                &format!("no Docker daemon reachable: {why}"),
            );
            None
        }
    }
}

/// Runs `cmd` (no entrypoint) in a new container of `image` and returns its exit code and
/// output. The container is removed whatever happens, a panic included.
async fn run_in(docker: &Docker, image: &str, cmd: &[&str]) -> (i64, String) {
    let body = ContainerCreateBody {
        image: Some(image.to_string()),
        // An empty (not absent) entrypoint replaces the agent, so `cmd` runs as given.
        entrypoint: Some(Vec::new()),
        cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
        labels: Some(HashMap::from([(
            "io.chaos.test".to_string(),
            "docker_image".to_string(),
        )])),
        ..Default::default()
    };
    let id = docker
        .create_container(None, body)
        .await
        .expect("creating a test container")
        .id;
    let run = {
        let (docker, id) = (docker.clone(), id.clone());
        tokio::spawn(async move {
            tokio::time::timeout(RUN_TIMEOUT, async {
                docker
                    .start_container(&id, None)
                    .await
                    .expect("starting the test container");
                let mut code = 0;
                let mut waits = docker.wait_container(&id, None::<WaitContainerOptions>);
                while let Some(wait) = waits.next().await {
                    match wait {
                        Ok(response) => code = response.status_code,
                        Err(bollard::errors::Error::DockerContainerWaitError { code: c, .. }) => code = c,
                        Err(e) => panic!("waiting for the test container: {e}"),
                    }
                }
                let options = LogsOptions {
                    stdout: true,
                    stderr: true,
                    ..Default::default()
                };
                let mut output = String::new();
                let mut logs = docker.logs(&id, Some(options));
                while let Some(chunk) = logs.next().await {
                    output.push_str(&chunk.expect("reading the test container's logs").to_string());
                }
                (code, output)
            })
            .await
            .unwrap_or_else(|_| panic!("test container did not finish within {RUN_TIMEOUT:?}"))
        })
        .await
    };
    let options = RemoveContainerOptions {
        force: true,
        ..Default::default()
    };
    docker
        .remove_container(&id, Some(options))
        .await
        .expect("removing the test container");
    match run {
        Ok(outcome) => outcome,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

#[tokio::test]
async fn static_agent_is_a_static_elf() {
    let started = Instant::now();
    let agent = static_agent().await.unwrap();
    eprintln!("static agent {} in {:?}", agent.display(), started.elapsed());
    assert!(
        is_static_elf(&agent).unwrap(),
        "{} is not static",
        agent.display()
    );
    // Asking again in the same process is free.
    let started = Instant::now();
    assert_eq!(static_agent().await.unwrap(), agent);
    eprintln!("again in {:?}", started.elapsed());
}

#[tokio::test]
async fn node_image_is_built_once_and_runs() {
    let Some(docker) = docker().await else { return };
    let agent = static_agent().await.unwrap();
    let etcd = Path::new("/usr/bin/etcd");
    let include: Vec<PathBuf> = if etcd.is_file() {
        vec![etcd.to_path_buf()]
    } else {
        eprintln!(
            "no {} on this host (apt-get install etcd-server): not testing includes",
            etcd.display()
        );
        Vec::new()
    };

    let started = Instant::now();
    let tag = node_image(&docker, &agent, &include).await.unwrap();
    eprintln!("node image {tag} in {:?}", started.elapsed());
    assert!(tag.starts_with(&format!("{IMAGE_REPO}:")), "{tag}");
    // The second call finds the tag (timings are printed, not asserted: tests are not benchmarks).
    let started = Instant::now();
    assert_eq!(node_image(&docker, &agent, &include).await.unwrap(), tag);
    eprintln!("cached node image lookup in {:?}", started.elapsed());

    let inspected = docker.inspect_image(&tag).await.unwrap();
    let config = inspected.config.unwrap();
    assert_eq!(config.entrypoint.unwrap(), [AGENT_PATH]);
    assert_eq!(config.working_dir.as_deref(), Some(NODE_WORKDIR));
    assert_eq!(config.labels.unwrap()[LABEL_IMAGE], "node");
    assert!(
        config
            .env
            .unwrap()
            .iter()
            .any(|e| e.starts_with("PATH=") && e.contains("/usr/bin"))
    );

    let (code, out) = run_in(&docker, &tag, &["/bin/sh", "-c", "echo hi; ls /chaos"]).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["hi", "chaos-agent", "root"],
        "{out}"
    );

    // The shell's environment: working directory, /tmp, users, /usr/bin/env, applets on PATH.
    let script = "pwd; stat -c %a /tmp; id -un; /usr/bin/env true && echo env-ok; \
                  sleep 0; cat /etc/group; ls -l /bin/sh";
    let (code, out) = run_in(&docker, &tag, &["/bin/sh", "-c", script]).await;
    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[..5],
        [NODE_WORKDIR, "1777", "root", "env-ok", "root:x:0:"],
        "{out}"
    );
    assert!(lines[5].ends_with("/bin/sh -> busybox"), "{out}");

    // The static agent itself runs in the image.
    let (code, out) = run_in(&docker, &tag, &[AGENT_PATH, "--help"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Usage"), "{out}");

    if !include.is_empty() {
        let (code, out) = run_in(&docker, &tag, &["etcd", "--version"]).await;
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("etcd Version:"), "{out}");
    }
}

/// An included binary keeps its place over busybox's applet of the same name, and runs with
/// the libraries ldd found for it. The image is test-only, so it is removed.
/// Runs `sh -c script` in a container of the test-only image `tag`, then removes the image —
/// also when the run panicked, whose panic is then passed on.
async fn run_once_in(docker: &Docker, tag: String, script: &str) -> (i64, String) {
    let run = tokio::spawn({
        let (docker, tag, script) = (docker.clone(), tag.clone(), script.to_string());
        async move { run_in(&docker, &tag, &["/bin/sh", "-c", &script]).await }
    })
    .await;
    docker
        .remove_image(&tag, None::<bollard::query_parameters::RemoveImageOptions>, None)
        .await
        .expect("removing the test-only image");
    run.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

#[tokio::test]
async fn an_included_binary_is_not_shadowed_by_busybox() {
    let Some(docker) = docker().await else { return };
    let agent = static_agent().await.unwrap();
    let tag = node_image(&docker, &agent, &[PathBuf::from("/bin/ls")])
        .await
        .unwrap();
    // By path: Debian's busybox shell runs its own applets before searching PATH.
    let script = "/bin/ls --version | head -n 1; readlink /bin/cat";
    let (code, out) = run_once_in(&docker, tag, script).await;
    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines.len() == 2 && lines[0].starts_with("ls (GNU coreutils)"),
        "{out}"
    );
    assert_eq!(lines[1], "busybox", "{out}");
}

#[tokio::test]
async fn an_included_directory_brings_its_tree_links_and_modes() {
    let Some(docker) = docker().await else { return };
    let agent = static_agent().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tree");
    std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
    std::fs::write(root.join("tool.sh"), "#!/bin/sh\necho tool ran\n").unwrap();
    std::fs::set_permissions(root.join("tool.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(root.join("sub/data.txt"), "data\n").unwrap();
    std::fs::set_permissions(root.join("sub"), std::fs::Permissions::from_mode(0o750)).unwrap();
    std::os::unix::fs::symlink("sub/data.txt", root.join("link")).unwrap();
    let tag = node_image(&docker, &agent, std::slice::from_ref(&root))
        .await
        .unwrap();
    let r = root.display();
    let script = format!(
        "{r}/tool.sh; cat {r}/link; readlink {r}/link; stat -c %a {r}/sub; test -d {r}/sub/deeper && echo deeper"
    );
    let (code, out) = run_once_in(&docker, tag, &script).await;
    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        ["tool ran", "data", "sub/data.txt", "750", "deeper"],
        "{out}"
    );
}

#[tokio::test]
async fn a_missing_include_is_named_before_anything_is_built() {
    // The daemon is never asked: planning fails first. Connecting does not dial yet.
    let docker = Docker::connect_with_defaults().unwrap();
    let missing = PathBuf::from("/nonexistent/chaos-include");
    let err = node_image(&docker, Path::new(BUSYBOX), std::slice::from_ref(&missing))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("/nonexistent/chaos-include") && err.contains("no such file"),
        "{err}"
    );
}

#[tokio::test]
async fn a_dynamic_agent_is_refused() {
    let docker = Docker::connect_with_defaults().unwrap();
    let err = node_image(&docker, Path::new("/bin/ls"), &[])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("/bin/ls") && err.contains("statically linked"),
        "{err}"
    );
}
