//! `GET /v1/probe`: what this node can break, and with what.

use std::collections::BTreeMap;

use chaos_faults::{Capabilities, Capability, IptablesBackend};
use chaos_proto::fault::{FaultKind, Feature, KindSupport, Mechanism, ProbeReport};

/// Converts the probe's findings into the wire report; without `network_faults` every network
/// kind is unsupported, saying why.
pub(crate) fn probe_report(c: &Capabilities, has_cgroup: bool, network_faults: bool) -> ProbeReport {
    let feature = |cap: &Capability| Feature {
        available: cap.available,
        detail: cap.detail.clone(),
    };
    let mut features = BTreeMap::new();
    for (name, cap) in [
        ("nftables_netlink", &c.nftables_netlink),
        ("nft_numgen", &c.nft_numgen),
        ("nft_queue", &c.nft_queue),
        ("nfqueue", &c.nfqueue),
        ("netem", &c.netem),
        ("tbf", &c.tbf),
        ("cgroup_v2_freeze", &c.cgroup_v2_freeze),
        ("cgroup_v1_freezer", &c.cgroup_v1_freezer),
        ("cgroup_kill", &c.cgroup_kill),
        ("nft_kernel_expiry", &c.nft_kernel_expiry),
    ] {
        features.insert(name.to_string(), feature(cap));
    }
    features.insert(
        "agent_cgroup".into(),
        Feature {
            available: has_cgroup,
            detail: if has_cgroup {
                "started processes get their own cgroup: proc freezes use the cgroup freezer".into()
            } else {
                "the agent runs without --cgroup: proc freezes stop process trees with SIGSTOP".into()
            },
        },
    );
    features.insert(
        "iptables".into(),
        Feature {
            available: c.iptables != IptablesBackend::Absent,
            detail: format!(
                "{:?} backend (informational: the agent never runs iptables)",
                c.iptables
            ),
        },
    );
    let need = |names: &[(&str, &Capability)], mechanism: Mechanism| {
        let missing: Vec<String> = names
            .iter()
            .filter(|(_, cap)| !cap.available)
            .map(|(name, cap)| format!("{name}: {}", cap.detail))
            .collect();
        if missing.is_empty() {
            (Some(mechanism), None)
        } else {
            (None, Some(missing.join("; ")))
        }
    };
    let nft = ("nftables_netlink", &c.nftables_netlink);
    let freeze = if has_cgroup && c.cgroup_v2_freeze.available {
        Mechanism::CgroupV2Freeze
    } else {
        Mechanism::SigStopTree
    };
    let kinds = FaultKind::ALL
        .into_iter()
        .map(|kind| {
            let (mechanism, missing) = match kind {
                kind if kind.is_network() && !network_faults => {
                    (None, Some(super::NO_NETWORK_FAULTS.to_string()))
                }
                FaultKind::Partition => need(&[nft], Mechanism::NftablesNetlink),
                FaultKind::Loss => need(&[nft, ("nft_numgen", &c.nft_numgen)], Mechanism::NftablesNetlink),
                FaultKind::Packet => need(
                    &[nft, ("nfqueue", &c.nfqueue)],
                    Mechanism::NfqueueUserspace {
                        queue: chaos_faults::FIRST_QUEUE,
                    },
                ),
                // The agent always exempts its control port, hence htb in front of tbf.
                FaultKind::Bandwidth => need(&[("tbf", &c.tbf)], Mechanism::HtbTbfNetlink),
                FaultKind::Link => (Some(Mechanism::RtnetlinkLink), None),
                FaultKind::Freeze => (Some(freeze.clone()), None),
            };
            // nftables-based kinds carry their deadline into the kernel; a dead agent's
            // bandwidth, link and freeze faults wait for the next agent (the runner restarts it).
            let nft_based = matches!(kind, FaultKind::Partition | FaultKind::Loss | FaultKind::Packet);
            KindSupport {
                kind,
                kernel_expiry: nft_based && mechanism.is_some() && c.nft_kernel_expiry.available,
                mechanism,
                missing,
            }
        })
        .collect();
    ProbeReport {
        kinds,
        features,
        external_binaries: c.external_binaries.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(available: bool, detail: &str) -> Capability {
        Capability {
            available,
            detail: detail.into(),
        }
    }

    #[test]
    fn probe_report_names_the_missing_feature_per_kind() {
        let c = Capabilities {
            nftables_netlink: cap(true, "ok"),
            nft_numgen: cap(true, "ok"),
            nft_queue: cap(false, "CONFIG_NFT_QUEUE is not set"),
            nfqueue: cap(false, "CONFIG_NFT_COMPAT is not set"),
            netem: cap(false, "CONFIG_NET_SCH_NETEM is not set"),
            tbf: cap(true, "ok"),
            cgroup_v2_freeze: cap(true, "ok"),
            cgroup_v1_freezer: cap(false, "none"),
            cgroup_kill: cap(true, "ok"),
            nft_kernel_expiry: cap(true, "ok"),
            iptables: IptablesBackend::Nft,
            external_binaries: vec![],
        };
        let r = probe_report(&c, true, true);
        assert!(r.supports(FaultKind::Partition));
        // nftables kinds expire in the kernel; a freeze does not (nor an unsupported kind).
        assert!(r.kind(FaultKind::Partition).unwrap().kernel_expiry);
        assert!(!r.kind(FaultKind::Freeze).unwrap().kernel_expiry);
        assert!(!r.kind(FaultKind::Packet).unwrap().kernel_expiry);
        assert!(!r.supports(FaultKind::Packet));
        let packet = r.kind(FaultKind::Packet).unwrap();
        assert!(
            packet
                .missing
                .as_deref()
                .unwrap()
                .contains("nfqueue: CONFIG_NFT_COMPAT"),
            "{packet:?}"
        );
        assert_eq!(
            r.kind(FaultKind::Freeze).unwrap().mechanism,
            Some(Mechanism::CgroupV2Freeze)
        );
        assert_eq!(
            probe_report(&c, false, true)
                .kind(FaultKind::Freeze)
                .unwrap()
                .mechanism,
            Some(Mechanism::SigStopTree)
        );
        // Without network faults (local), only the freeze is left, and the others say why.
        let local = probe_report(&c, false, false);
        for kind in FaultKind::ALL {
            assert_eq!(local.supports(kind), kind == FaultKind::Freeze, "{kind}");
        }
        let partition = local.kind(FaultKind::Partition).unwrap();
        assert!(
            partition
                .missing
                .as_deref()
                .unwrap()
                .contains("--no-network-faults"),
            "{partition:?}"
        );
        assert!(r.missing().any(|(name, _)| name == "netem"));
        assert!(r.has("agent_cgroup") && r.has("iptables"));
    }
}
