//! Where a cluster's instances go, looked up before the first launch: subnets, security group
//! and bucket (the settings', else the outputs of `infra/`'s stack), and the AMI when none is
//! named.

#[allow(unused_imports)]
use super::*;

/// Subnets, security group and bucket: the settings', else those `infra/`'s stack tagged.
pub(super) async fn discover(
    aws: &Aws,
    settings: &Ec2Settings,
) -> Result<(Vec<String>, Option<String>, String)> {
    let stack = &settings.stack;
    let by_stack = || {
        Filter::builder()
            .name(format!("tag:{}", tags::STACK))
            .values(stack)
            .build()
    };
    let missing = |what: &str, field: &str| {
        error(format!(
            "no {what}: none named in the ec2 settings (`{field}`) and none tagged {}={stack} in region {}; \
             deploy infra/ (docs/ec2.md) or name one",
            tags::STACK,
            aws.region
        ))
    };
    let subnets = if settings.subnets.is_empty() {
        let out = aws
            .must(
                "DescribeSubnets",
                &format!("subnets of stack {stack}"),
                aws.ec2.describe_subnets().filters(by_stack()).send(),
            )
            .await?;
        let mut found: Vec<(String, String)> = out
            .subnets()
            .iter()
            .filter_map(|s| Some((s.availability_zone()?.to_string(), s.subnet_id()?.to_string())))
            .collect();
        found.sort();
        if found.is_empty() {
            return Err(missing("subnet", "subnets"));
        }
        found.into_iter().map(|(_, id)| id).collect()
    } else {
        settings.subnets.clone()
    };
    let security_group = match &settings.security_group {
        Some(group) => Some(group.clone()),
        None => {
            let out = aws
                .must(
                    "DescribeSecurityGroups",
                    &format!("security group of stack {stack}"),
                    aws.ec2.describe_security_groups().filters(by_stack()).send(),
                )
                .await?;
            let group = out
                .security_groups()
                .iter()
                .find_map(|g| g.group_id().map(str::to_string));
            Some(group.ok_or_else(|| missing("security group", "security_group"))?)
        }
    };
    let bucket = match &settings.bucket {
        Some(bucket) => bucket.clone(),
        None => {
            let out = aws
                .must(
                    "ListBuckets",
                    &format!("bucket of stack {stack}"),
                    aws.s3.list_buckets().send(),
                )
                .await?;
            let prefix = format!("{stack}-");
            let found: Vec<&str> = out
                .buckets()
                .iter()
                .filter_map(|b| b.name())
                .filter(|n| n.starts_with(&prefix))
                .collect();
            match found.as_slice() {
                [one] => one.to_string(),
                [] => return Err(missing("bucket", "bucket")),
                many => {
                    return Err(error(format!(
                        "several buckets start with {prefix:?} ({}); name one as `bucket` in the ec2 settings",
                        many.join(", ")
                    )));
                }
            }
        }
    };
    Ok((subnets, security_group, bucket))
}

/// The newest Amazon Linux 2023 minimal AMI for x86_64 (the static agent's architecture).
pub(super) async fn newest_amazon_linux(aws: &Aws) -> Result<String> {
    let out = aws
        .must(
            "DescribeImages",
            "the newest Amazon Linux 2023 AMI",
            aws.ec2
                .describe_images()
                .owners("amazon")
                .filters(
                    Filter::builder()
                        .name("name")
                        .values("al2023-ami-minimal-*-x86_64")
                        .build(),
                )
                .filters(Filter::builder().name("state").values("available").build())
                .send(),
        )
        .await?;
    out.images()
        .iter()
        .filter_map(|i| Some((i.creation_date()?.to_string(), i.image_id()?.to_string())))
        .max()
        .map(|(_, id)| id)
        .ok_or_else(|| {
            error(format!(
                "no Amazon Linux 2023 x86_64 AMI found in region {}; name one as `ami` in the ec2 settings",
                aws.region
            ))
        })
}
