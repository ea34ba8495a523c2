//! A heal that cannot look does not report success: with no file descriptor left, healing a
//! SIGSTOP fault cannot read `/proc/<pid>/stat`, so it fails and keeps the fault — active and
//! in the ledger — until a retry can verify the process runs again.
//!
//! Alone in its test binary: it lowers the whole process's descriptor limit.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chaos_faults::{Error, FaultSpec, FreezeTarget, Injector, Ledger, process};

/// Sets the soft limit of open files; returns the previous one.
fn set_nofile_soft(soft: libc::rlim_t) -> libc::rlim_t {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the rlimit we own; setrlimit only reads it.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        let old = lim.rlim_cur;
        lim.rlim_cur = soft;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        old
    }
}

fn stopped(pid: i32) -> bool {
    process::stat(pid).unwrap().is_some_and(|st| st.is_stopped())
}

#[test]
fn a_heal_without_file_descriptors_keeps_the_fault_until_it_can_verify() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("faults.json");
    let mut child = Command::new("sleep")
        .arg("60")
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let mut inj = Injector::new(&state, &[]).unwrap();
    inj.inject("pause", &FaultSpec::Freeze(FreezeTarget::ProcessTree { pid }))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !stopped(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(stopped(pid), "SIGSTOP did not stop {pid}");

    // The lowest free descriptor becomes the limit: nothing new can be opened.
    let lowest_free = File::open("/dev/null").unwrap().as_raw_fd();
    let old = set_nofile_soft(lowest_free as libc::rlim_t);
    let starved = inj.heal("pause");
    set_nofile_soft(old);

    let err = starved.expect_err("a heal that cannot read /proc must not succeed");
    assert!(
        matches!(&err, Error::Io { source, .. } if source.raw_os_error() == Some(libc::EMFILE)),
        "{err}"
    );
    assert!(stopped(pid), "the heal failed, so it did not touch the process");
    assert_eq!(inj.active().len(), 1, "the fault stays active");
    assert_eq!(Ledger::open(&state).unwrap().entries().len(), 1, "and recorded");

    assert!(inj.heal("pause").unwrap(), "the retry heals");
    assert!(!stopped(pid), "and the process runs again");
    assert!(inj.active().is_empty());
    assert!(Ledger::open(&state).unwrap().entries().is_empty());
    child.kill().unwrap();
    child.wait().unwrap();
}
