//! Link-flap period accuracy: a flap of a veth in a throwaway namespace (needs root), its
//! transitions seen by a thread polling the link over rtnetlink every 0.2 ms; reports the error
//! of each cycle's start (up→down) and of each down phase against the plan.
//!
//! Run: `cargo bench -p chaos-faults --bench flap` (exits 0 with a note when not root).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use chaos_faults::{FaultSpec, Injector, LinkFlap};
use common::Lan;

fn stats(name: &str, mut errors: Vec<f64>) {
    errors.sort_by(f64::total_cmp);
    let abs: Vec<f64> = {
        let mut a: Vec<f64> = errors.iter().map(|e| e.abs()).collect();
        a.sort_by(f64::total_cmp);
        a
    };
    let pick = |v: &[f64], p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    println!(
        "| {name:<34} | {:>4} | {:>+9.3} ms | {:>9.3} ms | {:>9.3} ms |",
        errors.len(),
        pick(&errors, 0.5),
        pick(&abs, 0.99),
        abs[abs.len() - 1]
    );
}

fn flap(lan: &Lan, period_ms: u64, count: u32) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("faults.json");
    let (downs, ups) = lan.nodes[0].run(move || {
        let mut inj = Injector::new(&path, &[]).unwrap();
        let spec = FaultSpec::Flap(LinkFlap {
            interface: "eth0".into(),
            period_ms,
            count,
            force: false,
        });
        inj.inject("flap", &spec).unwrap();
        let started = Instant::now();
        let mut downs = Vec::new();
        let mut ups = Vec::new();
        let mut was_up = true;
        let end = Duration::from_millis(period_ms * u64::from(count) + 500);
        while started.elapsed() < end {
            let up = chaos_faults::link::get("eth0").unwrap().up;
            if up != was_up {
                if up {
                    ups.push(Instant::now())
                } else {
                    downs.push(Instant::now())
                }
            }
            was_up = up;
            std::thread::sleep(Duration::from_micros(200));
        }
        inj.heal_all().unwrap();
        (downs, ups)
    });
    assert_eq!(downs.len(), count as usize, "every cycle seen");
    let period = period_ms as f64;
    let starts: Vec<f64> = downs
        .windows(2)
        .map(|w| w[1].duration_since(w[0]).as_secs_f64() * 1e3 - period)
        .collect();
    let down: Vec<f64> = downs
        .iter()
        .zip(&ups)
        .map(|(d, u)| u.duration_since(*d).as_secs_f64() * 1e3 - period / 2.0)
        .collect();
    stats(&format!("cycle start, period {period_ms} ms × {count}"), starts);
    stats(&format!("down phase, {} ms planned", period_ms / 2), down);
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        println!("flap benchmark skipped: needs root for network namespaces");
        return;
    }
    let lan = Lan::new(2);
    println!(
        "| {:<34} | {:>4} | {:>12} | {:>12} | {:>12} |",
        "link flap error", "n", "median", "p99 |err|", "max |err|"
    );
    println!("|{:-<36}|{:-<6}|{:-<14}|{:-<14}|{:-<14}|", "", "", "", "", "");
    flap(&lan, 100, 50);
    flap(&lan, 1000, 10);
}
