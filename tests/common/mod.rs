//! Helpers for end-to-end tests: an in-process ferroturn server on loopback, an echo peer,
//! webrtc-rs TURN clients, a filtering UDP proxy, a deterministic PRNG and bounded waits.
//!
//! `Config` is built in exactly one place, [`start_server`], so that a change of the runtime
//! configuration struct only needs adapting here.
#![allow(dead_code)] // each test binary uses a different subset

pub mod stream;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferroturn::codec::stun::{method, Class, Writer};
use ferroturn::engine::{EngineConfig, Stats};
use ferroturn::runtime::cli::Cli;
use ferroturn::runtime::config;
use ferroturn::runtime::{Server, StartError};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use turn::client::{Client, ClientConfig};

pub const REALM: &str = "ferroturn.test";
pub const USER: &str = "alice";
pub const PASS: &str = "alice-pass";
pub const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Upper bound for any single network step in these tests (one request, one datagram).
pub const STEP: Duration = Duration::from_secs(5);

/// Await `fut` for at most `limit`; panic naming `what` when it does not finish in time.
pub async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}

/// Poll `cond` every 20 ms until it holds or `limit` passes; returns whether it held.
pub async fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

// ---------------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------------

/// What a test wants from its server. Relay ports: every test takes its own block so that
/// parallel tests (each with its own server and port pool) never race for a port. The blocks
/// lie above Linux's default ephemeral range (32768-60999), so client sockets bound to port 0
/// cannot take them either.
pub struct ServerOpts {
    pub relay_threads: usize,
    pub min_port: u16,
    pub max_port: u16,
    /// Last word on the engine config (secrets, lifetimes...), applied after `config::load`,
    /// so its validation (e.g. minimum lifetimes) does not apply. Leave the peer filter and the
    /// port range alone: they are derived from the listening address and this struct.
    pub tweak: Box<dyn Fn(&mut EngineConfig)>,
    /// Last word on the runtime config (extra listeners, TLS files).
    pub runtime: Box<dyn Fn(&mut config::Config)>,
}

impl ServerOpts {
    /// Two relay threads, user alice, relay ports `block * 100 + 61000 ..= +99`.
    pub fn block(block: u16) -> Self {
        assert!(block < 45, "relay port blocks must stay below 65535");
        let min = 61000 + block * 100;
        ServerOpts {
            relay_threads: 2,
            min_port: min,
            max_port: min + 99,
            tweak: Box::new(|_| {}),
            runtime: Box::new(|_| {}),
        }
    }

    /// Use only the first `n` ports of the block.
    pub fn ports(mut self, n: u16) -> Self {
        assert!((1..=100).contains(&n));
        self.max_port = self.min_port + n - 1;
        self
    }

    pub fn threads(mut self, n: usize) -> Self {
        self.relay_threads = n;
        self
    }

    pub fn tweak(mut self, f: impl Fn(&mut EngineConfig) + 'static) -> Self {
        self.tweak = Box::new(f);
        self
    }

    pub fn runtime(mut self, f: impl Fn(&mut config::Config) + 'static) -> Self {
        self.runtime = Box::new(f);
        self
    }
}

/// A running in-process server; shut down (threads joined) on drop.
pub struct TestServer {
    server: Option<Server>,
    pub addr: SocketAddr,
    pub min_port: u16,
    pub max_port: u16,
}

impl TestServer {
    pub fn server(&self) -> &Server {
        self.server.as_ref().expect("server running")
    }

    pub fn allocation_count(&self) -> u32 {
        self.server().allocation_count()
    }

    /// Sum of one engine counter over all shards (as last published: up to 1 s old).
    pub fn stat(&self, f: impl Fn(&Stats) -> u64) -> u64 {
        self.server().stats().iter().map(|s| f(&s.engine)).sum()
    }

    pub fn in_relay_range(&self, a: SocketAddr) -> bool {
        a.ip() == LOOPBACK && (self.min_port..=self.max_port).contains(&a.port())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown();
        }
        // A shard that died would go unnoticed otherwise: its listener socket closes and the
        // kernel hands its share of the SO_REUSEPORT group to the surviving shards.
        let n = SHARD_PANICS.load(Ordering::SeqCst);
        if n > 0 && !std::thread::panicking() {
            panic!("{n} ferroturn shard thread(s) panicked in this test binary (see stderr)");
        }
    }
}

static SHARD_PANICS: AtomicUsize = AtomicUsize::new(0);
static PANIC_WATCH: Once = Once::new();

/// Count panics on shard threads (named `ferroturn-shard-N`), keeping the default report.
fn watch_shard_panics() {
    PANIC_WATCH.call_once(|| {
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let shard = std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with("ferroturn-shard"));
            if shard {
                SHARD_PANICS.fetch_add(1, Ordering::SeqCst);
            }
            report(info);
        }));
    });
}

/// Start a server on 127.0.0.1 with user `alice:alice-pass`, realm `ferroturn.test`, relay IP
/// 127.0.0.1 and loopback peers allowed (the echo peer lives on 127.0.0.1).
///
/// The configuration goes through the operator's path, `config::load` on a command line, so
/// the peer filter (own listener, own IPs, relay range) is built exactly as in production.
/// The listening port is picked before the start (bind :0, note the port, release it) because
/// the filter must know the listener's exact address; a lost race is retried.
pub fn start_server(opts: ServerOpts) -> TestServer {
    watch_shard_panics();
    for _ in 0..20 {
        let port = std::net::UdpSocket::bind((LOOPBACK, 0))
            .and_then(|s| s.local_addr())
            .expect("bind an ephemeral port")
            .port();
        let listen = SocketAddr::new(LOOPBACK, port);
        // The one place a runtime Config is built (see the module docs).
        let cli = Cli {
            listening_ip: vec![LOOPBACK.to_string()],
            listening_port: Some(u64::from(port)),
            relay_ip: vec![LOOPBACK.to_string()],
            min_port: Some(u64::from(opts.min_port)),
            max_port: Some(u64::from(opts.max_port)),
            realm: Some(REALM.into()),
            user: vec![format!("{USER}:{PASS}")],
            allow_loopback_peers: true,
            relay_threads: Some(opts.relay_threads as u64),
            log_level: Some("warn".into()),
            ..Cli::default()
        };
        let mut cfg = config::load(&cli).unwrap_or_else(|e| panic!("test config: {e}"));
        (opts.tweak)(&mut cfg.engine);
        (opts.runtime)(&mut cfg);
        match Server::start(&cfg) {
            Ok(server) => {
                assert_eq!(server.local_addrs()[0], listen);
                return TestServer {
                    server: Some(server),
                    addr: listen,
                    min_port: opts.min_port,
                    max_port: opts.max_port,
                };
            }
            Err(StartError::AddrInUse(_)) => continue,
            Err(e) => panic!("server did not start: {e}"),
        }
    }
    panic!("no free listening port after 20 attempts");
}

// ---------------------------------------------------------------------------------------------
// Peers and clients
// ---------------------------------------------------------------------------------------------

/// A UDP socket on 127.0.0.1 that sends every datagram back to its sender.
pub struct EchoPeer {
    pub addr: SocketAddr,
    pub echoed: Arc<AtomicU64>,
    /// Source address of the last datagram (the relay's address, seen from the peer).
    pub last_from: Arc<Mutex<Option<SocketAddr>>>,
    task: JoinHandle<()>,
}

impl Drop for EchoPeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn echo_peer() -> EchoPeer {
    let sock = UdpSocket::bind((LOOPBACK, 0))
        .await
        .expect("bind echo peer");
    let addr = sock.local_addr().expect("echo addr");
    let echoed = Arc::new(AtomicU64::new(0));
    let last_from = Arc::new(Mutex::new(None));
    let (e, l) = (echoed.clone(), last_from.clone());
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            *l.lock().unwrap() = Some(from);
            if sock.send_to(&buf[..n], from).await.is_ok() {
                e.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    EchoPeer {
        addr,
        echoed,
        last_from,
        task,
    }
}

/// A webrtc-rs TURN client on its own 127.0.0.1 socket, already listening.
pub struct TurnClient {
    pub client: Client,
    /// The client's socket (shared with the client: tests may inject datagrams from the
    /// allocation's own 5-tuple).
    pub socket: Arc<UdpSocket>,
    pub local: SocketAddr,
}

pub async fn turn_client(server: SocketAddr, user: &str, pass: &str) -> TurnClient {
    // Same family as the server address ([::1] for the IPv6 tests).
    let local_ip: IpAddr = if server.is_ipv6() {
        Ipv6Addr::LOCALHOST.into()
    } else {
        LOOPBACK
    };
    let socket = Arc::new(UdpSocket::bind((local_ip, 0)).await.expect("bind client"));
    let local = socket.local_addr().expect("client addr");
    let client = Client::new(ClientConfig {
        stun_serv_addr: server.to_string(),
        turn_serv_addr: server.to_string(),
        username: user.into(),
        password: pass.into(),
        realm: REALM.into(),
        software: String::new(),
        rto_in_ms: 0,
        conn: socket.clone(),
        vnet: None,
    })
    .await
    .expect("turn client");
    client.listen().await.expect("client listen");
    TurnClient {
        client,
        socket,
        local,
    }
}

/// `n`-th test payload: length 1..=1200, content derived from `n` and `salt`.
pub fn payload(n: usize, salt: u8) -> Vec<u8> {
    let len = 1 + (n * 379) % 1200;
    (0..len)
        .map(|j| (n as u8).wrapping_mul(31) ^ (j as u8).wrapping_add(salt) ^ (j >> 8) as u8)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Filtering proxy (observe / steer what the client puts on the wire)
// ---------------------------------------------------------------------------------------------

/// What a [`Proxy`] saw, by kind and direction.
#[derive(Default)]
pub struct ProxyCounters {
    pub c2s_send_indications: AtomicU64,
    pub c2s_channel_data: AtomicU64,
    pub c2s_channel_binds_refused: AtomicU64,
    pub s2c_data_indications: AtomicU64,
    pub s2c_channel_data: AtomicU64,
}

impl ProxyCounters {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// A UDP relay between one client and the server that counts message kinds. With
/// `refuse_channel_bind`, ChannelBind requests never reach the server: the proxy answers them
/// with a 403 itself, as a middlebox or a server without channel support would.
pub struct Proxy {
    pub addr: SocketAddr,
    pub counters: Arc<ProxyCounters>,
    task: JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const TYPE_SEND_INDICATION: u16 = 0x0016;
const TYPE_DATA_INDICATION: u16 = 0x0017;
const TYPE_CHANNEL_BIND_REQUEST: u16 = 0x0009;

fn msg_type(b: &[u8]) -> Option<u16> {
    (b.len() >= 20).then(|| u16::from_be_bytes([b[0], b[1]]))
}

fn is_channel_data(b: &[u8]) -> bool {
    b.len() >= 4 && (0x40..=0x7f).contains(&b[0])
}

pub async fn proxy(server: SocketAddr, refuse_channel_bind: bool) -> Proxy {
    let front = UdpSocket::bind((LOOPBACK, 0)).await.expect("bind proxy");
    let back = UdpSocket::bind((LOOPBACK, 0)).await.expect("bind proxy");
    let addr = front.local_addr().expect("proxy addr");
    let counters = Arc::new(ProxyCounters::default());
    let c = counters.clone();
    let task = tokio::spawn(async move {
        let mut client: Option<SocketAddr> = None;
        let mut a = vec![0u8; 65536];
        let mut b = vec![0u8; 65536];
        loop {
            tokio::select! {
                r = front.recv_from(&mut a) => {
                    let Ok((n, from)) = r else { return };
                    client = Some(from);
                    let d = &a[..n];
                    match msg_type(d) {
                        Some(TYPE_SEND_INDICATION) => {
                            c.c2s_send_indications.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(TYPE_CHANNEL_BIND_REQUEST) if refuse_channel_bind => {
                            c.c2s_channel_binds_refused.fetch_add(1, Ordering::Relaxed);
                            let mut tid = [0u8; 12];
                            tid.copy_from_slice(&d[8..20]);
                            let mut out = Vec::new();
                            Writer::new(&mut out, method::CHANNEL_BIND, Class::Error, &tid)
                                .error_code(403, "refused by the test proxy");
                            let _ = front.send_to(&out, from).await;
                            continue;
                        }
                        _ if is_channel_data(d) => {
                            c.c2s_channel_data.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {}
                    }
                    let _ = back.send_to(d, server).await;
                }
                r = back.recv_from(&mut b) => {
                    let Ok((n, _)) = r else { return };
                    let d = &b[..n];
                    if msg_type(d) == Some(TYPE_DATA_INDICATION) {
                        c.s2c_data_indications.fetch_add(1, Ordering::Relaxed);
                    } else if is_channel_data(d) {
                        c.s2c_channel_data.fetch_add(1, Ordering::Relaxed);
                    }
                    if let Some(to) = client {
                        let _ = front.send_to(d, to).await;
                    }
                }
            }
        }
    });
    Proxy {
        addr,
        counters,
        task,
    }
}

// ---------------------------------------------------------------------------------------------
// Deterministic randomness
// ---------------------------------------------------------------------------------------------

/// xorshift64*: deterministic, seedable, no dependency.
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        XorShift(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn fill(&mut self, b: &mut [u8]) {
        for x in b {
            *x = self.next_u64() as u8;
        }
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.fill(&mut v);
        v
    }
}
