//! The hello world: send a file to every node of a cluster in parallel and `cat` it back.
//!
//! ```sh
//! cargo run -p chaos-examples --example hello -- --backend netns --nodes 5
//! ```

use std::process::ExitCode;
use std::time::Instant;

use chaos_examples::{ExampleArgs, hello_world, with_cluster};
use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let args = ExampleArgs::parse();
    let started = Instant::now();
    let nodes = args.nodes as usize;
    match with_cluster(args.backend, "hello", async |cluster| {
        hello_world(cluster, nodes).await
    })
    .await
    {
        Ok(greetings) => {
            for g in &greetings {
                let address = g.address.map_or_else(|| "-".to_string(), |a| a.to_string());
                println!(
                    "{:<6} {:<16} {:<32} {:>8.1?}",
                    g.node,
                    address,
                    format!("{:?}", g.output),
                    g.elapsed
                );
            }
            println!(
                "hello: {} {} nodes answered in {:.1?} (cluster created and cleaned up)",
                greetings.len(),
                args.backend,
                started.elapsed()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hello: failed on the {} backend: {e:#}", args.backend);
            ExitCode::FAILURE
        }
    }
}
