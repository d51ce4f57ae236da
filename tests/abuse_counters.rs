//! The TCP/TLS connection limits refuse and count: per-source-IP cap at accept, and the
//! handshake/allocate deadline. In-process server (tests/common), relay block 29.
mod common;

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{start_server, ServerOpts};

/// Read until the server closes the stream (0 or an error), at most `limit`.
fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let t = Instant::now();
    let mut b = [0u8; 64];
    while t.elapsed() < limit {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn tcp_per_ip_cap_and_handshake_deadline_are_counted() {
    let srv = start_server(ServerOpts::block(29).runtime(|c| {
        c.engine.limits.tcp_connections_per_ip = 2;
        c.engine.limits.tcp_handshake_timeout = Duration::from_secs(1);
    }));
    let tcp = |s: &common::TestServer| {
        s.server().stats().iter().fold((0, 0), |(a, b), s| {
            (
                a + s.tcp.refused_tcp_per_ip,
                b + s.tcp.closed_tcp_handshake_timeout,
            )
        })
    };
    let mut a = TcpStream::connect(srv.addr).unwrap();
    let mut b = TcpStream::connect(srv.addr).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    // The third from the same address is closed at once.
    let mut c = TcpStream::connect(srv.addr).unwrap();
    assert!(
        closed_within(&mut c, Duration::from_millis(500)),
        "third connection kept"
    );
    // The first two say nothing: closed at the 1 s deadline, not before.
    assert!(!closed_within(&mut a, Duration::from_millis(500)));
    assert!(
        closed_within(&mut a, Duration::from_millis(1500)),
        "idle connection kept"
    );
    assert!(closed_within(&mut b, Duration::from_millis(500)));
    // Counters are published once a second.
    let t = Instant::now();
    while tcp(&srv) != (1, 2) && t.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        tcp(&srv),
        (1, 2),
        "(refused per IP, closed at the deadline)"
    );
    // The slots are free again.
    let mut d = TcpStream::connect(srv.addr).unwrap();
    assert!(!closed_within(&mut d, Duration::from_millis(300)));
}
