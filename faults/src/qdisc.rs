//! Bandwidth limits: a tbf qdisc as the root of an interface's egress, over rtnetlink.
//!
//! Ownership rule: we install only when the interface's root qdisc is a kernel default (handle
//! `0:`, e.g. `noqueue`, `pfifo_fast`, `mq`); a root qdisc someone configured (any other handle)
//! is left alone and the fault fails with [`Error::Conflict`]. Deleting our root qdisc makes the
//! kernel reattach its default, which is exactly what was there before.
//!
//! Limitation: tbf is classless, so it shapes all egress of the interface, including the
//! agent's control traffic (a classful root with a filter needs `sch_prio`, absent here, or
//! `htb`+`u32`, not done yet).

use netlink_packet_core::DefaultNla;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::tc::{TcAttribute, TcHandle, TcMessage, TcOption};

use crate::error::{Error, Result};
use crate::link;
use crate::netlink::{NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, route_request};
use crate::spec::Bandwidth;

const TCA_TBF_PARMS: u16 = 1;
const TCA_TBF_RATE64: u16 = 4;
const TCA_TBF_BURST: u16 = 6;
const TC_LINKLAYER_ETHERNET: u8 = 1;

fn handle_of(raw: u32) -> TcHandle {
    TcHandle {
        major: (raw >> 16) as u16,
        minor: raw as u16,
    }
}

fn raw_of(h: TcHandle) -> u32 {
    ((h.major as u32) << 16) | h.minor as u32
}

/// The root qdisc of interface index `index`: `(kind, handle)`.
fn root_qdisc(index: u32, name: &str) -> Result<Option<(String, u32)>> {
    let replies = route_request(
        RouteNetlinkMessage::GetQueueDiscipline(TcMessage::default()),
        NLM_F_REQUEST | NLM_F_DUMP,
        true,
    )
    .map_err(|e| Error::netlink(format!("list qdiscs of {name}"), e))?
    .map_err(|e| Error::netlink(format!("list qdiscs of {name}"), e.io()))?;
    for reply in replies {
        let RouteNetlinkMessage::NewQueueDiscipline(tc) = reply else {
            continue;
        };
        if tc.header.index as u32 != index || tc.header.parent != TcHandle::ROOT {
            continue;
        }
        let kind = tc
            .attributes
            .iter()
            .find_map(|a| {
                if let TcAttribute::Kind(k) = a {
                    Some(k.clone())
                } else {
                    None
                }
            })
            .unwrap_or_default();
        return Ok(Some((kind, raw_of(tc.header.handle))));
    }
    Ok(None)
}

/// Fails unless the root qdisc of `interface` is a kernel default we may replace.
pub(crate) fn check_root_free(interface: &str, ours: u32) -> Result<()> {
    let index = link::get(interface)?.index;
    match root_qdisc(index, interface)? {
        Some((_, 0)) | None => Ok(()),
        Some((_, h)) if h == ours => Err(Error::Conflict {
            object: format!("root qdisc of {interface}"),
            found: "another chaos fault".into(),
        }),
        Some((kind, h)) => Err(Error::Conflict {
            object: format!("root qdisc of {interface}"),
            found: format!("{kind} {:x}:", h >> 16),
        }),
    }
}

/// tc's `struct tc_tbf_qopt`: rate and peak rate specs, limit, buffer (ticks), mtu (ticks).
fn tbf_qopt(rate_bytes: u64, limit: u32, burst: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(36);
    // struct tc_ratespec { u8 cell_log; u8 linklayer; u16 overhead; s16 cell_align; u16 mpu; u32 rate }
    v.extend_from_slice(&[0, TC_LINKLAYER_ETHERNET, 0, 0, 0, 0, 0, 0]);
    v.extend_from_slice(&(rate_bytes.min(u32::MAX as u64) as u32).to_ne_bytes());
    v.extend_from_slice(&[0; 12]); // peakrate: none
    v.extend_from_slice(&limit.to_ne_bytes());
    // Buffer in psched ticks (64 ns); the kernel recomputes it from TCA_TBF_BURST anyway.
    let ticks = (burst as u128 * 1_000_000_000 / rate_bytes.max(1) as u128 / 64).min(u32::MAX as u128) as u32;
    v.extend_from_slice(&ticks.to_ne_bytes());
    v.extend_from_slice(&0u32.to_ne_bytes());
    v
}

/// Installs a tbf root qdisc with handle `handle` on `bw.interface`.
pub(crate) fn install_tbf(bw: &Bandwidth, handle: u32) -> Result<()> {
    if bw.rate_bps < 8 {
        return Err(Error::invalid(
            "rate_bps",
            format!("{} bit/s is too low (at least 8)", bw.rate_bps),
        ));
    }
    let state = link::get(&bw.interface)?;
    let rate_bytes = bw.rate_bps / 8;
    let mtu = state.mtu.max(1500) + 14;
    let burst = if bw.burst_bytes == 0 {
        ((rate_bytes / 250) as u32).max(2 * mtu)
    } else if bw.burst_bytes < mtu {
        return Err(Error::invalid(
            "burst_bytes",
            format!(
                "{} is below the interface MTU + header ({mtu}); packets would never pass",
                bw.burst_bytes
            ),
        ));
    } else {
        bw.burst_bytes
    };
    let limit = if bw.limit_bytes == 0 {
        ((rate_bytes / 10).min(u32::MAX as u64) as u32).max(3 * burst)
    } else {
        bw.limit_bytes
    };
    let mut options = vec![
        TcOption::Other(DefaultNla::new(TCA_TBF_PARMS, tbf_qopt(rate_bytes, limit, burst))),
        TcOption::Other(DefaultNla::new(TCA_TBF_BURST, burst.to_ne_bytes().to_vec())),
    ];
    if rate_bytes > u32::MAX as u64 {
        options.push(TcOption::Other(DefaultNla::new(
            TCA_TBF_RATE64,
            rate_bytes.to_ne_bytes().to_vec(),
        )));
    }
    let mut msg = TcMessage::with_index(state.index as i32);
    msg.header.handle = handle_of(handle);
    msg.header.parent = TcHandle::ROOT;
    msg.attributes.push(TcAttribute::Kind("tbf".into()));
    msg.attributes.push(TcAttribute::Options(options));
    route_request(
        RouteNetlinkMessage::NewQueueDiscipline(msg),
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        false,
    )
    .map_err(|e| Error::netlink(format!("add tbf qdisc on {}", bw.interface), e))?
    .map_err(|e| match e.errno {
        libc::ENOENT => Error::Unsupported {
            feature: "tbf qdisc (CONFIG_NET_SCH_TBF)",
            reason: e.io().to_string(),
        },
        libc::EEXIST => Error::Conflict {
            object: format!("root qdisc of {}", bw.interface),
            found: "a qdisc with our handle".into(),
        },
        _ => Error::netlink(format!("add tbf qdisc on {}", bw.interface), e.io()),
    })?;
    Ok(())
}

/// Deletes the root qdisc of `interface` if it has our `handle`. Returns false (not an error)
/// when the interface is gone or its root is not ours.
pub(crate) fn remove_root(interface: &str, handle: u32) -> Result<bool> {
    let index = match link::get(interface) {
        Ok(s) => s.index,
        Err(Error::NotFound(_)) => return Ok(false),
        Err(e) => return Err(e),
    };
    match root_qdisc(index, interface)? {
        Some((_, h)) if h == handle => {}
        _ => return Ok(false),
    }
    let mut msg = TcMessage::with_index(index as i32);
    msg.header.handle = handle_of(handle);
    msg.header.parent = TcHandle::ROOT;
    match route_request(
        RouteNetlinkMessage::DelQueueDiscipline(msg),
        NLM_F_REQUEST | NLM_F_ACK,
        false,
    )
    .map_err(|e| Error::netlink(format!("delete qdisc on {interface}"), e))?
    {
        Ok(_) => Ok(true),
        Err(e) if e.errno == libc::ENOENT || e.errno == libc::EINVAL => Ok(false),
        Err(e) => Err(Error::netlink(format!("delete qdisc on {interface}"), e.io())),
    }
}
