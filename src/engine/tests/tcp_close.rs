//! RFC 6062 §5.5: the connections of a TCP allocation end with it, however it ends. The engine
//! names them all in one CloseConnections command (the runtime closes the sockets on whichever
//! shard holds them), answers a Connect still in its handshake with 447 and forgets unbound
//! connections, so a late ConnectionBind gets 400.
use super::*;

/// The TCP allocation of `c` with: a connected and bound peer (spliced), an incoming peer
/// connection waiting for ConnectionBind and a Connect still in its handshake. Returns
/// (spliced id, unbound id, connecting id).
fn tcp_allocation_with_connections(h: &mut Harness, c: &mut Client) -> (u32, u32, u32) {
    let relay = tcp_allocation(h, c);
    let connect = |h: &mut Harness, c: &mut Client, p: SocketAddr| -> u32 {
        let (_, req) = c.build(method::CONNECT, &|w| {
            w.xor_addr(attr::XOR_PEER_ADDRESS, p);
        });
        assert!(h.send(c.tuple, &req).is_empty(), "answered when connected");
        match h.peer_cmds.pop() {
            Some(RelayCommand::Connect { conn_id, .. }) => conn_id,
            other => panic!("expected a Connect command, got {other:?}"),
        }
    };
    // 1. Connect, connected, bound on a data connection: spliced.
    let spliced = connect(h, c, sa("203.0.113.5:80"));
    h.engine.on_tcp_connected(h.now, spliced, Ok(()));
    Resp(h.engine.poll_transmit().unwrap().data).assert_ok(method::CONNECT);
    let mut data = Client::new(tcp_tuple("198.51.100.20:40001"), "alice", "alice-pw");
    h.transact(&mut data, method::CONNECTION_BIND, &|w| {
        w.u32(attr::CONNECTION_ID, spliced);
    })
    .assert_ok(method::CONNECTION_BIND);
    assert!(matches!(
        h.peer_cmds.pop(),
        Some(RelayCommand::Splice { conn_id, .. }) if conn_id == spliced
    ));
    // 2. An incoming peer connection, announced, not bound yet.
    let peer = sa("203.0.113.9:3333");
    h.permit(c, &[peer]).assert_ok(method::CREATE_PERMISSION);
    let unbound = h
        .engine
        .on_peer_tcp_accepted(h.now, relay, peer)
        .expect("accepted");
    while h.engine.poll_transmit().is_some() {}
    // 3. A Connect whose handshake has not finished.
    let connecting = connect(h, c, sa("203.0.113.6:80"));
    (spliced, unbound, connecting)
}

/// The ids of the CloseConnections commands queued so far, sorted.
fn closed_ids(h: &Harness) -> Vec<u32> {
    let mut ids: Vec<u32> = h
        .peer_cmds
        .iter()
        .filter_map(|c| match c {
            RelayCommand::CloseConnections { conn_ids } => Some(conn_ids.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    ids.sort_unstable();
    ids
}

fn sorted(mut v: Vec<u32>) -> Vec<u32> {
    v.sort_unstable();
    v
}

#[test]
fn refresh_zero_closes_every_connection_of_the_tcp_allocation() {
    let mut h = Harness::new(cfg());
    let mut c = Client::new(tcp_tuple("198.51.100.20:40000"), "alice", "alice-pw");
    let (spliced, unbound, connecting) = tcp_allocation_with_connections(&mut h, &mut c);
    assert_eq!(
        closed_ids(&h),
        Vec::<u32>::new(),
        "nothing closed while alive"
    );
    // RFC 8656 §7.3: Refresh with LIFETIME 0 deletes the allocation. The pending Connect is
    // answered first (447, §5.2), then the Refresh.
    let (tid, req) = c.build(method::REFRESH, &|w| {
        w.u32(attr::LIFETIME, 0);
    });
    let answers = h.send(c.tuple, &req);
    assert_eq!(answers.len(), 2, "{answers:?}");
    answers[0].assert_err(method::CONNECT, 447);
    assert_eq!(answers[1].tid(), tid);
    answers[1].assert_ok(method::REFRESH);
    assert_eq!(closed_ids(&h), sorted(vec![spliced, unbound, connecting]));
    // One command for the whole allocation (one cross-shard message at most).
    assert_eq!(
        h.peer_cmds
            .iter()
            .filter(|c| matches!(c, RelayCommand::CloseConnections { .. }))
            .count(),
        1
    );
    // The unbound connection left the shared table: a late ConnectionBind gets 400.
    let mut late = Client::new(tcp_tuple("198.51.100.20:40002"), "alice", "alice-pw");
    h.transact(&mut late, method::CONNECTION_BIND, &|w| {
        w.u32(attr::CONNECTION_ID, unbound);
    })
    .assert_err(method::CONNECTION_BIND, 400);
    // The handshake finishing after the deletion: the runtime is told to drop the socket, and
    // nothing is answered or attached.
    h.engine.on_tcp_connected(h.now, connecting, Ok(()));
    h.pump();
    assert!(h.engine.poll_transmit().is_none());
    assert!(h
        .peer_cmds
        .iter()
        .any(|c| matches!(c, RelayCommand::DropPeer { conn_id } if *conn_id == connecting)));
    // The timers of the forgotten connections fire without effect.
    let before = h.peer_cmds.len();
    h.set_time(31);
    assert_eq!(h.peer_cmds.len(), before);
    assert!(h.engine.poll_transmit().is_none());
}

#[test]
fn control_connection_close_expiry_and_kill_close_the_connections_too() {
    type End = fn(&mut Harness, &Client);
    let ends: [(&str, End); 4] = [
        // RFC 8656 §3.1: the allocation is bound to the control connection's 5-tuple.
        ("control closed", |h, c| {
            h.engine.on_client_closed(h.now, c.tuple);
            h.pump();
        }),
        // §7.2: default lifetime 600 s.
        ("expiry", |h, _| h.set_time(601)),
        ("admin kill", |h, _| {
            let id = h.engine.sessions(h.now)[0].id;
            assert!(h.engine.kill_session(h.now, id));
            h.pump();
        }),
        ("shutdown", |h, _| {
            h.engine.close_all(h.now);
            h.pump();
        }),
    ];
    for (what, end) in ends {
        let mut h = Harness::new(cfg());
        let mut c = Client::new(tcp_tuple("198.51.100.20:40000"), "alice", "alice-pw");
        let (spliced, unbound, connecting) = tcp_allocation_with_connections(&mut h, &mut c);
        end(&mut h, &c);
        assert_eq!(h.engine.allocation_count(), 0, "{what}");
        assert_eq!(
            closed_ids(&h),
            sorted(vec![spliced, unbound, connecting]),
            "{what}"
        );
    }
}

#[test]
fn closed_or_expired_peer_connections_free_the_peer_for_a_new_connect() {
    // §5.2: 446 is for a peer that has a connection; once it is gone (closed by either side,
    // or never bound within 30 s, §5.3), a new Connect to it is allowed, and the deletion of
    // the allocation no longer names it.
    let mut h = Harness::new(cfg());
    let mut c = Client::new(tcp_tuple("198.51.100.20:40000"), "alice", "alice-pw");
    let (spliced, unbound, connecting) = tcp_allocation_with_connections(&mut h, &mut c);
    let peer = sa("203.0.113.5:80");
    let connect = |h: &mut Harness, c: &mut Client| {
        let (_, req) = c.build(method::CONNECT, &|w| {
            w.xor_addr(attr::XOR_PEER_ADDRESS, peer);
        });
        h.send(c.tuple, &req)
    };
    let r = connect(&mut h, &mut c);
    assert_eq!(r.len(), 1);
    r[0].assert_err(method::CONNECT, 446);
    // A splice of another shard's engine closing is not ours: nothing changes.
    h.engine.on_peer_tcp_closed(spliced ^ 0x8000_0000, 5, 6);
    connect(&mut h, &mut c)[0].assert_err(method::CONNECT, 446);
    let bytes = |h: &Harness| {
        let s = h.engine.sessions(h.now);
        (s[0].to_peer_bytes, s[0].to_client_bytes)
    };
    assert_eq!(bytes(&h), (0, 0));
    // Its bytes stay with the allocation for the session list.
    h.engine.on_peer_tcp_closed(spliced, 700, 900);
    assert_eq!(bytes(&h), (700, 900));
    assert!(connect(&mut h, &mut c).is_empty(), "Connect started again");
    assert!(matches!(
        h.peer_cmds.pop(),
        Some(RelayCommand::Connect { .. })
    ));
    // The unbound one expires (its DropPeer), the Connect in progress times out (447).
    h.set_time(31);
    while h.engine.poll_transmit().is_some() {}
    h.peer_cmds.clear();
    h.engine.on_client_closed(h.now, c.tuple);
    h.pump();
    // Nothing was left open: no command (the new Connect timed out as well).
    assert_eq!(h.engine.allocation_count(), 0);
    assert_eq!(
        closed_ids(&h),
        Vec::<u32>::new(),
        "{spliced} {unbound} {connecting}"
    );
}

#[test]
fn udp_and_idle_tcp_allocations_need_no_close_command() {
    let mut h = Harness::new(cfg());
    let mut u = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    h.alloc_ok(&mut u);
    h.refresh(&mut u, Some(0)).assert_ok(method::REFRESH);
    let mut t = Client::new(tcp_tuple("198.51.100.21:40000"), "alice", "alice-pw");
    tcp_allocation(&mut h, &mut t);
    h.engine.on_client_closed(h.now, t.tuple);
    h.pump();
    assert_eq!(h.engine.allocation_count(), 0);
    assert!(closed_ids(&h).is_empty(), "{:?}", h.peer_cmds);
}
