//! The state file `/run/chaos/netns/<index>.json`: the claim on a cluster index and the record
//! of what the cluster holds, for `chaos gc`.
//!
//! **Invariant:** the state file exists, naming its owner, before anything of the cluster is
//! created, and is removed only after everything else is gone. A runner killed at any instant
//! therefore leaves either nothing or a state file whose owner is dead, which plain `chaos gc`
//! collects.
//!
//! The claim is exclusive: the record is written to a file of this claim's own
//! (`.claim-<index>-<pid>-<n>`, `n` counting this process's claims, since clusters of one
//! process may race for the same index) and hard-linked to `<index>.json`; the link fails when the name
//! exists, so two runners never claim the same index, and a reader never sees a half-written
//! claim. A runner killed between writing and linking leaves only that claim file, which names
//! its owner too; gc removes it once the owner is gone.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::STATE_DIR;

/// What a state file records. gc reads it leniently (see `gc::Recorded`), so fields may be
/// added.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct StateRecord {
    pub index: u32,
    pub cluster: String,
    /// The runner's [`owner`](crate::backend::owner) tag; `runner_pid` stays for older readers.
    pub owner: String,
    pub runner_pid: u32,
    pub host_link: String,
    pub hub_netns: String,
    pub node_netns: Vec<String>,
    pub cgroup_dir: PathBuf,
    pub temp_dir: PathBuf,
}

/// Prefix of the per-process files a claim is written to before it is linked into place.
pub(super) const CLAIM_PREFIX: &str = ".claim-";

/// A fresh claim file for `index`, unique to this claim.
fn claim_file(index: u32) -> PathBuf {
    static CLAIMS: AtomicU64 = AtomicU64::new(0);
    let n = CLAIMS.fetch_add(1, Ordering::Relaxed);
    Path::new(STATE_DIR).join(format!("{CLAIM_PREFIX}{index}-{}-{n}", std::process::id()))
}

/// The index a claim file `.claim-<index>-<pid>-<n>` is for and the pid that wrote it, if
/// `name` is one.
pub(super) fn parse_claim_file(name: &str) -> Option<(u32, u32)> {
    let mut parts = name.strip_prefix(CLAIM_PREFIX)?.split('-');
    let (index, pid, n) = (parts.next()?, parts.next()?, parts.next()?);
    n.parse::<u64>().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some((super::gc::parse_index(index)?, pid.parse().ok()?))
}

fn serialize(record: &StateRecord) -> Vec<u8> {
    // A struct of strings, numbers and paths: serializing cannot fail.
    serde_json::to_vec_pretty(record).unwrap_or_default()
}

/// Claims `record.index` by creating its state file `path` exclusively. `Ok(false)`: another
/// runner (or a crashed one's leftovers) holds it.
pub(super) fn claim(path: &Path, record: &StateRecord) -> io::Result<bool> {
    std::fs::create_dir_all(STATE_DIR)?;
    let aside = claim_file(record.index);
    std::fs::write(&aside, serialize(record))
        .map_err(|e| io::Error::new(e.kind(), format!("writing {}: {e}", aside.display())))?;
    let linked = std::fs::hard_link(&aside, path);
    let _ = std::fs::remove_file(&aside);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("creating {}: {e}", path.display()),
        )),
    }
}

/// Replaces the content of our state file `path` (written aside, then renamed over it, so a
/// reader sees the old record or the new one).
pub(super) fn rewrite(path: &Path, record: &StateRecord) -> io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serialize(record))?;
    std::fs::rename(&tmp, path)
}

/// Removes our state file: the index is free again. A missing file is fine.
pub(super) fn release(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io::Error::new(
            e.kind(),
            format!("removing {}: {e}", path.display()),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_files_name_their_index() {
        assert_eq!(parse_claim_file(".claim-12-345-0"), Some((12, 345)));
        assert_eq!(parse_claim_file(".claim-12-345"), None);
        assert_eq!(parse_claim_file(".claim-12-x-1"), None);
        assert_eq!(parse_claim_file(".claim-012-345-1"), None);
        assert_eq!(parse_claim_file(".claim-12-345-1-2"), None);
        assert_eq!(parse_claim_file("12.json"), None);
        let (a, b) = (claim_file(7), claim_file(7));
        assert_ne!(a, b, "two claims of one process must not share a file");
        let name = a.file_name().unwrap().to_str().unwrap();
        assert_eq!(parse_claim_file(name), Some((7, std::process::id())));
    }
}
