//! The fault state directory (`--state-dir`): created and locked only once there is
//! something to record.

use std::fs::File;
use std::path::{Path, PathBuf};

use chaos_proto::{ApiError, ErrorKind};
use nix::fcntl::{Flock, FlockArg};

use super::{STATE_FILE, err};

/// The state directory, created and locked (flock on the directory itself) only once there is
/// something to record, so an agent that never injects leaves nothing in its root directory.
/// The lock keeps a second agent from healing (or recording into) this agent's state.
pub(super) struct StateDir {
    dir: PathBuf,
    lock: Option<Flock<File>>,
    /// We created it, so we remove it once nothing is recorded in it.
    created: bool,
}

impl StateDir {
    /// Locks `dir` if it exists.
    pub(super) fn open(dir: &Path) -> Result<Self, String> {
        let mut state = Self {
            dir: dir.to_path_buf(),
            lock: None,
            created: false,
        };
        if dir.exists() {
            state.lock()?;
        }
        Ok(state)
    }

    fn lock(&mut self) -> Result<(), String> {
        let file = File::open(&self.dir).map_err(|e| format!("cannot open it: {e}"))?;
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
            format!("another chaos-agent uses it ({e}): give each agent its own --state-dir")
        })?;
        self.lock = Some(lock);
        Ok(())
    }

    /// Creates and locks the directory before the first fault is recorded.
    pub(super) fn ensure(&mut self) -> Result<(), ApiError> {
        if self.lock.is_some() {
            return Ok(());
        }
        let dir = self.dir.clone();
        let fail = move |m: String| {
            err(
                ErrorKind::Internal,
                format!("state directory {}: {m}", dir.display()),
            )
        };
        if !self.dir.exists() {
            std::fs::create_dir_all(&self.dir).map_err(|e| fail(format!("cannot create it: {e}")))?;
            self.created = true;
        }
        self.lock().map_err(fail)
    }

    /// After everything was healed on shutdown: removes the (empty) state file, and the
    /// directory if we created it.
    pub(super) fn tidy(&mut self) {
        let file = self.dir.join(STATE_FILE);
        if let Err(e) = std::fs::remove_file(&file)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::debug!("removing {}: {e}", file.display());
        }
        if self.created {
            let _ = std::fs::remove_dir(&self.dir);
        }
    }
}
