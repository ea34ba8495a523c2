//! Helpers shared by the integration tests: stream large amounts of data without holding them
//! in memory, watch processes. (A check runs on every backend through `chaos::backend_tests!`.)

#![allow(dead_code)] // Each test binary uses a different subset.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use chaos::{Cluster, Node, NodeExt};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

#[cfg(target_os = "linux")]
pub mod footprint;

/// Creates one node on `cluster`.
pub async fn one_node(cluster: &dyn Cluster) -> Arc<dyn Node> {
    cluster.create_nodes(1).await.expect("creating a node").remove(0)
}

/// Whether process `pid` on `node` is still alive (exists and is not a zombie).
pub async fn alive_on(node: &dyn Node, pid: u32) -> bool {
    let script = format!("test -e /proc/{pid} && ! grep -q '^State:[[:space:]]*Z' /proc/{pid}/status");
    node.run("sh", ["-c", script.as_str()])
        .await
        .expect("checking a pid")
        .status
        .success()
}

/// Whether process `pid` on this host is alive (exists and is not a zombie). Valid for backends
/// whose nodes share the runner's pid namespace (`local`, `netns`).
pub fn alive_here(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(status) => !status.lines().any(|l| l.starts_with("State:") && l.contains('Z')),
        Err(_) => false,
    }
}

/// Polls `alive` until it is false, for at most `bound`; returns whether the process died.
pub async fn gone_within(bound: Duration, mut alive: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        if !alive().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A fast non-cryptographic streaming hash (FNV-style, one 64-bit word at a time) that gives
/// the same result however the bytes are split into chunks.
#[derive(Debug, Clone, Default)]
pub struct StreamHash {
    acc: u64,
    total: u64,
    carry: [u8; 8],
    carry_len: usize,
}

impl StreamHash {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

    /// A hash of nothing yet.
    pub fn new() -> Self {
        Self {
            acc: Self::OFFSET,
            ..Self::default()
        }
    }

    fn mix(&mut self, word: u64) {
        self.acc = (self.acc ^ word).wrapping_mul(Self::PRIME);
        self.acc ^= self.acc >> 29;
    }

    /// Adds `data`.
    pub fn update(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        if self.carry_len > 0 {
            let take = (8 - self.carry_len).min(data.len());
            self.carry[self.carry_len..self.carry_len + take].copy_from_slice(&data[..take]);
            self.carry_len += take;
            data = &data[take..];
            if self.carry_len < 8 {
                return;
            }
            self.mix(u64::from_le_bytes(self.carry));
            self.carry_len = 0;
        }
        let words = data.chunks_exact(8);
        let rest = words.remainder();
        for w in words {
            self.mix(u64::from_le_bytes(w.try_into().unwrap()));
        }
        self.carry[..rest.len()].copy_from_slice(rest);
        self.carry_len = rest.len();
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// The hash of everything added (the length included).
    pub fn finish(&self) -> u64 {
        let mut h = self.clone();
        let mut last = [0u8; 8];
        last[..h.carry_len].copy_from_slice(&h.carry[..h.carry_len]);
        h.mix(u64::from_le_bytes(last));
        h.mix(h.total);
        h.acc
    }
}

/// Reads `reader` to the end in large chunks, hashing as it goes; returns the hash state.
pub async fn hash_reader(mut reader: impl AsyncRead + Unpin) -> io::Result<StreamHash> {
    let mut hash = StreamHash::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            return Ok(hash);
        }
        hash.update(&buf[..n]);
    }
}

/// `len` pseudo-random bytes (xorshift64), generated as they are read and hashed on the way, so
/// gigabytes can be sent without being held. The hash of what was produced is in `hash()`.
pub struct PseudoRandomReader {
    state: u64,
    remaining: u64,
    pending: [u8; 8],
    pending_pos: usize,
    hash: Arc<Mutex<StreamHash>>,
}

impl PseudoRandomReader {
    /// A reader of `len` bytes derived from `seed`.
    pub fn new(seed: u64, len: u64) -> Self {
        Self {
            state: seed | 1,
            remaining: len,
            pending: [0; 8],
            pending_pos: 8,
            hash: Arc::new(Mutex::new(StreamHash::new())),
        }
    }

    /// A handle on the hash of the bytes produced so far.
    pub fn hash(&self) -> Arc<Mutex<StreamHash>> {
        self.hash.clone()
    }

    fn next_word(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state = x;
        x
    }
}

impl AsyncRead for PseudoRandomReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let want = (buf.remaining() as u64).min(this.remaining) as usize;
        let out = buf.initialize_unfilled_to(want);
        let mut i = 0;
        // Bytes left over from a word split by the previous read.
        while i < out.len() && this.pending_pos < 8 {
            out[i] = this.pending[this.pending_pos];
            this.pending_pos += 1;
            i += 1;
        }
        let whole = (out.len() - i) / 8 * 8;
        for chunk in out[i..i + whole].chunks_exact_mut(8) {
            let w = this.next_word();
            chunk.copy_from_slice(&w.to_le_bytes());
        }
        i += whole;
        if i < out.len() {
            this.pending = this.next_word().to_le_bytes();
            this.pending_pos = 0;
            while i < out.len() {
                out[i] = this.pending[this.pending_pos];
                this.pending_pos += 1;
                i += 1;
            }
        }
        this.hash.lock().unwrap().update(out);
        this.remaining -= want as u64;
        buf.advance(want);
        Poll::Ready(Ok(()))
    }
}

#[test]
fn stream_hash_does_not_depend_on_chunking() {
    let data: Vec<u8> = (0..10_007u32).map(|i| (i * 31 % 251) as u8).collect();
    let mut whole = StreamHash::new();
    whole.update(&data);
    for split in [1, 3, 7, 8, 9, 1000] {
        let mut parts = StreamHash::new();
        for c in data.chunks(split) {
            parts.update(c);
        }
        assert_eq!(parts.finish(), whole.finish(), "split {split}");
    }
    let mut other = data.clone();
    other[5000] ^= 1;
    let mut changed = StreamHash::new();
    changed.update(&other);
    assert_ne!(changed.finish(), whole.finish());
}

#[tokio::test]
async fn pseudo_random_reader_is_deterministic_and_hashes_what_it_produced() {
    let mut a = PseudoRandomReader::new(7, 100_003);
    let hash_a = a.hash();
    let mut bytes = Vec::new();
    // Odd-sized reads split words between reads.
    let mut buf = [0u8; 13];
    loop {
        let n = a.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        bytes.extend_from_slice(&buf[..n]);
    }
    assert_eq!(bytes.len(), 100_003);
    let read_back = hash_reader(PseudoRandomReader::new(7, 100_003)).await.unwrap();
    let mut direct = StreamHash::new();
    direct.update(&bytes);
    assert_eq!(read_back.finish(), direct.finish());
    assert_eq!(hash_a.lock().unwrap().finish(), direct.finish());
    assert_ne!(
        hash_reader(PseudoRandomReader::new(8, 100_003))
            .await
            .unwrap()
            .finish(),
        direct.finish()
    );
}

/// The containers (any state) whose owner label names runner `pid` on this host: what a run by
/// that process left behind. Scoped to the owner, so clusters of tests running beside it do
/// not count.
pub fn containers_owned_by(pid: u32) -> Vec<String> {
    let out = std::process::Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            "label=io.chaos.owner",
            "--format",
            "{{.Names}} {{.Label \"io.chaos.owner\"}}",
        ])
        .output()
        .expect("running docker ps");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            l.split_once(' ')
                .and_then(|(_, tag)| chaos::backend::owner::OwnerTag::parse(tag))
                .is_some_and(|t| t.pid == pid)
        })
        .map(str::to_string)
        .collect()
}
