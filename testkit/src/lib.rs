//! Test support shared by every test suite of the workspace: which machine capabilities a test
//! may skip without, and bounds that stretch on a busy machine.
//!
//! # Skips that CI can see
//!
//! A test that needs something the machine may lack (root, Docker, etcd, …) calls [`skip`]
//! instead of printing and returning on its own. Normally that prints why and lets the test
//! return — but when the capability is listed in `CHAOS_REQUIRE` (comma-separated names, or
//! `all`), it panics instead: CI sets the variable to what its machine has, so a capability
//! that went missing fails loudly rather than turning into a silent green run.
//!
//! ```
//! # fn probe() -> Result<(), String> { Ok(()) }
//! if let Err(why) = probe() {
//!     chaos_testkit::skip("my_test", "docker", &why);
//!     return;
//! }
//! ```
//!
//! # Bounds on a busy machine
//!
//! Tests that wait for recovery (a node answering again, a fault healing) bound the wait.
//! [`scaled`] multiplies such a bound by `CHAOS_TIMEOUT_SCALE` (a positive number, default 1),
//! so a shared CI machine can stretch every bound at once instead of each test guessing how
//! busy the machine will be. Benchmarks measure speed; tests only bound hangs.

use std::time::Duration;

/// Environment variable listing the capabilities whose absence fails a test instead of
/// skipping it: comma-separated names (see [`CAPABILITIES`]) or `all`.
pub const REQUIRE_ENV: &str = "CHAOS_REQUIRE";

/// Environment variable multiplying every bound passed through [`scaled`].
pub const TIMEOUT_SCALE_ENV: &str = "CHAOS_TIMEOUT_SCALE";

/// The capability names tests use, with what each means.
pub const CAPABILITIES: &[(&str, &str)] = &[
    (
        "root",
        "running as root: network namespaces, veths, nftables, cgroups",
    ),
    (
        "cgroup2",
        "a writable cgroup v2 hierarchy with cgroup.freeze and cgroup.kill",
    ),
    (
        "netns",
        "the netns backend: root, cgroup v2 and a built chaos-agent",
    ),
    (
        "docker",
        "a reachable Docker daemon and busybox-static for the node image",
    ),
    ("etcd", "Debian's etcd-server and etcd-client"),
    (
        "hosts",
        "the hosts backend's simulated lab: what netns needs (its agents run in namespaces)",
    ),
    (
        "systemd",
        "systemd-analyze (Debian's systemd), to verify the agent's generated unit",
    ),
    (
        "sshd",
        "Debian's openssh-server and openssh-client, for `chaos hosts push` against an sshd",
    ),
    ("redis", "Debian's redis-server (redis-server and redis-cli)"),
    (
        "zookeeper",
        "Debian's zookeeper 3.8 and its OpenJDK 17 (/usr/share/java/zookeeper.jar, /usr/lib/jvm/java-17-openjdk-amd64)",
    ),
    ("python", "python3, for the Python adapter example"),
    (
        "postgres",
        "Debian's postgresql (version 15, /usr/lib/postgresql/15/bin)",
    ),
    ("chromium", "a headless Chromium to check the HTML report"),
    (
        "patroni",
        "Debian's patroni, postgresql (15) and etcd-server, for scenarios/postgres-patroni.toml on netns",
    ),
    ("perl", "perl, for the UDP traffic probe of the fault tests"),
    (
        "agent",
        "the chaos-agent binary built next to the test executables",
    ),
    (
        "moto",
        "moto_server (PyPI moto[server]), the AWS API emulator the ec2 backend is tested against",
    ),
    (
        "ec2",
        "the ec2 backend compiled in (cargo feature ec2) with an AWS configuration",
    ),
    (
        "cfn-lint",
        "cfn-lint (PyPI), which checks infra/'s CloudFormation template",
    ),
    (
        "external",
        "minutes to build examples/external cold (cargo, the crates.io dependencies at hand)",
    ),
];

/// Whether `capability` is listed in `CHAOS_REQUIRE` (or the list is `all`).
///
/// # Panics
///
/// When `CHAOS_REQUIRE` names a capability that is not in [`CAPABILITIES`]: a misspelt name
/// would otherwise require nothing, and the tests it meant would skip silently.
pub fn required(capability: &str) -> bool {
    let list = std::env::var(REQUIRE_ENV).ok();
    if let Err(unknown) = check_list(list.as_deref()) {
        panic!("{unknown}");
    }
    required_in(list.as_deref(), capability)
}

fn names(list: Option<&str>) -> impl Iterator<Item = &str> {
    list.unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
}

fn required_in(list: Option<&str>, capability: &str) -> bool {
    names(list).any(|name| name == "all" || name == capability)
}

/// Refuses a list naming anything but `all` and the [`CAPABILITIES`].
fn check_list(list: Option<&str>) -> Result<(), String> {
    let known = |name: &str| name == "all" || CAPABILITIES.iter().any(|(n, _)| *n == name);
    match names(list).find(|name| !known(name)) {
        None => Ok(()),
        Some(unknown) => {
            let valid: Vec<&str> = CAPABILITIES.iter().map(|(n, _)| *n).collect();
            Err(format!(
                "{REQUIRE_ENV} names {unknown:?}, which is not a capability; valid: all, {}",
                valid.join(", ")
            ))
        }
    }
}

/// Reports that `test` cannot run because `capability` is missing (`why` says how it was
/// found missing). Prints a line and returns — or, when the capability is required (see
/// [`required`]), panics with the same text, failing the test.
///
/// # Panics
///
/// When `capability` is listed in `CHAOS_REQUIRE`.
#[track_caller]
pub fn skip(test: &str, capability: &str, why: &dyn std::fmt::Display) {
    if required(capability) {
        panic!(
            "{test}: needs {capability} ({}), which {REQUIRE_ENV} requires, but: {why}",
            describe(capability)
        );
    }
    eprintln!("{test}: skipping, needs {capability}: {why}");
}

/// What a capability name means, for messages.
pub fn describe(capability: &str) -> &'static str {
    CAPABILITIES
        .iter()
        .find(|(name, _)| *name == capability)
        .map_or("a capability of this machine", |(_, what)| what)
}

/// The multiplier from `CHAOS_TIMEOUT_SCALE` (default 1; values that are not a positive finite
/// number are ignored with a warning, so a typo never shrinks a bound to nothing).
pub fn timeout_scale() -> f64 {
    parse_scale(std::env::var(TIMEOUT_SCALE_ENV).ok().as_deref())
}

fn parse_scale(value: Option<&str>) -> f64 {
    match value.map(str::trim) {
        None | Some("") => 1.0,
        Some(text) => match text.parse::<f64>() {
            Ok(v) if v.is_finite() && v > 0.0 => v,
            _ => {
                eprintln!("{TIMEOUT_SCALE_ENV}={text:?} is not a positive number; using 1");
                1.0
            }
        },
    }
}

/// `bound` multiplied by [`timeout_scale`]: use it for every wait a test bounds.
pub fn scaled(bound: Duration) -> Duration {
    bound.mul_f64(timeout_scale())
}

/// A TCP port of 127.0.0.1 that nothing listens on now: the OS picks it, this binds and releases
/// it, and the caller's server binds it right after. (Another process could take it in between;
/// the OS hands out ports in turn, so that needs many binds in that instant.)
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0 for a free port")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_require_list_names_capabilities_or_all() {
        assert!(required_in(Some("root, docker"), "docker"));
        assert!(required_in(Some("all"), "etcd"));
        assert!(!required_in(Some("root"), "docker"));
        assert!(!required_in(Some(""), "root"));
        assert!(!required_in(None, "root"));
        assert!(!required_in(Some("dockerd"), "docker"));
    }

    #[test]
    fn a_misspelt_capability_is_refused() {
        assert!(check_list(Some("root, docker,etcd")).is_ok());
        assert!(check_list(Some("all")).is_ok());
        assert!(check_list(None).is_ok());
        let err = check_list(Some("root,dokcer")).unwrap_err();
        assert!(err.contains("\"dokcer\"") && err.contains("docker"), "{err}");
    }

    #[test]
    fn a_bad_scale_never_shrinks_a_bound() {
        assert_eq!(parse_scale(None), 1.0);
        assert_eq!(parse_scale(Some("2.5")), 2.5);
        for bad in ["0", "-1", "NaN", "inf", "fast"] {
            assert_eq!(parse_scale(Some(bad)), 1.0, "{bad}");
        }
    }

    #[test]
    fn every_capability_is_described() {
        for (name, what) in CAPABILITIES {
            assert_eq!(describe(name), *what);
        }
        assert_eq!(describe("nope"), "a capability of this machine");
    }
}
