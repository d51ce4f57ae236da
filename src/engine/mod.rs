//! The sans-IO TURN engine of one shard.
//!
//! Input: a datagram with its 5-tuple and `now` ([`Engine::handle_client`],
//! [`Engine::handle_peer`]), the result of a relay-socket bind ([`Engine::on_relay_bound`]) and
//! timeouts ([`Engine::handle_timeout`]). Output: transmits to clients
//! ([`Engine::poll_transmit`]), relay-socket requests ([`Engine::poll_command`]) and the next
//! deadline ([`Engine::poll_timeout`]). No sockets, no tokio, no wall clock read: time comes in.
//!
//! The relay paths (ChannelData both ways, Send/Data indications) touch one hash lookup (client
//! 5-tuple) or one slab index (relay id) plus a scan of a few permissions and channels, and never
//! allocate: payloads are borrowed in, and headers are written into the caller's headroom.
pub mod allocation;
pub mod auth;
pub mod config;
pub mod hash;
pub mod limits;
pub mod nat_discovery;
pub mod ops;
pub mod peer_filter;
pub mod shared;
pub mod tcp_relay;
pub mod txn_cache;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, info, trace};

pub use config::{EngineConfig, UserKey};

use crate::codec::channel_data::{self, Kind};
use crate::codec::stun::{
    self, attr, decode_type, decode_u32, decode_xor_addr, method, Class, IntegrityKind, Message,
    ParseError, Writer,
};
use allocation::{desired_lifetime, Allocation, Relay, V4, V6};
use auth::{Auth, AuthError, Authenticated, Key};
use limits::{ByteBucket, RefusalLog, ServerBandwidth, ShardCredit};
use shared::{QuotaError, Quotas, Shared};
use txn_cache::TxnCache;

/// Transport of the client leg.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

/// Client address, server address and transport: identifies an allocation (RFC 8656 §2.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FiveTuple {
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub transport: Transport,
}

/// Hashed once per client packet (the allocation lookup): a few fixed-width words rather than
/// the derived walk over two `SocketAddr` enums (discriminants, length-prefixed octets), which
/// took about half the lookup time. Equal tuples hash equally (flowinfo and scope id, which
/// `Eq` also compares, are merely left out).
impl std::hash::Hash for FiveTuple {
    #[inline]
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        let t = self.transport as u128;
        match (self.client, self.server) {
            (SocketAddr::V4(c), SocketAddr::V4(s)) => h.write_u128(
                (u32::from(*c.ip()) as u128) << 96
                    | (c.port() as u128) << 80
                    | (u32::from(*s.ip()) as u128) << 48
                    | (s.port() as u128) << 32
                    | t,
            ),
            (c, s) => {
                let ip = |a: SocketAddr| match a.ip() {
                    std::net::IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
                    std::net::IpAddr::V6(v6) => u128::from(v6),
                };
                h.write_u128(ip(c));
                h.write_u128(ip(s));
                h.write_u64((c.port() as u64) << 32 | (s.port() as u64) << 16 | t as u64 | 1 << 48);
            }
        }
    }
}

/// Index of a relay socket within one shard; the runtime keeps the socket under the same id.
pub type RelayId = u32;

/// Bytes the runtime must leave in front of a peer datagram for [`Engine::handle_peer`].
pub const PEER_HEADROOM: usize = stun::DATA_INDICATION_HEADROOM;
/// Bytes the runtime must leave behind a peer datagram (padding).
pub const PEER_TAILROOM: usize = 4;
/// Largest peer payload that still fits a Data indication's 16-bit length.
pub const MAX_PEER_PAYLOAD: usize = 65535 - PEER_HEADROOM;

/// Binding responses are at most this much larger than their request (reflection guard):
/// XOR-MAPPED-ADDRESS of an IPv6 client (24) + FINGERPRINT (8). SOFTWARE goes in only when it
/// fits under this bound (RFC 8489 §14.14: SOFTWARE is optional).
pub const BINDING_MAX_GROWTH: usize = 32;
/// Bind retries on a port some other process holds.
const MAX_BIND_ATTEMPTS: u8 = 8;

/// A message for a client.
#[derive(Debug)]
pub struct Transmit {
    pub tuple: FiveTuple,
    pub data: Vec<u8>,
}

/// What the runtime must do with relay sockets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayCommand {
    /// Bind a UDP socket to `addr` under `relay`, then report with [`Engine::on_relay_bound`].
    /// `dont_fragment`: set IP_MTU_DISCOVER=DO (RFC 8656 §14.8 DONT-FRAGMENT).
    Bind {
        relay: RelayId,
        addr: SocketAddr,
        dont_fragment: bool,
    },
    /// Close the socket of `relay`.
    Close { relay: RelayId },
    /// RFC 6062: listen for TCP on `addr` under `relay` (a TCP allocation); report with
    /// [`Engine::on_relay_bound`] and each accepted peer with [`Engine::on_peer_tcp_accepted`].
    BindTcp { relay: RelayId, addr: SocketAddr },
    /// RFC 6062 §5.2: open a TCP connection from `relay`'s address to `peer`; report with
    /// [`Engine::on_tcp_connected`] and keep the stream under `conn_id`.
    Connect {
        relay: RelayId,
        conn_id: u32,
        peer: SocketAddr,
    },
    /// RFC 6062 §5.4: from now on, pipe the client connection `tuple` and peer connection
    /// `conn_id` into each other (after sending what is queued for `tuple`).
    Splice { tuple: FiveTuple, conn_id: u32 },
    /// Close the peer connection `conn_id` (never bound, or its Connect timed out).
    DropPeer { conn_id: u32 },
    /// RFC 6062 §5.5: the TCP allocation that owned these connections is gone. Close each peer
    /// connection (connecting, waiting for ConnectionBind, or spliced) and, when spliced, its
    /// client data connection too, on whichever shard holds it.
    CloseConnections { conn_ids: Vec<u32> },
}

/// The result of a client datagram on the data path.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientAction<'a> {
    /// Nothing to relay (a control message, whose answer is queued, or a drop).
    None,
    /// Send `payload` from the relay socket `relay` to `peer`.
    ToPeer {
        relay: RelayId,
        peer: SocketAddr,
        payload: &'a [u8],
    },
}

/// Per-shard counters; plain integers, read by the runtime, never shared per packet.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub allocations_created: u64,
    pub allocations_deleted: u64,
    pub packets_to_peer: u64,
    pub bytes_to_peer: u64,
    pub packets_to_client: u64,
    pub bytes_to_client: u64,
    pub dropped_no_allocation: u64,
    pub dropped_no_permission: u64,
    pub dropped_not_turn: u64,
    pub dropped_malformed: u64,
    pub auth_challenges: u64,
    pub auth_failures: u64,
    pub stale_nonces: u64,
    pub peers_denied: u64,
    // Abuse limits (issue #5): what was refused and why. README "Abuse resistance".
    /// 486: the user's allocation quota (`user-quota`).
    pub refused_quota_user: u64,
    /// 508: the server's allocation quota (`total-quota`).
    pub refused_quota_total: u64,
    /// 486: allocations per client IP (`max-allocations-per-ip`).
    pub refused_quota_ip: u64,
    /// 486: allocations per /24 or /64 (`max-allocations-per-prefix`).
    pub refused_quota_prefix: u64,
    /// 508: permissions per allocation (`max-permissions-per-allocation`).
    pub refused_permissions: u64,
    /// 508: channels per allocation (`max-channels-per-allocation`).
    pub refused_channels: u64,
    /// RFC 6062 peer connections over `max-peer-connections-per-allocation`: Connect → 508, or
    /// a connecting peer closed.
    pub refused_peer_connections: u64,
    /// Requests dropped silently: source over `max-requests-per-ip`.
    pub refused_rate_requests: u64,
    /// 401/438 not sent: source over `max-401-per-ip` (reflection guard).
    pub refused_rate_401: u64,
    /// Authenticated requests dropped silently: source or user in failed-auth back-off.
    pub refused_auth_backoff: u64,
    /// Relayed packets dropped: allocation over `max-bps`.
    pub dropped_bandwidth_allocation: u64,
    /// Relayed packets dropped: the server over `bps-capacity`.
    pub dropped_bandwidth_server: u64,
    /// Refusal log lines not written (at most 10 a second per shard).
    pub refusal_logs_suppressed: u64,
    /// Histograms and counters by reason (metrics, admin API).
    pub ops: ops::OpsStats,
}

/// An Allocate waiting for its relay socket(s) to be bound: one, or two for a dual allocation
/// (RFC 8656 §7.2). The response goes out once every socket is bound or given up on.
struct PendingAllocate {
    req: Req,
    auth: Authenticated,
    lifetime: Duration,
    dont_fragment: bool,
    reserve_next: bool,
    reservation: Option<u64>,
    from_token: bool,
    /// The relay sockets being bound, by family ([`V4`], [`V6`]).
    legs: [Option<PendingRelay>; 2],
    /// ADDRESS-ERROR-CODE per family (RFC 8656 §7.2 step 9, §18.12): the code (440 or 508) for
    /// a family a dual Allocate asked for and does not get.
    refused: [Option<u16>; 2],
    /// RFC 6062 TCP allocation.
    tcp: bool,
    /// When the Allocate was taken on (setup-time histogram).
    started: Instant,
}

/// One relay socket of a [`PendingAllocate`].
struct PendingRelay {
    relay: RelayId,
    port: u16,
    bind_ip: IpAddr,
    external_ip: IpAddr,
    even: bool,
    attempts: u8,
    state: LegState,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum LegState {
    Binding,
    Bound(SocketAddr),
    Failed,
}

enum RelaySlot {
    Free,
    /// The first relay socket of a pending Allocate; owns its state.
    Pending(Box<PendingAllocate>),
    /// The second relay socket of a pending dual Allocate, whose state the `Pending` slot of
    /// this relay id owns.
    PendingWith(RelayId),
    Active(u32),
}

/// What every answer to one request needs to know.
#[derive(Clone, Copy, Debug)]
struct Req {
    tuple: FiveTuple,
    tid: [u8; 12],
    method: u16,
    fingerprint: bool,
}

pub struct Engine {
    cfg: Arc<EngineConfig>,
    auth: Auth,
    shared: Arc<Shared>,
    allocs: Vec<Option<Allocation>>,
    free_allocs: Vec<u32>,
    by_tuple: hash::Map<FiveTuple, u32>,
    pending_by_tuple: hash::Map<FiveTuple, RelayId>,
    relays: Vec<RelaySlot>,
    free_relays: Vec<RelayId>,
    /// Allocation expiry deadlines; stale entries (after a refresh) are skipped when popped.
    timers: BinaryHeap<Reverse<(Instant, u32)>>,
    txn: TxnCache,
    pending_connects: HashMap<u32, tcp_relay::PendingConnect>,
    /// RFC 6062 connection deadlines (Connect completion, ConnectionBind wait).
    conn_timers: BinaryHeap<Reverse<(Instant, u32)>>,
    /// RFC 6062: CONNECTION-ID → allocation index of every open peer connection of this
    /// engine's TCP allocations (ids are unique across shards, so a miss means "not mine").
    tcp_conns: HashMap<u32, u32>,
    transmits: VecDeque<Transmit>,
    commands: VecDeque<RelayCommand>,
    base: (Instant, u64),
    rng: u64,
    refusal_log: RefusalLog,
    /// Credit this shard drew from the server's `bps-capacity` (`Shared::bandwidth`).
    credit: ShardCredit,
    pub stats: Stats,
    /// Draining (SIGUSR1 / admin API): new Allocates get 300 or 508, the rest goes on.
    draining: bool,
}

/// xorshift64*, the engine's cheap generator (`Engine::next_rand`). A free function so the peer
/// path can draw from it while it holds the allocation borrowed (one channel scan, not two).
#[inline]
fn xorshift(rng: &mut u64) -> u64 {
    *rng ^= *rng >> 12;
    *rng ^= *rng << 25;
    *rng ^= *rng >> 27;
    rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

impl Engine {
    /// `now` and `unix_now` anchor the engine's notion of wall-clock time (REST API timestamps,
    /// nonce expiry); afterwards only the monotonic `now` passed to each call is used.
    pub fn new(
        cfg: Arc<EngineConfig>,
        shared: Arc<Shared>,
        now: Instant,
        unix_now: u64,
        seed: u64,
    ) -> Self {
        let auth = Auth::new(&cfg, shared.nonce_key);
        shared.bandwidth.set_rate(cfg.limits.bps_capacity);
        Engine {
            cfg,
            auth,
            shared,
            allocs: Vec::new(),
            free_allocs: Vec::new(),
            by_tuple: hash::map(),
            pending_by_tuple: hash::map(),
            relays: Vec::new(),
            free_relays: Vec::new(),
            timers: BinaryHeap::new(),
            txn: TxnCache::new(4096),
            pending_connects: HashMap::new(),
            conn_timers: BinaryHeap::new(),
            tcp_conns: HashMap::new(),
            transmits: VecDeque::new(),
            commands: VecDeque::new(),
            base: (now, unix_now),
            rng: seed | 1,
            refusal_log: RefusalLog::default(),
            credit: ShardCredit::default(),
            stats: Stats::default(),
            draining: false,
        }
    }

    /// Swap in a reloaded configuration. Live allocations keep their relay, lifetime and the key
    /// they were created with.
    pub fn set_config(&mut self, cfg: Arc<EngineConfig>) {
        self.auth = Auth::new(&cfg, self.shared.nonce_key);
        self.prune_to(&cfg.peer_filter);
        // Bandwidth limits apply to live allocations too (fresh buckets at the new rate).
        if cfg.limits.max_bps != self.cfg.limits.max_bps {
            for a in self.allocs.iter_mut().flatten() {
                a.bw = [ByteBucket::new(cfg.limits.max_bps); 2];
            }
        }
        // Every shard stores the same value; credit drawn at the old rate is dropped.
        self.shared.bandwidth.set_rate(cfg.limits.bps_capacity);
        if cfg.limits.bps_capacity != self.cfg.limits.bps_capacity {
            self.credit = ShardCredit::default();
        }
        self.cfg = cfg;
    }

    /// The host's interface addresses changed (a wildcard listener answers on every one of
    /// them): the peer filter's own-address rules follow, for what is installed too.
    pub fn set_host_addresses(&mut self, ips: Vec<IpAddr>) {
        if self.cfg.peer_filter.host_ips() == ips.as_slice() {
            return;
        }
        let mut cfg = (*self.cfg).clone();
        cfg.peer_filter.set_host_ips(ips);
        // Only the filter changed: no `Auth` rebuild (it derives keys for every static user).
        self.prune_to(&cfg.peer_filter);
        self.cfg = Arc::new(cfg);
    }

    /// A tightened peer filter applies to what is already installed too: permissions and
    /// channels to peers it now refuses are removed, so no relayed data reaches them.
    fn prune_to(&mut self, filter: &peer_filter::PeerFilter) {
        for a in self.allocs.iter_mut().flatten() {
            a.permissions
                .retain(|p| filter.check_permission(SocketAddr::new(p.ip, 0)).is_ok());
            a.channels.retain(|c| filter.check(c.peer).is_ok());
        }
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    pub fn allocation_count(&self) -> usize {
        self.by_tuple.len()
    }

    /// Is there an allocation on `tuple`? (The runtime: a TCP/TLS connection that allocated is
    /// no longer pending.)
    pub fn has_allocation(&self, tuple: &FiveTuple) -> bool {
        self.by_tuple.contains_key(tuple)
    }

    /// What the shards share (the runtime counts client connections per IP there).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub fn allocations(&self) -> impl Iterator<Item = &Allocation> {
        self.allocs.iter().flatten()
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_command(&mut self) -> Option<RelayCommand> {
        self.commands.pop_front()
    }

    /// The next instant at which [`Engine::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let a = self.timers.peek().map(|Reverse((t, _))| *t);
        let c = self.conn_timers.peek().map(|Reverse((t, _))| *t);
        match (a, c) {
            (Some(a), Some(c)) => Some(a.min(c)),
            (a, c) => a.or(c),
        }
    }

    /// Nanoseconds since the engine's base instant (the clock of the rate limits).
    #[inline]
    fn ns(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.base.0).as_nanos() as u64
    }

    /// Rate-limited refusal logging: true if this refusal may be logged.
    fn may_log(&mut self, now: Instant) -> bool {
        let t = self.ns(now);
        let ok = self.refusal_log.may_log(t);
        self.stats.refusal_logs_suppressed = self.refusal_log.suppressed;
        ok
    }

    fn unix(&self, now: Instant) -> u64 {
        self.base.1 + now.saturating_duration_since(self.base.0).as_secs()
    }

    fn next_rand(&mut self) -> u64 {
        xorshift(&mut self.rng)
    }

    // ------------------------------------------------------------------ data path

    /// A datagram from a client. Control messages are answered through [`Engine::poll_transmit`];
    /// data (ChannelData, Send indication) comes back as [`ClientAction::ToPeer`], borrowing
    /// the payload from `data`.
    pub fn handle_client<'a>(
        &mut self,
        now: Instant,
        tuple: FiveTuple,
        data: &'a [u8],
    ) -> ClientAction<'a> {
        let Some(&first) = data.first() else {
            return ClientAction::None;
        };
        match channel_data::classify(first) {
            Kind::ChannelData => self.client_channel_data(now, tuple, data),
            Kind::Stun => self.handle_stun(now, tuple, data),
            Kind::Other => {
                self.stats.dropped_not_turn += 1;
                ClientAction::None
            }
        }
    }

    /// RFC 8656 §12.4: ChannelData from the client goes to the bound peer, if the channel and
    /// the permission are live; otherwise it is silently dropped.
    #[inline]
    fn client_channel_data<'a>(
        &mut self,
        now: Instant,
        tuple: FiveTuple,
        data: &'a [u8],
    ) -> ClientAction<'a> {
        let Some((number, payload)) = channel_data::parse(data, self.cfg.max_channel()) else {
            self.stats.dropped_malformed += 1;
            return ClientAction::None;
        };
        let Some(&idx) = self.by_tuple.get(&tuple) else {
            self.stats.dropped_no_allocation += 1;
            return ClientAction::None;
        };
        let Some(a) = self.allocs[idx as usize].as_mut() else {
            return ClientAction::None;
        };
        let Some(peer) = a.channel_peer(number, now) else {
            self.stats.dropped_no_permission += 1;
            return ClientAction::None;
        };
        // The relay of the peer's family (RFC 8656 §7.2 dual allocation: IPv4 peers through
        // the IPv4 relay, IPv6 peers through the IPv6 one).
        let Some(relay) = a.permitted_relay(peer.ip(), now) else {
            self.stats.dropped_no_permission += 1;
            return ClientAction::None;
        };
        let clock = (now, self.base.0);
        let server = (self.cfg.limits.bps_capacity != 0).then_some(&self.shared.bandwidth);
        to_peer(
            &mut self.stats,
            (&mut self.credit, server),
            clock,
            a,
            relay,
            peer,
            payload,
        )
    }

    /// A datagram from `peer` on relay socket `relay`, held in `buf[start..start + len]` with
    /// at least [`PEER_HEADROOM`] bytes before and [`PEER_TAILROOM`] after. On success the
    /// message for the client is framed in place and its range in `buf` is returned
    /// (RFC 8656 §11.4 / §12.4: ChannelData if a channel is bound to the peer, else a Data
    /// indication). Dropped without a live permission for the peer's IP (§9).
    #[inline]
    pub fn handle_peer(
        &mut self,
        now: Instant,
        relay: RelayId,
        peer: SocketAddr,
        buf: &mut [u8],
        start: usize,
        len: usize,
    ) -> Option<(FiveTuple, Range<usize>)> {
        debug_assert!(start >= PEER_HEADROOM && buf.len() >= start + len + PEER_TAILROOM);
        let Some(RelaySlot::Active(idx)) = self.relays.get(relay as usize) else {
            return None;
        };
        let idx = *idx as usize;
        let a = self.allocs[idx].as_mut()?;
        if !a.has_permission(peer.ip(), now) || len > MAX_PEER_PAYLOAD {
            self.stats.dropped_no_permission += 1;
            return None;
        }
        if !a.bw[DOWN].unlimited() {
            let t = now.saturating_duration_since(self.base.0).as_nanos() as u64;
            if !a.bw[DOWN].take(t, len) {
                self.stats.dropped_bandwidth_allocation += 1;
                return None;
            }
        }
        if self.cfg.limits.bps_capacity != 0 && !self.credit.take(&self.shared.bandwidth, now, len)
        {
            self.stats.dropped_bandwidth_server += 1;
            return None;
        }
        let range = match a.channel_for_peer(peer, now) {
            Some(ch) => channel_data::frame_in_place(
                buf,
                start,
                len,
                ch,
                a.tuple.transport != Transport::Udp,
            ),
            None => {
                let tid_seed = xorshift(&mut self.rng);
                let mut tid = [0u8; 12];
                tid[..8].copy_from_slice(&tid_seed.to_le_bytes());
                tid[8..].copy_from_slice(&(a.to_client_packets as u32).to_le_bytes());
                stun::data_indication_in_place(buf, start, len, peer, &tid)
            }
        };
        a.to_client_packets += 1;
        a.to_client_bytes += len as u64;
        self.stats.packets_to_client += 1;
        self.stats.bytes_to_client += len as u64;
        Some((a.tuple, range))
    }

    /// RFC 8656 §10.2: a Send indication is relayed if the allocation exists, XOR-PEER-ADDRESS
    /// and DATA are present and a permission exists; anything else is silently discarded.
    fn send_indication<'a>(
        &mut self,
        now: Instant,
        tuple: FiveTuple,
        msg: &Message<'a>,
    ) -> ClientAction<'a> {
        let Some(&idx) = self.by_tuple.get(&tuple) else {
            self.stats.dropped_no_allocation += 1;
            return ClientAction::None;
        };
        let tid = msg.transaction_id();
        let (Some(peer), Some(payload)) = (
            msg.get(attr::XOR_PEER_ADDRESS)
                .and_then(|v| decode_xor_addr(v, &tid)),
            msg.get(attr::DATA),
        ) else {
            self.stats.dropped_malformed += 1;
            return ClientAction::None;
        };
        let Some(a) = self.allocs[idx as usize].as_mut() else {
            return ClientAction::None;
        };
        if a.tcp {
            // RFC 6062: a TCP allocation carries data over connections only.
            self.stats.dropped_no_permission += 1;
            return ClientAction::None;
        }
        if msg.has(attr::DONT_FRAGMENT) && !a.dont_fragment {
            // §11.2: DF is a property of the relay socket, set only for an Allocate that asked
            // for it; a server that cannot set DF for this datagram treats DONT-FRAGMENT as an
            // unknown comprehension-required attribute: the indication is discarded.
            self.stats.dropped_malformed += 1;
            return ClientAction::None;
        }
        // §11.2: sent from the relayed address of the peer's family, if the allocation has one.
        let Some(relay) = a.permitted_relay(peer.ip(), now) else {
            self.stats.dropped_no_permission += 1;
            return ClientAction::None;
        };
        // CreatePermission may have been checked without a port (port 0): the port matters for
        // the server's own addresses, so check the full address here. Port 0 cannot be sent to
        // (the kernel refuses it): dropped here rather than failing a send.
        if peer.port() == 0 || self.cfg.peer_filter.check(peer).is_err() {
            self.stats.peers_denied += 1;
            return ClientAction::None;
        }
        let clock = (now, self.base.0);
        let server = (self.cfg.limits.bps_capacity != 0).then_some(&self.shared.bandwidth);
        to_peer(
            &mut self.stats,
            (&mut self.credit, server),
            clock,
            a,
            relay,
            peer,
            payload,
        )
    }

    // ------------------------------------------------------------------ control path

    fn handle_stun<'a>(
        &mut self,
        now: Instant,
        tuple: FiveTuple,
        data: &'a [u8],
    ) -> ClientAction<'a> {
        let msg = match Message::parse(data) {
            Ok(m) => m,
            Err(ParseError::Malformed(why)) => {
                self.stats.dropped_malformed += 1;
                // RFC 8489 §6.3: a malformed request gets a 400; anything else is dropped.
                let (m, class) = decode_type(u16::from_be_bytes([data[0], data[1]]));
                // The per-source request rate applies to these answers too: a flood of
                // malformed requests from a spoofed source must not be reflected at any rate.
                let t = self.shared.limiter.ns(now);
                if class == Class::Request
                    && !self
                        .shared
                        .limiter
                        .request(&self.cfg.limits, tuple.client.ip(), t)
                {
                    self.stats.refused_rate_requests += 1;
                    return ClientAction::None;
                }
                if class == Class::Request {
                    let mut tid = [0u8; 12];
                    tid.copy_from_slice(&data[8..20]);
                    let req = Req {
                        tuple,
                        tid,
                        method: m,
                        fingerprint: false,
                    };
                    trace!(client = %tuple.client, why, "malformed request");
                    self.error(now, &req, None, 400, why, false);
                }
                return ClientAction::None;
            }
            Err(_) => {
                self.stats.dropped_not_turn += 1;
                return ClientAction::None;
            }
        };
        match msg.class {
            Class::Request => {
                // Per-source request rate: beyond it, drop silently (an answer is what a
                // flood from a spoofed source wants; a real client retransmits, RFC 8489 §6.2.1).
                let t = self.shared.limiter.ns(now);
                if !self
                    .shared
                    .limiter
                    .request(&self.cfg.limits, tuple.client.ip(), t)
                {
                    self.stats.refused_rate_requests += 1;
                    if self.may_log(now) {
                        debug!(event = "refused", reason = "request_rate", client = %tuple.client, "request rate limit");
                    }
                    return ClientAction::None;
                }
                self.handle_request(now, tuple, &msg);
                ClientAction::None
            }
            Class::Indication if msg.method == method::SEND => {
                // RFC 8489 §6.3.2: an indication with unknown comprehension-required
                // attributes is discarded.
                if msg.unknown_required(&mut [0u16; 8]) > 0 {
                    self.stats.dropped_malformed += 1;
                    return ClientAction::None;
                }
                self.send_indication(now, tuple, &msg)
            }
            // Binding indications are keepalives (RFC 8489 §3); responses are not for us.
            _ => ClientAction::None,
        }
    }

    fn handle_request(&mut self, now: Instant, tuple: FiveTuple, msg: &Message) {
        let req = Req {
            tuple,
            tid: msg.transaction_id(),
            method: msg.method,
            fingerprint: msg.has_fingerprint,
        };
        // RFC 8489 §6.3.1 / RFC 8656 §7.2: a retransmission gets the answer already given.
        if let Some(cached) = self.txn.get(&tuple, &req.tid) {
            let data = cached.to_vec();
            self.transmits.push_back(Transmit { tuple, data });
            return;
        }
        let mut unknown = [0u16; 8];
        let mut n = msg.unknown_required(&mut unknown);
        if n > 0 && msg.method == method::BINDING && self.rfc5780_on(&tuple) {
            // RFC 5780 §7.2 CHANGE-REQUEST is understood here; elsewhere it is an unknown
            // comprehension-required attribute: 420 (RFC 8489 §6.3.1).
            n = nat_discovery::strip_change_request(&mut unknown, n);
        }
        if n > 0 {
            // RFC 8489 §6.3: the unknown-attribute check comes after the authentication checks,
            // so a TURN request is challenged first and its 420 is signed (§9.2.4).
            let auth = match msg.method {
                method::ALLOCATE
                | method::REFRESH
                | method::CREATE_PERMISSION
                | method::CHANNEL_BIND
                | method::CONNECT
                | method::CONNECTION_BIND => match self.authenticate(now, &req, msg) {
                    Some(a) => Some(a),
                    None => return,
                },
                _ => None,
            };
            // RFC 8489 §6.3.1: 420 listing the unknown comprehension-required attributes.
            self.respond(
                now,
                &req,
                Class::Error,
                auth.as_ref().map(|a| (&a.key, a.kind)),
                false,
                |w| {
                    w.error_code(420, stun::reason(420))
                        .unknown_attributes(&unknown[..n]);
                },
            );
            return;
        }
        match msg.method {
            method::BINDING => self.binding(now, &req, msg),
            method::ALLOCATE => self.allocate(now, &req, msg),
            method::REFRESH => self.refresh(now, &req, msg),
            method::CREATE_PERMISSION => self.create_permission(now, &req, msg),
            method::CHANNEL_BIND => self.channel_bind(now, &req, msg),
            method::CONNECT => self.connect(now, &req, msg),
            method::CONNECTION_BIND => self.connection_bind(now, &req, msg),
            _ => self.error(now, &req, None, 400, "unknown method", false),
        }
    }

    /// Build and queue one response. `signer`: sign with MESSAGE-INTEGRITY(-SHA256) (RFC 8489
    /// §9.2.4: responses to authenticated requests are signed with the same key and algorithm).
    /// `cache`: remember it for retransmissions.
    fn respond(
        &mut self,
        now: Instant,
        req: &Req,
        class: Class,
        signer: Option<(&Key, IntegrityKind)>,
        cache: bool,
        body: impl FnOnce(&mut Writer),
    ) {
        let mut data = Vec::with_capacity(128);
        let mut w = Writer::new(&mut data, req.method, class, &req.tid);
        body(&mut w);
        if let Some(s) = &self.cfg.software {
            w.attr(attr::SOFTWARE, s.as_bytes());
        }
        if let Some((key, kind)) = signer {
            w.integrity(kind, key.as_bytes());
        }
        if req.fingerprint {
            w.fingerprint();
        }
        if cache {
            self.txn.insert(now, req.tuple, req.tid, data.clone());
        }
        self.transmits.push_back(Transmit {
            tuple: req.tuple,
            data,
        });
    }

    fn error(
        &mut self,
        now: Instant,
        req: &Req,
        auth: Option<&Authenticated>,
        code: u16,
        why: &str,
        cache: bool,
    ) {
        let signer = auth.map(|a| (a.key, a.kind));
        let reason = if why.is_empty() {
            stun::reason(code)
        } else {
            why
        };
        self.respond(
            now,
            req,
            Class::Error,
            signer.as_ref().map(|(k, c)| (k, *c)),
            cache,
            |w| {
                w.error_code(code, reason);
            },
        );
    }

    /// 401/438 carry REALM, a fresh NONCE and the PASSWORD-ALGORITHMS we accept (RFC 8489 §9.2.4).
    fn challenge(&mut self, now: Instant, req: &Req, code: u16) {
        // Reflection guard: a 401/438 is several times the size of the request that provoked
        // it, and needs no credentials; beyond the per-source rate it is not sent.
        let t = self.shared.limiter.ns(now);
        if !self
            .shared
            .limiter
            .challenge(&self.cfg.limits, req.tuple.client.ip(), t)
        {
            self.stats.refused_rate_401 += 1;
            if self.may_log(now) {
                debug!(event = "refused", reason = "challenge_rate", client = %req.tuple.client, code, "401 rate limit");
            }
            return;
        }
        let salt = self.next_rand() as u32;
        let nonce = self.auth.make_nonce(req.tuple.client, self.unix(now), salt);
        let realm = self.auth.realm().to_owned();
        let algorithms = self.auth.algorithms();
        self.respond(now, req, Class::Error, None, false, |w| {
            w.error_code(code, stun::reason(code))
                .attr(attr::REALM, realm.as_bytes())
                .attr(attr::NONCE, nonce.as_bytes())
                .attr(attr::PASSWORD_ALGORITHMS, algorithms);
        });
    }

    fn authenticate(&mut self, now: Instant, req: &Req, msg: &Message) -> Option<Authenticated> {
        // Failed-auth back-off: a request with credentials from a source or for a user in
        // back-off is dropped silently. Not a 401: that would be an answer to every guess (and
        // a reflection); the client sees loss and retransmits (RFC 8489 §6.2.1), by which time
        // the back-off may be over.
        let t = self.shared.limiter.ns(now);
        let ip = req.tuple.client.ip();
        let user = msg.get(attr::USERNAME).or_else(|| msg.get(attr::USERHASH));
        let has_creds = user.is_some() || msg.has(attr::MESSAGE_INTEGRITY);
        if has_creds && self.shared.limiter.auth_blocked(ip, user, t) {
            self.stats.refused_auth_backoff += 1;
            if self.may_log(now) {
                info!(event = "refused", reason = "auth_backoff", client = %req.tuple.client, "failed-auth back-off");
            }
            return None;
        }
        match self
            .auth
            .authenticate(msg, req.tuple.client, self.unix(now))
        {
            Ok(a) => {
                self.shared.limiter.auth_succeeded(ip);
                Some(a)
            }
            Err(AuthError::Challenge) => {
                self.stats.auth_challenges += 1;
                self.challenge(now, req, 401);
                None
            }
            Err(AuthError::StaleNonce) => {
                self.stats.stale_nonces += 1;
                debug!(client = %req.tuple.client, "stale nonce");
                self.challenge(now, req, 438);
                None
            }
            Err(AuthError::BadRequest(why)) => {
                self.stats.auth_failures += 1;
                self.stats.ops.auth_failure(ops::AuthFailure::BadRequest);
                info!(event = "auth_failure", client = %req.tuple.client, reason = why, "bad request");
                self.error(now, req, None, 400, why, false);
                None
            }
            Err(AuthError::Unauthorized(why)) => {
                self.stats.auth_failures += 1;
                self.shared
                    .limiter
                    .auth_failed(&self.cfg.limits, ip, user, t);
                self.stats
                    .ops
                    .auth_failure(ops::AuthFailure::from_unauthorized(why));
                let user = msg
                    .get(attr::USERNAME)
                    .map(|u| String::from_utf8_lossy(u).into_owned())
                    .unwrap_or_default();
                info!(event = "auth_failure", client = %req.tuple.client, user = %user, reason = why, "unauthorized");
                self.challenge(now, req, 401);
                None
            }
        }
    }

    /// RFC 8489 §7.3.1: answer with the reflexive transport address.
    fn binding(&mut self, now: Instant, req: &Req, msg: &Message) {
        let mapped = req.tuple.client;
        let mut r = *req;
        // Binding responses always carry FINGERPRINT (helps clients demultiplex, RFC 8489 §7).
        r.fingerprint = true;
        let nat = match self.cfg.rfc5780.filter(|_| self.rfc5780_on(&req.tuple)) {
            None => None,
            Some(cfg) => {
                let change = match msg.get(attr::CHANGE_REQUEST) {
                    None => Some((false, false)),
                    Some(v) => nat_discovery::change_request(v),
                };
                let Some((ip, port)) = change else {
                    self.error(now, req, None, 400, "malformed CHANGE-REQUEST", false);
                    return;
                };
                cfg.answer(req.tuple.server, ip, port)
            }
        };
        // Reflection guard: at most BINDING_MAX_GROWTH bytes more than the request, so SOFTWARE
        // (optional, RFC 8489 §14.14) goes in only when it fits. RFC 5780 (opt-in) adds its two
        // addresses on top of that bound.
        let addr_len = |a: SocketAddr| if a.is_ipv4() { 12 } else { 24 };
        let extra = nat.map_or(0, |a| addr_len(a.source) + addr_len(a.other));
        let base = 20 + addr_len(mapped) + extra + 8;
        let software = self.cfg.software.as_deref().filter(|s| {
            base + 4 + s.len().next_multiple_of(4) <= msg.wire_len() + BINDING_MAX_GROWTH + extra
        });
        let mut data = Vec::with_capacity(base + 8);
        let mut w = Writer::new(&mut data, r.method, Class::Success, &r.tid);
        w.xor_addr(attr::XOR_MAPPED_ADDRESS, mapped);
        if let Some(a) = nat {
            // RFC 5780 §7.3 RESPONSE-ORIGIN, §7.4 OTHER-ADDRESS (MAPPED-ADDRESS format).
            w.addr(attr::RESPONSE_ORIGIN, a.source)
                .addr(attr::OTHER_ADDRESS, a.other);
        }
        if let Some(s) = software {
            w.attr(attr::SOFTWARE, s.as_bytes());
        }
        w.fingerprint();
        let mut tuple = r.tuple;
        if let Some(a) = nat {
            // The runtime sends from the listener bound to `server` (RFC 5780 §7.2).
            tuple.server = a.source;
        }
        self.transmits.push_back(Transmit { tuple, data });
    }

    /// RFC 5780 applies to UDP requests received on one of its four addresses.
    fn rfc5780_on(&self, tuple: &FiveTuple) -> bool {
        tuple.transport == Transport::Udp
            && self
                .cfg
                .rfc5780
                .is_some_and(|c| c.answer(tuple.server, false, false).is_some())
    }

    /// The allocation on this 5-tuple, after the checks every request on an existing allocation
    /// makes: 437 if none, 441 if another user (RFC 8656 §7.3, §9.2, §11.2).
    fn owned_allocation(&mut self, now: Instant, req: &Req, auth: &Authenticated) -> Option<u32> {
        let Some(&idx) = self.by_tuple.get(&req.tuple) else {
            self.error(now, req, Some(auth), 437, "", true);
            return None;
        };
        let same_user = self.allocs[idx as usize]
            .as_ref()
            .is_some_and(|a| a.username == auth.username);
        if !same_user {
            self.error(now, req, Some(auth), 441, "", true);
            return None;
        }
        Some(idx)
    }

    /// RFC 8656 §7.2, including dual allocations (ADDITIONAL-ADDRESS-FAMILY, step 9): one
    /// relay socket per family, one 5-tuple, one quota unit, one port per relay.
    fn allocate(&mut self, now: Instant, req: &Req, msg: &Message) {
        // §7.2: a retransmission of the Allocate that made this allocation gets its success
        // again, also once the transaction cache has let it go (within the 40 s a client
        // retransmits; later the same ID is a new request and gets 437).
        if let Some(a) = self
            .by_tuple
            .get(&req.tuple)
            .and_then(|&i| self.allocs.get(i as usize)?.as_ref())
        {
            if a.created_by == req.tid
                && !a.created_answer.is_empty()
                && now < a.created + txn_cache::TXN_LIFETIME
            {
                let data = a.created_answer.to_vec();
                self.transmits.push_back(Transmit {
                    tuple: req.tuple,
                    data,
                });
                return;
            }
        }
        let Some(auth) = self.authenticate(now, req, msg) else {
            return;
        };
        if self.pending_by_tuple.contains_key(&req.tuple) {
            return; // a retransmission while the relay socket is being bound
        }
        if self.by_tuple.contains_key(&req.tuple) {
            self.error(now, req, Some(&auth), 437, "", true);
            return;
        }
        if self.draining {
            return self.refuse_draining(now, req, &auth);
        }
        match msg.get(attr::REQUESTED_TRANSPORT) {
            None => {
                return self.error(
                    now,
                    req,
                    Some(&auth),
                    400,
                    "missing REQUESTED-TRANSPORT",
                    true,
                )
            }
            Some(v) if v.len() != 4 => {
                return self.error(now, req, Some(&auth), 400, "bad REQUESTED-TRANSPORT", true)
            }
            // 17 = UDP (RFC 8656 §18.7), 6 = TCP (RFC 6062 §6.1).
            Some(v) if v[0] != 17 && v[0] != 6 => {
                return self.error(now, req, Some(&auth), 442, "", true)
            }
            Some(_) => {}
        }
        let tcp = msg
            .get(attr::REQUESTED_TRANSPORT)
            .is_some_and(|v| v[0] == 6);
        if tcp {
            if let Some(why) = tcp_relay::tcp_allocate_error(&req.tuple, msg) {
                return self.error(now, req, Some(&auth), 400, why, true);
            }
        }
        let dont_fragment = msg.has(attr::DONT_FRAGMENT);
        let token = msg.get(attr::RESERVATION_TOKEN);
        let even = msg.get(attr::EVEN_PORT);
        let family = msg.get(attr::REQUESTED_ADDRESS_FAMILY);
        // coturn's clients (turnutils_uclient -Z) still send the pre-RFC code point 0x8032.
        let additional = msg
            .get(attr::ADDITIONAL_ADDRESS_FAMILY)
            .or_else(|| msg.get(attr::ADDITIONAL_ADDRESS_FAMILY_DRAFT));
        // RFC 8656 §7.2 step 5, RFC 6156 §4.2: a token excludes EVEN-PORT and the
        // REQUESTED- and ADDITIONAL-ADDRESS-FAMILY attributes.
        if token.is_some() && (even.is_some() || family.is_some() || additional.is_some()) {
            return self.error(
                now,
                req,
                Some(&auth),
                400,
                "RESERVATION-TOKEN with EVEN-PORT or an ADDRESS-FAMILY",
                true,
            );
        }
        if family.is_some() && additional.is_some() {
            return self.error(
                now,
                req,
                Some(&auth),
                400,
                "REQUESTED- and ADDITIONAL-ADDRESS-FAMILY",
                true,
            );
        }
        // A token stands for the reserved address, family included (§7.2); one that is not
        // (or no longer) valid → 508, whatever families this server has.
        let token_id = token
            .and_then(|t| <[u8; 8]>::try_from(t).ok())
            .map(u64::from_be_bytes);
        let token_v6 = token_id.and_then(|t| self.shared.reserved_v6(t, now));
        if token.is_some() && token_v6.is_none() {
            return self.refuse_token(now, req, &auth);
        }
        let want_v6 = match family {
            None => token_v6.unwrap_or(false),
            Some([1, ..]) => false,
            Some([2, ..]) => true,
            Some(_) => return self.error(now, req, Some(&auth), 440, "", true),
        };
        let (bind_ip, external_ip) = if want_v6 {
            (self.cfg.relay_ip_v6, self.cfg.external_ip_v6)
        } else {
            (self.cfg.relay_ip_v4, self.cfg.external_ip_v4)
        };
        // Step 7: the requested family, or IPv4 when REQUESTED-ADDRESS-FAMILY is absent (also in
        // a dual Allocate, step 6), must be supported → else 440.
        let Some(bind_ip) = bind_ip else {
            return self.error(now, req, Some(&auth), 440, "", true);
        };
        let external_ip = external_ip.unwrap_or(bind_ip);
        let (even, reserve_next) = match even {
            None => (false, false),
            Some([flags, ..]) => (true, flags & 0x80 != 0),
            Some(_) => return self.error(now, req, Some(&auth), 400, "bad EVEN-PORT", true),
        };
        // Steps 8 and 9: ADDITIONAL-ADDRESS-FAMILY IPv6 asks for a dual allocation (an IPv4 and
        // an IPv6 relayed address); any other value → 400, and so does EVEN-PORT with R set.
        let dual = match additional {
            None => false,
            Some([2, ..]) => true,
            Some(_) => {
                let why = "ADDITIONAL-ADDRESS-FAMILY other than IPv6";
                return self.error(now, req, Some(&auth), 400, why, true);
            }
        };
        if dual && reserve_next {
            let why = "EVEN-PORT with R and ADDITIONAL-ADDRESS-FAMILY";
            return self.error(now, req, Some(&auth), 400, why, true);
        }
        // Step 9: a dual Allocate the server can only partly meet succeeds with the family it
        // can allocate and ADDRESS-ERROR-CODE for the other: 440 without an IPv6 relay address.
        let mut refused = [None; 2];
        let second = match (dual, self.cfg.relay_ip_v6) {
            (false, _) => None,
            (true, Some(ip)) => Some((ip, self.cfg.external_ip_v6.unwrap_or(ip))),
            (true, None) => {
                refused[V6] = Some(440);
                None
            }
        };
        let quotas = Quotas {
            per_user: self.cfg.user_quota,
            total: self.cfg.total_quota,
            per_ip: self.cfg.limits.allocations_per_ip,
            per_prefix: self.cfg.limits.allocations_per_prefix,
        };
        let client_ip = req.tuple.client.ip();
        if let Err(e) = self.shared.acquire_quota(&auth.username, client_ip, quotas) {
            // RFC 8656 §7.2: 486 for a quota of the client, 508 when the server is full.
            let (code, reason) = match e {
                QuotaError::User => (486, "user quota"),
                QuotaError::Ip => (486, "allocations per IP"),
                QuotaError::Prefix => (486, "allocations per prefix"),
                QuotaError::Total => (508, "total quota"),
            };
            match e {
                QuotaError::User => self.stats.ops.refusal(ops::Refusal::UserQuota),
                QuotaError::Total => self.stats.ops.refusal(ops::Refusal::TotalQuota),
                QuotaError::Ip | QuotaError::Prefix => {}
            }
            *match e {
                QuotaError::User => &mut self.stats.refused_quota_user,
                QuotaError::Ip => &mut self.stats.refused_quota_ip,
                QuotaError::Prefix => &mut self.stats.refused_quota_prefix,
                QuotaError::Total => &mut self.stats.refused_quota_total,
            } += 1;
            if self.may_log(now) {
                info!(event = "quota", user = %auth.username, client = %req.tuple.client, reason, "allocation refused");
            }
            return self.error(now, req, Some(&auth), code, "", true);
        }
        let (port, reservation, from_token) = if let Some(t) = token_id {
            match self.shared.redeem(t, now) {
                Some(p) => (Some(p), None, true),
                // Valid above, redeemed by another shard's Allocate since.
                None => {
                    self.shared.release_quota(&auth.username, client_ip);
                    return self.refuse_token(now, req, &auth);
                }
            }
        } else {
            match self
                .shared
                .take_port(even, reserve_next.then_some(bind_ip), now)
            {
                Some((p, tok)) => (Some(p), tok, false),
                None => (None, None, false),
            }
        };
        // The IPv6 relay of a dual allocation has a port of its own: relay ports are one pool
        // across families, and each relay gives its port back when it goes (§8.1 lets a
        // Refresh delete one family). EVEN-PORT (R = 0: R is refused above) applies to the IPv4
        // relayed address only: §7.2 asks for "a relayed transport address with an even port
        // number" and does not say which of the two.
        let second_port =
            second.and_then(|_| self.shared.take_port(false, None, now).map(|(p, _)| p));
        if dual {
            // Step 9: 508 for a family without a free port, if the other one has one.
            if port.is_none() {
                refused[V4] = Some(508);
            }
            if second.is_some() && second_port.is_none() {
                refused[V6] = Some(508);
            }
        }
        if port.is_none() && second_port.is_none() {
            self.shared.release_quota(&auth.username, client_ip);
            self.stats.ops.refusal(ops::Refusal::Capacity);
            info!(event = "capacity", client = %req.tuple.client, "relay port range exhausted");
            return self.error(now, req, Some(&auth), 508, "", true);
        }
        // RFC 8656 §7.2: an Allocate LIFETIME of 0 is not a delete; it gets the default.
        let requested = msg
            .get(attr::LIFETIME)
            .and_then(decode_u32)
            .filter(|&l| l != 0);
        let lifetime =
            desired_lifetime(requested, self.cfg.default_lifetime, self.cfg.max_lifetime);
        let leg = |port, bind_ip, external_ip, even| PendingRelay {
            relay: 0,
            port,
            bind_ip,
            external_ip,
            even,
            attempts: 1,
            state: LegState::Binding,
        };
        let mut legs = [None, None];
        if let Some(port) = port {
            legs[if want_v6 { V6 } else { V4 }] = Some(leg(port, bind_ip, external_ip, even));
        }
        if let (Some((bind_ip, external_ip)), Some(port)) = (second, second_port) {
            legs[V6] = Some(leg(port, bind_ip, external_ip, false));
        }
        // One relay socket per family, IPv4 first; the first one's slot owns the pending state.
        let mut owner = None;
        for l in legs.iter_mut().flatten() {
            let relay = self.new_relay_id();
            l.relay = relay;
            self.relays[relay as usize] = RelaySlot::PendingWith(owner.unwrap_or(relay));
            owner.get_or_insert(relay);
            self.commands.push_back(bind_command(
                relay,
                SocketAddr::new(l.bind_ip, l.port),
                dont_fragment,
                tcp,
            ));
        }
        let Some(owner) = owner else {
            // Not reached: at least one port was taken above.
            self.shared.release_quota(&auth.username, client_ip);
            return;
        };
        self.relays[owner as usize] = RelaySlot::Pending(Box::new(PendingAllocate {
            req: *req,
            auth,
            lifetime,
            dont_fragment,
            reserve_next,
            reservation,
            from_token,
            legs,
            refused,
            tcp,
            started: now,
        }));
        self.pending_by_tuple.insert(req.tuple, owner);
    }

    fn new_relay_id(&mut self) -> RelayId {
        match self.free_relays.pop() {
            Some(r) => r,
            None => {
                self.relays.push(RelaySlot::Free);
                (self.relays.len() - 1) as RelayId
            }
        }
    }

    /// The runtime's answer to [`RelayCommand::Bind`]: `Ok(local address)` or the bind error.
    /// A failed bind is retried on another port (up to [`MAX_BIND_ATTEMPTS`]); the Allocate is
    /// answered once each of its relay sockets is bound or given up on.
    pub fn on_relay_bound(
        &mut self,
        now: Instant,
        relay: RelayId,
        result: Result<SocketAddr, std::io::ErrorKind>,
    ) {
        let owner = match self.relays.get(relay as usize) {
            Some(RelaySlot::Pending(_)) => relay,
            Some(RelaySlot::PendingWith(owner)) => *owner,
            _ => return,
        };
        let slot = &mut self.relays[owner as usize];
        if !matches!(slot, RelaySlot::Pending(_)) {
            return;
        }
        let RelaySlot::Pending(p) = std::mem::replace(slot, RelaySlot::Free) else {
            return;
        };
        let mut p = *p;
        let leg = p
            .legs
            .iter_mut()
            .flatten()
            .find(|l| l.relay == relay && l.state == LegState::Binding);
        if let Some(leg) = leg {
            match result {
                Ok(local) => leg.state = LegState::Bound(local),
                Err(kind) => {
                    debug!(port = leg.port, ?kind, "relay bind failed");
                    self.shared.release_port(leg.port);
                    if let Some(t) = p.reservation.take() {
                        if let Some(port) = self.shared.redeem(t, now) {
                            self.shared.release_port(port);
                        }
                    }
                    let retry = !p.from_token && leg.attempts < MAX_BIND_ATTEMPTS;
                    let next = if retry {
                        let reserve_for = p.reserve_next.then_some(leg.bind_ip);
                        self.shared.take_port(leg.even, reserve_for, now)
                    } else {
                        None
                    };
                    match next {
                        Some((port, tok)) => {
                            leg.port = port;
                            leg.attempts += 1;
                            p.reservation = tok;
                            self.commands.push_back(bind_command(
                                relay,
                                SocketAddr::new(leg.bind_ip, port),
                                p.dont_fragment,
                                p.tcp,
                            ));
                        }
                        None => {
                            leg.state = LegState::Failed;
                            info!(event = "capacity", client = %p.req.tuple.client, ?kind, "could not bind a relay socket");
                        }
                    }
                }
            }
        }
        if p.legs
            .iter()
            .flatten()
            .any(|l| l.state == LegState::Binding)
        {
            self.relays[owner as usize] = RelaySlot::Pending(Box::new(p));
            return;
        }
        self.finish_allocate(now, p);
    }

    /// Every relay socket of a pending Allocate is bound or given up on: create the allocation
    /// and answer (RFC 8656 §7.2), or answer 508 if no socket could be bound.
    fn finish_allocate(&mut self, now: Instant, mut p: PendingAllocate) {
        self.pending_by_tuple.remove(&p.req.tuple);
        let expires = now + p.lifetime;
        let mut relays = [None, None];
        for (f, leg) in p.legs.iter().enumerate() {
            let Some(leg) = leg else { continue };
            if let LegState::Bound(local) = leg.state {
                relays[f] = Some(Relay {
                    id: leg.relay,
                    addr: SocketAddr::new(leg.external_ip, local.port()),
                    port: leg.port,
                    expires,
                });
            } else {
                // Given up on; its port is back in the pool. Step 9: 508 for this family if
                // the other one is allocated.
                self.relays[leg.relay as usize] = RelaySlot::Free;
                self.free_relays.push(leg.relay);
                p.refused[f] = Some(508);
            }
        }
        if relays.iter().all(Option::is_none) {
            self.shared
                .release_quota(&p.auth.username, p.req.tuple.client.ip());
            self.stats.ops.refusal(ops::Refusal::Capacity);
            let req = p.req;
            return self.error(now, &req, Some(&p.auth), 508, "", true);
        }
        let a = Allocation {
            tuple: p.req.tuple,
            username: p.auth.username.clone(),
            key: p.auth.key,
            kind: p.auth.kind,
            relays,
            created: now,
            permissions: Vec::new(),
            channels: Vec::new(),
            to_peer_packets: 0,
            to_peer_bytes: 0,
            to_client_packets: 0,
            to_client_bytes: 0,
            spliced_to_peer: 0,
            spliced_to_client: 0,
            tcp: p.tcp,
            dont_fragment: p.dont_fragment,
            armed: expires,
            tcp_peers: Vec::new(),
            connecting: Vec::new(),
            bw: [ByteBucket::new(self.cfg.limits.max_bps); 2],
            session_id: self.next_rand(),
            created_by: p.req.tid,
            created_answer: Box::default(),
        };
        let setup = now.saturating_duration_since(p.started).as_micros() as u64;
        self.stats
            .ops
            .setup_time
            .observe(ops::SETUP_US_BOUNDS, setup);
        ops::log_session_start(&a, &self.cfg.realm);
        let idx = match self.free_allocs.pop() {
            Some(i) => {
                self.allocs[i as usize] = Some(a);
                i
            }
            None => {
                self.allocs.push(Some(a));
                (self.allocs.len() - 1) as u32
            }
        };
        for r in relays.iter().flatten() {
            self.relays[r.id as usize] = RelaySlot::Active(idx);
        }
        self.by_tuple.insert(p.req.tuple, idx);
        self.timers.push(Reverse((expires, idx)));
        self.stats.allocations_created += 1;
        // DEBUG: `session_start` (ops::log_session_start) is the INFO record of the same event.
        debug!(
            event = "allocation_created",
            user = %p.auth.username,
            client = %p.req.tuple.client,
            transport = ?p.req.tuple.transport,
            relay = %RelayAddrs(&relays),
            lifetime = p.lifetime.as_secs(),
            "allocation created"
        );
        let mapped = p.req.tuple.client;
        let lifetime = p.lifetime.as_secs() as u32;
        let token = p.reservation;
        let refused = p.refused;
        // Not in the transaction cache: the allocation keeps these bytes for retransmissions
        // (`created_answer`, checked first thing in `allocate`).
        self.respond(
            now,
            &p.req,
            Class::Success,
            Some((&p.auth.key, p.auth.kind)),
            false,
            |w| {
                // §7.2: one XOR-RELAYED-ADDRESS per relayed address (IPv4 first).
                for r in relays.iter().flatten() {
                    w.xor_addr(attr::XOR_RELAYED_ADDRESS, r.addr);
                }
                w.u32(attr::LIFETIME, lifetime);
                if let Some(t) = token {
                    w.attr(attr::RESERVATION_TOKEN, &t.to_be_bytes());
                }
                w.xor_addr(attr::XOR_MAPPED_ADDRESS, mapped);
                // §7.2 step 9, §18.12: family 0x01 IPv4, 0x02 IPv6.
                for (f, code) in refused.iter().enumerate() {
                    if let Some(code) = *code {
                        w.address_error_code(f as u8 + 1, code, stun::reason(code));
                    }
                }
            },
        );
        if let (Some(t), Some(Some(a))) = (self.transmits.back(), self.allocs.get_mut(idx as usize))
        {
            a.created_answer = t.data.as_slice().into();
        }
    }

    /// §7.2: a RESERVATION-TOKEN that names no (or no longer a) reservation → 508.
    fn refuse_token(&mut self, now: Instant, req: &Req, auth: &Authenticated) {
        self.error(now, req, Some(auth), 508, "invalid reservation token", true);
    }

    /// RFC 8656 §8.2.
    fn refresh(&mut self, now: Instant, req: &Req, msg: &Message) {
        let Some(auth) = self.authenticate(now, req, msg) else {
            return;
        };
        let Some(idx) = self.owned_allocation(now, req, &auth) else {
            return;
        };
        // §8.1 / §8.2: REQUESTED-ADDRESS-FAMILY names the relayed address the Refresh is for
        // (one family of a dual allocation; without it, every relayed address); a family the
        // allocation does not have → 443. Unknown family values are ignored.
        let fam = match msg.get(attr::REQUESTED_ADDRESS_FAMILY) {
            Some([1, ..]) => Some(V4),
            Some([2, ..]) => Some(V6),
            _ => None,
        };
        let has = self.families(idx);
        if fam.is_some_and(|f| !has[f]) {
            return self.error(now, req, Some(&auth), 443, "", true);
        }
        let requested = msg.get(attr::LIFETIME).and_then(decode_u32);
        let lifetime =
            desired_lifetime(requested, self.cfg.default_lifetime, self.cfg.max_lifetime);
        if lifetime.is_zero() {
            // §8.1: with REQUESTED-ADDRESS-FAMILY, LIFETIME 0 deletes that family's relayed
            // address only (the allocation goes with its last one).
            match fam {
                Some(f) => self.delete_relay(now, idx, f, "refreshed to 0"),
                None => self.delete_allocation(now, idx, "refreshed to 0"),
            }
        } else if let Some(a) = self.allocs[idx as usize].as_mut() {
            let expires = now + lifetime;
            for (f, r) in a.relays.iter_mut().enumerate() {
                if let Some(r) = r.as_mut().filter(|_| fam.unwrap_or(f) == f) {
                    r.expires = expires;
                }
            }
            // Only a shorter lifetime needs an earlier entry; a longer one is picked up when
            // the armed entry fires.
            if let Some(next) = a.next_expiry().filter(|&t| t < a.armed) {
                a.armed = next;
                self.timers.push(Reverse((next, idx)));
            }
        }
        let secs = lifetime.as_secs() as u32;
        self.respond(
            now,
            req,
            Class::Success,
            Some((&auth.key, auth.kind)),
            true,
            |w| {
                w.u32(attr::LIFETIME, secs);
            },
        );
    }

    /// Decode a XOR-PEER-ADDRESS and apply the family and peer-filter checks shared by
    /// CreatePermission and ChannelBind. Err: (code, reason) for the error response.
    /// `families`: which relayed addresses the allocation has, by family ([`V4`], [`V6`]).
    fn check_peer(
        &mut self,
        req: &Req,
        v: &[u8],
        families: [bool; 2],
        permission_only: bool,
    ) -> Result<SocketAddr, (u16, &'static str)> {
        let peer = decode_xor_addr(v, &req.tid).ok_or((400, "bad XOR-PEER-ADDRESS"))?;
        // RFC 8656 §10.2 / §12.2: the peer must be of the family of a relayed address of the
        // allocation (either one of a dual allocation).
        if !families[allocation::family(peer.ip())] {
            return Err((443, "Peer Address Family Mismatch"));
        }
        // A channel to port 0 could carry nothing: no datagram can be sent to port 0.
        if !permission_only && peer.port() == 0 {
            return Err((400, "Bad Request: peer port 0"));
        }
        let verdict = if permission_only {
            self.cfg.peer_filter.check_permission(peer)
        } else {
            self.cfg.peer_filter.check(peer)
        };
        if let Err(reason) = verdict {
            self.stats.peers_denied += 1;
            info!(event = "peer_denied", client = %req.tuple.client, peer = %peer, reason = %reason, "peer address forbidden");
            return Err((403, "Forbidden"));
        }
        Ok(peer)
    }

    /// Which relayed addresses allocation `idx` has, by family ([`V4`], [`V6`]).
    fn families(&self, idx: u32) -> [bool; 2] {
        self.allocs[idx as usize]
            .as_ref()
            .map_or([false; 2], |a| a.relays.map(|r| r.is_some()))
    }

    /// RFC 8656 §9.2: all XOR-PEER-ADDRESSes are checked before any permission is installed.
    fn create_permission(&mut self, now: Instant, req: &Req, msg: &Message) {
        let Some(auth) = self.authenticate(now, req, msg) else {
            return;
        };
        let Some(idx) = self.owned_allocation(now, req, &auth) else {
            return;
        };
        let families = self.families(idx);
        let mut peers = [IpAddr::from([0u8; 4]); stun::MAX_ATTRS];
        let mut n = 0;
        for (t, v) in msg.iter() {
            if t != attr::XOR_PEER_ADDRESS {
                continue;
            }
            match self.check_peer(req, v, families, true) {
                Ok(p) => {
                    peers[n] = p.ip();
                    n += 1;
                }
                Err((code, why)) => return self.error(now, req, Some(&auth), code, why, true),
            }
        }
        if n == 0 {
            return self.error(now, req, Some(&auth), 400, "missing XOR-PEER-ADDRESS", true);
        }
        let Some(a) = self.allocs[idx as usize].as_mut() else {
            return;
        };
        let cap = self.cfg.limits.max_permissions;
        // Room for all of them first, so a 508 leaves no permission behind.
        let ok = a.permissions_fit(&peers[..n], now, cap)
            && peers[..n].iter().all(|ip| a.add_permission(*ip, now, cap));
        if !ok {
            // RFC 8656 §9.2: 508 when the server cannot install the permissions.
            self.stats.refused_permissions += 1;
            if self.may_log(now) {
                info!(event = "refused", reason = "permissions", client = %req.tuple.client, cap, "too many permissions");
            }
            return self.error(now, req, Some(&auth), 508, "too many permissions", true);
        }
        self.respond(
            now,
            req,
            Class::Success,
            Some((&auth.key, auth.kind)),
            true,
            |_| {},
        );
    }

    /// RFC 8656 §11.2.
    fn channel_bind(&mut self, now: Instant, req: &Req, msg: &Message) {
        let Some(auth) = self.authenticate(now, req, msg) else {
            return;
        };
        let Some(idx) = self.owned_allocation(now, req, &auth) else {
            return;
        };
        if self.allocs[idx as usize].as_ref().is_some_and(|a| a.tcp) {
            // RFC 6062 §5: data on a TCP allocation flows over connections, not channels.
            return self.error(
                now,
                req,
                Some(&auth),
                400,
                "ChannelBind on a TCP allocation",
                true,
            );
        }
        let number = match msg.get(attr::CHANNEL_NUMBER) {
            Some(v) if v.len() == 4 => u16::from_be_bytes([v[0], v[1]]),
            _ => return self.error(now, req, Some(&auth), 400, "missing CHANNEL-NUMBER", true),
        };
        if !(channel_data::MIN_CHANNEL..=self.cfg.max_channel()).contains(&number) {
            let why = if self.cfg.legacy_channel_numbers {
                "channel number outside 0x4000-0x7FFF"
            } else {
                "channel number outside 0x4000-0x4FFF (RFC 8656 12); see legacy-channel-numbers"
            };
            return self.error(now, req, Some(&auth), 400, why, true);
        }
        let Some(v) = msg.get(attr::XOR_PEER_ADDRESS) else {
            return self.error(now, req, Some(&auth), 400, "missing XOR-PEER-ADDRESS", true);
        };
        let families = self.families(idx);
        let peer = match self.check_peer(req, v, families, false) {
            Ok(p) => p,
            Err((code, why)) => return self.error(now, req, Some(&auth), code, why, true),
        };
        let Some(a) = self.allocs[idx as usize].as_mut() else {
            return;
        };
        let (max_channels, max_permissions) = (
            self.cfg.limits.max_channels,
            self.cfg.limits.max_permissions,
        );
        // A conflicting binding is a 400 whatever the capacity.
        if let Some(why) = a.channel_conflict(number, peer, now) {
            return self.error(now, req, Some(&auth), 400, why, true);
        }
        // §12.2: binding a channel installs or refreshes the permission for the peer's IP;
        // checked before the binding, so a 508 leaves no channel behind.
        if !a.permissions_fit(&[peer.ip()], now, max_permissions) {
            self.stats.refused_permissions += 1;
            return self.error(now, req, Some(&auth), 508, "too many permissions", true);
        }
        if let Err(why) = a.bind_channel(number, peer, now, max_channels) {
            // RFC 8656 §12.2: 508 Insufficient Capacity when out of resources; a conflicting
            // binding is a 400.
            if why == allocation::TOO_MANY_CHANNELS {
                self.stats.refused_channels += 1;
                if self.may_log(now) {
                    info!(event = "refused", reason = "channels", client = %req.tuple.client, cap = max_channels, "too many channels");
                }
                return self.error(now, req, Some(&auth), 508, why, true);
            }
            return self.error(now, req, Some(&auth), 400, why, true);
        }
        if !a.add_permission(peer.ip(), now, max_permissions) {
            self.stats.refused_permissions += 1;
            return self.error(now, req, Some(&auth), 508, "too many permissions", true);
        }
        self.respond(
            now,
            req,
            Class::Success,
            Some((&auth.key, auth.kind)),
            true,
            |_| {},
        );
    }

    // ------------------------------------------------------------------ timers

    /// Expire allocations whose time is up (RFC 8656 §7: time-to-expiry) and old cached answers.
    /// Permissions and channels expire by comparison at use, so they need no timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&Reverse((t, idx))) = self.timers.peek() {
            if t > now {
                break;
            }
            self.timers.pop();
            // A superseded entry (an earlier one was pushed since), or one of a deleted
            // allocation whose slot was reused: the armed entry decides.
            let Some(a) = self.allocs[idx as usize].as_ref().filter(|a| a.armed == t) else {
                continue;
            };
            if a.expires().is_some_and(|t| t <= now) {
                self.delete_allocation(now, idx, "expired");
                continue;
            }
            // §8.1: the relayed addresses of a dual allocation expire one by one.
            let expired = a.relays.map(|r| r.is_some_and(|r| r.expires <= now));
            for f in [V4, V6] {
                if expired[f] {
                    self.delete_relay(now, idx, f, "expired");
                }
            }
            // Still there (refreshed, or a family left): arm for its next expiry.
            if let Some(a) = self.allocs[idx as usize].as_mut() {
                if let Some(next) = a.next_expiry() {
                    a.armed = next;
                    self.timers.push(Reverse((next, idx)));
                }
            }
        }
        self.expire_connections(now);
        self.txn.expire(now);
    }

    fn delete_allocation(&mut self, now: Instant, idx: u32, reason: &'static str) {
        let Some(a) = self.allocs[idx as usize].take() else {
            return;
        };
        self.free_allocs.push(idx);
        self.by_tuple.remove(&a.tuple);
        for r in a.relays.iter().flatten() {
            self.close_relay(r);
        }
        if a.tcp {
            self.close_tcp_connections(now, &a);
        }
        self.shared.release_quota(&a.username, a.tuple.client.ip());
        self.stats.allocations_deleted += 1;
        let end = ops::EndReason::from_reason(reason);
        self.stats.ops.sessions_ended[end as usize] += 1;
        let secs = now.saturating_duration_since(a.created).as_secs();
        self.stats
            .ops
            .session_duration
            .observe(ops::DURATION_S_BOUNDS, secs);
        ops::log_session_end(&a, &self.cfg.realm, now, end);
        // DEBUG: `session_end` above is the INFO record (~10 % of the CPU of an allocation went to
        // writing these two lines as well; benches/README.md).
        debug!(
            event = "allocation_deleted",
            reason,
            user = %a.username,
            client = %a.tuple.client,
            relay = %RelayAddrs(&a.relays),
            duration_s = now.saturating_duration_since(a.created).as_secs(),
            to_peer_bytes = a.to_peer_bytes,
            to_client_bytes = a.to_client_bytes,
            "allocation deleted"
        );
    }

    /// RFC 8656 §8.1: delete the relayed address of family `fam` ([`V4`], [`V6`]) of a dual
    /// allocation, with the permissions and channels of that family; deleting the last one
    /// deletes the allocation.
    fn delete_relay(&mut self, now: Instant, idx: u32, fam: usize, reason: &'static str) {
        let Some(a) = self.allocs[idx as usize].as_mut() else {
            return;
        };
        if a.relays[1 - fam].is_none() {
            return self.delete_allocation(now, idx, reason);
        }
        let Some(r) = a.relays[fam].take() else {
            return;
        };
        a.forget_family(fam);
        info!(
            event = "relay_deleted",
            reason,
            user = %a.username,
            client = %a.tuple.client,
            relay = %r.addr,
            "relayed address deleted"
        );
        self.close_relay(&r);
    }

    /// Free a relay's slot and port, and have the runtime close its socket.
    fn close_relay(&mut self, r: &Relay) {
        self.relays[r.id as usize] = RelaySlot::Free;
        self.free_relays.push(r.id);
        self.commands.push_back(RelayCommand::Close { relay: r.id });
        self.shared.release_port(r.port);
    }

    /// The client's TCP or TLS connection is gone: so is the allocation made over it (RFC 8656
    /// §3.1: the allocation is bound to the 5-tuple, which no longer exists).
    pub fn on_client_closed(&mut self, now: Instant, tuple: FiveTuple) {
        if let Some(&idx) = self.by_tuple.get(&tuple) {
            self.delete_allocation(now, idx, "connection closed");
        }
    }

    /// Start or stop draining: new Allocates are refused (300 Try Alternate or 508), existing
    /// allocations are refreshed and relayed as before.
    pub fn set_draining(&mut self, on: bool) {
        self.draining = on;
    }

    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// RFC 8489 §10 (ALTERNATE-SERVER mechanism), RFC 8656 §7.2: while draining, an
    /// authenticated Allocate is redirected with 300 Try Alternate and an ALTERNATE-SERVER of
    /// the client's address family (RFC 8489 §14.15), signed like any answer to an
    /// authenticated request; without one, 508 Insufficient Capacity.
    fn refuse_draining(&mut self, now: Instant, req: &Req, auth: &Authenticated) {
        let family = req.tuple.client.is_ipv4();
        let n = self
            .cfg
            .alternate_servers
            .iter()
            .filter(|a| a.is_ipv4() == family)
            .count();
        if n == 0 {
            self.stats.ops.refusal(ops::Refusal::DrainRefused);
            return self.error(now, req, Some(auth), 508, "draining", true);
        }
        // Spread redirected clients over the alternates, as coturn's round robin does.
        let pick = (self.next_rand() % n as u64) as usize;
        let Some(alt) = self
            .cfg
            .alternate_servers
            .iter()
            .filter(|a| a.is_ipv4() == family)
            .nth(pick)
            .copied()
        else {
            return;
        };
        self.stats.ops.refusal(ops::Refusal::DrainRedirect);
        self.respond(
            now,
            req,
            Class::Error,
            Some((&auth.key, auth.kind)),
            true,
            |w| {
                w.error_code(300, stun::reason(300))
                    .addr(attr::ALTERNATE_SERVER, alt);
            },
        );
    }

    /// The sessions (allocations) of this shard, for the admin API.
    pub fn sessions(&self, now: Instant) -> Vec<ops::SessionInfo> {
        self.allocations()
            .map(|a| ops::SessionInfo::of(a, now))
            .collect()
    }

    /// Allocation, permission and channel gauges by transport (scans every allocation).
    pub fn gauges(&self, now: Instant) -> ops::Gauges {
        ops::Gauges::of(self.allocations(), now)
    }

    /// Delete the allocation with session id `id` (admin API), as if it had expired: its relay
    /// sockets close and a later Refresh on its 5-tuple gets 437. Returns whether it was here.
    pub fn kill_session(&mut self, now: Instant, id: u64) -> bool {
        let idx = self
            .allocs
            .iter()
            .position(|a| a.as_ref().is_some_and(|a| a.session_id == id));
        match idx {
            Some(i) => {
                self.delete_allocation(now, i as u32, "killed");
                true
            }
            None => false,
        }
    }

    /// Delete every allocation of `user` (a revoked user); returns how many. A TURN REST API
    /// name `expiry:user` is `user`'s too: the credential service revokes a person, not one of
    /// the time-limited names it handed out.
    pub fn kill_user(&mut self, now: Instant, user: &str) -> usize {
        let mut n = 0;
        for i in 0..self.allocs.len() {
            if self.allocs[i]
                .as_ref()
                .is_some_and(|a| ops::names_user(&a.username, user))
            {
                self.delete_allocation(now, i as u32, "killed");
                n += 1;
            }
        }
        n
    }

    /// Delete every allocation (shutdown): frees ports and quotas, queues Close commands.
    pub fn close_all(&mut self, now: Instant) {
        for idx in 0..self.allocs.len() as u32 {
            if self.allocs[idx as usize].is_some() {
                self.delete_allocation(now, idx, "shutdown");
            }
        }
    }
}

/// The relayed addresses of an allocation, for logs: `a` or `a, b`.
struct RelayAddrs<'a>(&'a [Option<Relay>; 2]);

impl std::fmt::Display for RelayAddrs<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, r) in self.0.iter().flatten().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{}", r.addr)?;
        }
        Ok(())
    }
}

/// Index of the client → peer bucket in [`Allocation::bw`].
const UP: usize = 0;
/// Index of the peer → client bucket in [`Allocation::bw`].
const DOWN: usize = 1;

/// Count a client → peer datagram (allocation and shard counters) and hand it to the runtime,
/// unless a bandwidth limit drops it. `clock`: (now, the engine's base instant); the time is
/// only computed when a limit is set.
#[inline(always)]
fn to_peer<'a>(
    stats: &mut Stats,
    (credit, server): (&mut ShardCredit, Option<&ServerBandwidth>),
    clock: (Instant, Instant),
    a: &mut Allocation,
    relay: RelayId,
    peer: SocketAddr,
    payload: &'a [u8],
) -> ClientAction<'a> {
    if !a.bw[UP].unlimited() {
        let t = clock.0.saturating_duration_since(clock.1).as_nanos() as u64;
        if !a.bw[UP].take(t, payload.len()) {
            stats.dropped_bandwidth_allocation += 1;
            return ClientAction::None;
        }
    }
    if let Some(server) = server {
        if !credit.take(server, clock.0, payload.len()) {
            stats.dropped_bandwidth_server += 1;
            return ClientAction::None;
        }
    }
    a.to_peer_packets += 1;
    a.to_peer_bytes += payload.len() as u64;
    stats.packets_to_peer += 1;
    stats.bytes_to_peer += payload.len() as u64;
    ClientAction::ToPeer {
        relay,
        peer,
        payload,
    }
}

fn bind_command(relay: RelayId, addr: SocketAddr, dont_fragment: bool, tcp: bool) -> RelayCommand {
    if tcp {
        RelayCommand::BindTcp { relay, addr }
    } else {
        RelayCommand::Bind {
            relay,
            addr,
            dont_fragment,
        }
    }
}

#[cfg(test)]
mod tests;
