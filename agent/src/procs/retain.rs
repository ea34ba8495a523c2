//! What the process table keeps and lists, bounded: exited processes beyond
//! [`MAX_EXITED_PROCS`] entries or [`MAX_EXITED_PROC_SPEC_BYTES`] of specs are pruned (the
//! oldest whose status was collected first, then the oldest uncollected), and a
//! `GET /v1/procs` reply holds at most [`MAX_PROCS_LISTED`] entries and
//! [`MAX_PROCS_REPLY_BYTES`] bytes, running processes first.

use chaos_proto::ProcId;
use chaos_proto::limits::{
    MAX_EXITED_PROC_SPEC_BYTES, MAX_EXITED_PROCS, MAX_PROCS_LISTED, MAX_PROCS_REPLY_BYTES,
};

/// An exited process as pruning sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Exited {
    pub(crate) id: ProcId,
    /// Its exit status was delivered (a `wait` that returned it, an exec stream that ended).
    pub(crate) collected: bool,
    /// Size of its spec.
    pub(crate) bytes: usize,
}

/// The exited processes to drop so that at most `max_count` of them, with at most `max_bytes`
/// of specs, remain: collected ones first, then uncollected ones, each oldest (lowest id)
/// first.
pub(crate) fn to_prune(exited: &[Exited], max_count: usize, max_bytes: usize) -> Vec<ProcId> {
    let mut count = exited.len();
    let mut bytes: usize = exited.iter().map(|e| e.bytes).sum();
    let mut order: Vec<&Exited> = exited.iter().collect();
    order.sort_by_key(|e| (!e.collected, e.id));
    let mut out = Vec::new();
    for e in order {
        if count <= max_count && bytes <= max_bytes {
            break;
        }
        out.push(e.id);
        count -= 1;
        bytes -= e.bytes;
    }
    out
}

/// [`to_prune`] with the agent's limits.
pub(crate) fn prune_exited(exited: &[Exited]) -> Vec<ProcId> {
    to_prune(exited, MAX_EXITED_PROCS, MAX_EXITED_PROC_SPEC_BYTES)
}

/// Builds the JSON array of a `GET /v1/procs` reply from `(running, id, entry JSON)` items:
/// running processes by id, then exited ones newest first, stopping at `max_entries` or before
/// `max_bytes`. Returns the body and how many entries it holds.
pub(crate) fn list_body(
    mut items: Vec<(bool, ProcId, Vec<u8>)>,
    max_entries: usize,
    max_bytes: usize,
) -> (Vec<u8>, usize) {
    items.sort_by_key(|(running, id, _)| (!running, if *running { *id } else { ProcId::MAX - id }));
    let mut body = b"[".to_vec();
    let mut listed = 0;
    for (_, _, json) in items.into_iter().take(max_entries) {
        if body.len() + json.len() + 2 > max_bytes {
            break;
        }
        if listed > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&json);
        listed += 1;
    }
    body.push(b']');
    (body, listed)
}

/// [`list_body`] with the agent's limits.
pub(crate) fn bounded_list(items: Vec<(bool, ProcId, Vec<u8>)>) -> (Vec<u8>, usize) {
    list_body(items, MAX_PROCS_LISTED, MAX_PROCS_REPLY_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exited(id: ProcId, collected: bool, bytes: usize) -> Exited {
        Exited { id, collected, bytes }
    }

    #[test]
    fn collected_go_first_then_the_oldest_uncollected() {
        let all = [
            exited(1, false, 10),
            exited(2, true, 10),
            exited(3, false, 10),
            exited(4, true, 10),
            exited(5, false, 10),
        ];
        assert_eq!(to_prune(&all, 5, 1000), Vec::<ProcId>::new());
        assert_eq!(to_prune(&all, 4, 1000), [2]);
        assert_eq!(to_prune(&all, 2, 1000), [2, 4, 1]);
        // The byte budget prunes too: 50 bytes, 25 allowed.
        assert_eq!(to_prune(&all, 100, 25), [2, 4, 1]);
        assert_eq!(
            to_prune(&[exited(9, false, 100)], 100, 25),
            [9],
            "even one huge spec"
        );
    }

    #[test]
    fn listing_puts_running_first_and_stops_at_its_bounds() {
        let item = |running, id: ProcId| (running, id, format!("{id}").into_bytes());
        let items = vec![item(false, 1), item(true, 4), item(false, 2), item(true, 3)];
        let (body, n) = list_body(items.clone(), 10, 1000);
        assert_eq!(
            (String::from_utf8(body).unwrap(), n),
            ("[3,4,2,1]".to_string(), 4)
        );
        let (body, n) = list_body(items.clone(), 3, 1000);
        assert_eq!((String::from_utf8(body).unwrap(), n), ("[3,4,2]".to_string(), 3));
        let (body, n) = list_body(items, 10, 6);
        assert_eq!((String::from_utf8(body).unwrap(), n), ("[3,4]".to_string(), 2));
        let (body, n) = list_body(Vec::new(), 10, 6);
        assert_eq!((String::from_utf8(body).unwrap(), n), ("[]".to_string(), 0));
    }
}
