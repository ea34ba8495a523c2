//! The tags every instance and volume of a cluster carries from launch, which `chaos gc` reads.

use std::time::{Duration, SystemTime};

/// The cluster's id (`<name>-<8 hex>`).
pub const CLUSTER: &str = "io.chaos.cluster";
/// The runner's [owner tag](crate::backend::owner) (`<host>:<pid>:<start>`).
pub const OWNER: &str = "io.chaos.owner";
/// When the instance is garbage even if its runner cannot be judged (RFC 3339, UTC); the live
/// runner pushes it forward at a third of the expiry.
pub const EXPIRES: &str = "io.chaos.expires";
/// On the resources of `infra/`'s stack: the stack's name, by which the backend finds them.
pub const STACK: &str = "io.chaos.stack";

/// The expiry tag's value `ttl` from now.
pub fn expires_in(ttl: Duration) -> String {
    humantime::format_rfc3339_seconds(SystemTime::now() + ttl).to_string()
}

/// Whether an expiry tag's value is in the past; `None` when it cannot be read.
pub fn expired(value: &str, now: SystemTime) -> Option<bool> {
    humantime::parse_rfc3339(value).ok().map(|at| at <= now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_round_trips() {
        let now = SystemTime::now();
        assert_eq!(expired(&expires_in(Duration::from_secs(60)), now), Some(false));
        assert_eq!(expired("2020-01-01T00:00:00Z", now), Some(true));
        assert_eq!(expired("tomorrow", now), None);
    }
}
