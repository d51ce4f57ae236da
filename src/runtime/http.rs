//! A minimal HTTP/1.1 server for the metrics and admin listeners, on the control thread's tokio
//! runtime. Hand-written rather than a crate (hyper, axum): a handful of routes, one request per
//! connection, and every limit explicit.
//!
//! Limits: request head 8 KiB and 64 header lines, body 64 KiB (`Content-Length` only; no
//! chunked uploads), 5 s to receive the whole request, 64 connections at a time and 16 from
//! one source address (an IPv6 source counts by its /64), so one host holding idle connections
//! cannot lock health checks and scrapes out; more are answered 503 and closed. Responses carry
//! `Connection: close`.
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::debug;

pub const MAX_HEAD: usize = 8 * 1024;
pub const MAX_HEADERS: usize = 64;
pub const MAX_BODY: usize = 64 * 1024;
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
pub const MAX_CONNECTIONS: usize = 64;
pub const MAX_CONNECTIONS_PER_SOURCE: usize = 16;

/// Open connections per source (see [`source_key`]); an entry goes when its count reaches 0,
/// so the table holds at most [`MAX_CONNECTIONS`] entries.
type Sources = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// What one host gets: an IPv4 address, or the /64 of an IPv6 one (IPv4-mapped as IPv4).
fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(a) => {
            let s = a.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// One counted connection of a source; dropping it gives the slot back.
struct SourceSlot {
    sources: Sources,
    key: IpAddr,
}

impl SourceSlot {
    fn take(sources: &Sources, ip: IpAddr) -> Option<SourceSlot> {
        let key = source_key(ip);
        let mut m = sources.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(key).or_insert(0);
        if *n >= MAX_CONNECTIONS_PER_SOURCE {
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            sources: sources.clone(),
            key,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut m = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.key);
            }
        }
    }
}

/// One parsed request.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// Path without the query string.
    pub path: String,
    pub query: String,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub peer: SocketAddr,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Response {
            status,
            content_type,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    pub fn text(status: u16, body: impl Into<String>) -> Self {
        let mut b = body.into();
        if !b.ends_with('\n') {
            b.push('\n');
        }
        Response::new(status, "text/plain; charset=utf-8", b)
    }

    pub fn json(status: u16, v: &serde_json::Value) -> Self {
        let mut b = v.to_string();
        b.push('\n');
        Response::new(status, "application/json", b)
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    fn serialize(&self, head_only: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\
             Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        for (n, v) in &self.headers {
            out.push_str(n);
            out.push_str(": ");
            out.push_str(v);
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        let mut out = out.into_bytes();
        if !head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Why a request could not be read; mapped to the status answered before closing.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadError {
    Closed,
    Timeout,
    Malformed(&'static str),
    HeadTooLarge,
    TooManyHeaders,
    BodyTooLarge,
    LengthRequired,
    Unsupported(&'static str),
    Version,
}

impl ReadError {
    fn response(&self) -> Option<Response> {
        Some(match self {
            ReadError::Closed => return None,
            ReadError::Timeout => Response::text(408, "request not received in time"),
            ReadError::Malformed(why) => Response::text(400, *why),
            ReadError::HeadTooLarge | ReadError::TooManyHeaders => {
                Response::text(431, "request head too large")
            }
            ReadError::BodyTooLarge => Response::text(413, "request body too large"),
            ReadError::LengthRequired => Response::text(411, "Content-Length required"),
            ReadError::Unsupported(why) => Response::text(501, *why),
            ReadError::Version => Response::text(505, "HTTP/1.0 and HTTP/1.1 only"),
        })
    }
}

/// Parse a request head (everything before the blank line, without it).
pub fn parse_head(head: &[u8], peer: SocketAddr) -> Result<Request, ReadError> {
    let text = std::str::from_utf8(head).map_err(|_| ReadError::Malformed("head not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or("");
    let mut parts = first.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ReadError::Malformed("bad request line"));
    };
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(ReadError::Version);
    }
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(ReadError::Malformed("bad method"));
    }
    if !target.starts_with('/') {
        return Err(ReadError::Malformed("bad request target"));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut headers = Vec::new();
    for line in lines {
        if headers.len() >= MAX_HEADERS {
            return Err(ReadError::TooManyHeaders);
        }
        let (n, v) = line
            .split_once(':')
            .ok_or(ReadError::Malformed("bad header line"))?;
        if n.is_empty() || n.bytes().any(|b| b.is_ascii_whitespace()) {
            return Err(ReadError::Malformed("bad header name"));
        }
        headers.push((n.to_ascii_lowercase(), v.trim().to_owned()));
    }
    Ok(Request {
        method: method.to_owned(),
        path: path.to_owned(),
        query: query.to_owned(),
        headers,
        body: Vec::new(),
        peer,
    })
}

/// Read one request from `s` within the limits (the caller applies the timeout).
async fn read_request(s: &mut TcpStream, peer: SocketAddr) -> Result<Request, ReadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD {
            return Err(ReadError::HeadTooLarge);
        }
        let n = s.read(&mut chunk).await.map_err(|_| ReadError::Closed)?;
        if n == 0 {
            return Err(if buf.is_empty() {
                ReadError::Closed
            } else {
                ReadError::Malformed("connection closed mid-request")
            });
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    if head_end > MAX_HEAD {
        return Err(ReadError::HeadTooLarge);
    }
    let mut req = parse_head(&buf[..head_end], peer)?;
    if req.header("transfer-encoding").is_some() {
        return Err(ReadError::Unsupported("Transfer-Encoding not supported"));
    }
    let len = match req.header("content-length") {
        None if matches!(req.method.as_str(), "POST" | "PUT") => {
            return Err(ReadError::LengthRequired)
        }
        None => 0,
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| ReadError::Malformed("bad Content-Length"))?,
    };
    if len > MAX_BODY {
        return Err(ReadError::BodyTooLarge);
    }
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let n = s.read(&mut chunk).await.map_err(|_| ReadError::Closed)?;
        if n == 0 {
            return Err(ReadError::Malformed("connection closed mid-body"));
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(len);
    req.body = body;
    Ok(req)
}

/// Serve `listener` forever with `handler`, one request per connection.
pub async fn serve<H, F>(listener: TcpListener, name: &'static str, handler: H)
where
    H: Fn(Request) -> F + Send + Sync + 'static,
    F: Future<Output = Response> + Send + 'static,
{
    let handler = Arc::new(handler);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let sources: Sources = Arc::default();
    loop {
        let (mut s, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                debug!(listener = name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Over a cap: one non-blocking write of the answer (it fits any socket buffer), no
        // task, no read; then close.
        let Some(source) = SourceSlot::take(&sources, peer.ip()) else {
            let r = Response::text(503, "too many connections from this address");
            let _ = s.try_write(&r.serialize(false));
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            let _ = s.try_write(&Response::text(503, "too many connections").serialize(false));
            continue;
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let _slots = (permit, source);
            let resp = match tokio::time::timeout(READ_TIMEOUT, read_request(&mut s, peer)).await {
                Err(_) => ReadError::Timeout.response(),
                Ok(Err(e)) => e.response(),
                Ok(Ok(req)) => {
                    let head = req.method == "HEAD";
                    let r = handler(req).await;
                    let bytes = r.serialize(head);
                    let _ = tokio::time::timeout(READ_TIMEOUT, s.write_all(&bytes)).await;
                    let _ = s.shutdown().await;
                    return;
                }
            };
            if let Some(r) = resp {
                let _ = tokio::time::timeout(READ_TIMEOUT, s.write_all(&r.serialize(false))).await;
                let _ = s.shutdown().await;
            }
        });
    }
}

/// Bind a listener now (startup: a bad address is a clean error), to serve later.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        "127.0.0.1:1".parse().unwrap()
    }

    #[test]
    fn sources_are_hosts() {
        let k = |s: &str| source_key(s.parse().unwrap());
        assert_eq!(k("2001:db8:1:2:aaaa::1"), k("2001:db8:1:2:bbbb::9"));
        assert_ne!(k("2001:db8:1:2::1"), k("2001:db8:1:3::1"));
        assert_eq!(k("::ffff:192.0.2.1"), k("192.0.2.1"));
        assert_ne!(k("192.0.2.1"), k("192.0.2.2"));
        let sources = Sources::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let held: Vec<_> = (0..MAX_CONNECTIONS_PER_SOURCE)
            .map(|_| SourceSlot::take(&sources, ip).unwrap())
            .collect();
        assert!(SourceSlot::take(&sources, ip).is_none());
        assert!(SourceSlot::take(&sources, "192.0.2.2".parse().unwrap()).is_some());
        drop(held);
        assert!(
            sources.lock().unwrap().is_empty(),
            "entries go with their last slot"
        );
        assert!(SourceSlot::take(&sources, ip).is_some());
    }

    #[test]
    fn parses_a_request_head() {
        let r = parse_head(
            b"GET /api/v1/sessions?x=1 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer t",
            peer(),
        )
        .unwrap();
        assert_eq!(
            (r.method.as_str(), r.path.as_str()),
            ("GET", "/api/v1/sessions")
        );
        assert_eq!(r.query, "x=1");
        assert_eq!(r.header("authorization"), Some("Bearer t"));
        assert_eq!(r.header("host"), Some("a"));
    }

    #[test]
    fn refuses_bad_heads() {
        for (head, want) in [
            (&b"GET /"[..], ReadError::Malformed("bad request line")),
            (b"GET / HTTP/2.0", ReadError::Version),
            (b"get / HTTP/1.1", ReadError::Malformed("bad method")),
            (
                b"GET x HTTP/1.1",
                ReadError::Malformed("bad request target"),
            ),
            (
                b"GET / HTTP/1.1\r\nnocolon",
                ReadError::Malformed("bad header line"),
            ),
            (
                b"GET / HTTP/1.1\r\nBad Name: x",
                ReadError::Malformed("bad header name"),
            ),
        ] {
            assert_eq!(parse_head(head, peer()).unwrap_err(), want, "{head:?}");
        }
        let mut many = b"GET / HTTP/1.1".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("\r\nx{i}: y").as_bytes());
        }
        assert_eq!(
            parse_head(&many, peer()).unwrap_err(),
            ReadError::TooManyHeaders
        );
    }
}
