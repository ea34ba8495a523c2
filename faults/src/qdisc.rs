//! Bandwidth limits: a tbf qdisc as the root of an interface's egress, over rtnetlink.
//!
//! Ownership rule: we install only when the interface's root qdisc is a kernel default (handle
//! `0:`, e.g. `noqueue`, `pfifo_fast`, `mq`); a root qdisc someone configured (any other handle)
//! is left alone and the fault fails with [`Error::Conflict`]. Deleting our root qdisc makes the
//! kernel reattach its default, which is exactly what was there before.
//!
//! Exempt ports: tbf is classless and would shape the agent's control traffic too. When exempt
//! local TCP ports are given, the root is instead an `htb` qdisc (handle ours) with two
//! unlimited classes: `:1` for packets whose TCP source port is exempt (selected by `u32`
//! filters, IPv4 and IPv6, assuming no IP options / extension headers) and the default `:2`,
//! whose leaf is the tbf doing the shaping. Deleting our root removes all of it.

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
const TCA_HTB_PARMS: u16 = 1;
const TCA_HTB_INIT: u16 = 2;
const TCA_U32_CLASSID: u16 = 1;
const TCA_U32_SEL: u16 = 5;
const TC_U32_TERMINAL: u8 = 1;
/// Rate of the unlimited htb classes: 10 Gbit/s, in bytes per second.
const UNLIMITED_BYTES: u64 = 1_250_000_000;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;

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
pub(crate) fn root_qdisc(index: u32, name: &str) -> Result<Option<(String, u32)>> {
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

/// Bucket and queue sizes for `bw` on an interface with `mtu`.
fn tbf_sizes(bw: &Bandwidth, mtu: u32) -> Result<(u64, u32, u32)> {
    if bw.rate_bps < 8 {
        return Err(Error::invalid(
            "rate_bps",
            format!("{} bit/s is too low (at least 8)", bw.rate_bps),
        ));
    }
    let rate_bytes = bw.rate_bps / 8;
    let mtu = mtu.max(1500) + 14;
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
    Ok((rate_bytes, burst, limit))
}

fn tbf_options(rate_bytes: u64, burst: u32, limit: u32) -> Vec<TcOption> {
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
    options
}

/// Sends one tc object (qdisc, class or filter) creation, mapping errors.
fn create(
    msg: RouteNetlinkMessage,
    interface: &str,
    what: &'static str,
    feature: &'static str,
) -> Result<()> {
    route_request(msg, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, false)
        .map_err(|e| Error::netlink(format!("add {what} on {interface}"), e))?
        .map_err(|e| match e.errno {
            libc::ENOENT => Error::Unsupported {
                feature,
                reason: e.io().to_string(),
            },
            libc::EEXIST => Error::Conflict {
                object: format!("{what} of {interface}"),
                found: "an object with our handle".into(),
            },
            _ => Error::netlink(format!("add {what} on {interface}"), e.io()),
        })?;
    Ok(())
}

fn tc_msg(index: u32, handle: u32, parent: TcHandle, kind: &str, options: Vec<TcOption>) -> TcMessage {
    let mut msg = TcMessage::with_index(index as i32);
    msg.header.handle = handle_of(handle);
    msg.header.parent = parent;
    msg.attributes.push(TcAttribute::Kind(kind.into()));
    msg.attributes.push(TcAttribute::Options(options));
    msg
}

/// tc's `struct tc_htb_opt` for an unlimited class.
fn htb_unlimited_class() -> Vec<u8> {
    let rate = |v: &mut Vec<u8>| {
        v.extend_from_slice(&[0, TC_LINKLAYER_ETHERNET, 0, 0, 0, 0, 0, 0]);
        v.extend_from_slice(&(UNLIMITED_BYTES as u32).to_ne_bytes());
    };
    let mut v = Vec::with_capacity(44);
    rate(&mut v);
    rate(&mut v);
    // buffer and cbuffer: 64 KiB at the class rate, in 64 ns ticks.
    let ticks = (65_536u64 * 1_000_000_000 / UNLIMITED_BYTES / 64) as u32;
    v.extend_from_slice(&ticks.to_ne_bytes());
    v.extend_from_slice(&ticks.to_ne_bytes());
    v.extend_from_slice(&200_000u32.to_ne_bytes()); // quantum
    v.extend_from_slice(&0u32.to_ne_bytes()); // level
    v.extend_from_slice(&0u32.to_ne_bytes()); // prio
    v
}

/// tc's `struct tc_u32_sel` matching TCP with source port `port`, for IPv4 or IPv6.
fn u32_tcp_sport(port: u16, v6: bool) -> Vec<u8> {
    // (mask, value, offset) in network order, offsets from the network header.
    let keys: [(u32, u32, i32); 2] = if v6 {
        [
            (0x0000_ff00, 0x0000_0600, 4),
            (0xffff_0000, (port as u32) << 16, 40),
        ]
    } else {
        [
            (0x00ff_0000, 0x0006_0000, 8),
            (0xffff_0000, (port as u32) << 16, 20),
        ]
    };
    let mut v = vec![TC_U32_TERMINAL, 0, keys.len() as u8, 0];
    v.extend_from_slice(&[0; 2]); // offmask
    v.extend_from_slice(&[0; 2]); // off
    v.extend_from_slice(&[0; 2]); // offoff
    v.extend_from_slice(&[0; 2]); // hoff
    v.extend_from_slice(&[0; 4]); // hmask
    for (mask, val, off) in keys {
        v.extend_from_slice(&mask.to_be_bytes());
        v.extend_from_slice(&val.to_be_bytes());
        v.extend_from_slice(&off.to_ne_bytes());
        v.extend_from_slice(&0i32.to_ne_bytes()); // offmask
    }
    v
}

/// Installs the bandwidth limit as root qdisc `handle` on `bw.interface`: a plain tbf, or (with
/// exempt ports) htb + u32 filters + a tbf leaf. Returns what was used.
pub(crate) fn install(bw: &Bandwidth, handle: u32, exempt: &[u16]) -> Result<crate::spec::Mechanism> {
    let state = link::get(&bw.interface)?;
    let (rate_bytes, burst, limit) = tbf_sizes(bw, state.mtu)?;
    let ifname = bw.interface.as_str();
    const TBF: &str = "tbf qdisc (CONFIG_NET_SCH_TBF)";
    if exempt.is_empty() {
        let msg = tc_msg(
            state.index,
            handle,
            TcHandle::ROOT,
            "tbf",
            tbf_options(rate_bytes, burst, limit),
        );
        create(
            RouteNetlinkMessage::NewQueueDiscipline(msg),
            ifname,
            "root qdisc",
            TBF,
        )?;
        return Ok(crate::spec::Mechanism::TbfNetlink);
    }
    const HTB: &str = "htb qdisc (CONFIG_NET_SCH_HTB)";
    const U32: &str = "u32 classifier (CONFIG_NET_CLS_U32)";
    // struct tc_htb_glob { version 3, rate2quantum 10, defcls 2, debug 0, direct_pkts 0 }
    let mut glob = Vec::with_capacity(20);
    for v in [3u32, 10, 2, 0, 0] {
        glob.extend_from_slice(&v.to_ne_bytes());
    }
    let root = tc_msg(
        state.index,
        handle,
        TcHandle::ROOT,
        "htb",
        vec![TcOption::Other(DefaultNla::new(TCA_HTB_INIT, glob))],
    );
    create(
        RouteNetlinkMessage::NewQueueDiscipline(root),
        ifname,
        "root qdisc",
        HTB,
    )?;
    for minor in [1u32, 2] {
        let class = tc_msg(
            state.index,
            handle | minor,
            handle_of(handle),
            "htb",
            vec![TcOption::Other(DefaultNla::new(
                TCA_HTB_PARMS,
                htb_unlimited_class(),
            ))],
        );
        create(
            RouteNetlinkMessage::NewTrafficClass(class),
            ifname,
            "htb class",
            HTB,
        )?;
    }
    // The shaping leaf under the default class; its handle's major is ours + 1.
    let leaf = tc_msg(
        state.index,
        handle + 0x1_0000,
        handle_of(handle | 2),
        "tbf",
        tbf_options(rate_bytes, burst, limit),
    );
    create(
        RouteNetlinkMessage::NewQueueDiscipline(leaf),
        ifname,
        "tbf leaf qdisc",
        TBF,
    )?;
    for (i, port) in exempt.iter().enumerate() {
        for (v6, proto) in [(false, ETH_P_IP), (true, ETH_P_IPV6)] {
            let mut msg = tc_msg(
                state.index,
                0,
                handle_of(handle),
                "u32",
                vec![
                    TcOption::Other(DefaultNla::new(
                        TCA_U32_CLASSID,
                        (handle | 1).to_ne_bytes().to_vec(),
                    )),
                    TcOption::Other(DefaultNla::new(TCA_U32_SEL, u32_tcp_sport(*port, v6))),
                ],
            );
            // tcm_info: priority in the upper 16 bits, protocol (network order) in the lower.
            let prio = 1 + (i as u32) * 2 + v6 as u32;
            msg.header.info = (prio << 16) | proto.to_be() as u32;
            create(
                RouteNetlinkMessage::NewTrafficFilter(msg),
                ifname,
                "u32 filter",
                U32,
            )?;
        }
    }
    Ok(crate::spec::Mechanism::HtbTbfNetlink)
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
