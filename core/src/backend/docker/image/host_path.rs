//! Host paths made plain (no `.` or `..`) so they can be paths in the image.

#[allow(unused_imports)]
use super::*;

/// `path` made absolute (against the working directory) and plain — no `.` or `..` — naming
/// the same host file, so it can be the file's path in the image.
///
/// `..` appears in what `ldd` prints for a library found through a `$ORIGIN/../lib` run path
/// (the JDK's launcher: `…/bin/../lib/libjli.so`), and may in what a user writes. The host
/// resolves `..` physically, after following the symlinks before it, so the lexical reading
/// (drop the component before each `..`) may name another file or none. The lexical path is
/// kept when it names the very same file (same device and inode): the image's directories are
/// plain directories at their host paths, so there the loader resolves `..` lexically — and on
/// merged-/usr hosts, where `/lib` links to `usr/lib`, the physical path would move a library
/// from `/lib/…` (where the loader and [`GLIBC_LOADER`] name it) to `/usr/lib/…`. Otherwise the
/// part up to the last `..` is resolved physically (`canonicalize`) and the rest appended.
/// A path without `..` is returned as written (made absolute): no file system access.
pub(super) fn plain_host_path(path: &Path) -> Result<PathBuf> {
    let absolute =
        std::path::absolute(path).map_err(|e| Error::io(format!("resolving {}", path.display()), e))?;
    let components: Vec<Component> = absolute.components().collect();
    let Some(last_up) = components.iter().rposition(|c| *c == Component::ParentDir) else {
        // `absolute` already dropped every `.` but a leading one, which a rooted path lacks.
        return Ok(absolute);
    };
    let mut lexical = PathBuf::new();
    for c in &components {
        match c {
            Component::ParentDir => {
                lexical.pop();
            }
            Component::CurDir => {}
            other => lexical.push(other),
        }
    }
    let same_file = |a: &Path, b: &Path| match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    };
    if same_file(&absolute, &lexical) {
        return Ok(lexical);
    }
    let head: PathBuf = components[..=last_up].iter().collect();
    let mut physical = std::fs::canonicalize(&head).map_err(|e| {
        Error::io(
            format!(
                "resolving {} in {} (no such directory on this host?)",
                head.display(),
                path.display()
            ),
            e,
        )
    })?;
    for c in &components[last_up + 1..] {
        if *c != Component::CurDir {
            physical.push(c);
        }
    }
    Ok(physical)
}
