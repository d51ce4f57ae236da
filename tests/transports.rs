//! TURN over TCP and TLS (RFC 8656 §3.1, §12.5): framing, the whole allocate → permission →
//! channel → relay cycle over a stream, allocations ending with their connection, garbage
//! streams closed without harm to others, and TLS certificate hot reload.
//!
//! The client here is a small blocking one built on ferroturn's codec; the independent clients
//! (coturn's turnutils_uclient -t / -t -S) run in tests/interop/coturn-clients.sh.
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::stream::{tcp, StreamClient};
use common::{start_server, ServerOpts};
use ferroturn::codec::stun::{attr, decode_xor_addr, method, Class, Message, Writer};
use ferroturn::runtime::config::TlsFiles;

const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A UDP echo peer on loopback, in a thread that stops when the socket is dropped... or after
/// a bounded number of datagrams.
fn echo_peer() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let addr = s.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut b = [0u8; 2048];
        for _ in 0..10_000 {
            match s.recv_from(&mut b) {
                Ok((n, from)) => {
                    let _ = s.send_to(&b[..n], from);
                }
                Err(_) => return,
            }
        }
    });
    addr
}

/// The full relay cycle over one stream, through both data paths.
fn relay_cycle<S: Read + Write>(c: &mut StreamClient<S>, peer: SocketAddr) {
    let relayed = c.allocate();
    assert_eq!(relayed.ip(), common::LOOPBACK);
    // Send/Data indications (no channel yet).
    c.create_permission(peer);
    for i in 0..20u8 {
        let p = vec![i; 1 + i as usize * 37];
        c.send_indication(peer, &p);
        let (from, back) = c.recv_data_indication();
        assert_eq!(from, peer);
        assert_eq!(back, p);
    }
    // ChannelData, sizes that exercise every padding length.
    c.channel_bind(0x4001, peer);
    for i in 0..40usize {
        let p: Vec<u8> = (0..(1 + i * 31)).map(|x| (x + i) as u8).collect();
        c.send_channel_data(0x4001, &p);
        let (ch, back) = c.recv_channel_data();
        assert_eq!(ch, 0x4001);
        assert_eq!(back, p);
    }
}

fn tcp_server(block: u16) -> common::TestServer {
    start_server(ServerOpts::block(block).runtime(|c| {
        c.tcp_listen = vec!["127.0.0.1:0".parse().unwrap()];
    }))
}

#[test]
fn tcp_allocate_permission_channel_relay() {
    let srv = tcp_server(30);
    let peer = echo_peer();
    let addr = srv.server().tcp_addrs()[0];
    let mut c = StreamClient::new(tcp(addr));
    let mapped = c.binding();
    assert_eq!(mapped.ip(), common::LOOPBACK);
    relay_cycle(&mut c, peer);
    assert_eq!(srv.allocation_count(), 1);
    // RFC 8656 §3.1: the allocation ends with its connection.
    drop(c);
    let deadline = Instant::now() + IO_TIMEOUT;
    while srv.allocation_count() != 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        srv.allocation_count(),
        0,
        "closing the connection deletes the allocation"
    );
}

#[test]
fn tcp_messages_split_and_coalesced() {
    let srv = tcp_server(31);
    let addr = srv.server().tcp_addrs()[0];
    let mut s = tcp(addr);
    // Three Binding requests in one write, then one split byte by byte.
    let mut all = Vec::new();
    for t in 1..=3u8 {
        Writer::new(&mut all, method::BINDING, Class::Request, &[t; 12]);
    }
    s.write_all(&all).unwrap();
    let mut one = Vec::new();
    Writer::new(&mut one, method::BINDING, Class::Request, &[9; 12]);
    for b in &one {
        s.write_all(&[*b]).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut c = StreamClient::new(s);
    for want in [1u8, 2, 3, 9] {
        let f = c.frame();
        let m = Message::parse(&f).unwrap();
        assert_eq!(m.transaction_id(), [want; 12]);
        assert_eq!(m.class, Class::Success);
    }
}

#[test]
fn tcp_garbage_closes_only_that_connection() {
    let srv = tcp_server(32);
    let peer = echo_peer();
    let addr = srv.server().tcp_addrs()[0];
    let mut good = StreamClient::new(tcp(addr));
    good.allocate();
    good.channel_bind(0x4002, peer);
    let mut bad = tcp(addr);
    bad.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut b = [0u8; 16];
    // The server closes the garbage stream: EOF or a reset, not a read timeout.
    let r = bad.read(&mut b);
    let closed = match &r {
        Ok(0) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        Ok(_) => false,
    };
    assert!(closed, "garbage stream closed, got {r:?}");
    // An oversized ChannelData length also ends that stream only.
    let mut bad2 = tcp(addr);
    bad2.write_all(&[0x40, 0x00, 0xff, 0xff]).unwrap();
    bad2.write_all(&[0u8; 1000]).unwrap();
    drop(bad2);
    good.send_channel_data(0x4002, b"still here");
    assert_eq!(good.recv_channel_data().1, b"still here");
    assert_eq!(srv.allocation_count(), 1);
}

// ------------------------------------------------------------------------------------- TLS

struct TestCert {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

fn make_cert() -> TestCert {
    let c =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    TestCert {
        cert_pem: c.cert.pem(),
        key_pem: c.key_pair.serialize_pem(),
        der: c.cert.der().to_vec(),
    }
}

/// Write a pair the way an operator's renewal tool does: to temporary names, then rename.
fn install(dir: &Path, c: &TestCert) {
    std::fs::write(dir.join("cert.pem.tmp"), &c.cert_pem).unwrap();
    std::fs::write(dir.join("key.pem.tmp"), &c.key_pem).unwrap();
    std::fs::rename(dir.join("key.pem.tmp"), dir.join("key.pem")).unwrap();
    std::fs::rename(dir.join("cert.pem.tmp"), dir.join("cert.pem")).unwrap();
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ferroturn-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS client trusting `trusted` (and offering ALPN "stun.turn", RFC 7443).
fn tls_connect(addr: SocketAddr, trusted: &[&TestCert]) -> Result<Tls, rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    for c in trusted {
        roots.add(c.der.clone().into()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"stun.turn".to_vec()];
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
    let mut s = rustls::StreamOwned::new(conn, tcp(addr));
    while s.conn.is_handshaking() {
        if let Err(e) = s.conn.complete_io(&mut s.sock) {
            return Err(match e.into_inner() {
                Some(inner) => match inner.downcast::<rustls::Error>() {
                    Ok(r) => *r,
                    Err(other) => rustls::Error::General(other.to_string()),
                },
                None => rustls::Error::General("handshake I/O".into()),
            });
        }
    }
    Ok(s)
}

fn peer_cert(s: &Tls) -> Vec<u8> {
    s.conn.peer_certificates().unwrap()[0].to_vec()
}

fn tls_server(block: u16, dir: &Path) -> common::TestServer {
    let files = TlsFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    start_server(ServerOpts::block(block).runtime(move |c| {
        c.tls_listen = vec!["127.0.0.1:0".parse().unwrap()];
        c.tls = Some(files.clone());
    }))
}

#[test]
fn tls_allocate_permission_channel_relay() {
    let dir = temp_dir("tls-relay");
    let cert = make_cert();
    install(&dir, &cert);
    let srv = tls_server(33, &dir);
    let peer = echo_peer();
    let s = tls_connect(srv.server().tls_addrs()[0], &[&cert]).expect("TLS handshake");
    assert_eq!(
        s.conn.alpn_protocol(),
        Some(&b"stun.turn"[..]),
        "ALPN stun.turn accepted"
    );
    let mut c = StreamClient::new(s);
    relay_cycle(&mut c, peer);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tls_certificate_hot_reload() {
    let dir = temp_dir("tls-reload");
    let (a, b) = (make_cert(), make_cert());
    install(&dir, &a);
    let srv = tls_server(34, &dir);
    let addr = srv.server().tls_addrs()[0];
    let peer = echo_peer();

    let s1 = tls_connect(addr, &[&a]).expect("handshake with cert A");
    assert_eq!(peer_cert(&s1), a.der);
    let mut c1 = StreamClient::new(s1);
    c1.allocate();
    c1.channel_bind(0x4003, peer);

    // Renew: new handshakes must see B within a couple of watcher periods, no restart.
    install(&dir, &b);
    let deadline = Instant::now() + Duration::from_secs(5);
    let s2 = loop {
        if let Ok(s) = tls_connect(addr, &[&b]) {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "new handshakes still get the old certificate"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(peer_cert(&s2), b.der);
    // A client that trusts only A is now refused: the swap really happened.
    assert!(tls_connect(addr, &[&a]).is_err());

    // The live connection is untouched: still relays on its allocation.
    c1.send_channel_data(0x4003, b"after renewal");
    assert_eq!(c1.recv_channel_data().1, b"after renewal");

    // A renewal that keeps the old modification times (`cp -p`, `rsync -t`) is seen too.
    let mtime = |f: &str| std::fs::metadata(dir.join(f)).unwrap().modified().unwrap();
    let (cert_mtime, key_mtime) = (mtime("cert.pem"), mtime("key.pem"));
    let c = make_cert();
    install(&dir, &c);
    for (f, t) in [("cert.pem", cert_mtime), ("key.pem", key_mtime)] {
        let file = std::fs::File::options()
            .write(true)
            .open(dir.join(f))
            .unwrap();
        file.set_modified(t).unwrap();
    }
    assert_eq!(
        (mtime("cert.pem"), mtime("key.pem")),
        (cert_mtime, key_mtime)
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while tls_connect(addr, &[&c]).is_err() {
        assert!(
            Instant::now() < deadline,
            "a renewal with preserved modification times is not seen"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // A broken new file is refused and the current pair kept.
    std::fs::write(
        dir.join("cert.pem"),
        "-----BEGIN CERTIFICATE-----\nnot base64\n",
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let s3 = tls_connect(addr, &[&c]).expect("previous certificate kept after a bad file");
    assert_eq!(peer_cert(&s3), c.der);
    drop((c1, s2, s3));
    let _ = std::fs::remove_dir_all(&dir);
}

// ------------------------------------------------------------------------- RFC 6062 TCP relay

/// A TCP echo server on loopback, bounded in connections.
fn tcp_echo_peer() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().take(8) {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let mut b = [0u8; 4096];
                while let Ok(n) = s.read(&mut b) {
                    if n == 0 || s.write_all(&b[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn read_exact_within(s: &mut impl Read, n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    s.read_exact(&mut out).expect("bytes from the other side");
    out
}

#[test]
fn rfc6062_connect_bind_and_relay() {
    let srv = tcp_server(35);
    let addr = srv.server().tcp_addrs()[0];
    let peer = tcp_echo_peer();
    let mut control = StreamClient::new(tcp(addr));
    let relayed = control.allocate_tcp();
    assert!(srv.in_relay_range(relayed));
    let id = control.connect(peer).expect("Connect succeeds");
    // §5.2: a second connection to the same peer → 446.
    assert_eq!(control.connect(peer), Err(446));
    // §5.4: ConnectionBind on a new connection, then it carries the peer's bytes.
    let mut data = StreamClient::new(tcp(addr));
    data.connection_bind(id).expect("ConnectionBind succeeds");
    let mut raw = data.s;
    for i in 0..50usize {
        let msg: Vec<u8> = (0..(1 + i * 13)).map(|x| (x ^ i) as u8).collect();
        raw.write_all(&msg).unwrap();
        assert_eq!(read_exact_within(&mut raw, msg.len()), msg);
    }
    // An unknown (or already bound) CONNECTION-ID → 400.
    let mut again = StreamClient::new(tcp(addr));
    assert_eq!(again.connection_bind(id), Err(400));
}

#[test]
fn rfc6062_connect_failure_is_447() {
    let srv = tcp_server(36);
    let addr = srv.server().tcp_addrs()[0];
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut control = StreamClient::new(tcp(addr));
    control.allocate_tcp();
    assert_eq!(control.connect(closed), Err(447));
}

#[test]
fn rfc6062_incoming_connection_attempt() {
    let srv = tcp_server(37);
    let addr = srv.server().tcp_addrs()[0];
    let mut control = StreamClient::new(tcp(addr));
    let relayed = control.allocate_tcp();
    // §5.3: without a permission, a peer's connection is refused.
    let mut stranger = tcp(relayed);
    let mut b = [0u8; 1];
    assert!(matches!(stranger.read(&mut b), Ok(0) | Err(_)));
    // With one, the client hears a ConnectionAttempt and binds it.
    control.create_permission("127.0.0.1:1".parse().unwrap());
    let mut peer = tcp(relayed);
    let local = peer.local_addr().unwrap();
    let f = control.frame();
    let m = Message::parse(&f).unwrap();
    assert_eq!(
        (m.method, m.class),
        (method::CONNECTION_ATTEMPT, Class::Indication)
    );
    let from = decode_xor_addr(m.get(attr::XOR_PEER_ADDRESS).unwrap(), &m.transaction_id());
    assert_eq!(from, Some(local));
    let id = u32::from_be_bytes(m.get(attr::CONNECTION_ID).unwrap().try_into().unwrap());
    let mut data = StreamClient::new(tcp(addr));
    data.connection_bind(id).unwrap();
    let mut raw = data.s;
    peer.write_all(b"hello from the peer").unwrap();
    assert_eq!(read_exact_within(&mut raw, 19), b"hello from the peer");
    raw.write_all(b"and back").unwrap();
    assert_eq!(read_exact_within(&mut peer, 8), b"and back");
    // Either side closing ends the other.
    drop(raw);
    assert!(matches!(peer.read(&mut b), Ok(0) | Err(_)));
}

/// A FIN that arrives together with the client's last bytes (one segment, one epoll event with
/// a short read) still closes the connection and ends its allocation: the short-read shortcut
/// must not skip the read that sees the end of the stream.
#[test]
fn tcp_fin_with_last_data_ends_the_allocation() {
    use std::os::fd::AsRawFd;
    let srv = tcp_server(39);
    let addr = srv.server().tcp_addrs()[0];
    let gone = |srv: &common::TestServer| {
        let end = Instant::now() + Duration::from_secs(3);
        while srv.allocation_count() > 0 && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
        srv.allocation_count() == 0
    };
    // ChannelData for an unbound channel: dropped without an answer, so nothing is written
    // back before the close.
    let last = [0x40, 0, 0, 4, 1, 2, 3, 4];
    // The FIN in a later segment.
    let mut c = StreamClient::new(tcp(addr));
    c.allocate();
    assert_eq!(srv.allocation_count(), 1);
    let mut s = c.into_inner();
    s.write_all(&last).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    drop(s);
    assert!(gone(&srv), "separate FIN: allocation still there");
    // Data and FIN in one segment: TCP_CORK holds the bytes until the close sends both.
    let mut c = StreamClient::new(tcp(addr));
    c.allocate();
    assert_eq!(srv.allocation_count(), 1);
    let mut s = c.into_inner();
    let one: libc::c_int = 1;
    // SAFETY: setsockopt on a socket this test owns, with a c_int option value.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CORK,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0);
    s.write_all(&last).unwrap();
    drop(s);
    assert!(
        gone(&srv),
        "data + FIN together: the server never saw the close"
    );
    // Shard stats are published once a second: wait for a publication after the close.
    let conns = || -> usize { srv.server().stats().iter().map(|s| s.connections).sum() };
    std::thread::sleep(Duration::from_millis(1200));
    let end = Instant::now() + Duration::from_secs(5);
    while conns() > 0 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(conns(), 0, "connection left open");
}

/// A TLS client that stops reading while a peer floods it: what the server writes must stay
/// whole frames (all or nothing per message). rustls's own buffer limit takes part of a message
/// when nearly full, which broke the framing.
#[test]
fn tls_slow_reader_gets_only_whole_frames() {
    let dir = temp_dir("tls-slow-reader");
    let cert = make_cert();
    install(&dir, &cert);
    let srv = tls_server(38, &dir);
    let s = tls_connect(srv.server().tls_addrs()[0], &[&cert]).expect("TLS handshake");
    let mut c = StreamClient::new(s);
    let relay = c.allocate();
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.channel_bind(0x4000, peer.local_addr().unwrap());
    assert_eq!(c.buffered(), 0);
    let mut s = c.into_inner();
    // Flood while the client does not read, until the server drops for it (its buffer is
    // full) and a little longer; bounded at 10 s and 2 M datagrams. Shard stats are published
    // once a second.
    let mut msg = vec![0xEEu8; 1001];
    let mut sent = 0u32;
    let t0 = Instant::now();
    let drops = || -> u64 { srv.server().stats().iter().map(|s| s.stream_drops).sum() };
    let mut full_at = None;
    while t0.elapsed() < Duration::from_secs(10) && sent < 2_000_000 {
        msg[..4].copy_from_slice(&sent.to_be_bytes());
        let _ = peer.send_to(&msg, relay);
        sent += 1;
        if sent % 64 == 0 {
            std::thread::sleep(Duration::from_micros(300));
            match full_at {
                None if drops() > 0 => full_at = Some(Instant::now()),
                Some(t) if t.elapsed() > Duration::from_millis(300) => break,
                _ => {}
            }
        }
    }
    assert!(
        drops() > 0,
        "the flood should have filled the client's buffer"
    );
    // Now read everything and check every frame.
    s.sock
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let (mut rbuf, mut frames, mut b) = (Vec::new(), 0u64, vec![0u8; 65536]);
    loop {
        loop {
            match ferroturn::codec::framing::frame_len(&rbuf, 0x7fff) {
                Ok(Some(n)) => {
                    let f: Vec<u8> = rbuf.drain(..n).collect();
                    assert_eq!(&f[..4], &[0x40, 0x00, 0x03, 0xe9], "frame {frames}");
                    assert!(
                        f[8..4 + 1001].iter().all(|&x| x == 0xEE),
                        "frame {frames} holds another frame's bytes"
                    );
                    frames += 1;
                }
                Ok(None) => break,
                Err(e) => panic!("out of sync after {frames} whole frames: {e:?}"),
            }
        }
        match s.read(&mut b) {
            Ok(0) | Err(_) => break,
            Ok(n) => rbuf.extend_from_slice(&b[..n]),
        }
    }
    assert!(frames > 100, "only {frames} frames arrived");
    assert!(
        rbuf.is_empty(),
        "{} bytes of a partial frame left",
        rbuf.len()
    );
}
