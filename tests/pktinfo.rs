//! Wildcard listeners answer from the address the client used (IP_PKTINFO / IPV6_PKTINFO).
//!
//! IPv4: a server on 0.0.0.0 and a client whose UDP socket is *connected* to 127.0.0.2, so it
//! takes datagrams only from 127.0.0.2 (the whole 127/8 is local, but the kernel's own choice of
//! source for a reply to 127.0.0.1 is 127.0.0.1). Binding, Allocate, CreatePermission,
//! ChannelBind, ChannelData both ways and Send → Data indication all have to come back from
//! 127.0.0.2; the admin session list names 127.0.0.2 as the server side of the UDP and the TCP
//! 5-tuples, not 0.0.0.0. IPv6: the same in a network namespace of its own with two addresses
//! on one interface, the server on `::`, the client connected to the second address. IPv6
//! link-local: a client in a second namespace over a veth, talking to fe80::1 with the link as
//! scope, gets its Binding and Allocate answers (UDP and TCP) from fe80::1.
#[path = "support/turn_udp.rs"]
mod turn_udp;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferroturn::codec::long_term_key_md5;
use ferroturn::codec::stun::{
    attr, decode_error_code, method, Class, IntegrityKind, Message, Writer,
};
use ferroturn::engine::Transport;
use ferroturn::runtime::cli::Cli;
use ferroturn::runtime::{config, Server, StartError};
use turn_udp::{channel_data, Reply, TurnUdp};

const REALM: &str = "pktinfo.test";
const USER: &str = "alice";
const PASS: &str = "wonderland";
/// Relay ports: block 42 (65200-65299, see tests/common).
const MIN_PORT: u64 = 65200;
const MAX_PORT: u64 = 65299;
const CHANNEL: u16 = 0x4000;

/// A server on `listen_ip` (a wildcard), with UDP and TCP listeners on one ephemeral port.
fn start(listen_ip: IpAddr, extra: impl Fn(&mut Cli)) -> (Server, u16) {
    for _ in 0..20 {
        let port = UdpSocket::bind((listen_ip, 0))
            .and_then(|s| s.local_addr())
            .expect("bind an ephemeral port")
            .port();
        let mut cli = Cli {
            listening_ip: vec![listen_ip.to_string()],
            listening_port: Some(u64::from(port)),
            relay_ip: vec!["127.0.0.1".into()],
            min_port: Some(MIN_PORT),
            max_port: Some(MAX_PORT),
            realm: Some(REALM.into()),
            user: vec![format!("{USER}:{PASS}")],
            allow_loopback_peers: true,
            relay_threads: Some(2),
            log_level: Some("warn".into()),
            ..Cli::default()
        };
        extra(&mut cli);
        let cfg = config::load(&cli).unwrap_or_else(|e| panic!("test config: {e}"));
        match Server::start(&cfg) {
            Ok(server) => {
                assert_eq!(server.local_addrs()[0], SocketAddr::new(listen_ip, port));
                return (server, port);
            }
            Err(StartError::AddrInUse(_)) => continue,
            Err(e) => panic!("server did not start: {e}"),
        }
    }
    panic!("no free listening port after 20 attempts");
}

/// A UDP echo peer on 127.0.0.1, stopped by `stop` (bounded by its read timeout).
fn echo_peer(stop: Arc<AtomicBool>) -> (SocketAddr, std::thread::JoinHandle<()>) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let addr = sock.local_addr().unwrap();
    let h = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let until = Instant::now() + Duration::from_secs(60);
        while !stop.load(Ordering::Relaxed) && Instant::now() < until {
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&buf[..n], from);
            }
        }
    });
    (addr, h)
}

/// Send `out` on the connected socket until a datagram `accept` likes arrives (5 tries of
/// 500 ms). Anything arriving at all came from `server`: the socket is connected.
fn exchange(sock: &UdpSocket, out: &[u8], accept: impl Fn(&[u8]) -> bool) -> bool {
    let mut buf = [0u8; 2048];
    for _ in 0..5 {
        sock.send(out).expect("send");
        let until = Instant::now() + Duration::from_millis(500);
        while Instant::now() < until {
            if let Ok(n) = sock.recv(&mut buf) {
                if accept(&buf[..n]) {
                    return true;
                }
            }
        }
    }
    false
}

/// The whole UDP client side against `server` (a specific address of a wildcard listener):
/// every answer must come from `server`, which the connected socket enforces.
fn udp_client_relays(server: SocketAddr, client_ip: IpAddr) -> SocketAddr {
    let sock = UdpSocket::bind((client_ip, 0)).expect("bind client");
    sock.connect(server).expect("connect");
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let client = sock.local_addr().unwrap();
    let mut t = TurnUdp::new(server, USER, PASS, REALM);
    t.sock = sock.try_clone().unwrap();

    // Binding (RFC 8489): unauthenticated, answered from the listener.
    assert!(
        matches!(t.request(method::BINDING, &|_| {}), Reply::Ok { .. }),
        "Binding"
    );
    let relayed = t.allocate().expect("Allocate");
    let stop = Arc::new(AtomicBool::new(false));
    let (p1, h1) = echo_peer(stop.clone());
    let (p2, h2) = echo_peer(stop.clone());
    assert!(
        matches!(
            t.request(method::CREATE_PERMISSION, &|w| {
                w.xor_addr(attr::XOR_PEER_ADDRESS, p2);
            }),
            Reply::Ok { .. }
        ),
        "CreatePermission"
    );
    t.channel_bind(CHANNEL, p1).expect("ChannelBind");

    // ChannelData to p1 and back (relay → listener → client, RFC 8656 §12).
    let cd = channel_data(CHANNEL, b"through the channel");
    assert!(
        exchange(&sock, &cd, |b| b == cd.as_slice()),
        "ChannelData echo did not come back from {server}"
    );
    // Send indication to p2, Data indication back (RFC 8656 §10, §11).
    let mut send = Vec::new();
    Writer::new(&mut send, method::SEND, Class::Indication, &[9u8; 12])
        .xor_addr(attr::XOR_PEER_ADDRESS, p2)
        .attr(attr::DATA, b"as an indication")
        .fingerprint();
    let data_ind = |b: &[u8]| {
        Message::parse(b).is_ok_and(|m| {
            m.method == method::DATA
                && m.class == Class::Indication
                && m.get(attr::DATA) == Some(b"as an indication".as_slice())
        })
    };
    assert!(
        exchange(&sock, &send, data_ind),
        "Data indication did not come back from {server}"
    );
    stop.store(true, Ordering::Relaxed);
    h1.join().unwrap();
    h2.join().unwrap();
    assert!(relayed.port() as u64 >= MIN_PORT && relayed.port() as u64 <= MAX_PORT);
    client
}

/// One STUN request on a stream (RFC 8656 §12.5 framing is the STUN length for STUN).
fn tcp_request(s: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
    s.write_all(msg).expect("write");
    let mut head = [0u8; 20];
    s.read_exact(&mut head).expect("read header");
    let len = u16::from_be_bytes([head[2], head[3]]) as usize;
    let mut v = head.to_vec();
    v.resize(20 + len, 0);
    s.read_exact(&mut v[20..]).expect("read body");
    v
}

/// Allocate over TCP to `server` with the 401 round trip; returns the client address.
fn tcp_allocate(server: SocketAddr) -> (TcpStream, SocketAddr) {
    let mut s = TcpStream::connect_timeout(&server, Duration::from_secs(2)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let build = |tid: [u8; 12], auth: Option<(&[u8], &[u8])>| {
        let mut buf = Vec::new();
        let mut w = Writer::new(&mut buf, method::ALLOCATE, Class::Request, &tid);
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        if let Some((realm, nonce)) = auth {
            w.attr(attr::USERNAME, USER.as_bytes())
                .attr(attr::REALM, realm)
                .attr(attr::NONCE, nonce)
                .integrity(IntegrityKind::Sha1, &long_term_key_md5(USER, REALM, PASS));
        }
        buf
    };
    let r = tcp_request(&mut s, &build([1; 12], None));
    let m = Message::parse(&r).expect("parse 401");
    let code = m.get(attr::ERROR_CODE).and_then(decode_error_code);
    assert_eq!(code.map(|c| c.0), Some(401));
    let (realm, nonce) = (
        m.get(attr::REALM).expect("REALM").to_vec(),
        m.get(attr::NONCE).expect("NONCE").to_vec(),
    );
    let r = tcp_request(&mut s, &build([2; 12], Some((&realm, &nonce))));
    let m = Message::parse(&r).expect("parse answer");
    assert_eq!(m.class, Class::Success, "TCP Allocate failed");
    let client = s.local_addr().unwrap();
    (s, client)
}

/// The sessions of the server: (transport, client, server side).
fn sessions(server: &Server) -> Vec<(Transport, SocketAddr, SocketAddr)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let handle = server.handle();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(5), handle.sessions())
            .await
            .expect("session list in time")
    })
    .into_iter()
    .map(|s| (s.transport, s.client, s.server))
    .collect()
}

#[test]
fn ipv4_wildcard_replies_from_the_address_the_client_used() {
    let (server, port) = start(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |_| {});
    assert_eq!(server.tcp_addrs().len(), 1, "a TCP listener on the port");
    let used = SocketAddr::from(([127, 0, 0, 2], port));
    let udp_client = udp_client_relays(used, IpAddr::V4(Ipv4Addr::LOCALHOST));
    let (_tcp, tcp_client) = tcp_allocate(used);

    let list = sessions(&server);
    assert!(
        list.contains(&(Transport::Udp, udp_client, used)),
        "UDP session with server side {used}: {list:?}"
    );
    assert!(
        list.contains(&(Transport::Tcp, tcp_client, used)),
        "TCP session with server side {used}: {list:?}"
    );
    // And the other address works on the same listener, each client answered from its own.
    let other = SocketAddr::from(([127, 0, 0, 1], port));
    let c2 = udp_client_relays(other, IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)));
    assert!(sessions(&server).contains(&(Transport::Udp, c2, other)));
    server.shutdown();
}

/// A network namespace of our own (`ftp-` prefix), deleted on drop, also when the test fails.
struct Netns(String);

impl Netns {
    fn create(name: String, setup: &[&str]) -> Netns {
        let _ = ip(&["netns", "del", &name]); // a leftover of a killed run
        assert!(ip(&["netns", "add", &name]), "ip netns add {name}");
        let ns = Netns(name);
        for cmd in setup {
            let args: Vec<&str> = cmd.split_whitespace().collect();
            let mut full = vec!["-n", ns.0.as_str()];
            full.extend(args);
            assert!(ip(&full), "ip {}", full.join(" "));
        }
        ns
    }

    /// Move the calling thread into the namespace: sockets it (and threads it spawns) create
    /// live there.
    fn enter(&self) {
        let f = std::fs::File::open(format!("/var/run/netns/{}", self.0)).expect("open netns");
        // SAFETY: a valid namespace fd; CLONE_NEWNET only switches this thread's network ns.
        let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.0]);
    }
}

/// Run `f` on a thread inside a namespace of our own, made with `setup` (`ip -n NS ...`
/// commands) and deleted afterwards, also when `f` panics (the panic is passed on). None, with
/// a SKIPPED line, when not root.
fn in_netns<T: Send + 'static>(
    tag: &str,
    setup: &[&str],
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: needs root for a network namespace");
        return None;
    }
    let ns = Netns::create(format!("ftp-{tag}-{}", std::process::id()), setup);
    let name = ns.0.clone();
    // The server's shard threads, spawned from this thread, inherit its namespace.
    let result = std::thread::spawn(move || {
        let inner = Netns(name);
        inner.enter();
        std::mem::forget(inner); // the outer guard deletes it
        f()
    })
    .join();
    drop(ns);
    match result {
        Ok(r) => Some(r),
        Err(e) => std::panic::resume_unwind(e),
    }
}

fn ip(args: &[&str]) -> bool {
    std::process::Command::new("ip")
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// IPv6: two addresses on one interface. The reply to the client's address (the first one)
/// would leave from that address (RFC 6724 rule 1, same address) without IPV6_PKTINFO; the
/// client is connected to the second.
#[test]
fn ipv6_wildcard_replies_from_the_address_the_client_used() {
    let setup = [
        "link set lo up",
        "link add ftp0 type veth peer name ftp1",
        "addr add fd00:70::1/64 dev ftp0 nodad",
        "addr add fd00:70::2/64 dev ftp0 nodad",
        "link set ftp0 up",
        "link set ftp1 up",
    ];
    let Some((list, client, tcp_client, used)) = in_netns("v6", &setup, || {
        let (server, port) = start("::".parse().unwrap(), |c| {
            c.relay_ip.push("fd00:70::1".into());
        });
        let used = SocketAddr::new("fd00:70::2".parse().unwrap(), port);
        let client = udp_client_relays(used, "fd00:70::1".parse().unwrap());
        let (_tcp, tcp_client) = tcp_allocate(used);
        let list = sessions(&server);
        server.shutdown();
        (list, client, tcp_client, used)
    }) else {
        return;
    };
    assert!(
        list.contains(&(Transport::Udp, client, used)),
        "UDP session with server side {used}: {list:?}"
    );
    assert!(
        list.contains(&(Transport::Tcp, tcp_client, used)),
        "TCP session with server side {used}: {list:?}"
    );
}

/// A namespace with one ordinary public address, 11.0.0.7, on a veth.
const OWN_SETUP: [&str; 5] = [
    "link set lo up",
    "link add ftp0 type veth peer name ftp1",
    "addr add 11.0.0.7/24 dev ftp0",
    "link set ftp0 up",
    "link set ftp1 up",
];

/// A server on 0.0.0.0 and a client with an allocation on it (over 127.0.0.1).
fn wildcard_allocation() -> (Server, u16, TurnUdp) {
    let (server, port) = start(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |_| {});
    let mut t = TurnUdp::new(SocketAddr::from(([127, 0, 0, 1], port)), USER, PASS, REALM);
    t.allocate().expect("Allocate");
    (server, port, t)
}

/// The peer filter with a wildcard listener: every address of the host is the server's own
/// (relay loops into the listener, other services on the host), not just the configured ones.
/// 11.0.0.7 is an ordinary public address, on an interface of a namespace of our own.
#[test]
fn wildcard_listener_makes_every_host_address_own() {
    let got = in_netns("own", &OWN_SETUP, || {
        let (server, port, mut t) = wildcard_allocation();
        let own = |p: u16| SocketAddr::from(([11, 0, 0, 7], p));
        let got = [
            t.channel_bind(0x4000, own(22)),
            t.channel_bind(0x4001, own(port)),
            // Control: another public address is fine.
            t.channel_bind(0x4002, SocketAddr::from(([11, 0, 0, 8], 22))),
        ];
        server.shutdown();
        got
    });
    if let Some(got) = got {
        assert_eq!(got, [Err(403), Err(403), Ok(())]);
    }
}

/// The same while running: an address added to an interface after the start is own within
/// about a second (the server's watcher reads the interface addresses once a second), and is
/// an ordinary peer again once removed. 11.0.0.9 is an ordinary public address otherwise.
#[test]
fn host_address_added_while_running_becomes_own() {
    let got = in_netns("own2", &OWN_SETUP, || {
        let (server, _, mut t) = wildcard_allocation();
        // A peer address is bound to one channel (RFC 8656 §12): a port per attempt.
        let new = |p: u16| SocketAddr::from(([11, 0, 0, 9], p));
        let before = t.channel_bind(0x4000, new(22));
        // Children of this thread run in its namespace.
        assert!(ip(&["addr", "add", "11.0.0.9/24", "dev", "ftp0"]));
        // Bounded: 5 s for a change the watcher sees within ~1 s.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut added = t.channel_bind(0x4001, new(23));
        while added.is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            added = t.channel_bind(0x4001, new(23));
        }
        assert!(ip(&["addr", "del", "11.0.0.9/24", "dev", "ftp0"]));
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut removed = t.channel_bind(0x4002, new(24));
        while removed.is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            removed = t.channel_bind(0x4002, new(24));
        }
        server.shutdown();
        [before, added, removed]
    });
    if let Some(got) = got {
        assert_eq!(got, [Ok(()), Err(403), Ok(())]);
    }
}

/// IPv6 link-local: a client on another host of the link (a second namespace over a veth)
/// reaches a `::` listener at fe80::1 with the interface as scope. The answers leave from
/// fe80::1 (IPV6_PKTINFO without an interface index; the client's scope id picks the link): a
/// Binding and an Allocate over UDP on a connected socket, and an Allocate over TCP.
#[test]
fn ipv6_link_local_client_is_answered() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: needs root for a network namespace");
        return;
    }
    let client_ns = Netns::create(
        format!("ftp-llc-{}", std::process::id()),
        &["link set lo up"],
    );
    let peer_side = format!(
        "link add ftp0 type veth peer name ftp1 netns {}",
        client_ns.0
    );
    let setup = [
        "link set lo up",
        peer_side.as_str(),
        "addr add fe80::1/64 dev ftp0 nodad",
        // A relay address for the `::` listener (the client never uses it).
        "addr add fd00:71::1/64 dev ftp0 nodad",
        "link set ftp0 up",
    ];
    let client_name = client_ns.0.clone();
    let got = in_netns("ll", &setup, move || {
        for cmd in ["addr add fe80::2/64 dev ftp1 nodad", "link set ftp1 up"] {
            let mut args = vec!["-n", client_name.as_str()];
            args.extend(cmd.split_whitespace());
            assert!(ip(&args), "ip {}", args.join(" "));
        }
        let (server, port) = start("::".parse().unwrap(), |c| {
            c.relay_ip.push("fd00:71::1".into());
        });
        let client = std::thread::spawn(move || {
            let ns = Netns(client_name);
            ns.enter();
            std::mem::forget(ns); // the outer guard deletes it
            let name = std::ffi::CString::new("ftp1").unwrap();
            // SAFETY: a NUL-terminated interface name.
            let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
            assert_ne!(ifindex, 0, "ftp1 in the client namespace");
            let server = SocketAddr::V6(std::net::SocketAddrV6::new(
                "fe80::1".parse().unwrap(),
                port,
                0,
                ifindex,
            ));
            let sock = UdpSocket::bind("[::]:0").expect("bind client");
            sock.connect(server).expect("connect");
            sock.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            let mut t = TurnUdp::new(server, USER, PASS, REALM);
            t.sock = sock;
            let binding = matches!(t.request(method::BINDING, &|_| {}), Reply::Ok { .. });
            let allocate = t.allocate().is_ok();
            let (tcp, tcp_client) = tcp_allocate(server);
            // The TCP allocation lives as long as its connection: kept for the session list.
            (
                binding,
                allocate,
                t.sock.local_addr().unwrap(),
                tcp_client,
                tcp,
            )
        })
        .join();
        let list = sessions(&server);
        server.shutdown();
        (client, list)
    });
    drop(client_ns);
    let Some((client, list)) = got else {
        return;
    };
    let (binding, allocate, udp_client, tcp_client, _tcp) = match client {
        Ok(c) => c,
        Err(e) => std::panic::resume_unwind(e),
    };
    assert!(
        binding && allocate,
        "Binding {binding}, Allocate {allocate}"
    );
    let fe80_1: IpAddr = "fe80::1".parse().unwrap();
    for (transport, client) in [(Transport::Udp, udp_client), (Transport::Tcp, tcp_client)] {
        assert!(
            list.iter()
                .any(|&(t, c, s)| t == transport && c.ip() == client.ip() && s.ip() == fe80_1),
            "{transport:?} session of {client} with server side fe80::1: {list:?}"
        );
    }
}
