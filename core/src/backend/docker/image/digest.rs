//! Memos: a file's digest, libraries and applets are computed once per process and content
//! version; digests are also kept on disk.

#[allow(unused_imports)]
use super::*;

// Digests are also kept on disk (see `DIGEST_CACHE_FILE`), since hashing the agent and the
// included binaries (~75 MB) is most of the cost of a process's first call (~150 ms).

/// Identifies one version of a file's content without reading it. The change time is in it
/// because no write can leave it untouched (unlike the modification time, which `touch` sets).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) struct FileKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileKey {
    /// The key of `path`'s content (following symlinks).
    pub(super) fn of(path: &Path) -> Result<Self> {
        let m = std::fs::metadata(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        Ok(Self {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }
}

/// A memo from path to a value computed from that path's content.
pub(super) type Memo<T> = Mutex<Option<HashMap<PathBuf, (FileKey, T)>>>;

/// SHA-256 of files' contents.
pub(super) static DIGEST_MEMO: Memo<[u8; 32]> = Mutex::new(None);
/// `ldd` results.
pub(super) static LDD_MEMO: Memo<Libraries> = Mutex::new(None);
/// `busybox --list` results.
pub(super) static APPLET_MEMO: Memo<Vec<String>> = Mutex::new(None);

pub(super) fn memo_get<T: Clone>(memo: &Memo<T>, path: &Path, key: &FileKey) -> Option<T> {
    let guard = memo.lock().unwrap_or_else(|e| e.into_inner());
    let (k, v) = guard.as_ref()?.get(path)?;
    (k == key).then(|| v.clone())
}

pub(super) fn memo_put<T>(memo: &Memo<T>, path: &Path, key: FileKey, value: T) {
    let mut guard = memo.lock().unwrap_or_else(|e| e.into_inner());
    guard
        .get_or_insert_with(HashMap::new)
        .insert(path.to_path_buf(), (key, value));
}

/// Set when a digest was computed since the digest cache was last saved.
pub(super) static DIGESTS_CHANGED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The digest cache's file under the user's cache directory.
pub(super) const DIGEST_CACHE_FILE: &str = "chaos/file-digests.json";

/// The digest cache as stored: path → content version and SHA-256 (hex).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(super) struct DiskDigests {
    /// Format version; a file of another version is ignored.
    version: u32,
    /// The digests.
    pub(super) files: BTreeMap<PathBuf, (FileKey, String)>,
}

impl DiskDigests {
    /// The format this code writes.
    const VERSION: u32 = 1;
}

/// `$XDG_CACHE_HOME/chaos/file-digests.json`, else under `$HOME/.cache`.
pub(super) fn digest_cache_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| Some(PathBuf::from(std::env::var_os("HOME")?).join(".cache")))?;
    Some(base.join(DIGEST_CACHE_FILE))
}

/// Fills the digest memo from the cache at `cache`, once per process. Best effort: a missing
/// or unreadable cache only means hashing again.
pub(super) fn load_digest_cache(cache: &Path) {
    let mut guard = DIGEST_MEMO.lock().unwrap_or_else(|e| e.into_inner());
    if guard.is_some() {
        return;
    }
    let memo = guard.get_or_insert_with(HashMap::new);
    let Ok(text) = std::fs::read(cache) else { return };
    let Ok(stored) = serde_json::from_slice::<DiskDigests>(&text) else {
        tracing::debug!(cache = %cache.display(), "ignoring an unreadable digest cache");
        return;
    };
    if stored.version != DiskDigests::VERSION {
        return;
    }
    for (path, (key, hex_digest)) in stored.files {
        if let Some(digest) = from_hex(&hex_digest) {
            memo.entry(path).or_insert((key, digest));
        }
    }
}

/// Writes the digest memo to the cache at `cache` (0600, by rename, so concurrent writers and
/// readers never see half a file), keeping only entries that still describe their file.
/// Best effort, like the load.
pub(super) fn save_digest_cache(cache: &Path) {
    if !DIGESTS_CHANGED.swap(false, std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let entries: Vec<(PathBuf, FileKey, [u8; 32])> = {
        let guard = DIGEST_MEMO.lock().unwrap_or_else(|e| e.into_inner());
        let Some(memo) = guard.as_ref() else { return };
        memo.iter()
            .map(|(p, (k, d))| (p.clone(), k.clone(), *d))
            .collect()
    };
    let files = entries
        .into_iter()
        .filter(|(path, key, _)| FileKey::of(path).is_ok_and(|now| now == *key))
        .map(|(path, key, digest)| (path, (key, hex(&digest))))
        .collect();
    let stored = DiskDigests {
        version: DiskDigests::VERSION,
        files,
    };
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let dir = cache.parent().ok_or(std::io::ErrorKind::InvalidInput)?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let temp = cache.with_extension(format!("tmp.{}", std::process::id()));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)?;
        file.write_all(&serde_json::to_vec(&stored)?)?;
        drop(file);
        std::fs::rename(&temp, cache).inspect_err(|_| {
            let _ = std::fs::remove_file(&temp);
        })
    };
    if let Err(e) = write() {
        tracing::debug!(cache = %cache.display(), error = %e, "could not save the digest cache");
    }
}

/// Parses 64 hex digits.
pub(super) fn from_hex(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

/// SHA-256 of `path`'s content, memoized per content version.
pub(super) fn file_digest(path: &Path) -> Result<[u8; 32]> {
    let key = FileKey::of(path)?;
    if let Some(d) = memo_get(&DIGEST_MEMO, path, &key) {
        return Ok(d);
    }
    let io_err = |e| Error::io(format!("reading {}", path.display()), e);
    let mut file = std::fs::File::open(path).map_err(io_err)?;
    let mut ctx = Context::new(&SHA256);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(io_err)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    let digest = to_array(ctx.finish().as_ref());
    memo_put(&DIGEST_MEMO, path, key, digest);
    DIGESTS_CHANGED.store(true, std::sync::atomic::Ordering::Relaxed);
    Ok(digest)
}

/// A SHA-256 output as an array.
pub(super) fn to_array(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0; 32];
    out.copy_from_slice(bytes);
    out
}

/// Lower-case hex of `bytes`.
pub(super) fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// SHA-256 of `bytes`.
pub(super) fn sha256(bytes: &[u8]) -> [u8; 32] {
    to_array(ring::digest::digest(&SHA256, bytes).as_ref())
}

/// The applets of the static busybox at [`BUSYBOX`], by running `busybox --list`.
pub(super) fn busybox_applets() -> Result<Vec<String>> {
    let missing = || {
        Error::backend(
            "docker",
            format!("the node image needs a static busybox at {BUSYBOX}: apt-get install busybox-static"),
        )
    };
    let busybox = Path::new(BUSYBOX);
    if !busybox.is_file() {
        return Err(missing());
    }
    match elf_linkage(busybox)? {
        ElfLinkage::Static => {}
        _ => {
            return Err(Error::backend(
                "docker",
                format!(
                    "{BUSYBOX} is dynamically linked and would not run in the node image: \
                     apt-get install busybox-static"
                ),
            ));
        }
    }
    let key = FileKey::of(busybox)?;
    if let Some(applets) = memo_get(&APPLET_MEMO, busybox, &key) {
        return Ok(applets);
    }
    let output = std::process::Command::new(busybox)
        .arg("--list")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| Error::io(format!("running {BUSYBOX} --list"), e))?;
    if !output.status.success() {
        return Err(Error::backend(
            "docker",
            format!(
                "{BUSYBOX} --list failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        ));
    }
    let applets: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::trim)
        // An applet name becomes a file name in /bin: refuse anything that is not one.
        .filter(|a| !a.is_empty() && !a.contains('/') && *a != "." && *a != ".." && *a != "busybox")
        .map(str::to_string)
        .collect();
    memo_put(&APPLET_MEMO, busybox, key, applets.clone());
    Ok(applets)
}
