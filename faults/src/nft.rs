//! Our nftables table, driven over netlink.
//!
//! Layout (family `inet`, table [`TABLE`]):
//! - base chains `input` and `output` (filter, priority [`PRIORITY`]), holding only jumps;
//! - per fault, regular chains `<id>-in` / `<id>-out` holding that fault's rules, reached by a
//!   jump rule in the base chain whose comment is `chaos fault <id>`.
//!
//! Each fault chain starts with `return` rules for the exempt local TCP ports, so control traffic
//! is never touched, then one rule per (peer, protocol, port) combination.
//!
//! **Kernel-side expiry.** When the fault has a deadline, its jump rules only match while the
//! kernel's wall clock (`meta time`, Linux ≥ 5.4) is before it, so the fault stops acting at
//! its TTL even if no process of ours is alive to heal it (the chains stay until a heal removes
//! them; they are inert). Removing a fault
//! deletes its jumps and its chains in one atomic batch; removing the last deletes the table.
//! Nothing outside the table is ever touched.

use std::collections::BTreeSet;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};
use crate::netlink::{
    MsgBuilder, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NLMSG_HDRLEN,
    NlSocket, find_attr,
};
use crate::spec::{IpNet, NetScope, Protocol};

/// Name of our table (family inet).
pub const TABLE: &str = "chaos_agent";
/// Priority of our base chains: before the usual filter chains; we only drop, return or queue.
pub const PRIORITY: i32 = -150;
/// Packet mark that our own re-injected packets carry, so queue rules skip them.
pub const OWN_MARK: u32 = 0xC4A0_0001;

const NFPROTO_INET: u8 = 1;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;

const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_DELRULE: u16 = 8;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_HANDLE: u16 = 3;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;

const NF_INET_LOCAL_IN: u32 = 1;
const NF_INET_LOCAL_OUT: u32 = 3;
const NF_DROP: i32 = 0;
const NFT_JUMP: i32 = -3;
const NFT_RETURN: i32 = -5;
/// nf_tables 16-byte register 1 (what `nft` uses).
const REG1: u32 = 1;
const REG_VERDICT: u32 = 0;
const NFT_META_MARK: u32 = 3;
const NFT_META_IIFNAME: u32 = 6;
const NFT_META_OIFNAME: u32 = 7;
const NFT_META_NFPROTO: u32 = 15;
const NFT_META_L4PROTO: u32 = 16;
/// Wall-clock time in nanoseconds since the epoch, host byte order (Linux 5.4).
const NFT_META_TIME_NS: u32 = 30;
const NFT_PAYLOAD_NETWORK: u32 = 1;
const NFT_PAYLOAD_TRANSPORT: u32 = 2;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;
const NFT_CMP_LT: u32 = 2;
const NFT_NG_RANDOM: u32 = 1;
const NFT_BYTEORDER_HTON: u32 = 1;
/// `xt_NFQ_info_v3.flags`: let packets pass when no process listens on the queue.
const NFQ_FLAG_BYPASS: u16 = 0x01;
/// nft's userdata TLV type for a rule comment.
const UDATA_RULE_COMMENT: u8 = 0;

/// What a fault's rules do with a matching packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Drop it.
    Drop,
    /// Drop it when a random number in 0..10000 is below this.
    DropRandom { per10000: u32 },
    /// Send it to an NFQUEUE (bypassed when nobody listens), unless it carries [`OWN_MARK`].
    Queue { num: u16 },
}

/// One nf_tables expression, always on register 1.
#[derive(Debug, Clone)]
enum Expr {
    Meta(u32),
    Cmp(u32, Vec<u8>),
    Payload { base: u32, offset: u32, len: u32 },
    Bitwise(Vec<u8>),
    Numgen(u32),
    Hton32,
    Hton64,
    Verdict(i32),
    Jump(String),
    NfQueue(u16),
}

impl Expr {
    fn encode(&self, b: &mut MsgBuilder) {
        let name = match self {
            Expr::Meta(_) => "meta",
            Expr::Cmp(..) => "cmp",
            Expr::Payload { .. } => "payload",
            Expr::Bitwise(_) => "bitwise",
            Expr::Numgen(_) => "numgen",
            Expr::Hton32 | Expr::Hton64 => "byteorder",
            Expr::Verdict(_) | Expr::Jump(_) => "immediate",
            Expr::NfQueue(_) => "target",
        };
        b.nest_begin(NFTA_LIST_ELEM);
        b.attr_str(NFTA_EXPR_NAME, name);
        b.nest_begin(NFTA_EXPR_DATA);
        match self {
            Expr::Meta(key) => {
                b.attr_be32(1, REG1); // NFTA_META_DREG
                b.attr_be32(2, *key); // NFTA_META_KEY
            }
            Expr::Cmp(op, data) => {
                b.attr_be32(1, REG1); // NFTA_CMP_SREG
                b.attr_be32(2, *op); // NFTA_CMP_OP
                b.nest_begin(3); // NFTA_CMP_DATA
                b.attr(NFTA_DATA_VALUE, data);
                b.nest_end();
            }
            Expr::Payload { base, offset, len } => {
                b.attr_be32(1, REG1); // NFTA_PAYLOAD_DREG
                b.attr_be32(2, *base);
                b.attr_be32(3, *offset);
                b.attr_be32(4, *len);
            }
            Expr::Bitwise(mask) => {
                b.attr_be32(1, REG1); // NFTA_BITWISE_SREG
                b.attr_be32(2, REG1); // NFTA_BITWISE_DREG
                b.attr_be32(3, mask.len() as u32); // NFTA_BITWISE_LEN
                b.nest_begin(4); // NFTA_BITWISE_MASK
                b.attr(NFTA_DATA_VALUE, mask);
                b.nest_end();
                b.nest_begin(5); // NFTA_BITWISE_XOR
                b.attr(NFTA_DATA_VALUE, &vec![0; mask.len()]);
                b.nest_end();
            }
            Expr::Numgen(modulus) => {
                b.attr_be32(1, REG1); // NFTA_NG_DREG
                b.attr_be32(2, *modulus); // NFTA_NG_MODULUS
                b.attr_be32(3, NFT_NG_RANDOM); // NFTA_NG_TYPE
                b.attr_be32(4, 0); // NFTA_NG_OFFSET
            }
            Expr::Hton32 | Expr::Hton64 => {
                let size = if matches!(self, Expr::Hton64) { 8 } else { 4 };
                b.attr_be32(1, REG1); // NFTA_BYTEORDER_SREG
                b.attr_be32(2, REG1); // NFTA_BYTEORDER_DREG
                b.attr_be32(3, NFT_BYTEORDER_HTON);
                b.attr_be32(4, size); // LEN
                b.attr_be32(5, size); // SIZE
            }
            Expr::Verdict(code) => encode_verdict(b, *code, None),
            Expr::Jump(chain) => encode_verdict(b, NFT_JUMP, Some(chain)),
            Expr::NfQueue(num) => {
                b.attr_str(1, "NFQUEUE"); // NFTA_TARGET_NAME
                b.attr_be32(2, 3); // NFTA_TARGET_REV
                // struct xt_NFQ_info_v3 { u16 queuenum, queues_total, flags }, XT_ALIGNed to 8.
                let mut info = [0u8; 8];
                info[0..2].copy_from_slice(&num.to_ne_bytes());
                info[2..4].copy_from_slice(&1u16.to_ne_bytes());
                info[4..6].copy_from_slice(&NFQ_FLAG_BYPASS.to_ne_bytes());
                b.attr(3, &info); // NFTA_TARGET_INFO
            }
        }
        b.nest_end();
        b.nest_end();
    }
}

fn encode_verdict(b: &mut MsgBuilder, code: i32, chain: Option<&str>) {
    b.attr_be32(1, REG_VERDICT); // NFTA_IMMEDIATE_DREG
    b.nest_begin(2); // NFTA_IMMEDIATE_DATA
    b.nest_begin(NFTA_DATA_VERDICT);
    b.attr_be32(NFTA_VERDICT_CODE, code as u32);
    if let Some(chain) = chain {
        b.attr_str(NFTA_VERDICT_CHAIN, chain);
    }
    b.nest_end();
    b.nest_end();
}

fn comment(text: &str) -> Vec<u8> {
    let mut v = vec![UDATA_RULE_COMMENT, (text.len() + 1) as u8];
    v.extend_from_slice(text.as_bytes());
    v.push(0);
    v
}

fn fault_comment(id: &str) -> String {
    format!("chaos fault {id}")
}

/// Names of the chains of fault `id`: `(inbound, outbound)`.
pub(crate) fn fault_chains(id: &str) -> (String, String) {
    (format!("{id}-in"), format!("{id}-out"))
}

/// Checks that `id` is usable in chain names and comments.
pub(crate) fn validate_id(id: &str) -> Result<()> {
    chaos_proto::validate_fault_id(id).map_err(|message| Error::invalid("id", message))
}

/// The match conditions of every rule of a fault chain, for one hook.
fn match_sets(scope: &NetScope, inbound: bool) -> Vec<Vec<Expr>> {
    let peers: Vec<Option<IpNet>> = if scope.peers.is_empty() {
        vec![None]
    } else {
        scope.peers.iter().copied().map(Some).collect()
    };
    let protocols: Vec<Option<Protocol>> = match (scope.protocol, scope.ports.is_empty()) {
        (Some(p), _) => vec![Some(p)],
        (None, true) => vec![None],
        (None, false) => vec![Some(Protocol::Tcp), Some(Protocol::Udp)],
    };
    let mut sets = Vec::new();
    for peer in &peers {
        // ICMP without a peer must name both families' protocol numbers.
        let families: Vec<Option<u8>> = match peer {
            Some(p) if p.addr.is_ipv4() => vec![Some(NFPROTO_IPV4)],
            Some(_) => vec![Some(NFPROTO_IPV6)],
            None if protocols.contains(&Some(Protocol::Icmp)) => {
                vec![Some(NFPROTO_IPV4), Some(NFPROTO_IPV6)]
            }
            None => vec![None],
        };
        for family in &families {
            for proto in &protocols {
                let mut base = Vec::new();
                if let Some(name) = &scope.interface {
                    // `meta iifname`/`oifname`: the name zero-padded to IFNAMSIZ, compared whole.
                    let mut padded = name.as_bytes().to_vec();
                    padded.resize(16, 0);
                    let key = if inbound {
                        NFT_META_IIFNAME
                    } else {
                        NFT_META_OIFNAME
                    };
                    base.push(Expr::Meta(key));
                    base.push(Expr::Cmp(NFT_CMP_EQ, padded));
                }
                if let Some(family) = family {
                    base.push(Expr::Meta(NFT_META_NFPROTO));
                    base.push(Expr::Cmp(NFT_CMP_EQ, vec![*family]));
                }
                if let Some(peer) = peer {
                    let v4 = peer.addr.is_ipv4();
                    let offset = match (v4, inbound) {
                        (true, true) => 12,
                        (true, false) => 16,
                        (false, true) => 8,
                        (false, false) => 24,
                    };
                    let addr = peer.octets();
                    let mask = peer.mask();
                    if peer.prefix > 0 {
                        base.push(Expr::Payload {
                            base: NFT_PAYLOAD_NETWORK,
                            offset,
                            len: addr.len() as u32,
                        });
                        let full = (peer.prefix as usize) == addr.len() * 8;
                        if !full {
                            base.push(Expr::Bitwise(mask.clone()));
                        }
                        let net: Vec<u8> = addr.iter().zip(&mask).map(|(a, m)| a & m).collect();
                        base.push(Expr::Cmp(NFT_CMP_EQ, net));
                    }
                }
                if let Some(proto) = proto {
                    let number = match (proto, family) {
                        (Protocol::Tcp, _) => 6,
                        (Protocol::Udp, _) => 17,
                        (Protocol::Icmp, Some(NFPROTO_IPV6)) => 58,
                        (Protocol::Icmp, _) => 1,
                    };
                    base.push(Expr::Meta(NFT_META_L4PROTO));
                    base.push(Expr::Cmp(NFT_CMP_EQ, vec![number]));
                }
                if scope.ports.is_empty() {
                    sets.push(base);
                } else {
                    for port in &scope.ports {
                        for offset in [0, 2] {
                            let mut set = base.clone();
                            set.push(Expr::Payload {
                                base: NFT_PAYLOAD_TRANSPORT,
                                offset,
                                len: 2,
                            });
                            set.push(Expr::Cmp(NFT_CMP_EQ, port.to_be_bytes().to_vec()));
                            sets.push(set);
                        }
                    }
                }
            }
        }
    }
    sets
}

/// Expressions that match only while the wall clock is before `deadline` — what `nft` writes for
/// `meta time < "…"`: load the time, convert it to big endian, compare.
fn before(deadline: SystemTime) -> Vec<Expr> {
    let ns = deadline
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    vec![
        Expr::Meta(NFT_META_TIME_NS),
        Expr::Hton64,
        Expr::Cmp(NFT_CMP_LT, ns.to_be_bytes().to_vec()),
    ]
}

fn action_exprs(action: Action) -> Vec<Expr> {
    match action {
        Action::Drop => vec![Expr::Verdict(NF_DROP)],
        Action::DropRandom { per10000 } => vec![
            Expr::Numgen(10_000),
            Expr::Hton32,
            Expr::Cmp(NFT_CMP_LT, per10000.to_be_bytes().to_vec()),
            Expr::Verdict(NF_DROP),
        ],
        Action::Queue { num } => vec![
            Expr::Meta(NFT_META_MARK),
            Expr::Cmp(NFT_CMP_NEQ, OWN_MARK.to_ne_bytes().to_vec()),
            Expr::NfQueue(num),
        ],
    }
}

fn nfgen(family: u8, res_id: u16) -> [u8; 4] {
    let r = res_id.to_be_bytes();
    [family, 0, r[0], r[1]]
}

const fn nft_type(msg: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | msg
}

/// A rule as listed by the kernel.
struct ListedRule {
    chain: String,
    handle: u64,
    comment: Option<String>,
}

/// A connection to nf_tables in the calling thread's network namespace.
pub(crate) struct Nft {
    sock: NlSocket,
}

impl Nft {
    /// Opens a netlink socket in the current network namespace.
    pub(crate) fn open() -> Result<Self> {
        let sock = NlSocket::open(netlink_sys::protocols::NETLINK_NETFILTER)
            .map_err(|e| Error::netlink("open NETLINK_NETFILTER socket", e))?;
        Ok(Self { sock })
    }

    fn batch(&mut self, build: impl FnOnce(&mut MsgBuilder, &mut dyn FnMut() -> u32)) -> MsgBuilder {
        let mut b = MsgBuilder::default();
        let seq = self.sock.next_seq();
        b.begin(
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            seq,
            &nfgen(0, NFNL_SUBSYS_NFTABLES),
        );
        b.end();
        let sock = &mut self.sock;
        let mut next = || sock.next_seq();
        build(&mut b, &mut next);
        let seq = self.sock.next_seq();
        b.begin(
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            seq,
            &nfgen(0, NFNL_SUBSYS_NFTABLES),
        );
        b.end();
        b
    }

    fn send(&mut self, b: &MsgBuilder, dump: bool, op: &str) -> Result<Vec<Vec<u8>>, std::io::Error> {
        match self.sock.transact(b, dump) {
            Ok(Ok(data)) => Ok(data),
            Ok(Err(e)) => {
                tracing::debug!(op, errno = e.errno, seq = e.seq, "nf_tables request failed");
                Err(e.io())
            }
            Err(e) => Err(e),
        }
    }

    /// Installs the rules of fault `id` in one atomic batch (creating the table and base chains
    /// if needed). Fails with [`Error::AlreadyActive`] if the fault's chains exist.
    /// Installs fault `id`'s chains and jumps; with `deadline`, the jumps match only before it
    /// (kernel-side expiry).
    pub(crate) fn install(
        &mut self,
        id: &str,
        scope: &NetScope,
        exempt: &[u16],
        action: Action,
        deadline: Option<SystemTime>,
    ) -> Result<()> {
        validate_id(id)?;
        scope.validate()?;
        let (chain_in, chain_out) = fault_chains(id);
        let tag = comment(&fault_comment(id));
        let exempt: BTreeSet<u16> = exempt.iter().chain(&scope.exempt_tcp_ports).copied().collect();
        let dir = scope.direction;
        // Re-declaring existing base chains makes the kernel re-validate their hooks (an RCU
        // grace period, ~10 ms): only create them when they are missing.
        let existing = self.chains()?;
        let create_base = !(existing.iter().any(|c| c == "input") && existing.iter().any(|c| c == "output"));
        let b = self.batch(|b, seq| {
            let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE;
            if create_base {
                b.begin(nft_type(NFT_MSG_NEWTABLE), flags, seq(), &nfgen(NFPROTO_INET, 0));
                b.attr_str(NFTA_TABLE_NAME, TABLE);
                b.end();
            }
            for (base, hook) in [("input", NF_INET_LOCAL_IN), ("output", NF_INET_LOCAL_OUT)] {
                if !create_base {
                    break;
                }
                b.begin(nft_type(NFT_MSG_NEWCHAIN), flags, seq(), &nfgen(NFPROTO_INET, 0));
                b.attr_str(NFTA_CHAIN_TABLE, TABLE);
                b.attr_str(NFTA_CHAIN_NAME, base);
                b.nest_begin(NFTA_CHAIN_HOOK);
                b.attr_be32(NFTA_HOOK_HOOKNUM, hook);
                b.attr_be32(NFTA_HOOK_PRIORITY, PRIORITY as u32);
                b.nest_end();
                b.attr_str(NFTA_CHAIN_TYPE, "filter");
                b.end();
            }
            for (wanted, inbound, chain, base) in [
                (dir.inbound(), true, &chain_in, "input"),
                (dir.outbound(), false, &chain_out, "output"),
            ] {
                if !wanted {
                    continue;
                }
                b.begin(
                    nft_type(NFT_MSG_NEWCHAIN),
                    flags | NLM_F_EXCL,
                    seq(),
                    &nfgen(NFPROTO_INET, 0),
                );
                b.attr_str(NFTA_CHAIN_TABLE, TABLE);
                b.attr_str(NFTA_CHAIN_NAME, chain);
                b.end();
                let mut rules: Vec<Vec<Expr>> = Vec::new();
                for port in &exempt {
                    // The local port is the destination of inbound and the source of outbound packets.
                    let offset = if inbound { 2 } else { 0 };
                    rules.push(vec![
                        Expr::Meta(NFT_META_L4PROTO),
                        Expr::Cmp(NFT_CMP_EQ, vec![6]),
                        Expr::Payload {
                            base: NFT_PAYLOAD_TRANSPORT,
                            offset,
                            len: 2,
                        },
                        Expr::Cmp(NFT_CMP_EQ, port.to_be_bytes().to_vec()),
                        Expr::Verdict(NFT_RETURN),
                    ]);
                }
                for mut set in match_sets(scope, inbound) {
                    set.extend(action_exprs(action));
                    rules.push(set);
                }
                for rule in rules {
                    b.begin(
                        nft_type(NFT_MSG_NEWRULE),
                        flags | NLM_F_APPEND,
                        seq(),
                        &nfgen(NFPROTO_INET, 0),
                    );
                    b.attr_str(NFTA_RULE_TABLE, TABLE);
                    b.attr_str(NFTA_RULE_CHAIN, chain);
                    b.nest_begin(NFTA_RULE_EXPRESSIONS);
                    for e in &rule {
                        e.encode(b);
                    }
                    b.nest_end();
                    b.attr(NFTA_RULE_USERDATA, &tag);
                    b.end();
                }
                b.begin(
                    nft_type(NFT_MSG_NEWRULE),
                    flags | NLM_F_APPEND,
                    seq(),
                    &nfgen(NFPROTO_INET, 0),
                );
                b.attr_str(NFTA_RULE_TABLE, TABLE);
                b.attr_str(NFTA_RULE_CHAIN, base);
                b.nest_begin(NFTA_RULE_EXPRESSIONS);
                for e in deadline.map(before).unwrap_or_default() {
                    e.encode(b);
                }
                Expr::Jump(chain.clone()).encode(b);
                b.nest_end();
                b.attr(NFTA_RULE_USERDATA, &tag);
                b.end();
            }
        });
        self.send(&b, false, "install").map(|_| ()).map_err(|e| match e.raw_os_error() {
            Some(libc::EEXIST) => Error::AlreadyActive { id: id.to_string() },
            Some(libc::ENOENT) | Some(libc::EOPNOTSUPP) if matches!(action, Action::Queue { .. }) => {
                Error::Unsupported {
                    feature: "xtables NFQUEUE target in nf_tables (CONFIG_NFT_COMPAT, CONFIG_NETFILTER_XT_TARGET_NFQUEUE)",
                    reason: e.to_string(),
                }
            }
            Some(libc::ENOENT) | Some(libc::EOPNOTSUPP) if matches!(action, Action::DropRandom { .. }) => {
                Error::Unsupported { feature: "nftables numgen (CONFIG_NFT_NUMGEN)", reason: e.to_string() }
            }
            Some(libc::EPROTONOSUPPORT) | Some(libc::EAFNOSUPPORT) => Error::Unsupported {
                feature: "nf_tables inet family (CONFIG_NF_TABLES_INET)",
                reason: e.to_string(),
            },
            _ => Error::netlink(format!("install nftables rules of fault {id}"), e),
        })
    }

    /// Names of the chains in our table (empty when the table does not exist).
    pub(crate) fn chains(&mut self) -> Result<Vec<String>> {
        let mut b = MsgBuilder::default();
        let seq = self.sock.next_seq();
        b.begin(
            nft_type(NFT_MSG_GETCHAIN),
            NLM_F_REQUEST | NLM_F_DUMP,
            seq,
            &nfgen(NFPROTO_INET, 0),
        );
        b.attr_str(NFTA_CHAIN_TABLE, TABLE);
        b.end();
        let data = self
            .send(&b, true, "list chains")
            .map_err(|e| Error::netlink("list chains", e))?;
        Ok(data
            .iter()
            .filter_map(|p| {
                let body = p.get(NLMSG_HDRLEN + 4..)?;
                let table = cstr(find_attr(body, NFTA_CHAIN_TABLE)?);
                (table == TABLE).then(|| cstr(find_attr(body, NFTA_CHAIN_NAME).unwrap_or_default()))
            })
            .collect())
    }

    fn rules(&mut self) -> Result<Vec<ListedRule>> {
        let mut b = MsgBuilder::default();
        let seq = self.sock.next_seq();
        b.begin(
            nft_type(NFT_MSG_GETRULE),
            NLM_F_REQUEST | NLM_F_DUMP,
            seq,
            &nfgen(NFPROTO_INET, 0),
        );
        b.attr_str(NFTA_RULE_TABLE, TABLE);
        b.end();
        let data = match self.send(&b, true, "list rules") {
            Ok(d) => d,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(Vec::new()),
            Err(e) => return Err(Error::netlink("list rules", e)),
        };
        Ok(data
            .iter()
            .filter_map(|p| {
                let body = p.get(NLMSG_HDRLEN + 4..)?;
                if cstr(find_attr(body, NFTA_RULE_TABLE)?) != TABLE {
                    return None;
                }
                let chain = cstr(find_attr(body, NFTA_RULE_CHAIN)?);
                let handle = u64::from_be_bytes(find_attr(body, NFTA_RULE_HANDLE)?.try_into().ok()?);
                let comment = find_attr(body, NFTA_RULE_USERDATA).and_then(parse_comment);
                Some(ListedRule {
                    chain,
                    handle,
                    comment,
                })
            })
            .collect())
    }

    /// True when our table exists.
    pub(crate) fn table_exists(&mut self) -> Result<bool> {
        let mut b = MsgBuilder::default();
        let seq = self.sock.next_seq();
        b.begin(
            nft_type(NFT_MSG_GETTABLE),
            NLM_F_REQUEST | NLM_F_ACK,
            seq,
            &nfgen(NFPROTO_INET, 0),
        );
        b.attr_str(NFTA_TABLE_NAME, TABLE);
        b.end();
        match self.send(&b, false, "get table") {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(Error::netlink("get table", e)),
        }
    }

    /// Removes fault `id`'s jumps and chains; deletes the table when nothing else is left in it.
    /// Returns whether anything was removed. Idempotent.
    pub(crate) fn remove(&mut self, id: &str) -> Result<bool> {
        validate_id(id)?;
        let (chain_in, chain_out) = fault_chains(id);
        let chains = self.chains()?;
        let ours: Vec<&String> = chains
            .iter()
            .filter(|c| **c == chain_in || **c == chain_out)
            .collect();
        if ours.is_empty() {
            return Ok(false);
        }
        let others = chains
            .iter()
            .any(|c| !ours.contains(&c) && c != "input" && c != "output");
        if !others {
            self.delete_table()?;
            return Ok(true);
        }
        let tag = fault_comment(id);
        let jumps: Vec<ListedRule> = self
            .rules()?
            .into_iter()
            .filter(|r| (r.chain == "input" || r.chain == "output") && r.comment.as_deref() == Some(&tag))
            .collect();
        let b = self.batch(|b, seq| {
            let flags = NLM_F_REQUEST | NLM_F_ACK;
            for r in &jumps {
                b.begin(nft_type(NFT_MSG_DELRULE), flags, seq(), &nfgen(NFPROTO_INET, 0));
                b.attr_str(NFTA_RULE_TABLE, TABLE);
                b.attr_str(NFTA_RULE_CHAIN, &r.chain);
                b.attr_be64(NFTA_RULE_HANDLE, r.handle);
                b.end();
            }
            for chain in &ours {
                // Without a handle DELRULE flushes the chain.
                b.begin(nft_type(NFT_MSG_DELRULE), flags, seq(), &nfgen(NFPROTO_INET, 0));
                b.attr_str(NFTA_RULE_TABLE, TABLE);
                b.attr_str(NFTA_RULE_CHAIN, chain);
                b.end();
                b.begin(nft_type(NFT_MSG_DELCHAIN), flags, seq(), &nfgen(NFPROTO_INET, 0));
                b.attr_str(NFTA_CHAIN_TABLE, TABLE);
                b.attr_str(NFTA_CHAIN_NAME, chain);
                b.end();
            }
        });
        self.send(&b, false, "remove")
            .map_err(|e| Error::netlink(format!("remove nftables rules of fault {id}"), e))?;
        Ok(true)
    }

    /// Deletes our whole table (and everything in it). Ok if it does not exist.
    pub(crate) fn delete_table(&mut self) -> Result<()> {
        let b = self.batch(|b, seq| {
            b.begin(
                nft_type(NFT_MSG_DELTABLE),
                NLM_F_REQUEST | NLM_F_ACK,
                seq(),
                &nfgen(NFPROTO_INET, 0),
            );
            b.attr_str(NFTA_TABLE_NAME, TABLE);
            b.end();
        });
        match self.send(&b, false, "delete table") {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(Error::netlink(format!("delete table inet {TABLE}"), e)),
        }
    }
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn parse_comment(udata: &[u8]) -> Option<String> {
    let mut rest = udata;
    while rest.len() >= 2 {
        let (ty, len) = (rest[0], rest[1] as usize);
        let value = rest.get(2..2 + len)?;
        if ty == UDATA_RULE_COMMENT {
            return Some(cstr(value));
        }
        rest = &rest[2 + len..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Direction;

    #[test]
    fn comment_round_trips() {
        assert_eq!(
            parse_comment(&comment("chaos fault x")).as_deref(),
            Some("chaos fault x")
        );
    }

    #[test]
    fn match_sets_cover_peers_protocols_and_ports() {
        let scope = NetScope {
            peers: vec!["10.0.0.0/24".parse().unwrap(), "fd00::1".parse().unwrap()],
            ports: vec![80],
            ..NetScope::default()
        };
        // 2 peers x (tcp, udp) x (sport, dport)
        assert_eq!(match_sets(&scope, true).len(), 8);
        let icmp_any = NetScope {
            protocol: Some(Protocol::Icmp),
            ..NetScope::default()
        };
        assert_eq!(match_sets(&icmp_any, false).len(), 2);
    }

    #[test]
    fn ids_are_validated() {
        assert!(validate_id("f-1.a_b").is_ok());
        assert!(validate_id("").is_err());
        assert!(validate_id("a b").is_err());
        assert!(validate_id(&"x".repeat(65)).is_err());
    }

    #[test]
    fn direction_helpers() {
        assert!(Direction::Both.inbound() && Direction::Both.outbound());
        assert!(!Direction::In.outbound());
    }
}
