//! The ledger: a JSON state file listing every object we installed, written before the object
//! is installed and rewritten after it is removed, so a restarted process can remove exactly
//! what a killed one left behind.
//!
//! Durability target: the death of our process (SIGKILL), not power loss — a reboot clears
//! every kernel object the ledger records anyway. So there is no fsync (it cost 3–7 ms per
//! change on a busy disk): each save is one `pwrite` of the whole document at offset 0 followed
//! by `ftruncate`. A kill between the two leaves the new document followed by stale bytes, so
//! the reader parses only the first JSON value.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One object we installed and how to remove it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "object", rename_all = "snake_case")]
pub enum Installed {
    /// Chains `<fault>-in` / `<fault>-out` and their jumps in our nftables table.
    NftChains {
        /// Fault id (names the chains).
        fault: String,
    },
    /// A qdisc we installed as root of an interface, identified by its handle.
    RootQdisc {
        /// Interface name.
        interface: String,
        /// Our handle (major << 16).
        handle: u32,
    },
    /// Link state before our change, to restore.
    Link {
        /// Interface name.
        interface: String,
        /// Whether it was administratively up.
        was_up: bool,
        /// Its MTU.
        mtu: u32,
    },
    /// A cgroup we froze.
    CgroupFrozen {
        /// The cgroup directory.
        path: String,
        /// v2 (`cgroup.freeze`) or v1 (`freezer.state`).
        v2: bool,
        /// Where its cgroup filesystem was mounted when it was frozen, so a heal can tell a
        /// cgroup that is gone from one this process cannot see (see
        /// [`crate::cgroup::cgroup_gone`]). Absent in entries of older versions.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mount: Option<String>,
    },
    /// Processes we stopped with SIGSTOP, identified by pid and start time (so a reused pid is
    /// never sent SIGCONT).
    StoppedProcesses {
        /// `(pid, starttime in clock ticks from /proc/<pid>/stat)`.
        pids: Vec<(i32, u64)>,
    },
}

/// An entry: which fault installed which object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// The fault id.
    pub fault: String,
    /// The object.
    pub installed: Installed,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct LedgerFile {
    version: u32,
    entries: Vec<LedgerEntry>,
}

/// The state file. Every change is one write of the whole document (see the module docs); the
/// in-memory entries change only once the write succeeded.
#[derive(Debug)]
pub struct Ledger {
    path: PathBuf,
    entries: Vec<LedgerEntry>,
}

impl Ledger {
    /// Opens (or starts empty, when missing) the ledger at `path`.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self> {
        let path = path.into();
        let entries = match fs::read(&path) {
            Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => Vec::new(),
            Ok(bytes) => {
                let first = serde_json::Deserializer::from_slice(&bytes)
                    .into_iter::<LedgerFile>()
                    .next();
                let file = first
                    .unwrap_or_else(|| serde_json::from_slice(b""))
                    .map_err(|e| Error::Ledger {
                        path: path.clone(),
                        reason: format!(
                            "not a chaos-faults state file ({e}); inspect it, heal by hand, then delete it"
                        ),
                    })?;
                file.entries
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::io("read", &path, e)),
        };
        Ok(Self { path, entries })
    }

    /// The state file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// All entries, oldest first.
    pub fn entries(&self) -> &[LedgerEntry] {
        &self.entries
    }

    /// Records an object (before installing it) and persists. When the file cannot be written
    /// nothing is recorded, in memory either, so the caller must not install the object.
    pub fn record(&mut self, fault: &str, installed: Installed) -> Result<()> {
        let mut next = self.entries.clone();
        next.push(LedgerEntry {
            fault: fault.to_string(),
            installed,
        });
        self.commit(next)
    }

    /// Forgets one entry (after removing its object) and persists. When the file cannot be
    /// written the entry stays, in memory too, so a later heal still finds it.
    pub fn forget(&mut self, entry: &LedgerEntry) -> Result<()> {
        if let Some(i) = self.entries.iter().position(|e| e == entry) {
            let mut next = self.entries.clone();
            next.remove(i);
            self.commit(next)?;
        }
        Ok(())
    }

    /// Replaces an entry (e.g. to add details learnt while installing) and persists.
    pub fn replace(&mut self, old: &LedgerEntry, new: Installed) -> Result<()> {
        let mut next = self.entries.clone();
        if let Some(e) = next.iter_mut().find(|e| *e == old) {
            e.installed = new;
        }
        self.commit(next)
    }

    /// Writes `entries` and, once they are on file, makes them the ledger's.
    fn commit(&mut self, entries: Vec<LedgerEntry>) -> Result<()> {
        self.save(&entries)?;
        self.entries = entries;
        Ok(())
    }

    fn save(&self, entries: &[LedgerEntry]) -> Result<()> {
        let file = LedgerFile {
            version: 1,
            entries: entries.to_vec(),
        };
        let json = serde_json::to_vec_pretty(&file).expect("ledger entries always serialize");
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
        }
        let write = || -> std::io::Result<()> {
            let f = fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&self.path)?;
            f.write_all_at(&json, 0)?;
            f.set_len(json.len() as u64)
        };
        write().map_err(|e| Error::io("write", &self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_persists_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.json");
        let mut l = Ledger::open(&path).unwrap();
        l.record("f1", Installed::NftChains { fault: "f1".into() })
            .unwrap();
        l.record(
            "f2",
            Installed::RootQdisc {
                interface: "eth0".into(),
                handle: 0xC4A0_0000,
            },
        )
        .unwrap();
        let again = Ledger::open(&path).unwrap();
        assert_eq!(again.entries().len(), 2);
        let first = again.entries()[0].clone();
        let mut again = again;
        again.forget(&first).unwrap();
        assert_eq!(Ledger::open(&path).unwrap().entries().len(), 1);
    }

    #[test]
    fn stale_tail_after_an_interrupted_save_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let mut l = Ledger::open(&path).unwrap();
        l.record(
            "long-fault-id",
            Installed::NftChains {
                fault: "long-fault-id".into(),
            },
        )
        .unwrap();
        let long = fs::read(&path).unwrap();
        l.forget(&l.entries()[0].clone()).unwrap();
        // Simulate a kill between pwrite and ftruncate: new document, old bytes after it.
        let mut short = fs::read(&path).unwrap();
        short.extend_from_slice(&long[short.len()..]);
        fs::write(&path, short).unwrap();
        assert!(Ledger::open(&path).unwrap().entries().is_empty());
    }

    #[test]
    fn a_failed_write_changes_nothing_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let mut l = Ledger::open(&path).unwrap();
        l.record("f1", Installed::NftChains { fault: "f1".into() })
            .unwrap();
        // The file becomes unwritable (a directory in its place): forgetting must keep the
        // entry, or a retried heal would find nothing left to heal.
        fs::remove_file(&path).unwrap();
        fs::create_dir(&path).unwrap();
        let entry = l.entries()[0].clone();
        assert!(l.forget(&entry).is_err());
        assert_eq!(l.entries(), [entry]);
        assert!(
            l.record("f2", Installed::NftChains { fault: "f2".into() })
                .is_err()
        );
        assert_eq!(l.entries().len(), 1, "an unrecorded object is not listed");
        fs::remove_dir(&path).unwrap();
        l.forget(&l.entries()[0].clone()).unwrap();
        assert!(Ledger::open(&path).unwrap().entries().is_empty());
    }

    #[test]
    fn old_cgroup_entries_without_a_mount_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        fs::write(
            &path,
            r#"{"version":1,"entries":[{"fault":"c","installed":{"object":"cgroup_frozen","path":"/x","v2":true}}]}"#,
        )
        .unwrap();
        let l = Ledger::open(&path).unwrap();
        assert_eq!(
            l.entries()[0].installed,
            Installed::CgroupFrozen {
                path: "/x".into(),
                v2: true,
                mount: None
            }
        );
    }

    #[test]
    fn corrupt_ledger_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        fs::write(&path, "{not json").unwrap();
        let err = Ledger::open(&path).unwrap_err().to_string();
        assert!(err.contains("state.json"), "{err}");
    }
}
