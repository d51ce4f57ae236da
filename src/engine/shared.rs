//! State that every shard's engine shares: the relay port pool, reservations (EVEN-PORT R /
//! RESERVATION-TOKEN), allocation quotas and the nonce key. Touched only on allocation create
//! and delete, never per relayed packet.
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

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
    per_user: Mutex<HashMap<String, u32>>,
    total: AtomicU32,
    pub nonce_key: [u8; 32],
}

#[derive(Debug, PartialEq, Eq)]
pub enum QuotaError {
    /// 486 Allocation Quota Reached.
    User,
    /// 508 Insufficient Capacity.
    Total,
}

impl Shared {
    pub fn new(min_port: u16, max_port: u16, nonce_key: [u8; 32], seed: u64) -> Self {
        Shared {
            ports: Mutex::new(PortPool::new(min_port, max_port, seed)),
            connections: Mutex::new(HashMap::new()),
            // CONNECTION-IDs need only be unique; start somewhere unguessable.
            next_conn_id: AtomicU32::new((seed >> 32) as u32 | 1),
            per_user: Mutex::new(HashMap::new()),
            total: AtomicU32::new(0),
            nonce_key,
        }
    }

    /// A random free port, even if `even`; with `reserve_next` the following port must be free too
    /// and is reserved under the returned token.
    pub fn take_port(
        &self,
        even: bool,
        reserve_next: bool,
        now: Instant,
    ) -> Option<(u16, Option<u64>)> {
        let mut p = self.ports.lock().unwrap_or_else(|e| e.into_inner());
        p.expire(now);
        let port = p.take(even, reserve_next)?;
        let token = if reserve_next {
            Some(p.reserve(port + 1, now))
        } else {
            None
        };
        Some((port, token))
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
        p.reservations.remove(&token).map(|(port, _)| port)
    }

    pub fn ports_in_use(&self) -> usize {
        self.ports.lock().unwrap_or_else(|e| e.into_inner()).in_use
    }

    /// Count an allocation against the per-user and total quotas (0 = unlimited).
    pub fn acquire_quota(
        &self,
        user: &str,
        user_quota: u32,
        total_quota: u32,
    ) -> Result<(), QuotaError> {
        let prev = self.total.fetch_add(1, Ordering::AcqRel);
        if total_quota != 0 && prev >= total_quota {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(QuotaError::Total);
        }
        let mut m = self.per_user.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(user.to_owned()).or_insert(0);
        if user_quota != 0 && *n >= user_quota {
            drop(m);
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(QuotaError::User);
        }
        *n += 1;
        Ok(())
    }

    pub fn release_quota(&self, user: &str) {
        self.total.fetch_sub(1, Ordering::AcqRel);
        let mut m = self.per_user.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                m.remove(user);
            }
        }
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
    /// token → (port, expiry). Reserved ports are marked used until redeemed or expired.
    reservations: HashMap<u64, (u16, Instant)>,
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

    fn reserve(&mut self, p: u16, now: Instant) -> u64 {
        if self.reservations.len() >= MAX_RESERVATIONS {
            // Oldest-first eviction is not worth a second index; drop an arbitrary one.
            if let Some(&t) = self.reservations.keys().next() {
                if let Some((port, _)) = self.reservations.remove(&t) {
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
            .insert(token, (p, now + RESERVATION_LIFETIME));
        token
    }

    fn expire(&mut self, now: Instant) {
        if self.reservations.is_empty() {
            return;
        }
        let expired: Vec<(u64, u16)> = self
            .reservations
            .iter()
            .filter(|(_, (_, exp))| *exp <= now)
            .map(|(t, (p, _))| (*t, *p))
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
            .map(|_| s.take_port(false, false, now).unwrap().0)
            .collect();
        got.sort();
        assert_eq!(got, (50000..=50009).collect::<Vec<_>>());
        assert!(s.take_port(false, false, now).is_none());
        s.release_port(50003);
        assert_eq!(s.take_port(false, false, now).unwrap().0, 50003);
    }

    #[test]
    fn even_port_reservation() {
        let s = Shared::new(50000, 50009, [0; 32], 7);
        let now = Instant::now();
        let (p, tok) = s.take_port(true, true, now).unwrap();
        assert_eq!(p % 2, 0);
        let tok = tok.unwrap();
        assert_eq!(s.ports_in_use(), 2);
        assert_eq!(s.redeem(tok, now), Some(p + 1));
        assert_eq!(s.redeem(tok, now), None, "a token is single-use");
        // an unredeemed reservation expires and frees its port
        let (_, tok2) = s.take_port(true, true, now).unwrap();
        assert_eq!(s.ports_in_use(), 4);
        assert_eq!(s.redeem(tok2.unwrap(), now + RESERVATION_LIFETIME), None);
        assert_eq!(s.ports_in_use(), 3);
    }

    #[test]
    fn quotas() {
        let s = Shared::new(50000, 50009, [0; 32], 1);
        assert!(s.acquire_quota("a", 2, 3).is_ok());
        assert!(s.acquire_quota("a", 2, 3).is_ok());
        assert_eq!(s.acquire_quota("a", 2, 3), Err(QuotaError::User));
        assert!(s.acquire_quota("b", 2, 3).is_ok());
        assert_eq!(s.acquire_quota("c", 2, 3), Err(QuotaError::Total));
        s.release_quota("a");
        assert!(s.acquire_quota("c", 2, 3).is_ok());
        assert_eq!(s.total_allocations(), 3);
    }
}
