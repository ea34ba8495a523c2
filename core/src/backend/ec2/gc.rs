//! `chaos gc --backend ec2 [--region R]`: terminates the instances of crashed runners — tagged
//! `io.chaos.cluster`, whose `io.chaos.expires` passed or whose `io.chaos.owner` is a runner of
//! this host that is gone — and deletes their clusters' leftover objects (bundles, manifests).
//! Runs only when asked for by name (it calls AWS, which a plain `chaos gc` must not need).

use std::collections::BTreeSet;
use std::time::SystemTime;

use aws_sdk_ec2::types::Filter;

use super::aws::Aws;
use super::settings::Ec2Settings;
use super::{discover, objects, tags};
use crate::backend::gc::{GcOptions, GcReport};
use crate::backend::owner;

/// One tagged instance, as gc judges it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tagged {
    /// Instance id.
    pub id: String,
    /// `io.chaos.cluster`.
    pub cluster: String,
    /// `io.chaos.owner`, if any.
    pub owner: Option<String>,
    /// `io.chaos.expires`, if any.
    pub expires: Option<String>,
}

/// Whether `instance` is garbage, and why (or why it is kept).
pub fn judge(instance: &Tagged, all: bool, now: SystemTime) -> (bool, String) {
    if all {
        return (true, "--all".to_string());
    }
    if let Some(expires) = &instance.expires
        && tags::expired(expires, now) == Some(true)
    {
        return (true, format!("expired {expires}"));
    }
    let expiry = instance
        .expires
        .as_deref()
        .map_or_else(|| "no expiry tag".to_string(), |e| format!("expires {e}"));
    match &instance.owner {
        Some(tag) => {
            let (garbage, why) = owner::verdict(tag);
            (garbage, format!("{why}, {expiry}"))
        }
        None => (false, format!("no owner tag, {expiry}")),
    }
}

/// The ec2 collector of `chaos gc` (see the [module documentation](self)).
pub async fn collect_garbage(options: GcOptions) -> GcReport {
    let mut report = GcReport::default();
    if options.backend.as_deref() != Some("ec2") {
        return report;
    }
    let settings = match Ec2Settings::load(options.backend_config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            report.errors.push(format!("ec2: {e}"));
            return report;
        }
    };
    let aws = match Aws::connect(&settings, options.region.as_deref()).await {
        Ok(aws) => aws,
        Err(e) => {
            report.errors.push(e.to_string());
            return report;
        }
    };
    let instances = match tagged_instances(&aws).await {
        Ok(list) => list,
        Err(e) => {
            report.errors.push(e.to_string());
            return report;
        }
    };
    let now = SystemTime::now();
    let mut garbage = Vec::new();
    let mut clusters = BTreeSet::new();
    for instance in &instances {
        let (collect, why) = judge(instance, options.all, now);
        let line = format!(
            "ec2 instance {} (cluster {}, {why})",
            instance.id, instance.cluster
        );
        if collect {
            garbage.push(instance.id.clone());
            clusters.insert(instance.cluster.clone());
            report.removed.push(line);
        } else {
            report.kept.push(line);
        }
    }
    if options.dry_run || garbage.is_empty() {
        return report;
    }
    for chunk in garbage.chunks(super::IDS_PER_CALL) {
        let terminated = aws
            .must(
                "TerminateInstances",
                "chaos gc",
                aws.ec2
                    .terminate_instances()
                    .set_instance_ids(Some(chunk.to_vec()))
                    .send(),
            )
            .await;
        if let Err(e) = terminated {
            report.errors.push(e.to_string());
        }
    }
    // The collected clusters' leftover objects (a killed runner's bundles and manifests).
    match discover(&aws, &settings).await {
        Ok((_, _, bucket)) => {
            for cluster in clusters {
                let prefix = format!("{}/{cluster}/", settings.key_prefix);
                match objects::delete_prefix(&aws, &bucket, &prefix).await {
                    Ok(keys) => report
                        .removed
                        .extend(keys.iter().map(|k| format!("ec2 object s3://{bucket}/{k}"))),
                    Err(e) => report.errors.push(e.to_string()),
                }
            }
        }
        Err(e) => report
            .errors
            .push(format!("leftover objects not looked for: {e}")),
    }
    report
}

/// Every instance tagged `io.chaos.cluster` that is not terminated (or terminating).
async fn tagged_instances(aws: &Aws) -> crate::Result<Vec<Tagged>> {
    let mut found = Vec::new();
    let mut token = None;
    loop {
        let page = aws
            .must(
                "DescribeInstances",
                "chaos gc: instances tagged io.chaos.cluster",
                aws.ec2
                    .describe_instances()
                    .filters(Filter::builder().name("tag-key").values(tags::CLUSTER).build())
                    .filters(
                        Filter::builder()
                            .name("instance-state-name")
                            .values("pending")
                            .values("running")
                            .values("stopping")
                            .values("stopped")
                            .build(),
                    )
                    .set_next_token(token.take())
                    .send(),
            )
            .await?;
        for instance in page.reservations().iter().flat_map(|r| r.instances()) {
            let tag = |key: &str| {
                instance
                    .tags()
                    .iter()
                    .find(|t| t.key() == Some(key))
                    .and_then(|t| t.value())
                    .map(str::to_string)
            };
            if let (Some(id), Some(cluster)) = (instance.instance_id(), tag(tags::CLUSTER)) {
                found.push(Tagged {
                    id: id.to_string(),
                    cluster,
                    owner: tag(tags::OWNER),
                    expires: tag(tags::EXPIRES),
                });
            }
        }
        match page.next_token() {
            Some(next) if !next.is_empty() => token = Some(next.to_string()),
            _ => return Ok(found),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tagged(owner: Option<&str>, expires: Option<&str>) -> Tagged {
        Tagged {
            id: "i-1".into(),
            cluster: "c-1".into(),
            owner: owner.map(str::to_string),
            expires: expires.map(str::to_string),
        }
    }

    #[test]
    fn expired_or_dead_owner_is_garbage() {
        let now = SystemTime::now();
        let future = tags::expires_in(std::time::Duration::from_secs(3600));
        let me = owner::current_tag();
        let dead = format!("{}:{}:1", owner::hostname(), (1u32 << 22) + 1);
        assert!(judge(&tagged(Some(&me), Some("2020-01-01T00:00:00Z")), false, now).0);
        assert!(!judge(&tagged(Some(&me), Some(&future)), false, now).0);
        assert!(judge(&tagged(Some(&dead), Some(&future)), false, now).0);
        let (keep, why) = judge(&tagged(Some("elsewhere:1:1"), Some(&future)), false, now);
        assert!(!keep && why.contains("not ours"), "{why}");
        assert!(!judge(&tagged(None, None), false, now).0);
        assert!(judge(&tagged(None, None), true, now).0);
    }
}
