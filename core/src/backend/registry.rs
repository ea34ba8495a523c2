//! The one list of backends. Everything that names backends — the scenario model's `backend`
//! field, `chaos up --backend`, `chaos gc`, node limits, the engine, the test kit — takes the
//! list from [`all`] and the entries from [`find`].
//!
//! Adding a backend is one module that defines its [`Backend`] entry (`pub const BACKEND`) and
//! one line in [`registered_backends!`](crate::registered_backends), the registration list that
//! both [`all`] and the per-backend tests ([`backend_tests!`](crate::backend_tests)) expand.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use chaos_proto::MachineFault;

use super::ClusterOptions;
use super::gc::{GcOptions, GcReport};
use super::provision::Limits;
use super::workspace_binary::Linkage;
use crate::Result;
use crate::cluster::Cluster;

/// A boxed future, as the registry's function pointers return.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A backend's constructor: an empty cluster from the options.
pub type Create = fn(ClusterOptions) -> BoxFuture<Result<Arc<dyn Cluster>>>;

/// One backend, as the registry knows it.
pub struct Backend {
    /// Its name, as on the command line and in scenario files (`netns`).
    pub name: &'static str,
    /// One line saying what a node is on this backend.
    pub summary: &'static str,
    /// Whether it can run here: `Err` holds one line naming what is missing and what to do,
    /// without the backend's name, which every caller's message adds once.
    pub availability: fn() -> Result<(), String>,
    /// Creates an empty cluster.
    pub create: Create,
    /// Collects what crashed runners left on this backend (`chaos gc`); `None` for a backend
    /// that leaves nothing behind.
    pub collect_garbage: Option<fn(GcOptions) -> BoxFuture<GcReport>>,
    /// Its limits.
    pub limits: Limits,
    /// Whether each node has a network stack of its own, so that network faults (partitions,
    /// loss, delay) can be confined to one node.
    pub isolated_network: bool,
    /// The machine faults its clusters offer ([`crate::Cluster::machine_faults`]).
    pub machine_faults: &'static [MachineFault],
    /// Whether its machines carry labels a cluster may be chosen by
    /// ([`ClusterOptions::host_labels`], a scenario's `[cluster] labels`); the others refuse a
    /// selector rather than ignore it.
    pub host_labels: bool,
    /// What a binary shipped to its nodes must be: [`Linkage::Any`] where nodes share the
    /// runner's files and libraries (`netns`, `local`), [`Linkage::Static`] where they may not
    /// (containers, other machines). A scenario's `[[setup.ship]] builtin` is obtained so.
    pub ship_linkage: Linkage,
}

impl Backend {
    /// Creates an empty cluster on this backend; fails with one line naming what is missing when
    /// it cannot run here.
    pub async fn create(&self, options: ClusterOptions) -> Result<Arc<dyn Cluster>> {
        if !self.host_labels && !options.host_labels.is_empty() {
            return Err(crate::Error::backend(
                self.name,
                format!(
                    "cluster {}: asked for hosts labelled {} but {} machines carry no labels; \
                     remove `labels` from [cluster] or use the hosts backend (docs/bare-metal.md)",
                    options.name,
                    super::format_labels(&options.host_labels),
                    self.name
                ),
            ));
        }
        (self.create)(options).await
    }

    /// Whether it can run here: `Err` holds one line naming what is missing and what to do,
    /// without the backend's name, which every caller's message adds once.
    pub fn availability(&self) -> Result<(), String> {
        (self.availability)()
    }
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backend")
            .field("name", &self.name)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// Backends are equal when their names are (names are unique in the registry).
impl PartialEq for Backend {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for Backend {}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

/// THE registration list: every backend module of [`crate::backend`], with the condition under
/// which it is compiled, in the order tests try them. Calls the macro at the given path with
/// `ARGS ; name, name, …` (each name with its `#[cfg]`), so that [`all`] and
/// [`backend_tests!`](crate::backend_tests) are generated from the same list. (The conditions
/// are evaluated in this crate only: [`backend_tests!`](crate::backend_tests) ignores them and
/// asks `registry::available` at run time.)
#[macro_export]
macro_rules! registered_backends {
    ($($callback:ident)::+ { $($args:tt)* }) => {
        $($callback)::+! {
            $($args)* ;
            local,
            #[cfg(target_os = "linux")] netns,
            #[cfg(feature = "docker")] docker,
            #[cfg(feature = "ec2")] ec2,
            hosts,
        }
    };
}

/// Collects the `BACKEND` entries of the registered modules.
macro_rules! entries {
    ( ; $( $(#[$condition:meta])* $name:ident, )* ) => {{
        // Pushed one by one: a `#[cfg]` cannot sit on an element of `vec![…]`.
        let mut all = Vec::with_capacity(8);
        $( $(#[$condition])* all.push(super::$name::BACKEND); )*
        all
    }};
}

/// Every backend compiled in, in the order tests try them (see [`registered_backends!`]).
pub fn all() -> &'static [Backend] {
    static ALL: OnceLock<Vec<Backend>> = OnceLock::new();
    ALL.get_or_init(|| registered_backends!(entries {}))
}

/// The backend named `name` when it is compiled in and can run here; otherwise the one line
/// that says why not, for a test to skip with.
pub fn available(name: &str) -> Result<&'static Backend, String> {
    let backend = find(name).map_err(|_| format!("the {name} backend is not compiled into this build"))?;
    backend
        .availability()
        .map_err(|why| format!("{name} backend: {why}"))?;
    Ok(backend)
}

/// The backend named `name` when it and its test bed ([`test_bed`]) can run here; otherwise
/// the one line that says why not, for a test to skip with. For a backend whose test bed
/// supplies its whole configuration (`ec2`: an emulator, named in the settings file), the test
/// bed's availability replaces the backend's own check, which looks for an AWS account.
pub fn available_for_tests(name: &str) -> Result<&'static Backend, String> {
    if bed_supplies_configuration(name) {
        let backend =
            find(name).map_err(|_| format!("the {name} backend is not compiled into this build"))?;
        test_bed_availability(name)?;
        return Ok(backend);
    }
    let backend = available(name)?;
    test_bed_availability(name)?;
    Ok(backend)
}

/// Whether the test bed of `name` supplies everything the backend would find in the
/// environment (see [`available_for_tests`]).
fn bed_supplies_configuration(name: &str) -> bool {
    name == "ec2"
}

/// Writes one test per registered backend for each named check: `backend_tests!(hello);` with
/// `async fn hello(cluster: Arc<dyn chaos::Cluster>)` in scope expands to a module `hello` holding
/// the tests `hello::local`, `hello::netns`, `hello::docker`, … Each creates a cluster named after
/// the test on its backend — over the backend's test bed when it needs one ([`test_bed`]: `hosts`
/// gets a simulated lab, `ec2` the AWS emulator and a hypervisor stand-in) — skipping through `chaos_testkit::skip` when the backend or its test bed
/// cannot run here, runs the check on it and asserts that cleaning it up succeeds. A failure's name says
/// which backend failed. The test crate needs `tokio` and `chaos-testkit`.
#[macro_export]
macro_rules! backend_tests {
    ($($check:ident),+ $(,)?) => {
        $( $crate::registered_backends!($crate::__backend_tests_for { $check }); )+
    };
}

/// The expansion of [`backend_tests!`] for one check.
#[doc(hidden)]
#[macro_export]
macro_rules! __backend_tests_for {
    ($check:ident ; $( $(#[$_condition:meta])* $name:ident, )*) => {
        mod $check {
            $(
                // Every registered name gets its test, whatever this crate's features: the
                // conditions belong to the `chaos` build, which `registry::available` asks
                // (a backend not compiled in is skipped, saying so).
                #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let test = concat!(stringify!($check), "::", stringify!($name));
                    let backend = match $crate::backend::registry::available_for_tests(stringify!($name)) {
                        Ok(backend) => backend,
                        Err(why) => {
                            ::chaos_testkit::skip(test, stringify!($name), &why);
                            return;
                        }
                    };
                    let (options, bed) = $crate::backend::registry::test_bed(stringify!($name), stringify!($check))
                        .await
                        .unwrap_or_else(|e| panic!("{test}: setting up the test bed: {e}"));
                    let cluster = backend
                        .create(options)
                        .await
                        .unwrap_or_else(|e| panic!("{test}: creating the cluster: {e}"));
                    super::$check(cluster.clone()).await;
                    cluster
                        .cleanup()
                        .await
                        .unwrap_or_else(|e| panic!("{test}: cleaning up the cluster: {e}"));
                    if let Some(bed) = bed {
                        bed.cleanup()
                            .await
                            .unwrap_or_else(|e| panic!("{test}: cleaning up the test bed: {e}"));
                    }
                }
            )*
        }
    };
}

/// What a test needs besides a backend to make a cluster on it: for a backend whose machines
/// exist before the runner (`hosts`), machines to point it at. Dropped after the test (the
/// cluster is cleaned up first).
pub enum TestBed {
    /// A simulated lab of hosts ([`super::hosts::lab::Lab`]).
    #[cfg(target_os = "linux")]
    HostsLab(super::hosts::lab::Lab),
    /// The AWS emulator and a stand-in for EC2's hypervisor ([`super::ec2::lab::Lab`]; boxed:
    /// it holds the SDK clients).
    #[cfg(all(target_os = "linux", feature = "ec2"))]
    Ec2Lab(Box<super::ec2::lab::Lab>),
}

impl TestBed {
    /// Removes the test bed.
    pub async fn cleanup(self) -> Result<()> {
        match self {
            #[cfg(target_os = "linux")]
            TestBed::HostsLab(lab) => lab.cleanup().await,
            #[cfg(all(target_os = "linux", feature = "ec2"))]
            TestBed::Ec2Lab(lab) => lab.cleanup().await,
        }
    }
}

/// Hosts in the test bed of `hosts` (the most any shared check asks for: the examples take 5).
const TEST_LAB_HOSTS: usize = 5;

/// Bound on the `ec2` test lab's emulator starting and each of its instances booting.
#[cfg(all(target_os = "linux", feature = "ec2"))]
const EC2_LAB_BOUND: std::time::Duration = std::time::Duration::from_secs(120);

/// Whether the test bed of backend `name` can be made here (see [`test_bed`]): `Err` holds one
/// line naming what is missing. Backends without a test bed need nothing.
pub fn test_bed_availability(name: &str) -> Result<(), String> {
    match name {
        #[cfg(target_os = "linux")]
        "hosts" => super::hosts::lab::availability().map_err(|why| format!("hosts test lab: {why}")),
        #[cfg(not(target_os = "linux"))]
        "hosts" => Err("hosts test lab: needs Linux network namespaces".into()),
        #[cfg(all(target_os = "linux", feature = "ec2"))]
        "ec2" => super::ec2::lab::availability().map_err(|why| format!("ec2 test lab: {why}")),
        #[cfg(not(all(target_os = "linux", feature = "ec2")))]
        "ec2" => Err("ec2 test lab: needs Linux network namespaces and the `ec2` feature".into()),
        _ => Ok(()),
    }
}

/// The options of a test's cluster on backend `name` (named after the test's `check`), and the
/// test bed they point at: for `hosts`, a simulated lab of five hosts whose
/// inventory goes into [`ClusterOptions::backend_config`]; for `ec2`, the AWS emulator and a
/// hypervisor stand-in whose settings file goes there; for the other backends, none. This
/// is the one place that knows which backend needs a test bed.
pub async fn test_bed(name: &str, check: &str) -> Result<(ClusterOptions, Option<TestBed>)> {
    let options = ClusterOptions {
        name: check.to_string(),
        ..ClusterOptions::default()
    };
    match name {
        #[cfg(target_os = "linux")]
        "hosts" => {
            let lab =
                super::hosts::lab::Lab::start(check, TEST_LAB_HOSTS, std::time::Duration::from_secs(30))
                    .await?;
            let options = lab.cluster_options(check);
            Ok((options, Some(TestBed::HostsLab(lab))))
        }
        #[cfg(all(target_os = "linux", feature = "ec2"))]
        "ec2" => {
            let lab = super::ec2::lab::Lab::start(check, EC2_LAB_BOUND).await?;
            let options = lab.cluster_options(check);
            Ok((options, Some(TestBed::Ec2Lab(Box::new(lab)))))
        }
        _ => Ok((options, None)),
    }
}

/// The names of every backend compiled in.
pub fn names() -> Vec<&'static str> {
    all().iter().map(|b| b.name).collect()
}

/// A backend name the registry does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown backend `{name}`; valid choices: {}", names().join(", "))]
pub struct UnknownBackend {
    /// The name asked for.
    pub name: String,
}

/// The backend named `name`.
pub fn find(name: &str) -> Result<&'static Backend, UnknownBackend> {
    all()
        .iter()
        .find(|b| b.name == name)
        .ok_or_else(|| UnknownBackend {
            name: name.to_string(),
        })
}

/// Collects garbage on every backend that can leave any (concurrently; each is bounded).
pub async fn collect_garbage(options: &GcOptions) -> GcReport {
    let collections = all()
        .iter()
        .filter(|b| options.backend.as_deref().is_none_or(|name| name == b.name))
        .filter_map(|b| b.collect_garbage)
        .map(|collect| collect(options.clone()));
    let mut report = GcReport::default();
    for one in futures_util::future::join_all(collections).await {
        report.append(one);
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_found() {
        let names = names();
        for name in &names {
            assert_eq!(find(name).unwrap().name, *name);
            assert_eq!(names.iter().filter(|n| *n == name).count(), 1, "{name}");
        }
        assert_eq!(names[0], "local");
        let e = find("dockr").unwrap_err().to_string();
        assert!(e.contains("dockr") && e.contains("local"), "{e}");
    }
}
