//! THE RELAY LOOP. One shard = one thread = one epoll instance (mio) owning: its SO_REUSEPORT
//! listener sockets (UDP, TCP, TLS), the client connections the kernel gave it, the relay
//! sockets of the allocations it created, and its own [`Engine`]. The kernel's reuseport hash
//! keeps each client 5-tuple on one shard, so nothing here takes a lock or touches another
//! thread's memory per packet. Counters are copied out once a second.
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream, UdpSocket};
use mio::{Events, Interest, Poll, Token, Waker};
use tracing::{debug, info, warn};

use super::batch::{self, Batch, Out, BATCH};
use crate::codec::framing::{self, MAX_FRAME};
use crate::engine::ops::{self, Gauges, Histogram, SessionInfo};
use crate::engine::{
    ClientAction, Engine, EngineConfig, FiveTuple, RelayCommand, Stats, Transport, PEER_HEADROOM,
};

const WAKER: Token = Token(0);
const LISTENER_BASE: usize = 1;
const CONN_BASE: usize = 1 << 22;
const RELAY_BASE: usize = 1 << 24;
/// Tokens of outgoing RFC 6062 connections: CONNECT_BASE + CONNECTION-ID.
const CONNECT_BASE: usize = 1 << 40;
/// Bytes read per splice step; the partner's buffer must have this much room.
const SPLICE_CHUNK: usize = 16 * 1024;
/// An unused entry of a send batch.
const NO_OUT: Out = Out {
    to: SocketAddr::V4(std::net::SocketAddrV4::new(
        std::net::Ipv4Addr::UNSPECIFIED,
        0,
    )),
    ptr: std::ptr::null(),
    len: 0,
};
/// How often counters are published to the control thread.
const PUBLISH_EVERY: Duration = Duration::from_secs(1);
/// `relay-coalesce-us`: a rest of the window shorter than this is not slept (a nanosleep and
/// its wake-up cost a few µs themselves).
const MIN_COALESCE_SLEEP: Duration = Duration::from_micros(5);
/// Datagrams (or stream reads) taken from one socket before looking at the others.
const READ_BUDGET: usize = 256;
/// Unframed bytes kept per stream connection: two maximal messages.
const MAX_STREAM_RBUF: usize = 2 * MAX_FRAME;
/// Bytes queued for a stream client that does not read. Past this, relayed data for it is
/// dropped (as UDP would drop it) rather than buffered without bound.
const MAX_STREAM_WBUF: usize = 256 * 1024;

/// Messages from the control thread.
pub enum Control {
    Reload(Arc<EngineConfig>),
    /// `relay-coalesce-us` changed on reload.
    Coalesce(Duration),
    /// The host's interface addresses changed (wildcard listeners; server.rs watches them).
    HostAddresses(Arc<Vec<IpAddr>>),
    Shutdown,
    /// Start (true) or stop draining: new Allocates get 300 / 508.
    Drain(bool),
    /// Admin API: this shard's sessions, and the bytes of the live RFC 6062 splices it holds.
    Sessions(tokio::sync::oneshot::Sender<ShardSessions>),
    /// Admin API: delete the session with this id, if it is here.
    Kill(u64, tokio::sync::oneshot::Sender<bool>),
    /// Admin API: delete every session of this user; replies how many.
    KillUser(String, tokio::sync::oneshot::Sender<usize>),
    /// RFC 6062 §5.5: another shard deleted the TCP allocation of these connections; close the
    /// splices of theirs that landed here.
    CloseConnections(Vec<u32>),
    /// RFC 6062: a splice of a peer connection of this shard's allocation ended elsewhere,
    /// having carried these bytes to the peer and to the client.
    PeerClosed {
        conn_id: u32,
        to_peer: u64,
        to_client: u64,
    },
}

/// A shard's answer to [`Control::Sessions`].
#[derive(Debug, Default)]
pub struct ShardSessions {
    /// The allocations this shard owns.
    pub sessions: Vec<SessionInfo>,
    /// RFC 6062 data connections spliced on this shard and still open, whichever shard owns
    /// their allocation: (session id, bytes to the peer, bytes to the client).
    pub live_splices: Vec<(u64, u64, u64)>,
}

/// Every shard's control channel, set once all shards run: RFC 6062 connections of one shard's
/// allocation may be spliced on another (one message per allocation deletion, never per byte).
pub type Mailboxes = Arc<OnceLock<Vec<(mpsc::Sender<Control>, Arc<Waker>)>>>;

/// What a shard publishes for metrics and the control thread.
#[derive(Debug, Default, Clone)]
pub struct ShardStats {
    pub engine: Stats,
    pub allocations: usize,
    pub connections: usize,
    pub send_errors: u64,
    pub recv_errors: u64,
    pub stream_drops: u64,
    /// Allocations, permissions and channels by client transport.
    pub gauges: Gauges,
    /// Datagrams per recvmmsg call (listeners and relay sockets), bounds [`ops::BATCH_BOUNDS`].
    pub batch_sizes: Histogram,
    /// Abuse limits on client TCP/TLS connections (README "Abuse resistance").
    pub tcp: TcpLimitStats,
}

/// Client TCP/TLS connections refused or closed by the abuse limits.
#[derive(Debug, Default, Clone)]
pub struct TcpLimitStats {
    /// Closed at accept: the source IP has `max-tcp-connections-per-ip`.
    pub refused_tcp_per_ip: u64,
    /// Closed at accept: the server has `max-pending-tcp-connections`.
    pub refused_tcp_pending: u64,
    /// Closed: no TLS handshake + allocation within `tcp-handshake-timeout`.
    pub closed_tcp_handshake_timeout: u64,
    /// Connections not allocated yet (gauge).
    pub pending: usize,
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

/// A listening socket handed to a shard.
pub enum ListenSocket {
    Udp(std::net::UdpSocket),
    Tcp(std::net::TcpListener),
    Tls(std::net::TcpListener, Arc<rustls::ServerConfig>),
}

/// RFC 6062 peer connections between ConnectionAttempt/Connect and ConnectionBind, shared by
/// all shards (the data connection lands wherever the kernel's hash puts it). Touched once per
/// connection, never per packet.
pub type PeerStreams = Arc<Mutex<HashMap<u32, PeerStream>>>;

/// An RFC 6062 peer connection waiting for its ConnectionBind.
pub struct PeerStream {
    sock: std::net::TcpStream,
    /// Index of the shard whose allocation owns it.
    owner: usize,
    peer: SocketAddr,
    /// The owning allocation's session id (for the connection's usage record).
    session: u64,
}

/// The peer side of an RFC 6062 splice: whom to tell when it ends, and its usage.
struct PeerOf {
    /// Index of the shard owning the allocation.
    owner: usize,
    conn_id: u32,
    session: u64,
    started: Instant,
    /// Payload bytes accepted for the peer and for the client.
    to_peer: u64,
    to_client: u64,
}

/// A relayed transport address: UDP (RFC 8656) or a TCP listener (RFC 6062).
enum RelaySock {
    Udp(UdpSocket),
    Tcp(TcpListener),
}

enum Listener {
    Udp(UdpSocket, SocketAddr),
    Stream(TcpListener, SocketAddr, Option<Arc<rustls::ServerConfig>>),
}

/// A TCP or TLS client connection: framing state and bounded buffers.
struct Conn {
    sock: TcpStream,
    tuple: FiveTuple,
    tls: Option<Box<rustls::ServerConnection>>,
    /// Received plaintext not yet framed into messages.
    rbuf: Vec<u8>,
    /// Plain TCP: bytes accepted for sending but not yet written.
    wbuf: Vec<u8>,
    /// TLS: plaintext handed to rustls and not yet written out (less what `write_tls` wrote,
    /// 0 once rustls is empty), held to `MAX_STREAM_WBUF` here rather than by rustls's own
    /// buffer limit, which takes part of a message when nearly full (breaking the framing).
    tls_queued: usize,
    writable_interest: bool,
    /// RFC 6062 splice: the connection whose bytes this one's are piped to and from.
    partner: Option<usize>,
    /// Set on the peer side of a splice.
    peer_of: Option<Box<PeerOf>>,
    /// Reading paused until the partner drains its send buffer (backpressure).
    paused: bool,
    /// A STUN message has been seen. ChannelData needs a channel bound by an earlier
    /// ChannelBind on this connection, so a stream that starts with anything else is not a
    /// TURN client (an HTTP "GET" even looks like channel 0x4745) and is closed.
    stun_seen: bool,
    /// Counted in the shared per-source-IP connection count (client connections only).
    counted: bool,
    /// Accepted, but no allocation (or RFC 6062 ConnectionBind) yet: counts against the
    /// pending limit and the handshake deadline.
    pending: bool,
}

struct Shard {
    engine: Engine,
    poll: Poll,
    listeners: Vec<Listener>,
    conns: Vec<Option<Conn>>,
    free_conns: Vec<usize>,
    conn_by_tuple: crate::engine::hash::Map<FiveTuple, usize>,
    relays: Vec<Option<RelaySock>>,
    /// RFC 6062: outgoing peer connections still in their TCP handshake, by CONNECTION-ID.
    connecting: HashMap<u32, (TcpStream, u32, SocketAddr)>,
    /// RFC 6062: peer connections waiting for a ConnectionBind, which may arrive on any shard.
    peer_streams: PeerStreams,
    /// RFC 6062: spliced peer connections on this shard: CONNECTION-ID → slot.
    spliced: HashMap<u32, usize>,
    index: usize,
    mailboxes: Mailboxes,
    ctl: mpsc::Receiver<Control>,
    stats: Arc<Mutex<ShardStats>>,
    send_errors: u64,
    recv_errors: u64,
    stream_drops: u64,
    batch_sizes: Histogram,
    opts: SocketOptions,
    /// Stream reads land here first.
    buf: Vec<u8>,
    /// recvmmsg slots for UDP listeners and relay sockets.
    batch: Batch,
    shutdown: bool,
    /// Abuse limits on client connections: counters, and the handshake deadlines in accept
    /// order (one timeout for all, so the queue is sorted): (deadline, slot, 5-tuple).
    tcp: TcpLimitStats,
    deadlines: std::collections::VecDeque<(Instant, usize, FiveTuple)>,
    /// Answers to UDP clients; while a listener is being read (`defer_udp`) they wait here and
    /// leave together by `sendmmsg` after each recvmmsg round, else at the end of `flush`.
    udp_answers: Vec<crate::engine::Transmit>,
    defer_udp: bool,
    /// `relay-coalesce-us` (zero = off): see [`Shard::run`].
    coalesce: Duration,
    /// This round: stream reads that brought data (datagrams are in `batch_sizes.sum`), and
    /// whether a read budget ran out with data left (`backlog`: the next poll must not wait).
    stream_reads: u64,
    backlog: bool,
    /// Listeners whose accept failed for want of resources (EMFILE, ENFILE, ENOBUFS, ENOMEM;
    /// see `accept_skippable`), with the time to try again: the connections stay in the
    /// kernel's queue, and an edge-triggered listener raises no new event for them, so without
    /// a retry they would wait for the next connection attempt (or forever).
    accept_retry: Option<(Instant, Vec<AcceptSource>)>,
    /// When an accept failure was last logged: at most one warning per [`ACCEPT_WARN_EVERY`]
    /// (every failure is counted in `recv_errors`).
    accept_warned: Option<Instant>,
}

/// A listening socket whose accept is retried (see `Shard::accept_retry`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum AcceptSource {
    /// Client TCP/TLS listener (index into `listeners`).
    Client(usize),
    /// RFC 6062 relayed-address listener of a TCP allocation.
    Peer(u32),
}

/// How long an accept that ran out of resources waits before it tries again.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);
const ACCEPT_WARN_EVERY: Duration = Duration::from_secs(10);

/// Did accept fail because of the one connection it took (skip it and go on: accept(2) lists
/// ECONNABORTED and the network errors TCP passes on), or a signal? Anything else (EMFILE,
/// ENFILE, ENOBUFS, ENOMEM, a security module's EPERM...) leaves the queue as it was: retry
/// after [`ACCEPT_RETRY`] rather than spin on it.
fn accept_skippable(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted
    ) || matches!(
        e.raw_os_error(),
        Some(
            libc::EPROTO
                | libc::ENETDOWN
                | libc::ENOPROTOOPT
                | libc::EHOSTDOWN
                | libc::ENONET
                | libc::EHOSTUNREACH
                | libc::EOPNOTSUPP
                | libc::ENETUNREACH
        )
    )
}

/// Start a shard thread on already-bound listener sockets.
pub fn spawn(
    index: usize,
    engine: Engine,
    listeners: Vec<ListenSocket>,
    opts: SocketOptions,
    coalesce: Duration,
    peer_streams: PeerStreams,
    mailboxes: Mailboxes,
) -> io::Result<ShardHandle> {
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let mut ls = Vec::new();
    for (i, s) in listeners.into_iter().enumerate() {
        let token = Token(LISTENER_BASE + i);
        let l = match s {
            ListenSocket::Udp(s) => {
                s.set_nonblocking(true)?;
                let addr = s.local_addr()?;
                let mut s = UdpSocket::from_std(s);
                poll.registry()
                    .register(&mut s, token, Interest::READABLE)?;
                Listener::Udp(s, addr)
            }
            ListenSocket::Tcp(s) => stream_listener(&poll, token, s, None)?,
            ListenSocket::Tls(s, cfg) => stream_listener(&poll, token, s, Some(cfg))?,
        };
        ls.push(l);
    }
    let (tx, rx) = mpsc::channel();
    let stats = Arc::new(Mutex::new(ShardStats::default()));
    let mut shard = Shard {
        engine,
        poll,
        listeners: ls,
        conns: Vec::new(),
        free_conns: Vec::new(),
        conn_by_tuple: crate::engine::hash::map(),
        relays: Vec::new(),
        connecting: HashMap::new(),
        peer_streams,
        spliced: HashMap::new(),
        index,
        mailboxes,
        ctl: rx,
        stats: stats.clone(),
        send_errors: 0,
        recv_errors: 0,
        stream_drops: 0,
        batch_sizes: Histogram::default(),
        opts,
        buf: vec![0u8; MAX_FRAME],
        batch: Batch::new(),
        shutdown: false,
        tcp: TcpLimitStats::default(),
        deadlines: std::collections::VecDeque::new(),
        udp_answers: Vec::new(),
        defer_udp: false,
        coalesce,
        stream_reads: 0,
        backlog: false,
        accept_retry: None,
        accept_warned: None,
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

fn stream_listener(
    poll: &Poll,
    token: Token,
    s: std::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> io::Result<Listener> {
    s.set_nonblocking(true)?;
    let addr = s.local_addr()?;
    let mut s = TcpListener::from_std(s);
    poll.registry()
        .register(&mut s, token, Interest::READABLE)?;
    Ok(Listener::Stream(s, addr, tls))
}

impl Shard {
    fn run(&mut self) {
        super::logging::buffer_this_thread();
        let mut events = Events::with_capacity(1024);
        let mut next_publish = Instant::now() + PUBLISH_EVERY;
        // Interrupt coalescing (`relay-coalesce-us`, like a NIC's interrupt throttling): at
        // one datagram per wake-up most of a relayed packet's CPU is epoll_wait, the recvmmsg
        // and sendmmsg calls and the receiver's wake-up, not the packet. Under dense traffic
        // poll at most once per window and sleep the rest of it, so the next round reads,
        // relays and sends everything that arrived meanwhile in one go. Dense: a wait of less
        // than half a window ended with data, and stays so while a round after a sleep finds
        // at least two reads' worth. Never sleep past a timer, with a read budget exhausted
        // (data is waiting) or when the round took the window; sparse traffic never sleeps.
        let mut dense = false;
        let mut round_start = Instant::now();
        self.set_coalesce(self.coalesce);
        while !self.shutdown {
            let now = Instant::now();
            let mut deadline = next_publish;
            if let Some(t) = self.engine.poll_timeout() {
                deadline = deadline.min(t);
            }
            if let Some((t, _, _)) = self.deadlines.front() {
                deadline = deadline.min(*t);
            }
            if let Some((t, _)) = &self.accept_retry {
                deadline = deadline.min(*t);
            }
            let slept = dense && {
                let rest = self
                    .coalesce
                    .saturating_sub(now.saturating_duration_since(round_start))
                    .min(deadline.saturating_duration_since(now));
                // Shorter than a sleep's own cost: poll now.
                rest >= MIN_COALESCE_SLEEP && {
                    std::thread::sleep(rest);
                    true
                }
            };
            let timeout = deadline.saturating_duration_since(Instant::now());
            // This round's log lines, in one write, before waiting.
            super::logging::flush_thread();
            let wait_from = Instant::now();
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    warn!(error = %e, "epoll failed");
                }
                continue;
            }
            let now = Instant::now();
            let waited = now.saturating_duration_since(wait_from);
            round_start = now;
            let datagrams_before = self.batch_sizes.sum;
            self.stream_reads = 0;
            self.backlog = false;
            for ev in events.iter() {
                match ev.token() {
                    WAKER => self.drain_control(),
                    Token(t) if t >= CONNECT_BASE => {
                        self.connect_done((t - CONNECT_BASE) as u32, now)
                    }
                    Token(t) if t >= RELAY_BASE => self.read_relay((t - RELAY_BASE) as u32, now),
                    Token(t) if t >= CONN_BASE => {
                        let ci = t - CONN_BASE;
                        // RFC 6062 splice: a reset side closes the pair now. Read would say
                        // so, but a side paused for backpressure reads nothing until its
                        // partner drains, and this edge-triggered event does not come back.
                        if ev.is_error() && self.spliced(ci) {
                            self.close_conn(ci, now);
                            continue;
                        }
                        if ev.is_writable() {
                            self.write_conn(ci, now);
                        }
                        let hup = ev.is_read_closed() || ev.is_error();
                        if ev.is_readable() || hup {
                            self.read_conn(ci, now, hup);
                        }
                    }
                    Token(t) => self.read_listener(t - LISTENER_BASE, now),
                }
            }
            let reads = self.batch_sizes.sum - datagrams_before + self.stream_reads;
            dense = !self.coalesce.is_zero()
                && !self.backlog
                && if slept {
                    reads >= 2
                } else {
                    reads > 0 && waited < self.coalesce / 2
                };
            if self.engine.poll_timeout().is_some_and(|t| t <= now) {
                self.engine.handle_timeout(now);
                self.flush(now);
            }
            self.expire_pending(now);
            if self.accept_retry.as_ref().is_some_and(|(t, _)| *t <= now) {
                if let Some((_, sources)) = self.accept_retry.take() {
                    for src in sources {
                        match src {
                            AcceptSource::Client(li) => self.accept(li, now),
                            AcceptSource::Peer(relay) => self.accept_peer(relay, now),
                        }
                    }
                }
            }
            if now >= next_publish {
                self.publish();
                next_publish = now + PUBLISH_EVERY;
            }
        }
        let now = Instant::now();
        self.engine.close_all(now);
        self.flush(now);
        // RFC 6062 splices of other shards' allocations: their owners' close requests may come
        // after this loop; close them here so each still logs its usage record.
        let spliced: Vec<usize> = self.spliced.values().copied().collect();
        for pi in spliced {
            self.close_conn(pi, now);
        }
        self.publish();
    }

    /// `relay-coalesce-us` (see [`Shard::run`]); runs on the shard thread.
    fn set_coalesce(&mut self, window: Duration) {
        self.coalesce = window;
        // The default 50 µs timer slack would stretch every short sleep by up to that much;
        // 0 restores the thread's default when coalescing is off.
        let slack_ns: libc::c_ulong = if window.is_zero() { 0 } else { 1000 };
        // SAFETY: PR_SET_TIMERSLACK takes an integer and touches only the calling thread.
        if unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, slack_ns) } != 0 {
            debug!(error = %io::Error::last_os_error(), "PR_SET_TIMERSLACK");
        }
    }

    fn drain_control(&mut self) {
        while let Ok(c) = self.ctl.try_recv() {
            let now = Instant::now();
            match c {
                Control::Reload(cfg) => self.engine.set_config(cfg),
                Control::Coalesce(window) => self.set_coalesce(window),
                Control::HostAddresses(ips) => self.engine.set_host_addresses(ips.to_vec()),
                Control::Shutdown => self.shutdown = true,
                Control::Drain(on) => self.engine.set_draining(on),
                Control::Sessions(reply) => {
                    let live_splices = self
                        .spliced
                        .values()
                        .filter_map(|&pi| self.conns.get(pi)?.as_ref()?.peer_of.as_deref())
                        .map(|po| (po.session, po.to_peer, po.to_client))
                        .collect();
                    let _ = reply.send(ShardSessions {
                        sessions: self.engine.sessions(now),
                        live_splices,
                    });
                }
                Control::Kill(id, reply) => {
                    let found = self.engine.kill_session(now, id);
                    self.kill_streams(now);
                    // the session_end records are in the log when the API answers
                    super::logging::flush_thread();
                    let _ = reply.send(found);
                }
                Control::KillUser(user, reply) => {
                    let n = self.engine.kill_user(now, &user);
                    self.kill_streams(now);
                    super::logging::flush_thread();
                    let _ = reply.send(n);
                }
                Control::CloseConnections(ids) => self.close_connections(ids, false, now),
                Control::PeerClosed {
                    conn_id,
                    to_peer,
                    to_client,
                } => self.engine.on_peer_tcp_closed(conn_id, to_peer, to_client),
            }
        }
    }

    /// After an admin kill: close the relay sockets of the deleted allocations now. A TCP/TLS
    /// client connection stays open, so that client learns it from 437 on its next Refresh,
    /// like a UDP one.
    fn kill_streams(&mut self, now: Instant) {
        self.flush(now);
    }

    fn publish(&mut self) {
        let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        s.engine = self.engine.stats.clone();
        s.allocations = self.engine.allocation_count();
        s.connections = self.conn_by_tuple.len();
        s.send_errors = self.send_errors;
        s.recv_errors = self.recv_errors;
        s.stream_drops = self.stream_drops;
        s.gauges = self.engine.gauges(Instant::now());
        s.batch_sizes = self.batch_sizes;
        s.tcp = self.tcp.clone();
    }

    /// Abuse limits at accept, both counted in the state the shards share (touched once per
    /// connection): pending connections, whole server, and connections per source IP. True:
    /// the connection holds one of each, given back by [`Shard::unadmit`] if it goes before
    /// it is registered. False = close it.
    fn admit_conn(&mut self, client: SocketAddr) -> bool {
        let l = &self.engine.config().limits;
        let (per_ip, pending_cap) = (l.tcp_connections_per_ip, l.pending_tcp_connections);
        if !self.engine.shared().pending_take(pending_cap) {
            self.tcp.refused_tcp_pending += 1;
            if self.tcp.refused_tcp_pending.is_power_of_two() {
                info!(event = "refused", reason = "pending_tcp", client = %client, total = self.tcp.refused_tcp_pending, "too many pending TCP/TLS connections");
            }
            return false;
        }
        if !self.engine.shared().tcp_open(client.ip(), per_ip) {
            self.engine.shared().pending_done();
            self.tcp.refused_tcp_per_ip += 1;
            if self.tcp.refused_tcp_per_ip.is_power_of_two() {
                info!(event = "refused", reason = "tcp_per_ip", client = %client, total = self.tcp.refused_tcp_per_ip, "too many TCP/TLS connections from one IP");
            }
            return false;
        }
        true
    }

    /// An admitted connection that could not be set up.
    fn unadmit(&mut self, client: SocketAddr) {
        self.engine.shared().tcp_closed(client.ip());
        self.engine.shared().pending_done();
    }

    /// A pending connection that has allocated (or became an RFC 6062 data connection) is
    /// pending no more.
    fn settle_pending(&mut self, ci: usize) {
        if let Some(Some(c)) = self.conns.get_mut(ci) {
            if c.pending && (c.partner.is_some() || self.engine.has_allocation(&c.tuple)) {
                c.pending = false;
                self.tcp.pending -= 1;
                self.engine.shared().pending_done();
            }
        }
    }

    /// Close connections that did not finish the TLS handshake and allocate in time
    /// (slowloris, half-open TLS).
    fn expire_pending(&mut self, now: Instant) {
        while let Some(&(t, ci, tuple)) = self.deadlines.front() {
            if t > now {
                break;
            }
            self.deadlines.pop_front();
            self.settle_pending(ci);
            let late = matches!(self.conns.get(ci), Some(Some(c)) if c.tuple == tuple && c.pending);
            if late {
                self.tcp.closed_tcp_handshake_timeout += 1;
                if self.tcp.closed_tcp_handshake_timeout.is_power_of_two() {
                    info!(event = "refused", reason = "handshake_timeout", client = %tuple.client, total = self.tcp.closed_tcp_handshake_timeout, "no allocation in time; closing");
                }
                self.close_conn(ci, now);
            }
        }
    }

    fn read_listener(&mut self, li: usize, now: Instant) {
        match self.listeners.get(li) {
            Some(Listener::Udp(..)) => {
                self.defer_udp = true;
                self.read_udp_listener(li, now);
                self.defer_udp = false;
                self.send_udp_answers();
            }
            Some(Listener::Stream(..)) => self.accept(li, now),
            None => {}
        }
    }

    /// Client datagrams, [`BATCH`] per system call: ChannelData and Send indications go out of
    /// the relay sockets in `sendmmsg` batches (one per run of the same relay socket); control
    /// messages are answered after the engine has seen them.
    fn read_udp_listener(&mut self, li: usize, now: Instant) {
        let Some(Listener::Udp(sock, server)) = self.listeners.get(li) else {
            return;
        };
        let (fd, server) = (sock.as_raw_fd(), *server);
        // Wildcard listener: the 5-tuple's server side is the address the client sent to.
        let wildcard = server.ip().is_unspecified();
        let mut outs = [NO_OUT; BATCH];
        let mut via = [0u32; BATCH];
        for _ in 0..READ_BUDGET / BATCH {
            let got = if wildcard {
                self.batch.recv_with_dst(fd, 0)
            } else {
                self.batch.recv(fd, 0)
            };
            let n = match got {
                Ok(0) => return,
                Ok(n) => n,
                Err(e) => {
                    self.recv_errors += 1;
                    debug!(error = %e, "listener recv");
                    return;
                }
            };
            self.batch_sizes.observe(ops::BATCH_BOUNDS, n as u64);
            let mut k = 0;
            for i in 0..n {
                let tuple = FiveTuple {
                    client: self.batch.from[i],
                    server: match self.batch.dst[i] {
                        Some(ip) if wildcard => SocketAddr::new(ip, server.port()),
                        _ => server,
                    },
                    transport: Transport::Udp,
                };
                let len = self.batch.len[i];
                match self
                    .engine
                    .handle_client(now, tuple, &self.batch.slot(i)[..len])
                {
                    ClientAction::ToPeer {
                        relay,
                        peer,
                        payload,
                    } => {
                        outs[k] = Out {
                            to: peer,
                            ptr: payload.as_ptr(),
                            len: payload.len(),
                        };
                        via[k] = relay;
                        k += 1;
                    }
                    ClientAction::None => {
                        // Send what is collected first: the control message may close a relay
                        // socket whose id a new allocation then reuses.
                        self.send_to_peers(&outs[..k], &via[..k]);
                        k = 0;
                        self.flush(now);
                    }
                }
            }
            self.send_to_peers(&outs[..k], &via[..k]);
            // This round's answers go now: one sendmmsg, and none waits for later rounds.
            self.send_udp_answers();
            if n < BATCH {
                return;
            }
        }
        // Budget spent with data possibly left: edge-triggered readiness will not fire again
        // for it, so re-arm to be woken at once.
        self.backlog = true;
        if let Some(Listener::Udp(s, _)) = self.listeners.get_mut(li) {
            let _ =
                self.poll
                    .registry()
                    .reregister(s, Token(LISTENER_BASE + li), Interest::READABLE);
        }
    }

    /// `sendmmsg` per run of datagrams leaving by the same relay socket.
    fn send_to_peers(&mut self, outs: &[Out], via: &[u32]) {
        // SAFETY: the payloads point into `self.batch`, untouched until the next recv.
        self.send_errors += unsafe { send_to_peers(&self.relays, outs, via) };
    }

    fn accept(&mut self, li: usize, now: Instant) {
        for _ in 0..READ_BUDGET {
            let Some(Listener::Stream(l, server, tls)) = self.listeners.get(li) else {
                return;
            };
            let (mut sock, client) = match l.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if accept_skippable(&e) => {
                    self.recv_errors += 1;
                    continue;
                }
                Err(e) => {
                    self.accept_failed(AcceptSource::Client(li), &e, now);
                    return;
                }
            };
            // Wildcard listener: the address the client connected to (getsockname).
            let server = if server.ip().is_unspecified() {
                sock.local_addr().unwrap_or(*server)
            } else {
                *server
            };
            let tls = tls.clone();
            if !self.admit_conn(client) {
                continue; // dropping `sock` closes it
            }
            let tls = match &tls {
                Some(cfg) => match rustls::ServerConnection::new(cfg.clone()) {
                    Ok(mut c) => {
                        // Bounded per message in `enqueue_stream` (`Conn::tls_queued`).
                        c.set_buffer_limit(None);
                        Some(Box::new(c))
                    }
                    Err(e) => {
                        warn!(error = %e, "TLS session setup failed");
                        self.unadmit(client);
                        continue;
                    }
                },
                None => None,
            };
            let _ = sock.set_nodelay(true);
            let Some(ci) = self.register_conn(&mut sock) else {
                self.unadmit(client);
                continue;
            };
            let tuple = FiveTuple {
                client,
                server,
                transport: if tls.is_some() {
                    Transport::Tls
                } else {
                    Transport::Tcp
                },
            };
            self.conn_by_tuple.insert(tuple, ci);
            self.conns[ci] = Some(Conn {
                sock,
                tuple,
                tls,
                rbuf: Vec::new(),
                wbuf: Vec::new(),
                tls_queued: 0,
                writable_interest: false,
                partner: None,
                peer_of: None,
                paused: false,
                stun_seen: false,
                counted: true,
                pending: true,
            });
            self.tcp.pending += 1;
            let timeout = self.engine.config().limits.tcp_handshake_timeout;
            self.deadlines.push_back((now + timeout, ci, tuple));
        }
        if let Some(Listener::Stream(l, _, _)) = self.listeners.get_mut(li) {
            let _ =
                self.poll
                    .registry()
                    .reregister(l, Token(LISTENER_BASE + li), Interest::READABLE);
        }
    }

    /// An accept failed for want of resources (EMFILE and the like) or for a reason that
    /// leaves the queue as it was: try `src` again in
    /// [`ACCEPT_RETRY`]. Re-arming would report the listener again at once and spin; waiting
    /// for the next event would strand the queued connections.
    fn accept_failed(&mut self, src: AcceptSource, e: &io::Error, now: Instant) {
        self.recv_errors += 1;
        if self.accept_warned.map_or(true, |t| {
            now.saturating_duration_since(t) >= ACCEPT_WARN_EVERY
        }) {
            self.accept_warned = Some(now);
            warn!(error = %e, "accept failed; retrying every 50 ms (raise LimitNOFILE / ulimit -n if it is EMFILE)");
        }
        let (_, sources) = self
            .accept_retry
            .get_or_insert_with(|| (now + ACCEPT_RETRY, Vec::new()));
        if !sources.contains(&src) {
            sources.push(src);
        }
    }

    /// A free connection slot, with `sock` registered for reading under its token; the caller
    /// fills the slot. None if epoll refused the socket.
    fn register_conn(&mut self, sock: &mut TcpStream) -> Option<usize> {
        let ci = match self.free_conns.pop() {
            Some(i) => i,
            None => {
                self.conns.push(None);
                self.conns.len() - 1
            }
        };
        match self
            .poll
            .registry()
            .register(sock, Token(CONN_BASE + ci), Interest::READABLE)
        {
            Ok(()) => Some(ci),
            Err(_) => {
                self.free_conns.push(ci);
                None
            }
        }
    }

    /// Read what a stream client sent, frame it into messages (RFC 8656 §12.5) and hand each
    /// to the engine. A stream that is not TURN, or that overflows its buffer, is closed.
    /// `hup`: the event said the other side closed (or failed), so read on to the end of the
    /// stream even after a short read.
    fn read_conn(&mut self, ci: usize, now: Instant, hup: bool) {
        if let Some(Some(Conn {
            partner: Some(p), ..
        })) = self.conns.get(ci)
        {
            let p = *p;
            return self.pump_splice(ci, p, now);
        }
        let mut close = false;
        let mut drained = false;
        // Frames left behind a ConnectionBind that did not splice the stream: frame them even
        // if no new bytes come.
        let mut reframe = false;
        for _ in 0..READ_BUDGET {
            let Some(Some(c)) = self.conns.get_mut(ci) else {
                return;
            };
            // 1. Bytes in.
            let mut got = 0;
            let mut would_block = false;
            match &mut c.tls {
                None => match c.sock.read(&mut self.buf[..MAX_FRAME]) {
                    Ok(0) => close = true,
                    Ok(n) => {
                        c.rbuf.extend_from_slice(&self.buf[..n]);
                        got = n;
                        // A short read emptied the socket: skip the read that would only say
                        // EAGAIN (epoll is edge-triggered, so later bytes raise a new event).
                        // Not when the FIN came with the last bytes: no event follows it, and
                        // only the next read's 0 tells the connection is closed.
                        would_block = n < MAX_FRAME && !hup;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => would_block = true,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => close = true,
                },
                Some(tls) => match tls.read_tls(&mut c.sock) {
                    Ok(0) => close = true,
                    Ok(_) => {
                        if let Err(e) = tls.process_new_packets() {
                            debug!(client = %c.tuple.client, error = %e, "TLS error");
                            // Let the alert out before closing.
                            let _ = tls.write_tls(&mut c.sock);
                            close = true;
                        }
                        loop {
                            match tls.reader().read(&mut self.buf[..MAX_FRAME]) {
                                Ok(0) => {
                                    close = true;
                                    break;
                                }
                                Ok(n) => {
                                    c.rbuf.extend_from_slice(&self.buf[..n]);
                                    got += n;
                                }
                                Err(_) => break, // WouldBlock: no more plaintext now
                            }
                        }
                        // Handshake messages and tickets must go out.
                        if tls.wants_write() {
                            let _ = tls.write_tls(&mut c.sock);
                            if tls.wants_write() && !c.writable_interest {
                                c.writable_interest = true;
                                let _ = self.poll.registry().reregister(
                                    &mut c.sock,
                                    Token(CONN_BASE + ci),
                                    Interest::READABLE | Interest::WRITABLE,
                                );
                            }
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => would_block = true,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => close = true,
                },
            }
            if c.rbuf.len() > MAX_STREAM_RBUF {
                close = true;
            }
            if got > 0 {
                self.stream_reads += 1;
            }
            // 2. Messages out of the bytes.
            let mut stopped_at_bind = false;
            if (got > 0 || reframe) && !close {
                let tuple = c.tuple;
                let max_channel = self.engine.config().max_channel();
                let mut off = 0;
                // Data for peers leaves in sendmmsg batches, pointing into `c.rbuf`, which is
                // not modified until the batch is sent (before the drain below).
                let mut outs = [NO_OUT; BATCH];
                let mut via = [0u32; BATCH];
                let mut k = 0;
                loop {
                    match framing::frame_len(&c.rbuf[off..], max_channel) {
                        Ok(Some(n)) => {
                            let frame = &c.rbuf[off..off + n];
                            // RFC 6062 §5.4: after a ConnectionBind the stream may turn into
                            // raw peer data; frame nothing more until the engine has answered.
                            let bind = frame[..2] == [0x00, 0x0b];
                            if frame[0] < 4 {
                                c.stun_seen = true;
                            } else if !c.stun_seen {
                                debug!(client = %tuple.client, "stream starts with non-STUN; closing");
                                close = true;
                                break;
                            }
                            if let ClientAction::ToPeer {
                                relay,
                                peer,
                                payload,
                            } = self.engine.handle_client(now, tuple, frame)
                            {
                                outs[k] = Out {
                                    to: peer,
                                    ptr: payload.as_ptr(),
                                    len: payload.len(),
                                };
                                via[k] = relay;
                                k += 1;
                                if k == BATCH {
                                    // SAFETY: the payloads point into `c.rbuf`, unmodified.
                                    self.send_errors +=
                                        unsafe { send_to_peers(&self.relays, &outs, &via) };
                                    k = 0;
                                }
                            }
                            off += n;
                            if bind {
                                stopped_at_bind = true;
                                break;
                            }
                        }
                        // Same rule before the frame is complete: do not wait for the 0x5420
                        // bytes that "GET / HTTP/1.1" announces.
                        Ok(None) if !c.stun_seen && c.rbuf.len() > off && c.rbuf[off] >= 4 => {
                            close = true;
                            break;
                        }
                        Ok(None) => break,
                        Err(e) => {
                            debug!(client = %tuple.client, ?e, "stream is not TURN; closing");
                            close = true;
                            break;
                        }
                    }
                }
                // SAFETY: as above; `c.rbuf` is drained only after this.
                self.send_errors += unsafe { send_to_peers(&self.relays, &outs[..k], &via[..k]) };
                c.rbuf.drain(..off);
                self.flush(now);
                self.settle_pending(ci);
                // A ConnectionBind may just have turned this stream into a splice: what
                // follows is raw peer data, not TURN framing.
                if let Some(Some(Conn {
                    partner: Some(p), ..
                })) = self.conns.get(ci)
                {
                    let p = *p;
                    return self.pump_splice(ci, p, now);
                }
                // Not spliced (the bind failed): requests sent after it are still TURN.
                reframe = stopped_at_bind
                    && matches!(self.conns.get(ci), Some(Some(c)) if !c.rbuf.is_empty());
            }
            if close || (would_block && !reframe) {
                drained = would_block;
                break;
            }
        }
        if close {
            self.close_conn(ci, now);
        } else if drained {
            // Edge-triggered and read to the end: no re-arm (an epoll_ctl per event saved).
        } else if let Some(Some(c)) = self.conns.get_mut(ci) {
            // Re-arm: the read budget ran out with data left.
            self.backlog = true;
            let interest = if c.writable_interest {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            let _ = self
                .poll
                .registry()
                .reregister(&mut c.sock, Token(CONN_BASE + ci), interest);
        }
    }

    /// Socket writable again: push out what is queued.
    fn write_conn(&mut self, ci: usize, now: Instant) {
        let Some(Some(c)) = self.conns.get_mut(ci) else {
            return;
        };
        let failed = flush_conn(c).is_err();
        if failed {
            self.close_conn(ci, now);
            return;
        }
        let pending = match &c.tls {
            Some(t) => t.wants_write(),
            None => !c.wbuf.is_empty(),
        };
        if !pending && c.writable_interest {
            c.writable_interest = false;
            let _ = self.poll.registry().reregister(
                &mut c.sock,
                Token(CONN_BASE + ci),
                Interest::READABLE,
            );
        }
        // Drained: a splice partner that stopped reading for us may go on (edge re-arm).
        let partner = if pending { None } else { c.partner };
        if let Some(pi) = partner {
            if let Some(Some(pc)) = self.conns.get_mut(pi) {
                if pc.paused {
                    pc.paused = false;
                    // Keep its own write interest if it has bytes waiting too (both
                    // directions congested), or they would never be written.
                    let interest = if pc.writable_interest {
                        Interest::READABLE | Interest::WRITABLE
                    } else {
                        Interest::READABLE
                    };
                    let _ = self.poll.registry().reregister(
                        &mut pc.sock,
                        Token(CONN_BASE + pi),
                        interest,
                    );
                    // Go on now rather than on its next event: TLS may hold decrypted bytes
                    // read before the pause, and no event would come for those.
                    self.pump_splice(pi, ci, now);
                }
            }
        }
    }

    /// Queue one message for a stream client; drops it (counted) if the client is not reading.
    fn send_stream(&mut self, ci: usize, data: &[u8]) {
        if let Some(Some(c)) = self.conns.get_mut(ci) {
            if !queue_stream(c, self.poll.registry(), ci, data) {
                self.stream_drops += 1;
            }
        }
    }

    fn spliced(&self, ci: usize) -> bool {
        matches!(self.conns.get(ci), Some(Some(c)) if c.partner.is_some())
    }

    fn close_conn(&mut self, ci: usize, now: Instant) {
        let Some(mut c) = self.conns.get_mut(ci).and_then(Option::take) else {
            return;
        };
        let _ = flush_conn(&mut c);
        let _ = self.poll.registry().deregister(&mut c.sock);
        self.free_conns.push(ci);
        if c.counted {
            self.engine.shared().tcp_closed(c.tuple.client.ip());
        }
        if c.pending {
            self.tcp.pending -= 1;
            self.engine.shared().pending_done();
        }
        if let Some(po) = c.peer_of {
            self.spliced.remove(&po.conn_id);
            ops::log_tcp_connection_end(
                po.session,
                po.conn_id,
                c.tuple.client,
                now.saturating_duration_since(po.started),
                po.to_peer,
                po.to_client,
            );
            self.peer_gone(po.owner, po.conn_id, po.to_peer, po.to_client);
        } else {
            self.conn_by_tuple.remove(&c.tuple);
            // RFC 8656 §3.1 / §7: an allocation made over a TCP or TLS connection ends with it.
            self.engine.on_client_closed(now, c.tuple);
        }
        // RFC 6062: the two halves of a splice live and die together.
        if let Some(p) = c.partner {
            self.close_conn(p, now);
        }
        self.flush(now);
    }

    /// Peer datagrams, [`BATCH`] per system call, received behind PEER_HEADROOM so the engine
    /// frames them in place; the ones for UDP clients leave in `sendmmsg` batches.
    fn read_relay(&mut self, relay: u32, now: Instant) {
        let fd = match self.relays.get(relay as usize) {
            Some(Some(RelaySock::Udp(rs))) => rs.as_raw_fd(),
            Some(Some(RelaySock::Tcp(_))) => return self.accept_peer(relay, now),
            _ => return,
        };
        let mut outs = [NO_OUT; BATCH];
        let mut via = [SocketAddr::from(([0, 0, 0, 0], 0)); BATCH];
        for _ in 0..READ_BUDGET / BATCH {
            let n = match self.batch.recv(fd, PEER_HEADROOM) {
                Ok(0) => return,
                Ok(n) => n,
                Err(_) => {
                    self.recv_errors += 1;
                    return;
                }
            };
            self.batch_sizes.observe(ops::BATCH_BOUNDS, n as u64);
            let mut k = 0;
            // TCP/TLS clients: the batch's messages are queued and written with one write per
            // connection (a relay socket serves one allocation, so usually one write per batch).
            let mut stream_ci: Option<usize> = None;
            let (slots, from, lens) = self.batch.slots_mut();
            for (i, slot) in slots.take(n).enumerate() {
                let (peer, len) = (from[i], lens[i]);
                let Some((tuple, range)) =
                    self.engine
                        .handle_peer(now, relay, peer, slot, PEER_HEADROOM, len)
                else {
                    continue;
                };
                if tuple.transport == Transport::Udp {
                    outs[k] = Out {
                        to: tuple.client,
                        ptr: slot[range.clone()].as_ptr(),
                        len: range.len(),
                    };
                    via[k] = tuple.server;
                    k += 1;
                } else if let Some(&ci) = self.conn_by_tuple.get(&tuple) {
                    if let Some(prev) = stream_ci.filter(|&p| p != ci) {
                        if let Some(Some(c)) = self.conns.get_mut(prev) {
                            flush_stream(c, self.poll.registry(), prev);
                        }
                    }
                    stream_ci = Some(ci);
                    if let Some(Some(c)) = self.conns.get_mut(ci) {
                        let data = &slot[range];
                        if !enqueue_stream(c, data) {
                            // Buffer full: write what the socket takes now, then try again.
                            flush_stream(c, self.poll.registry(), ci);
                            if !enqueue_stream(c, data) {
                                self.stream_drops += 1;
                            }
                        }
                    }
                }
            }
            if let Some(ci) = stream_ci {
                if let Some(Some(c)) = self.conns.get_mut(ci) {
                    flush_stream(c, self.poll.registry(), ci);
                }
            }
            // SAFETY: the messages point into `self.batch`, untouched until the next recv.
            self.send_errors += unsafe { send_to_clients(&self.listeners, &outs[..k], &via[..k]) };
            if n < BATCH {
                return;
            }
        }
        self.backlog = true;
        if let Some(Some(RelaySock::Udp(rs))) = self.relays.get_mut(relay as usize) {
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
                        // The clock after the bind: the setup-time histogram includes it.
                        self.engine.on_relay_bound(Instant::now(), relay, r);
                    }
                    RelayCommand::Close { relay } => {
                        // Dropped without epoll_ctl(DEL): closing the only fd of the socket
                        // takes it out of the epoll set (one system call fewer per deletion).
                        // mio asks for deregister before drop; on Linux epoll it is redundant
                        // as long as the fd is never duplicated (no try_clone, no fd passing:
                        // bring DEL back if that changes). A stale event for the id in this
                        // round meets an empty or new socket and reads nothing.
                        if let Some(slot) = self.relays.get_mut(relay as usize) {
                            drop(slot.take());
                        }
                    }
                    RelayCommand::BindTcp { relay, addr } => {
                        let r = self.bind_tcp_relay(relay, addr);
                        self.engine.on_relay_bound(Instant::now(), relay, r);
                    }
                    RelayCommand::Connect {
                        relay,
                        conn_id,
                        peer,
                    } => {
                        if let Err(e) = self.start_connect(relay, conn_id, peer) {
                            self.engine.on_tcp_connected(now, conn_id, Err(e.kind()));
                        }
                    }
                    RelayCommand::Splice { tuple, conn_id } => self.splice(tuple, conn_id, now),
                    RelayCommand::CloseConnections { conn_ids } => {
                        self.close_connections(conn_ids, true, now)
                    }
                    RelayCommand::DropPeer { conn_id } => {
                        if let Some((mut s, _, _)) = self.connecting.remove(&conn_id) {
                            let _ = self.poll.registry().deregister(&mut s);
                        }
                        self.peer_streams
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&conn_id);
                    }
                }
            }
            while let Some(t) = self.engine.poll_transmit() {
                did = true;
                if t.tuple.transport == Transport::Udp {
                    self.udp_answers.push(t);
                } else if let Some(&ci) = self.conn_by_tuple.get(&t.tuple) {
                    // A connection whose Allocate succeeded settles before the success leaves:
                    // the client may open its next connection as soon as it reads it, and
                    // another shard may accept that one at once.
                    self.settle_pending(ci);
                    self.send_stream(ci, &t.data);
                }
            }
            if !did {
                break;
            }
        }
        if !self.defer_udp {
            self.send_udp_answers();
        }
    }

    /// Send the waiting UDP answers: one `sendmmsg` per run with the same listener and source.
    fn send_udp_answers(&mut self) {
        if self.udp_answers.is_empty() {
            return;
        }
        let mut answers = std::mem::take(&mut self.udp_answers);
        let mut outs = [NO_OUT; BATCH];
        let mut via = [SocketAddr::from(([0, 0, 0, 0], 0)); BATCH];
        for chunk in answers.chunks(BATCH) {
            for (i, t) in chunk.iter().enumerate() {
                outs[i] = Out {
                    to: t.tuple.client,
                    ptr: t.data.as_ptr(),
                    len: t.data.len(),
                };
                via[i] = t.tuple.server;
            }
            let k = chunk.len();
            // SAFETY: the answers' buffers live across the call.
            self.send_errors += unsafe { send_to_clients(&self.listeners, &outs[..k], &via[..k]) };
        }
        // keep the capacity for the next batch
        answers.clear();
        self.udp_answers = answers;
    }

    fn bind_relay(
        &mut self,
        relay: u32,
        addr: SocketAddr,
        dont_fragment: bool,
    ) -> Result<SocketAddr, io::ErrorKind> {
        let std = super::sockets::bind_relay_socket(addr, dont_fragment, self.opts)
            .map_err(|e| e.kind())?;
        // The engine names the port; getsockname only when it left the choice to the kernel.
        let local = if addr.port() != 0 {
            addr
        } else {
            std.local_addr().map_err(|e| e.kind())?
        };
        self.install_relay(relay, RelaySock::Udp(UdpSocket::from_std(std)))?;
        Ok(local)
    }

    fn bind_tcp_relay(
        &mut self,
        relay: u32,
        addr: SocketAddr,
    ) -> Result<SocketAddr, io::ErrorKind> {
        let std = super::sockets::bind_tcp_relay_listener(addr).map_err(|e| e.kind())?;
        let local = std.local_addr().map_err(|e| e.kind())?;
        self.install_relay(relay, RelaySock::Tcp(TcpListener::from_std(std)))?;
        Ok(local)
    }

    /// Register a relay socket with epoll under its relay id and keep it.
    fn install_relay(&mut self, relay: u32, mut sock: RelaySock) -> Result<(), io::ErrorKind> {
        let token = Token(RELAY_BASE + relay as usize);
        let registry = self.poll.registry();
        match &mut sock {
            RelaySock::Udp(s) => registry.register(s, token, Interest::READABLE),
            RelaySock::Tcp(s) => registry.register(s, token, Interest::READABLE),
        }
        .map_err(|e| e.kind())?;
        let i = relay as usize;
        if self.relays.len() <= i {
            self.relays.resize_with(i + 1, || None);
        }
        self.relays[i] = Some(sock);
        Ok(())
    }

    /// RFC 6062 §5.3: a peer connects to a TCP relayed address.
    fn accept_peer(&mut self, relay: u32, now: Instant) {
        for _ in 0..READ_BUDGET {
            let Some(Some(RelaySock::Tcp(l))) = self.relays.get(relay as usize) else {
                return;
            };
            let (s, peer) = match l.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if accept_skippable(&e) => {
                    self.recv_errors += 1;
                    continue;
                }
                Err(e) => {
                    self.accept_failed(AcceptSource::Peer(relay), &e, now);
                    return;
                }
            };
            if let Some(id) = self.engine.on_peer_tcp_accepted(now, relay, peer) {
                let sock = std::net::TcpStream::from(std::os::fd::OwnedFd::from(s));
                self.share_peer_stream(id, sock, peer);
            }
            self.flush(now);
        }
        // Budget spent: re-arm so the rest is accepted on the next turn.
        if let Some(Some(RelaySock::Tcp(l))) = self.relays.get_mut(relay as usize) {
            let _ = self.poll.registry().reregister(
                l,
                Token(RELAY_BASE + relay as usize),
                Interest::READABLE,
            );
        }
    }

    /// RFC 6062 §5.2: connect from the relayed address to the peer, without blocking.
    fn start_connect(&mut self, relay: u32, conn_id: u32, peer: SocketAddr) -> io::Result<()> {
        let Some(Some(RelaySock::Tcp(l))) = self.relays.get(relay as usize) else {
            return Err(io::ErrorKind::NotFound.into());
        };
        let from = l.local_addr()?;
        let std = super::sockets::connect_from(from, peer)?;
        let mut s = TcpStream::from_std(std);
        self.poll.registry().register(
            &mut s,
            Token(CONNECT_BASE + conn_id as usize),
            Interest::WRITABLE,
        )?;
        self.connecting.insert(conn_id, (s, relay, peer));
        Ok(())
    }

    /// The outgoing connection `conn_id` finished its handshake, one way or the other.
    fn connect_done(&mut self, conn_id: u32, now: Instant) {
        let Some((mut s, relay, peer)) = self.connecting.remove(&conn_id) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut s);
        let result = match s.take_error() {
            Ok(Some(e)) | Err(e) => Err(e.kind()),
            Ok(None) => s.peer_addr().map(|_| ()).map_err(|e| e.kind()),
        };
        if result.is_ok() {
            let sock = std::net::TcpStream::from(std::os::fd::OwnedFd::from(s));
            self.share_peer_stream(conn_id, sock, peer);
        } else if result == Err(io::ErrorKind::NotConnected) {
            // Spurious wake-up before the handshake finished: keep waiting.
            if self
                .poll
                .registry()
                .register(
                    &mut s,
                    Token(CONNECT_BASE + conn_id as usize),
                    Interest::WRITABLE,
                )
                .is_ok()
            {
                self.connecting.insert(conn_id, (s, relay, peer));
                return;
            }
        }
        self.engine.on_tcp_connected(now, conn_id, result);
        self.flush(now);
    }

    /// A peer connection of this shard's allocation waits for its ConnectionBind (any shard).
    fn share_peer_stream(&mut self, conn_id: u32, sock: std::net::TcpStream, peer: SocketAddr) {
        let stream = PeerStream {
            sock,
            owner: self.index,
            peer,
            session: self.engine.tcp_connection_session(conn_id).unwrap_or(0),
        };
        self.peer_streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(conn_id, stream);
    }

    /// RFC 6062 §5.4: join the client's data connection `tuple` with peer connection `conn_id`.
    fn splice(&mut self, tuple: FiveTuple, conn_id: u32, now: Instant) {
        let Some(&ci) = self.conn_by_tuple.get(&tuple) else {
            return;
        };
        let entry = self
            .peer_streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&conn_id);
        let Some(PeerStream {
            sock: std,
            owner,
            peer,
            session,
        }) = entry
        else {
            // Claimed but gone (expired in between): nothing to pipe to.
            return self.close_conn(ci, now);
        };
        if std.set_nonblocking(true).is_err() {
            self.peer_gone(owner, conn_id, 0, 0);
            return self.close_conn(ci, now);
        }
        let server = std.local_addr().unwrap_or(tuple.server);
        let mut sock = TcpStream::from_std(std);
        let Some(pi) = self.register_conn(&mut sock) else {
            self.peer_gone(owner, conn_id, 0, 0);
            return self.close_conn(ci, now);
        };
        // Bytes the client sent after its ConnectionBind already belong to the peer.
        let leftover = match self.conns.get_mut(ci) {
            Some(Some(c)) => {
                c.partner = Some(pi);
                std::mem::take(&mut c.rbuf)
            }
            _ => Vec::new(),
        };
        self.conns[pi] = Some(Conn {
            sock,
            tuple: FiveTuple {
                client: peer,
                server,
                transport: Transport::Tcp,
            },
            tls: None,
            rbuf: Vec::new(),
            wbuf: Vec::new(),
            tls_queued: 0,
            writable_interest: false,
            partner: Some(ci),
            peer_of: Some(Box::new(PeerOf {
                owner,
                conn_id,
                session,
                started: now,
                to_peer: leftover.len() as u64,
                to_client: 0,
            })),
            paused: false,
            stun_seen: true,
            counted: false,
            pending: false,
        });
        self.spliced.insert(conn_id, pi);
        if !leftover.is_empty() {
            self.engine.stats.bytes_to_peer += leftover.len() as u64;
            self.send_stream(pi, &leftover);
        }
    }

    /// RFC 6062 §5.5: the allocation owning these peer connections is gone. Close what is here
    /// (a handshake in progress, a stream waiting for ConnectionBind, a splice: both halves);
    /// with `forward`, ask the other shards to close the rest (spliced where the client's data
    /// connection landed). A stream taken from the shared table by a ConnectionBind is spliced
    /// by that shard before it reads its control channel, so the message finds it.
    fn close_connections(&mut self, ids: Vec<u32>, forward: bool, now: Instant) {
        let mut elsewhere = Vec::new();
        let mut unbound = Vec::new();
        let mut rest = Vec::with_capacity(ids.len());
        {
            let mut streams = self.peer_streams.lock().unwrap_or_else(|e| e.into_inner());
            for id in ids {
                match streams.remove(&id) {
                    Some(p) => unbound.push(p.sock),
                    None => rest.push(id),
                }
            }
        }
        drop(unbound); // closed outside the lock
        for id in rest {
            if let Some((mut s, _, _)) = self.connecting.remove(&id) {
                let _ = self.poll.registry().deregister(&mut s);
            } else if let Some(&pi) = self.spliced.get(&id) {
                self.close_conn(pi, now);
            } else {
                elsewhere.push(id);
            }
        }
        if forward && !elsewhere.is_empty() {
            for i in 0..self.mailboxes.get().map_or(0, Vec::len) {
                if i != self.index {
                    self.tell(i, Control::CloseConnections(elsewhere.clone()));
                }
            }
        }
    }

    /// The peer connection `id` of shard `owner`'s allocation is closed, having carried these
    /// bytes while spliced: tell that engine.
    fn peer_gone(&mut self, owner: usize, id: u32, to_peer: u64, to_client: u64) {
        if owner == self.index {
            self.engine.on_peer_tcp_closed(id, to_peer, to_client);
        } else {
            self.tell(
                owner,
                Control::PeerClosed {
                    conn_id: id,
                    to_peer,
                    to_client,
                },
            );
        }
    }

    /// Send a control message to shard `i` (ignored if it has stopped).
    fn tell(&self, i: usize, c: Control) {
        if let Some((tx, waker)) = self.mailboxes.get().and_then(|m| m.get(i)) {
            if tx.send(c).is_ok() {
                let _ = waker.wake();
            }
        }
    }

    /// Queue `n` bytes of `self.buf` read from `ci` on its splice partner, and count them: on
    /// the peer side of the splice (its usage record) and in the relayed-bytes totals.
    fn forward_splice(&mut self, ci: usize, partner: usize, n: usize) {
        let Some(Some(p)) = self.conns.get_mut(partner) else {
            return;
        };
        if !queue_stream(p, self.poll.registry(), partner, &self.buf[..n]) {
            self.stream_drops += 1;
            return;
        }
        let stats = &mut self.engine.stats;
        if let Some(po) = p.peer_of.as_mut() {
            po.to_peer += n as u64;
            stats.bytes_to_peer += n as u64;
        } else if let Some(Some(c)) = self.conns.get_mut(ci) {
            if let Some(po) = c.peer_of.as_mut() {
                po.to_client += n as u64;
                stats.bytes_to_client += n as u64;
            }
        }
    }

    /// Spliced connection: move bytes to the partner, as long as the partner keeps up.
    fn pump_splice(&mut self, ci: usize, partner: usize, now: Instant) {
        for _ in 0..READ_BUDGET {
            let partner_busy = match self.conns.get(partner) {
                Some(Some(p)) => match &p.tls {
                    Some(t) => t.wants_write(),
                    None => p.wbuf.len() + SPLICE_CHUNK > MAX_STREAM_WBUF,
                },
                _ => return self.close_conn(ci, now),
            };
            let Some(Some(c)) = self.conns.get_mut(ci) else {
                return;
            };
            if partner_busy {
                c.paused = true;
                return;
            }
            let mut close = false;
            let mut n = 0;
            match &mut c.tls {
                None => match c.sock.read(&mut self.buf[..SPLICE_CHUNK]) {
                    Ok(0) => close = true,
                    Ok(k) => n = k,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => close = true,
                },
                Some(tls) => match tls.reader().read(&mut self.buf[..SPLICE_CHUNK]) {
                    Ok(0) => close = true,
                    Ok(k) => n = k,
                    Err(_) => match tls.read_tls(&mut c.sock) {
                        Ok(0) => close = true,
                        Ok(_) => {
                            if tls.process_new_packets().is_err() {
                                close = true;
                            } else {
                                continue;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                        Err(_) => close = true,
                    },
                },
            }
            if close {
                return self.close_conn(ci, now);
            }
            if n > 0 {
                self.forward_splice(ci, partner, n);
            }
        }
        // Budget spent: re-arm so the rest is read on the next turn.
        self.backlog = true;
        if let Some(Some(c)) = self.conns.get_mut(ci) {
            let interest = if c.writable_interest {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            let _ = self
                .poll
                .registry()
                .reregister(&mut c.sock, Token(CONN_BASE + ci), interest);
        }
    }
}

/// Queue one whole message on a stream connection and write what the socket takes now; asks for
/// writability when bytes remain. `false`: the client is not reading and the message was
/// dropped (a partial message would break the framing, so it is all or nothing).
fn queue_stream(c: &mut Conn, registry: &mio::Registry, ci: usize, data: &[u8]) -> bool {
    if !enqueue_stream(c, data) {
        return false;
    }
    flush_stream(c, registry, ci);
    true
}

/// The UDP listener that sends for the 5-tuple server side `server`, and the source address
/// to put in IP_PKTINFO / IPV6_PKTINFO: a listener bound to exactly `server` sends as it is;
/// otherwise the wildcard listener of that family and port sends from `server`'s IP (the
/// address the client used, see `pktinfo`).
fn udp_route(
    listeners: &[Listener],
    server: SocketAddr,
) -> Option<(std::os::fd::RawFd, Option<IpAddr>)> {
    let mut wildcard = None;
    for l in listeners {
        if let Listener::Udp(s, a) = l {
            if *a == server {
                return Some((s.as_raw_fd(), None));
            }
            if wildcard.is_none()
                && a.ip().is_unspecified()
                && !server.ip().is_unspecified()
                && a.port() == server.port()
                && a.is_ipv4() == server.is_ipv4()
            {
                wildcard = Some((s.as_raw_fd(), Some(server.ip())));
            }
        }
    }
    wildcard
}

/// `sendmmsg` per run of datagrams in `outs` for clients of the same listening address (`via`:
/// the 5-tuples' server side), from the listener `udp_route` picks; returns how many were
/// dropped.
///
/// # Safety
/// Every `Out` must point to memory that stays valid and unmodified for the call.
unsafe fn send_to_clients(listeners: &[Listener], outs: &[Out], via: &[SocketAddr]) -> u64 {
    let (mut s, mut dropped) = (0, 0);
    while s < outs.len() {
        let server = via[s];
        let mut e = s + 1;
        while e < outs.len() && via[e] == server {
            e += 1;
        }
        if let Some((fd, src)) = udp_route(listeners, server) {
            // SAFETY: the caller keeps the payloads valid.
            dropped += unsafe { batch::send_from(fd, &outs[s..e], src) } as u64;
        }
        s = e;
    }
    dropped
}

/// `sendmmsg` per run of datagrams in `outs` leaving by the same relay socket (`via`); returns
/// how many were dropped.
///
/// # Safety
/// Every `Out` must point to memory that stays valid and unmodified for the call.
unsafe fn send_to_peers(relays: &[Option<RelaySock>], outs: &[Out], via: &[u32]) -> u64 {
    let (mut s, mut dropped) = (0, 0);
    while s < outs.len() {
        let r = via[s];
        let mut e = s + 1;
        while e < outs.len() && via[e] == r {
            e += 1;
        }
        if let Some(Some(RelaySock::Udp(rs))) = relays.get(r as usize) {
            // SAFETY: the caller keeps the payloads valid.
            dropped += unsafe { batch::send(rs.as_raw_fd(), &outs[s..e]) } as u64;
        }
        s = e;
    }
    dropped
}

/// Append `data` to the connection's send buffer without writing; false if it does not fit.
fn enqueue_stream(c: &mut Conn, data: &[u8]) -> bool {
    match &mut c.tls {
        Some(tls) => {
            if !tls.wants_write() {
                c.tls_queued = 0;
            }
            if c.tls_queued + data.len() > MAX_STREAM_WBUF {
                return false;
            }
            // Without a buffer limit rustls takes all of it (write_all fails only on a closed
            // session, before anything is queued).
            if tls.writer().write_all(data).is_err() {
                return false;
            }
            c.tls_queued += data.len();
            true
        }
        None => {
            if c.wbuf.len() + data.len() > MAX_STREAM_WBUF {
                false
            } else {
                c.wbuf.extend_from_slice(data);
                true
            }
        }
    }
}

/// Write what is queued; ask for WRITABLE if some stays behind.
fn flush_stream(c: &mut Conn, registry: &mio::Registry, ci: usize) {
    // A write error closes the connection on its next read event, which reports it too.
    if flush_conn(c).is_ok() {
        let pending = match &c.tls {
            Some(t) => t.wants_write(),
            None => !c.wbuf.is_empty(),
        };
        if pending && !c.writable_interest {
            c.writable_interest = true;
            let _ = registry.reregister(
                &mut c.sock,
                Token(CONN_BASE + ci),
                Interest::READABLE | Interest::WRITABLE,
            );
        }
    }
}

/// Write queued bytes until the socket would block. Err: the connection is broken.
fn flush_conn(c: &mut Conn) -> io::Result<()> {
    match &mut c.tls {
        Some(tls) => {
            while tls.wants_write() {
                match tls.write_tls(&mut c.sock) {
                    // Record overhead makes this count low by a few bytes per message: the
                    // bound stays within a fraction of MAX_STREAM_WBUF.
                    Ok(n) => c.tls_queued = c.tls_queued.saturating_sub(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
        None => {
            while !c.wbuf.is_empty() {
                match c.sock.write(&c.wbuf) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => {
                        c.wbuf.drain(..n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(())
}
