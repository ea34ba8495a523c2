//! Link flapping: a thread of ours takes an interface down and up again on a fixed schedule.
//!
//! The schedule is absolute (cycle `k` starts at `start + k × period`, the link is down for its
//! first half), so delays of one step never accumulate. The state the link was in is recorded in
//! the ledger before the first change (as a link fault's is), so whoever heals — [`Flapper::stop`]
//! followed by the injector's restore, or `heal_leftovers` after a crash — puts back exactly that
//! state. The thread never outlives its [`Flapper`]: dropping or stopping it joins the thread.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::link;
use crate::spec::LinkFlap;

/// A running flap of one interface.
pub(crate) struct Flapper {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Flapper {
    /// Starts flapping `flap.interface` (which the caller checked is up). The thread runs in
    /// the calling thread's network namespace (threads inherit it). After `flap.count` cycles
    /// (never when 0) the link is left up, as it was, and the thread ends.
    pub(crate) fn start(flap: &LinkFlap) -> Result<Flapper> {
        flap.validate()?;
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let interface = flap.interface.clone();
        let period = Duration::from_millis(flap.period_ms);
        let count = flap.count;
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("flap-{interface}"))
            .spawn(move || run(&interface, period, count, &flag))
            .map_err(|e| Error::io("spawn thread", "link flap", e))?;
        Ok(Flapper {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread and waits for it; the link may be in either state afterwards (the
    /// injector restores the recorded one).
    pub(crate) fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        let (flag, wake) = &*self.stop;
        *flag.lock().unwrap_or_else(|p| p.into_inner()) = true;
        wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Flapper {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Sleeps until `at` unless stopped first; true when stopped.
fn wait_until(at: Instant, stop: &(Mutex<bool>, Condvar)) -> bool {
    let (flag, wake) = stop;
    let mut stopped = flag.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        if *stopped {
            return true;
        }
        let now = Instant::now();
        if now >= at {
            return false;
        }
        stopped = wake
            .wait_timeout(stopped, at - now)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

fn run(interface: &str, period: Duration, count: u32, stop: &(Mutex<bool>, Condvar)) {
    let start = Instant::now();
    let half = period / 2;
    let mut cycle: u32 = 0;
    while count == 0 || cycle < count {
        let begin = start + period * cycle;
        if wait_until(begin, stop) {
            return;
        }
        if let Err(e) = link::set(interface, Some(false), None) {
            tracing::warn!(interface, error = %e, "link flap: taking the link down failed");
        }
        let up_at = begin + half;
        let stopped = wait_until(up_at, stop);
        if let Err(e) = link::set(interface, Some(true), None) {
            tracing::warn!(interface, error = %e, "link flap: bringing the link up failed");
        }
        if stopped {
            return;
        }
        cycle = cycle.saturating_add(1);
    }
    tracing::info!(interface, cycles = count, "link flap done");
}
