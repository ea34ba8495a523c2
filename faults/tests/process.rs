//! Process faults on real process trees and real cgroups.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chaos_faults::{FaultSpec, FreezeTarget, Injector, Mechanism, heal_leftovers, process};

/// A shell loop that rewrites `file` every 20 ms (through child processes), killed on drop.
struct Toucher {
    child: Child,
    file: PathBuf,
}

impl Toucher {
    fn start(dir: &Path) -> Self {
        let file = dir.join("tick");
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "while :; do date +%s%N > {}; sleep 0.02; done",
                file.display()
            ))
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawn sh");
        let t = Self { child, file };
        assert!(t.changes_within(Duration::from_secs(2)), "toucher never started");
        t
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn read(&self) -> String {
        std::fs::read_to_string(&self.file).unwrap_or_default()
    }

    /// True if the file's content changes within `d`.
    fn changes_within(&self, d: Duration) -> bool {
        let first = self.read();
        let end = Instant::now() + d;
        while Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
            let now = self.read();
            if !now.is_empty() && now != first {
                return true;
            }
        }
        false
    }
}

impl Drop for Toucher {
    fn drop(&mut self) {
        let pg = self.pid();
        let _ = process::signal_group(pg, libc::SIGCONT);
        let _ = process::signal_group(pg, libc::SIGKILL);
        let _ = self.child.wait();
    }
}

/// A cgroup directory we create and remove (after killing what is in it).
struct Cgroup(PathBuf);

impl Cgroup {
    fn create(parent: &str) -> Option<Self> {
        let p = Path::new(parent).join(format!("cft-{}-{}", std::process::id(), rand_suffix()));
        std::fs::create_dir(&p).ok()?;
        Some(Self(p))
    }

    /// Moves `pid` and its current descendants in; children forked later are born inside.
    fn adopt(&self, pid: i32) {
        for _ in 0..3 {
            for (p, _) in process::tree(pid).unwrap_or_default() {
                // A short-lived child may exit before we move it.
                let _ = std::fs::write(self.0.join("cgroup.procs"), p.to_string());
            }
            std::thread::sleep(Duration::from_millis(30));
        }
    }
}

fn rand_suffix() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if self.0.join("cgroup.freeze").exists() {
            let _ = std::fs::write(self.0.join("cgroup.freeze"), "0");
        }
        if self.0.join("freezer.state").exists() {
            let _ = std::fs::write(self.0.join("freezer.state"), "THAWED");
        }
        let _ = process::kill_cgroup(&self.0);
        for _ in 0..100 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn skip() -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: needs root to signal, freeze and create cgroups");
        return true;
    }
    false
}

#[test]
fn freeze_process_tree_with_sigstop_then_thaw() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let t = Toucher::start(dir.path());
    let state = dir.path().join("faults.json");
    let mut inj = Injector::new(&state, &[]).unwrap();
    let m = inj
        .inject(
            "pause",
            &FaultSpec::Freeze(FreezeTarget::ProcessTree { pid: t.pid() }),
        )
        .unwrap();
    assert_eq!(m, Mechanism::SigStopTree);
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        !t.changes_within(Duration::from_millis(300)),
        "a frozen tree must stop touching the file"
    );
    // Crash and recover: the restarted injector sends SIGCONT.
    std::mem::forget(inj);
    let report = heal_leftovers(&state).unwrap();
    assert_eq!(report.healed.len(), 1);
    assert!(t.changes_within(Duration::from_secs(2)), "thawed tree resumes");
}

#[test]
fn freeze_cgroup_v2_then_thaw_then_kill() {
    if skip() {
        return;
    }
    // A cgroup2 root has cgroup.controllers (hybrid hosts mount it at /sys/fs/cgroup/unified).
    let Some(cg) = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .iter()
        .filter(|p| Path::new(p).join("cgroup.controllers").exists())
        .find_map(|p| Cgroup::create(p))
        .filter(|c| c.0.join("cgroup.freeze").exists())
    else {
        eprintln!("SKIP: no cgroup v2 hierarchy with cgroup.freeze");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let t = Toucher::start(dir.path());
    cg.adopt(t.pid());
    let state = dir.path().join("faults.json");
    let mut inj = Injector::new(&state, &[]).unwrap();
    let target = FreezeTarget::Cgroup {
        path: cg.0.display().to_string(),
    };
    assert_eq!(
        inj.inject("cg", &FaultSpec::Freeze(target)).unwrap(),
        Mechanism::CgroupV2Freeze
    );
    assert!(
        !t.changes_within(Duration::from_millis(300)),
        "frozen cgroup stops"
    );
    assert!(inj.heal("cg").unwrap());
    assert!(t.changes_within(Duration::from_secs(2)), "thawed cgroup resumes");
    assert_eq!(process::kill_cgroup(&cg.0).unwrap(), Mechanism::CgroupKill);
    let procs = std::fs::read_to_string(cg.0.join("cgroup.procs")).unwrap();
    assert!(procs.trim().is_empty(), "cgroup.kill emptied the cgroup: {procs}");
}

#[test]
fn freeze_cgroup_v1_freezer() {
    if skip() {
        return;
    }
    let Some(cg) = Cgroup::create("/sys/fs/cgroup/freezer").filter(|c| c.0.join("freezer.state").exists())
    else {
        eprintln!("SKIP: no cgroup v1 freezer hierarchy at /sys/fs/cgroup/freezer");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let t = Toucher::start(dir.path());
    cg.adopt(t.pid());
    let state = dir.path().join("faults.json");
    let mut inj = Injector::new(&state, &[]).unwrap();
    let target = FreezeTarget::Cgroup {
        path: cg.0.display().to_string(),
    };
    assert_eq!(
        inj.inject("v1", &FaultSpec::Freeze(target)).unwrap(),
        Mechanism::CgroupV1Freezer
    );
    assert!(
        !t.changes_within(Duration::from_millis(300)),
        "frozen cgroup stops"
    );
    inj.heal_all().unwrap();
    assert!(t.changes_within(Duration::from_secs(2)), "thawed cgroup resumes");
}

#[test]
fn signal_group_kills_the_whole_tree() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut t = Toucher::start(dir.path());
    let tree = process::tree(t.pid()).unwrap();
    assert_eq!(
        process::signal_group(t.pid(), libc::SIGKILL).unwrap(),
        Mechanism::Signal
    );
    let status = t.child.wait().unwrap();
    assert!(!status.success());
    // Orphans may linger as zombies until their new parent reaps them: zombies count as dead.
    let alive = |pid: i32, start: u64| {
        process::stat(pid)
            .unwrap()
            .is_some_and(|st| st.start_time == start && !st.is_dead())
    };
    std::thread::sleep(Duration::from_millis(50));
    for (pid, start) in tree {
        assert!(!alive(pid, start), "pid {pid} survived");
    }
    assert!(!t.changes_within(Duration::from_millis(200)));
}

#[test]
fn unsupported_freezer_names_the_feature() {
    let dir = tempfile::tempdir().unwrap();
    let err = process::freeze_cgroup(dir.path()).unwrap_err();
    assert!(matches!(err, chaos_faults::Error::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("cgroup freezer"), "{err}");
}
