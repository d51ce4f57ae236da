//! Floods against the server binary (a child process, so its RSS can be read): random and
//! mutated datagrams, Allocate floods with valid and invalid credentials, 401 reflection,
//! slowloris TCP and half-open TLS. During each, a legitimate client on 127.0.0.1 keeps
//! allocating, relaying through an echo peer at a paced rate and deleting, with zero loss; the
//! attackers use other loopback addresses (127.0.0.2-6), as they would be other hosts. Each
//! flood is bounded in time (FLOOD_SECS) and the floods run one at a time (2-core machines).
#[path = "support/child_server.rs"]
mod child_server;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use child_server::{Client, EchoPeer, Rng, Server, REALM};
use ferroturn::codec::long_term_key_md5;
use ferroturn::codec::stun::{attr, method, Class, IntegrityKind, Writer};

/// The server's resident memory must stay under this during every flood. Idle it is about
/// 10-20 MiB (two shards' receive batches, rate tables); the floods add state only within the
/// configured caps.
const RSS_BOUND_KB: u64 = 96 * 1024;
/// How long each flood runs while the legitimate client works.
const FLOOD_SECS: u64 = 4;
/// Legitimate traffic per cycle: packets and rate (each echoed back: both directions).
const LEGIT_PACKETS: u64 = 250;
const LEGIT_PPS: u64 = 500;

static SERIAL: Mutex<()> = Mutex::new(());

/// Flags every flood server gets: small caps so the floods reach them quickly.
const LIMITS: &[&str] = &[
    "--user",
    "flooder:flooder-pw",
    "--max-allocations-per-ip",
    "50",
    "--max-tcp-connections-per-ip",
    "100",
    "--max-pending-tcp-connections",
    "100",
    "--tcp-handshake-timeout",
    "2",
];

struct Outcome {
    cycles: u32,
}

/// Run `flood` on a thread until the legitimate client has worked for FLOOD_SECS; every
/// cycle (allocate, relay LEGIT_PACKETS at LEGIT_PPS, delete) must lose nothing.
fn under_flood<F>(srv: &mut Server, name: &str, flood: F) -> Outcome
where
    F: FnOnce(Arc<AtomicBool>) -> String + Send + 'static,
{
    let peer = EchoPeer::start("127.0.0.9");
    // One clean cycle first: the client has authenticated before the attack starts.
    let mut legit = Client::new("127.0.0.1", srv.addr);
    legit.allocate(peer.addr);
    let r = legit.relay_paced(50, LEGIT_PPS);
    assert_eq!((r.sent, r.echoed), (50, 50), "{name}: before the flood");
    legit.delete();
    let rss_start_kb = srv.rss_kb();

    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let attacker = std::thread::spawn(move || flood(st));
    let t = Instant::now();
    let (mut cycles, mut rss_max_kb) = (0, rss_start_kb);
    while t.elapsed() < Duration::from_secs(FLOOD_SECS) {
        let mut c = Client::new("127.0.0.1", srv.addr);
        c.allocate(peer.addr);
        let r = c.relay_paced(LEGIT_PACKETS, LEGIT_PPS);
        c.delete();
        assert_eq!(r.sent, LEGIT_PACKETS, "{name}: send failed");
        assert_eq!(
            r.echoed, r.sent,
            "{name}: legitimate packets lost in cycle {cycles}"
        );
        cycles += 1;
        rss_max_kb = rss_max_kb.max(srv.rss_kb());
        assert!(rss_max_kb < RSS_BOUND_KB, "{name}: RSS {rss_max_kb} KiB");
    }
    stop.store(true, Ordering::Relaxed);
    let report = attacker.join().expect("attacker thread");
    assert!(srv.alive(), "{name}: server died");
    rss_max_kb = rss_max_kb.max(srv.rss_kb());
    println!(
        "{name}: {report}; legit: {cycles} cycles x {LEGIT_PACKETS} packets each way, 0 lost; \
         server RSS {rss_start_kb} KiB before, max {rss_max_kb} KiB (bound {RSS_BOUND_KB})"
    );
    assert!(rss_max_kb < RSS_BOUND_KB);
    Outcome { cycles }
}

/// A request of method `m`, signed as `user` with `nonce` if `user` is Some.
fn request_with(m: u16, user: Option<(&str, &str)>, nonce: &[u8], n: u64) -> Vec<u8> {
    let mut tid = [0x33u8; 12];
    tid[4..].copy_from_slice(&n.to_be_bytes());
    let mut b = Vec::new();
    let mut w = Writer::new(&mut b, m, Class::Request, &tid);
    if m == method::ALLOCATE {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    }
    if let Some((u, p)) = user {
        w.attr(attr::USERNAME, u.as_bytes())
            .attr(attr::REALM, REALM.as_bytes())
            .attr(attr::NONCE, nonce)
            .integrity(IntegrityKind::Sha1, &long_term_key_md5(u, REALM, p));
    }
    w.fingerprint();
    b
}

/// A request of method `m` (signed as `user`, with a made-up nonce), for mutation.
fn request(m: u16, user: Option<(&str, &str)>, n: u64) -> Vec<u8> {
    request_with(m, user, b"obMatJos2AAAAAAAAAAAAAAAAAAAAAAAAAA", n)
}

/// Send datagrams made by `make` from `sockets` sockets on `ip` at up to `pps` until `stop`.
/// Returns (datagrams sent, bytes sent, datagrams received back, bytes received back, pps).
fn blast(
    ip: &str,
    sockets: usize,
    server: SocketAddr,
    pps: u64,
    stop: &AtomicBool,
    mut make: impl FnMut(u64, &mut Vec<u8>),
) -> (u64, u64, u64, u64, u64) {
    let socks: Vec<UdpSocket> = (0..sockets)
        .map(|_| {
            let s = UdpSocket::bind((ip, 0)).unwrap();
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect();
    let (mut n, mut bytes, mut back, mut back_bytes) = (0u64, 0u64, 0u64, 0u64);
    let start = Instant::now();
    let mut buf = Vec::with_capacity(2048);
    let mut rb = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        // Cumulative schedule: n packets are due at n / pps.
        let due = start + Duration::from_nanos(n * 1_000_000_000 / pps);
        if Instant::now() < due {
            for s in &socks {
                while let Ok(x) = s.recv(&mut rb) {
                    back += 1;
                    back_bytes += x as u64;
                }
            }
            std::thread::sleep(Duration::from_micros(100));
            continue;
        }
        buf.clear();
        make(n, &mut buf);
        if socks[(n as usize) % sockets].send_to(&buf, server).is_ok() {
            bytes += buf.len() as u64;
        }
        n += 1;
    }
    std::thread::sleep(Duration::from_millis(200));
    for s in &socks {
        while let Ok(x) = s.recv(&mut rb) {
            back += 1;
            back_bytes += x as u64;
        }
    }
    let pps_done = n * 1000 / (start.elapsed().as_millis() as u64).max(1);
    (n, bytes, back, back_bytes, pps_done)
}

#[test]
fn random_and_mutated_datagrams() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut srv = Server::start(24, LIMITS);
    let server = srv.addr;
    let o = under_flood(&mut srv, "garbage", move |stop| {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        let templates = [
            request(method::BINDING, None, 1),
            request(method::ALLOCATE, None, 2),
            request(method::ALLOCATE, Some(("legit", "x")), 3),
            request(method::CHANNEL_BIND, Some(("flooder", "flooder-pw")), 4),
            request(method::CREATE_PERMISSION, None, 5),
        ];
        let (n, bytes, _, _, pps) = blast("127.0.0.2", 8, server, 40_000, &stop, |i, b| {
            let r = rng.next();
            if r % 3 == 0 {
                // Pure noise, any length up to 600.
                b.resize(1 + (r >> 8) as usize % 600, 0);
                rng.fill(b);
            } else if r % 3 == 1 {
                // ChannelData-looking noise.
                b.resize(4 + (r >> 8) as usize % 200, 0);
                rng.fill(b);
                b[0] = 0x40 | (b[0] & 0x3f);
            } else {
                // A valid request, mutated: 1-4 bytes flipped, maybe truncated.
                b.extend_from_slice(&templates[i as usize % templates.len()]);
                for _ in 0..1 + (r >> 8) % 4 {
                    let pos = rng.next() as usize % b.len();
                    b[pos] ^= (rng.next() as u8) | 1;
                }
                if (r >> 16) % 4 == 0 {
                    let len = 1 + rng.next() as usize % b.len();
                    b.truncate(len);
                }
            }
        });
        format!("{n} datagrams, {bytes} bytes at {pps} pps")
    });
    assert!(o.cycles >= 2);
}

#[test]
fn allocate_floods_with_valid_and_invalid_credentials() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut srv = Server::start(25, LIMITS);
    let server = srv.addr;
    let o = under_flood(&mut srv, "allocate", move |stop| {
        // Valid credentials from many ports of one address: allocations up to the per-IP
        // quota (50), then 486; invalid ones for the legitimate user's name from another
        // address: 401s, then back-off (silence).
        let valid = std::thread::spawn({
            let stop = stop.clone();
            move || {
                let (mut ok, mut refused, mut other) = (0, 0, 0);
                let mut c = Client::new("127.0.0.3", server);
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) && n < 400 {
                    c = Client::with_user(c, "127.0.0.3", "flooder", "flooder-pw");
                    match c.try_allocate() {
                        0 => ok += 1,
                        486 => refused += 1,
                        _ => other += 1,
                    }
                    n += 1;
                }
                (ok, refused, other)
            }
        });
        // A real nonce (bound to the attacker's address), so each request is a failed login.
        let mut guesser = Client::new("127.0.0.4", server);
        guesser.set_password("wrong");
        assert_eq!(guesser.try_allocate(), 401);
        let nonce = guesser.nonce().expect("nonce from the 401").to_vec();
        let (n, bytes, back, back_bytes, pps) =
            blast("127.0.0.4", 4, server, 5_000, &stop, |i, b| {
                let r = request_with(method::ALLOCATE, Some(("legit", "wrong")), &nonce, i);
                b.extend_from_slice(&r);
            });
        let (ok, refused, other) = valid.join().unwrap();
        assert!(ok <= 50, "per-IP quota: {ok} allocations");
        assert!(refused > 0, "no 486 seen ({ok} ok, {other} other)");
        assert!(back < n / 10, "invalid credentials: {back} answers to {n}");
        format!(
            "valid creds: {ok} allocated, {refused} refused 486, {other} other; invalid creds: \
             {n} requests ({bytes} B) at {pps} pps, {back} answers ({back_bytes} B)"
        )
    });
    assert!(o.cycles >= 2);
}

#[test]
fn reflection_401s_are_bounded() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut srv = Server::start(26, LIMITS);
    let server = srv.addr;
    under_flood(&mut srv, "401 reflection", move |stop| {
        // Unauthenticated Allocates (what a reflector sends with a victim's address): the
        // answers are 401s with REALM and NONCE, bigger than the request, so only
        // max-401-per-ip (200/s with 2 s of burst, one budget for the whole server) of them go out.
        let (n, bytes, back, back_bytes, pps) =
            blast("127.0.0.5", 4, server, 20_000, &stop, |i, b| {
                b.extend_from_slice(&request(method::ALLOCATE, None, i));
            });
        let secs = n as f64 / pps as f64;
        let factor = back_bytes as f64 / bytes as f64;
        assert!(factor < 0.5, "amplification {factor}");
        // 200/s plus 2 s of burst, whichever shards the datagrams reach; 10 % slack.
        let bound = ((200.0 * (secs + 2.0) + 4.0) * 1.1) as u64;
        assert!(
            back <= bound,
            "{back} answers in {secs:.1} s, bound {bound}"
        );
        format!(
            "{n} requests ({bytes} B) at {pps} pps -> {back} answers ({back_bytes} B): \
             bytes out/in {factor:.3}"
        )
    });
}

/// Wait until every stream is closed by the server (read gives 0 or an error).
fn all_closed(streams: &mut [TcpStream], within: Duration) -> usize {
    let t = Instant::now();
    let mut open: Vec<usize> = (0..streams.len()).collect();
    while !open.is_empty() && t.elapsed() < within {
        open.retain(|&i| {
            let mut b = [0u8; 64];
            match streams[i].read(&mut b) {
                Ok(0) => false,
                Ok(_) => true,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => true,
                Err(_) => false,
            }
        });
        std::thread::sleep(Duration::from_millis(20));
    }
    open.len()
}

fn connect_many(ip: &str, to: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .filter_map(|_| {
            let s =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
            s.bind(&format!("{ip}:0").parse::<SocketAddr>().ok()?.into())
                .ok()?;
            s.connect_timeout(&to.into(), Duration::from_secs(1)).ok()?;
            let s: TcpStream = s.into();
            s.set_nonblocking(true).ok()?;
            Some(s)
        })
        .collect()
}

#[test]
fn slowloris_tcp() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut args = LIMITS.to_vec();
    let i = args
        .iter()
        .position(|a| *a == "--max-tcp-connections-per-ip")
        .unwrap();
    args[i + 1] = "40";
    let mut srv = Server::start(27, &args);
    let server = srv.addr;
    let fds_before = srv.fds();
    under_flood(&mut srv, "slowloris", move |stop| {
        // 300 connections from one address, each dribbling a STUN header one byte at a time:
        // 40 are admitted (max-tcp-connections-per-ip), the rest closed at accept; the
        // admitted ones never allocate and are closed after tcp-handshake-timeout (2 s).
        // One address cannot fill the pending slots (100), so a TCP client elsewhere
        // is still served meanwhile.
        let mut streams = connect_many("127.0.0.6", server, 300);
        let connected = streams.len();
        // Those over the per-IP cap are closed at once.
        let admitted = all_closed(&mut streams, Duration::from_millis(300));
        assert!(admitted <= 40, "{admitted} of {connected} held open");
        let mut good = TcpStream::connect(server).expect("legit TCP connect");
        good.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        good.write_all(&request(method::BINDING, None, 99)).unwrap();
        let mut head = [0u8; 20];
        good.read_exact(&mut head)
            .expect("legit TCP client answered during slowloris");
        assert_eq!(&head[..2], &[0x01, 0x01], "Binding success response");
        let header = request(method::ALLOCATE, None, 1);
        let t = Instant::now();
        let mut k = 0;
        while t.elapsed() < Duration::from_millis(1500) && !stop.load(Ordering::Relaxed) {
            for s in streams.iter_mut() {
                let _ = s.write(&header[k % 20..k % 20 + 1]);
            }
            k += 1;
            std::thread::sleep(Duration::from_millis(300));
        }
        let left = all_closed(&mut streams, Duration::from_secs(4));
        assert_eq!(left, 0, "{left} slowloris connections still open");
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
        }
        format!(
            "{connected} connections, {admitted} admitted, all closed by the server ({k} bytes \
             dribbled each); a TCP client elsewhere answered meanwhile"
        )
    });
    // Everything the flood took is given back.
    std::thread::sleep(Duration::from_millis(300));
    let fds_after = srv.fds();
    println!("slowloris: server fds {fds_before} before, {fds_after} after");
    assert!(
        fds_after <= fds_before + 2,
        "fds {fds_before} -> {fds_after}"
    );
}

#[test]
fn half_open_tls() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = std::env::temp_dir().join(format!("ferroturn-floods-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, c.cert.pem()).unwrap();
    std::fs::write(&key, c.key_pair.serialize_pem()).unwrap();
    let tls_port = child_server::free_port().to_string();
    let mut args = LIMITS.to_vec();
    let (cert_s, key_s) = (cert.to_str().unwrap(), key.to_str().unwrap());
    args.extend_from_slice(&[
        "--cert",
        cert_s,
        "--pkey",
        key_s,
        "--tls-listening-port",
        &tls_port,
    ]);
    let mut srv = Server::start(28, &args);
    let tls: SocketAddr = format!("127.0.0.1:{tls_port}").parse().unwrap();
    let fds_before = srv.fds();
    under_flood(&mut srv, "half-open TLS", move |stop| {
        // 250 connections from five addresses (50 each, under the per-IP cap) that never
        // send a ClientHello: at most max-pending-tcp-connections (100) are held, the rest
        // closed at accept, and the held ones are closed after 2 s.
        let mut streams = Vec::new();
        for i in 0..5 {
            streams.extend(connect_many(&format!("127.0.1.{}", i + 1), tls, 50));
        }
        let connected = streams.len();
        let held = all_closed(&mut streams, Duration::from_millis(300));
        assert!(held <= 100, "{held} of {connected} held open");
        let left = all_closed(&mut streams, Duration::from_secs(4));
        assert_eq!(left, 0, "{left} half-open TLS connections still open");
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
        }
        format!("{connected} connections, {held} held (pending cap), all closed within 4 s")
    });
    std::thread::sleep(Duration::from_millis(300));
    let fds_after = srv.fds();
    println!("half-open TLS: server fds {fds_before} before, {fds_after} after");
    assert!(
        fds_after <= fds_before + 2,
        "fds {fds_before} -> {fds_after}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn limits_reload_on_sighup() {
    // Not a flood: the abuse limits are live-reloadable. Uses block 24 too (SERIAL: never
    // at the same time as the garbage flood).
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = std::env::temp_dir().join(format!("ferroturn-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("turnserver.toml");
    std::fs::write(&file, "max-allocations-per-ip = 1\n").unwrap();
    let srv = Server::start(24, &["--config", file.to_str().unwrap()]);
    let peer = EchoPeer::start("127.0.0.9");
    let mut a = Client::new("127.0.0.1", srv.addr);
    a.allocate(peer.addr);
    let mut b = Client::new("127.0.0.1", srv.addr);
    assert_eq!(b.try_allocate(), 486, "second allocation from the address");
    std::fs::write(&file, "max-allocations-per-ip = 2\n").unwrap();
    // SAFETY: our own child, by PID.
    unsafe { libc::kill(srv.pid() as i32, libc::SIGHUP) };
    let t = Instant::now();
    let mut code = 486;
    while code == 486 && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(100));
        b = Client::new("127.0.0.1", srv.addr);
        code = b.try_allocate();
    }
    assert_eq!(code, 0, "allocation after raising the limit and SIGHUP");
    let mut c = Client::new("127.0.0.1", srv.addr);
    assert_eq!(c.try_allocate(), 486, "the new limit holds");
    a.delete();
    b.delete();
    let _ = std::fs::remove_dir_all(&dir);
}
