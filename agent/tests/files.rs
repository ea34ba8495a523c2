//! The file endpoints.

mod common;

use std::os::unix::fs::PermissionsExt;

use bytes::Bytes;
use chaos_proto::{ApiError, DirEntry, ErrorKind, FileStat, FileType, FileWritten};
use common::{Agent, enc, path_str};
use hyper::{Method, StatusCode};

async fn error(agent: &Agent, method: Method, path: &str) -> (u16, ApiError) {
    let (status, body) = agent.request(method, path, Bytes::new()).await;
    let err = serde_json::from_slice(&body)
        .unwrap_or_else(|_| panic!("{status}: {}", String::from_utf8_lossy(&body)));
    (status.as_u16(), err)
}

#[tokio::test]
async fn write_read_stat_list_remove() {
    let agent = Agent::start(&[]);
    let dir = agent.root().join("a b/nested");
    let file = dir.join("data.bin");
    let p = enc(&path_str(&file));
    // 5 MiB + a bit, all byte values: exercises streaming in both directions.
    let data: Vec<u8> = (0..(5 << 20) + 123).map(|i| (i % 251) as u8).collect();

    let (status, body) = agent
        .request(
            Method::PUT,
            &format!("/v1/files?path={p}&mode=0750"),
            data.clone(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let written: FileWritten = serde_json::from_slice(&body).unwrap();
    assert_eq!(written.bytes, data.len() as u64);
    assert!(std::fs::read(&file).unwrap() == data);
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o7777,
        0o750
    );
    // No temporary file is left next to it.
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["data.bin"]);

    let (status, body) = agent
        .request(Method::GET, &format!("/v1/files?path={p}"), Bytes::new())
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body == data, "downloaded bytes differ");

    // Default mode 644; overwriting replaces the content.
    let small = agent.root().join("small.txt");
    let sp = enc(&path_str(&small));
    std::fs::write(&small, "old content that is longer").unwrap();
    let (status, _) = agent
        .request(Method::PUT, &format!("/v1/files?path={sp}"), "new")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(std::fs::read_to_string(&small).unwrap(), "new");
    let stat: FileStat = agent.get(&format!("/v1/files/stat?path={sp}")).await;
    assert_eq!((stat.file_type, stat.size, stat.mode), (FileType::File, 3, 0o644));
    assert!(stat.modified_ms > 0);

    std::os::unix::fs::symlink(&small, agent.root().join("link")).unwrap();
    let stat: FileStat = agent
        .get(&format!(
            "/v1/files/stat?path={}",
            enc(&path_str(&agent.root().join("link")))
        ))
        .await;
    assert_eq!(stat.file_type, FileType::Symlink);

    let entries: Vec<DirEntry> = agent
        .get(&format!("/v1/files/list?path={}", enc(&path_str(agent.root()))))
        .await;
    let listed: Vec<(&str, FileType)> = entries
        .iter()
        .map(|e| (e.name.as_str(), e.stat.file_type))
        .collect();
    assert_eq!(
        listed,
        [
            ("a b", FileType::Dir),
            ("link", FileType::Symlink),
            ("small.txt", FileType::File)
        ]
    );

    // Removing a non-empty directory needs `recursive`.
    let top = enc(&path_str(&agent.root().join("a b")));
    let (status, e) = error(
        &agent,
        Method::DELETE,
        &format!("/v1/files?path={top}&recursive=false"),
    )
    .await;
    assert_eq!((status, e.kind), (409, ErrorKind::Conflict), "{e}");
    assert!(file.exists());
    let (status, _) = agent
        .request(
            Method::DELETE,
            &format!("/v1/files?path={top}&recursive=true"),
            Bytes::new(),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(!agent.root().join("a b").exists());
    let (status, _) = agent
        .request(Method::DELETE, &format!("/v1/files?path={sp}"), Bytes::new())
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(!small.exists());
}

#[tokio::test]
async fn file_errors_are_api_errors() {
    let agent = Agent::start(&[]);
    let missing = enc(&path_str(&agent.root().join("missing.txt")));
    for (method, path) in [
        (Method::GET, format!("/v1/files?path={missing}")),
        (Method::GET, format!("/v1/files/stat?path={missing}")),
        (Method::GET, format!("/v1/files/list?path={missing}")),
        (Method::DELETE, format!("/v1/files?path={missing}")),
    ] {
        let (status, e) = error(&agent, method.clone(), &path).await;
        assert_eq!(
            (status, e.kind),
            (404, ErrorKind::NotFound),
            "{method} {path}: {e}"
        );
        assert!(e.message.contains("missing.txt"), "{e}");
    }

    for path in [
        "/v1/files?path=relative/file",
        "/v1/files/stat?path=x",
        "/v1/files",
    ] {
        let (status, e) = error(&agent, Method::GET, path).await;
        assert_eq!((status, e.kind), (400, ErrorKind::InvalidRequest), "{path}: {e}");
    }
    let (status, e) = error(&agent, Method::PUT, "/v1/files?path=rel.txt").await;
    assert_eq!((status, e.kind), (400, ErrorKind::InvalidRequest), "{e}");
    assert!(e.message.contains("rel.txt"), "{e}");

    let p = enc(&path_str(&agent.root().join("f")));
    let (status, e) = error(&agent, Method::PUT, &format!("/v1/files?path={p}&mode=999")).await;
    assert_eq!((status, e.kind), (400, ErrorKind::InvalidRequest), "{e}");
    assert!(!agent.root().join("f").exists());

    // Reading a directory, or writing over one.
    let root = enc(&path_str(agent.root()));
    let (status, e) = error(&agent, Method::GET, &format!("/v1/files?path={root}")).await;
    assert_eq!((status, e.kind), (409, ErrorKind::Conflict), "{e}");
    std::fs::create_dir(agent.root().join("d")).unwrap();
    let d = enc(&path_str(&agent.root().join("d")));
    let (status, e) = error(&agent, Method::PUT, &format!("/v1/files?path={d}")).await;
    assert_eq!((status, e.kind), (409, ErrorKind::Conflict), "{e}");
    let names: Vec<_> = std::fs::read_dir(agent.root())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["d"], "a failed upload leaves no temporary file");
}

#[tokio::test]
async fn interrupted_upload_leaves_no_file() {
    use tokio::io::AsyncWriteExt;
    let agent = Agent::start(&[]);
    let target = agent.root().join("partial.bin");
    let mut tls = common::tls_connect(agent.addr, &agent.client).await.unwrap();
    let head = format!(
        "PUT /v1/files?path={} HTTP/1.1\r\nhost: x\r\ncontent-length: 10000000\r\n\r\n",
        enc(&path_str(&target))
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(&vec![7u8; 3_000_000]).await.unwrap();
    tls.flush().await.unwrap();
    // Wait until the agent has started writing, then vanish mid-body.
    let deadline = std::time::Instant::now() + common::WAIT;
    while std::fs::read_dir(agent.root()).unwrap().count() == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    drop(tls);
    let deadline = std::time::Instant::now() + common::WAIT;
    loop {
        let left: Vec<_> = std::fs::read_dir(agent.root())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "left behind: {left:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(!target.exists());
}

async fn refused(agent: &Agent, method: Method, path: &std::path::Path, body: &'static str) -> ApiError {
    let (status, body) = agent
        .request(
            method.clone(),
            &format!("/v1/files?path={}", enc(&path_str(path))),
            body,
        )
        .await;
    let err: ApiError = serde_json::from_slice(&body).unwrap_or_else(|_| {
        panic!(
            "{method} {}: {status} {}",
            path.display(),
            String::from_utf8_lossy(&body)
        )
    });
    assert_eq!(
        (status.as_u16(), err.kind),
        (409, ErrorKind::Conflict),
        "{method} {}: {err}",
        path.display()
    );
    err
}

/// Opening a FIFO blocks until the other end opens it, and a thread sitting in that `open()`
/// stays there after the client left: enough of them once starved every heal. Anything that
/// is not a regular file is refused before it is opened (and opened non-blocking, so a path
/// swapped for a FIFO in between cannot block either).
#[tokio::test]
async fn fifos_sockets_and_devices_are_refused_not_opened() {
    let agent = Agent::start(&[]);
    let fifo = agent.root().join("pipe");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let socket = agent.root().join("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();

    for (path, what) in [
        (fifo.as_path(), "is a FIFO"),
        (socket.as_path(), "is a socket"),
        (std::path::Path::new("/dev/zero"), "is a character device"),
        (std::path::Path::new("/dev/null"), "is a character device"),
    ] {
        let e = refused(&agent, Method::GET, path, "").await;
        assert!(
            e.message.contains(what) && e.message.contains("only regular files can be read"),
            "{e}"
        );
        assert!(e.message.contains(&path_str(path)), "{e}");
    }
    for (path, what) in [(fifo.as_path(), "is a FIFO"), (socket.as_path(), "is a socket")] {
        let e = refused(&agent, Method::PUT, path, "data").await;
        assert!(
            e.message.contains(what) && e.message.contains("only regular files can be written"),
            "{e}"
        );
    }
    // Refused, not replaced: the FIFO is still there, and no temporary file was left.
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
    let mut names: Vec<_> = std::fs::read_dir(agent.root())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["pipe", "sock"]);

    // Stat, list and remove never open the entry, so they work on a FIFO.
    let p = enc(&path_str(&fifo));
    let stat: FileStat = agent.get(&format!("/v1/files/stat?path={p}")).await;
    assert_eq!(stat.file_type, FileType::Other);
    let (status, _) = agent
        .request(Method::DELETE, &format!("/v1/files?path={p}"), Bytes::new())
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(!fifo.exists());

    // Regular files behind a symbolic link are still served.
    let data = agent.root().join("data.txt");
    std::fs::write(&data, "through a link").unwrap();
    let link = agent.root().join("link");
    std::os::unix::fs::symlink(&data, &link).unwrap();
    let (status, body) = agent
        .request(
            Method::GET,
            &format!("/v1/files?path={}", enc(&path_str(&link))),
            Bytes::new(),
        )
        .await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"through a link"[..]));
}
