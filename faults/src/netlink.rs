//! A small synchronous netlink layer for the netfilter families (nf_tables, nfqueue).
//!
//! `netlink-packet-route` covers rtnetlink (links, qdiscs) and is used for that, but no
//! maintained crate encodes the nf_tables expressions we need (numgen, byteorder, the xtables
//! compat `NFQUEUE` target) nor gives a pollable NFQUEUE socket, so the few TLV messages are built
//! here. The socket itself is `netlink-sys`.

use std::io;
use std::os::fd::AsFd;
use std::time::Duration;

use netlink_sys::Socket;
use nix::sys::socket::{setsockopt, sockopt};
use nix::sys::time::TimeVal;

/// Netlink message header length.
pub(crate) const NLMSG_HDRLEN: usize = 16;
/// `NLMSG_ERROR`.
const NLMSG_ERROR: u16 = 2;
/// `NLMSG_DONE`.
const NLMSG_DONE: u16 = 3;

pub(crate) const NLM_F_REQUEST: u16 = 0x1;
pub(crate) const NLM_F_ACK: u16 = 0x4;
pub(crate) const NLM_F_DUMP: u16 = 0x300;
pub(crate) const NLM_F_EXCL: u16 = 0x200;
pub(crate) const NLM_F_CREATE: u16 = 0x400;
pub(crate) const NLM_F_APPEND: u16 = 0x800;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

/// How long a netlink request may take before we give up (the kernel answers synchronously, so
/// this only bounds pathological cases).
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Builds one or more netlink messages (a batch) into a byte buffer.
#[derive(Default)]
pub(crate) struct MsgBuilder {
    buf: Vec<u8>,
    msg_start: Option<usize>,
    nests: Vec<usize>,
    /// Sequence numbers of the messages that asked for an ACK.
    pub(crate) acked: Vec<u32>,
}

impl MsgBuilder {
    /// Starts a message; `payload_header` is the fixed family header (e.g. nfgenmsg).
    pub(crate) fn begin(&mut self, ty: u16, flags: u16, seq: u32, payload_header: &[u8]) {
        debug_assert!(self.msg_start.is_none(), "previous message not ended");
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; NLMSG_HDRLEN]);
        self.buf[start + 4..start + 6].copy_from_slice(&ty.to_ne_bytes());
        self.buf[start + 6..start + 8].copy_from_slice(&flags.to_ne_bytes());
        self.buf[start + 8..start + 12].copy_from_slice(&seq.to_ne_bytes());
        self.put_raw(payload_header);
        if flags & NLM_F_ACK != 0 {
            self.acked.push(seq);
        }
        self.msg_start = Some(start);
    }

    /// Ends the current message, writing its length.
    pub(crate) fn end(&mut self) {
        let start = self.msg_start.take().expect("end without begin");
        debug_assert!(self.nests.is_empty(), "unclosed nested attribute");
        let len = (self.buf.len() - start) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    fn put_raw(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        self.buf.resize(align4(self.buf.len()), 0);
    }

    /// Appends an attribute with raw bytes.
    pub(crate) fn attr(&mut self, ty: u16, data: &[u8]) {
        let len = (4 + data.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.put_raw(data);
    }

    /// Appends a NUL-terminated string attribute.
    pub(crate) fn attr_str(&mut self, ty: u16, s: &str) {
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(s.as_bytes());
        v.push(0);
        self.attr(ty, &v);
    }

    /// Appends a big-endian u32 attribute (nf_tables numbers are network order).
    pub(crate) fn attr_be32(&mut self, ty: u16, v: u32) {
        self.attr(ty, &v.to_be_bytes());
    }

    /// Appends a big-endian u64 attribute.
    pub(crate) fn attr_be64(&mut self, ty: u16, v: u64) {
        self.attr(ty, &v.to_be_bytes());
    }

    /// Opens a nested attribute; close it with [`MsgBuilder::nest_end`].
    pub(crate) fn nest_begin(&mut self, ty: u16) {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&[0, 0]);
        self.buf.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    }

    /// Closes the innermost nested attribute.
    pub(crate) fn nest_end(&mut self) {
        let start = self.nests.pop().expect("nest_end without nest_begin");
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }

    /// The encoded bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// True when no message has been added.
    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Forgets all messages, keeping the allocation.
    pub(crate) fn clear(&mut self) {
        self.buf.clear();
        self.acked.clear();
        self.msg_start = None;
        self.nests.clear();
    }
}

/// One parsed netlink message.
pub(crate) struct RawMsg<'a> {
    pub(crate) ty: u16,
    pub(crate) seq: u32,
    /// Everything after the netlink header.
    pub(crate) payload: &'a [u8],
    /// The whole message, header included.
    pub(crate) raw: &'a [u8],
}

/// Iterates over the netlink messages in a datagram.
pub(crate) fn messages(mut buf: &[u8]) -> impl Iterator<Item = RawMsg<'_>> {
    std::iter::from_fn(move || {
        if buf.len() < NLMSG_HDRLEN {
            return None;
        }
        let len = u32::from_ne_bytes(buf[0..4].try_into().ok()?) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            return None;
        }
        let ty = u16::from_ne_bytes([buf[4], buf[5]]);
        let seq = u32::from_ne_bytes(buf[8..12].try_into().ok()?);
        let msg = RawMsg {
            ty,
            seq,
            payload: &buf[NLMSG_HDRLEN..len],
            raw: &buf[..len],
        };
        buf = &buf[align4(len).min(buf.len())..];
        Some(msg)
    })
}

/// Iterates over the attributes in `buf` as `(type without flags, value)`.
pub(crate) fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        if len < 4 || len > buf.len() {
            return None;
        }
        let ty = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        let value = &buf[4..len];
        buf = &buf[align4(len).min(buf.len())..];
        Some((ty, value))
    })
}

/// Finds the first attribute of type `ty`.
pub(crate) fn find_attr(buf: &[u8], ty: u16) -> Option<&[u8]> {
    attrs(buf).find(|(t, _)| *t == ty).map(|(_, v)| v)
}

/// A failed netlink request: the errno and which message (by sequence number) it answered.
#[derive(Debug)]
pub(crate) struct NlError {
    pub(crate) errno: i32,
    pub(crate) seq: u32,
}

impl NlError {
    pub(crate) fn io(&self) -> io::Error {
        io::Error::from_raw_os_error(self.errno)
    }
}

/// A blocking netlink socket with a bounded reply wait.
pub(crate) struct NlSocket {
    pub(crate) sock: Socket,
    seq: u32,
    rx: Vec<u8>,
}

impl NlSocket {
    /// Opens a socket of `protocol` (e.g. `NETLINK_NETFILTER`) in the calling thread's netns.
    pub(crate) fn open(protocol: isize) -> io::Result<Self> {
        let mut sock = Socket::new(protocol)?;
        sock.bind_auto()?;
        let tv = TimeVal::new(REPLY_TIMEOUT.as_secs() as _, 0);
        setsockopt(&sock.as_fd(), sockopt::ReceiveTimeout, &tv).map_err(io::Error::from)?;
        // Ask the kernel to acknowledge with extended error messages; harmless if unsupported.
        let _ = sock.set_ext_ack(true);
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(1);
        Ok(Self {
            sock,
            seq: seed,
            rx: Vec::with_capacity(64 * 1024),
        })
    }

    /// The next sequence number.
    pub(crate) fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends `msgs` and collects replies: every data message is returned whole (header
    /// included), every ACK-flagged message must be answered (ack or error), and a dump must end
    /// with `NLMSG_DONE`. Returns the first error the kernel reported, if any.
    pub(crate) fn transact(
        &mut self,
        msgs: &MsgBuilder,
        dump: bool,
    ) -> io::Result<Result<Vec<Vec<u8>>, NlError>> {
        self.transact_raw(msgs.bytes(), &msgs.acked, dump)
    }

    /// [`NlSocket::transact`] for pre-encoded bytes; `acked` lists the sequence numbers that
    /// carry `NLM_F_ACK`.
    pub(crate) fn transact_raw(
        &mut self,
        bytes: &[u8],
        acked: &[u32],
        dump: bool,
    ) -> io::Result<Result<Vec<Vec<u8>>, NlError>> {
        self.sock.send(bytes, 0)?;
        let mut pending: Vec<u32> = acked.to_vec();
        let mut done = !dump;
        let mut data = Vec::new();
        let mut first_err: Option<NlError> = None;
        while !pending.is_empty() || !done {
            self.rx.clear();
            self.rx.reserve(64 * 1024);
            let n = self.sock.recv(&mut self.rx, 0)?;
            if n > self.rx.len() {
                return Err(io::Error::other("netlink reply truncated"));
            }
            for m in messages(&self.rx) {
                match m.ty {
                    NLMSG_ERROR => {
                        let errno = m
                            .payload
                            .get(0..4)
                            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                            .unwrap_or(-libc::EIO);
                        pending.retain(|s| *s != m.seq);
                        if errno != 0 {
                            if first_err.is_none() {
                                first_err = Some(NlError {
                                    errno: -errno,
                                    seq: m.seq,
                                });
                            }
                            // A failed dump request never sends DONE.
                            done = true;
                        }
                    }
                    NLMSG_DONE => done = true,
                    _ => data.push(m.raw.to_vec()),
                }
            }
        }
        Ok(match first_err {
            Some(e) => Err(e),
            None => Ok(data),
        })
    }
}

/// Sends one rtnetlink request and returns the parsed replies (for a dump: every message).
pub(crate) fn route_request(
    msg: netlink_packet_route::RouteNetlinkMessage,
    flags: u16,
    dump: bool,
) -> io::Result<Result<Vec<netlink_packet_route::RouteNetlinkMessage>, NlError>> {
    use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload};
    let mut sock = NlSocket::open(netlink_sys::protocols::NETLINK_ROUTE)?;
    let seq = sock.next_seq();
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut nl = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
    nl.finalize();
    let mut buf = vec![0; nl.buffer_len()];
    nl.serialize(&mut buf);
    let acked = if flags & NLM_F_ACK != 0 {
        vec![seq]
    } else {
        Vec::new()
    };
    let replies = match sock.transact_raw(&buf, &acked, dump)? {
        Ok(r) => r,
        Err(e) => return Ok(Err(e)),
    };
    let mut out = Vec::new();
    for raw in replies {
        let parsed = NetlinkMessage::<netlink_packet_route::RouteNetlinkMessage>::deserialize(&raw)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        if let NetlinkPayload::InnerMessage(m) = parsed.payload {
            out.push(m);
        }
    }
    Ok(Ok(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_round_trips_nested_attributes() {
        let mut b = MsgBuilder::default();
        b.begin(0x0a06, NLM_F_REQUEST | NLM_F_ACK, 7, &[2, 0, 0, 0]);
        b.attr_str(1, "tbl");
        b.nest_begin(4);
        b.attr_be32(2, 0x01020304);
        b.nest_end();
        b.end();
        let msgs: Vec<_> = messages(b.bytes()).collect();
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].ty, 0x0a06);
        assert_eq!(msgs[0].seq, 7);
        assert_eq!(b.acked, vec![7]);
        let body = &msgs[0].payload[4..];
        assert_eq!(find_attr(body, 1), Some(&b"tbl\0"[..]));
        let nested = find_attr(body, 4).unwrap();
        assert_eq!(find_attr(nested, 2), Some(&[1u8, 2, 3, 4][..]));
    }
}
