//! The AWS clients of the `ec2` backend and the one way every call is made: bounded, counted,
//! and with errors that name the call, what it was for and the bound.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use aws_config::{BehaviorVersion, Region};
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_smithy_http_client::tls;

use super::settings::Ec2Settings;
use crate::{Error, Result};

/// The backend's name in errors.
pub(super) const BACKEND: &str = "ec2";

pub(super) fn error(message: impl Into<String>) -> Error {
    Error::backend(BACKEND, message)
}

/// EC2 and S3 clients sharing one configuration (credentials and region from the standard AWS
/// chain, `AWS_ENDPOINT_URL` honoured; the settings' `region`, `endpoint_url` and `emulator`
/// override it), and a count of the calls made, per call name.
pub struct Aws {
    pub(super) ec2: aws_sdk_ec2::Client,
    pub(super) s3: aws_sdk_s3::Client,
    /// The region the clients use.
    pub region: String,
    bound: Duration,
    calls: Mutex<BTreeMap<&'static str, u64>>,
}

/// How an AWS call failed.
pub(super) enum CallError {
    /// The service answered with an error code (e.g. `InsufficientInstanceCapacity`).
    Service {
        /// The error code.
        code: String,
        /// The whole error, for messages.
        message: String,
    },
    /// No answer in time, or no answer at all (network, credentials).
    Other(String),
}

impl CallError {
    pub(super) fn message(&self) -> &str {
        match self {
            CallError::Service { message, .. } | CallError::Other(message) => message,
        }
    }
}

impl Aws {
    /// Clients for `settings` (its region, else the chain's; `region` overrides both).
    pub async fn connect(settings: &Ec2Settings, region: Option<&str>) -> Result<Self> {
        // HTTPS through rustls on ring (the workspace's TLS stack), not the SDK's default aws-lc.
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
            .build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(http);
        if let Some(region) = region.or(settings.region.as_deref()) {
            loader = loader.region(Region::new(region.to_string()));
        }
        if let Some(endpoint) = &settings.endpoint_url {
            loader = loader.endpoint_url(endpoint);
        }
        // An emulator checks no signature: placeholder credentials, and no look-up that could
        // find real ones (or ask an instance metadata service).
        if settings.emulator {
            loader = loader.test_credentials();
        }
        let shared = tokio::time::timeout(settings.api_timeout, loader.load())
            .await
            .map_err(|_| {
                error(format!(
                    "loading the AWS configuration took over {:?}",
                    settings.api_timeout
                ))
            })?;
        let region = shared.region().map(|r| r.to_string()).ok_or_else(|| {
            error("no AWS region: set `region` in the ec2 settings file (--backend-config) or AWS_REGION")
        })?;
        let ec2 = aws_sdk_ec2::Client::new(&shared);
        // An explicit endpoint (an emulator, a VPC endpoint) serves buckets by path, not by host.
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&shared)
                .force_path_style(shared.endpoint_url().is_some())
                .build(),
        );
        Ok(Self {
            ec2,
            s3,
            region,
            bound: settings.api_timeout,
            calls: Mutex::new(BTreeMap::new()),
        })
    }

    /// Makes one call (`name`, e.g. `RunInstances`, `what` says what for), bounded by the API
    /// timeout, and counts it.
    pub(super) async fn call<T, E>(
        &self,
        name: &'static str,
        what: &str,
        call: impl Future<Output = std::result::Result<T, E>>,
    ) -> std::result::Result<T, CallError>
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        *self
            .calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name)
            .or_default() += 1;
        match tokio::time::timeout(self.bound, call).await {
            Err(_) => Err(CallError::Other(format!(
                "{name} ({what}) did not answer within {:?}",
                self.bound
            ))),
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                let message = format!("{name} ({what}) failed: {}", DisplayErrorContext(&e));
                Err(match e.code() {
                    Some(code) => CallError::Service {
                        code: code.to_string(),
                        message,
                    },
                    None => CallError::Other(message),
                })
            }
        }
    }

    /// [`Aws::call`] with every failure as the backend's error.
    pub(super) async fn must<T, E>(
        &self,
        name: &'static str,
        what: &str,
        call: impl Future<Output = std::result::Result<T, E>>,
    ) -> Result<T>
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        self.call(name, what, call)
            .await
            .map_err(|e| error(e.message().to_string()))
    }

    /// The EC2 client (for tools and test harnesses that look at what the backend made).
    pub fn ec2(&self) -> &aws_sdk_ec2::Client {
        &self.ec2
    }

    /// The S3 client.
    pub fn s3(&self) -> &aws_sdk_s3::Client {
        &self.s3
    }

    /// How many calls of each kind were made so far.
    pub fn calls(&self) -> BTreeMap<&'static str, u64> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
