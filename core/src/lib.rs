//! # chaos — the runner library
//!
//! ```
//! use chaos::backend::{ClusterOptions, new_cluster};
//! use chaos::NodeExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> chaos::Result<()> {
//! // "local" runs nodes as processes of this host, with no privileges; the same code runs on
//! // "netns" (root) and "docker", whose node agent chaos builds once by itself.
//! let cluster = new_cluster("local", ClusterOptions::default()).await?;
//! let nodes = cluster.create_nodes(3).await?;
//! for node in &nodes {
//!     let path = format!("{}/hello", node.root_dir());
//!     node.send_bytes(&path, b"Hello, world!".to_vec(), 0o644).await?;
//!     let out = node.run("cat", [path.as_str()]).await?;
//!     assert_eq!(out.stdout, b"Hello, world!");
//! }
//! cluster.cleanup().await?;
//! # Ok(())
//! # }
//! ```
//!
//! Tests written imperatively in Rust create a [`Cluster`] of [`Node`]s on a backend (`local`
//! processes, `netns` network namespaces, …), run processes and move files on them, and inject
//! faults. The same test code runs on every backend.
//!
//! * [`cluster`]: the minimal backend traits ([`Cluster`], [`Node`], [`Process`]).
//! * [`ext`]: conveniences built once on top of the traits (run and collect output, timeouts).
//! * [`backend`]: the backends and how to pick one.
//! * [`agent_client`]: the client of the node agent, shared by every agent-based backend.
//! * [`certs`]: per-cluster CA, per-node server certificates, the runner's client certificate.
//! * [`faults`]: fault values, injecting and healing them, partition shapes over a cluster.
//! * [`machine`]: machine faults a backend offers (pause, stop, disconnect a node's machine).
//!
//! This crate is a library only: scenarios (files, seeded plans, the engine) live in
//! `chaos-scenario`, and the `chaos` command (the only place that knows about terminals) in
//! `chaos-cli`.

pub mod agent_client;
pub mod backend;
pub mod certs;
pub mod cluster;
mod error;
pub mod ext;
pub mod faults;
pub mod machine;
pub mod net;

pub use chaos_proto as proto;
pub use chaos_proto::MachineFault;
pub use chaos_proto::{ExitStatus, ProcSpec, Signal};
pub use cluster::{Cluster, Node, Process};
pub use error::{Error, Result};
pub use ext::NodeExt;
pub use faults::{Fault, FaultHandle, PartitionHandle, Shape};
pub use machine::{MachineFaultHandle, MachineFaultInfo};
