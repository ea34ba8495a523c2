//! The `ec2` backend's settings file (`--backend-config FILE`, TOML): where to launch, what,
//! and how to reach the nodes. Every field is optional; see `docs/ec2.md` for the whole list.
//!
//! ```toml
//! region = "eu-west-1"              # else the standard AWS chain (AWS_REGION, profile)
//! stack = "chaos-infra"             # discover subnets, security group and bucket (infra/)
//! instance_types = ["t3.micro", "t3a.micro"]   # tried in order on capacity errors
//! batch_size = 50                   # instances per RunInstances call
//! address = "private"               # or "public": which address the runner dials
//! ```

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::{Error, Result};

/// Which address of an instance the runner dials (and the node certificate names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Address {
    /// The private address: the runner runs in the VPC (or reaches it over a VPN/peering).
    #[default]
    Private,
    /// The public address: the runner is outside the VPC; the security group must admit it.
    Public,
}

/// The settings of an `ec2` cluster. See the [module documentation](self).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ec2Settings {
    /// AWS region; `None` takes the standard chain's.
    pub region: Option<String>,
    /// Endpoint of every AWS call (an emulator, a private endpoint); `None` takes the standard
    /// chain's (`AWS_ENDPOINT_URL`, else AWS's own).
    pub endpoint_url: Option<String>,
    /// The endpoint is an AWS API emulator that checks no signature (moto): sign with
    /// placeholder credentials and never look up real ones. Needs `endpoint_url`.
    pub emulator: bool,
    /// CloudFormation stack of `infra/` whose resources (tagged `io.chaos.stack = <stack>`)
    /// supply subnets, security group and bucket not named explicitly.
    pub stack: String,
    /// Subnets to launch into, tried in order when one lacks capacity.
    pub subnets: Vec<String>,
    /// Security group of the nodes (admits the agent port from the runner only).
    pub security_group: Option<String>,
    /// Private bucket for the agent binary and the nodes' TLS bundles.
    pub bucket: Option<String>,
    /// Instance types, tried in order when one lacks capacity.
    pub instance_types: Vec<String>,
    /// AMI; `None` looks up the newest Amazon Linux 2023 (x86_64) AMI.
    pub ami: Option<String>,
    /// Instances per RunInstances call.
    pub batch_size: u32,
    /// Which address the runner dials.
    pub address: Address,
    /// TCP port the agents listen on.
    pub agent_port: u16,
    /// Name of the nodes' network interface (faults on an interface default to it).
    pub interface: String,
    /// Directory on the node for the agent, its TLS files and the node's root.
    pub node_dir: String,
    /// Key prefix of the objects in the bucket.
    pub key_prefix: String,
    /// How far ahead `io.chaos.expires` is set (and refreshed by the live runner).
    #[serde(with = "humantime_serde_compat")]
    pub expiry: Duration,
    /// Lifetime of the presigned URLs in user data.
    #[serde(with = "humantime_serde_compat")]
    pub url_ttl: Duration,
    /// Bound on an instance booting and its agent listening.
    #[serde(with = "humantime_serde_compat")]
    pub boot_timeout: Duration,
    /// Bound on one AWS API call (retries included).
    #[serde(with = "humantime_serde_compat")]
    pub api_timeout: Duration,
    /// Whether cleanup waits until every instance is `terminated`.
    pub wait_terminated: bool,
}

impl Default for Ec2Settings {
    fn default() -> Self {
        Self {
            region: None,
            endpoint_url: None,
            emulator: false,
            stack: "chaos-infra".to_string(),
            subnets: Vec::new(),
            security_group: None,
            bucket: None,
            instance_types: vec!["t3.micro".to_string(), "t3a.micro".to_string()],
            ami: None,
            batch_size: 50,
            address: Address::Private,
            agent_port: 7443,
            interface: "ens5".to_string(),
            node_dir: "/run/chaos-agent".to_string(),
            key_prefix: "chaos".to_string(),
            expiry: Duration::from_secs(3600),
            url_ttl: Duration::from_secs(900),
            boot_timeout: Duration::from_secs(300),
            api_timeout: Duration::from_secs(60),
            wait_terminated: false,
        }
    }
}

impl Ec2Settings {
    /// Reads the settings file; defaults when `path` is `None`. Errors name the file and field.
    pub fn load(path: Option<&Path>) -> Result<Self> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::invalid(
                path.display().to_string(),
                format!("reading the ec2 settings: {e}"),
            )
        })?;
        Self::parse(&text, path)
    }

    /// Parses settings text (`origin` names it in errors).
    pub fn parse(text: &str, origin: &Path) -> Result<Self> {
        let settings: Self = toml::from_str(text)
            .map_err(|e| Error::invalid(origin.display().to_string(), format!("ec2 settings: {e}")))?;
        settings.check(origin)?;
        Ok(settings)
    }

    fn check(&self, origin: &Path) -> Result<()> {
        let bad = |field: &str, why: &str| {
            Err(Error::invalid(
                format!("{}: {field}", origin.display()),
                why.to_string(),
            ))
        };
        if self.emulator && self.endpoint_url.is_none() {
            return bad(
                "emulator",
                "needs `endpoint_url`: the emulator's address (never AWS's own endpoint)",
            );
        }
        if let Some(url) = &self.endpoint_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return bad("endpoint_url", "must be an http:// or https:// URL");
        }
        if self.batch_size == 0 || self.batch_size > 1000 {
            return bad("batch_size", "must be between 1 and 1000");
        }
        if self.instance_types.is_empty() {
            return bad("instance_types", "name at least one instance type");
        }
        if self.url_ttl < Duration::from_secs(60) || self.url_ttl > Duration::from_secs(7 * 24 * 3600) {
            return bad(
                "url_ttl",
                "must be between 1m and 7d (S3's limit for presigned URLs)",
            );
        }
        if self.expiry < Duration::from_secs(60) {
            return bad(
                "expiry",
                "must be at least 1m (the runner refreshes it at a third)",
            );
        }
        if !self.node_dir.starts_with('/') || self.node_dir.contains(['\'', '"', '$', '`', '\\', ' ']) {
            return bad(
                "node_dir",
                "must be an absolute path without quotes, spaces, `$` or backslashes",
            );
        }
        if self.interface.is_empty()
            || !self
                .interface
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            return bad(
                "interface",
                "must be an interface name (letters, digits, `.`, `_`, `-`)",
            );
        }
        Ok(())
    }
}

/// Durations as humantime text (`30s`, `15m`) in the settings file.
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map_err(|e| serde::de::Error::custom(format!("{text:?}: {e} (use a duration like 30s or 15m)")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_fields_parse() {
        let s = Ec2Settings::parse(
            "region = \"eu-west-1\"\nsubnets = [\"subnet-1\"]\nbatch_size = 10\naddress = \"public\"\nexpiry = \"2h\"\n",
            Path::new("ec2.toml"),
        )
        .unwrap();
        assert_eq!(s.region.as_deref(), Some("eu-west-1"));
        assert_eq!(s.batch_size, 10);
        assert_eq!(s.address, Address::Public);
        assert_eq!(s.expiry, Duration::from_secs(7200));
        assert_eq!(s.agent_port, 7443);
    }

    #[test]
    fn bad_fields_are_named() {
        let e = Ec2Settings::parse("batch_size = 0\n", Path::new("ec2.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("ec2.toml") && e.contains("batch_size"), "{e}");
        let e = Ec2Settings::parse("subnet = []\n", Path::new("ec2.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("subnet"), "{e}");
        let e = Ec2Settings::parse("emulator = true\n", Path::new("ec2.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("emulator") && e.contains("endpoint_url"), "{e}");
        let e = Ec2Settings::parse("endpoint_url = \"localhost:5000\"\n", Path::new("ec2.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("endpoint_url") && e.contains("http://"), "{e}");
        let e = Ec2Settings::parse("url_ttl = \"forever\"\n", Path::new("ec2.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("forever"), "{e}");
    }
}
