//! A fault layer in front of moto, which never runs out of capacity: an HTTP/1.1 proxy that
//! answers RunInstances into one subnet with EC2's `InsufficientInstanceCapacity` error and
//! forwards everything else (the rest of EC2, S3) to moto unchanged.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// The running proxy (stopped on drop).
pub struct CapacityFault {
    /// `http://<ip>:<port>`.
    pub endpoint: String,
    /// RunInstances calls refused so far.
    pub refused: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CapacityFault {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CapacityFault {
    /// Listens on `ip` (a free port), forwards to `moto`, refuses RunInstances into `subnet`.
    pub async fn start(ip: IpAddr, moto: SocketAddr, subnet: String) -> CapacityFault {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let refused = Arc::new(AtomicUsize::new(0));
        let counter = refused.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let subnet = subnet.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    let _ = serve(client, moto, &subnet, &counter).await;
                });
            }
        });
        CapacityFault {
            endpoint,
            refused,
            task,
        }
    }
}

/// One HTTP message: head (start line and headers, with the blank line) and body (none for the
/// reply to a HEAD request, whatever its Content-Length says).
async fn read_message<R: AsyncBufReadExt + Unpin>(
    reader: &mut R,
    bodiless: bool,
) -> std::io::Result<Option<(String, Vec<u8>)>> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 {
            return Ok(None);
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let length = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0; if bodiless { 0 } else { length }];
    reader.read_exact(&mut body).await?;
    Ok(Some((head, body)))
}

async fn serve(
    client: TcpStream,
    moto: SocketAddr,
    subnet: &str,
    refused: &AtomicUsize,
) -> std::io::Result<()> {
    let (read, mut write) = client.into_split();
    let mut read = BufReader::new(read);
    while let Some((head, body)) = read_message(&mut read, false).await? {
        let text = String::from_utf8_lossy(&body);
        if text.contains("Action=RunInstances") && text.contains(&format!("SubnetId={subnet}")) {
            refused.fetch_add(1, Ordering::Relaxed);
            let error = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error>\
                 <Code>InsufficientInstanceCapacity</Code><Message>We currently do not have sufficient \
                 capacity in the Availability Zone you requested.</Message></Error></Errors>\
                 <RequestID>chaos-test</RequestID></Response>";
            let reply = format!(
                "HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n{error}",
                error.len()
            );
            write.write_all(reply.as_bytes()).await?;
            continue;
        }
        // A connection of its own per request: moto may close after each reply.
        let (up_read, mut up_write) = TcpStream::connect(moto).await?.into_split();
        let mut up_read = BufReader::new(up_read);
        up_write.write_all(head.as_bytes()).await?;
        up_write.write_all(&body).await?;
        let Some((reply_head, reply_body)) = read_message(&mut up_read, head.starts_with("HEAD ")).await?
        else {
            return Ok(());
        };
        write.write_all(reply_head.as_bytes()).await?;
        write.write_all(&reply_body).await?;
    }
    Ok(())
}
