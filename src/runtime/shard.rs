//! THE RELAY LOOP. One shard = one thread = one epoll instance (mio) owning: its SO_REUSEPORT
//! listener sockets, the relay sockets of the allocations it created, and its own [`Engine`].
//! The kernel's reuseport hash keeps each client 5-tuple on one shard, so nothing here takes a
//! lock or touches another thread's memory per packet. Counters are copied out once a second.
use std::io;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};
use tracing::{debug, warn};

use crate::engine::{
    ClientAction, Engine, EngineConfig, FiveTuple, RelayCommand, Stats, Transport, PEER_HEADROOM,
    PEER_TAILROOM,
};

const WAKER: Token = Token(0);
const LISTENER_BASE: usize = 1;
const RELAY_BASE: usize = 1 << 24;
/// Largest UDP payload (IPv4: 65535 - 20 - 8).
const MAX_DATAGRAM: usize = 65_507;
/// How often counters are published to the control thread.
const PUBLISH_EVERY: Duration = Duration::from_secs(1);
/// Datagrams read from one socket before looking at the others (fairness under load).
const READ_BUDGET: usize = 256;

/// Messages from the control thread.
pub enum Control {
    Reload(Arc<EngineConfig>),
    Shutdown,
}

/// What a shard publishes for metrics and the control thread.
#[derive(Debug, Default, Clone)]
pub struct ShardStats {
    pub engine: Stats,
    pub allocations: usize,
    pub send_errors: u64,
    pub recv_errors: u64,
}

pub struct ShardHandle {
    pub control: mpsc::Sender<Control>,
    pub waker: Arc<Waker>,
    pub stats: Arc<Mutex<ShardStats>>,
    pub thread: std::thread::JoinHandle<()>,
}

impl ShardHandle {
    pub fn send(&self, c: Control) {
        if self.control.send(c).is_ok() {
            let _ = self.waker.wake();
        }
    }
}

/// Socket options for relay sockets, decided by the operator's config.
#[derive(Clone, Copy, Debug)]
pub struct SocketOptions {
    pub recv_buffer: usize,
    pub send_buffer: usize,
}

struct Shard {
    engine: Engine,
    poll: Poll,
    listeners: Vec<(UdpSocket, SocketAddr)>,
    relays: Vec<Option<UdpSocket>>,
    ctl: mpsc::Receiver<Control>,
    stats: Arc<Mutex<ShardStats>>,
    send_errors: u64,
    recv_errors: u64,
    opts: SocketOptions,
    /// One receive buffer, reused for every datagram: headroom for the TURN header in front.
    buf: Vec<u8>,
    shutdown: bool,
}

/// Start a shard thread on already-bound listener sockets.
pub fn spawn(
    index: usize,
    engine: Engine,
    listeners: Vec<std::net::UdpSocket>,
    opts: SocketOptions,
) -> io::Result<ShardHandle> {
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let mut ls = Vec::new();
    for (i, s) in listeners.into_iter().enumerate() {
        s.set_nonblocking(true)?;
        let addr = s.local_addr()?;
        let mut s = UdpSocket::from_std(s);
        poll.registry()
            .register(&mut s, Token(LISTENER_BASE + i), Interest::READABLE)?;
        ls.push((s, addr));
    }
    let (tx, rx) = mpsc::channel();
    let stats = Arc::new(Mutex::new(ShardStats::default()));
    let mut shard = Shard {
        engine,
        poll,
        listeners: ls,
        relays: Vec::new(),
        ctl: rx,
        stats: stats.clone(),
        send_errors: 0,
        recv_errors: 0,
        opts,
        buf: vec![0u8; PEER_HEADROOM + MAX_DATAGRAM + PEER_TAILROOM],
        shutdown: false,
    };
    let thread = std::thread::Builder::new()
        .name(format!("ferroturn-shard-{index}"))
        .spawn(move || shard.run())?;
    Ok(ShardHandle {
        control: tx,
        waker,
        stats,
        thread,
    })
}

impl Shard {
    fn run(&mut self) {
        let mut events = Events::with_capacity(1024);
        let mut next_publish = Instant::now() + PUBLISH_EVERY;
        while !self.shutdown {
            let now = Instant::now();
            let mut deadline = next_publish;
            if let Some(t) = self.engine.poll_timeout() {
                deadline = deadline.min(t);
            }
            let timeout = deadline.saturating_duration_since(now);
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    warn!(error = %e, "epoll failed");
                }
                continue;
            }
            let now = Instant::now();
            for ev in events.iter() {
                match ev.token() {
                    WAKER => self.drain_control(),
                    Token(t) if t >= RELAY_BASE => self.read_relay((t - RELAY_BASE) as u32, now),
                    Token(t) => self.read_listener(t - LISTENER_BASE, now),
                }
            }
            if self.engine.poll_timeout().is_some_and(|t| t <= now) {
                self.engine.handle_timeout(now);
                self.flush(now);
            }
            if now >= next_publish {
                self.publish();
                next_publish = now + PUBLISH_EVERY;
            }
        }
        let now = Instant::now();
        self.engine.close_all(now);
        self.flush(now);
        self.publish();
    }

    fn drain_control(&mut self) {
        while let Ok(c) = self.ctl.try_recv() {
            match c {
                Control::Reload(cfg) => self.engine.set_config(cfg),
                Control::Shutdown => self.shutdown = true,
            }
        }
    }

    fn publish(&mut self) {
        let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        s.engine = self.engine.stats.clone();
        s.allocations = self.engine.allocation_count();
        s.send_errors = self.send_errors;
        s.recv_errors = self.recv_errors;
    }

    /// Client datagrams: ChannelData and Send indications go straight out of the relay socket;
    /// control messages are answered after the engine has seen them.
    fn read_listener(&mut self, li: usize, now: Instant) {
        for _ in 0..READ_BUDGET {
            let Some((sock, server)) = self.listeners.get(li) else {
                return;
            };
            let (n, client) = match sock.recv_from(&mut self.buf) {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    self.recv_errors += 1;
                    debug!(error = %e, "listener recv");
                    continue;
                }
            };
            let tuple = FiveTuple {
                client,
                server: *server,
                transport: Transport::Udp,
            };
            match self.engine.handle_client(now, tuple, &self.buf[..n]) {
                ClientAction::ToPeer {
                    relay,
                    peer,
                    payload,
                } => {
                    if let Some(Some(rs)) = self.relays.get(relay as usize) {
                        if rs.send_to(payload, peer).is_err() {
                            self.send_errors += 1;
                        }
                    }
                }
                ClientAction::None => self.flush(now),
            }
        }
        // Budget spent with data possibly left: edge-triggered readiness will not fire again
        // for it, so ask to be woken at once.
        self.reregister_listener(li);
    }

    fn reregister_listener(&mut self, li: usize) {
        if let Some((s, _)) = self.listeners.get_mut(li) {
            let _ =
                self.poll
                    .registry()
                    .reregister(s, Token(LISTENER_BASE + li), Interest::READABLE);
        }
    }

    /// Peer datagrams: received behind PEER_HEADROOM so the engine can frame them in place.
    fn read_relay(&mut self, relay: u32, now: Instant) {
        for _ in 0..READ_BUDGET {
            let Some(Some(rs)) = self.relays.get(relay as usize) else {
                return;
            };
            let end = PEER_HEADROOM + MAX_DATAGRAM;
            let (n, peer) = match rs.recv_from(&mut self.buf[PEER_HEADROOM..end]) {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    // ICMP errors from earlier sends surface here (ECONNREFUSED): not fatal.
                    self.recv_errors += 1;
                    continue;
                }
            };
            if let Some((tuple, range)) =
                self.engine
                    .handle_peer(now, relay, peer, &mut self.buf, PEER_HEADROOM, n)
            {
                if let Some((ls, _)) = self.listeners.iter().find(|(_, a)| *a == tuple.server) {
                    if ls.send_to(&self.buf[range], tuple.client).is_err() {
                        self.send_errors += 1;
                    }
                }
            }
        }
        if let Some(Some(rs)) = self.relays.get_mut(relay as usize) {
            let _ = self.poll.registry().reregister(
                rs,
                Token(RELAY_BASE + relay as usize),
                Interest::READABLE,
            );
        }
    }

    /// Carry out the engine's relay-socket requests and send its queued answers.
    fn flush(&mut self, now: Instant) {
        loop {
            let mut did = false;
            while let Some(cmd) = self.engine.poll_command() {
                did = true;
                match cmd {
                    RelayCommand::Bind {
                        relay,
                        addr,
                        dont_fragment,
                    } => {
                        let r = self.bind_relay(relay, addr, dont_fragment);
                        self.engine.on_relay_bound(now, relay, r);
                    }
                    RelayCommand::Close { relay } => {
                        if let Some(slot) = self.relays.get_mut(relay as usize) {
                            if let Some(mut s) = slot.take() {
                                let _ = self.poll.registry().deregister(&mut s);
                            }
                        }
                    }
                }
            }
            while let Some(t) = self.engine.poll_transmit() {
                did = true;
                if let Some((ls, _)) = self.listeners.iter().find(|(_, a)| *a == t.tuple.server) {
                    if ls.send_to(&t.data, t.tuple.client).is_err() {
                        self.send_errors += 1;
                    }
                }
            }
            if !did {
                break;
            }
        }
    }

    fn bind_relay(
        &mut self,
        relay: u32,
        addr: SocketAddr,
        dont_fragment: bool,
    ) -> Result<SocketAddr, io::ErrorKind> {
        let std = super::sockets::bind_relay_socket(addr, dont_fragment, self.opts)
            .map_err(|e| e.kind())?;
        let local = std.local_addr().map_err(|e| e.kind())?;
        let mut s = UdpSocket::from_std(std);
        self.poll
            .registry()
            .register(
                &mut s,
                Token(RELAY_BASE + relay as usize),
                Interest::READABLE,
            )
            .map_err(|e| e.kind())?;
        let i = relay as usize;
        if self.relays.len() <= i {
            self.relays.resize_with(i + 1, || None);
        }
        self.relays[i] = Some(s);
        Ok(local)
    }
}
