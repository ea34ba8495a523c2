//! Test harness: throwaway network namespaces joined by a bridge, deleted on drop.
#![allow(dead_code)]

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Returns a reason to skip when the test cannot create namespaces.
pub fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root to create network namespaces".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("the `ip` command (iproute2) is needed for test setup".into());
    }
    None
}

/// Skips the test (returns) with a printed reason when namespaces are unavailable.
#[macro_export]
macro_rules! require_root {
    () => {
        if let Some(why) = common::skip_reason() {
            chaos_testkit::skip(module_path!(), "root", &why);
            return;
        }
    };
}

fn run(cmd: &[&str]) -> Output {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .expect("spawn test setup command");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A network namespace deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new() -> Self {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("cft-{}-{n}", std::process::id());
        run(&["ip", "netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Runs `ip -n <ns> args...`.
    pub fn ip(&self, args: &[&str]) -> Output {
        let mut cmd = vec!["ip", "-n", &self.name];
        cmd.extend_from_slice(args);
        run(&cmd)
    }

    /// Runs a command inside the namespace (`ip netns exec`), returning its output (any status).
    pub fn exec(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .expect("spawn ip netns exec")
    }

    /// Runs `f` on a thread that has entered the namespace (threads it spawns inherit it).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.spawn(f).join().expect("namespace thread panicked")
    }

    /// Spawns `f` on a thread inside the namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = File::open(&path).expect("open netns file");
            setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// Nodes on one bridge (in its own hub namespace). Node `i` has 10.99.0.(i+1)/24 and
/// fd99::(i+1)/64 on interface `eth0`.
pub struct Lan {
    pub nodes: Vec<Netns>,
    pub hub: Netns,
}

impl Lan {
    pub fn new(count: usize) -> Self {
        let hub = Netns::new();
        hub.ip(&["link", "add", "br0", "type", "bridge"]);
        hub.ip(&["link", "set", "br0", "up"]);
        let mut nodes = Vec::new();
        for i in 0..count {
            let ns = Netns::new();
            let host_if = format!("v{i}");
            hub.ip(&[
                "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
            ]);
            hub.ip(&["link", "set", &host_if, "master", "br0", "up"]);
            ns.ip(&["addr", "add", &format!("10.99.0.{}/24", i + 1), "dev", "eth0"]);
            ns.ip(&[
                "addr",
                "add",
                &format!("fd99::{}/64", i + 1),
                "dev",
                "eth0",
                "nodad",
            ]);
            ns.ip(&["link", "set", "eth0", "up"]);
            nodes.push(ns);
        }
        Self { nodes, hub }
    }

    pub fn v4(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 99, 0, i as u8 + 1)
    }
}

/// Starts a TCP echo-less acceptor in `ns` on `port` that accepts and drops connections for `secs`.
pub fn tcp_listener(ns: &Netns, port: u16) {
    let (tx, rx) = std::sync::mpsc::channel();
    ns.spawn(move || {
        let l = TcpListener::bind(("::", port)).expect("bind listener");
        l.set_nonblocking(true).unwrap();
        tx.send(()).unwrap();
        let end = Instant::now() + Duration::from_secs(60);
        while Instant::now() < end {
            match l.accept() {
                Ok((s, _)) => drop(s),
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    rx.recv().unwrap();
}

/// True when a TCP connection from `ns` to `addr` succeeds within `timeout`.
pub fn tcp_connects(ns: &Netns, addr: SocketAddr, timeout: Duration) -> bool {
    ns.run(move || TcpStream::connect_timeout(&addr, timeout).is_ok())
}

/// Sends `count` UDP datagrams from `from` to a receiver in `to` at `addr`; returns how many
/// arrived (the receiver drains until 300 ms after the sender finished).
pub fn udp_delivered(from: &Netns, to: &Netns, addr: SocketAddr, count: usize) -> usize {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    let (tx, rx) = std::sync::mpsc::channel();
    let sent_all = Arc::new(AtomicBool::new(false));
    let done = sent_all.clone();
    let receiver = to.spawn(move || {
        let s = UdpSocket::bind(addr).expect("bind udp receiver");
        // A receive buffer that holds every datagram of a burst, so a receiver starved of CPU
        // (a busy CI machine) never drops what the fault under test delivered; we are root.
        nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::RcvBufForce, &(16 << 20))
            .expect("SO_RCVBUFFORCE");
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        tx.send(()).unwrap();
        let mut got = 0;
        let mut buf = [0u8; 64];
        let mut quiet_since: Option<Instant> = None;
        let hard_end = Instant::now() + Duration::from_secs(30);
        while Instant::now() < hard_end {
            match s.recv(&mut buf) {
                Ok(_) => {
                    got += 1;
                    quiet_since = None;
                }
                Err(_) if done.load(Ordering::SeqCst) => {
                    let since = *quiet_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= Duration::from_millis(300) {
                        break;
                    }
                }
                Err(_) => {}
            }
        }
        got
    });
    rx.recv().unwrap();
    from.run(move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        for i in 0..count {
            let _ = s.send_to(&(i as u32).to_be_bytes(), addr);
            if i % 50 == 49 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    });
    sent_all.store(true, Ordering::SeqCst);
    receiver.join().unwrap()
}
