//! End-to-end tests against an independent TURN client: webrtc-rs's `turn` crate (0.17).
//!
//! Every test starts its own in-process server on 127.0.0.1 (see `common::start_server`) with
//! its own relay-port block, talks to it over real UDP sockets, and bounds every wait.
mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use ferroturn::codec::stun::{attr, method, Class, Writer};
use ferroturn::engine::auth::rest_password;
use webrtc_util::Conn;

type Relay = Box<dyn Conn + Send + Sync>;

/// Per-packet bound for relayed datagrams (loopback: no loss expected).
const PACKET: Duration = Duration::from_secs(2);

async fn allocate(c: &TurnClient) -> Relay {
    let r = within(STEP, "allocate", c.client.allocate())
        .await
        .expect("allocate");
    Box::new(r)
}

/// Send `data` to `peer` through the relay and expect the echo back, intact, from `peer`.
async fn round_trip(relay: &Relay, peer: SocketAddr, data: &[u8]) {
    within(PACKET, "relay send_to", relay.send_to(data, peer))
        .await
        .expect("send_to through relay");
    let mut buf = vec![0u8; 2048];
    let (n, from) = within(PACKET, "echo through relay", relay.recv_from(&mut buf))
        .await
        .expect("recv_from relay");
    assert_eq!(from, peer, "echo must come from the peer");
    assert_eq!(&buf[..n], data, "echo payload differs (len {})", data.len());
}

/// Receive one datagram on a relay within [`PACKET`].
async fn recv(relay: &Relay) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0u8; 2048];
    let (n, from) = within(PACKET, "datagram through relay", relay.recv_from(&mut buf))
        .await
        .expect("recv_from relay");
    buf.truncate(n);
    (buf, from)
}

async fn close(c: TurnClient) {
    within(STEP, "client close", c.client.close())
        .await
        .expect("close");
}

// ---------------------------------------------------------------------------------------------
// 1. Binding
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binding_returns_client_address() {
    let server = start_server(ServerOpts::block(0).threads(1));
    let c = turn_client(server.addr, USER, PASS).await;
    let mapped = within(STEP, "binding", c.client.send_binding_request())
        .await
        .expect("binding request");
    assert_eq!(mapped, c.local);
    assert_eq!(mapped.ip(), LOOPBACK);
    close(c).await;
}

// ---------------------------------------------------------------------------------------------
// 2. Allocate + relay (CreatePermission, ChannelBind, ChannelData both ways)
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocate_and_relay_200_echoes() {
    let server = start_server(ServerOpts::block(1));
    let peer = echo_peer().await;
    let c = turn_client(server.addr, USER, PASS).await;
    let relay = allocate(&c).await;
    let relayed = relay.local_addr().expect("relayed address");
    assert!(
        server.in_relay_range(relayed),
        "relayed address {relayed} outside 127.0.0.1:{}-{}",
        server.min_port,
        server.max_port
    );
    assert_eq!(server.allocation_count(), 1);

    let mut sizes = std::collections::BTreeSet::new();
    for i in 0..200 {
        let data = payload(i, 7);
        sizes.insert(data.len());
        round_trip(&relay, peer.addr, &data).await;
    }
    assert!(sizes.contains(&1) && sizes.iter().any(|&s| s >= 1100));
    assert_eq!(peer.echoed.load(Ordering::Relaxed), 200);
    // The peer sees the relay's address, exactly what XOR-RELAYED-ADDRESS said.
    assert_eq!(*peer.last_from.lock().unwrap(), Some(relayed));
    close(c).await;
}

/// The independent client over IPv6: client leg on [::1] (XOR-MAPPED-ADDRESS XORed with the
/// transaction ID, RFC 8489 §14.2), IPv4 relayed address (webrtc-rs asks for the default
/// family), echoes through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_client_leg_allocates_and_relays() {
    let server = start_server(ServerOpts::block(12).runtime(|c| {
        c.listen.push("[::1]:0".parse().unwrap());
    }));
    let v6 = *server
        .server()
        .local_addrs()
        .iter()
        .find(|a| a.is_ipv6())
        .expect("an IPv6 listener");
    let peer = echo_peer().await;
    let c = turn_client(v6, USER, PASS).await;
    let mapped = within(STEP, "binding", c.client.send_binding_request())
        .await
        .expect("binding over IPv6");
    assert_eq!(mapped, c.local);
    assert!(mapped.is_ipv6());
    let relay = allocate(&c).await;
    assert!(server.in_relay_range(relay.local_addr().unwrap()));
    for i in 0..50 {
        round_trip(&relay, peer.addr, &payload(i, 3)).await;
    }
    assert_eq!(peer.echoed.load(Ordering::Relaxed), 50);
    close(c).await;
}

// ---------------------------------------------------------------------------------------------
// 3. Send / Data indications
// ---------------------------------------------------------------------------------------------

/// webrtc-rs sends through Send indications while its channel binding is not Ready (Idle,
/// Request or Failed; see `RelayConnInternal::send_to`). A proxy in front of the server answers
/// every ChannelBind with 403, so the binding goes to Failed and stays there: all traffic then
/// uses Send indications (client → server) and Data indications (server → client), through
/// the independent client on both ends. The proxy only counts and refuses; it writes nothing
/// else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_and_data_indications_without_channel() {
    let server = start_server(ServerOpts::block(2));
    let peer = echo_peer().await;
    let px = proxy(server.addr, true).await;
    let c = turn_client(px.addr, USER, PASS).await;
    let relay = allocate(&c).await;
    for i in 0..50 {
        round_trip(&relay, peer.addr, &payload(i, 3)).await;
    }
    let k = &px.counters;
    assert!(ProxyCounters::get(&k.c2s_channel_binds_refused) >= 1);
    assert_eq!(ProxyCounters::get(&k.c2s_channel_data), 0);
    assert_eq!(ProxyCounters::get(&k.s2c_channel_data), 0);
    assert!(ProxyCounters::get(&k.c2s_send_indications) >= 50);
    assert!(ProxyCounters::get(&k.s2c_data_indications) >= 50);
    close(c).await;
}

/// Without interference: the first datagram to a new peer leaves as a Send indication (the
/// ChannelBind is only just started), and once the binding is Ready both directions switch
/// to ChannelData for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_datagram_is_send_indication_then_channel_data() {
    let server = start_server(ServerOpts::block(3));
    let peer = echo_peer().await;
    let px = proxy(server.addr, false).await;
    let c = turn_client(px.addr, USER, PASS).await;
    let relay = allocate(&c).await;
    round_trip(&relay, peer.addr, b"first").await;
    let k = &px.counters;
    assert_eq!(ProxyCounters::get(&k.c2s_send_indications), 1);
    let start = Instant::now();
    let mut i = 0;
    while ProxyCounters::get(&k.c2s_channel_data) < 20
        || ProxyCounters::get(&k.s2c_channel_data) < 20
    {
        assert!(
            i < 500 && start.elapsed() < Duration::from_secs(5),
            "no switch to ChannelData"
        );
        round_trip(&relay, peer.addr, &payload(i, 9)).await;
        i += 1;
    }
    // Once switched, it stays on ChannelData (a few more Send indications may have gone out
    // while the ChannelBind was in flight: webrtc-rs timing).
    let sends = ProxyCounters::get(&k.c2s_send_indications);
    let datas = ProxyCounters::get(&k.s2c_data_indications);
    for i in 0..20 {
        round_trip(&relay, peer.addr, &payload(i, 10)).await;
    }
    assert_eq!(ProxyCounters::get(&k.c2s_send_indications), sends);
    assert_eq!(ProxyCounters::get(&k.s2c_data_indications), datas);
    close(c).await;
}

// ---------------------------------------------------------------------------------------------
// 4, 5. Authentication
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_or_user_is_refused() {
    let server = start_server(ServerOpts::block(4));
    for (user, pass) in [(USER, "wrong-pass"), ("mallory", PASS)] {
        let c = turn_client(server.addr, user, pass).await;
        let r = within(STEP, "allocate with bad credentials", c.client.allocate()).await;
        let err = r.err().expect("allocate must fail");
        assert!(err.to_string().contains("401"), "{user}: {err}");
        close(c).await;
    }
    assert_eq!(server.allocation_count(), 0);
    assert!(
        wait_until(Duration::from_secs(3), || server.stat(|s| s.auth_failures)
            >= 2)
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_api_credentials() {
    let server = start_server(
        ServerOpts::block(5)
            .threads(1)
            .tweak(|e| e.auth_secrets = vec!["s1".into(), "s2".into()]),
    );
    let peer = echo_peer().await;

    // Valid for an hour, signed with the second (older) secret.
    let user = format!("{}:bob", unix_now() + 3600);
    let c = turn_client(server.addr, &user, &rest_password("s2", &user)).await;
    let relay = allocate(&c).await;
    round_trip(&relay, peer.addr, b"rest").await;
    close(c).await;

    // Expired timestamp, correctly signed.
    let user = format!("{}:bob", unix_now() - 10);
    let c = turn_client(server.addr, &user, &rest_password("s1", &user)).await;
    let r = within(STEP, "allocate expired REST", c.client.allocate()).await;
    assert!(r.is_err(), "expired REST credential accepted");
    close(c).await;

    // Valid timestamp, unknown secret.
    let user = format!("{}:bob", unix_now() + 3600);
    let c = turn_client(server.addr, &user, &rest_password("s3", &user)).await;
    let r = within(STEP, "allocate bad REST secret", c.client.allocate()).await;
    assert!(r.is_err(), "REST password of an unknown secret accepted");
    close(c).await;

    assert_eq!(server.allocation_count(), 1);
}

// ---------------------------------------------------------------------------------------------
// 6. Refresh and expiry
// ---------------------------------------------------------------------------------------------

/// Lifetime 3 s. webrtc-rs refreshes at half the granted lifetime, so a live client keeps its
/// allocation; a client that vanishes (its RelayConn dropped: the refresh timers stop and no
/// Refresh is sent, unlike `RelayConn::close`) loses it when the lifetime runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrefreshed_allocation_expires_refreshed_one_survives() {
    let server = start_server(ServerOpts::block(6).tweak(|e| {
        e.default_lifetime = Duration::from_secs(3);
        e.max_lifetime = Duration::from_secs(3);
    }));
    let peer = echo_peer().await;
    let keeper = turn_client(server.addr, USER, PASS).await;
    let kept = allocate(&keeper).await;
    let quitter = turn_client(server.addr, USER, PASS).await;
    let dropped = allocate(&quitter).await;
    let t0 = Instant::now();
    assert_eq!(server.allocation_count(), 2);
    drop(dropped);
    close(quitter).await;

    assert!(
        wait_until(Duration::from_secs(7), || server.allocation_count() == 1).await,
        "unrefreshed allocation did not expire"
    );
    let gone_after = t0.elapsed();
    assert!(
        gone_after >= Duration::from_millis(2500),
        "allocation gone after {gone_after:?}, before its 3 s lifetime"
    );
    // Past two of the keeper's refreshes (1.5 s, 3 s) and beyond its first lifetime.
    let until = t0 + Duration::from_millis(4800);
    tokio::time::sleep(until.saturating_duration_since(Instant::now())).await;
    assert_eq!(server.allocation_count(), 1, "refreshed allocation expired");
    round_trip(&kept, peer.addr, b"still here").await;
    close(keeper).await;
}

/// `RelayConn::close` sends Refresh with LIFETIME 0 (fire-and-forget): the allocation goes at
/// once, long before its 600 s lifetime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_close_sends_refresh_zero() {
    // A single relay port: the second allocation only works if the first one gave it back.
    let server = start_server(ServerOpts::block(7).ports(1));
    let c = turn_client(server.addr, USER, PASS).await;
    let relay = allocate(&c).await;
    let first = relay.local_addr().expect("relayed address");
    assert_eq!(server.allocation_count(), 1);
    let other = turn_client(server.addr, USER, PASS).await;
    let r = within(STEP, "allocate with no port left", other.client.allocate()).await;
    let err = r.err().expect("allocated beyond a one-port range");
    assert!(err.to_string().contains("508"), "{err}");
    close(other).await;

    within(STEP, "relay close", relay.close())
        .await
        .expect("relay close");
    assert!(
        wait_until(Duration::from_secs(2), || server.allocation_count() == 0).await,
        "Refresh(0) did not delete the allocation"
    );
    let c2 = turn_client(server.addr, USER, PASS).await;
    let relay2 = allocate(&c2).await;
    assert_eq!(relay2.local_addr().expect("relayed address"), first);
    assert_eq!(server.allocation_count(), 1);
    close(c2).await;
    close(c).await;
}

/// Nonces last 1 s here. Two seconds after allocating, the client's CreatePermission carries a
/// stale nonce: the server answers 438 with a fresh one, webrtc-rs retries with it, and the
/// relay works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_nonce_is_renewed() {
    let server =
        start_server(ServerOpts::block(10).tweak(|e| e.nonce_lifetime = Duration::from_secs(1)));
    let peer = echo_peer().await;
    let c = turn_client(server.addr, USER, PASS).await;
    let relay = allocate(&c).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    for i in 0..10 {
        round_trip(&relay, peer.addr, &payload(i, 5)).await;
    }
    assert!(
        wait_until(Duration::from_secs(3), || server.stat(|s| s.stale_nonces)
            >= 1)
        .await,
        "no 438 was counted"
    );
    assert_eq!(server.allocation_count(), 1);
    close(c).await;
}

// ---------------------------------------------------------------------------------------------
// 7. Bad input over real sockets
// ---------------------------------------------------------------------------------------------

fn binding_request(rng: &mut XorShift) -> Vec<u8> {
    let mut tid = [0u8; 12];
    rng.fill(&mut tid);
    let mut v = Vec::new();
    Writer::new(&mut v, method::BINDING, Class::Request, &tid).fingerprint();
    v
}

/// One garbage datagram of 0..600 bytes, aimed at the demultiplexer, the STUN parser and the
/// ChannelData parser. `avoid_channel`: never a well-formed ChannelData on that channel (it is
/// bound, and the datagram would be relayed).
fn garbage(rng: &mut XorShift, valid: &[u8], avoid_channel: Option<u16>) -> Vec<u8> {
    const COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
    const ATTRS: [u16; 16] = [
        attr::USERNAME,
        attr::MESSAGE_INTEGRITY,
        attr::MESSAGE_INTEGRITY_SHA256,
        attr::FINGERPRINT,
        attr::XOR_PEER_ADDRESS,
        attr::DATA,
        attr::REALM,
        attr::NONCE,
        attr::REQUESTED_TRANSPORT,
        attr::CHANNEL_NUMBER,
        attr::LIFETIME,
        attr::RESERVATION_TOKEN,
        attr::EVEN_PORT,
        attr::REQUESTED_ADDRESS_FAMILY,
        attr::USERHASH,
        0x7fff,
    ];
    let size = rng.below(600) as usize;
    match rng.below(7) {
        // Pure noise.
        0 => rng.bytes(size),
        // STUN-looking header (first byte 0x00/0x01), cookie half the time, random rest.
        1 => {
            let mut v = rng.bytes(size);
            if !v.is_empty() {
                v[0] = rng.below(2) as u8;
            }
            if v.len() >= 8 && rng.below(2) == 0 {
                v[4..8].copy_from_slice(&COOKIE);
            }
            v
        }
        // ChannelData-looking (0x40..0x7f), random length field.
        2 => {
            let mut v = rng.bytes(size.max(1));
            v[0] = 0x40 | (rng.below(0x40) as u8);
            if let (Some(ch), true) = (avoid_channel, v.len() >= 4) {
                if u16::from_be_bytes([v[0], v[1]]) == ch {
                    // Claim more than is there: must be dropped, never relayed.
                    let over = (v.len() - 4 + 1 + rng.below(100) as usize) as u16;
                    v[2..4].copy_from_slice(&over.to_be_bytes());
                }
            }
            v
        }
        // A valid Binding request with 1..4 bytes changed.
        3 => {
            let mut v = valid.to_vec();
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(v.len() as u64) as usize;
                v[i] = rng.next_u64() as u8;
            }
            v
        }
        // A truncated valid Binding request.
        4 => valid[..rng.below(valid.len() as u64) as usize].to_vec(),
        // Framed STUN (right length, cookie) with random TURN attributes and methods: gets past
        // the header checks into attribute parsing and the request handlers.
        _ => {
            let methods = [
                method::BINDING,
                method::ALLOCATE,
                method::REFRESH,
                method::SEND,
                method::CREATE_PERMISSION,
                method::CHANNEL_BIND,
                method::CONNECT,
                rng.below(0x1000) as u16,
            ];
            let m = methods[rng.below(methods.len() as u64) as usize];
            let class = [
                Class::Request,
                Class::Indication,
                Class::Success,
                Class::Error,
            ][rng.below(4) as usize];
            let mut tid = [0u8; 12];
            rng.fill(&mut tid);
            let mut v = Vec::new();
            let mut w = Writer::new(&mut v, m, class, &tid);
            for _ in 0..rng.below(8) {
                let t = ATTRS[rng.below(ATTRS.len() as u64) as usize];
                let len = rng.below(40) as usize;
                w.attr(t, &rng.bytes(len));
            }
            if rng.below(3) == 0 {
                w.fingerprint();
            }
            if rng.below(4) == 0 && v.len() > 24 {
                // Lie in an attribute length.
                let l = rng.below(0x10000) as u16;
                v[22..24].copy_from_slice(&l.to_be_bytes());
            }
            v
        }
    }
}

/// The server still answers Binding on every shard: 16 clients on different source ports
/// (the SO_REUSEPORT hash spreads them over the shards).
async fn all_shards_answer(server: &TestServer) {
    for _ in 0..16 {
        let c = turn_client(server.addr, USER, PASS).await;
        let mapped = within(
            STEP,
            "binding after garbage",
            c.client.send_binding_request(),
        )
        .await
        .expect("binding after garbage");
        assert_eq!(mapped, c.local);
        close(c).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_datagrams_do_not_disturb_service() {
    let server = start_server(ServerOpts::block(8));
    let peer = echo_peer().await;
    let mut rng = XorShift::new(0x5eed_f00d_cafe_d00d);
    let valid = binding_request(&mut rng);

    // 5 000 datagrams from a socket without an allocation.
    let raw = std::net::UdpSocket::bind((LOOPBACK, 0)).expect("bind raw");
    raw.set_nonblocking(true).expect("nonblocking");
    let mut sizes = [0usize; 4];
    for i in 0..5000 {
        let d = garbage(&mut rng, &valid, None);
        sizes[d.len().min(599) / 150] += 1;
        let _ = raw.send_to(&d, server.addr);
        if i % 250 == 249 {
            // Let the server keep up a little (the point is parsing, not overload).
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    assert!(sizes.iter().all(|&n| n > 100), "size spread {sizes:?}");
    assert!(
        wait_until(Duration::from_secs(3), || {
            server.stat(|s| s.dropped_malformed) > 0 && server.stat(|s| s.dropped_not_turn) > 0
        })
        .await,
        "garbage never reached the parsers"
    );
    assert_eq!(server.allocation_count(), 0);
    all_shards_answer(&server).await;

    // A normal client allocates and relays.
    let c = turn_client(server.addr, USER, PASS).await;
    let relay = allocate(&c).await;
    for i in 0..20 {
        round_trip(&relay, peer.addr, &payload(i, 1)).await;
    }

    // 1 000 more from the allocation's own 5-tuple (ChannelData and Send indications now meet
    // a live allocation). webrtc-rs binds channel 0x4000 first; nothing well-formed on it.
    let before = peer.echoed.load(Ordering::Relaxed);
    for i in 0..1000 {
        let d = garbage(&mut rng, &valid, Some(0x4000));
        let _ = c.socket.send_to(&d, server.addr).await;
        if i % 250 == 249 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        peer.echoed.load(Ordering::Relaxed),
        before,
        "garbage was relayed to the peer"
    );
    for i in 0..20 {
        round_trip(&relay, peer.addr, &payload(i, 2)).await;
    }
    assert_eq!(server.allocation_count(), 1);
    all_shards_answer(&server).await;
    close(c).await;
}

// ---------------------------------------------------------------------------------------------
// 8. Two clients relaying to each other (turnutils_uclient -y)
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_relay_to_each_other() {
    let server = start_server(ServerOpts::block(9));
    let a = turn_client(server.addr, USER, PASS).await;
    let b = turn_client(server.addr, USER, PASS).await;
    let ra = allocate(&a).await;
    let rb = allocate(&b).await;
    let (addr_a, addr_b) = (ra.local_addr().unwrap(), rb.local_addr().unwrap());
    assert_ne!(addr_a, addr_b);
    assert!(server.in_relay_range(addr_a) && server.in_relay_range(addr_b));

    // B → A first: installs B's permission. A has none yet, so A's relay must drop this one;
    // wait for the drop to be counted so that it cannot race with A's permission below.
    within(PACKET, "b send", rb.send_to(b"open", addr_a))
        .await
        .expect("B send_to A's relay");
    assert!(
        wait_until(Duration::from_secs(3), || {
            server.stat(|s| s.dropped_no_permission) >= 1
        })
        .await,
        "datagram from a peer without permission was not dropped"
    );
    for i in 0..50 {
        let ping = payload(i, 0xa);
        within(PACKET, "a send", ra.send_to(&ping, addr_b))
            .await
            .expect("A send_to B's relay");
        let (got, from) = recv(&rb).await;
        assert_eq!(from, addr_a, "B must see A's relayed address");
        assert_eq!(got, ping);
        let pong = payload(i, 0xb);
        within(PACKET, "b send", rb.send_to(&pong, addr_a))
            .await
            .expect("B send_to A's relay");
        let (got, from) = recv(&ra).await;
        assert_eq!(from, addr_b, "A must see B's relayed address");
        assert_eq!(got, pong);
    }

    // Even with loopback peers allowed, the TURN listener itself is never a peer (relay loop).
    // webrtc-rs keys permissions by IP, so it already has one for 127.0.0.1: it skips
    // CreatePermission, starts a ChannelBind and sends a Send indication (fire-and-forget, so
    // `send_to` succeeds). The server must refuse both on the full address: 403 for the
    // ChannelBind, a silent drop for the Send indication.
    within(STEP, "send to listener", ra.send_to(b"loop", server.addr))
        .await
        .expect("send indication is fire-and-forget");
    assert!(
        wait_until(Duration::from_secs(3), || server.stat(|s| s.peers_denied)
            >= 2)
        .await,
        "ChannelBind and Send indication to the listener were not both denied (denied: {})",
        server.stat(|s| s.peers_denied)
    );
    // Had "loop" reached the listener, it would count as a non-TURN datagram there.
    assert_eq!(server.stat(|s| s.dropped_not_turn), 0);
    close(a).await;
    close(b).await;
}
