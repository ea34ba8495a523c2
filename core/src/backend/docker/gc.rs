//! `chaos gc` for Docker: containers (force, with their volumes) then networks labelled
//! [`LABEL_CLUSTER`], grouped by cluster and judged by their [`LABEL_OWNER`] label, then the
//! host directory of bind-mounted node files a network names ([`super::LABEL_FILES`]); images
//! labelled [`LABEL_IMAGE`] that are dangling (untagged leftovers of interrupted builds)
//! always, every such image with [`GcOptions::images`] — except images a remaining container
//! uses. A daemon that cannot be reached is skipped with a note, not an error. Nothing without
//! these labels is ever touched, and every daemon call is bounded.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::query_parameters::{
    ListContainersOptions, ListImagesOptions, ListNetworksOptions, RemoveContainerOptions, RemoveImageOptions,
};

use super::{FILES_DIR_PREFIX, LABEL_CLUSTER, LABEL_FILES, LABEL_IMAGE, LABEL_OWNER};
use crate::backend::gc::{GcOptions, GcReport};
use crate::backend::owner;

/// Bound on any other daemon call (a forced container removal kills the container first).
const CALL_BOUND: Duration = Duration::from_secs(10);

/// Connects the way the docker backend does (`DOCKER_HOST`, bounded), with every later
/// call bounded by [`CALL_BOUND`] too.
async fn connect() -> Result<Docker, String> {
    crate::backend::docker::connect()
        .await
        .map(|docker| docker.with_timeout(CALL_BOUND))
        .map_err(|e| e.to_string())
}

/// Awaits a daemon call for at most [`CALL_BOUND`]; the error names `what`.
async fn bounded<T>(what: &str, call: impl Future<Output = Result<T, DockerError>>) -> Result<T, CallError> {
    super::within(CALL_BOUND, call).await.map_err(|f| CallError {
        status: f.status(),
        message: f.describe(what),
    })
}

/// A failed daemon call: the HTTP status when the daemon answered, and one line.
struct CallError {
    status: Option<u16>,
    message: String,
}

fn label_filter(label: &str) -> HashMap<String, Vec<String>> {
    HashMap::from([("label".to_string(), vec![label.to_string()])])
}

/// A labelled container or network.
struct Resource {
    kind: &'static str,
    id: String,
    name: String,
    owner: Option<String>,
    /// A network's [`LABEL_FILES`]: the host directory of its nodes' bind-mounted files.
    files: Option<String>,
}

/// `chaos gc` for Docker: containers, then networks and their node files, labelled with a
/// cluster whose owner is no longer alive (or any, with `--all`), then dangling node images.
pub async fn collect_garbage(options: &GcOptions) -> GcReport {
    let mut report = GcReport::default();
    let docker = match connect().await {
        Ok(docker) => docker,
        Err(e) => {
            report.kept.push(format!(
                "docker: daemon not reachable at {}: skipped ({e})",
                super::daemon_address()
            ));
            return report;
        }
    };
    let listed = tokio::try_join!(
        bounded(
            "listing containers",
            docker.list_containers(Some(ListContainersOptions {
                all: true,
                ..Default::default()
            })),
        ),
        bounded(
            "listing networks",
            docker.list_networks(Some(ListNetworksOptions {
                filters: Some(label_filter(LABEL_CLUSTER)),
            })),
        ),
    );
    let (containers, networks) = match listed {
        Ok(lists) => lists,
        Err(e) => {
            report.errors.push(format!("docker: {}", e.message));
            return report;
        }
    };

    // Group by cluster. Labels are checked here as well as in the daemon's filter: nothing
    // without ours is ever touched.
    let mut clusters: BTreeMap<String, Vec<Resource>> = BTreeMap::new();
    for c in &containers {
        let (Some(id), Some(labels)) = (&c.id, &c.labels) else {
            continue;
        };
        let Some(cluster) = labels.get(LABEL_CLUSTER) else {
            continue;
        };
        let name = c
            .names
            .as_ref()
            .and_then(|n| n.first())
            .map(|n| n.trim_start_matches('/').to_string())
            .unwrap_or_else(|| short(id).to_string());
        clusters.entry(cluster.clone()).or_default().push(Resource {
            kind: "container",
            id: id.clone(),
            name,
            owner: labels.get(LABEL_OWNER).cloned(),
            files: None,
        });
    }
    for n in &networks {
        let (Some(id), Some(labels)) = (&n.id, &n.labels) else {
            continue;
        };
        let Some(cluster) = labels.get(LABEL_CLUSTER) else {
            continue;
        };
        clusters.entry(cluster.clone()).or_default().push(Resource {
            kind: "network",
            id: id.clone(),
            name: n.name.clone().unwrap_or_else(|| short(id).to_string()),
            owner: labels.get(LABEL_OWNER).cloned(),
            files: labels.get(LABEL_FILES).cloned(),
        });
    }

    let mut gone_containers: HashSet<String> = HashSet::new();
    for (cluster, resources) in clusters {
        let (garbage, why) = judge(&resources);
        let reason = match (garbage, options.all) {
            (true, _) => format!("cluster {cluster}, {why}"),
            (false, true) => format!("cluster {cluster}, {why}; --all"),
            (false, false) => {
                report.kept.push(format!(
                    "docker: cluster {cluster} ({} container(s), {} network(s)): {why}",
                    resources.iter().filter(|r| r.kind == "container").count(),
                    resources.iter().filter(|r| r.kind == "network").count(),
                ));
                continue;
            }
        };
        gone_containers
            .extend(remove_cluster(&docker, &resources, &reason, options.dry_run, &mut report).await);
    }

    // Images a container still uses stay (the daemon would refuse, and it is in use).
    let in_use: HashSet<&str> = containers
        .iter()
        .filter(|c| c.id.as_ref().is_none_or(|id| !gone_containers.contains(id)))
        .filter_map(|c| c.image_id.as_deref())
        .collect();
    collect_images(&docker, options, &in_use, &mut report).await;
    report
}

/// The first 12 hex digits of an id, as the docker CLI shows them.
fn short(id: &str) -> &str {
    let id = id.strip_prefix("sha256:").unwrap_or(id);
    &id[..id.len().min(12)]
}

/// Whether a cluster's resources are garbage — every owner label names a runner of this host
/// that is gone — and the words that say why they are or are not.
fn judge(resources: &[Resource]) -> (bool, String) {
    let mut owners: Vec<Option<&str>> = resources.iter().map(|r| r.owner.as_deref()).collect();
    owners.sort_unstable();
    owners.dedup();
    let mut gone = Vec::new();
    for owner in owners {
        let Some(tag) = owner else {
            return (false, format!("no {LABEL_OWNER} label"));
        };
        match owner::verdict(tag) {
            (true, why) => gone.push(why),
            not_garbage => return not_garbage,
        }
    }
    (true, gone.join("; "))
}

/// Removes a doomed cluster's containers (forced, with volumes, concurrently) and then its
/// networks; returns the ids of the containers that are gone (or would be).
async fn remove_cluster(
    docker: &Docker,
    resources: &[Resource],
    reason: &str,
    dry_run: bool,
    report: &mut GcReport,
) -> Vec<String> {
    let mut gone = Vec::new();
    for kind in ["container", "network"] {
        let batch: Vec<&Resource> = resources.iter().filter(|r| r.kind == kind).collect();
        let removals = batch.iter().map(|r| async move {
            if dry_run {
                return Ok(());
            }
            let what = format!("removing {} {}", r.kind, r.name);
            if r.kind == "container" {
                let options = RemoveContainerOptions {
                    force: true,
                    v: true,
                    ..Default::default()
                };
                bounded(&what, docker.remove_container(&r.id, Some(options))).await
            } else {
                bounded(&what, docker.remove_network(&r.id)).await
            }
        });
        let results = futures_util::future::join_all(removals).await;
        for (r, result) in batch.into_iter().zip(results) {
            match result {
                Ok(()) => {
                    report
                        .removed
                        .push(format!("docker: {} {} ({reason})", r.kind, r.name));
                    gone.push(r.id.clone());
                }
                // Removed by someone else meanwhile.
                Err(CallError {
                    status: Some(404), ..
                }) => gone.push(r.id.clone()),
                Err(e) => report.errors.push(format!("docker: {}", e.message)),
            }
        }
    }
    remove_files_dirs(resources, reason, dry_run, report);
    gone
}

/// Removes the host directories of bind-mounted node files that a doomed cluster's networks
/// name — only when the owner ran on this host (elsewhere the path means nothing here) and the
/// path is one the backend makes: `<temp dir>/chaos-docker-*`.
fn remove_files_dirs(resources: &[Resource], reason: &str, dry_run: bool, report: &mut GcReport) {
    for r in resources {
        let (Some(dir), Some(owner)) = (&r.files, &r.owner) else {
            continue;
        };
        let here = owner::OwnerTag::parse(owner).is_some_and(|t| t.host == owner::hostname());
        let path = std::path::Path::new(dir);
        let ours = path.parent() == Some(std::env::temp_dir().as_path())
            && path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(FILES_DIR_PREFIX));
        if !here || !ours || !path.exists() {
            continue;
        }
        if !dry_run && let Err(e) = std::fs::remove_dir_all(path) {
            report.errors.push(format!("docker: removing {dir}: {e}"));
            continue;
        }
        report
            .removed
            .push(format!("docker: node files {dir} ({reason})"));
    }
}

/// Removes dangling chaos images, and with `--images` every chaos image, except those in use.
async fn collect_images(docker: &Docker, options: &GcOptions, in_use: &HashSet<&str>, report: &mut GcReport) {
    let mut filters = label_filter(LABEL_IMAGE);
    if !options.images {
        filters.insert("dangling".to_string(), vec!["true".to_string()]);
    }
    let list = ListImagesOptions {
        filters: Some(filters),
        ..Default::default()
    };
    let images = match bounded("listing images", docker.list_images(Some(list))).await {
        Ok(images) => images,
        Err(e) => {
            report.errors.push(format!("docker: {}", e.message));
            return;
        }
    };
    for image in images {
        let Some(kind) = image.labels.get(LABEL_IMAGE) else {
            continue;
        };
        let tags: Vec<&String> = image.repo_tags.iter().filter(|t| *t != "<none>:<none>").collect();
        let dangling = tags.is_empty();
        let name = if dangling {
            format!("{} ({LABEL_IMAGE}={kind})", short(&image.id))
        } else {
            format!(
                "{} ({LABEL_IMAGE}={kind}, {})",
                tags.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(", "),
                short(&image.id)
            )
        };
        let reason = if dangling {
            "dangling: left by an interrupted build"
        } else {
            "--images"
        };
        if in_use.contains(image.id.as_str()) {
            report
                .kept
                .push(format!("docker: image {name}: in use by a container"));
            continue;
        }
        if options.dry_run {
            report.removed.push(format!("docker: image {name} ({reason})"));
            continue;
        }
        // By tag, without force: the last untag deletes the image, and an image a container
        // started using meanwhile is refused instead of being pulled from under it.
        let refs: Vec<&str> = if dangling {
            vec![image.id.as_str()]
        } else {
            tags.iter().map(|t| t.as_str()).collect()
        };
        let mut failed = false;
        for r in refs {
            let what = format!("removing image {r}");
            let remove = docker.remove_image(r, None::<RemoveImageOptions>, None);
            match bounded(&what, remove).await {
                Ok(_)
                | Err(CallError {
                    status: Some(404), ..
                }) => {}
                Err(CallError {
                    status: Some(409), ..
                }) => {
                    report
                        .kept
                        .push(format!("docker: image {name}: in use by a container"));
                    failed = true;
                    break;
                }
                Err(e) => {
                    report.errors.push(format!("docker: {}", e.message));
                    failed = true;
                    break;
                }
            }
        }
        if !failed {
            report.removed.push(format!("docker: image {name} ({reason})"));
        }
    }
}
