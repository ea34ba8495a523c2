//! Link faults: administrative up/down and MTU of a named interface, over rtnetlink.

use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};

use crate::error::{Error, Result};
use crate::netlink::{NLM_F_ACK, NLM_F_REQUEST, route_request};

/// The state of an interface that link faults change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkState {
    /// Interface index.
    pub index: u32,
    /// Administratively up.
    pub up: bool,
    /// MTU.
    pub mtu: u32,
}

/// Reads the state of interface `name`.
pub fn get(name: &str) -> Result<LinkState> {
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    let replies = route_request(
        RouteNetlinkMessage::GetLink(msg),
        NLM_F_REQUEST | NLM_F_ACK,
        false,
    )
    .map_err(|e| Error::netlink(format!("get link {name}"), e))?
    .map_err(|e| match e.errno {
        libc::ENODEV => Error::NotFound(format!("network interface {name:?}")),
        _ => Error::netlink(format!("get link {name}"), e.io()),
    })?;
    for reply in replies {
        if let RouteNetlinkMessage::NewLink(link) = reply {
            let mtu = link
                .attributes
                .iter()
                .find_map(|a| {
                    if let LinkAttribute::Mtu(m) = a {
                        Some(*m)
                    } else {
                        None
                    }
                })
                .unwrap_or(0);
            return Ok(LinkState {
                index: link.header.index,
                up: link.header.flags.contains(LinkFlags::Up),
                mtu,
            });
        }
    }
    Err(Error::NotFound(format!("network interface {name:?}")))
}

/// Sets interface `name` up or down and/or its MTU.
pub fn set(name: &str, up: Option<bool>, mtu: Option<u32>) -> Result<()> {
    let state = get(name)?;
    let mut msg = LinkMessage::default();
    msg.header.index = state.index;
    if let Some(up) = up {
        msg.header.change_mask = LinkFlags::Up;
        msg.header.flags = if up { LinkFlags::Up } else { LinkFlags::empty() };
    }
    if let Some(mtu) = mtu {
        msg.attributes.push(LinkAttribute::Mtu(mtu));
    }
    route_request(
        RouteNetlinkMessage::SetLink(msg),
        NLM_F_REQUEST | NLM_F_ACK,
        false,
    )
    .map_err(|e| Error::netlink(format!("set link {name}"), e))?
    .map_err(|e| match e.errno {
        libc::EINVAL if mtu.is_some() => Error::invalid(
            "mtu",
            format!(
                "interface {name} rejected MTU {}: outside its min/max MTU",
                mtu.unwrap_or(0)
            ),
        ),
        _ => Error::netlink(format!("set link {name}"), e.io()),
    })?;
    Ok(())
}

/// Restores a recorded state. Returns false (not an error) when the interface is gone.
pub fn restore(name: &str, was_up: bool, mtu: u32) -> Result<bool> {
    let now = match get(name) {
        Ok(s) => s,
        Err(Error::NotFound(_)) => return Ok(false),
        Err(e) => return Err(e),
    };
    if now.up == was_up && now.mtu == mtu {
        return Ok(false);
    }
    // MTU first: bringing a link up with a wrong MTU would briefly pass oversized packets.
    if now.mtu != mtu {
        set(name, None, Some(mtu))?;
    }
    if now.up != was_up {
        set(name, Some(was_up), None)?;
    }
    Ok(true)
}
