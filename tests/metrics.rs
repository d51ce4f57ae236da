//! Prometheus /metrics, /live and /ready on a real listener, scraped and parsed (text format
//! 0.0.4): counters move with real TURN traffic from a real client over loopback, histograms
//! have cumulative _bucket, _sum and _count, health follows the drain. Also the HTTP limits.
mod common;
#[path = "support/ops_client.rs"]
mod ops_client;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{start_server, ServerOpts, PASS, REALM, USER};
use ops_client::{echo_peer, http, http_raw, wait_status, Answer, Scrape, TurnUdp};

/// Shards publish their counters every second.
const PUBLISH: Duration = Duration::from_millis(1300);

fn scrape(addr: std::net::SocketAddr) -> Scrape {
    let r = http(addr, "GET", "/metrics", None, "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    Scrape::parse(&r.body)
}

#[test]
fn metrics_scrape_parses_and_counters_follow_real_traffic() {
    let mut opts = ServerOpts::block(13);
    opts.max_port = opts.min_port + 49; // the other half is the username-labels test's
    let srv = start_server(opts);
    let (_rt, ops) = start_ops_default(&srv);
    let m = ops.metrics_addr().unwrap();
    assert!(m.ip().is_loopback());

    let before = scrape(m);
    for name in [
        "ferroturn_allocations",
        "ferroturn_permissions",
        "ferroturn_channels",
        "ferroturn_relayed_packets_total",
        "ferroturn_relayed_bytes_total",
        "ferroturn_auth_failures_total",
        "ferroturn_refusals_total",
        "ferroturn_stale_nonces_total",
        "ferroturn_listener_errors_total",
        "ferroturn_allocation_setup_seconds",
        "ferroturn_session_duration_seconds",
        "ferroturn_relay_batch_size",
    ] {
        assert!(before.types.contains_key(name), "{name} missing");
    }
    assert_eq!(before.get("ferroturn_allocations{transport=\"udp\"}"), 0.0);
    assert!(
        !before.types.contains_key("ferroturn_user_allocations"),
        "no per-user series unless enabled"
    );
    let (_, _, setups0) = before.histogram("ferroturn_allocation_setup_seconds");
    let (_, _, batches0) = before.histogram("ferroturn_relay_batch_size");

    // Real traffic: allocate, permit, 20 × 100 bytes echoed back through the relay.
    let (peer, _) = echo_peer();
    let mut c = TurnUdp::new(srv.addr, USER, PASS, REALM);
    c.allocate_ok();
    c.permit(peer);
    assert_eq!(c.echo_round(peer, 20, 100), 20);
    // A wrong password: one auth failure.
    let mut bad = TurnUdp::new(srv.addr, USER, "wrong", REALM);
    assert_eq!(bad.allocate(), Answer::Err(401, None));
    std::thread::sleep(PUBLISH);

    let s = scrape(m);
    assert_eq!(s.get("ferroturn_allocations{transport=\"udp\"}"), 1.0);
    assert_eq!(s.get("ferroturn_permissions{transport=\"udp\"}"), 1.0);
    assert_eq!(s.get("ferroturn_allocations{transport=\"tcp\"}"), 0.0);
    assert_eq!(
        s.get("ferroturn_relayed_packets_total{direction=\"to_peer\"}"),
        20.0
    );
    assert_eq!(
        s.get("ferroturn_relayed_packets_total{direction=\"to_client\"}"),
        20.0
    );
    assert_eq!(
        s.get("ferroturn_relayed_bytes_total{direction=\"to_peer\"}"),
        2000.0
    );
    assert_eq!(
        s.get("ferroturn_relayed_bytes_total{direction=\"to_client\"}"),
        2000.0
    );
    assert_eq!(
        s.get("ferroturn_auth_failures_total{reason=\"bad_integrity\"}"),
        1.0
    );
    assert_eq!(s.get("ferroturn_allocations_created_total"), 1.0);
    let (b, sum, n) = s.histogram("ferroturn_allocation_setup_seconds");
    assert_eq!(n, setups0 + 1.0);
    assert!(sum > 0.0 && sum < 1.0, "setup time {sum} s");
    assert!(b[0].0 > 0.0 && b[0].0 < 0.001, "µs-scale buckets: {b:?}");
    let (_, bsum, bn) = s.histogram("ferroturn_relay_batch_size");
    // Every request and datagram came in through some recvmmsg call (≥ 1 datagram each).
    assert!(
        bn > batches0 && bsum >= 40.0,
        "batches {bn}, datagrams {bsum}"
    );

    // Refresh 0 ends the session: duration histogram and end reason.
    assert!(matches!(c.refresh(0), Answer::Ok(_)));
    std::thread::sleep(PUBLISH);
    let s = scrape(m);
    assert_eq!(s.get("ferroturn_allocations{transport=\"udp\"}"), 0.0);
    assert_eq!(s.get("ferroturn_permissions{transport=\"udp\"}"), 0.0);
    assert_eq!(
        s.get("ferroturn_sessions_ended_total{reason=\"refresh0\"}"),
        1.0
    );
    let (b, _, n) = s.histogram("ferroturn_session_duration_seconds");
    assert_eq!(n, 1.0);
    assert_eq!(b[0], (1.0, 1.0), "a session of under a second: {b:?}");
}

#[test]
fn live_and_ready_follow_the_drain() {
    let srv = start_server(ServerOpts::block(14).ports(10));
    let (_rt, ops) = start_ops_default(&srv);
    for addr in [ops.metrics_addr().unwrap(), ops.admin_addr().unwrap()] {
        assert_eq!(http(addr, "GET", "/live", None, "").status, 200);
        let r = http(addr, "GET", "/ready", None, "");
        assert_eq!((r.status, r.body.as_str()), (200, "ready\n"));
    }
    let m = ops.metrics_addr().unwrap();
    assert_eq!(http(m, "GET", "/nope", None, "").status, 404);
    assert_eq!(http(m, "POST", "/metrics", None, "").status, 405);
    let head = http(m, "HEAD", "/live", None, "");
    assert_eq!((head.status, head.body.as_str()), (200, ""));

    assert!(srv.server().handle().drain());
    for addr in [m, ops.admin_addr().unwrap()] {
        let r = http(addr, "GET", "/ready", None, "");
        assert_eq!((r.status, r.body.as_str()), (503, "draining\n"));
        assert_eq!(http(addr, "GET", "/live", None, "").status, 200);
    }
    assert!(!srv.server().handle().drain(), "second drain is a no-op");
    std::thread::sleep(PUBLISH);
    assert_eq!(scrape(m).get("ferroturn_draining"), 1.0);
    assert!(wait_status(m, "/ready", 503, Duration::from_secs(1)));
}

#[test]
fn http_limits() {
    let srv = start_server(ServerOpts::block(14).ports(10).threads(1));
    let (_rt, ops) = start_ops_default(&srv);
    let m = ops.metrics_addr().unwrap();
    // Too many header lines, too large a head, a malformed request line, HTTP/2 preface,
    // chunked bodies: clear statuses, no panic, and the listener keeps serving.
    let mut many = String::from("GET /metrics HTTP/1.1\r\n");
    for i in 0..100 {
        many.push_str(&format!("x-{i}: y\r\n"));
    }
    many.push_str("\r\n");
    assert_eq!(http_raw(m, many.as_bytes()).status, 431);
    let big = format!("GET /metrics HTTP/1.1\r\nx: {}\r\n\r\n", "a".repeat(20_000));
    assert_eq!(http_raw(m, big.as_bytes()).status, 431);
    assert_eq!(http_raw(m, b"BLAH\r\n\r\n").status, 400);
    assert_eq!(http_raw(m, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").status, 505);
    let chunked = b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    assert_eq!(http_raw(m, chunked).status, 501);
    let a = ops.admin_addr().unwrap();
    let no_len = format!(
        "POST /api/v1/drain HTTP/1.1\r\nAuthorization: Bearer {}\r\n\r\n",
        ops_client::TOKEN
    );
    assert_eq!(http_raw(a, no_len.as_bytes()).status, 411);
    let huge = b"PUT /api/v1/log-level HTTP/1.1\r\nContent-Length: 100000000\r\n\r\n";
    assert_eq!(http_raw(a, huge).status, 413);
    assert!(
        !srv.server().handle().is_draining(),
        "the drain was never authorized"
    );
    assert_eq!(http(m, "GET", "/live", None, "").status, 200);
}

fn start_ops_default(
    srv: &common::TestServer,
) -> (tokio::runtime::Runtime, ferroturn::runtime::admin::Ops) {
    ops_client::start_ops(srv.server(), &[], Arc::new(|_: &str| Ok(())))
}

#[test]
fn http_read_timeout_and_connection_caps() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    let srv = start_server(ServerOpts::block(14).ports(10).threads(1));
    let (_rt, ops) = start_ops_default(&srv);
    let m = ops.metrics_addr().unwrap();
    // A connection from 127.0.0.`host` that sends `req` (whole or a part).
    let from = |host: u8, req: &[u8]| {
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        let local = SocketAddr::from(([127, 0, 0, host], 0));
        sock.bind(&local.into()).unwrap();
        sock.connect(&m.into()).unwrap();
        let mut s: TcpStream = sock.into();
        s.write_all(req).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    };
    let idle = |host: u8| from(host, b"GET /metrics HTTP/1.1\r\n");
    let live_from = |host: u8| {
        let mut out = String::new();
        let _ = from(host, b"GET /live HTTP/1.1\r\nHost: x\r\n\r\n").read_to_string(&mut out);
        out
    };
    let t0 = std::time::Instant::now();
    // One host holds its 16 slots...
    let mut held: Vec<TcpStream> = (0..16).map(|_| idle(2)).collect();
    std::thread::sleep(Duration::from_millis(200));
    // ...its 17th is refused, while a scraper elsewhere still gets through.
    let out = live_from(2);
    assert!(
        out.starts_with("HTTP/1.1 503 ")
            && out.ends_with("too many connections from this address\n"),
        "{out}"
    );
    assert!(live_from(3).starts_with("HTTP/1.1 200 "));
    assert_eq!(http(m, "GET", "/live", None, "").status, 200);
    // 64 connections from four hosts hold every slot...
    held.extend((3..6).flat_map(|h| (0..16).map(move |_| h)).map(idle));
    std::thread::sleep(Duration::from_millis(200));
    // ...so the 65th is told 503 at once.
    let r = http(m, "GET", "/live", None, "");
    assert_eq!((r.status, r.body.as_str()), (503, "too many connections\n"));
    // The slow ones get 408 after the 5 s read timeout, and the slots come back.
    let mut out = String::new();
    held[0].read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 408 "), "{out}");
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(4500) && waited < Duration::from_secs(9),
        "{waited:?}"
    );
    held.clear();
    assert!(wait_status(m, "/live", 200, Duration::from_secs(3)));
    let out = live_from(2);
    assert!(
        out.starts_with("HTTP/1.1 200 "),
        "the first host's slots came back: {out}"
    );
}

#[test]
fn username_labels_only_when_enabled() {
    let mut opts = ServerOpts::block(13);
    opts.min_port += 50;
    let srv = start_server(opts);
    let (_rt, ops) = ops_client::start_ops(
        srv.server(),
        &["--prometheus-username-labels"],
        Arc::new(|_: &str| Ok(())),
    );
    let m = ops.metrics_addr().unwrap();
    assert_eq!(
        scrape(m).get("ferroturn_allocations{transport=\"udp\"}"),
        0.0
    );
    let (peer, _) = echo_peer();
    let mut c = TurnUdp::new(srv.addr, USER, PASS, REALM);
    c.allocate_ok();
    c.permit(peer);
    assert_eq!(c.echo_round(peer, 4, 25), 4);
    // Live sessions are read at scrape time: no publish period to wait for.
    let s = scrape(m);
    assert_eq!(s.types["ferroturn_user_allocations"], "gauge");
    assert_eq!(s.get("ferroturn_user_allocations{user=\"alice\"}"), 1.0);
    assert_eq!(
        s.get("ferroturn_user_session_bytes{user=\"alice\",direction=\"to_peer\"}"),
        100.0
    );
    assert_eq!(
        s.get("ferroturn_user_session_bytes{user=\"alice\",direction=\"to_client\"}"),
        100.0
    );
}
