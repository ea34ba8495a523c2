//! Writing the planned image (one layer tar, the config, the `docker save` archive) and
//! loading it into the daemon, once per tag.

#[allow(unused_imports)]
use super::*;

/// The layer tar of `plan` (paths relative to `/`, owner root, fixed times) and its SHA-256
/// (the layer's diff ID). Re-reads every host file and checks it still has the planned content,
/// so the image never differs from what its tag names.
pub(super) fn write_layer(plan: &Plan) -> Result<(Vec<u8>, [u8; 32])> {
    let tar_err = |path: &str, e| Error::io(format!("packing {path} into the node image"), e);
    let mut layer = tar::Builder::new(Vec::new());
    for (path, entry) in &plan.entries {
        let rel = path.trim_start_matches('/');
        let mut header = tar::Header::new_gnu();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(LAYER_MTIME);
        match entry {
            Entry::Dir { mode } => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(*mode);
                header.set_size(0);
                layer
                    .append_data(&mut header, format!("{rel}/"), std::io::empty())
                    .map_err(|e| tar_err(path, e))?;
            }
            Entry::File {
                source,
                mode,
                size,
                digest,
            } => {
                let bytes = std::fs::read(source)
                    .map_err(|e| Error::io(format!("reading {}", source.display()), e))?;
                if bytes.len() as u64 != *size || sha256(&bytes) != *digest {
                    return Err(Error::backend(
                        "docker",
                        format!(
                            "{} changed while the node image was being built; try again",
                            source.display()
                        ),
                    ));
                }
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(*mode);
                header.set_size(*size);
                layer
                    .append_data(&mut header, rel, bytes.as_slice())
                    .map_err(|e| tar_err(path, e))?;
            }
            Entry::Data { mode, bytes } => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(*mode);
                header.set_size(bytes.len() as u64);
                layer
                    .append_data(&mut header, rel, bytes.as_slice())
                    .map_err(|e| tar_err(path, e))?;
            }
            Entry::Symlink { target } => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                layer
                    .append_link(&mut header, rel, target)
                    .map_err(|e| tar_err(path, e))?;
            }
        }
    }
    let bytes = layer.into_inner().map_err(|e| tar_err("the layer", e))?;
    let digest = sha256(&bytes);
    Ok((bytes, digest))
}

/// The `docker load` archive of `plan` tagged `tag`: `manifest.json`, the config named by its
/// own SHA-256 (which becomes the image ID) and the one layer.
pub(super) fn write_archive(plan: &Plan, tag: &str) -> Result<Vec<u8>> {
    let (layer, diff_id) = write_layer(plan)?;
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "created": IMAGE_CREATED,
        "config": plan.container_config(),
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{}", hex(&diff_id))] },
        "history": [{ "created": IMAGE_CREATED, "created_by": format!("chaos {tag}") }],
    });
    let config = serde_json::to_vec(&config).map_err(|e| Error::backend("docker", e.to_string()))?;
    let config_name = format!("{}.json", hex(&sha256(&config)));
    let layer_name = format!("{}/layer.tar", hex(&diff_id));
    let manifest = serde_json::json!([{
        "Config": config_name,
        "RepoTags": [tag],
        "Layers": [layer_name],
    }]);
    let manifest = serde_json::to_vec(&manifest).map_err(|e| Error::backend("docker", e.to_string()))?;

    let tar_err = |e| Error::io("packing the node image archive", e);
    let mut archive = tar::Builder::new(Vec::with_capacity(layer.len() + 64 * 1024));
    for (name, bytes) in [
        (layer_name.as_str(), layer.as_slice()),
        (config_name.as_str(), config.as_slice()),
        ("manifest.json", manifest.as_slice()),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o644);
        header.set_mtime(LAYER_MTIME);
        header.set_size(bytes.len() as u64);
        archive.append_data(&mut header, name, bytes).map_err(tar_err)?;
    }
    archive.into_inner().map_err(tar_err)
}

/// Whether the daemon has `reference`. Errors other than "no such image" are the daemon's.
pub(super) async fn image_exists(docker: &Docker, reference: &str) -> Result<bool> {
    match docker.inspect_image(reference).await {
        Ok(_) => Ok(true),
        Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(false),
        Err(e) => Err(Error::backend(
            "docker",
            format!("inspecting image {reference}: {e} (is the Docker daemon running and reachable?)"),
        )),
    }
}

/// One build per process at a time, so concurrent callers in one process build once.
static BUILD_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Writes `plan` as image `tag` and loads it into the daemon, bounded by
/// [`IMAGE_LOAD_TIMEOUT`]. Loading the same plan twice, even from two processes at once, is
/// harmless: the image ID and layer are content-addressed, so the second load finds both and
/// only re-points the tag at the same image.
pub(super) async fn load_image(docker: &Docker, plan: Plan, tag: String) -> Result<()> {
    let started = Instant::now();
    let archive = {
        let tag_ = tag.clone();
        tokio::task::spawn_blocking(move || write_archive(&plan, &tag_))
            .await
            .map_err(|e| Error::backend("docker", format!("packing image {tag}: {e}")))??
    };
    let size = archive.len();
    let mut messages = Vec::new();
    let load = async {
        let options = ImportImageOptions {
            quiet: true,
            ..Default::default()
        };
        let mut stream = docker.import_image(options, bollard::body_full(archive.into()), None);
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => messages.extend(info.stream.or(info.status)),
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(())
    };
    let outcome = tokio::time::timeout(IMAGE_LOAD_TIMEOUT, load).await;
    let said = || {
        let text = messages.concat();
        if text.trim().is_empty() {
            String::new()
        } else {
            format!("; the daemon said: {}", text.trim())
        }
    };
    match outcome {
        Err(_) => {
            return Err(Error::backend(
                "docker",
                format!(
                    "loading image {tag} did not finish within {IMAGE_LOAD_TIMEOUT:?}{}",
                    said()
                ),
            ));
        }
        Ok(Err(e)) => {
            return Err(Error::backend(
                "docker",
                format!("loading image {tag} failed: {e}{}", said()),
            ));
        }
        Ok(Ok(())) => {}
    }
    if !image_exists(docker, &tag).await? {
        return Err(Error::backend(
            "docker",
            format!(
                "loading image {tag} reported success but the daemon does not have it{}",
                said()
            ),
        ));
    }
    tracing::info!(image = %tag, bytes = size, elapsed = ?started.elapsed(), "node image loaded");
    Ok(())
}

/// Ensures the image of `plan` exists as `<repo>:<hash>`; returns that reference.
pub(super) async fn ensure_image(docker: &Docker, plan: Plan, repo: &str) -> Result<String> {
    let tag = plan.tag(repo);
    if image_exists(docker, &tag).await? {
        return Ok(tag);
    }
    let _one_build = BUILD_LOCK.lock().await;
    if image_exists(docker, &tag).await? {
        return Ok(tag);
    }
    load_image(docker, plan, tag.clone()).await?;
    Ok(tag)
}
