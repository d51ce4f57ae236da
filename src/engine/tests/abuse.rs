//! Abuse limits (issue #5), with the fake clock: per-IP and per-prefix quotas, permission and
//! channel caps, request and 401 rates, failed-auth back-off, bandwidth buckets, and the
//! bounded rate tables.
use super::*;
use crate::engine::limits::Limits;

fn with_limits(f: impl FnOnce(&mut Limits)) -> EngineConfig {
    let mut c = cfg();
    f(&mut c.limits);
    c
}

fn binding() -> Vec<u8> {
    let mut req = Vec::new();
    Writer::new(&mut req, method::BINDING, Class::Request, &new_tid());
    req
}

/// An unauthenticated Allocate (provokes a 401).
fn anon_allocate() -> Vec<u8> {
    let mut req = Vec::new();
    Writer::new(&mut req, method::ALLOCATE, Class::Request, &new_tid())
        .attr(attr::REQUESTED_TRANSPORT, &UDP);
    req
}

#[test]
fn allocations_per_ip_get_486() {
    // RFC 8656 §7.2: 486 Allocation Quota Reached, here for the client's address; freed when
    // an allocation goes. Another address is not affected.
    let mut h = Harness::new(with_limits(|l| l.allocations_per_ip = 2));
    let mut c: Vec<Client> = (0..3)
        .map(|i| {
            Client::new(
                udp(&format!("198.51.100.20:{}", 40000 + i)),
                "alice",
                "alice-pw",
            )
        })
        .collect();
    h.alloc_ok(&mut c[0]);
    h.alloc_ok(&mut c[1]);
    let r = h.allocate(&mut c[2], &|_| {});
    r.assert_err(method::ALLOCATE, 486);
    c[2].assert_signed(&r);
    assert_eq!(h.engine.stats.refused_quota_ip, 1);
    let mut other = Client::new(udp("198.51.100.21:40000"), "alice", "alice-pw");
    h.alloc_ok(&mut other);
    h.refresh(&mut c[0], Some(0)).assert_ok(method::REFRESH);
    h.alloc_ok(&mut c[2]);
    assert_eq!(h.shared.allocations_of_ip(ip("198.51.100.20")), 2);
    // An expired allocation gives its unit back too.
    h.set_time(3600 + 1);
    assert_eq!(h.shared.allocations_of_ip(ip("198.51.100.20")), 0);
    assert_eq!(h.shared.total_allocations(), 0);
}

#[test]
fn allocations_per_prefix_get_486() {
    // /24 for IPv4, /64 for IPv6.
    let mut h = Harness::new(with_limits(|l| {
        l.allocations_per_prefix = 2;
        l.allocations_per_ip = 0;
    }));
    let mut a = Client::new(udp("198.51.100.1:40000"), "alice", "alice-pw");
    let mut b = Client::new(udp("198.51.100.2:40000"), "alice", "alice-pw");
    let mut c = Client::new(udp("198.51.100.250:40000"), "bob", "bob-pw");
    let mut d = Client::new(udp("198.51.101.1:40000"), "bob", "bob-pw");
    h.alloc_ok(&mut a);
    h.alloc_ok(&mut b);
    h.allocate(&mut c, &|_| {})
        .assert_err(method::ALLOCATE, 486);
    h.alloc_ok(&mut d);
    assert_eq!(h.engine.stats.refused_quota_prefix, 1);
    assert_eq!(h.engine.stats.refused_quota_ip, 0);
}

#[test]
fn permissions_per_allocation_get_508() {
    // RFC 8656 §9.2: a server that cannot install a permission answers 508.
    let mut h = Harness::new(with_limits(|l| l.max_permissions = 2));
    let mut a = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    h.alloc_ok(&mut a);
    h.permit(&mut a, &[p1(), p2()])
        .assert_ok(method::CREATE_PERMISSION);
    // Refreshing an existing one is fine; a third is not.
    h.permit(&mut a, &[p1()])
        .assert_ok(method::CREATE_PERMISSION);
    let r = h.permit(&mut a, &[p3()]);
    r.assert_err(method::CREATE_PERMISSION, 508);
    a.assert_signed(&r);
    assert_eq!(h.engine.stats.refused_permissions, 1);
    // Once they expire (300 s) there is room again.
    h.set_time(301);
    h.permit(&mut a, &[p3()])
        .assert_ok(method::CREATE_PERMISSION);
}

#[test]
fn refused_create_permission_installs_none_of_its_peers() {
    // RFC 8656 §9.2: a CreatePermission that gets 508 must not leave some of its permissions
    // installed (the client was told it failed).
    let mut h = Harness::new(with_limits(|l| l.max_permissions = 2));
    let mut a = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    let (relay, _) = h.alloc_ok(&mut a);
    h.permit(&mut a, &[p1()])
        .assert_ok(method::CREATE_PERMISSION);
    // p2 would fit, p3 not: neither is installed.
    h.permit(&mut a, &[p2(), p3()])
        .assert_err(method::CREATE_PERMISSION, 508);
    assert!(h.peer_datagram(relay, p2(), b"from p2").is_none());
    // The same peer twice counts once: p2 alone (or repeated) still fits.
    h.permit(&mut a, &[p2(), p2()])
        .assert_ok(method::CREATE_PERMISSION);
    assert!(h.peer_datagram(relay, p2(), b"from p2").is_some());
}

#[test]
fn channel_bind_refused_for_permissions_binds_no_channel() {
    // §12.2: a ChannelBind also installs the peer's permission; when that is refused (508) the
    // channel must not be bound either.
    let mut h = Harness::new(with_limits(|l| l.max_permissions = 1));
    let mut a = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    h.alloc_ok(&mut a);
    h.permit(&mut a, &[p1()])
        .assert_ok(method::CREATE_PERMISSION);
    h.channel_bind(&mut a, 0x4001, p2())
        .assert_err(method::CHANNEL_BIND, 508);
    assert!(h
        .client_datagram(a.tuple, &channel_data(0x4001, b"to p2", true))
        .is_none());
    // Channel 0x4001 is free for p1, whose IP already has its permission.
    h.channel_bind(&mut a, 0x4001, p1())
        .assert_ok(method::CHANNEL_BIND);
}

#[test]
fn channels_per_allocation_get_508() {
    // RFC 8656 §12.2: 508 Insufficient Capacity (not 400) when out of channel resources.
    let mut h = Harness::new(with_limits(|l| l.max_channels = 1));
    let mut a = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    h.alloc_ok(&mut a);
    h.channel_bind(&mut a, 0x4000, p1())
        .assert_ok(method::CHANNEL_BIND);
    let r = h.channel_bind(&mut a, 0x4001, p2());
    r.assert_err(method::CHANNEL_BIND, 508);
    assert_eq!(h.engine.stats.refused_channels, 1);
    // A conflicting binding is still a 400.
    h.channel_bind(&mut a, 0x4000, p2())
        .assert_err(method::CHANNEL_BIND, 400);
}

#[test]
fn requests_per_source_are_rate_limited_silently() {
    // 10/s with 2 s of burst: 21 at one instant, then 10 a second. Other sources unaffected.
    let mut h = Harness::new(with_limits(|l| l.requests_per_ip = 10));
    let t = udp("198.51.100.20:40000");
    let answered = (0..100)
        .filter(|_| !h.send(t, &binding()).is_empty())
        .count();
    assert_eq!(answered, 21);
    assert_eq!(h.engine.stats.refused_rate_requests, 79);
    // Another port of the same address is the same source; another address is not.
    assert!(h.send(udp("198.51.100.20:40001"), &binding()).is_empty());
    h.send_one(udp("198.51.100.21:40000"), &binding());
    h.set_time(1);
    let answered = (0..100)
        .filter(|_| !h.send(t, &binding()).is_empty())
        .count();
    assert_eq!(answered, 10);
}

#[test]
fn request_rate_and_backoff_hold_across_shards() {
    // A source's ports hash to different shards. The budget is the server's: one 5-tuple on
    // one shard gets the whole configured rate (not 1/N of it), and a source spread over two
    // shards gets no more than it. Failed logins on one shard put the source in back-off on
    // the other.
    let cfg = with_limits(|l| {
        l.requests_per_ip = 10;
        l.auth_failures_before_backoff = 2;
    });
    let mut a = Harness::new(cfg.clone());
    let mut b = Harness::shard(cfg, a.shared.clone(), a.t0);
    let (ta, tb) = (udp("198.51.100.20:40000"), udp("198.51.100.20:40001"));
    let answered = (0..30)
        .filter(|_| !a.send(ta, &binding()).is_empty())
        .count();
    assert_eq!(answered, 21, "10/s and 2 s of burst, on one shard");
    assert!(b.send(tb, &binding()).is_empty());
    assert_eq!(b.engine.stats.refused_rate_requests, 1);
    a.set_time(1);
    b.set_time(1);
    let mut answered = 0;
    for i in 0..30 {
        let (h, t) = if i % 2 == 0 {
            (&mut a, ta)
        } else {
            (&mut b, tb)
        };
        answered += usize::from(!h.send(t, &binding()).is_empty());
    }
    assert_eq!(
        answered, 10,
        "a second later, 10 more between the two shards"
    );

    // Back-off: two wrong passwords on shard a; a correct one on shard b is then dropped.
    a.set_time(10);
    b.set_time(10);
    let try_alloc = |h: &mut Harness, c: &mut Client| {
        let (_, req) = c.build(method::ALLOCATE, &transport_udp);
        h.send(c.tuple, &req)
    };
    let mut bad = Client::new(udp("198.51.100.30:40000"), "alice", "wrong");
    a.login(&mut bad);
    for _ in 0..2 {
        try_alloc(&mut a, &mut bad)[0].assert_err(method::ALLOCATE, 401);
    }
    let mut good = Client::new(udp("198.51.100.30:40001"), "alice", "alice-pw");
    b.login(&mut good);
    assert!(try_alloc(&mut b, &mut good).is_empty(), "in back-off");
    assert_eq!(b.engine.stats.refused_auth_backoff, 1);
    b.set_time(12);
    b.alloc_ok(&mut good);
}

#[test]
fn malformed_requests_are_rate_limited_too() {
    // A 400 for a malformed request is an answer to an unauthenticated source like any other:
    // the per-source request rate bounds them (no reflection at any rate).
    let mut h = Harness::new(with_limits(|l| l.requests_per_ip = 10));
    let t = udp("198.51.100.20:40000");
    // A Binding request whose one attribute runs past the end of the message.
    let mut bad = binding();
    bad[2..4].copy_from_slice(&4u16.to_be_bytes());
    bad.extend_from_slice(&[0x80, 0x22, 0x00, 0x10]);
    let answered = (0..100).filter(|_| !h.send(t, &bad).is_empty()).count();
    assert_eq!(answered, 21);
    assert_eq!(h.engine.stats.refused_rate_requests, 79);
    assert_eq!(h.engine.stats.dropped_malformed, 100);
}

#[test]
fn ipv6_sources_are_limited_per_64() {
    let mut h = Harness::new(with_limits(|l| l.requests_per_ip = 1));
    // 3 (burst of 2 s + 1) from anywhere in one /64.
    let answered = (0..10)
        .filter(|i| {
            let t = udp(&format!("[2001:db8:aa:1::{:x}]:4000", i + 1));
            !h.send(t, &binding()).is_empty()
        })
        .count();
    assert_eq!(answered, 3);
    h.send_one(udp("[2001:db8:aa:2::1]:4000"), &binding());
}

#[test]
fn challenges_per_source_are_rate_limited() {
    // Reflection guard: 401s to one source beyond the rate are not sent; bytes out stay
    // bounded whatever the attacker sends.
    let mut h = Harness::new(with_limits(|l| l.challenges_per_ip = 5));
    let t = udp("198.51.100.20:40000");
    let (mut bytes_in, mut bytes_out, mut answers) = (0, 0, 0);
    for _ in 0..1000 {
        let req = anon_allocate();
        bytes_in += req.len();
        for r in h.send(t, &req) {
            r.assert_err(method::ALLOCATE, 401);
            bytes_out += r.0.len();
            answers += 1;
        }
    }
    assert_eq!(answers, 11);
    assert_eq!(h.engine.stats.refused_rate_401, 989);
    assert!(bytes_out < bytes_in / 10, "out {bytes_out} in {bytes_in}");
    // A legitimate client elsewhere still gets its challenge and allocates.
    let mut a = Client::new(udp("198.51.100.30:40000"), "alice", "alice-pw");
    h.alloc_ok(&mut a);
}

#[test]
fn failed_auth_backs_off_per_source_and_user() {
    let mut h = Harness::new(with_limits(|l| {
        l.auth_failures_before_backoff = 3;
        l.auth_backoff_max = secs(4);
    }));
    let t = udp("198.51.100.20:40000");
    let mut bad = Client::new(t, "alice", "wrong");
    h.login(&mut bad);
    let try_alloc = |h: &mut Harness, c: &mut Client| {
        let (_, req) = c.build(method::ALLOCATE, &transport_udp);
        h.send(c.tuple, &req)
    };
    // Three failures are answered 401 (RFC 8489 §9.2.4), then the source is in back-off: dropped.
    for _ in 0..3 {
        let r = try_alloc(&mut h, &mut bad);
        assert_eq!(r.len(), 1);
        r[0].assert_err(method::ALLOCATE, 401);
    }
    assert!(try_alloc(&mut h, &mut bad).is_empty());
    assert_eq!(h.engine.stats.refused_auth_backoff, 1);
    // Another user from the blocked source: blocked too (the source is).
    let mut bob = Client::new(udp("198.51.100.20:40001"), "bob", "bob-pw");
    h.login(&mut bob);
    assert!(try_alloc(&mut h, &mut bob).is_empty());
    assert_eq!(h.engine.stats.refused_auth_backoff, 2);
    // The user is in back-off now too: a second guesser gets its first guess answered, then
    // silence, although it has failed only once itself.
    let mut guesser = Client::new(udp("198.51.100.50:40000"), "alice", "guess");
    h.login(&mut guesser);
    try_alloc(&mut h, &mut guesser)[0].assert_err(method::ALLOCATE, 401);
    assert!(try_alloc(&mut h, &mut guesser).is_empty());
    assert_eq!(h.engine.stats.refused_auth_backoff, 3);
    // The user's own client elsewhere, which has not failed, is not locked out by any of this.
    let mut good = Client::new(udp("198.51.100.99:40000"), "alice", "alice-pw");
    h.alloc_ok(&mut good);
    h.refresh(&mut good, Some(600)).assert_ok(method::REFRESH);
    // The first source's own back-off ends after 1 s, but the user's (2 s since the guesser's
    // failure) still applies to it; then it is answered, and its next failure doubles its
    // own back-off to 2 s.
    h.now = h.t0 + Duration::from_millis(1500);
    assert!(try_alloc(&mut h, &mut bad).is_empty());
    h.now = h.t0 + Duration::from_millis(2000);
    try_alloc(&mut h, &mut bad)[0].assert_err(method::ALLOCATE, 401);
    h.now = h.t0 + Duration::from_millis(3900);
    assert!(try_alloc(&mut h, &mut bad).is_empty());
    // A mistyped password followed by the right one: the success clears the source.
    let mut typo = Client::new(udp("198.51.100.60:40000"), "bob", "bob-typo");
    h.login(&mut typo);
    try_alloc(&mut h, &mut typo)[0].assert_err(method::ALLOCATE, 401);
    typo.cred = Cred::Password("bob-pw".to_owned());
    try_alloc(&mut h, &mut typo)[0].assert_ok(method::ALLOCATE);
    assert_eq!(h.engine.stats.refused_auth_backoff, 5);
}

#[test]
fn max_bps_drops_excess_each_direction() {
    // 1000 bytes/s per direction with 1 s of burst: 100-byte packets, 11 pass at once.
    let mut h = Harness::new(with_limits(|l| l.max_bps = 1000));
    let mut a = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    let (relay, _) = h.alloc_ok(&mut a);
    h.channel_bind(&mut a, 0x4000, p1())
        .assert_ok(method::CHANNEL_BIND);
    let payload = [7u8; 100];
    let cd = channel_data(0x4000, &payload, false);
    let up = (0..50)
        .filter(|_| h.client_datagram(a.tuple, &cd).is_some())
        .count();
    assert_eq!(up, 11);
    assert_eq!(h.engine.stats.dropped_bandwidth_allocation, 39);
    // The other direction has its own bucket.
    let down = (0..50)
        .filter(|_| h.peer_datagram(relay, p1(), &payload).is_some())
        .count();
    assert_eq!(down, 11);
    // Half a second later: 5 more each way.
    h.now += Duration::from_millis(500);
    let up = (0..50)
        .filter(|_| h.client_datagram(a.tuple, &cd).is_some())
        .count();
    assert_eq!(up, 5);
    // A reload without the limit lifts it for the live allocation.
    let mut c = cfg();
    c.limits.max_bps = 0;
    h.engine.set_config(Arc::new(c));
    let up = (0..50)
        .filter(|_| h.client_datagram(a.tuple, &cd).is_some())
        .count();
    assert_eq!(up, 50);
}

#[test]
fn server_capacity_is_shared_by_allocations() {
    let mut h = Harness::new(with_limits(|l| l.bps_capacity = 1000));
    let mut a = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    let mut b = Client::new(udp("198.51.100.21:40000"), "bob", "bob-pw");
    h.alloc_ok(&mut a);
    h.alloc_ok(&mut b);
    for c in [&mut a, &mut b] {
        h.channel_bind(c, 0x4000, p1())
            .assert_ok(method::CHANNEL_BIND);
    }
    let cd = channel_data(0x4000, &[1u8; 100], false);
    let mut passed = 0;
    for _ in 0..20 {
        for t in [a.tuple, b.tuple] {
            passed += usize::from(h.client_datagram(t, &cd).is_some());
        }
    }
    assert_eq!(passed, 11);
    assert_eq!(h.engine.stats.dropped_bandwidth_server, 29);
    assert_eq!(h.engine.stats.dropped_bandwidth_allocation, 0);
}

#[test]
fn server_capacity_holds_across_shards() {
    // bps-capacity is the server's: one shard alone may use all of it (not 1/N), and two
    // shards together get no more than it. 1000 B/s, 1 s of burst, 100-byte payloads.
    let cfg = with_limits(|l| l.bps_capacity = 1000);
    let mut h1 = Harness::new(cfg.clone());
    let mut h2 = Harness::shard(cfg, h1.shared.clone(), h1.t0);
    let mut a = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    let mut b = Client::new(udp("198.51.100.21:40000"), "bob", "bob-pw");
    h1.alloc_ok(&mut a);
    h2.alloc_ok(&mut b);
    h1.channel_bind(&mut a, 0x4000, p1())
        .assert_ok(method::CHANNEL_BIND);
    h2.channel_bind(&mut b, 0x4000, p1())
        .assert_ok(method::CHANNEL_BIND);
    let cd = channel_data(0x4000, &[1u8; 100], false);
    let passed = (0..20)
        .filter(|_| h1.client_datagram(a.tuple, &cd).is_some())
        .count();
    assert_eq!(passed, 11, "one shard alone: the whole second of burst");
    assert!(h2.client_datagram(b.tuple, &cd).is_none(), "nothing left");
    // Two seconds later: another second's worth, between both shards, in either direction.
    h1.set_time(2);
    h2.set_time(2);
    let mut passed = 0;
    for i in 0..40 {
        let ok = if i % 2 == 0 {
            h1.client_datagram(a.tuple, &cd).is_some()
        } else {
            h2.client_datagram(b.tuple, &cd).is_some()
        };
        passed += usize::from(ok);
    }
    assert!((10..=12).contains(&passed), "{passed} passed on two shards");
    assert_eq!(
        h1.engine.stats.dropped_bandwidth_server + h2.engine.stats.dropped_bandwidth_server,
        (20 - 11) + 1 + (40 - passed as u64)
    );
}

#[test]
fn rate_tables_stay_bounded_under_spoofed_sources() {
    // 50 000 distinct (spoofed) sources each send a request and a failed login: the tables
    // hold at most their fixed number of slots, and a legitimate client still works.
    let mut h = Harness::new(cfg());
    for i in 0..50_000u32 {
        let a = std::net::Ipv4Addr::from(0x0A00_0000 + i);
        let t = udp(&format!("{a}:5000"));
        let mut c = Client::new(t, "alice", "wrong");
        c.realm = Some(REALM.to_owned());
        c.nonce = Some(b"garbage-nonce".to_vec());
        let (_, req) = c.build(method::ALLOCATE, &transport_udp);
        h.send(t, &req);
    }
    let cap = h.shared.limiter.capacity();
    assert!(h.shared.limiter.entries() <= cap);
    assert!(cap <= 5 * crate::engine::limits::TABLE_SLOTS);
    let mut a = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    h.alloc_ok(&mut a);
}

#[test]
fn refusal_logs_are_rate_limited() {
    let mut h = Harness::new(with_limits(|l| l.requests_per_ip = 1));
    let t = udp("198.51.100.20:40000");
    for _ in 0..1000 {
        h.send(t, &binding());
    }
    // 997 refusals, at most 10 logged in this second.
    assert_eq!(h.engine.stats.refused_rate_requests, 997);
    assert_eq!(h.engine.stats.refusal_logs_suppressed, 987);
}

#[test]
fn defaults_are_finite() {
    // Secure by default: every per-source limit is on unless the operator turns it off.
    let l = Limits::default();
    assert!(l.allocations_per_ip > 0 && l.allocations_per_prefix >= l.allocations_per_ip);
    assert!(l.requests_per_ip > 0 && l.challenges_per_ip > 0);
    assert!(l.auth_failures_before_backoff > 0);
    assert!(l.tcp_connections_per_ip > 0 && l.pending_tcp_connections > 0);
}

#[test]
fn peer_connections_per_tcp_allocation_are_capped() {
    // RFC 6062: a permitted peer can connect from any number of ports and a client can Connect
    // to any number of peers; each holds a socket, so both count against one cap.
    let mut h = Harness::new(with_limits(|l| l.max_peer_connections = 2));
    let mut c = Client::new(tcp_tuple("198.51.100.20:40000"), "alice", "alice-pw");
    let relay = tcp_allocation(&mut h, &mut c);
    h.transact(&mut c, method::CREATE_PERMISSION, &|w| {
        w.xor_addr(attr::XOR_PEER_ADDRESS, p1());
    })
    .assert_ok(method::CREATE_PERMISSION);
    let port = |n: u16| SocketAddr::new(p1().ip(), n);
    assert!(h
        .engine
        .on_peer_tcp_accepted(h.now, relay, port(1))
        .is_some());
    // A pending Connect counts as well.
    let (_, req) = c.build(method::CONNECT, &|w| {
        w.xor_addr(attr::XOR_PEER_ADDRESS, p2());
    });
    h.send(c.tuple, &req);
    assert!(matches!(
        h.peer_cmds.pop(),
        Some(RelayCommand::Connect { .. })
    ));
    assert_eq!(h.engine.on_peer_tcp_accepted(h.now, relay, port(2)), None);
    h.transact(&mut c, method::CONNECT, &|w| {
        w.xor_addr(attr::XOR_PEER_ADDRESS, p3());
    })
    .assert_err(method::CONNECT, 508);
    assert_eq!(h.engine.stats.refused_peer_connections, 2);
}

#[test]
fn refreshes_do_not_grow_the_timer_heap() {
    // Each Refresh used to push a timer entry that stayed until its deadline: an allocation
    // refreshing at the request rate grew the heap by hundreds of thousands of entries.
    let mut h = Harness::new(with_limits(|l| l.requests_per_ip = 0));
    let mut c = Client::new(udp("198.51.100.20:40000"), "alice", "alice-pw");
    h.alloc_ok(&mut c);
    for _ in 0..300 {
        h.refresh(&mut c, Some(600)).assert_ok(method::REFRESH);
    }
    assert!(
        h.engine.timers.len() <= 2,
        "{} entries",
        h.engine.timers.len()
    );
    // Expiry still follows the last Refresh: extended at 500 s to 1100 s, so alive past the
    // first deadline (600 s) and gone after the second.
    h.set_time(500);
    h.refresh(&mut c, Some(600)).assert_ok(method::REFRESH);
    h.set_time(601);
    assert!(h.engine.has_allocation(&c.tuple));
    h.set_time(1099);
    assert!(h.engine.has_allocation(&c.tuple));
    h.set_time(1101);
    assert!(!h.engine.has_allocation(&c.tuple));
    // A shorter lifetime moves the deadline earlier.
    let mut d = Client::new(udp("198.51.100.21:40000"), "alice", "alice-pw");
    h.alloc_ok_with(&mut d, &|w| {
        w.u32(attr::LIFETIME, 3600);
    });
    h.refresh(&mut d, Some(700)).assert_ok(method::REFRESH);
    h.set_time(1101 + 701);
    assert!(!h.engine.has_allocation(&d.tuple));
}
