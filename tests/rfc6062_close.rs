//! RFC 6062 §5.5: the connections of a TCP allocation end with it. With a real TCP allocation
//! and a TCP peer run here on loopback: after Refresh LIFETIME 0, the control connection
//! closing, or an admin kill, the client's data connection and the peer's connection both see
//! EOF within 2 s; an unbound peer connection (ConnectionAttempt sent, no ConnectionBind) is
//! closed too; with two shards, data connections spliced on the other shard than the control
//! connection are closed as well. Afterwards the server holds no more file descriptors than
//! before (plus the control connection when it is still open). And a splice that ends on the
//! other shard frees its peer for a new Connect (no lasting 446).
//!
//! The tests share one relay port block and count the process's descriptors, so they run one
//! at a time.
mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::stream::{tcp, StreamClient};
use common::{start_server, ServerOpts, USER};
use ferroturn::codec::stun::{attr, decode_u32, method, Message};

/// One network step (a request, an accept).
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How soon the connections must be closed after the deletion.
const CLOSE_WITHIN: Duration = Duration::from_secs(2);
/// This file's relay port block (tests/common: ServerOpts::block).
const BLOCK: u16 = 43;

static SERIAL: Mutex<()> = Mutex::new(());

fn server(threads: usize) -> common::TestServer {
    start_server(ServerOpts::block(BLOCK).threads(threads).runtime(|c| {
        c.tcp_listen = vec!["127.0.0.1:0".parse().unwrap()];
    }))
}

/// Open file descriptors of this process (the server runs in it).
fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

/// Wait (bounded) until the process holds `want` descriptors; returns the last count.
fn fds_settle(want: usize) -> usize {
    let end = Instant::now() + CLOSE_WITHIN;
    loop {
        let n = fds();
        if n == want || Instant::now() >= end {
            return n;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Poll `cond` every 20 ms for at most `limit`; whether it held.
fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while !cond() {
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Accept one connection within IO_TIMEOUT.
fn accept(l: &TcpListener) -> TcpStream {
    l.set_nonblocking(true).unwrap();
    let end = Instant::now() + IO_TIMEOUT;
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                return s;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < end => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("no connection from the relay: {e}"),
        }
    }
}

/// EOF or reset within CLOSE_WITHIN (no data may arrive first). Panics naming `what` otherwise.
fn assert_closed(s: &mut TcpStream, what: &str) {
    let t = Instant::now();
    s.set_read_timeout(Some(CLOSE_WITHIN)).unwrap();
    let mut b = [0u8; 64];
    match s.read(&mut b) {
        Ok(0) => println!("{what}: closed after {:?}", t.elapsed()),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {
            println!("{what}: reset after {:?}", t.elapsed())
        }
        Ok(n) => panic!("{what}: {n} unexpected bytes instead of EOF"),
        Err(e) => panic!("{what}: still open {CLOSE_WITHIN:?} after the deletion ({e})"),
    }
}

/// Bytes both ways through a splice.
fn exchange(data: &mut TcpStream, peer: &mut TcpStream, salt: u8) {
    let up: Vec<u8> = (0..300u16).map(|i| (i as u8) ^ salt).collect();
    data.write_all(&up).unwrap();
    let mut got = vec![0u8; up.len()];
    peer.read_exact(&mut got).expect("client → peer bytes");
    assert_eq!(got, up);
    let down: Vec<u8> = up.iter().rev().copied().collect();
    peer.write_all(&down).unwrap();
    data.read_exact(&mut got).expect("peer → client bytes");
    assert_eq!(got, down);
}

type Client = StreamClient<TcpStream>;

/// A new connection bound to `id` (RFC 6062 §5.4): from now on it carries the peer's bytes.
fn data_connection(addr: SocketAddr, id: u32) -> Result<TcpStream, u16> {
    let mut d = Client::new(tcp(addr));
    d.try_request(method::CONNECTION_BIND, |w| {
        w.u32(attr::CONNECTION_ID, id);
    })?;
    assert_eq!(d.buffered(), 0);
    Ok(d.into_inner())
}

/// A TCP allocation with one Connect-ed, bound and exercised connection:
/// (control, data connection, peer side).
fn spliced_connect(addr: SocketAddr) -> (Client, TcpStream, TcpStream, TcpListener) {
    let peer_l = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut control = Client::new(tcp(addr));
    control.allocate_tcp();
    let id = control
        .connect(peer_l.local_addr().unwrap())
        .expect("Connect");
    let mut peer = accept(&peer_l);
    let mut data = data_connection(addr, id).expect("ConnectionBind");
    exchange(&mut data, &mut peer, 1);
    (control, data, peer, peer_l)
}

#[test]
fn refresh_zero_closes_data_and_peer_connections() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let srv = server(1);
    let addr = srv.server().tcp_addrs()[0];
    let idle = fds();
    let (mut control, mut data, mut peer, _l) = spliced_connect(addr);
    control.refresh_zero();
    assert_closed(&mut data, "client data connection");
    assert_closed(&mut peer, "peer connection");
    assert_eq!(srv.allocation_count(), 0);
    // Held here: control, data, peer, listener; the server keeps only the control connection.
    let n = fds_settle(idle + 4 + 1);
    println!("fds: idle {idle}, after {n} (4 of the test's, 1 control connection)");
    assert_eq!(n, idle + 5, "server descriptors left behind");
}

#[test]
fn control_connection_close_closes_data_and_peer_connections() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let srv = server(1);
    let addr = srv.server().tcp_addrs()[0];
    let idle = fds();
    let (control, mut data, mut peer, _l) = spliced_connect(addr);
    // RFC 8656 §3.1: the allocation ends with its control connection.
    drop(control);
    assert_closed(&mut data, "client data connection");
    assert_closed(&mut peer, "peer connection");
    assert!(wait_until(CLOSE_WITHIN, || srv.allocation_count() == 0));
    let n = fds_settle(idle + 3);
    println!("fds: idle {idle}, after {n} (3 of the test's)");
    assert_eq!(n, idle + 3, "server descriptors left behind");
}

#[test]
fn admin_kill_closes_data_and_peer_connections() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let srv = server(1);
    let addr = srv.server().tcp_addrs()[0];
    let (mut control, mut data, mut peer, _l) = spliced_connect(addr);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let handle = srv.server().handle();
    let killed = rt.block_on(common::within(
        IO_TIMEOUT,
        "kill_user",
        handle.kill_user(USER),
    ));
    assert_eq!(killed, 1);
    assert_closed(&mut data, "client data connection");
    assert_closed(&mut peer, "peer connection");
    // The control connection stays; the client learns of the kill on its next Refresh.
    assert_eq!(
        control
            .try_request(method::REFRESH, |w| {
                w.u32(attr::LIFETIME, 600);
            })
            .map(|_| ()),
        Err(437)
    );
}

#[test]
fn unbound_peer_connection_is_closed_with_the_allocation() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let srv = server(1);
    let addr = srv.server().tcp_addrs()[0];
    let idle = fds();
    let mut control = Client::new(tcp(addr));
    let relayed = control.allocate_tcp();
    control.create_permission("127.0.0.1:1".parse().unwrap());
    // §5.3: the peer connects, the client hears a ConnectionAttempt and does not bind it.
    let mut peer = tcp(relayed);
    let id = control.connection_attempt();
    control.refresh_zero();
    assert_closed(&mut peer, "unbound peer connection");
    // Gone from the shared table too: a late ConnectionBind gets 400.
    assert_eq!(data_connection(addr, id).err(), Some(400));
    // Held here: control, peer (the late data connection is dropped); server: control.
    let n = fds_settle(idle + 2 + 1);
    println!("fds: idle {idle}, after {n} (2 of the test's, 1 control connection)");
    assert_eq!(n, idle + 3, "server descriptors left behind");
}

/// A peer connects to `relayed`, and a new client connection binds it (§5.3, §5.4); `salt`
/// varies the 300 bytes `exchange` sends each way. Returns (data connection, peer side).
fn spliced_peer(
    addr: SocketAddr,
    relayed: SocketAddr,
    control: &mut Client,
    salt: u8,
) -> (TcpStream, TcpStream) {
    let mut peer = tcp(relayed);
    let id = control.connection_attempt();
    let mut data = data_connection(addr, id).expect("ConnectionBind");
    exchange(&mut data, &mut peer, salt);
    (data, peer)
}

/// A TCP allocation on `control` with incoming peer connections (each from its own port, so
/// each its own peer), bound on new client connections that the kernel's SO_REUSEPORT hash
/// spreads over the two shards. Rounds are added until some landed on the shard without the
/// control connection (each connection does with probability 1/2), as the shards' published
/// connection counts show: (data connection, peer side) pairs, and whether both shards hold some.
fn splices_on_both_shards(
    srv: &common::TestServer,
    control: &mut Client,
) -> (Vec<(TcpStream, TcpStream)>, bool) {
    let addr = srv.server().tcp_addrs()[0];
    let relayed = control.allocate_tcp();
    control.create_permission("127.0.0.1:1".parse().unwrap());
    let mut pairs = Vec::new();
    for round in 0..4 {
        for k in 0..6u8 {
            pairs.push(spliced_peer(addr, relayed, control, round * 6 + k));
        }
        // Shard counters are published once a second.
        std::thread::sleep(Duration::from_millis(1100));
        let per_shard: Vec<usize> = srv.server().stats().iter().map(|s| s.connections).collect();
        println!("client connections per shard: {per_shard:?}");
        if per_shard.iter().all(|&n| n > 0) {
            return (pairs, true);
        }
    }
    (pairs, false)
}

#[test]
fn two_shards_data_connections_on_either_shard_are_closed() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let srv = server(2);
    let addr = srv.server().tcp_addrs()[0];
    let idle = fds();
    let mut control = Client::new(tcp(addr));
    let (mut pairs, both) = splices_on_both_shards(&srv, &mut control);
    assert!(
        both,
        "no data connection landed on the second shard in 24 tries"
    );
    let spliced = pairs.len();
    drop(control);
    for (i, (data, peer)) in pairs.iter_mut().enumerate() {
        assert_closed(data, &format!("client data connection {i} of {spliced}"));
        assert_closed(peer, &format!("peer connection {i} of {spliced}"));
    }
    assert!(wait_until(CLOSE_WITHIN, || srv.allocation_count() == 0));
    let held = 2 * pairs.len();
    let n = fds_settle(idle + held);
    println!("fds: idle {idle}, after {n} ({held} of the test's), {spliced} splices");
    assert_eq!(n, idle + held, "server descriptors left behind");
}

#[test]
fn two_shards_peer_closing_frees_the_peer_for_a_new_connect() {
    // §5.2: 446 only while a connection to the peer exists. When the splice ends on the other
    // shard than the allocation's, that shard must tell the allocation's: otherwise the peer
    // stays counted and every later Connect to it gets 446.
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let srv = server(2);
    let addr = srv.server().tcp_addrs()[0];
    let peer_l = TcpListener::bind("127.0.0.1:0").unwrap();
    let p = peer_l.local_addr().unwrap();
    let mut control = Client::new(tcp(addr));
    control.allocate_tcp();
    // Each data connection lands on either shard (probability 1/2 each): 10 rounds.
    for round in 0..10u8 {
        // The news of the previous splice's end may take a moment to reach the allocation's
        // shard (446), and the relay's old socket of the same address pair a moment to leave
        // LAST_ACK (the new handshake fails: 447): both are retried for at most CLOSE_WITHIN.
        let start = Instant::now();
        let id = loop {
            let r = control.try_request(method::CONNECT, |w| {
                w.xor_addr(attr::XOR_PEER_ADDRESS, p);
            });
            match r {
                Ok(r) => {
                    let m = Message::parse(&r).unwrap();
                    break decode_u32(m.get(attr::CONNECTION_ID).unwrap()).unwrap();
                }
                Err(446 | 447) if start.elapsed() < CLOSE_WITHIN => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(code) => panic!("round {round}: Connect to {p} got {code}"),
            }
        };
        let mut peer = accept(&peer_l);
        let mut data = data_connection(addr, id).expect("ConnectionBind");
        exchange(&mut data, &mut peer, round);
        // The peer closes first (its side keeps TIME_WAIT, so the relay can connect again
        // from the same address), and the splice ends.
        drop(peer);
        assert_closed(&mut data, "client data connection after the peer closed");
    }
}

/// Every log line of this test binary (a global subscriber: the shard threads log through it).
static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct LogSink;

impl Write for LogSink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        LOGS.lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Send this test binary's log lines to [`LOGS`] (once; later calls do nothing).
fn capture_logs() {
    let _ = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(|| LogSink)
        .try_init();
}

/// Lines logged after `start` that contain `what`.
fn count_lines(start: usize, what: &str) -> usize {
    let logs = LOGS.lock().unwrap_or_else(|e| e.into_inner());
    String::from_utf8_lossy(&logs[start..])
        .lines()
        .filter(|l| l.contains(what))
        .count()
}

/// Bytes logged so far: where the lines of what follows start.
fn log_len() -> usize {
    LOGS.lock().unwrap_or_else(|e| e.into_inner()).len()
}

/// The first line logged after `start` that contains `what`, waiting up to `CLOSE_WITHIN`.
fn log_line(start: usize, what: &str) -> Option<String> {
    let mut found = None;
    wait_until(CLOSE_WITHIN, || {
        let logs = LOGS.lock().unwrap_or_else(|e| e.into_inner());
        found = String::from_utf8_lossy(&logs[start..])
            .lines()
            .find(|l| l.contains(what))
            .map(str::to_owned);
        found.is_some()
    });
    found
}

/// The value of `key=` in a log line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let start = line
        .find(&format!(" {key}="))
        .unwrap_or_else(|| panic!("no {key} in {line}"))
        + key.len()
        + 2;
    line[start..].split(' ').next().unwrap_or_default()
}

/// RFC 6062 usage: the bytes piped through a splice (never through the allocation's relay) are
/// in the relayed-bytes totals and in the connection's own record, `tcp_connection_end`, which
/// names the allocation's session.
#[test]
fn spliced_bytes_are_counted_and_logged() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    capture_logs();
    let start = log_len();
    let srv = server(2);
    let addr = srv.server().tcp_addrs()[0];
    // 300 bytes each way, then 300 more to the peer and 200 to the client: the two directions
    // differ, so a swap shows.
    let (mut control, mut data, mut peer, _l) = spliced_connect(addr);
    data.write_all(&[7u8; 300]).unwrap();
    peer.read_exact(&mut [0u8; 300])
        .expect("client → peer bytes");
    peer.write_all(&[8u8; 200]).unwrap();
    data.read_exact(&mut [0u8; 200])
        .expect("peer → client bytes");
    // Published once a second.
    let totals = || {
        (
            srv.stat(|s| s.bytes_to_peer),
            srv.stat(|s| s.bytes_to_client),
        )
    };
    wait_until(Duration::from_secs(3), || totals() == (600, 500));
    assert_eq!(totals(), (600, 500), "relayed bytes (to peer, to client)");
    control.refresh_zero();
    assert_closed(&mut data, "client data connection");
    assert_closed(&mut peer, "peer connection");
    let end = log_line(start, "event=\"tcp_connection_end\"").expect("tcp_connection_end");
    let session = log_line(start, "event=\"session_end\"").expect("session_end logged");
    assert_eq!(field(&end, "to_peer_bytes"), "600", "{end}");
    assert_eq!(field(&end, "to_client_bytes"), "500", "{end}");
    assert_eq!(field(&end, "session"), field(&session, "session"));
    assert_ne!(field(&end, "session"), "0000000000000000");
}

/// A shutdown closes every live splice with its usage record, also those spliced on the shard
/// that does not own the allocation (whose owner's close request may come too late).
#[test]
fn shutdown_logs_every_live_splice() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    capture_logs();
    let srv = server(2);
    let addr = srv.server().tcp_addrs()[0];
    let mut control = Client::new(tcp(addr));
    let (pairs, _) = splices_on_both_shards(&srv, &mut control);
    let before = log_len();
    drop(srv); // shutdown: threads joined
    let logged = count_lines(before, "event=\"tcp_connection_end\"");
    assert_eq!(
        logged,
        pairs.len(),
        "usage records for {} live splices",
        pairs.len()
    );
}

/// The admin session list (and the per-user byte metrics built from it) counts a TCP
/// allocation's data connections: the live ones wherever they are spliced, the ended ones with
/// the allocation, none lost or counted twice when they end.
#[test]
fn session_list_counts_data_connection_bytes() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let srv = server(2);
    let mut control = Client::new(tcp(srv.server().tcp_addrs()[0]));
    let (mut pairs, both) = splices_on_both_shards(&srv, &mut control);
    assert!(both, "no data connection landed on the second shard");
    // Both paths: a splice on the shard owning the allocation (which also holds the control
    // connection) and one on the other shard. Add connections until the owner has one.
    let owner_has_splice = || {
        srv.server()
            .stats()
            .iter()
            .any(|s| s.allocations == 1 && s.connections >= 2)
    };
    // The peer side of a pair is connected to the relayed address.
    let relayed = pairs[0].1.peer_addr().unwrap();
    for k in 0..24u8 {
        if owner_has_splice() {
            break;
        }
        let addr = srv.server().tcp_addrs()[0];
        pairs.push(spliced_peer(addr, relayed, &mut control, 100 + k));
        std::thread::sleep(Duration::from_millis(1100)); // counters: once a second
    }
    assert!(
        owner_has_splice(),
        "no data connection on the allocation's shard"
    );
    // 300 bytes each way per connection (`exchange`), and 100 more to the first one's peer.
    let (d, p) = &mut pairs[0];
    d.write_all(&[1u8; 100]).unwrap();
    p.read_exact(&mut [0u8; 100]).expect("client → peer bytes");
    let n = pairs.len() as u64;
    let want = (300 * n + 100, 300 * n);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let bytes = || {
        let all = rt.block_on(srv.server().handle().sessions());
        assert_eq!(all.len(), 1, "one session: {all:?}");
        (all[0].to_peer_bytes, all[0].to_client_bytes)
    };
    assert_eq!(bytes(), want, "live data connections (to peer, to client)");
    // Every data connection closed (each takes its peer connection along): the control
    // connection is the only client connection left (counters are published once a second).
    drop(pairs);
    let clients = || {
        srv.server()
            .stats()
            .iter()
            .map(|s| s.connections)
            .sum::<usize>()
    };
    wait_until(Duration::from_secs(3), || clients() == 1);
    assert_eq!(clients(), 1, "data connections closed");
    assert_eq!(bytes(), want, "ended data connections (to peer, to client)");
}

/// Both directions of a splice congested at once (client and peer write and do not read),
/// then drained one after the other: when the peer side drains, the client side's own pending
/// bytes must keep their write interest, or peer → client data stalls for good.
#[test]
fn splice_congested_both_ways_drains_both_ways() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let srv = server(1);
    let addr = srv.server().tcp_addrs()[0];
    let (_control, mut data, mut peer, _l) = spliced_connect(addr);
    data.set_nonblocking(true).unwrap();
    peer.set_nonblocking(true).unwrap();
    let chunk = vec![0x55u8; 65536];
    let (mut up, mut down) = (0u64, 0u64);
    let start = Instant::now();
    let mut last_progress = Instant::now();
    // Write both ways until neither side takes more for 700 ms (bounded: 10 s).
    while start.elapsed() < Duration::from_secs(10) {
        let mut progressed = false;
        match data.write(&chunk) {
            Ok(n) => (up, progressed) = (up + n as u64, true),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => panic!("data write: {e}"),
        }
        match peer.write(&chunk) {
            Ok(n) => (down, progressed) = (down + n as u64, true),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => panic!("peer write: {e}"),
        }
        if progressed {
            last_progress = Instant::now();
        } else if last_progress.elapsed() > Duration::from_millis(700) {
            break;
        } else {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let read_all = |s: &mut TcpStream, pause: Duration| -> u64 {
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let (mut b, mut got) = (vec![0u8; 16384], 0u64);
        while let Ok(n @ 1..) = s.read(&mut b) {
            got += n as u64;
            std::thread::sleep(pause);
        }
        got
    };
    // The peer drains slowly (a congested receiver), then the client.
    assert_eq!(
        read_all(&mut peer, Duration::from_millis(2)),
        up,
        "client → peer"
    );
    assert_eq!(read_all(&mut data, Duration::ZERO), down, "peer → client");
}

/// RFC 6062 §5.4: the stream is framed no further after a ConnectionBind until it is answered
/// (it may become raw peer data). When the bind fails, a request that came in the same segment
/// is still answered, without waiting for more bytes.
#[test]
fn request_after_failed_connection_bind_is_answered() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let srv = server(1);
    let addr = srv.server().tcp_addrs()[0];
    let mut d = StreamClient::new(tcp(addr));
    // Learn realm and nonce; an unknown CONNECTION-ID is a 400.
    assert_eq!(d.connection_bind(0x7fff_fff0), Err(400));
    let (_, mut both) = d.signed(method::CONNECTION_BIND, |w| {
        w.u32(attr::CONNECTION_ID, 0x7fff_fff1);
    });
    let tid = d.next_tid();
    ferroturn::codec::stun::Writer::new(
        &mut both,
        method::BINDING,
        ferroturn::codec::stun::Class::Request,
        &tid,
    );
    d.write_raw(&both);
    let bind = d.frame();
    assert_eq!(
        Message::parse(&bind).unwrap().class,
        ferroturn::codec::stun::Class::Error
    );
    let binding = d.frame();
    let m = Message::parse(&binding).unwrap();
    assert_eq!((m.method, m.transaction_id()), (method::BINDING, tid));
}

/// A splice side paused for backpressure (its partner's send buffer is full) reads nothing, so
/// only the event's error flag can tell it was reset: the pair closes then, without waiting for
/// the partner to drain first (a client that never reads would hold both for good).
#[test]
fn reset_of_a_paused_side_closes_the_splice() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let srv = server(1);
    let addr = srv.server().tcp_addrs()[0];
    let (_control, data, mut peer, _l) = spliced_connect(addr);
    // The client stops reading; the peer writes until nothing more is taken for 500 ms.
    peer.set_nonblocking(true).unwrap();
    let chunk = vec![0x66u8; 65536];
    let (start, mut last_progress) = (Instant::now(), Instant::now());
    while start.elapsed() < Duration::from_secs(10)
        && last_progress.elapsed() < Duration::from_millis(500)
    {
        match peer.write(&chunk) {
            Ok(_) => last_progress = Instant::now(),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("peer write: {e}"),
        }
    }
    let before = fds();
    socket2::SockRef::from(&peer)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(peer); // RST
                // This process closed one descriptor (the peer's); the server closes both halves.
    assert_eq!(fds_settle(before - 3), before - 3, "splice left open");
    drop(data);
}
