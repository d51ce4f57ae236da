//! Small blocking clients for the operations tests (metrics, admin API, drain): a TURN client
//! over UDP built on ferroturn's codec (it must see raw answers: 300 + ALTERNATE-SERVER, 437,
//! 508), an HTTP/1.1 client, a UDP echo peer and a Prometheus text-format parser.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferroturn::codec::long_term_key_md5;
use ferroturn::codec::stun::{
    attr, decode_addr, decode_error_code, decode_xor_addr, method, Class, IntegrityKind, Message,
    Writer,
};

pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

// ------------------------------------------------------------------------------------ TURN

/// The outcome of one request: success, or the error code (and ALTERNATE-SERVER, if any).
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    Ok(Vec<u8>),
    Err(u16, Option<SocketAddr>),
}

impl Answer {
    #[track_caller]
    pub fn ok(self) -> Vec<u8> {
        match self {
            Answer::Ok(v) => v,
            Answer::Err(c, _) => panic!("expected success, got {c}"),
        }
    }
}

/// A TURN client over UDP with long-term credentials.
pub struct TurnUdp {
    pub s: UdpSocket,
    pub server: SocketAddr,
    user: String,
    realm: Vec<u8>,
    nonce: Vec<u8>,
    key: [u8; 16],
    tid: u32,
}

impl TurnUdp {
    pub fn new(server: SocketAddr, user: &str, pass: &str, realm: &str) -> Self {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        TurnUdp {
            s,
            server,
            user: user.into(),
            realm: Vec::new(),
            nonce: Vec::new(),
            key: long_term_key_md5(user, realm, pass),
            tid: 0,
        }
    }

    pub fn local(&self) -> SocketAddr {
        self.s.local_addr().unwrap()
    }

    pub fn recv(&self) -> Option<Vec<u8>> {
        let mut b = vec![0u8; 2048];
        match self.s.recv_from(&mut b) {
            Ok((n, from)) => {
                assert_eq!(from, self.server);
                b.truncate(n);
                Some(b)
            }
            Err(_) => None,
        }
    }

    /// One request with the long-term credential dance (401/438 → realm/nonce → signed retry).
    pub fn request(&mut self, m: u16, body: impl Fn(&mut Writer)) -> Answer {
        for _ in 0..3 {
            self.tid += 1;
            let mut tid = [0x42; 12];
            tid[8..].copy_from_slice(&self.tid.to_be_bytes());
            let mut buf = Vec::new();
            let mut w = Writer::new(&mut buf, m, Class::Request, &tid);
            body(&mut w);
            if !self.nonce.is_empty() {
                w.attr(attr::USERNAME, self.user.as_bytes())
                    .attr(attr::REALM, &self.realm)
                    .attr(attr::NONCE, &self.nonce)
                    .integrity(IntegrityKind::Sha1, &self.key);
            }
            self.s.send_to(&buf, self.server).unwrap();
            let resp = loop {
                let r = self.recv().expect("an answer from the server");
                let msg = Message::parse(&r).expect("STUN");
                if msg.transaction_id() == tid {
                    break r;
                }
            };
            let msg = Message::parse(&resp).unwrap();
            assert_eq!(msg.method, m);
            if msg.class == Class::Success {
                assert!(msg.verify_integrity(&self.key), "signed success");
                return Answer::Ok(resp);
            }
            let (code, _) = decode_error_code(msg.get(attr::ERROR_CODE).unwrap()).unwrap();
            if (code == 401 && self.nonce.is_empty()) || code == 438 {
                self.realm = msg.get(attr::REALM).unwrap().to_vec();
                self.nonce = msg.get(attr::NONCE).unwrap().to_vec();
                continue;
            }
            if code != 401 {
                assert!(msg.verify_integrity(&self.key), "signed error {code}");
            }
            return Answer::Err(code, msg.get(attr::ALTERNATE_SERVER).and_then(decode_addr));
        }
        panic!("authentication did not converge");
    }

    pub fn allocate(&mut self) -> Answer {
        self.request(method::ALLOCATE, |w| {
            w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        })
    }

    /// Allocate that must succeed: the relayed address.
    pub fn allocate_ok(&mut self) -> SocketAddr {
        let r = self.allocate().ok();
        let m = Message::parse(&r).unwrap();
        decode_xor_addr(
            m.get(attr::XOR_RELAYED_ADDRESS).unwrap(),
            &m.transaction_id(),
        )
        .unwrap()
    }

    pub fn permit(&mut self, peer: SocketAddr) {
        self.request(method::CREATE_PERMISSION, |w| {
            w.xor_addr(attr::XOR_PEER_ADDRESS, peer);
        })
        .ok();
    }

    pub fn refresh(&mut self, lifetime: u32) -> Answer {
        self.request(method::REFRESH, |w| {
            w.u32(attr::LIFETIME, lifetime);
        })
    }

    pub fn send_indication(&self, peer: SocketAddr, payload: &[u8]) {
        let mut buf = Vec::new();
        Writer::new(&mut buf, method::SEND, Class::Indication, &[0x55; 12])
            .xor_addr(attr::XOR_PEER_ADDRESS, peer)
            .attr(attr::DATA, payload);
        self.s.send_to(&buf, self.server).unwrap();
    }

    /// The next Data indication's payload, if one comes within `wait`.
    pub fn recv_data(&self, wait: Duration) -> Option<Vec<u8>> {
        self.s.set_read_timeout(Some(wait)).unwrap();
        let r = self.recv();
        self.s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let r = r?;
        let m = Message::parse(&r).ok()?;
        if (m.method, m.class) != (method::DATA, Class::Indication) {
            return None;
        }
        m.get(attr::DATA).map(<[u8]>::to_vec)
    }

    /// Send `n` indications through the relay to an echo peer and count the echoes that come
    /// back within a bounded time.
    pub fn echo_round(&self, peer: SocketAddr, n: usize, size: usize) -> usize {
        let mut got = 0;
        for i in 0..n {
            let payload = vec![i as u8; size];
            self.send_indication(peer, &payload);
            if self.recv_data(Duration::from_secs(2)).as_deref() == Some(&payload[..]) {
                got += 1;
            }
        }
        got
    }
}

/// A UDP echo peer on 127.0.0.1 in a thread; counts datagrams. Stops after 30 s of silence
/// or 100 000 datagrams.
pub fn echo_peer() -> (SocketAddr, Arc<AtomicU64>) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let addr = s.local_addr().unwrap();
    let seen = Arc::new(AtomicU64::new(0));
    let c = seen.clone();
    std::thread::spawn(move || {
        let mut b = [0u8; 2048];
        for _ in 0..100_000 {
            match s.recv_from(&mut b) {
                Ok((n, from)) => {
                    c.fetch_add(1, Ordering::SeqCst);
                    let _ = s.send_to(&b[..n], from);
                }
                Err(_) => return,
            }
        }
    });
    (addr, seen)
}

// ------------------------------------------------------------------------------------ HTTP

#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Send raw bytes, read the whole answer (the server closes after one response).
pub fn http_raw(addr: SocketAddr, raw: &[u8]) -> HttpResponse {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(raw).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .expect("a complete HTTP response");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .collect();
    HttpResponse {
        status,
        headers,
        body: body.to_owned(),
    }
}

pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> HttpResponse {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    http_raw(addr, req.as_bytes())
}

/// Poll `GET path` until it answers `status` or `limit` passes.
pub fn wait_status(addr: SocketAddr, path: &str, status: u16, limit: Duration) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
            if s.write_all(req.as_bytes()).is_ok() {
                let mut out = Vec::new();
                let _ = s.read_to_end(&mut out);
                if out.starts_with(format!("HTTP/1.1 {status} ").as_bytes()) {
                    return true;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

// ------------------------------------------------------------------------------ Prometheus

/// One scrape, parsed: sample name with its labels (`name{a="b"}`, as printed) → value, and
/// metric family → TYPE. Panics on any line that is not valid text format 0.0.4.
#[derive(Debug, Default)]
pub struct Scrape {
    pub samples: BTreeMap<String, f64>,
    pub types: BTreeMap<String, String>,
    pub helps: BTreeMap<String, String>,
}

impl Scrape {
    pub fn parse(text: &str) -> Scrape {
        let mut s = Scrape::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("HELP name text");
                assert!(!help.is_empty(), "{line}");
                s.helps.insert(name.into(), help.into());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, ty) = rest.split_once(' ').expect("TYPE name type");
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&ty),
                    "{line}"
                );
                assert!(s.helps.contains_key(name), "HELP before TYPE: {line}");
                s.types.insert(name.into(), ty.into());
            } else {
                assert!(!line.starts_with('#') && !line.is_empty(), "{line:?}");
                let (key, value) = line.rsplit_once(' ').expect("sample value");
                let value: f64 = value.parse().unwrap_or_else(|_| panic!("value: {line}"));
                let name = key.split('{').next().unwrap();
                assert!(name.starts_with("ferroturn_"), "{line}");
                assert!(
                    name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "{line}"
                );
                if let Some(labels) = key.strip_prefix(name) {
                    if !labels.is_empty() {
                        assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
                        for kv in labels[1..labels.len() - 1].split(',') {
                            let (k, v) = kv.split_once('=').expect("label=value");
                            assert!(k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
                            assert!(v.starts_with('"') && v.ends_with('"'), "{line}");
                        }
                    }
                }
                let family = s.family_of(name);
                assert!(s.types.contains_key(&family), "TYPE before sample: {line}");
                assert!(
                    s.samples.insert(key.into(), value).is_none(),
                    "duplicate {key}"
                );
            }
        }
        s
    }

    fn family_of(&self, name: &str) -> String {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix) {
                if self.types.get(base).map(String::as_str) == Some("histogram") {
                    return base.into();
                }
            }
        }
        name.into()
    }

    #[track_caller]
    pub fn get(&self, key: &str) -> f64 {
        *self
            .samples
            .get(key)
            .unwrap_or_else(|| panic!("no sample {key}"))
    }

    /// A histogram's buckets (le, cumulative count) in order, checked: `le` ascending ending
    /// in +Inf, counts non-decreasing, +Inf = _count. Returns (buckets, sum, count).
    #[track_caller]
    pub fn histogram(&self, name: &str) -> (Vec<(f64, f64)>, f64, f64) {
        assert_eq!(self.types.get(name).map(String::as_str), Some("histogram"));
        let prefix = format!("{name}_bucket{{le=\"");
        let mut b: Vec<(f64, f64)> = self
            .samples
            .iter()
            .filter_map(|(k, v)| {
                let le = k.strip_prefix(&prefix)?.strip_suffix("\"}")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                };
                Some((le, *v))
            })
            .collect();
        b.sort_by(|x, y| x.0.partial_cmp(&y.0).unwrap());
        assert!(b.len() >= 2, "{name}: buckets");
        assert_eq!(b.last().unwrap().0, f64::INFINITY, "{name}: +Inf bucket");
        for w in b.windows(2) {
            assert!(w[0].1 <= w[1].1, "{name}: cumulative buckets {b:?}");
        }
        let count = self.get(&format!("{name}_count"));
        let sum = self.get(&format!("{name}_sum"));
        assert_eq!(b.last().unwrap().1, count, "{name}: +Inf = _count");
        (b, sum, count)
    }
}

// ------------------------------------------------------------------------- in-process ops

/// The admin token of the in-process listeners.
pub const TOKEN: &str = "test-token-0123456789";

/// Metrics and admin listeners (on ephemeral loopback ports) for an in-process server, as
/// main.rs runs them, on their own tokio runtime. `args`: extra command-line flags.
pub fn start_ops(
    server: &ferroturn::runtime::Server,
    args: &[&str],
    log: ferroturn::runtime::admin::LogLevelSetter,
) -> (tokio::runtime::Runtime, ferroturn::runtime::admin::Ops) {
    let mut cfg = ops_config(args);
    // Port 0 is not a valid prometheus-port for operators; tests want an ephemeral one.
    cfg.ops.prometheus = Some("127.0.0.1:0".parse().unwrap());
    let mut ops = ferroturn::runtime::admin::Ops::bind(
        &cfg,
        server.handle(),
        server.local_addrs(),
        server.tcp_addrs(),
        server.tls_addrs(),
        log,
    )
    .expect("bind the HTTP listeners");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async { ops.serve() }).expect("serve");
    (rt, ops)
}

/// The configuration `start_ops` loads (metrics and the admin API on, the test token), with
/// `args` added; also what a reload of that server would load.
pub fn ops_config(args: &[&str]) -> ferroturn::runtime::config::Config {
    use clap::Parser;
    let mut argv = vec![
        "ferroturn",
        "--listening-ip",
        "127.0.0.1",
        "--realm",
        "ferroturn.test",
        "--user",
        "alice:alice-pass",
        "--prometheus",
        "--prometheus-port",
        "1",
        "--admin-listen",
        "127.0.0.1:0",
        "--admin-token",
        TOKEN,
    ];
    argv.extend_from_slice(args);
    let cli = ferroturn::runtime::cli::Cli::parse_from(argv);
    ferroturn::runtime::config::load(&cli).unwrap_or_else(|e| panic!("{e}"))
}
