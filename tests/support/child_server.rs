//! The server binary as a child process (so its RSS and fds can be read from /proc), and a
//! small hand-written TURN client over UDP with an echo peer, for the flood and soak tests.
#![allow(dead_code)]

use std::hash::BuildHasher;
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferroturn::codec::long_term_key_md5;
use ferroturn::codec::stun::{
    attr, decode_error_code, decode_xor_addr, method, Class, IntegrityKind, Message, Writer,
};

pub const REALM: &str = "flood.test";
pub const USER: &str = "legit";
pub const PASS: &str = "legit-pw";

/// A free port on 127.0.0.1 for both UDP and TCP (probed, then released).
pub fn free_port() -> u16 {
    loop {
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        let p = u.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

pub struct Server {
    child: Child,
    pub addr: SocketAddr,
}

impl Server {
    /// Start the binary on 127.0.0.1 with relay ports from `block` (61000 + 100 * block, as
    /// tests/common) and `extra` flags; returns once it answers a Binding request.
    pub fn start(block: u16, extra: &[&str]) -> Server {
        let port = free_port();
        let min = 61000 + block * 100;
        let (min_s, max_s, port_s) = (min.to_string(), (min + 99).to_string(), port.to_string());
        let user = format!("{USER}:{PASS}");
        let mut args = vec![
            "--listening-ip",
            "127.0.0.1",
            "--listening-port",
            &port_s,
            "--relay-ip",
            "127.0.0.1",
            "--min-port",
            &min_s,
            "--max-port",
            &max_s,
            "--realm",
            REALM,
            "--user",
            &user,
            "--allow-loopback-peers",
            "--relay-threads",
            "2",
            "--log-level",
            "warn",
        ];
        args.extend_from_slice(extra);
        let child = Command::new(env!("CARGO_BIN_EXE_ferroturn"))
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start ferroturn");
        let s = Server {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
        probe
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let t = Instant::now();
        let mut req = Vec::new();
        Writer::new(&mut req, method::BINDING, Class::Request, &[7; 12]);
        while t.elapsed() < Duration::from_secs(10) {
            let _ = probe.send_to(&req, s.addr);
            let mut b = [0u8; 256];
            if probe.recv(&mut b).is_ok() {
                return s;
            }
        }
        panic!("server did not answer within 10 s");
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn status_kb(&self, key: &str) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        s.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// Resident set size, KiB.
    pub fn rss_kb(&self) -> u64 {
        self.status_kb("VmRSS:")
    }

    /// The /proc/PID/status line for `key` (e.g. "Uid:").
    pub fn status_line(&self, key: &str) -> String {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        s.lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_default()
            .to_owned()
    }

    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Our own child, by PID.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tid(n: u64) -> [u8; 12] {
    let mut t = [0x42u8; 12];
    t[4..].copy_from_slice(&n.to_be_bytes());
    t
}

/// An echo peer: every datagram goes back to where it came from (the relayed address).
pub struct EchoPeer {
    pub addr: SocketAddr,
    pub received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EchoPeer {
    /// On `ip` (a loopback address other than the server's: the server refuses its own).
    pub fn start(ip: &str) -> EchoPeer {
        let s = UdpSocket::bind((ip, 0)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let addr = s.local_addr().unwrap();
        let received = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, st) = (received.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut b = [0u8; 2048];
            while !st.load(Ordering::Relaxed) {
                if let Ok((n, from)) = s.recv_from(&mut b) {
                    r.fetch_add(1, Ordering::Relaxed);
                    let _ = s.send_to(&b[..n], from);
                }
            }
        });
        EchoPeer {
            addr,
            received,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for EchoPeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A TURN client over UDP with long-term credentials.
pub struct Client {
    pub sock: UdpSocket,
    server: SocketAddr,
    user: String,
    key: [u8; 16],
    nonce: Option<Vec<u8>>,
    next: u64,
}

/// Result of one paced relay run.
#[derive(Debug, Default)]
pub struct Relayed {
    pub sent: u64,
    pub echoed: u64,
}

impl Client {
    pub fn new(bind: &str, server: SocketAddr) -> Client {
        let sock = UdpSocket::bind((bind, 0)).unwrap();
        Client {
            sock,
            server,
            user: USER.to_owned(),
            key: long_term_key_md5(USER, REALM, PASS),
            nonce: None,
            // Random transaction ids (RFC 8489 §5): a new socket can get the port of an
            // earlier client's, and the server rightly answers a request with that 5-tuple
            // and an id it has seen within 40 s from its transaction cache (a ChannelBind
            // "succeeded" that was never applied to the new allocation).
            next: std::collections::hash_map::RandomState::new().hash_one(Instant::now()) >> 1,
        }
    }

    /// A new socket (new 5-tuple) for `user`, keeping the nonce `prev` learnt.
    pub fn with_user(prev: Client, bind: &str, user: &str, pass: &str) -> Client {
        Client {
            sock: UdpSocket::bind((bind, 0)).unwrap(),
            server: prev.server,
            user: user.to_owned(),
            key: long_term_key_md5(user, REALM, pass),
            nonce: prev.nonce,
            next: prev.next,
        }
    }

    pub fn set_password(&mut self, pass: &str) {
        self.key = long_term_key_md5(&self.user, REALM, pass);
    }

    pub fn nonce(&self) -> Option<&[u8]> {
        self.nonce.as_deref()
    }

    /// Allocate; the error code, 0 on success (no panic on refusal).
    pub fn try_allocate(&mut self) -> u16 {
        self.try_transact(method::ALLOCATE, &|w| {
            w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        })
        .map_or(0xFFFF, |(c, _)| c)
    }

    /// One request with retransmissions (RFC 8489 §6.2.1, shortened): the 401 / 438 round
    /// trip is done here. Returns (error code or 0, the response bytes).
    pub fn transact(&mut self, m: u16, body: &dyn Fn(&mut Writer)) -> (u16, Vec<u8>) {
        self.try_transact(m, body)
            .unwrap_or_else(|| panic!("no answer to method {m:#x} after retries"))
    }

    pub fn try_transact(&mut self, m: u16, body: &dyn Fn(&mut Writer)) -> Option<(u16, Vec<u8>)> {
        for _ in 0..4 {
            let t = tid(self.next);
            self.next += 1;
            let mut buf = Vec::new();
            let mut w = Writer::new(&mut buf, m, Class::Request, &t);
            body(&mut w);
            if let Some(n) = &self.nonce {
                w.attr(attr::USERNAME, self.user.as_bytes())
                    .attr(attr::REALM, REALM.as_bytes())
                    .attr(attr::NONCE, n)
                    .integrity(IntegrityKind::Sha1, &self.key);
            }
            w.fingerprint();
            let Some(resp) = self.exchange(&buf, &t) else {
                continue;
            };
            let msg = Message::parse(&resp).expect("response parses");
            let code = msg
                .get(attr::ERROR_CODE)
                .and_then(decode_error_code)
                .map_or(0, |(c, _)| c);
            if code == 401 || code == 438 {
                let fresh = msg.get(attr::NONCE).map(<[u8]>::to_vec);
                if self.nonce.is_none() || code == 438 {
                    self.nonce = fresh;
                    continue;
                }
            }
            return Some((code, resp));
        }
        None
    }

    /// Send `req` and wait for the response with transaction id `t` (up to 4 tries, 250 ms).
    fn exchange(&self, req: &[u8], t: &[u8; 12]) -> Option<Vec<u8>> {
        self.sock
            .set_read_timeout(Some(Duration::from_millis(250)))
            .unwrap();
        for _ in 0..4 {
            self.sock.send_to(req, self.server).unwrap();
            let deadline = Instant::now() + Duration::from_millis(250);
            let mut b = [0u8; 2048];
            while Instant::now() < deadline {
                if let Ok(n) = self.sock.recv(&mut b) {
                    if n >= 20 && b[0] < 2 && &b[8..20] == t {
                        return Some(b[..n].to_vec());
                    }
                }
            }
        }
        None
    }

    /// Allocate, bind channel 0x4000 to `peer`; returns the relayed address.
    pub fn allocate(&mut self, peer: SocketAddr) -> SocketAddr {
        let (code, r) = self.transact(method::ALLOCATE, &|w| {
            w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        });
        assert_eq!(code, 0, "Allocate failed");
        let m = Message::parse(&r).unwrap();
        let relayed = decode_xor_addr(
            m.get(attr::XOR_RELAYED_ADDRESS).unwrap(),
            &m.transaction_id(),
        )
        .unwrap();
        let (code, _) = self.transact(method::CHANNEL_BIND, &|w| {
            w.attr(attr::CHANNEL_NUMBER, &[0x40, 0, 0, 0])
                .xor_addr(attr::XOR_PEER_ADDRESS, peer);
        });
        assert_eq!(code, 0, "ChannelBind failed");
        relayed
    }

    pub fn delete(&mut self) {
        let (code, _) = self.transact(method::REFRESH, &|w| {
            w.u32(attr::LIFETIME, 0);
        });
        assert!(code == 0 || code == 437, "Refresh 0 failed: {code}");
    }

    /// `n` ChannelData packets at `pps`, each echoed by the peer back through the relay;
    /// waits up to 1 s for the stragglers.
    pub fn relay_paced(&mut self, n: u64, pps: u64) -> Relayed {
        self.sock.set_nonblocking(true).unwrap();
        let mut out = Relayed::default();
        let start = Instant::now();
        let mut b = [0u8; 2048];
        let mut pkt = vec![0x40, 0x00, 0, 100];
        pkt.extend_from_slice(&[0x5a; 100]);
        let mut drain = |out: &mut Relayed, sock: &UdpSocket| {
            while let Ok(x) = sock.recv(&mut b) {
                if x >= 4 && b[0] == 0x40 {
                    out.echoed += 1;
                }
            }
        };
        for i in 0..n {
            let due = start + Duration::from_micros(i * 1_000_000 / pps);
            while Instant::now() < due {
                drain(&mut out, &self.sock);
                std::thread::sleep(Duration::from_micros(200));
            }
            pkt[4..12].copy_from_slice(&i.to_be_bytes());
            if self.sock.send_to(&pkt, self.server).is_ok() {
                out.sent += 1;
            }
        }
        let end = Instant::now() + Duration::from_secs(1);
        while out.echoed < out.sent && Instant::now() < end {
            drain(&mut out, &self.sock);
            std::thread::sleep(Duration::from_millis(1));
        }
        self.sock.set_nonblocking(false).unwrap();
        out
    }
}

/// xorshift64*: random bytes for floods, reproducible from the seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn fill(&mut self, b: &mut [u8]) {
        for c in b.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}
