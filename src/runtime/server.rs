//! Starting and steering a server: listener groups, one shard thread per core, reload, shutdown.
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mio::Waker;
use tracing::{info, warn};

use super::config::Config;
use super::shard::{self, Control, ListenSocket, ShardHandle, ShardStats, SocketOptions};
use super::sockets;
use super::tls::CertStore;
use crate::engine::shared::Shared;
use crate::engine::{Engine, EngineConfig};

/// Why the server could not start; `Display` is the one line an operator sees.
#[derive(Debug)]
pub enum StartError {
    AddrInUse(SocketAddr),
    Bind(SocketAddr, std::io::Error),
    Io(std::io::Error),
    Tls(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::AddrInUse(a) => write!(
                f,
                "listening address {a} is already in use (another TURN server running?)"
            ),
            StartError::Bind(a, e) => write!(f, "cannot listen on {a}: {e}"),
            StartError::Io(e) => write!(f, "cannot start: {e}"),
            StartError::Tls(e) => write!(f, "TLS: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

pub struct Server {
    shards: Vec<ShardHandle>,
    shared: Arc<Shared>,
    local_addrs: Vec<SocketAddr>,
    tcp_addrs: Vec<SocketAddr>,
    tls_addrs: Vec<SocketAddr>,
    cert_store: Option<Arc<CertStore>>,
    watcher: Option<Watcher>,
    /// With a wildcard listener: the host's interface addresses as the watcher last sent them.
    /// Reload and the watcher send to the shards under this lock, so each shard gets their
    /// messages in one order and a reload never brings back an older list.
    host_addrs: Option<HostAddrs>,
    /// Set once a drain starts (SIGUSR1, admin API); read by /ready and the control loop.
    draining: Arc<AtomicBool>,
}

/// A thread off the relay path that polls what can change under a running server: the TLS
/// certificate files (reloaded when they change) and, with a wildcard listener, the host's
/// interface addresses (the peer filter's own addresses: a DHCP lease, an IPv6 address that
/// comes and goes).
struct Watcher {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

const WATCH_TICK: Duration = Duration::from_millis(250);
/// Interface addresses are read every this many ticks (1 s): one getifaddrs(3), a netlink dump.
const HOST_ADDR_TICKS: u32 = 4;

type HostAddrs = Arc<Mutex<Vec<IpAddr>>>;

/// The host's interface addresses as the shards last heard them, and how to tell them.
struct HostAddrWatch {
    latest: HostAddrs,
    shards: Vec<(mpsc::Sender<Control>, Arc<Waker>)>,
}

impl HostAddrWatch {
    fn poll(&self) {
        let now = super::pktinfo::interface_addresses();
        // Empty = getifaddrs failed (a host always has an address): keep what we have.
        if now.is_empty() {
            return;
        }
        let mut latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        if now == *latest {
            return;
        }
        let added: Vec<&IpAddr> = now.iter().filter(|ip| !latest.contains(ip)).collect();
        let removed: Vec<&IpAddr> = latest.iter().filter(|ip| !now.contains(ip)).collect();
        info!(
            event = "host_addresses_changed",
            ?added,
            ?removed,
            "host addresses changed; the peer filter follows"
        );
        let ips = Arc::new(now.clone());
        for (tx, waker) in &self.shards {
            if tx.send(Control::HostAddresses(ips.clone())).is_ok() {
                let _ = waker.wake();
            }
        }
        *latest = now;
    }
}

/// None (logged) if the thread cannot be spawned: the server runs on without the watching.
fn spawn_watcher(store: Option<Arc<CertStore>>, hosts: Option<HostAddrWatch>) -> Option<Watcher> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::Builder::new()
        .name("ferroturn-watch".into())
        .spawn(move || {
            let mut tick = 0u32;
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(WATCH_TICK);
                if let Some(store) = &store {
                    match store.reload_if_changed() {
                        Ok(true) => info!(event = "tls_reloaded", cert = %store.paths().0.display(), "TLS certificate reloaded"),
                        Ok(false) => {}
                        Err(e) => warn!(event = "tls_reload_failed", error = %e, "new TLS certificate rejected; keeping the previous one"),
                    }
                }
                tick = tick.wrapping_add(1);
                if tick % HOST_ADDR_TICKS == 0 {
                    if let Some(h) = &hosts {
                        h.poll();
                    }
                }
            }
        });
    match thread {
        Ok(thread) => Some(Watcher { stop, thread }),
        Err(e) => {
            warn!(error = %e, "cannot start the certificate / host address watcher");
            None
        }
    }
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // The OS CSPRNG; failing that (no getrandom at all), time is better than a constant.
    if getrandom::fill(&mut b).is_err() {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        return t.as_nanos() as u64 ^ std::process::id() as u64;
    }
    u64::from_le_bytes(b)
}

impl Server {
    pub fn start(cfg: &Config) -> Result<Server, StartError> {
        let n = cfg.relay_threads.max(1);
        let mut nonce_key = [0u8; 32];
        for c in nonce_key.chunks_mut(8) {
            c.copy_from_slice(&random_u64().to_le_bytes());
        }
        let engine_cfg = Arc::new(cfg.engine.clone());
        let shared = Arc::new(Shared::new(
            engine_cfg.min_port,
            engine_cfg.max_port,
            nonce_key,
            random_u64(),
        ));
        // TLS first: a certificate that does not load is a startup error, not a runtime one.
        let tls = match &cfg.tls {
            Some(files) => {
                let store = CertStore::load(&files.cert, &files.key).map_err(StartError::Tls)?;
                let server_cfg = store.server_config().map_err(StartError::Tls)?;
                Some((store, server_cfg))
            }
            None => None,
        };
        // Bind everything before starting any thread, so a bad address fails cleanly.
        let mut per_shard: Vec<Vec<ListenSocket>> = (0..n).map(|_| Vec::new()).collect();
        let mut local_addrs = Vec::new();
        let mut tcp_addrs = Vec::new();
        let mut tls_addrs = Vec::new();
        let bind_err = |addr: SocketAddr| {
            move |e: std::io::Error| {
                if e.kind() == std::io::ErrorKind::AddrInUse {
                    StartError::AddrInUse(addr)
                } else {
                    StartError::Bind(addr, e)
                }
            }
        };
        for &addr in &cfg.listen {
            let group =
                sockets::bind_listener_group(addr, n, cfg.udp_recv_buffer, cfg.udp_send_buffer)
                    .map_err(bind_err(addr))?;
            local_addrs.push(group[0].local_addr().map_err(StartError::Io)?);
            for (i, s) in group.into_iter().enumerate() {
                per_shard[i].push(ListenSocket::Udp(s));
            }
        }
        for &addr in &cfg.tcp_listen {
            let group = sockets::bind_tcp_listener_group(addr, n).map_err(bind_err(addr))?;
            tcp_addrs.push(group[0].local_addr().map_err(StartError::Io)?);
            for (i, s) in group.into_iter().enumerate() {
                per_shard[i].push(ListenSocket::Tcp(s));
            }
        }
        if let Some((_, server_cfg)) = &tls {
            for &addr in &cfg.tls_listen {
                let group = sockets::bind_tcp_listener_group(addr, n).map_err(bind_err(addr))?;
                tls_addrs.push(group[0].local_addr().map_err(StartError::Io)?);
                for (i, s) in group.into_iter().enumerate() {
                    per_shard[i].push(ListenSocket::Tls(s, server_cfg.clone()));
                }
            }
        }
        // Process-wide: every shard's sends read it.
        let gso = super::batch::enable_gso(cfg.udp_gso);
        tracing::debug!(gso, "UDP GSO");
        let opts = SocketOptions {
            recv_buffer: cfg.udp_recv_buffer,
            send_buffer: cfg.udp_send_buffer,
        };
        let now = Instant::now();
        let unix_now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let peer_streams: shard::PeerStreams = Default::default();
        let mailboxes: shard::Mailboxes = Default::default();
        let mut shards = Vec::with_capacity(n);
        for (i, listeners) in per_shard.into_iter().enumerate() {
            let engine = Engine::new(
                engine_cfg.clone(),
                shared.clone(),
                now,
                unix_now,
                random_u64(),
            );
            shards.push(
                shard::spawn(
                    i,
                    engine,
                    listeners,
                    opts,
                    cfg.relay_coalesce,
                    peer_streams.clone(),
                    mailboxes.clone(),
                )
                .map_err(StartError::Io)?,
            );
        }
        // Until this is set (just after the start) a deletion reaches only its own shard.
        let _ = mailboxes.set(
            shards
                .iter()
                .map(|h| (h.control.clone(), h.waker.clone()))
                .collect(),
        );
        let cert_store = tls.map(|(store, _)| store);
        let wildcard = local_addrs
            .iter()
            .chain(&tcp_addrs)
            .chain(&tls_addrs)
            .any(|a| a.ip().is_unspecified());
        // What the configuration was built with: a change since then is caught at once.
        let host_addrs: Option<HostAddrs> =
            wildcard.then(|| Arc::new(Mutex::new(cfg.engine.peer_filter.host_ips().to_vec())));
        let hosts = host_addrs.as_ref().map(|latest| HostAddrWatch {
            latest: latest.clone(),
            shards: mailboxes.get().cloned().unwrap_or_default(),
        });
        let watcher = if cert_store.is_some() || hosts.is_some() {
            spawn_watcher(cert_store.clone(), hosts)
        } else {
            None
        };
        Ok(Server {
            shards,
            shared,
            local_addrs,
            tcp_addrs,
            tls_addrs,
            cert_store,
            watcher,
            host_addrs,
            draining: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The UDP addresses actually bound (resolves port 0).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    pub fn tcp_addrs(&self) -> &[SocketAddr] {
        &self.tcp_addrs
    }

    pub fn tls_addrs(&self) -> &[SocketAddr] {
        &self.tls_addrs
    }

    /// Re-read the TLS certificate and key now (SIGHUP). Live connections keep theirs.
    pub fn reload_tls(&self) -> Result<(), String> {
        match &self.cert_store {
            Some(s) => s.reload(),
            None => Ok(()),
        }
    }

    /// Swap the engine configuration in every shard (users, secrets, peer ACLs, quotas...).
    pub fn reload(&self, mut cfg: EngineConfig) {
        // The watcher's list, not the one taken when the file was read: that one may be older
        // than what the watcher has sent meanwhile.
        let hosts = self
            .host_addrs
            .as_ref()
            .map(|h| h.lock().unwrap_or_else(|e| e.into_inner()));
        if let Some(ips) = &hosts {
            cfg.peer_filter.set_host_ips(ips.to_vec());
        }
        let cfg = Arc::new(cfg);
        for s in &self.shards {
            s.send(Control::Reload(cfg.clone()));
        }
    }

    /// `relay-coalesce-us` for every shard (reloadable: a restart would drop every call).
    pub fn set_relay_coalesce(&self, window: Duration) {
        for s in &self.shards {
            s.send(Control::Coalesce(window));
        }
    }

    pub fn allocation_count(&self) -> u32 {
        self.shared.total_allocations()
    }

    /// Counters of every shard, as last published (at most a second old).
    pub fn stats(&self) -> Vec<ShardStats> {
        self.shards
            .iter()
            .map(|s| s.stats.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect()
    }

    /// A cloneable handle for the metrics and admin listeners (see [`super::admin`]).
    pub fn handle(&self) -> super::admin::ServerHandle {
        super::admin::ServerHandle {
            shards: self
                .shards
                .iter()
                .map(|s| super::admin::ShardLink {
                    control: s.control.clone(),
                    waker: s.waker.clone(),
                    stats: s.stats.clone(),
                })
                .collect(),
            shared: self.shared.clone(),
            draining: self.draining.clone(),
        }
    }

    /// Stop every shard (allocations are closed) and wait for the threads.
    pub fn shutdown(self) {
        if let Some(w) = self.watcher {
            w.stop.store(true, Ordering::Relaxed);
            let _ = w.thread.join();
        }
        for s in &self.shards {
            s.send(Control::Shutdown);
        }
        for s in self.shards {
            let _ = s.thread.join();
        }
    }
}
