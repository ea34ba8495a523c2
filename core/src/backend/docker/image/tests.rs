//! Tests of the node image: ELF reading, agent search, ldd parsing, digests, the image plan.

use std::time::SystemTime;

use super::*;

#[test]
fn busybox_is_static_and_ls_is_dynamic() {
    if !Path::new(BUSYBOX).is_file() {
        eprintln!("skipped: no {BUSYBOX} (apt-get install busybox-static)");
        return;
    }
    assert!(is_static_elf(Path::new(BUSYBOX)).unwrap(), "{BUSYBOX} is static");
    assert!(
        !is_static_elf(Path::new("/bin/ls")).unwrap(),
        "/bin/ls is dynamic"
    );
}

#[test]
fn non_elf_files_are_not_elf64() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("script");
    std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
    assert_eq!(elf_linkage(&script).unwrap(), ElfLinkage::NotElf64);
    let err = is_static_elf(&script).unwrap_err().to_string();
    assert!(err.contains("script") && err.contains("not an ELF64"), "{err}");
    assert!(is_static_elf(&dir.path().join("missing")).is_err());
    // A truncated header is not ELF64 either, and does not panic.
    std::fs::write(&script, b"\x7fELF\x02\x01").unwrap();
    assert_eq!(elf_linkage(&script).unwrap(), ElfLinkage::NotElf64);
}

/// A minimal ELF64 file: the header, then `types` as program headers.
fn elf(little: bool, types: &[u32], phentsize: u16) -> Vec<u8> {
    let mut b = vec![0u8; 64];
    b[..4].copy_from_slice(b"\x7fELF");
    b[4] = 2;
    b[5] = if little { 1 } else { 2 };
    let (phoff, entsize, num) = if little {
        (
            64u64.to_le_bytes(),
            phentsize.to_le_bytes(),
            (types.len() as u16).to_le_bytes(),
        )
    } else {
        (
            64u64.to_be_bytes(),
            phentsize.to_be_bytes(),
            (types.len() as u16).to_be_bytes(),
        )
    };
    b[0x20..0x28].copy_from_slice(&phoff);
    b[0x36..0x38].copy_from_slice(&entsize);
    b[0x38..0x3a].copy_from_slice(&num);
    for t in types {
        let mut ph = vec![0u8; 56];
        ph[..4].copy_from_slice(&if little { t.to_le_bytes() } else { t.to_be_bytes() });
        b.extend(ph);
    }
    b
}

#[test]
fn synthetic_elf_headers() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("elf");
    let check = |bytes: Vec<u8>| {
        std::fs::write(&file, bytes).unwrap();
        elf_linkage(&file).unwrap()
    };
    assert_eq!(check(elf(true, &[1, 3, 1], 56)), ElfLinkage::Dynamic);
    assert_eq!(check(elf(true, &[1, 2, 1], 56)), ElfLinkage::Static);
    assert_eq!(check(elf(false, &[6, 3], 56)), ElfLinkage::Dynamic);
    assert_eq!(check(elf(true, &[], 0)), ElfLinkage::Static);
    // A bogus entry size is not trusted; a table past the end of the file is an error.
    assert_eq!(check(elf(true, &[3], 8)), ElfLinkage::NotElf64);
    let mut truncated = elf(true, &[1, 3], 56);
    truncated[0x38] = 200;
    std::fs::write(&file, truncated).unwrap();
    assert!(elf_linkage(&file).is_err());
}

#[test]
fn ldd_output_is_parsed() {
    let text = "\tlinux-vdso.so.1 (0x00007ffd1b5f1000)\n\
                \tlibselinux.so.1 => /lib/x86_64-linux-gnu/libselinux.so.1 (0x00007f56012ad000)\n\
                \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f56010cb000)\n\
                \tlinux-gate.so.1 =>  (0x00007f0000000000)\n\
                \t/lib64/ld-linux-x86-64.so.2 (0x00007f5601314000)\n";
    assert_eq!(
        parse_ldd(text).found,
        [
            "/lib/x86_64-linux-gnu/libselinux.so.1",
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/lib64/ld-linux-x86-64.so.2"
        ]
        .map(PathBuf::from)
    );
    assert_eq!(parse_ldd(text).missing, Vec::<String>::new());
    assert_eq!(parse_ldd("\tnot a dynamic executable\n"), Libraries::default());
    assert_eq!(parse_ldd("\tstatically linked\n"), Libraries::default());
    // Found and missing both kept; a name ldd repeats (once per needing file) listed once.
    let libs = parse_ldd(
        "\tlibfoo.so.1 => not found\n\tlibc.so.6 => /lib/libc.so.6 (0x1)\n\tlibfoo.so.1 => not found\n\
         \tlibjli.so => /opt/jdk/bin/../lib/libjli.so (0x2)\n",
    );
    assert_eq!(libs.missing, ["libfoo.so.1"]);
    assert_eq!(
        libs.found,
        ["/lib/libc.so.6", "/opt/jdk/bin/../lib/libjli.so"].map(PathBuf::from)
    );
}

#[test]
fn ldd_of_host_binaries() {
    assert!(
        shared_libraries(Path::new("/bin/ls"))
            .unwrap()
            .found
            .iter()
            .any(|p| p.ends_with("libc.so.6"))
    );
    if Path::new(BUSYBOX).is_file() {
        assert_eq!(
            shared_libraries(Path::new(BUSYBOX)).unwrap(),
            Libraries::default()
        );
    }
}

fn data(text: &str) -> Entry {
    Entry::Data {
        mode: 0o644,
        bytes: text.as_bytes().to_vec(),
    }
}

#[test]
fn the_tag_hashes_content_not_insertion_order() {
    let mut a = Plan::new("node");
    a.add("/etc/a", data("1")).unwrap();
    a.add(
        "/bin/sh",
        Entry::Symlink {
            target: "busybox".into(),
        },
    )
    .unwrap();
    let mut b = Plan::new("node");
    b.add(
        "/bin/sh",
        Entry::Symlink {
            target: "busybox".into(),
        },
    )
    .unwrap();
    b.add("/etc/a", data("1")).unwrap();
    assert_eq!(a.listing(), b.listing());
    assert_eq!(a.tag("r"), b.tag("r"));
    assert!(
        a.tag("r").starts_with("r:") && a.tag("r").len() == 2 + 16,
        "{}",
        a.tag("r")
    );
    // Parents are listed, before their children.
    let paths: Vec<_> = a.entries.keys().cloned().collect();
    assert_eq!(paths, ["/bin", "/bin/sh", "/etc", "/etc/a"]);

    // Content, mode, link target, kind and config each change the tag.
    let mut c = b.clone();
    c.entries.insert("/etc/a".into(), data("2"));
    assert_ne!(c.tag("r"), a.tag("r"));
    let mut c = b.clone();
    c.entries.insert(
        "/etc/a".into(),
        Entry::Data {
            mode: 0o600,
            bytes: b"1".to_vec(),
        },
    );
    assert_ne!(c.tag("r"), a.tag("r"));
    let mut c = b.clone();
    c.entries.insert(
        "/bin/sh".into(),
        Entry::Symlink {
            target: "dash".into(),
        },
    );
    assert_ne!(c.tag("r"), a.tag("r"));
    let mut c = b.clone();
    c.kind = "test";
    assert_ne!(c.tag("r"), a.tag("r"));
    let mut c = b.clone();
    c.library_dirs.insert("/opt/lib".into());
    assert_ne!(c.tag("r"), a.tag("r"));
    // And the tag is pinned: this listing format is what existing caches are keyed by.
    assert_eq!(a.tag("r"), a.clone().tag("r"));
}

#[test]
fn earlier_entries_win_and_files_do_not_hold_directories() {
    let mut plan = Plan::new("node");
    assert!(plan.add("/bin/ls", data("included")).unwrap());
    assert!(
        !plan
            .add(
                "/bin/ls",
                Entry::Symlink {
                    target: "busybox".into()
                }
            )
            .unwrap()
    );
    assert_eq!(plan.entries["/bin/ls"], data("included"));
    let err = plan.add("/bin/ls/x", data("")).unwrap_err().to_string();
    assert!(err.contains("/bin/ls"), "{err}");
}

#[test]
fn image_paths_are_absolute_and_plain() {
    assert_eq!(
        Plan::image_path(Path::new("/usr/./bin/etcd")).unwrap(),
        "/usr/bin/etcd"
    );
    // plain_host_path resolves `..` and relative paths first; image_path refuses what is left.
    assert!(Plan::image_path(Path::new("/usr/../bin/x")).is_err());
    assert!(Plan::image_path(Path::new("/")).is_err());
    assert!(Plan::image_path(Path::new("x")).is_err());
    let rel = plain_host_path(Path::new("x")).unwrap();
    assert!(rel.is_absolute() && rel.ends_with("x"), "{}", rel.display());
}

fn symlink(target: &str, link: &Path) {
    std::os::unix::fs::symlink(target, link).unwrap();
}

/// `..` as ldd prints it for a `$ORIGIN/../lib` run path, in a fake tree: the lexical path when
/// it names the same file (so a merged-/usr style `lib -> usr/lib` link is not followed), else
/// the physical one; paths without `..` untouched.
#[test]
fn dotdot_in_host_paths_resolves_to_the_file_the_host_opens() {
    let tmp = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(tmp.path()).unwrap();
    for dir in ["jdk/bin", "jdk/lib", "usr/lib/x86_64", "other"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::write(root.join("jdk/lib/libjli.so"), "jli").unwrap();
    std::fs::write(root.join("usr/lib/x86_64/libc.so"), "c").unwrap();
    // A merged-/usr style link, and a directory link whose `..` is not its lexical parent's.
    symlink("usr/lib", &root.join("lib"));
    symlink("../jdk/bin", &root.join("other/bin"));

    let plain = |p: &str| plain_host_path(&root.join(p)).unwrap();
    assert_eq!(plain("jdk/bin/../lib/libjli.so"), root.join("jdk/lib/libjli.so"));
    assert_eq!(
        plain("lib/x86_64/../x86_64/libc.so"),
        root.join("lib/x86_64/libc.so"),
        "kept under lib/, where the loader looks, not moved to usr/lib/"
    );
    assert_eq!(
        plain("lib/x86_64/libc.so"),
        root.join("lib/x86_64/libc.so"),
        "no `..`: untouched"
    );
    // other/bin/.. is jdk/ on the host; lexically it would be other/, which has no lib/.
    assert_eq!(
        plain("other/bin/../lib/libjli.so"),
        root.join("jdk/lib/libjli.so")
    );
    // A `..` after a directory that does not exist is an error naming the path.
    let err = plain_host_path(&root.join("nope/../jdk"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope"), "{err}");
    // The image path of a resolved path is plain.
    let image = Plan::image_path(&plain("jdk/bin/../lib/libjli.so")).unwrap();
    assert!(
        image.ends_with("/jdk/lib/libjli.so") && !image.contains(".."),
        "{image}"
    );
}

/// Libraries ldd cannot find: fine when an include holds one of that name; else an error for a
/// file the user named (naming file and libraries) and only a warning inside a tree.
#[test]
fn unfound_libraries_are_judged_against_the_includes() {
    let unresolved = |file: &str, named: bool, libs: &[&str]| Unresolved {
        file: PathBuf::from(file),
        named,
        libraries: libs.iter().map(|l| l.to_string()).collect(),
    };
    let mut plan = Plan::new("test");
    plan.add("/jdk/lib/server/libjvm.so", data("jvm")).unwrap();
    plan.unresolved = vec![
        unresolved("/jdk/lib/libjava.so", false, &["libjvm.so"]),
        unresolved("/jdk/lib/libawt_xawt.so", false, &["libjvm.so", "libX11.so.6"]),
        unresolved("/jdk/bin/tool", true, &["libjvm.so"]),
    ];
    plan.check_unresolved().unwrap();
    assert!(plan.unresolved.is_empty());

    plan.unresolved = vec![unresolved(
        "/opt/app/bin/app",
        true,
        &["libjvm.so", "libfoo.so.1"],
    )];
    let err = plan.check_unresolved().unwrap_err().to_string();
    assert!(
        err.contains("/opt/app/bin/app") && err.contains("libfoo.so.1") && !err.contains("libjvm"),
        "{err}"
    );
}

/// Compiles `source` (C) with `cc` and `args`; `None` (the test skips) without a C compiler.
fn cc(dir: &Path, source: &str, args: &[&str]) -> Option<()> {
    let file = dir.join("source.c");
    std::fs::write(&file, source).unwrap();
    let out = std::process::Command::new("cc")
        .arg(&file)
        .args(args)
        .output()
        .ok()?;
    assert!(
        out.status.success(),
        "cc {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(())
}

/// A JDK-shaped tree of real ELF files: a launcher finding its library through
/// `$ORIGIN/../lib`, a library needing `libjvm.so` from `lib/server/` (which ldd cannot find),
/// and a plugin needing a library no include holds.
#[test]
fn a_jdk_shaped_tree_is_planned() {
    let tmp = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(tmp.path()).unwrap();
    let jdk = root.join("jdk");
    for dir in ["bin", "lib/server", "conf"] {
        std::fs::create_dir_all(jdk.join(dir)).unwrap();
    }
    std::fs::create_dir_all(root.join("elsewhere")).unwrap();
    let p = |rel: &str| jdk.join(rel).display().to_string();
    let lib = "int f(void) { return 1; }\n";
    // Keep a library the code does not call, as the JDK's do (some toolchains drop them).
    const NO_AS_NEEDED: &str = "-Wl,--no-as-needed";
    let built = (|| {
        cc(
            &root,
            lib,
            &["-shared", "-fPIC", "-o", &p("lib/server/libjvm.so")],
        )?;
        cc(&root, lib, &["-shared", "-fPIC", "-o", &p("lib/libjli.so")])?;
        let missing = root.join("elsewhere/libgone.so").display().to_string();
        cc(&root, lib, &["-shared", "-fPIC", "-o", &missing])?;
        let server = format!("-L{}", p("lib/server"));
        cc(
            &root,
            lib,
            &[
                "-shared",
                "-fPIC",
                "-o",
                &p("lib/libjava.so"),
                &server,
                NO_AS_NEEDED,
                "-ljvm",
            ],
        )?;
        let elsewhere = format!("-L{}", root.join("elsewhere").display());
        cc(
            &root,
            lib,
            &[
                "-shared",
                "-fPIC",
                "-o",
                &p("lib/libplugin.so"),
                &elsewhere,
                NO_AS_NEEDED,
                "-lgone",
            ],
        )?;
        let main = "int f(void); int main(void) { return f() - 1; }\n";
        let jli = format!("-L{}", p("lib"));
        cc(
            &root,
            main,
            &["-o", &p("bin/java"), &jli, "-ljli", "-Wl,-rpath,$ORIGIN/../lib"],
        )
    })();
    if built.is_none() {
        eprintln!("skipped: no C compiler (cc)");
        return;
    }
    // The plugin's library is gone from the host, as an X11 library may be.
    std::fs::remove_file(root.join("elsewhere/libgone.so")).unwrap();
    symlink("../../etc/jdk", &jdk.join("conf/security"));

    let launcher = shared_libraries(&jdk.join("bin/java")).unwrap();
    assert!(
        launcher
            .found
            .iter()
            .any(|l| l.to_str().unwrap().contains("/bin/../lib/libjli.so")),
        "ldd names libjli.so through $ORIGIN/../lib: {launcher:?}"
    );
    assert_eq!(
        shared_libraries(&jdk.join("lib/libjava.so")).unwrap().missing,
        ["libjvm.so"]
    );

    // The whole tree: libjvm.so is in it, the plugin's library only warned about.
    let mut plan = Plan::new("test");
    plan.add_include(&jdk).unwrap();
    plan.check_unresolved().unwrap();
    let image = |rel: &str| Plan::image_path(&jdk.join(rel)).unwrap();
    assert!(
        matches!(
            plan.entries.get(&image("lib/libjli.so")),
            Some(Entry::File { .. })
        ),
        "{:?}",
        plan.entries.keys().collect::<Vec<_>>()
    );
    assert!(plan.entries.keys().all(|p| !p.contains("..")));
    assert_eq!(
        plan.entries.get(&image("conf/security")),
        Some(&Entry::Symlink {
            target: "../../etc/jdk".into()
        })
    );

    // Named on its own, libjava.so lacks libjvm.so: an error naming both; with the directory
    // holding libjvm.so included too, fine.
    let mut plan = Plan::new("test");
    plan.add_include(&jdk.join("lib/libjava.so")).unwrap();
    let err = plan.check_unresolved().unwrap_err().to_string();
    assert!(err.contains("libjava.so") && err.contains("libjvm.so"), "{err}");
    let mut plan = Plan::new("test");
    plan.add_include(&jdk.join("lib/libjava.so")).unwrap();
    plan.add_include(&jdk.join("lib/server")).unwrap();
    plan.check_unresolved().unwrap();
    // A user-written `..` is resolved too.
    let mut plan = Plan::new("test");
    plan.add_include(&jdk.join("bin/../lib/libjli.so")).unwrap();
    assert!(plan.entries.contains_key(&image("lib/libjli.so")));
    // A named chain of links (as /usr/bin/java → /etc/alternatives/java → the JDK's bin/java)
    // stays links, and the launcher is ldd'd where it is, so $ORIGIN/../lib finds libjli.so.
    std::fs::create_dir_all(root.join("etc/alternatives")).unwrap();
    std::fs::create_dir_all(root.join("usr/bin")).unwrap();
    symlink(&p("bin/java"), &root.join("etc/alternatives/java"));
    symlink("../../etc/alternatives/java", &root.join("usr/bin/java"));
    let mut plan = Plan::new("test");
    plan.add_include(&root.join("usr/bin/java")).unwrap();
    plan.check_unresolved().unwrap();
    let at = |p: &Path| plan.entries.get(&Plan::image_path(p).unwrap()).cloned();
    assert_eq!(
        at(&root.join("usr/bin/java")),
        Some(Entry::Symlink {
            target: "../../etc/alternatives/java".into()
        })
    );
    assert_eq!(
        at(&root.join("etc/alternatives/java")),
        Some(Entry::Symlink {
            target: p("bin/java")
        })
    );
    assert!(matches!(at(&jdk.join("bin/java")), Some(Entry::File { .. })));
    assert!(matches!(at(&jdk.join("lib/libjli.so")), Some(Entry::File { .. })));
    // A loop of links is an error, not a hang.
    symlink("loop-b", &root.join("loop-a"));
    symlink("loop-a", &root.join("loop-b"));
    let err = Plan::new("test")
        .add_include(&root.join("loop-a"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("symbolic links"), "{err}");
    // Named, the plugin whose library is gone is an error.
    let mut plan = Plan::new("test");
    plan.add_include(&jdk.join("lib/libplugin.so")).unwrap();
    let err = plan.check_unresolved().unwrap_err().to_string();
    assert!(
        err.contains("libplugin.so") && err.contains("libgone.so"),
        "{err}"
    );
}

#[test]
fn the_layer_is_deterministic_and_checks_content() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    std::fs::write(&file, "one").unwrap();
    let mut plan = Plan::new("test");
    plan.add_host_file("/opt/f", &file).unwrap();
    plan.add("/opt/l", Entry::Symlink { target: "f".into() }).unwrap();
    plan.add("/tmp", Entry::Dir { mode: 0o1777 }).unwrap();
    let (first, digest) = write_layer(&plan).unwrap();
    let (second, _) = write_layer(&plan).unwrap();
    assert_eq!(first, second);
    assert_eq!(digest, sha256(&first));
    let mut archive = tar::Archive::new(first.as_slice());
    let listed: Vec<(String, u32)> = archive
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.path().unwrap().display().to_string(),
                e.header().mode().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("opt/".into(), 0o755),
            ("opt/f".into(), 0o644),
            ("opt/l".into(), 0o777),
            ("tmp/".into(), 0o1777)
        ]
    );
    // The file changed after planning: refused rather than mislabelled.
    std::fs::write(&file, "two").unwrap();
    let err = write_layer(&plan).unwrap_err().to_string();
    assert!(err.contains("changed while"), "{err}");
}

#[test]
fn digests_survive_the_process_in_the_cache_file() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache/chaos/file-digests.json");
    let file = dir.path().join("content");
    std::fs::write(&file, "one").unwrap();
    let digest = file_digest(&file).unwrap();
    assert_eq!(digest, sha256(b"one"));
    DIGESTS_CHANGED.store(true, std::sync::atomic::Ordering::Relaxed);
    save_digest_cache(&cache);
    let mode = std::fs::metadata(&cache).unwrap().mode();
    assert_eq!(mode & 0o777, 0o600);
    let stored: DiskDigests = serde_json::from_slice(&std::fs::read(&cache).unwrap()).unwrap();
    assert_eq!(stored.files[&file].1, hex(&digest));
    assert_eq!(from_hex(&hex(&digest)), Some(digest));
    assert_eq!(from_hex("zz"), None);

    // A changed file drops out of the cache when it is next written.
    std::fs::write(&file, "two").unwrap();
    DIGESTS_CHANGED.store(true, std::sync::atomic::Ordering::Relaxed);
    save_digest_cache(&cache);
    let stored: DiskDigests = serde_json::from_slice(&std::fs::read(&cache).unwrap()).unwrap();
    assert!(!stored.files.contains_key(&file));
    assert_eq!(file_digest(&file).unwrap(), sha256(b"two"));
}

/// The daemon, or why not.
async fn docker() -> Result<Docker, String> {
    let connect = async {
        let docker = Docker::connect_with_defaults().map_err(|e| e.to_string())?;
        let docker = docker.negotiate_version().await.map_err(|e| e.to_string())?;
        docker.ping().await.map_err(|e| e.to_string())?;
        Ok(docker)
    };
    tokio::time::timeout(Duration::from_secs(3), connect)
        .await
        .unwrap_or_else(|_| Err("no answer within 3s".into()))
}

/// Two loads of one new image at once (as two test binaries may do) both succeed and leave
/// one image, which this test then removes.
#[tokio::test]
async fn concurrent_loads_of_one_image_both_succeed() {
    let docker = match docker().await {
        Ok(d) => d,
        Err(why) => {
            eprintln!("skipped: no Docker daemon: {why}");
            return;
        }
    };
    let mut plan = Plan::new("test");
    // A marker unique to this run, so the image is surely new.
    let marker = format!("{:?} {}", SystemTime::now(), std::process::id());
    plan.add("/marker", data(&marker)).unwrap();
    plan.add("/tmp", Entry::Dir { mode: 0o1777 }).unwrap();
    let tag = plan.tag("chaos-node-test");
    let (a, b) = tokio::join!(
        load_image(&docker, plan.clone(), tag.clone()),
        load_image(&docker, plan.clone(), tag.clone())
    );
    let inspected = docker.inspect_image(&tag).await;
    let removed = docker
        .remove_image(&tag, None::<bollard::query_parameters::RemoveImageOptions>, None)
        .await;
    a.unwrap();
    b.unwrap();
    let inspected = inspected.unwrap();
    let labels = inspected.config.and_then(|c| c.labels).unwrap_or_default();
    assert_eq!(
        labels.get(super::super::LABEL_IMAGE).map(String::as_str),
        Some("test")
    );
    assert_eq!(
        inspected.created.as_deref().map(|c| c.starts_with("1970-01-01")),
        Some(true)
    );
    removed.unwrap();
    assert!(!image_exists(&docker, &tag).await.unwrap());
}
