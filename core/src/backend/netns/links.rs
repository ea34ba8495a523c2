//! Link and address configuration over rtnetlink.
//!
//! Every namespace is driven through a netlink socket opened inside it (see
//! [`super::namespace::create`]), so no thread ever has to switch namespaces to configure one.

use std::io;
use std::net::IpAddr;
use std::os::fd::{IntoRawFd, RawFd};
use std::time::Duration;

use futures_util::TryStreamExt;
use rtnetlink::packet_core::{NLM_F_ACK, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkMessage};
use rtnetlink::sys::protocols::NETLINK_ROUTE;
use rtnetlink::sys::{Socket, SocketAddr, TokioSocket};
use rtnetlink::{Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth};

/// Index of `lo` in every network namespace.
pub const LOOPBACK_INDEX: u32 = 1;

/// Turns a netlink failure into an `io::Error` that keeps the errno's kind (so callers can tell
/// `AlreadyExists` apart) and says what was being done.
fn nl_error(what: &str, e: rtnetlink::Error) -> io::Error {
    match e {
        rtnetlink::Error::NetlinkError(msg) => {
            let io = msg.to_io();
            io::Error::new(io.kind(), format!("{what}: {io}"))
        }
        other => io::Error::other(format!("{what}: {other}")),
    }
}

/// A netlink handle for the caller's (the host's) namespace.
pub fn host_handle() -> io::Result<Handle> {
    let (conn, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(conn);
    Ok(handle)
}

/// A netlink handle driving `socket` (opened inside some namespace) on the current runtime.
/// The connection ends when the last clone of the handle is dropped.
pub fn handle_for(socket: Socket) -> io::Result<Handle> {
    socket.set_non_blocking(true)?;
    // SAFETY: the fd comes from `into_raw_fd`, so it is open and owned by nobody else.
    let socket = unsafe { <TokioSocket as std::os::fd::FromRawFd>::from_raw_fd(socket.into_raw_fd()) };
    let (conn, handle, _) = rtnetlink::from_socket(socket);
    tokio::spawn(conn);
    Ok(handle)
}

/// Index of the link named `name`.
pub async fn index_of(handle: &Handle, name: &str) -> io::Result<u32> {
    let what = format!("looking up link {name}");
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await.map_err(|e| nl_error(&what, e))? {
        Some(link) => Ok(link.header.index),
        None => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{what}: no such link"),
        )),
    }
}

/// Creates the veth pair `name` ↔ `peer`, both in `handle`'s namespace, both down.
/// Fails with `AlreadyExists` when either name is taken.
pub async fn add_veth(handle: &Handle, name: &str, peer: &str) -> io::Result<()> {
    handle
        .link()
        .add(LinkVeth::new(name, peer).build())
        .execute()
        .await
        .map_err(|e| nl_error(&format!("creating veth pair {name}/{peer}"), e))
}

/// Creates the veth pair `name` ↔ `peer` with `name` up and enslaved to `bridge` in
/// `handle`'s namespace and `peer` (down) inside the namespace `peer_ns`.
pub async fn add_bridge_port_veth(
    handle: &Handle,
    name: &str,
    bridge: u32,
    peer: &str,
    peer_ns: RawFd,
) -> io::Result<()> {
    // The peer cannot be brought up in the same request (the kernel refuses with ENOTCONN);
    // its namespace's own socket does that.
    let peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
        .name(peer)
        .setns_by_fd(peer_ns)
        .build();
    let msg = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
        .name(name)
        .controller(bridge)
        .up()
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
        .build();
    handle
        .link()
        .add(msg)
        .execute()
        .await
        .map_err(|e| nl_error(&format!("creating veth pair {name}/{peer}"), e))
}

/// Moves the link `name` into the namespace `ns`.
pub async fn move_to_netns(handle: &Handle, name: &str, ns: RawFd) -> io::Result<()> {
    let msg = LinkUnspec::new_with_name(name).setns_by_fd(ns).build();
    handle
        .link()
        .set(msg)
        .execute()
        .await
        .map_err(|e| nl_error(&format!("moving link {name}"), e))
}

/// Creates a bridge `name` (up) and returns its index.
pub async fn add_bridge(handle: &Handle, name: &str) -> io::Result<u32> {
    handle
        .link()
        .add(LinkBridge::new(name).build())
        .execute()
        .await
        .map_err(|e| nl_error(&format!("creating bridge {name}"), e))?;
    index_of(handle, name).await
}

/// Brings the link `name` up, enslaving it to `controller` when given.
pub async fn set_up(handle: &Handle, name: &str, controller: Option<u32>) -> io::Result<()> {
    let mut msg = LinkUnspec::new_with_name(name).up();
    if let Some(c) = controller {
        msg = msg.controller(c);
    }
    handle
        .link()
        .set(msg.build())
        .execute()
        .await
        .map_err(|e| nl_error(&format!("bringing {name} up"), e))
}

/// Brings the link with `index` up.
pub async fn set_up_index(handle: &Handle, index: u32) -> io::Result<()> {
    let msg = LinkUnspec::new_with_index(index).up().build();
    handle
        .link()
        .set(msg)
        .execute()
        .await
        .map_err(|e| nl_error(&format!("bringing link #{index} up"), e))
}

/// Adds `addr/prefix` to the link with `index`.
pub async fn add_address(handle: &Handle, index: u32, addr: IpAddr, prefix: u8) -> io::Result<()> {
    handle
        .address()
        .add(index, addr, prefix)
        .execute()
        .await
        .map_err(|e| nl_error(&format!("adding address {addr}/{prefix}"), e))
}

/// Deletes the link `name` from the caller's namespace with a blocking netlink request, so it
/// also works in `Drop` without an async runtime. A missing link is not an error.
pub fn delete_link_blocking(name: &str) -> io::Result<()> {
    let what = |e: &dyn std::fmt::Display| io::Error::other(format!("deleting link {name}: {e}"));
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::DelLink(msg));
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    req.header.sequence_number = 1;
    req.finalize();
    let mut buf = vec![0u8; req.buffer_len()];
    req.serialize(&mut buf);

    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    set_receive_timeout(&socket, Duration::from_secs(5))?;
    socket.send(&buf, 0)?;
    let (reply, _) = socket.recv_from_full().map_err(|e| what(&e))?;
    let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply).map_err(|e| what(&e))?;
    match reply.payload {
        NetlinkPayload::Error(err) => match err.code {
            None => Ok(()),
            Some(code) if code.get() == -libc::ENODEV => Ok(()),
            Some(_) => Err(what(&err.to_io())),
        },
        other => Err(what(&format!("unexpected reply {other:?}"))),
    }
}

fn set_receive_timeout(socket: &Socket, after: Duration) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let tv = libc::timeval {
        tv_sec: after.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    // SAFETY: `tv` is a valid timeval that outlives the call, and its size is passed along.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
