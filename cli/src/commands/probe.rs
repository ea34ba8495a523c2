//! `chaos probe`: what a node's agent can break, and with which mechanism (`GET /v1/probe`).

use std::path::PathBuf;

use chaos::proto::fault::ProbeReport;
use clap::Args;

use super::fault::mechanism_text;
use super::state::StateDir;

/// `chaos probe`.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// State directory given to `chaos up`.
    #[arg(long, value_name = "DIR")]
    pub state: PathBuf,
    /// The node to probe (n1, n2, …).
    pub node: String,
    /// Print the agent's report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `chaos probe`.
pub async fn run(args: ProbeArgs) -> anyhow::Result<()> {
    let dir = StateDir::new(&args.state);
    let state = dir.load_running()?;
    let node = state.node(&args.node)?;
    let report = dir.client(node)?.probe().await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&node.name, &report));
    }
    Ok(())
}

/// The report as text: one line per fault kind, then one per feature.
fn render(node: &str, report: &ProbeReport) -> String {
    let mut out = format!("node {node}\nfault kinds:\n");
    let width = report
        .kinds
        .iter()
        .map(|k| k.kind.to_string().len())
        .max()
        .unwrap_or(0);
    for kind in &report.kinds {
        let name = kind.kind.to_string();
        let line = match (&kind.mechanism, &kind.missing) {
            (Some(m), _) if kind.kernel_expiry => format!(
                "  {name:width$}  yes  {} (expires in the kernel even if the agent dies)",
                mechanism_text(m)
            ),
            (Some(m), _) => format!("  {name:width$}  yes  {}", mechanism_text(m)),
            (None, Some(missing)) => format!("  {name:width$}  no   missing {missing}"),
            (None, None) => format!("  {name:width$}  no"),
        };
        out.push_str(&line);
        out.push('\n');
    }
    out.push_str("features:\n");
    let width = report.features.keys().map(String::len).max().unwrap_or(0);
    for (name, feature) in &report.features {
        let mark = if feature.available { "yes" } else { "no " };
        out.push_str(&format!("  {name:width$}  {mark}  {}\n", feature.detail));
    }
    out.push_str(&format!(
        "external programs needed: {}\n",
        if report.external_binaries.is_empty() {
            "none".to_string()
        } else {
            report.external_binaries.join(", ")
        }
    ));
    out
}

#[cfg(test)]
mod tests {
    use chaos::proto::fault::{Feature, KindSupport, Mechanism};

    use super::*;

    #[test]
    fn the_report_reads_as_one_line_per_kind_and_feature() {
        use chaos::proto::fault::FaultKind;
        let report = ProbeReport {
            kinds: vec![
                KindSupport {
                    kind: FaultKind::Partition,
                    mechanism: Some(Mechanism::NftablesNetlink),
                    missing: None,
                    kernel_expiry: true,
                },
                KindSupport {
                    kind: FaultKind::Packet,
                    mechanism: None,
                    missing: Some("nfqueue: CONFIG_NFT_COMPAT is not set".into()),
                    kernel_expiry: false,
                },
            ],
            features: [(
                "netem".to_string(),
                Feature {
                    available: false,
                    detail: "module sch_netem not found".into(),
                },
            )]
            .into(),
            external_binaries: vec![],
        };
        let text = render("n1", &report);
        assert!(
            text.contains(
                "partition  yes  nftables over netlink (expires in the kernel even if the agent dies)"
            ),
            "{text}"
        );
        assert!(
            text.contains("packet     no   missing nfqueue: CONFIG_NFT_COMPAT"),
            "{text}"
        );
        assert!(text.contains("netem  no   module sch_netem not found"), "{text}");
        assert!(text.contains("external programs needed: none"), "{text}");
    }
}
