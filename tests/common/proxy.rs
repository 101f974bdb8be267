//! A Cloud Map API proxy for the tests: forwards each request to a real Cloud Map API server (the
//! embedded registry) and records it, so API cost is counted at the backend, not by the code under
//! test. It can add latency, answer RequestLimitExceeded or AccessDeniedException, or refuse
//! connections (backend down).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    Forward {
        latency: Duration,
    },
    /// Answer these operations with RequestLimitExceeded (others are forwarded).
    Throttle(Vec<&'static str>),
    /// Answer these operations with AccessDeniedException, as IAM does for an action the
    /// caller's role lacks (others are forwarded).
    Deny(Vec<&'static str>),
    /// Close every connection at once, as if the backend were gone.
    Down,
}

#[derive(Debug, Clone)]
pub struct Call {
    pub at: Instant,
    pub operation: String,
    pub body: String,
}

pub struct Proxy {
    pub addr: SocketAddr,
    pub calls: Arc<Mutex<Vec<Call>>>,
    pub mode: Arc<Mutex<Mode>>,
}

impl Proxy {
    pub fn start(upstream: SocketAddr) -> Proxy {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let mode = Arc::new(Mutex::new(Mode::Forward { latency: Duration::ZERO }));
        let (tx, rx) = std::sync::mpsc::channel();
        let (c, m) = (calls.clone(), mode.clone());
        std::thread::spawn(move || {
            let rt =
                tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                loop {
                    let Ok((conn, _)) = listener.accept().await else { continue };
                    tokio::spawn(handle(conn, upstream, c.clone(), m.clone()));
                }
            });
        });
        Proxy { addr: rx.recv().unwrap(), calls, mode }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// How many calls of `operation` whose body mentions `needle` were made since `since`.
    pub fn count(&self, operation: &str, needle: &str, since: Instant) -> usize {
        self.calls()
            .iter()
            .filter(|c| c.at >= since && c.operation == operation && c.body.contains(needle))
            .count()
    }
}

async fn read_request(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, Vec<u8>)> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let mut chunk = [0u8; 8192];
                let n = conn.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = buf[end + 4..end + 4 + len].to_vec();
            buf.drain(..end + 4 + len);
            return Some((head, body));
        }
        let mut chunk = [0u8; 8192];
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn handle(
    mut conn: TcpStream,
    upstream: SocketAddr,
    calls: Arc<Mutex<Vec<Call>>>,
    mode: Arc<Mutex<Mode>>,
) {
    let mut buf = Vec::new();
    while let Some((head, body)) = read_request(&mut conn, &mut buf).await {
        let operation = head
            .lines()
            .find_map(|l| {
                let lower = l.to_ascii_lowercase();
                lower
                    .starts_with("x-amz-target:")
                    .then(|| l.split('.').next_back().unwrap_or("").trim().to_string())
            })
            .unwrap_or_default();
        let mode = mode.lock().unwrap().clone();
        if mode == Mode::Down {
            return; // the connection just closes
        }
        calls.lock().unwrap().push(Call {
            at: Instant::now(),
            operation: operation.clone(),
            body: String::from_utf8_lossy(&body).to_string(),
        });
        let refusal = match &mode {
            Mode::Throttle(ops) if ops.contains(&operation.as_str()) => {
                Some(r#"{"__type":"RequestLimitExceeded","Message":"Rate exceeded"}"#)
            }
            Mode::Deny(ops) if ops.contains(&operation.as_str()) => Some(
                r#"{"__type":"AccessDeniedException","Message":"User is not authorized to perform this action"}"#,
            ),
            _ => None,
        };
        if let Some(payload) = refusal {
            let response = format!(
                "HTTP/1.1 400 Bad Request\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\n\r\n{payload}",
                payload.len()
            );
            if conn.write_all(response.as_bytes()).await.is_err() {
                return;
            }
            continue;
        }
        if let Mode::Forward { latency } = mode
            && !latency.is_zero()
        {
            tokio::time::sleep(latency).await;
        }
        let Ok(mut up) = TcpStream::connect(upstream).await else { return };
        let mut request = String::new();
        for (i, line) in head.lines().enumerate() {
            if i > 0 && line.to_ascii_lowercase().starts_with("connection:") {
                continue;
            }
            request.push_str(line);
            request.push_str("\r\n");
        }
        request.push_str("Connection: close\r\n\r\n");
        if up.write_all(request.as_bytes()).await.is_err() || up.write_all(&body).await.is_err() {
            return;
        }
        let mut response = Vec::new();
        if up.read_to_end(&mut response).await.is_err() || conn.write_all(&response).await.is_err() {
            return;
        }
        // The upstream said Connection: close, and so will the client; end here.
        return;
    }
}
