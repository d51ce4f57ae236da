//! One TURN allocation (RFC 8656 §2): relayed transport address(es), owner, lifetime,
//! permissions (§9) and channel bindings (§12). Small vectors, scanned linearly: a real client
//! has a handful of each, and the caps bound memory per client.
//!
//! A dual allocation (RFC 8656 §7.2, ADDITIONAL-ADDRESS-FAMILY) has one relayed transport
//! address per address family, each with its own relay socket and its own time-to-expiry
//! (§8.1: a Refresh with REQUESTED-ADDRESS-FAMILY refreshes or deletes one family only).
//! Permissions and channels name a peer IP, so they belong to the relay of that IP's family.
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::auth::Key;
use super::{FiveTuple, RelayId};
use crate::codec::stun::IntegrityKind;

/// RFC 8656 §9: permissions last 300 s.
pub const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
/// RFC 8656 §11: channel bindings last 600 s.
pub const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
/// RFC 8656 §11: after a binding expires, neither its number nor its peer may be bound to
/// anything else for 5 more minutes (so stray packets are not misdelivered).
pub const CHANNEL_COOLDOWN: Duration = Duration::from_secs(300);
/// [`Allocation::bind_channel`]'s error when the cap is reached (→ 508, not 400).
pub const TOO_MANY_CHANNELS: &str = "too many channels";

#[derive(Clone, Debug)]
pub struct Permission {
    pub ip: IpAddr,
    pub expires: Instant,
}

#[derive(Clone, Debug)]
pub struct Channel {
    pub number: u16,
    pub peer: SocketAddr,
    pub expires: Instant,
}

/// Index of the IPv4 relay in [`Allocation::relays`].
pub const V4: usize = 0;
/// Index of the IPv6 relay in [`Allocation::relays`].
pub const V6: usize = 1;

/// [`V4`] or [`V6`]: the relay that serves a peer at `ip`.
#[inline]
pub fn family(ip: IpAddr) -> usize {
    if ip.is_ipv4() {
        V4
    } else {
        V6
    }
}

/// One relayed transport address of an allocation and the socket behind it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Relay {
    /// The relay socket (runtime id).
    pub id: RelayId,
    /// Address advertised in XOR-RELAYED-ADDRESS (external IP when configured).
    pub addr: SocketAddr,
    /// The port taken from the shared pool, given back when this relay is closed.
    pub port: u16,
    /// Time-to-expiry of this relayed address (RFC 8656 §8.2).
    pub expires: Instant,
}

#[derive(Debug)]
pub struct Allocation {
    pub tuple: FiveTuple,
    pub username: String,
    pub key: Key,
    pub kind: IntegrityKind,
    /// Relayed transport addresses by family, `[IPv4, IPv6]` ([`V4`], [`V6`]): one for a plain
    /// allocation, two for a dual one. Never both `None` (the last one going deletes the
    /// allocation).
    pub relays: [Option<Relay>; 2],
    pub created: Instant,
    pub permissions: Vec<Permission>,
    pub channels: Vec<Channel>,
    pub to_peer_packets: u64,
    pub to_peer_bytes: u64,
    pub to_client_packets: u64,
    pub to_client_bytes: u64,
    /// RFC 6062: bytes of this allocation's data connections that have ended (each one's are
    /// also in its `tcp_connection_end` record); in the admin session list, not `session_end`.
    pub spliced_to_peer: u64,
    pub spliced_to_client: u64,
    /// RFC 6062 TCP allocation: the relayed address is a TCP listener.
    pub tcp: bool,
    /// Allocated with DONT-FRAGMENT: the relay sockets send with DF set (RFC 8656 §7.2).
    pub dont_fragment: bool,
    /// When this allocation's entry in the engine's timer heap fires: the one entry that
    /// counts (older ones are skipped when they pop). A Refresh that extends the lifetime
    /// pushes nothing; the entry re-arms when it fires, so Refreshes cannot grow the heap.
    pub armed: Instant,
    /// TCP allocations: peers with a connection (pending bind or spliced), for 446, with the
    /// CONNECTION-ID of each (closed with the allocation, RFC 6062 §5.5).
    pub tcp_peers: Vec<(SocketAddr, u32)>,
    /// TCP allocations: Connects not answered yet (peer, CONNECTION-ID), so that checking a
    /// Connect against 446 and the peer-connection cap looks at this allocation's own, not
    /// at every pending Connect of the shard.
    pub connecting: Vec<(SocketAddr, u32)>,
    /// `max-bps` buckets: client → peer, peer → client (coturn treats them separately).
    pub bw: [super::limits::ByteBucket; 2],
    /// Random id in logs (`session_start` / `session_end`) and the admin API.
    pub session_id: u64,
    /// The Allocate that made this allocation and the success it got: a retransmission is
    /// answered with these bytes even after the shard's transaction cache (bounded, shared by
    /// every request) evicted them, instead of 437 (RFC 8656 §7.2, RFC 8489 §6.3.1).
    pub created_by: [u8; 12],
    pub created_answer: Box<[u8]>,
}

impl Allocation {
    /// The relay of `ip`'s family, if the allocation has one.
    #[inline]
    pub fn relay_for(&self, ip: IpAddr) -> Option<&Relay> {
        self.relays[family(ip)].as_ref()
    }

    /// The relay socket data to `ip` leaves by, if the allocation has one of that family and a
    /// live permission for `ip` (RFC 8656 §9, §11.2, §12.4).
    #[inline]
    pub fn permitted_relay(&self, ip: IpAddr, now: Instant) -> Option<RelayId> {
        self.relay_for(ip)
            .filter(|_| self.has_permission(ip, now))
            .map(|r| r.id)
    }

    /// When the last of its relayed addresses expires.
    pub fn expires(&self) -> Option<Instant> {
        self.relays.iter().flatten().map(|r| r.expires).max()
    }

    /// The earliest time-to-expiry of its relayed addresses (§8.1: they expire one by one).
    pub fn next_expiry(&self) -> Option<Instant> {
        self.relays.iter().flatten().map(|r| r.expires).min()
    }

    /// RFC 8656 §8.1: deleting the relayed address of one family "destroys any permissions or
    /// channels associated with that particular allocation; it MUST NOT affect any permissions
    /// or channels associated with allocations for the other address family".
    pub fn forget_family(&mut self, fam: usize) {
        self.permissions.retain(|p| family(p.ip) != fam);
        self.channels.retain(|c| family(c.peer.ip()) != fam);
    }

    #[inline]
    pub fn has_permission(&self, ip: IpAddr, now: Instant) -> bool {
        self.permissions
            .iter()
            .any(|p| p.ip == ip && p.expires > now)
    }

    /// Whether installing `ips` (repeats allowed) stays within `cap` once expired permissions
    /// are dropped: lets a request install all of its permissions or none (RFC 8656 §9.2).
    pub fn permissions_fit(&mut self, ips: &[IpAddr], now: Instant, cap: usize) -> bool {
        self.permissions.retain(|p| p.expires > now);
        let new = ips
            .iter()
            .enumerate()
            .filter(|&(i, ip)| {
                !ips[..i].contains(ip) && !self.permissions.iter().any(|p| p.ip == *ip)
            })
            .count();
        self.permissions.len() + new <= cap
    }

    /// Install or refresh a permission. Returns false when the cap is reached.
    pub fn add_permission(&mut self, ip: IpAddr, now: Instant, cap: usize) -> bool {
        let expires = now + PERMISSION_LIFETIME;
        if let Some(p) = self.permissions.iter_mut().find(|p| p.ip == ip) {
            p.expires = expires;
            return true;
        }
        self.permissions.retain(|p| p.expires > now);
        if self.permissions.len() >= cap {
            return false;
        }
        self.permissions.push(Permission { ip, expires });
        true
    }

    /// The peer bound to `number`, if the binding is live.
    #[inline]
    pub fn channel_peer(&self, number: u16, now: Instant) -> Option<SocketAddr> {
        self.channels
            .iter()
            .find(|c| c.number == number && c.expires > now)
            .map(|c| c.peer)
    }

    /// The live channel bound to `peer`, if any.
    #[inline]
    pub fn channel_for_peer(&self, peer: SocketAddr, now: Instant) -> Option<u16> {
        self.channels
            .iter()
            .find(|c| c.peer == peer && c.expires > now)
            .map(|c| c.number)
    }

    /// RFC 8656 §11.2 rebind rules; `Err` names the reason for a 400.
    /// Why `number` cannot be bound to `peer` (RFC 8656 §12.2: a number bound to another peer,
    /// or the peer to another number, including bindings in their cool-down), if so.
    pub fn channel_conflict(
        &mut self,
        number: u16,
        peer: SocketAddr,
        now: Instant,
    ) -> Option<&'static str> {
        // Bindings past their cool-down are gone for good.
        self.channels.retain(|c| c.expires + CHANNEL_COOLDOWN > now);
        self.channels.iter().find_map(|c| {
            if c.number == number && c.peer != peer {
                Some("channel number bound to another peer")
            } else if c.peer == peer && c.number != number {
                Some("peer bound to another channel")
            } else {
                None
            }
        })
    }

    pub fn bind_channel(
        &mut self,
        number: u16,
        peer: SocketAddr,
        now: Instant,
        cap: usize,
    ) -> Result<(), &'static str> {
        if let Some(why) = self.channel_conflict(number, peer, now) {
            return Err(why);
        }
        let expires = now + CHANNEL_LIFETIME;
        if let Some(c) = self.channels.iter_mut().find(|c| c.number == number) {
            c.expires = expires;
            return Ok(());
        }
        if self.channels.len() >= cap {
            return Err(TOO_MANY_CHANNELS);
        }
        self.channels.push(Channel {
            number,
            peer,
            expires,
        });
        Ok(())
    }
}

/// RFC 8656 §7.2 / §7.3: the "desired lifetime". Zero only when asked for zero; otherwise
/// min(requested, max), but never below the default.
pub fn desired_lifetime(requested: Option<u32>, default: Duration, max: Duration) -> Duration {
    match requested {
        Some(0) => Duration::ZERO,
        Some(r) => Duration::from_secs(r as u64).min(max).max(default.min(max)),
        None => default.min(max),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetime_rules() {
        let d = Duration::from_secs(600);
        let m = Duration::from_secs(3600);
        assert_eq!(desired_lifetime(None, d, m), d);
        assert_eq!(desired_lifetime(Some(0), d, m), Duration::ZERO);
        assert_eq!(desired_lifetime(Some(30), d, m), d);
        assert_eq!(
            desired_lifetime(Some(1200), d, m),
            Duration::from_secs(1200)
        );
        assert_eq!(desired_lifetime(Some(99999), d, m), m);
    }
}
