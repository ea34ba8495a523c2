//! A network-hardware experiment: flap n1's link under load and report the numbers.
//!
//! ```sh
//! cargo run -p chaos-examples --example flap -- --backend netns
//! ```

use std::process::ExitCode;

use chaos_examples::netlab::{FlapPlan, link_flap_under_load};
use chaos_examples::{ExampleArgs, with_cluster};
use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let args = ExampleArgs::parse();
    match with_cluster(args.backend, "flap", async |cluster| {
        link_flap_under_load(cluster, FlapPlan::default()).await
    })
    .await
    {
        Ok(report) => {
            for line in report.lines() {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("flap: failed on the {} backend: {e:#}", args.backend);
            ExitCode::FAILURE
        }
    }
}
