//! RFC 6062: TCP allocations. The relayed transport address is a TCP listening socket; the client
//! opens connections to peers with Connect, hears of incoming ones by ConnectionAttempt, and
//! attaches each to a new client connection with ConnectionBind, after which the runtime splices
//! the two byte streams. The engine keeps the protocol state; the sockets stay in the runtime.
use std::cmp::Reverse;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tracing::info;

use super::allocation::Allocation;
use super::auth::Authenticated;
use super::{Engine, FiveTuple, RelayCommand, RelayId, RelaySlot, Req, Transport};
use crate::codec::stun::{self, attr, method, Class, Message, Writer};

/// RFC 6062 §5.2 / §5.3: a connection not bound by ConnectionBind within 30 s is closed, and a
/// Connect that has not completed in 30 s fails with 447.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// A Connect waiting for the runtime's TCP handshake with the peer.
pub(super) struct PendingConnect {
    req: Req,
    auth: Authenticated,
    alloc: u32,
    peer: SocketAddr,
    deadline: Instant,
}

impl Engine {
    /// RFC 6062 §5.2.
    pub(super) fn connect(&mut self, now: Instant, req: &Req, msg: &Message) {
        let Some(auth) = self.authenticate(now, req, msg) else {
            return;
        };
        let Some(idx) = self.owned_allocation(now, req, &auth) else {
            return;
        };
        let tcp = self.allocs[idx as usize].as_ref().is_some_and(|a| a.tcp);
        if !tcp {
            return self.error(
                now,
                req,
                Some(&auth),
                400,
                "Connect on a UDP allocation",
                true,
            );
        }
        let Some(v) = msg.get(attr::XOR_PEER_ADDRESS) else {
            return self.error(now, req, Some(&auth), 400, "missing XOR-PEER-ADDRESS", true);
        };
        let families = self.families(idx);
        let peer = match self.check_peer(req, v, families, false) {
            Ok(p) => p,
            Err((code, why)) => return self.error(now, req, Some(&auth), code, why, true),
        };
        let Some(relay) = self.allocs[idx as usize]
            .as_ref()
            .and_then(|a| a.relay_for(peer.ip()))
            .map(|r| r.id)
        else {
            return;
        };
        let busy = self.allocs[idx as usize].as_ref().is_some_and(|a| {
            a.connecting
                .iter()
                .chain(&a.tcp_peers)
                .any(|(p, _)| *p == peer)
        });
        if busy {
            return self.error(now, req, Some(&auth), 446, "", true);
        }
        if self.peer_connections(idx) >= self.cfg.limits.max_peer_connections {
            self.stats.refused_peer_connections += 1;
            return self.error(
                now,
                req,
                Some(&auth),
                508,
                "too many peer connections",
                true,
            );
        }
        let conn_id = self.shared.next_connection_id();
        if let Some(a) = self.allocs[idx as usize].as_mut() {
            a.connecting.push((peer, conn_id));
        }
        let deadline = now + CONNECTION_TIMEOUT;
        self.pending_connects.insert(
            conn_id,
            PendingConnect {
                req: *req,
                auth,
                alloc: idx,
                peer,
                deadline,
            },
        );
        self.conn_timers.push(Reverse((deadline, conn_id)));
        self.commands.push_back(RelayCommand::Connect {
            relay,
            conn_id,
            peer,
        });
    }

    /// Allocation `idx`'s peer connections, pending Connects included: each holds a socket,
    /// so together they are bounded by `max-peer-connections-per-allocation`.
    fn peer_connections(&self, idx: u32) -> usize {
        self.allocs[idx as usize]
            .as_ref()
            .map_or(0, |a| a.connecting.len() + a.tcp_peers.len())
    }

    /// A pending Connect of allocation `idx` is answered or gone.
    fn connect_settled(&mut self, idx: u32, conn_id: u32) {
        if let Some(a) = self.allocs[idx as usize].as_mut() {
            a.connecting.retain(|&(_, id)| id != conn_id);
        }
    }

    /// The runtime's answer to [`RelayCommand::Connect`].
    pub fn on_tcp_connected(
        &mut self,
        now: Instant,
        conn_id: u32,
        result: Result<(), std::io::ErrorKind>,
    ) {
        let Some(p) = self.pending_connects.remove(&conn_id) else {
            // Timed out already (447 sent): the runtime drops the socket it still has.
            self.commands.push_back(RelayCommand::DropPeer { conn_id });
            return;
        };
        self.connect_settled(p.alloc, conn_id);
        match result {
            Ok(()) => {
                let Some(a) = self.allocs[p.alloc as usize].as_mut() else {
                    self.commands.push_back(RelayCommand::DropPeer { conn_id });
                    return;
                };
                a.tcp_peers.push((p.peer, conn_id));
                self.tcp_conns.insert(conn_id, p.alloc);
                a.add_permission(p.peer.ip(), now, self.cfg.limits.max_permissions);
                self.shared.register_connection(
                    conn_id,
                    &p.auth.username,
                    now + CONNECTION_TIMEOUT,
                );
                self.conn_timers
                    .push(Reverse((now + CONNECTION_TIMEOUT, conn_id)));
                self.respond(
                    now,
                    &p.req,
                    Class::Success,
                    Some((&p.auth.key, p.auth.kind)),
                    true,
                    |w| {
                        w.u32(attr::CONNECTION_ID, conn_id);
                    },
                );
            }
            Err(kind) => {
                info!(event = "tcp_connect_failed", peer = %p.peer, ?kind, "Connect to peer failed");
                let req = p.req;
                self.error(now, &req, Some(&p.auth), 447, "", true);
            }
        }
    }

    /// A peer connected to the TCP relayed address of `relay` (RFC 6062 §5.3). `Some(id)`: keep
    /// the connection under that CONNECTION-ID (a ConnectionAttempt went to the client);
    /// `None`: close it (no allocation, not TCP, or no permission for the peer).
    pub fn on_peer_tcp_accepted(
        &mut self,
        now: Instant,
        relay: RelayId,
        peer: SocketAddr,
    ) -> Option<u32> {
        let Some(RelaySlot::Active(idx)) = self.relays.get(relay as usize) else {
            return None;
        };
        let idx = *idx;
        let full = self.peer_connections(idx) >= self.cfg.limits.max_peer_connections;
        let a = self.allocs[idx as usize].as_mut()?;
        if !a.tcp
            || !a.has_permission(peer.ip(), now)
            || a.tcp_peers.iter().any(|(p, _)| *p == peer)
        {
            self.stats.dropped_no_permission += 1;
            return None;
        }
        // A permitted peer can open connections from any number of ports: each holds a socket
        // until bound or timed out, so they are capped per allocation.
        if full {
            self.stats.refused_peer_connections += 1;
            return None;
        }
        let conn_id = self.shared.next_connection_id();
        a.tcp_peers.push((peer, conn_id));
        let (tuple, username) = (a.tuple, a.username.clone());
        self.tcp_conns.insert(conn_id, idx);
        self.shared
            .register_connection(conn_id, &username, now + CONNECTION_TIMEOUT);
        self.conn_timers
            .push(Reverse((now + CONNECTION_TIMEOUT, conn_id)));
        let mut tid = [0u8; 12];
        tid[..8].copy_from_slice(&self.next_rand().to_le_bytes());
        tid[8..].copy_from_slice(&conn_id.to_le_bytes());
        let mut data = Vec::with_capacity(64);
        let mut w = Writer::new(
            &mut data,
            method::CONNECTION_ATTEMPT,
            Class::Indication,
            &tid,
        );
        w.xor_addr(attr::XOR_PEER_ADDRESS, peer)
            .u32(attr::CONNECTION_ID, conn_id);
        self.transmits.push_back(super::Transmit { tuple, data });
        Some(conn_id)
    }

    /// RFC 6062 §5.4: ConnectionBind arrives on a new client connection (the data connection).
    pub(super) fn connection_bind(&mut self, now: Instant, req: &Req, msg: &Message) {
        let Some(auth) = self.authenticate(now, req, msg) else {
            return;
        };
        if req.tuple.transport == Transport::Udp || self.by_tuple.contains_key(&req.tuple) {
            return self.error(
                now,
                req,
                Some(&auth),
                400,
                "ConnectionBind needs a new TCP connection",
                false,
            );
        }
        let Some(conn_id) = msg.get(attr::CONNECTION_ID).and_then(stun::decode_u32) else {
            return self.error(now, req, Some(&auth), 400, "missing CONNECTION-ID", false);
        };
        if !self.shared.claim_connection(conn_id, &auth.username, now) {
            return self.error(now, req, Some(&auth), 400, "unknown CONNECTION-ID", false);
        }
        self.respond(
            now,
            req,
            Class::Success,
            Some((&auth.key, auth.kind)),
            false,
            |_| {},
        );
        // After the response, the connection carries the peer's bytes (the runtime sends the
        // queued response before it starts splicing).
        self.commands.push_back(RelayCommand::Splice {
            tuple: req.tuple,
            conn_id,
        });
    }

    /// Connect deadlines and unbound-connection expiry (§5.2, §5.3).
    pub(super) fn expire_connections(&mut self, now: Instant) {
        while let Some(&Reverse((t, id))) = self.conn_timers.peek() {
            if t > now {
                break;
            }
            self.conn_timers.pop();
            if let Some(p) = self.pending_connects.get(&id) {
                if p.deadline <= now {
                    let p = self.pending_connects.remove(&id).expect("present");
                    self.connect_settled(p.alloc, id);
                    let req = p.req;
                    self.error(now, &req, Some(&p.auth), 447, "", true);
                    self.commands
                        .push_back(RelayCommand::DropPeer { conn_id: id });
                }
                continue;
            }
            if self.shared.expire_connection(id, now) {
                self.forget_tcp_connection(id);
                self.commands
                    .push_back(RelayCommand::DropPeer { conn_id: id });
            }
        }
    }

    /// The session id of the allocation owning peer connection `conn_id` (its usage record):
    /// accepted, or connected by a Connect not yet answered.
    pub fn tcp_connection_session(&self, conn_id: u32) -> Option<u64> {
        let idx = match self.tcp_conns.get(&conn_id) {
            Some(&idx) => idx,
            None => self.pending_connects.get(&conn_id)?.alloc,
        };
        Some(self.allocs.get(idx as usize)?.as_ref()?.session_id)
    }

    /// The peer connection `conn_id` is gone (either side of its splice closed). Ids are unique
    /// across shards, so an id of another shard's allocation is simply not found here.
    /// `to_peer` / `to_client`: the bytes it carried while spliced (0 if it never was), kept
    /// with the allocation for the admin session list.
    pub fn on_peer_tcp_closed(&mut self, conn_id: u32, to_peer: u64, to_client: u64) {
        if let Some(a) = self
            .tcp_conns
            .get(&conn_id)
            .and_then(|&idx| self.allocs[idx as usize].as_mut())
        {
            a.spliced_to_peer += to_peer;
            a.spliced_to_client += to_client;
        }
        self.forget_tcp_connection(conn_id);
    }

    /// The allocation no longer counts `conn_id` (a new Connect to that peer is allowed again).
    fn forget_tcp_connection(&mut self, conn_id: u32) {
        if let Some(idx) = self.tcp_conns.remove(&conn_id) {
            if let Some(a) = self.allocs[idx as usize].as_mut() {
                a.tcp_peers.retain(|&(_, id)| id != conn_id);
            }
        }
    }

    /// RFC 6062 §5.5: the connections of a TCP allocation end with it (deleted by Refresh 0,
    /// expiry, its control connection closing (RFC 8656 §3.1), an admin kill or shutdown).
    /// Connects still in their handshake get 447 (§5.2) and are abandoned; unbound connections
    /// leave the shared table, so a late ConnectionBind gets 400; the runtime closes every
    /// socket, both halves of each splice, on whichever shard holds it.
    pub(super) fn close_tcp_connections(&mut self, now: Instant, a: &Allocation) {
        let mut conn_ids: Vec<u32> = Vec::with_capacity(a.tcp_peers.len());
        for &(_, id) in &a.tcp_peers {
            self.tcp_conns.remove(&id);
            self.shared.forget_connection(id);
            conn_ids.push(id);
        }
        for &(_, id) in &a.connecting {
            if let Some(p) = self.pending_connects.remove(&id) {
                let req = p.req;
                self.error(now, &req, Some(&p.auth), 447, "allocation deleted", true);
                conn_ids.push(id);
            }
        }
        if !conn_ids.is_empty() {
            self.commands
                .push_back(RelayCommand::CloseConnections { conn_ids });
        }
    }
}

/// Attribute-level checks RFC 6062 §5.1 adds to Allocate with REQUESTED-TRANSPORT TCP.
pub(super) fn tcp_allocate_error(tuple: &FiveTuple, msg: &Message) -> Option<&'static str> {
    if tuple.transport == Transport::Udp {
        return Some("TCP relaying needs a TCP or TLS client connection");
    }
    if msg.has(attr::DONT_FRAGMENT) || msg.has(attr::EVEN_PORT) || msg.has(attr::RESERVATION_TOKEN)
    {
        return Some("DONT-FRAGMENT, EVEN-PORT and RESERVATION-TOKEN do not apply to TCP");
    }
    // Dual allocation is defined for UDP relays (RFC 8656 §7.2); not offered for TCP ones.
    if msg.has(attr::ADDITIONAL_ADDRESS_FAMILY) || msg.has(attr::ADDITIONAL_ADDRESS_FAMILY_DRAFT) {
        return Some("ADDITIONAL-ADDRESS-FAMILY is not supported for TCP allocations");
    }
    None
}
