//! State that every shard's engine shares: the relay port pool, reservations (EVEN-PORT R /
//! RESERVATION-TOKEN), allocation quotas and the nonce key. Touched only on allocation create
//! and delete, never per relayed packet.
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::limits::{RateLimiter, ServerBandwidth};

/// RFC 8656 §7.2: a reserved port is held for about 30 seconds.
pub const RESERVATION_LIFETIME: Duration = Duration::from_secs(30);
/// Bound on outstanding reservations (each holds one port).
const MAX_RESERVATIONS: usize = 4096;

pub struct Shared {
    ports: Mutex<PortPool>,
    /// RFC 6062 peer connections waiting for ConnectionBind: id → (username, expiry). A data
    /// connection may land on any shard, so this lives here (touched per connection, not packet).
    connections: Mutex<HashMap<u32, (String, Instant)>>,
    next_conn_id: AtomicU32,
    per_user: Mutex<Counts>,
    total: AtomicU32,
    /// Client TCP/TLS connections per source IP (a client's connections hash to any shard).
    tcp_per_ip: Mutex<HashMap<IpAddr, u32>>,
    /// Client TCP/TLS connections without an allocation yet, all shards
    /// (`max-pending-tcp-connections`).
    pending_tcp: AtomicU32,
    pub nonce_key: [u8; 32],
    /// Per-source request and 401 rates and failed-login back-off, server-wide.
    pub limiter: RateLimiter,
    /// `bps-capacity`, server-wide (shards draw credit from it in chunks).
    pub bandwidth: ServerBandwidth,
}

#[derive(Debug, PartialEq, Eq)]
pub enum QuotaError {
    /// 486 Allocation Quota Reached.
    User,
    /// 508 Insufficient Capacity.
    Total,
    /// 486: allocations per client IP.
    Ip,
    /// 486: allocations per /24 (IPv4) or /64 (IPv6).
    Prefix,
}

/// Allocation quotas (0 = unlimited each).
#[derive(Clone, Copy, Debug, Default)]
pub struct Quotas {
    pub per_user: u32,
    pub total: u32,
    pub per_ip: u32,
    pub per_prefix: u32,
}

/// Live allocations by user, client IP and client prefix. Entries go when they reach 0, so
/// the maps hold at most one entry per live allocation.
#[derive(Default)]
struct Counts {
    user: HashMap<String, u32>,
    ip: HashMap<IpAddr, u32>,
    prefix: HashMap<IpAddr, u32>,
}

/// The quota key of a client address: IPv4-mapped IPv6 counts as IPv4.
fn client_ip(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// /24 for IPv4, /64 for IPv6: what one subscriber or one small network typically holds.
pub fn client_prefix(ip: IpAddr) -> IpAddr {
    match client_ip(ip) {
        IpAddr::V4(v4) => IpAddr::V4((u32::from(v4) & 0xFFFF_FF00).into()),
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
    }
}

fn dec<K: std::hash::Hash + Eq>(m: &mut HashMap<K, u32>, k: &K) {
    if let Some(n) = m.get_mut(k) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            m.remove(k);
        }
    }
}

impl Shared {
    pub fn new(min_port: u16, max_port: u16, nonce_key: [u8; 32], seed: u64) -> Self {
        Shared {
            ports: Mutex::new(PortPool::new(min_port, max_port, seed)),
            connections: Mutex::new(HashMap::new()),
            // CONNECTION-IDs need only be unique; start somewhere unguessable.
            next_conn_id: AtomicU32::new((seed >> 32) as u32 | 1),
            per_user: Mutex::new(Counts::default()),
            total: AtomicU32::new(0),
            tcp_per_ip: Mutex::new(HashMap::new()),
            pending_tcp: AtomicU32::new(0),
            nonce_key,
            limiter: RateLimiter::default(),
            bandwidth: ServerBandwidth::default(),
        }
    }

    /// A random free port, even if `even`; with `reserve_for` (the relay address the port is
    /// taken for) the following port must be free too and is reserved under the returned token,
    /// for that address's family.
    pub fn take_port(
        &self,
        even: bool,
        reserve_for: Option<IpAddr>,
        now: Instant,
    ) -> Option<(u16, Option<u64>)> {
        let mut p = self.ports.lock().unwrap_or_else(|e| e.into_inner());
        p.expire(now);
        let port = p.take(even, reserve_for.is_some())?;
        let token = reserve_for.map(|ip| p.reserve(port + 1, ip.is_ipv6(), now));
        Some((port, token))
    }

    /// Whether a live reservation is for an IPv6 relayed address (RFC 8656 §7.2: the token
    /// stands for the reserved transport address, family included); the token stays valid.
    pub fn reserved_v6(&self, token: u64, now: Instant) -> Option<bool> {
        let mut p = self.ports.lock().unwrap_or_else(|e| e.into_inner());
        p.expire(now);
        p.reservations.get(&token).map(|r| r.1)
    }

    pub fn release_port(&self, port: u16) {
        self.ports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .release(port);
    }

    /// Redeem a RESERVATION-TOKEN: the reserved port, now owned by the caller.
    pub fn redeem(&self, token: u64, now: Instant) -> Option<u16> {
        let mut p = self.ports.lock().unwrap_or_else(|e| e.into_inner());
        p.expire(now);
        p.reservations.remove(&token).map(|(port, ..)| port)
    }

    pub fn ports_in_use(&self) -> usize {
        self.ports.lock().unwrap_or_else(|e| e.into_inner()).in_use
    }

    /// Count an allocation of `user` from client address `ip` against the quotas.
    pub fn acquire_quota(&self, user: &str, ip: IpAddr, q: Quotas) -> Result<(), QuotaError> {
        let prev = self.total.fetch_add(1, Ordering::AcqRel);
        if q.total != 0 && prev >= q.total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(QuotaError::Total);
        }
        let (ip, prefix) = (client_ip(ip), client_prefix(ip));
        let mut m = self.per_user.lock().unwrap_or_else(|e| e.into_inner());
        let over = |n: Option<&u32>, cap: u32| cap != 0 && n.copied().unwrap_or(0) >= cap;
        let err = if over(m.user.get(user), q.per_user) {
            Some(QuotaError::User)
        } else if over(m.ip.get(&ip), q.per_ip) {
            Some(QuotaError::Ip)
        } else if over(m.prefix.get(&prefix), q.per_prefix) {
            Some(QuotaError::Prefix)
        } else {
            None
        };
        if let Some(e) = err {
            drop(m);
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(e);
        }
        *m.user.entry(user.to_owned()).or_insert(0) += 1;
        *m.ip.entry(ip).or_insert(0) += 1;
        *m.prefix.entry(prefix).or_insert(0) += 1;
        Ok(())
    }

    pub fn release_quota(&self, user: &str, ip: IpAddr) {
        self.total.fetch_sub(1, Ordering::AcqRel);
        let mut m = self.per_user.lock().unwrap_or_else(|e| e.into_inner());
        dec(&mut m.user, &user.to_owned());
        dec(&mut m.ip, &client_ip(ip));
        dec(&mut m.prefix, &client_prefix(ip));
    }

    /// Live allocations of client address `ip` (tests, stats).
    pub fn allocations_of_ip(&self, ip: IpAddr) -> u32 {
        let m = self.per_user.lock().unwrap_or_else(|e| e.into_inner());
        m.ip.get(&client_ip(ip)).copied().unwrap_or(0)
    }

    /// A client TCP/TLS connection from `ip` was accepted: false if `ip` already has `max`
    /// (0 = unlimited), and then it is not counted (the caller closes it).
    pub fn tcp_open(&self, ip: IpAddr, max: u32) -> bool {
        let mut m = self.tcp_per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(client_ip(ip)).or_insert(0);
        if max != 0 && *n >= max {
            return false;
        }
        *n += 1;
        true
    }

    pub fn tcp_closed(&self, ip: IpAddr) {
        let mut m = self.tcp_per_ip.lock().unwrap_or_else(|e| e.into_inner());
        dec(&mut m, &client_ip(ip));
    }

    /// Take a pending-connection slot: false if `max` (0 = unlimited) are taken. Give it back
    /// with [`Shared::pending_done`] when the connection allocates or closes.
    pub fn pending_take(&self, max: u32) -> bool {
        self.pending_tcp
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (max == 0 || n < max).then_some(n + 1)
            })
            .is_ok()
    }

    pub fn pending_done(&self) {
        let _ = self
            .pending_tcp
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Client TCP/TLS connections counted by [`Shared::tcp_open`], all sources.
    pub fn tcp_connections(&self) -> u32 {
        let m = self.tcp_per_ip.lock().unwrap_or_else(|e| e.into_inner());
        m.values().sum()
    }

    pub fn next_connection_id(&self) -> u32 {
        loop {
            let id = self.next_conn_id.fetch_add(1, Ordering::Relaxed);
            if id != 0 {
                return id;
            }
        }
    }

    pub fn register_connection(&self, id: u32, user: &str, expires: Instant) {
        self.connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, (user.to_owned(), expires));
    }

    /// ConnectionBind: take the connection if it exists, has not expired and belongs to `user`.
    pub fn claim_connection(&self, id: u32, user: &str, now: Instant) -> bool {
        let mut m = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        match m.get(&id) {
            Some((u, exp)) if u == user && *exp > now => {
                m.remove(&id);
                true
            }
            _ => false,
        }
    }

    /// Its allocation is gone: an unclaimed connection can no longer be bound (RFC 6062 §5.5).
    pub fn forget_connection(&self, id: u32) {
        self.connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    /// Drop an unclaimed connection whose time is up; true if it was still waiting.
    pub fn expire_connection(&self, id: u32, now: Instant) -> bool {
        let mut m = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        match m.get(&id) {
            Some((_, exp)) if *exp <= now => {
                m.remove(&id);
                true
            }
            _ => false,
        }
    }

    pub fn total_allocations(&self) -> u32 {
        self.total.load(Ordering::Acquire)
    }
}

struct PortPool {
    min: u16,
    max: u16,
    used: Vec<u64>,
    in_use: usize,
    rng: u64,
    /// token → (port, IPv6?, expiry). Reserved ports are marked used until redeemed or expired.
    reservations: HashMap<u64, (u16, bool, Instant)>,
}

impl PortPool {
    fn new(min: u16, max: u16, seed: u64) -> Self {
        PortPool {
            min,
            max,
            used: vec![0; 65536 / 64],
            in_use: 0,
            rng: seed | 1,
            reservations: HashMap::new(),
        }
    }

    fn is_used(&self, p: u16) -> bool {
        self.used[p as usize / 64] & (1 << (p % 64)) != 0
    }

    fn mark(&mut self, p: u16, used: bool) {
        let bit = 1u64 << (p % 64);
        let w = &mut self.used[p as usize / 64];
        if used && *w & bit == 0 {
            *w |= bit;
            self.in_use += 1;
        } else if !used && *w & bit != 0 {
            *w &= !bit;
            self.in_use -= 1;
        }
    }

    fn next_rand(&mut self) -> u64 {
        // xorshift64*: port choice needs to be unpredictable-ish, not cryptographic
        // (RFC 8656 §7.2 asks for random relay ports; the seed comes from the OS CSPRNG).
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn take(&mut self, even: bool, pair: bool) -> Option<u16> {
        let span = (self.max as u32 - self.min as u32) + 1;
        let start = (self.next_rand() % span as u64) as u32;
        for i in 0..span {
            let p = (self.min as u32 + (start + i) % span) as u16;
            if (even && p % 2 != 0) || self.is_used(p) {
                continue;
            }
            if pair && (p == self.max || self.is_used(p + 1)) {
                continue;
            }
            self.mark(p, true);
            return Some(p);
        }
        None
    }

    fn release(&mut self, p: u16) {
        self.mark(p, false);
    }

    fn reserve(&mut self, p: u16, v6: bool, now: Instant) -> u64 {
        if self.reservations.len() >= MAX_RESERVATIONS {
            // Oldest-first eviction is not worth a second index; drop an arbitrary one.
            if let Some(&t) = self.reservations.keys().next() {
                if let Some((port, ..)) = self.reservations.remove(&t) {
                    self.release(port);
                }
            }
        }
        self.mark(p, true);
        let mut token = self.next_rand();
        while token == 0 || self.reservations.contains_key(&token) {
            token = self.next_rand();
        }
        self.reservations
            .insert(token, (p, v6, now + RESERVATION_LIFETIME));
        token
    }

    fn expire(&mut self, now: Instant) {
        if self.reservations.is_empty() {
            return;
        }
        let expired: Vec<(u64, u16)> = self
            .reservations
            .iter()
            .filter(|(_, (_, _, exp))| *exp <= now)
            .map(|(t, (p, ..))| (*t, *p))
            .collect();
        for (t, p) in expired {
            self.reservations.remove(&t);
            self.release(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_unique_and_bounded() {
        let s = Shared::new(50000, 50009, [0; 32], 42);
        let now = Instant::now();
        let mut got: Vec<u16> = (0..10)
            .map(|_| s.take_port(false, None, now).unwrap().0)
            .collect();
        got.sort();
        assert_eq!(got, (50000..=50009).collect::<Vec<_>>());
        assert!(s.take_port(false, None, now).is_none());
        s.release_port(50003);
        assert_eq!(s.take_port(false, None, now).unwrap().0, 50003);
    }

    #[test]
    fn even_port_reservation() {
        let s = Shared::new(50000, 50009, [0; 32], 7);
        let now = Instant::now();
        let (p, tok) = s.take_port(true, Some(IP), now).unwrap();
        assert_eq!(p % 2, 0);
        let tok = tok.unwrap();
        assert_eq!(s.ports_in_use(), 2);
        assert_eq!(s.reserved_v6(tok, now), Some(false));
        assert_eq!(s.redeem(tok, now), Some(p + 1));
        assert_eq!(s.redeem(tok, now), None, "a token is single-use");
        // an unredeemed reservation expires and frees its port
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        let (_, tok2) = s.take_port(true, Some(v6), now).unwrap();
        assert_eq!(s.reserved_v6(tok2.unwrap(), now), Some(true));
        assert_eq!(s.ports_in_use(), 4);
        assert_eq!(s.redeem(tok2.unwrap(), now + RESERVATION_LIFETIME), None);
        assert_eq!(s.ports_in_use(), 3);
    }

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

    #[test]
    fn quotas() {
        let s = Shared::new(50000, 50009, [0; 32], 1);
        let q = Quotas {
            per_user: 2,
            total: 3,
            ..Quotas::default()
        };
        assert!(s.acquire_quota("a", IP, q).is_ok());
        assert!(s.acquire_quota("a", IP, q).is_ok());
        assert_eq!(s.acquire_quota("a", IP, q), Err(QuotaError::User));
        assert!(s.acquire_quota("b", IP, q).is_ok());
        assert_eq!(s.acquire_quota("c", IP, q), Err(QuotaError::Total));
        s.release_quota("a", IP);
        assert!(s.acquire_quota("c", IP, q).is_ok());
        assert_eq!(s.total_allocations(), 3);
    }

    #[test]
    fn ip_and_prefix_quotas() {
        let s = Shared::new(50000, 50009, [0; 32], 1);
        let q = Quotas {
            per_ip: 2,
            per_prefix: 3,
            ..Quotas::default()
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(s.acquire_quota("a", ip("192.0.2.1"), q).is_ok());
        assert!(s.acquire_quota("b", ip("::ffff:192.0.2.1"), q).is_ok());
        assert_eq!(
            s.acquire_quota("c", ip("192.0.2.1"), q),
            Err(QuotaError::Ip)
        );
        assert!(s.acquire_quota("c", ip("192.0.2.200"), q).is_ok());
        assert_eq!(
            s.acquire_quota("d", ip("192.0.2.7"), q),
            Err(QuotaError::Prefix)
        );
        assert!(s.acquire_quota("d", ip("192.0.3.7"), q).is_ok());
        // IPv6: the /64 is the prefix.
        assert!(s.acquire_quota("e", ip("2001:db8::1"), q).is_ok());
        assert!(s.acquire_quota("e", ip("2001:db8::2"), q).is_ok());
        assert!(s.acquire_quota("e", ip("2001:db8::3"), q).is_ok());
        assert_eq!(
            s.acquire_quota("e", ip("2001:db8::ffff:4"), q),
            Err(QuotaError::Prefix)
        );
        assert!(s.acquire_quota("e", ip("2001:db8:0:1::4"), q).is_ok());
        // Refused attempts took nothing; a release frees the IP and the prefix.
        assert_eq!(s.total_allocations(), 8);
        s.release_quota("a", ip("192.0.2.1"));
        assert_eq!(s.allocations_of_ip(ip("192.0.2.1")), 1);
        assert!(s.acquire_quota("f", ip("192.0.2.1"), q).is_ok());
        for (u, a) in [("b", "192.0.2.1"), ("f", "192.0.2.1"), ("c", "192.0.2.200")] {
            s.release_quota(u, ip(a));
        }
        assert_eq!(s.allocations_of_ip(ip("192.0.2.1")), 0);
        assert!(!s
            .per_user
            .lock()
            .unwrap()
            .prefix
            .contains_key(&ip("192.0.2.0")));
    }

    #[test]
    fn tcp_per_ip() {
        let s = Shared::new(50000, 50009, [0; 32], 1);
        assert!(s.tcp_open(IP, 2));
        assert!(s.tcp_open(IP, 2));
        assert!(!s.tcp_open(IP, 2));
        s.tcp_closed(IP);
        assert!(s.tcp_open(IP, 2));
        assert_eq!(s.tcp_connections(), 2);
        s.tcp_closed(IP);
        s.tcp_closed(IP);
        assert_eq!(s.tcp_connections(), 0);
        assert!(s.tcp_per_ip.lock().unwrap().is_empty());
    }
}
