//! Operations support in the engine: per-shard histograms and counters by reason (published
//! with [`super::Stats`], summed at scrape time), the `session_start` / `session_end` usage
//! records, the session snapshot the admin API lists, and kill by id or user.
//!
//! Everything here is plain integers owned by the shard; nothing is shared per packet.
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tracing::info;

use super::allocation::Allocation;
use super::Transport;

/// Upper bounds (inclusive, µs) of the allocation setup-time buckets: from the Allocate request
/// being handled to the success answer, relay-socket bind included.
pub const SETUP_US_BOUNDS: &[u64] = &[
    25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 100_000,
];
/// Upper bounds (s) of the session-duration buckets.
pub const DURATION_S_BOUNDS: &[u64] = &[
    1, 5, 10, 30, 60, 120, 300, 600, 1_800, 3_600, 7_200, 21_600, 86_400,
];
/// Upper bounds (datagrams) of the relay batch-size buckets (one recvmmsg call).
pub const BATCH_BOUNDS: &[u64] = &[1, 2, 3, 4, 6, 8, 12, 16];

/// Most buckets a [`Histogram`] holds, +Inf included.
pub const MAX_BUCKETS: usize = 16;

/// A fixed-bucket histogram in integer units. `counts[i]` counts observations in bucket `i`
/// alone (not cumulative; the exporter sums); `counts[bounds.len()]` is the +Inf bucket.
#[derive(Clone, Copy, Debug)]
pub struct Histogram {
    pub counts: [u64; MAX_BUCKETS],
    pub sum: u64,
    pub count: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: [0; MAX_BUCKETS],
            sum: 0,
            count: 0,
        }
    }
}

impl Histogram {
    /// No allocation, no shared state: a scan of at most [`MAX_BUCKETS`] bounds.
    #[inline]
    pub fn observe(&mut self, bounds: &[u64], v: u64) {
        debug_assert!(bounds.len() < MAX_BUCKETS);
        let i = bounds.iter().position(|&b| v <= b).unwrap_or(bounds.len());
        self.counts[i] += 1;
        self.sum = self.sum.saturating_add(v);
        self.count += 1;
    }

    pub fn merge(&mut self, o: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(o.counts.iter()) {
            *a += b;
        }
        self.sum = self.sum.saturating_add(o.sum);
        self.count += o.count;
    }
}

/// Why authentication failed (the `reason` label of `ferroturn_auth_failures_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthFailure {
    /// 400: integrity present but attributes missing or inconsistent.
    BadRequest,
    UnknownUser,
    /// Wrong password (or an expired / forged REST credential).
    BadIntegrity,
    WrongRealm,
    Other,
}

impl AuthFailure {
    pub const ALL: [AuthFailure; 5] = [
        AuthFailure::BadRequest,
        AuthFailure::UnknownUser,
        AuthFailure::BadIntegrity,
        AuthFailure::WrongRealm,
        AuthFailure::Other,
    ];

    pub fn label(self) -> &'static str {
        match self {
            AuthFailure::BadRequest => "bad_request",
            AuthFailure::UnknownUser => "unknown_user",
            AuthFailure::BadIntegrity => "bad_integrity",
            AuthFailure::WrongRealm => "wrong_realm",
            AuthFailure::Other => "other",
        }
    }

    /// From the reason text of an `AuthError::Unauthorized`.
    pub fn from_unauthorized(why: &str) -> Self {
        match why {
            "unknown user" => AuthFailure::UnknownUser,
            "bad MESSAGE-INTEGRITY" => AuthFailure::BadIntegrity,
            "wrong realm" => AuthFailure::WrongRealm,
            _ => AuthFailure::Other,
        }
    }
}

/// Why a request or a datagram was refused (the `reason` label of
/// `ferroturn_refusals_total`), beyond the counters [`super::Stats`] already had.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 486: the user's allocation quota.
    UserQuota,
    /// 508: the server-wide allocation quota.
    TotalQuota,
    /// 508: no relay port or socket.
    Capacity,
    /// 300 Try Alternate while draining.
    DrainRedirect,
    /// 508 while draining (no alternate-server).
    DrainRefused,
}

impl Refusal {
    pub const ALL: [Refusal; 5] = [
        Refusal::UserQuota,
        Refusal::TotalQuota,
        Refusal::Capacity,
        Refusal::DrainRedirect,
        Refusal::DrainRefused,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Refusal::UserQuota => "user_quota",
            Refusal::TotalQuota => "total_quota",
            Refusal::Capacity => "capacity",
            Refusal::DrainRedirect => "draining_redirect",
            Refusal::DrainRefused => "draining_refused",
        }
    }
}

/// Why a session ended (the `reason` field of `session_end`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// RFC 8656 §8.2: Refresh with LIFETIME 0.
    Refresh0,
    Expired,
    /// The TCP/TLS connection carrying it closed.
    ClientClosed,
    /// Deleted by an operator (admin API).
    Killed,
    Shutdown,
}

impl EndReason {
    pub const ALL: [EndReason; 5] = [
        EndReason::Refresh0,
        EndReason::Expired,
        EndReason::ClientClosed,
        EndReason::Killed,
        EndReason::Shutdown,
    ];

    pub fn label(self) -> &'static str {
        match self {
            EndReason::Refresh0 => "refresh0",
            EndReason::Expired => "expired",
            EndReason::ClientClosed => "client_closed",
            EndReason::Killed => "killed",
            EndReason::Shutdown => "shutdown",
        }
    }

    /// From the reason text the engine logs in `allocation_deleted`.
    pub fn from_reason(reason: &str) -> Self {
        match reason {
            "refreshed to 0" => EndReason::Refresh0,
            "expired" => EndReason::Expired,
            "connection closed" => EndReason::ClientClosed,
            "killed" => EndReason::Killed,
            _ => EndReason::Shutdown,
        }
    }
}

/// Operations counters of one shard; part of [`super::Stats`].
#[derive(Clone, Debug, Default)]
pub struct OpsStats {
    /// By [`AuthFailure`] (index = position in [`AuthFailure::ALL`]).
    pub auth_failures: [u64; 5],
    /// By [`Refusal`].
    pub refusals: [u64; 5],
    /// Sessions ended, by [`EndReason`].
    pub sessions_ended: [u64; 5],
    /// µs, bounds [`SETUP_US_BOUNDS`].
    pub setup_time: Histogram,
    /// s, bounds [`DURATION_S_BOUNDS`].
    pub session_duration: Histogram,
}

impl OpsStats {
    #[inline]
    pub fn auth_failure(&mut self, f: AuthFailure) {
        self.auth_failures[f as usize] += 1;
    }

    #[inline]
    pub fn refusal(&mut self, r: Refusal) {
        self.refusals[r as usize] += 1;
    }
}

/// One session (allocation) as the admin API lists it.
#[derive(Clone, Debug)]
pub struct SessionInfo {
    pub id: u64,
    pub user: String,
    pub transport: Transport,
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub relays: Vec<SocketAddr>,
    pub tcp_relay: bool,
    pub age: Duration,
    pub to_peer_packets: u64,
    pub to_peer_bytes: u64,
    pub to_client_packets: u64,
    pub to_client_bytes: u64,
    pub permissions: usize,
    pub channels: usize,
}

impl SessionInfo {
    pub fn of(a: &Allocation, now: Instant) -> Self {
        SessionInfo {
            id: a.session_id,
            user: a.username.clone(),
            transport: a.tuple.transport,
            client: a.tuple.client,
            server: a.tuple.server,
            relays: a.relays.iter().flatten().map(|r| r.addr).collect(),
            tcp_relay: a.tcp,
            age: now.saturating_duration_since(a.created),
            to_peer_packets: a.to_peer_packets,
            // RFC 6062: plus the data connections that ended (the runtime adds live ones).
            to_peer_bytes: a.to_peer_bytes + a.spliced_to_peer,
            to_client_packets: a.to_client_packets,
            to_client_bytes: a.to_client_bytes + a.spliced_to_client,
            permissions: a.permissions.iter().filter(|p| p.expires > now).count(),
            channels: a.channels.iter().filter(|c| c.expires > now).count(),
        }
    }
}

/// Live permissions and channels of the allocations of one shard, by client transport
/// ([`Transport`] as index: UDP, TCP, TLS); for the gauges.
#[derive(Clone, Copy, Debug, Default)]
pub struct Gauges {
    pub allocations: [u64; 3],
    pub permissions: [u64; 3],
    pub channels: [u64; 3],
}

impl Gauges {
    /// Scans every allocation: called once per publish period, not per packet.
    pub fn of<'a>(allocs: impl Iterator<Item = &'a Allocation>, now: Instant) -> Self {
        let mut g = Gauges::default();
        for a in allocs {
            let t = transport_index(a.tuple.transport);
            g.allocations[t] += 1;
            g.permissions[t] += a.permissions.iter().filter(|p| p.expires > now).count() as u64;
            g.channels[t] += a.channels.iter().filter(|c| c.expires > now).count() as u64;
        }
        g
    }

    pub fn merge(&mut self, o: &Gauges) {
        for i in 0..3 {
            self.allocations[i] += o.allocations[i];
            self.permissions[i] += o.permissions[i];
            self.channels[i] += o.channels[i];
        }
    }
}

pub fn transport_index(t: Transport) -> usize {
    match t {
        Transport::Udp => 0,
        Transport::Tcp => 1,
        Transport::Tls => 2,
    }
}

pub fn transport_label(t: Transport) -> &'static str {
    match t {
        Transport::Udp => "udp",
        Transport::Tcp => "tcp",
        Transport::Tls => "tls",
    }
}

/// Session ids as the logs and the admin API show them: 16 hex digits.
pub struct SessionId(pub u64);

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// The relayed addresses, comma-separated.
struct Relays<'a>(&'a Allocation);

impl std::fmt::Display for Relays<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, r) in self.0.relays.iter().flatten().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}", r.addr)?;
        }
        Ok(())
    }
}

/// The usage record's first half: the session exists.
pub fn log_session_start(a: &Allocation, realm: &str) {
    info!(
        event = "session_start",
        session = %SessionId(a.session_id),
        user = %a.username,
        realm,
        transport = transport_label(a.tuple.transport),
        client = %a.tuple.client,
        server = %a.tuple.server,
        relay = %Relays(a),
        "session started"
    );
}

/// RFC 6062: a peer data connection of a TCP allocation ended. Its bytes (piped between the
/// client's data connection and the peer, never through the allocation) are in this record, not
/// in the allocation's `session_end`; `session` joins the two.
pub fn log_tcp_connection_end(
    session: u64,
    conn_id: u32,
    peer: SocketAddr,
    duration: Duration,
    to_peer_bytes: u64,
    to_client_bytes: u64,
) {
    info!(
        event = "tcp_connection_end",
        session = %SessionId(session),
        connection_id = conn_id,
        peer = %peer,
        duration_ms = duration.as_millis() as u64,
        to_peer_bytes,
        to_client_bytes,
        "TCP peer connection ended"
    );
}

/// The usage record operators bill from: who, over which 5-tuple, how long, how much.
pub fn log_session_end(a: &Allocation, realm: &str, now: Instant, reason: EndReason) {
    info!(
        event = "session_end",
        session = %SessionId(a.session_id),
        user = %a.username,
        realm,
        transport = transport_label(a.tuple.transport),
        client = %a.tuple.client,
        server = %a.tuple.server,
        relay = %Relays(a),
        duration_ms = now.saturating_duration_since(a.created).as_millis() as u64,
        to_peer_packets = a.to_peer_packets,
        to_peer_bytes = a.to_peer_bytes,
        to_client_packets = a.to_client_packets,
        to_client_bytes = a.to_client_bytes,
        reason = reason.label(),
        "session ended"
    );
}

/// Whether the allocation `username` belongs to `user` (admin kill): the same name, or a
/// TURN REST API name `expiry:user` (draft-uberti-behave-turn-rest-00 §2.2).
pub fn names_user(username: &str, user: &str) -> bool {
    username == user
        || username.split_once(':').is_some_and(|(expiry, u)| {
            u == user && !expiry.is_empty() && expiry.bytes().all(|b| b.is_ascii_digit())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_and_sum() {
        let mut h = Histogram::default();
        for v in [1, 2, 5, 16, 17, 1000] {
            h.observe(BATCH_BOUNDS, v);
        }
        // 1 → ≤1, 2 → ≤2, 5 → ≤6, 16 → ≤16, 17 and 1000 → +Inf.
        assert_eq!(&h.counts[..9], &[1, 1, 0, 0, 1, 0, 0, 1, 2]);
        assert_eq!((h.sum, h.count), (1041, 6));
        let mut m = Histogram::default();
        m.merge(&h);
        m.merge(&h);
        assert_eq!((m.counts[8], m.sum, m.count), (4, 2082, 12));
    }

    #[test]
    fn reasons_map() {
        assert_eq!(
            EndReason::from_reason("refreshed to 0"),
            EndReason::Refresh0
        );
        assert_eq!(
            EndReason::from_reason("connection closed"),
            EndReason::ClientClosed
        );
        assert_eq!(
            AuthFailure::from_unauthorized("bad MESSAGE-INTEGRITY"),
            AuthFailure::BadIntegrity
        );
        for (i, r) in Refusal::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        for (i, r) in AuthFailure::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        for (i, r) in EndReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
    }
}
