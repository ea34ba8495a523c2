//! The shared libraries a host binary needs, as `ldd` lists them.

#[allow(unused_imports)]
use super::*;

/// The shared libraries of `ldd`'s `output`: every `name => /path` and the absolute loader
/// line, in order. Libraries ldd could not find are the error, by name. Static executables and
/// non-executables (`not a dynamic executable`, `statically linked`) have none.
pub(super) fn parse_ldd(output: &str) -> Result<Vec<PathBuf>, Vec<String>> {
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for line in output.lines().map(str::trim) {
        // Drop the load address: `/path (0x...)`.
        let strip = |s: &str| s.split(" (0x").next().unwrap_or_default().trim().to_string();
        if let Some((name, target)) = line.split_once("=>") {
            let target = target.trim();
            if target.starts_with("not found") {
                missing.push(name.trim().to_string());
            } else if target.starts_with('/') {
                found.push(PathBuf::from(strip(target)));
            }
            // `linux-vdso.so.1 =>  (0x…)` (older glibc): in the kernel, nothing to copy.
        } else if line.starts_with('/') {
            found.push(PathBuf::from(strip(line)));
        }
    }
    if missing.is_empty() {
        Ok(found)
    } else {
        Err(missing)
    }
}

/// The shared libraries `file` needs on this host (none unless it is a dynamic ELF file).
pub(super) fn shared_libraries(file: &Path) -> Result<Vec<PathBuf>> {
    if elf_linkage(file)? == ElfLinkage::Static {
        return Ok(Vec::new());
    }
    // Scripts and data have no libraries, and ldd only says so; 32-bit or foreign ELF files
    // fall through to ldd too, which knows more than the ELF64 reader.
    let mut head = [0u8; 4];
    let is_elf = std::fs::File::open(file)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| head == *b"\x7fELF");
    if !is_elf {
        return Ok(Vec::new());
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
    let libs = parse_ldd(&text).map_err(|missing| {
        Error::backend(
            "docker",
            format!(
                "include {}: needs shared libraries this host lacks: {}; install them or leave the \
                 file out",
                file.display(),
                missing.join(", ")
            ),
        )
    })?;
    memo_put(&LDD_MEMO, file, key, libs.clone());
    Ok(libs)
}
