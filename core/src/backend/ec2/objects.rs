//! The bucket's objects: the agent binary (once per content hash), one TLS bundle per node and
//! one manifest per batch, and the presigned GET URLs the nodes fetch them through.

use std::time::Duration;

use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;

use super::aws::{Aws, CallError, error};
use crate::Result;

/// Uploads `body` to `key` (private; server-side encrypted by the bucket's default).
pub(super) async fn put(aws: &Aws, bucket: &str, key: &str, body: Vec<u8>) -> Result<()> {
    aws.must(
        "PutObject",
        &format!("s3://{bucket}/{key}"),
        aws.s3
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(ByteStream::from(body))
            .send(),
    )
    .await
    .map(drop)
}

/// Deletes `key` (deleting a missing key succeeds).
pub(super) async fn delete(aws: &Aws, bucket: &str, key: &str) -> Result<()> {
    aws.must(
        "DeleteObject",
        &format!("s3://{bucket}/{key}"),
        aws.s3.delete_object().bucket(bucket).key(key).send(),
    )
    .await
    .map(drop)
}

/// A presigned GET URL for `key`, valid for `ttl` (signed locally: no API call).
pub(super) async fn presign(aws: &Aws, bucket: &str, key: &str, ttl: Duration) -> Result<String> {
    let config = PresigningConfig::expires_in(ttl)
        .map_err(|e| error(format!("presigning s3://{bucket}/{key} for {ttl:?}: {e}")))?;
    let request = aws
        .s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .presigned(config)
        .await
        .map_err(|e| error(format!("presigning s3://{bucket}/{key}: {e}")))?;
    Ok(request.uri().to_string())
}

/// Uploads the agent binary at `key` unless an object is there already (the key names the
/// binary's content hash, so an object there is this binary).
pub(super) async fn ensure(
    aws: &Aws,
    bucket: &str,
    key: &str,
    body: impl FnOnce() -> Result<Vec<u8>>,
) -> Result<()> {
    let what = format!("s3://{bucket}/{key}");
    match aws
        .call(
            "HeadObject",
            &what,
            aws.s3.head_object().bucket(bucket).key(key).send(),
        )
        .await
    {
        Ok(_) => return Ok(()),
        Err(CallError::Service { code, .. }) if code == "NotFound" || code == "NoSuchKey" => {}
        // HEAD errors carry no body, so "not found" may come without a code: upload anyway.
        Err(CallError::Other(message)) if message.contains("NotFound") || message.contains("404") => {}
        Err(e) => return Err(error(e.message().to_string())),
    }
    put(aws, bucket, key, body()?).await
}

/// Every key under `prefix`.
pub(super) async fn list(aws: &Aws, bucket: &str, prefix: &str) -> Result<Vec<String>> {
    let mut keys = Vec::new();
    let mut token = None;
    loop {
        let page = aws
            .must(
                "ListObjectsV2",
                &format!("s3://{bucket}/{prefix}"),
                aws.s3
                    .list_objects_v2()
                    .bucket(bucket)
                    .prefix(prefix)
                    .set_continuation_token(token.take())
                    .send(),
            )
            .await?;
        keys.extend(page.contents().iter().filter_map(|o| o.key().map(str::to_string)));
        match page.next_continuation_token() {
            Some(next) if page.is_truncated() == Some(true) => token = Some(next.to_string()),
            _ => return Ok(keys),
        }
    }
}

/// Deletes every key under `prefix`; returns the keys deleted.
pub(super) async fn delete_prefix(aws: &Aws, bucket: &str, prefix: &str) -> Result<Vec<String>> {
    let keys = list(aws, bucket, prefix).await?;
    for key in &keys {
        delete(aws, bucket, key).await?;
    }
    Ok(keys)
}
