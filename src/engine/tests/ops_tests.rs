//! Operations rules of the engine on the fake clock: drain (300 Try Alternate with
//! ALTERNATE-SERVER, or 508), kill by session id and by user, session counters, histograms and
//! failure reasons.
use super::*;
use crate::engine::ops::{AuthFailure, EndReason, Refusal};

fn alt_cfg() -> EngineConfig {
    EngineConfig {
        alternate_servers: vec![sa("[2001:db8::99]:3478"), sa("192.0.2.99:3479")],
        ..cfg()
    }
}

#[test]
fn draining_without_alternate_server_refuses_new_allocations_with_508() {
    // RFC 8656 §7.2 (508 Insufficient Capacity): no alternate to send the client to. Existing
    // allocations are refreshed and relay as before.
    let mut h = Harness::new(cfg());
    let mut a = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    let (relay, _) = h.alloc_ok(&mut a);
    h.permit(&mut a, &[p1()])
        .assert_ok(method::CREATE_PERMISSION);
    h.engine.set_draining(true);
    assert!(h.engine.is_draining());

    let mut b = Client::new(udp("198.51.100.21:40000"), "bob", "bob-pw");
    let r = h.allocate(&mut b, &|_| {});
    r.assert_err(method::ALLOCATE, 508);
    b.assert_signed(&r);
    assert!(
        h.binds.len() == 1,
        "no relay socket for the refused Allocate"
    );
    assert_eq!(h.shared.total_allocations(), 1, "no quota taken");
    assert_eq!(
        h.engine.stats.ops.refusals[Refusal::DrainRefused as usize],
        1
    );

    h.refresh(&mut a, Some(600)).assert_ok(method::REFRESH);
    let out = h
        .client_datagram(a.tuple, &send_indication(p1(), b"still relaying"))
        .expect("relayed while draining");
    assert_eq!((out.relay, out.peer), (relay, p1()));
    let (from, data) = h.data_indication(relay, p1(), b"back", a.tuple);
    assert_eq!((from, data.as_slice()), (p1(), &b"back"[..]));

    // Draining off (not used by the runtime, but the switch works both ways).
    h.engine.set_draining(false);
    h.allocate(&mut b, &|_| {}).assert_ok(method::ALLOCATE);
}

#[test]
fn draining_with_alternate_server_redirects_with_300_of_the_client_family() {
    // RFC 8489 §10 / §14.15: 300 Try Alternate with ALTERNATE-SERVER, an address of the
    // family of the request; signed like every answer to an authenticated request.
    let mut h = Harness::new(alt_cfg());
    h.engine.set_draining(true);
    let mut c = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    let r = h.allocate(&mut c, &|_| {});
    r.assert_err(method::ALLOCATE, 300);
    c.assert_signed(&r);
    let alt = r.get(attr::ALTERNATE_SERVER).expect("ALTERNATE-SERVER");
    assert_eq!(
        crate::codec::stun::decode_addr(&alt),
        Some(sa("192.0.2.99:3479"))
    );
    assert!(h.binds.is_empty());
    assert_eq!(h.engine.allocation_count(), 0);
    assert_eq!(
        h.engine.stats.ops.refusals[Refusal::DrainRedirect as usize],
        1
    );

    // An IPv6 client gets the IPv6 alternate.
    let mut h6 = Client::new(udp("[2001:db8::20]:40000"), "alice", "alice-pw");
    let r = h.allocate(&mut h6, &|_| {});
    r.assert_err(method::ALLOCATE, 300);
    let alt = r.get(attr::ALTERNATE_SERVER).unwrap();
    assert_eq!(
        crate::codec::stun::decode_addr(&alt),
        Some(sa("[2001:db8::99]:3478"))
    );
}

#[test]
fn draining_still_challenges_first_and_only_allocate_is_refused() {
    // No redirect (and no alternate address) for an unauthenticated request: 401 first.
    let mut h = Harness::new(alt_cfg());
    h.engine.set_draining(true);
    let c = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    let (_, req) = c.build(method::ALLOCATE, &transport_udp);
    let r = h.send_one(c.tuple, &req);
    r.assert_err(method::ALLOCATE, 401);
    assert!(r.get(attr::ALTERNATE_SERVER).is_none());
    // Binding requests are answered as usual.
    let mut buf = Vec::new();
    Writer::new(&mut buf, method::BINDING, Class::Request, &new_tid());
    h.send_one(c.tuple, &buf).assert_ok(method::BINDING);
}

#[test]
fn kill_session_deletes_the_allocation_and_refresh_gets_437() {
    let mut h = Harness::new(cfg());
    let mut a = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    let (relay, relayed) = h.alloc_ok(&mut a);
    h.permit(&mut a, &[p1()])
        .assert_ok(method::CREATE_PERMISSION);
    h.client_datagram(a.tuple, &send_indication(p1(), b"12345"))
        .expect("relayed");
    let s = h.engine.sessions(h.now);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].user, "alice");
    assert_eq!(s[0].client, a.tuple.client);
    assert_eq!(s[0].relays, vec![relayed]);
    assert_eq!((s[0].to_peer_packets, s[0].to_peer_bytes), (1, 5));
    assert_eq!((s[0].permissions, s[0].channels), (1, 0));

    assert!(!h.engine.kill_session(h.now, s[0].id ^ 1), "unknown id");
    assert!(h.engine.kill_session(h.now, s[0].id));
    h.pump();
    assert_eq!(h.closes, vec![relay], "relay socket closed");
    assert_eq!(h.shared.total_allocations(), 0);
    assert_eq!(h.shared.ports_in_use(), 0);
    assert!(h.peer_datagram(relay, p1(), b"late").is_none());
    // RFC 8656 §7.3: no allocation on this 5-tuple any more.
    h.refresh(&mut a, Some(600))
        .assert_err(method::REFRESH, 437);
    assert_eq!(
        h.engine.stats.ops.sessions_ended[EndReason::Killed as usize],
        1
    );
    assert!(!h.engine.kill_session(h.now, s[0].id), "already gone");
}

#[test]
fn kill_user_deletes_every_session_of_that_user_only() {
    let mut h = Harness::new(cfg());
    let mut a1 = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    let mut a2 = Client::new(udp("198.51.100.20:40001"), "alice", "alice-pw");
    let mut b = Client::new(udp("198.51.100.21:40000"), "bob", "bob-pw");
    h.alloc_ok(&mut a1);
    h.alloc_ok(&mut a2);
    h.alloc_ok(&mut b);
    assert_eq!(h.engine.kill_user(h.now, "alice"), 2);
    h.pump();
    assert_eq!(h.closes.len(), 2);
    assert_eq!(h.engine.allocation_count(), 1);
    assert_eq!(h.engine.sessions(h.now)[0].user, "bob");
    h.refresh(&mut a1, Some(600))
        .assert_err(method::REFRESH, 437);
    h.refresh(&mut b, Some(600)).assert_ok(method::REFRESH);
    assert_eq!(h.engine.kill_user(h.now, "alice"), 0);
}

#[test]
fn session_ids_differ_and_histograms_and_reasons_count() {
    let mut h = Harness::new(cfg());
    let mut a = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    let mut b = Client::new(udp("198.51.100.21:40000"), "bob", "bob-pw");
    h.alloc_ok(&mut a);
    h.alloc_ok(&mut b);
    let ids: Vec<u64> = h.engine.sessions(h.now).iter().map(|s| s.id).collect();
    assert_eq!(ids.len(), 2);
    assert_ne!(ids[0], ids[1]);
    // Same fake instant for request and bind: setup time 0 µs, in the first bucket.
    let st = &h.engine.stats.ops.setup_time;
    assert_eq!((st.count, st.counts[0]), (2, 2));

    // Refresh 0 after 42 s, the other expires at 600 s.
    h.set_time(42);
    h.refresh(&mut a, Some(0)).assert_ok(method::REFRESH);
    h.set_time(601);
    let ops = &h.engine.stats.ops;
    assert_eq!(ops.sessions_ended[EndReason::Refresh0 as usize], 1);
    assert_eq!(ops.sessions_ended[EndReason::Expired as usize], 1);
    assert_eq!(ops.session_duration.count, 2);
    assert_eq!(ops.session_duration.sum, 42 + 601);
    // 42 s → the ≤60 s bucket (index 4); 601 s → ≤1800 s (index 8).
    assert_eq!(ops.session_duration.counts[4], 1);
    assert_eq!(ops.session_duration.counts[8], 1);

    // Gauges count live permissions and channels by transport.
    let mut c = Client::new(
        tuple("198.51.100.22:40000", Transport::Tcp),
        "alice",
        "alice-pw",
    );
    h.alloc_ok(&mut c);
    h.channel_bind(&mut c, 0x4000, p1())
        .assert_ok(method::CHANNEL_BIND);
    let g = h.engine.gauges(h.now);
    assert_eq!(g.allocations, [0, 1, 0]);
    assert_eq!(g.permissions, [0, 1, 0]);
    assert_eq!(g.channels, [0, 1, 0]);
    h.set_time(601 + 301);
    assert_eq!(
        h.engine.gauges(h.now).permissions,
        [0, 0, 0],
        "expired permission"
    );
}

#[test]
fn auth_failures_are_counted_by_reason() {
    let mut h = Harness::new(cfg());
    let mut wrong = Client::new(udp("198.51.100.20:40000"), "alice", "not-her-password");
    h.login(&mut wrong);
    let (_, req) = wrong.build(method::ALLOCATE, &transport_udp);
    h.send_one(wrong.tuple, &req)
        .assert_err(method::ALLOCATE, 401);
    let mut nobody = Client::new(udp("198.51.100.21:40000"), "mallory", "x");
    h.login(&mut nobody);
    let (_, req) = nobody.build(method::ALLOCATE, &transport_udp);
    h.send_one(nobody.tuple, &req)
        .assert_err(method::ALLOCATE, 401);
    let f = &h.engine.stats.ops.auth_failures;
    assert_eq!(f[AuthFailure::BadIntegrity as usize], 1);
    assert_eq!(f[AuthFailure::UnknownUser as usize], 1);
    assert_eq!(h.engine.stats.auth_failures, 2);
}

#[test]
fn drain_survives_a_reload_and_alternate_server_reloads() {
    // SIGHUP swaps the configuration (alternate-server is reloadable); the drain is state,
    // not configuration, and stays on.
    let mut h = Harness::new(cfg());
    h.engine.set_draining(true);
    let mut c = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    h.allocate(&mut c, &|_| {})
        .assert_err(method::ALLOCATE, 508);
    h.engine.set_config(Arc::new(alt_cfg()));
    assert!(h.engine.is_draining());
    let r = h.allocate(&mut c, &|_| {});
    r.assert_err(method::ALLOCATE, 300);
    assert!(r.get(attr::ALTERNATE_SERVER).is_some());
}

#[test]
fn kill_user_takes_the_rest_api_names_of_that_user() {
    // A REST credential's name is `expiry:user`: revoking `alice` ends every one of them (and a
    // static `alice`), not `bob`'s, nor a name that only ends in `alice`.
    let mut h = Harness::new(EngineConfig {
        auth_secrets: vec!["s3cret".into()],
        ..cfg()
    });
    let rest = |port: u16, name: &str| {
        Client::new(
            udp(&format!("198.51.100.20:{port}")),
            name,
            &rest_password("s3cret", name),
        )
    };
    let mut clients = [
        rest(40000, &format!("{}:alice", UNIX0 + 3600)),
        rest(40001, &format!("{}:alice", UNIX0 + 7200)),
        rest(40002, &format!("{}:bob", UNIX0 + 3600)),
        rest(40003, &format!("{}:xalice", UNIX0 + 3600)),
        Client::new(udp("198.51.100.21:40000"), "alice", "alice-pw"),
    ];
    for c in clients.iter_mut() {
        h.alloc_ok(c);
    }
    assert_eq!(h.engine.kill_user(h.now, "alice"), 3);
    let mut left: Vec<String> = h
        .engine
        .sessions(h.now)
        .into_iter()
        .map(|s| s.user)
        .collect();
    left.sort();
    assert_eq!(
        left,
        [
            format!("{}:bob", UNIX0 + 3600),
            format!("{}:xalice", UNIX0 + 3600)
        ]
    );
    // The exact REST name still works too.
    assert_eq!(h.engine.kill_user(h.now, &left[0]), 1);
}
