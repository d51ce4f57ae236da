//! File descriptors: the server raises its soft open-file limit to the hard one at start (a
//! shell's 1024 would cap it near 1000 allocations), and a client TCP listener whose accept
//! runs out of descriptors (EMFILE) tries again on its own: the connections left in the
//! kernel's accept queue are taken as soon as descriptors are free again; so is a peer's
//! connection to an RFC 6062 relayed address. The listeners are edge-triggered, so without
//! the retry they would wait for the next connection attempt, and with none coming, forever.
//! And `max-pending-tcp-connections` holds for the whole server, whichever shards the
//! connections land on. The descriptor table is sized at start rather than doubled under
//! load by the shards' socket(2) calls (each doubling stalls the shard for milliseconds).
#[path = "support/child.rs"]
mod child;
mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use child::Ferroturn;
use common::stream::StreamClient;
use ferroturn::codec::stun::{method, Class, Message, Writer};

/// Relay ports: block 42 (65200-65299, see tests/common); Binding does not use them.
const ARGS: [&str; 10] = [
    "--min-port",
    "65200",
    "--max-port",
    "65299",
    "-u",
    "u:p",
    "--relay-threads",
    "1",
    "--log-level",
    "info",
];

/// The RLIMIT_NOFILE that leaves `pid` exactly `room` more descriptors: the limit bounds the
/// descriptor numbers, and a new descriptor takes the lowest free one.
fn limit_leaving(pid: i32, room: usize) -> u64 {
    let used: Vec<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the server's fd table")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    (0..)
        .filter(|n| !used.contains(n))
        .nth(room - 1)
        .expect("a free descriptor number")
        + 1
}

/// (soft, hard) RLIMIT_NOFILE of `pid`.
fn nofile(pid: i32) -> (u64, u64) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit on our own child with a valid pointer to a local struct.
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut r) };
    assert_eq!(rc, 0, "prlimit get");
    (r.rlim_cur, r.rlim_max)
}

#[test]
fn the_soft_open_file_limit_is_raised_to_the_hard_one() {
    let (_, hard) = nofile(std::process::id() as i32);
    assert!(
        hard > 256,
        "this machine's hard open-file limit ({hard}) leaves nothing to raise"
    );
    let srv = Ferroturn::start_nofile(&ARGS, "started", 256);
    assert_eq!(nofile(srv.pid()), (hard, hard));
    let line = srv
        .wait_line(Duration::from_secs(2), |l| l.contains("fd_limit"))
        .expect("the fd_limit event");
    assert!(
        line.contains("from=256") && line.contains(&format!("to={hard}")),
        "{line}"
    );
}

/// Lower the soft RLIMIT_NOFILE of our own child `pid` to `n` (prlimit(2)).
fn set_soft_nofile(pid: i32, n: u64) {
    let new = libc::rlimit {
        rlim_cur: n,
        rlim_max: nofile(pid).1,
    };
    // SAFETY: prlimit on our own child with a valid pointer to a local struct.
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &new, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit set");
}

fn binding(tid: u8) -> Vec<u8> {
    let mut b = Vec::new();
    Writer::new(&mut b, method::BINDING, Class::Request, &[tid; 12]);
    b
}

/// Is the Binding request `tid`, sent before, answered on `s` within `wait`?
fn answered(s: &mut TcpStream, tid: u8, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut head = [0u8; 20];
    if s.read_exact(&mut head).is_err() {
        return false;
    }
    let len = u16::from_be_bytes([head[2], head[3]]) as usize;
    let mut msg = head.to_vec();
    msg.resize(20 + len, 0);
    s.read_exact(&mut msg[20..])
        .expect("the rest of the answer");
    let m = Message::parse(&msg).expect("a STUN message");
    (m.method, m.class, m.transaction_id()) == (method::BINDING, Class::Success, [tid; 12])
}

#[test]
fn queued_connections_are_accepted_once_descriptors_are_free() {
    let srv = Ferroturn::start(&ARGS, "started");
    let pid = srv.pid();
    // Room for exactly `room` more descriptors: `room` accepted connections.
    let room = 6;
    set_soft_nofile(pid, limit_leaving(pid, room));

    let mut held: Vec<TcpStream> = Vec::new();
    for i in 0..room as u8 {
        let mut s = TcpStream::connect(srv.addr).unwrap();
        s.write_all(&binding(i)).unwrap();
        assert!(
            answered(&mut s, i, Duration::from_secs(5)),
            "connection {i}"
        );
        held.push(s);
    }
    // The kernel completes these handshakes and queues them; accept fails with EMFILE.
    let mut queued: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(srv.addr).unwrap())
        .collect();
    for (i, s) in queued.iter_mut().enumerate() {
        s.write_all(&binding(100 + i as u8)).unwrap();
    }
    assert!(
        !answered(&mut queued[0], 100, Duration::from_millis(500)),
        "the server had no descriptor left for this connection"
    );
    assert!(
        srv.wait_line(Duration::from_secs(2), |l| l.contains("accept failed"))
            .is_some(),
        "the failing accept is logged"
    );

    // Free descriptors: the server closes its side of three connections. No new connection
    // attempt follows, so only the retry can take the queued ones.
    let t = Instant::now();
    held.truncate(room - 3);
    for (i, s) in queued.iter_mut().enumerate() {
        assert!(
            answered(s, 100 + i as u8, Duration::from_secs(3)),
            "queued connection {i} not accepted {:?} after descriptors were freed",
            t.elapsed()
        );
    }
    // One warning for the episode, not one per retry.
    let warnings = srv
        .stdout
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("accept failed"))
        .count();
    assert_eq!(warnings, 1);
}

/// Has the server closed `s` (read gives 0 or an error), within `limit`?
fn closed_within(s: &TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let end = Instant::now() + limit;
    let mut b = [0u8; 64];
    while Instant::now() < end {
        // `Read` is implemented for `&TcpStream`.
        match (&mut &*s).read(&mut b) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
    }
    false
}

/// A new connection that the server admits (its Binding is answered), or None if it is
/// closed at accept.
fn admitted(srv: &Ferroturn, tid: u8) -> Option<TcpStream> {
    let mut s = TcpStream::connect(srv.addr).unwrap();
    s.write_all(&binding(tid)).unwrap();
    answered(&mut s, tid, Duration::from_secs(5)).then_some(s)
}

/// The server with the TURN user of `tests/common` (for `StreamClient`), relay ports of
/// block 42, and `extra`.
fn start_with_user(extra: &[&str]) -> Ferroturn {
    let pass = format!("{}:{}", common::USER, common::PASS);
    let mut args = vec![
        "--min-port",
        "65200",
        "--max-port",
        "65299",
        "-u",
        &pass,
        "-r",
        common::REALM,
    ];
    args.extend_from_slice(extra);
    Ferroturn::start(&args, "started")
}

#[test]
fn the_pending_connection_cap_is_the_servers() {
    // Two shards, max-pending-tcp-connections 30: each connection lands on a shard by its
    // hash, and all 30 are admitted whatever the split (a per-shard share would take 15 on
    // each); the next is closed at accept. A slot comes back when its connection allocates
    // and when it closes, one each.
    let srv = start_with_user(&[
        "--relay-threads",
        "2",
        "--max-pending-tcp-connections",
        "30",
        "--tcp-handshake-timeout",
        "60",
    ]);
    let mut held: Vec<TcpStream> = (0..30)
        .map(|i| admitted(&srv, i).unwrap_or_else(|| panic!("connection {i} refused")))
        .collect();
    let over = TcpStream::connect(srv.addr).unwrap();
    assert!(
        closed_within(&over, Duration::from_secs(5)),
        "31st admitted"
    );

    // An allocation settles its connection: one slot back, and only one.
    let mut c = StreamClient::new(held.remove(0));
    c.allocate();
    let again = admitted(&srv, 100).expect("the allocated connection's slot is free");
    let over = TcpStream::connect(srv.addr).unwrap();
    assert!(
        closed_within(&over, Duration::from_secs(5)),
        "one slot, not two"
    );

    // A pending connection that closes gives its slot back (once the server has read the
    // FIN: try until admitted).
    drop(held.pop());
    let end = Instant::now() + Duration::from_secs(5);
    let after_close = loop {
        if let Some(s) = admitted(&srv, 101) {
            break s;
        }
        assert!(
            Instant::now() < end,
            "the closed connection's slot never came back"
        );
    };
    let over = TcpStream::connect(srv.addr).unwrap();
    assert!(
        closed_within(&over, Duration::from_secs(5)),
        "one slot, not two"
    );
    drop((c, again, after_close, held));
}

#[test]
fn queued_peer_connections_are_accepted_once_descriptors_are_free() {
    // RFC 6062: a peer connecting to a TCP allocation's relayed address while the server has
    // no descriptor left waits in that listener's queue; once one is free the retry takes it
    // and the client gets its ConnectionAttempt (§5.3), with no new connection attempt.
    let srv = start_with_user(&[
        "--relay-threads",
        "1",
        "--allow-loopback-peers",
        "--log-level",
        "info",
    ]);
    let mut c = StreamClient::new(common::stream::tcp(srv.addr));
    let relayed = c.allocate_tcp();
    let peer_ip = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    c.create_permission(peer_ip);
    // Room for two more descriptors, both taken by client connections.
    set_soft_nofile(srv.pid(), limit_leaving(srv.pid(), 2));
    let mut filler: Vec<TcpStream> = (0..2)
        .map(|i| admitted(&srv, 50 + i).expect("room for two connections"))
        .collect();
    let peer = TcpStream::connect(relayed).expect("the kernel queues the peer's connection");
    assert!(
        srv.wait_line(Duration::from_secs(2), |l| l.contains("accept failed"))
            .is_some(),
        "the peer listener's accept fails"
    );
    filler.pop();
    // Panics after 5 s without it ("read from server").
    let id = c.connection_attempt();
    assert_ne!(id, 0);
    drop((peer, filler));
}

/// The kernel's descriptor-table size of `pid` (FDSize in /proc/PID/status).
fn fd_table_size(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("FDSize:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("an FDSize line")
}

/// The table is sized at start, not doubled by the shards' socket(2) calls under load: each
/// doubling in a multi-threaded process waits for an RCU grace period (milliseconds) in the
/// shard that opened the descriptor.
#[test]
fn the_descriptor_table_is_sized_at_start() {
    let srv = Ferroturn::start(&ARGS, "started");
    let want = nofile(srv.pid()).0.min(65536);
    let size = fd_table_size(srv.pid());
    assert!(
        size >= want,
        "descriptor table of {size} slots at start, wanted {want} (the limit, at most 65536)"
    );
}
