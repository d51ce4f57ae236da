//! SIGHUP reload while a client relays: the binary as a child process with a config file that
//! the test rewrites. 2000 paced ChannelData packets through an echo peer lose nothing across
//! two reloads (a valid one: user added, user removed, log level changed; then an invalid one,
//! rejected with a log line while the previous configuration stays in force).
#[path = "support/child.rs"]
mod child;
#[path = "support/turn_udp.rs"]
mod turn_udp;

use std::collections::HashSet;
use std::io::Write;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use child::Ferroturn;
use turn_udp::{channel_data, TurnUdp};

const REALM: &str = "reload.test";
const PACKETS: u32 = 2000;
const CHANNEL: u16 = 0x4000;

/// Relay ports: block 18 (62800-62899, see tests/common).
fn config(users: &[(&str, &str)], log_level: &str, min_port: u32) -> String {
    let mut s = format!(
        "realm = \"{REALM}\"\nlog-format = \"json\"\nlog-level = \"{log_level}\"\n\
         min-port = {min_port}\nmax-port = 62899\nrelay-threads = 2\n\
         allow-loopback-peers = true\n\n[users]\n"
    );
    for (u, p) in users {
        s.push_str(&format!("{u} = \"{p}\"\n"));
    }
    s
}

fn write(path: &std::path::Path, text: &str) {
    // Write a sibling and rename: the server never reads a half-written file.
    let tmp = path.with_extension("tmp");
    std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .expect("write config");
    std::fs::rename(&tmp, path).expect("rename config");
}

/// An echo peer on a thread; stops when `stop` is set (bounded by its read timeout).
fn echo_peer(stop: Arc<AtomicBool>) -> (SocketAddr, std::thread::JoinHandle<()>) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let addr = sock.local_addr().unwrap();
    let h = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&buf[..n], from);
            }
        }
    });
    (addr, h)
}

/// A stream that starts with a complete ChannelData frame before any STUN message: the server
/// closes it and says so at debug level only.
fn poke_tcp_with_junk(addr: SocketAddr) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("tcp connect");
    let _ = s.write_all(&[0x40, 0x00, 0x00, 0x04, 1, 2, 3, 4]);
    std::thread::sleep(Duration::from_millis(200));
}

fn count(srv: &Ferroturn, needle: &str) -> usize {
    srv.stdout
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains(needle))
        .count()
}

#[test]
fn sighup_reload_while_relaying_loses_nothing() {
    let dir = std::env::temp_dir().join(format!("ferroturn-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("turnserver.toml");
    write(
        &path,
        &config(
            &[("alice", "alice-pass"), ("bob", "bob-pass")],
            "info",
            62800,
        ),
    );
    let srv = Ferroturn::start(&["--config", path.to_str().unwrap()], "started");

    // bob can allocate before the reload.
    let mut bob = TurnUdp::new(srv.addr, "bob", "bob-pass", REALM);
    bob.allocate().expect("bob allocates before the reload");

    let stop = Arc::new(AtomicBool::new(false));
    let (peer, peer_thread) = echo_peer(stop.clone());
    let mut alice = TurnUdp::new(srv.addr, "alice", "alice-pass", REALM);
    alice.allocate().expect("alice allocates");
    alice.channel_bind(CHANNEL, peer).expect("channel bind");

    // Paced traffic: one packet per 3 ms (6 s, so that both reloads happen
    // mid-stream even on a loaded machine), every echo counted by sequence number.
    let tx = alice.sock.try_clone().unwrap();
    let rx = alice.sock.try_clone().unwrap();
    let server = srv.addr;
    let sender = std::thread::spawn(move || {
        let start = Instant::now();
        for seq in 0..PACKETS {
            let due = start + Duration::from_micros(3000 * u64::from(seq));
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let mut payload = [0u8; 100];
            payload[..4].copy_from_slice(&seq.to_be_bytes());
            tx.send_to(&channel_data(CHANNEL, &payload), server)
                .unwrap();
        }
    });
    let receiver = std::thread::spawn(move || {
        let mut seen = HashSet::new();
        let mut buf = [0u8; 2048];
        let end = Instant::now() + Duration::from_secs(15);
        // read timeout 500 ms: the loop ends at most 500 ms after the last echo or at `end`.
        while seen.len() < PACKETS as usize && Instant::now() < end {
            if let Ok((n, _)) = rx.recv_from(&mut buf) {
                if n >= 8 && u16::from_be_bytes([buf[0], buf[1]]) == CHANNEL {
                    seen.insert(u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]));
                }
            }
        }
        seen.len()
    });

    // Before the reload: debug lines are filtered out.
    poke_tcp_with_junk(srv.addr);
    let debug_marker = "non-STUN";
    assert_eq!(
        count(&srv, debug_marker),
        0,
        "no debug lines at log-level info"
    );

    // Reload 1 (valid): carol added, bob removed, log level debug.
    write(
        &path,
        &config(
            &[("alice", "alice-pass"), ("carol", "carol-pass")],
            "debug",
            62800,
        ),
    );
    srv.signal(libc::SIGHUP);
    let line = srv
        .wait_line(Duration::from_secs(5), |l| {
            l.contains("\"config_reloaded\"")
        })
        .expect("reload logged");
    assert!(line.contains("\"log_level\":\"debug\""), "{line}");
    poke_tcp_with_junk(srv.addr);
    assert!(
        srv.wait_line(Duration::from_secs(5), |l| l.contains(debug_marker))
            .is_some(),
        "debug lines appear after the log level was reloaded"
    );

    // Reload 2 (invalid): rejected with a clear line naming the key, old config kept.
    write(
        &path,
        &config(
            &[("alice", "alice-pass"), ("bob", "bob-pass")],
            "info",
            70000,
        ),
    );
    srv.signal(libc::SIGHUP);
    let line = srv
        .wait_line(Duration::from_secs(5), |l| {
            l.contains("\"config_rejected\"")
        })
        .expect("rejection logged");
    assert!(
        line.contains("min-port") && line.contains("70000"),
        "{line}"
    );
    assert!(line.contains("\"level\":\"WARN\""), "{line}");
    assert_eq!(
        count(&srv, "\"config_reloaded\""),
        1,
        "the invalid file was not applied"
    );
    assert!(
        !sender.is_finished(),
        "both reloads happened while traffic was flowing"
    );

    sender.join().unwrap();
    let received = receiver.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    peer_thread.join().unwrap();
    assert_eq!(
        received, PACKETS as usize,
        "packets lost across the reloads"
    );

    // The configuration in force is reload 1's: carol in, bob out (401 on a new Allocate).
    let mut carol = TurnUdp::new(srv.addr, "carol", "carol-pass", REALM);
    carol
        .allocate()
        .expect("carol, added by the reload, allocates");
    let mut bob2 = TurnUdp::new(srv.addr, "bob", "bob-pass", REALM);
    assert_eq!(
        bob2.allocate(),
        Err(401),
        "bob, removed by the reload, gets 401"
    );
    // Still debug level (reload 2 asked for info but was rejected).
    let before = count(&srv, debug_marker);
    poke_tcp_with_junk(srv.addr);
    let end = Instant::now() + Duration::from_secs(5);
    while count(&srv, debug_marker) == before && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        count(&srv, debug_marker) > before,
        "log level debug still in force"
    );

    // Reload 3: valid, but min-port needs a restart: applied otherwise, and the key named.
    write(&path, &config(&[("alice", "alice-pass")], "debug", 62850));
    srv.signal(libc::SIGHUP);
    let line = srv
        .wait_line(Duration::from_secs(5), |l| {
            l.contains("\"config_restart_required\"")
        })
        .expect("restart-only key named");
    assert!(line.contains("min-port / max-port"), "{line}");
    let end = Instant::now() + Duration::from_secs(5);
    while count(&srv, "\"config_reloaded\"") < 2 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(count(&srv, "\"config_reloaded\""), 2, "reload 3 applied");
    assert_eq!(
        TurnUdp::new(srv.addr, "carol", "carol-pass", REALM).allocate(),
        Err(401),
        "carol, removed by reload 3, gets 401"
    );
    assert_eq!(srv.stop(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}
