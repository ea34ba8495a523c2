//! Start a TCP echo server on a node's loopback and talk to it from the runner through the node
//! (`Node::dial`), tunnelled through the node's agent.
//!
//! ```sh
//! cargo run -p chaos-examples --example proxy -- --backend netns
//! ```

use std::process::ExitCode;

use chaos_examples::{ExampleArgs, tcp_through_proxy, with_cluster};
use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    // `--nodes` is accepted for symmetry with `hello`; the example uses one node.
    let args = ExampleArgs::parse();
    match with_cluster(args.backend, "proxy", async |cluster| {
        tcp_through_proxy(cluster).await
    })
    .await
    {
        Ok(report) => {
            println!(
                "proxy: node {} echoed {} bytes from {} in {:.1?} ({} backend)",
                report.node, report.bytes, report.address, report.round_trip, args.backend
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("proxy: failed on the {} backend: {e:#}", args.backend);
            ExitCode::FAILURE
        }
    }
}
