//! Abuse limits: request and challenge rate per source, failed authentication back-off per
//! source and per user (one [`RateLimiter`] for the whole server, touched per STUN request), and
//! bandwidth token buckets: `max-bps` per allocation, touched per relayed packet, and
//! `bps-capacity` for the whole server ([`ServerBandwidth`]), drawn by each shard in chunks.
//!
//! Everything here is sans-IO (time comes in as nanoseconds on a monotonic clock). The
//! per-source tables are fixed-size and evicting ([`RateTable`]), so a flood from spoofed
//! source addresses cannot grow them: it can only evict other entries, which at worst forgets a
//! source's history (the limits fail open for that source, never closed for an innocent one).
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// Operator limits (config keys in `turnserver.toml.example`, section "Abuse limits").
/// 0 means unlimited for every count and rate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Live allocations per client IP → 486.
    pub allocations_per_ip: u32,
    /// Live allocations per /24 (IPv4) or /64 (IPv6) → 486.
    pub allocations_per_prefix: u32,
    /// Permissions per allocation → 508 (RFC 8656 §9.2 "out of resources").
    pub max_permissions: usize,
    /// Channels per allocation → 508 (RFC 8656 §12.2).
    pub max_channels: usize,
    /// RFC 6062 peer data connections per TCP allocation, pending or spliced (Connect → 508;
    /// a peer connecting beyond it is closed).
    pub max_peer_connections: usize,
    /// Relayed payload bytes per second per allocation, each direction (coturn `max-bps`).
    pub max_bps: u64,
    /// STUN requests per second per source (IPv4 address or IPv6 /64), whole server; burst
    /// of 2 s.
    pub requests_per_ip: u32,
    /// 401/438 challenges per second per source (reflection guard), whole server; burst of 2 s.
    pub challenges_per_ip: u32,
    /// Failed authentications (per source and per user) before back-off starts.
    pub auth_failures_before_backoff: u32,
    /// Longest back-off; the first is 1 s and it doubles on each failure after that.
    pub auth_backoff_max: Duration,
    /// Relayed payload bytes per second, whole server, both directions together
    /// (`bps-capacity`, enforced by [`ServerBandwidth`]).
    pub bps_capacity: u64,
    // Enforced by the runtime (shard.rs), kept here so they reload with the rest.
    /// Client TCP/TLS connections per source IP (closed at accept).
    pub tcp_connections_per_ip: u32,
    /// Connections without an allocation yet, whole server (as configured).
    pub pending_tcp_connections: u32,
    /// A TCP/TLS connection must complete its handshake and allocate within this time.
    pub tcp_handshake_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            allocations_per_ip: 256,
            allocations_per_prefix: 1024,
            max_permissions: 128,
            max_channels: 64,
            max_peer_connections: 64,
            max_bps: 0,
            requests_per_ip: 500,
            challenges_per_ip: 200,
            auth_failures_before_backoff: 5,
            auth_backoff_max: Duration::from_secs(60),
            bps_capacity: 0,
            tcp_connections_per_ip: 256,
            pending_tcp_connections: 1024,
            tcp_handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Slots per rate table, all stripes together (two-way associative). 16 384 sources × 48-64
/// bytes ≈ 0.8-1 MiB per table, four tables for the whole server.
pub const TABLE_SLOTS: usize = 16384;
const SEC: u64 = 1_000_000_000;
/// Fixed-point shift of a bucket's nanoseconds-per-byte.
const FP: u32 = 16;

/// A GCRA token bucket ("virtual scheduling"): one theoretical arrival time in nanoseconds.
/// A unit of cost `cost_ns` is admitted when the bucket would not run more than `burst_ns`
/// ahead of `now`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Gcra {
    tat: u64,
}

impl Gcra {
    #[inline]
    pub fn admit(&mut self, now: u64, cost: u64, burst: u64) -> bool {
        let tat = self.tat.max(now);
        let next = tat.saturating_add(cost);
        if next - now > burst.saturating_add(cost) {
            return false;
        }
        self.tat = next;
        true
    }
}

/// A byte-rate bucket: `rate` bytes/s with one second of burst. Rate 0 = unlimited.
#[derive(Clone, Copy, Debug, Default)]
pub struct ByteBucket {
    g: Gcra,
    /// Nanoseconds per byte, fixed point (<< [`FP`]); 0 = unlimited.
    ns_per_byte: u64,
}

impl ByteBucket {
    pub fn new(rate: u64) -> Self {
        let ns_per_byte = (SEC << FP).checked_div(rate).map_or(0, |n| n.max(1));
        ByteBucket {
            g: Gcra::default(),
            ns_per_byte,
        }
    }

    #[inline]
    pub fn unlimited(&self) -> bool {
        self.ns_per_byte == 0
    }

    /// Take `len` bytes; false = over the rate (drop the packet).
    #[inline]
    pub fn take(&mut self, now: u64, len: usize) -> bool {
        if self.ns_per_byte == 0 {
            return true;
        }
        let cost = (len as u64).saturating_mul(self.ns_per_byte) >> FP;
        self.g.admit(now, cost, SEC)
    }
}

/// `bps-capacity`: one GCRA bucket (one second of burst) for the whole server. Shards draw
/// credit from it in chunks of 1 ms of the rate (at most 64 KiB, [`ShardCredit`]), so the
/// shared word is touched at most ~1000 times a second (more only above 64 MB/s), not per
/// packet, and the cap holds server-wide whichever shards the traffic lands on (a per-shard
/// 1/N split would throttle a busy shard while the others idle). The chunks make the burst
/// approximate by at most 1 ms of the rate per shard either way: credit another shard holds
/// unused counts against it, and a shard's last draw before the cap may carry a chunk past it.
pub struct ServerBandwidth {
    /// Theoretical arrival time, ns on `base`'s clock (own cache line: shards CAS it).
    tat: CacheAligned<AtomicU64>,
    /// Nanoseconds per byte << [`FP`]; 0 = unlimited. Set at start and on reload.
    ns_per_byte: AtomicU64,
    /// Bytes a shard draws at a time.
    chunk: AtomicU64,
    /// The clock origin (the first `now` seen; every shard passes the same monotonic clock).
    base: OnceLock<Instant>,
}

#[repr(align(64))]
struct CacheAligned<T>(T);

/// Longest credit draw: 64 KiB (at 1 ms of the rate, reached from ~65 MB/s up).
const MAX_CHUNK: u64 = 64 * 1024;

impl Default for ServerBandwidth {
    fn default() -> Self {
        ServerBandwidth {
            tat: CacheAligned(AtomicU64::new(0)),
            ns_per_byte: AtomicU64::new(0),
            chunk: AtomicU64::new(0),
            base: OnceLock::new(),
        }
    }
}

impl ServerBandwidth {
    /// `rate` bytes/s; 0 = unlimited. A changed rate starts from a fresh bucket (a debt run
    /// up at a low rate must not hold traffic back after the rate is raised); every shard
    /// sets the same rate, and only the first to change it resets.
    pub fn set_rate(&self, rate: u64) {
        let ns_per_byte = (SEC << FP).checked_div(rate).map_or(0, |n| n.max(1));
        self.chunk
            .store((rate / 1000).min(MAX_CHUNK), Ordering::Relaxed);
        if self.ns_per_byte.swap(ns_per_byte, Ordering::Relaxed) != ns_per_byte {
            self.tat.0.store(0, Ordering::Relaxed);
        }
    }

    /// Reserve `bytes` at `now` for a shard that still holds `held` bytes of earlier credit;
    /// false = over the rate (nothing reserved). The held bytes are part of the packet that
    /// needs this draw, so they do not count against its admission: one shard alone gets
    /// exactly the burst an undivided bucket would give.
    fn reserve(&self, now: Instant, bytes: u64, held: u64) -> bool {
        let npb = self.ns_per_byte.load(Ordering::Relaxed);
        if npb == 0 {
            return true;
        }
        let base = *self.base.get_or_init(|| now);
        let t = now.saturating_duration_since(base).as_nanos() as u64;
        let cost = bytes.saturating_mul(npb) >> FP;
        let allowance = SEC.saturating_add(held.saturating_mul(npb) >> FP);
        let mut tat = self.tat.0.load(Ordering::Relaxed);
        loop {
            // As `Gcra::admit`: the bucket may run at most one second ahead before this draw.
            if tat.max(t) - t > allowance {
                return false;
            }
            let next = tat.max(t).saturating_add(cost);
            match self
                .tat
                .0
                .compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(now_tat) => tat = now_tat,
            }
        }
    }
}

/// A shard's credit drawn from [`ServerBandwidth`]: bytes it may still relay.
#[derive(Clone, Copy, Debug, Default)]
pub struct ShardCredit {
    bytes: u64,
}

impl ShardCredit {
    /// Take `len` bytes; false = the server is over `bps-capacity` (drop the packet).
    #[inline]
    pub fn take(&mut self, server: &ServerBandwidth, now: Instant, len: usize) -> bool {
        let len = len as u64;
        if self.bytes >= len {
            self.bytes -= len;
            return true;
        }
        let chunk = server.chunk.load(Ordering::Relaxed);
        if server.reserve(now, len - self.bytes + chunk, self.bytes) {
            self.bytes = chunk;
            true
        } else {
            false
        }
    }
}

/// Key of a rate-table entry: an IPv4 address, an IPv6 /64 (one subscriber usually has a
/// whole /64, so per-address state would be trivial to dodge), or a user name hash.
pub type SourceKey = u128;

pub fn source_key(ip: IpAddr) -> SourceKey {
    match ip {
        // Low-byte tags (2: IPv4, 1: IPv6) keep the two families apart.
        IpAddr::V4(v4) => (u128::from(u32::from(v4)) << 8) | 2,
        IpAddr::V6(v6) => (u128::from(v6) & !((1u128 << 64) - 1)) | 1,
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Slot<E> {
    key: SourceKey,
    used: bool,
    last: u64,
    val: E,
}

/// Fixed-size, two-way associative, evicting table keyed by [`SourceKey`] with a random hash
/// key (an attacker cannot aim collisions). Allocated once; never grows.
pub struct RateTable<E> {
    slots: Vec<Slot<E>>,
    hasher: RandomState,
}

impl<E: Copy + Default> RateTable<E> {
    pub fn new(slots: usize) -> Self {
        RateTable {
            slots: vec![Slot::default(); slots.max(2)],
            hasher: RandomState::new(),
        }
    }

    fn positions(&self, key: SourceKey) -> (usize, usize) {
        let h = self.hasher.hash_one(key);
        let n = self.slots.len() as u64;
        (
            (h % n) as usize,
            ((h >> 32).wrapping_mul(0x9E37_79B9) % n) as usize,
        )
    }

    /// The entry of `key`, if present.
    pub fn get(&mut self, key: SourceKey) -> Option<&mut E> {
        let (a, b) = self.positions(key);
        let i = [a, b]
            .into_iter()
            .find(|&i| self.slots[i].used && self.slots[i].key == key)?;
        Some(&mut self.slots[i].val)
    }

    /// The entry of `key`, created (evicting the least recently used of its two slots) if
    /// absent.
    pub fn entry(&mut self, key: SourceKey, now: u64) -> &mut E {
        let (a, b) = self.positions(key);
        let i = if self.slots[a].used && self.slots[a].key == key {
            a
        } else if self.slots[b].used && self.slots[b].key == key {
            b
        } else {
            let i = match (self.slots[a].used, self.slots[b].used) {
                (false, _) => a,
                (_, false) => b,
                _ if self.slots[a].last <= self.slots[b].last => a,
                _ => b,
            };
            self.slots[i] = Slot {
                key,
                used: true,
                last: now,
                val: E::default(),
            };
            i
        };
        self.slots[i].last = now;
        &mut self.slots[i].val
    }

    /// Entries in use (tests: the table never holds more than its slots).
    pub fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.used).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }
}

/// Failed authentication history of one source or user.
#[derive(Clone, Copy, Debug, Default)]
pub struct Failures {
    count: u32,
    /// Refuse until this time (ns); 0 = not blocked.
    blocked_until: u64,
    backoff: u64,
    last: u64,
}

/// Why a request was refused before it was processed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    RequestRate,
    ChallengeRate,
    AuthBackoff,
}

/// Stripes of the per-source tables: a request locks one stripe, so shards answering requests
/// at once rarely wait on each other.
const STRIPES: usize = 16;

struct Stripe {
    requests: RateTable<Gcra>,
    challenges: RateTable<Gcra>,
    fail_src: RateTable<Failures>,
    fail_user: RateTable<Failures>,
}

/// Per-source rate and back-off state, one for the whole server (in [`super::shared::Shared`]).
/// A client's datagrams land on whichever shard its 5-tuple hashes to, and its other ports on
/// others: per-shard tables would have to enforce a 1/N share (a client on one 5-tuple, or one
/// TCP connection, would get 1/N of the configured rate) or let a source that spreads its
/// ports get N times the rate and N times the password guesses. Touched once per STUN request
/// (and per failed login), never per relayed packet.
pub struct RateLimiter {
    stripes: Box<[Mutex<Stripe>]>,
    /// Chooses a key's stripe, and hashes user names into keys (random: no aimed collisions).
    hasher: RandomState,
    /// The clock origin of every shard's timestamps here (the first `now` seen).
    base: OnceLock<Instant>,
}

/// A failure record older than this (and not blocking) is forgotten.
const FAILURE_MEMORY: u64 = 600 * SEC;

impl Default for RateLimiter {
    fn default() -> Self {
        Self::new(TABLE_SLOTS)
    }
}

impl RateLimiter {
    /// `slots` per table, in all stripes together.
    pub fn new(slots: usize) -> Self {
        let per = slots.div_ceil(STRIPES);
        RateLimiter {
            stripes: (0..STRIPES)
                .map(|_| {
                    Mutex::new(Stripe {
                        requests: RateTable::new(per),
                        challenges: RateTable::new(per),
                        fail_src: RateTable::new(per),
                        fail_user: RateTable::new(per),
                    })
                })
                .collect(),
            hasher: RandomState::new(),
            base: OnceLock::new(),
        }
    }

    /// `now` as nanoseconds on the limiter's clock (shared by the shards, which all pass the
    /// same monotonic clock).
    pub fn ns(&self, now: Instant) -> u64 {
        let base = *self.base.get_or_init(|| now);
        now.saturating_duration_since(base).as_nanos() as u64
    }

    fn stripe(&self, key: SourceKey) -> MutexGuard<'_, Stripe> {
        let i = (self.hasher.hash_one(key) % STRIPES as u64) as usize;
        // A panic elsewhere while holding it leaves plain counters: carry on with them.
        self.stripes[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    fn rate(&self, challenge: bool, ip: IpAddr, per_sec: u32, now: u64) -> bool {
        if per_sec == 0 {
            return true;
        }
        let interval = SEC / u64::from(per_sec);
        let key = source_key(ip);
        let mut s = self.stripe(key);
        let table = if challenge {
            &mut s.challenges
        } else {
            &mut s.requests
        };
        table.entry(key, now).admit(now, interval, 2 * SEC)
    }

    /// One STUN request from `ip`.
    pub fn request(&self, l: &Limits, ip: IpAddr, now: u64) -> bool {
        self.rate(false, ip, l.requests_per_ip, now)
    }

    /// One 401/438 challenge to `ip`.
    pub fn challenge(&self, l: &Limits, ip: IpAddr, now: u64) -> bool {
        self.rate(true, ip, l.challenges_per_ip, now)
    }

    fn user_key(&self, user: &[u8]) -> SourceKey {
        // Tag 2 keeps user keys apart from address keys (they live in their own table anyway).
        (u128::from(self.hasher.hash_one(user)) << 2) | 2
    }

    /// Is an authentication attempt from `ip` as `user` in back-off? The source's own
    /// back-off applies to everything it sends; the user's back-off only to sources that have
    /// failed themselves (recently, and not succeeded since). So a guesser spread over many
    /// addresses gets one guess per address while the user is in back-off, and the user's own
    /// clients, which do not fail, cannot be locked out by it.
    pub fn auth_blocked(&self, ip: IpAddr, user: Option<&[u8]>, now: u64) -> bool {
        let key = source_key(ip);
        // One stripe at a time (the user's may be the same one).
        let src = self.stripe(key).fail_src.get(key).copied();
        if src.is_some_and(|f| f.blocked_until > now) {
            return true;
        }
        let failed_here =
            src.is_some_and(|f| f.count > 0 && now.saturating_sub(f.last) <= FAILURE_MEMORY);
        match user {
            Some(u) if failed_here => {
                let k = self.user_key(u);
                let f = self.stripe(k).fail_user.get(k).copied();
                f.is_some_and(|f| f.blocked_until > now)
            }
            _ => false,
        }
    }

    /// A failed authentication: after `auth_failures_before_backoff` failures the source and
    /// the user are refused for 1 s, then 2 s, 4 s, ... up to `auth_backoff_max`.
    pub fn auth_failed(&self, l: &Limits, ip: IpAddr, user: Option<&[u8]>, now: u64) {
        if l.auth_failures_before_backoff == 0 {
            return;
        }
        let max = l.auth_backoff_max.as_nanos() as u64;
        let bump = |f: &mut Failures| {
            if now.saturating_sub(f.last) > FAILURE_MEMORY {
                *f = Failures::default();
            }
            f.last = now;
            f.count = f.count.saturating_add(1);
            if f.count >= l.auth_failures_before_backoff {
                f.backoff = if f.backoff == 0 {
                    SEC
                } else {
                    f.backoff.saturating_mul(2)
                }
                .min(max);
                f.blocked_until = now + f.backoff;
            }
        };
        let key = source_key(ip);
        bump(self.stripe(key).fail_src.entry(key, now));
        if let Some(u) = user {
            let k = self.user_key(u);
            bump(self.stripe(k).fail_user.entry(k, now));
        }
    }

    /// A successful authentication clears the source's record. The user's record stays:
    /// other sources may still be guessing.
    pub fn auth_succeeded(&self, ip: IpAddr) {
        let key = source_key(ip);
        if let Some(f) = self.stripe(key).fail_src.get(key) {
            *f = Failures::default();
        }
    }

    /// Entries held, all tables (tests: bounded under a spoofed-source flood).
    pub fn entries(&self) -> usize {
        self.stripes
            .iter()
            .map(|s| {
                let s = s.lock().unwrap_or_else(|e| e.into_inner());
                s.requests.len() + s.challenges.len() + s.fail_src.len() + s.fail_user.len()
            })
            .sum()
    }

    pub fn capacity(&self) -> usize {
        self.stripes
            .iter()
            .map(|s| {
                let s = s.lock().unwrap_or_else(|e| e.into_inner());
                s.requests.capacity()
                    + s.challenges.capacity()
                    + s.fail_src.capacity()
                    + s.fail_user.capacity()
            })
            .sum()
    }
}

/// Refusal log lines of one shard: at most [`LOG_PER_SEC`] a second, the rest counted (a
/// refusal flood must not become a log flood).
#[derive(Default)]
pub struct RefusalLog {
    window: u64,
    count: u32,
    pub suppressed: u64,
}

const LOG_PER_SEC: u32 = 10;

impl RefusalLog {
    /// May a refusal be logged at `now` (ns, any monotonic origin)?
    pub fn may_log(&mut self, now: u64) -> bool {
        if now.saturating_sub(self.window) >= SEC {
            self.window = now;
            self.count = 0;
        }
        if self.count < LOG_PER_SEC {
            self.count += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn gcra_rate_and_burst() {
        let mut g = Gcra::default();
        // 10/s (100 ms each), burst 1 s: 11 at once, then one per 100 ms.
        let t0 = 5 * SEC;
        let n = (0..100).filter(|_| g.admit(t0, SEC / 10, SEC)).count();
        assert_eq!(n, 11);
        assert!(!g.admit(t0 + SEC / 20, SEC / 10, SEC));
        assert!(g.admit(t0 + SEC / 10, SEC / 10, SEC));
    }

    #[test]
    fn byte_bucket() {
        let mut b = ByteBucket::new(10_000);
        let t0 = 10 * SEC;
        // One second of burst (10 000 bytes) plus the packet in flight.
        let n = (0..100).filter(|_| b.take(t0, 1000)).count();
        assert_eq!(n, 11);
        // A second later another 10 000 bytes.
        let n = (0..100).filter(|_| b.take(t0 + SEC, 1000)).count();
        assert_eq!(n, 10);
        assert!(ByteBucket::new(0).take(t0, usize::MAX));
    }

    #[test]
    fn server_bandwidth_is_one_bucket_for_all_shards() {
        // 1 MB/s, one second of burst, 1000-byte chunks; four shards on four threads take
        // 100-byte packets at one instant until refused: together they get the one second
        // (give or take a chunk per shard: credit held, a last draw past the cap), not four.
        let server = std::sync::Arc::new(ServerBandwidth::default());
        server.set_rate(1_000_000);
        let now = Instant::now();
        let total: u64 = (0..4)
            .map(|_| {
                let server = server.clone();
                std::thread::spawn(move || {
                    let mut c = ShardCredit::default();
                    let mut n = 0u64;
                    while c.take(&server, now, 100) {
                        n += 100;
                    }
                    // Refused once, refused for good at this instant.
                    assert!(!c.take(&server, now, 100));
                    n
                })
            })
            .map(|h| h.join().unwrap())
            .sum();
        assert!(
            (1_000_000 - 4 * 1000..=1_000_000 + 4 * 1100).contains(&total),
            "{total} bytes"
        );
        // Half a second later, half a second's worth more; unlimited after a reload to 0.
        let later = now + Duration::from_millis(500);
        let mut c = ShardCredit::default();
        let mut n = 0u64;
        while c.take(&server, later, 100) {
            n += 100;
        }
        assert!((496_000..=505_000).contains(&n), "{n} bytes");
        server.set_rate(0);
        assert!(c.take(&server, later, usize::MAX));
    }

    #[test]
    fn a_new_server_rate_starts_a_fresh_bucket() {
        // One 64 KiB packet at 1000 B/s leaves the bucket ~65 s in debt; a reload to the same
        // rate keeps it, a new rate starts afresh.
        let server = ServerBandwidth::default();
        server.set_rate(1000);
        let now = Instant::now();
        let mut c = ShardCredit::default();
        assert!(c.take(&server, now, 65536));
        let later = now + Duration::from_secs(10);
        assert!(!c.take(&server, later, 100));
        server.set_rate(1000);
        assert!(!c.take(&server, later, 100));
        server.set_rate(1_000_000);
        assert!(c.take(&server, later, 100));
    }

    #[test]
    fn table_is_bounded_and_evicts() {
        let mut t: RateTable<u32> = RateTable::new(64);
        for i in 0..100_000u32 {
            *t.entry(u128::from(i), u64::from(i)) += 1;
        }
        assert!(t.len() <= 64);
        // A recent entry survives; the latest one is present.
        assert_eq!(t.get(99_999).copied(), Some(1));
    }

    #[test]
    fn ipv6_keyed_by_64() {
        let a: IpAddr = Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, 1).into();
        let b: IpAddr = Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0xffff, 1, 2, 3).into();
        let c: IpAddr = Ipv6Addr::new(0x2001, 0xdb8, 0, 2, 0, 0, 0, 1).into();
        assert_eq!(source_key(a), source_key(b));
        assert_ne!(source_key(a), source_key(c));
        let v4: IpAddr = Ipv4Addr::new(0, 0, 0, 1).into();
        assert_ne!(source_key(v4), source_key(Ipv6Addr::UNSPECIFIED.into()));
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let l = Limits {
            auth_failures_before_backoff: 3,
            auth_backoff_max: Duration::from_secs(4),
            ..Limits::default()
        };
        let r = RateLimiter::new(64);
        let ip: IpAddr = Ipv4Addr::new(192, 0, 2, 1).into();
        let mut t = SEC;
        for _ in 0..2 {
            r.auth_failed(&l, ip, Some(b"u"), t);
            assert!(!r.auth_blocked(ip, Some(b"u"), t));
        }
        let mut waits = Vec::new();
        for _ in 0..4 {
            r.auth_failed(&l, ip, Some(b"u"), t);
            let start = t;
            while r.auth_blocked(ip, None, t) {
                t += SEC / 10;
            }
            waits.push((t - start) / (SEC / 10));
        }
        assert_eq!(waits, [10, 20, 40, 40]);
        // The user's back-off applies to other sources once they have failed themselves; a
        // source that never failed is not locked out by someone else's failures.
        r.auth_failed(&l, ip, Some(b"u"), t);
        let other: IpAddr = Ipv4Addr::new(198, 51, 100, 1).into();
        let clean: IpAddr = Ipv4Addr::new(198, 51, 100, 2).into();
        assert!(!r.auth_blocked(clean, Some(b"u"), t));
        assert!(!r.auth_blocked(other, Some(b"u"), t), "first guess");
        r.auth_failed(&l, other, Some(b"u"), t);
        assert!(r.auth_blocked(other, Some(b"u"), t), "second guess");
        assert!(!r.auth_blocked(other, Some(b"v"), t), "another user");
        // Success clears the source's own record.
        r.auth_succeeded(ip);
        assert!(!r.auth_blocked(ip, Some(b"u"), t));
    }
}
