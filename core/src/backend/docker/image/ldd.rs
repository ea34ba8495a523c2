//! The shared libraries a host binary needs, as `ldd` lists them.

#[allow(unused_imports)]
use super::*;

/// What `ldd` says a file needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Libraries {
    /// Every library it found, as it printed the path (which may hold `..`, from a `$ORIGIN`
    /// run path), and the loader, in order.
    pub(super) found: Vec<PathBuf>,
    /// The names of the libraries it could not find (`libjvm.so => not found`), in order.
    pub(super) missing: Vec<String>,
}

/// The shared libraries of `ldd`'s `output`: every `name => /path` and the absolute loader
/// line, in order, and the names of those ldd could not find. Static executables and
/// non-executables (`not a dynamic executable`, `statically linked`) have none.
pub(super) fn parse_ldd(output: &str) -> Libraries {
    let mut found = Vec::new();
    let mut missing: Vec<String> = Vec::new();
    for line in output.lines().map(str::trim) {
        // Drop the load address: `/path (0x...)`.
        let strip = |s: &str| s.split(" (0x").next().unwrap_or_default().trim().to_string();
        if let Some((name, target)) = line.split_once("=>") {
            let target = target.trim();
            if target.starts_with("not found") {
                // ldd repeats a name once per file that needs it.
                if !missing.iter().any(|m| m == name.trim()) {
                    missing.push(name.trim().to_string());
                }
            } else if target.starts_with('/') {
                found.push(PathBuf::from(strip(target)));
            }
            // `linux-vdso.so.1 =>  (0x…)` (older glibc): in the kernel, nothing to copy.
        } else if line.starts_with('/') {
            found.push(PathBuf::from(strip(line)));
        }
    }
    Libraries { found, missing }
}

/// The shared libraries `file` needs on this host (none unless it is a dynamic ELF file), and
/// those ldd could not find here: the caller judges whether they matter.
pub(super) fn shared_libraries(file: &Path) -> Result<Libraries> {
    // Every ELF file goes to ldd, even one without `PT_INTERP`: shared libraries have none
    // either, yet need theirs (the JDK's libjvm.so needs libstdc++), and ldd says "statically
    // linked" of a static executable. Scripts and data have no libraries, and ldd only says so;
    // 32-bit or foreign ELF files go to ldd too, which knows more than the ELF64 reader.
    let mut head = [0u8; 4];
    let is_elf = std::fs::File::open(file)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| head == *b"\x7fELF");
    if !is_elf {
        return Ok(Libraries::default());
    }
    let key = FileKey::of(file)?;
    if let Some(libs) = memo_get(&LDD_MEMO, file, &key) {
        return Ok(libs);
    }
    let output = std::process::Command::new("ldd")
        .arg(file)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| {
            Error::io(
                format!("running ldd {} (is libc-bin installed?)", file.display()),
                e,
            )
        })?;
    // ldd exits non-zero for "not a dynamic executable", on stderr: parse both, judge by text.
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push('\n');
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    let libs = parse_ldd(&text);
    memo_put(&LDD_MEMO, file, key, libs.clone());
    Ok(libs)
}
