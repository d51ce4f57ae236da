//! Drain end to end with the real binary (a child process, stdout captured): SIGUSR1 or the
//! admin API → /ready 503, new Allocates redirected (300 Try Alternate with ALTERNATE-SERVER)
//! or refused (508), existing allocations keep relaying and refreshing, and the process exits
//! with code 0 when the last allocation is gone, or after drain-timeout.
#[path = "support/ops_client.rs"]
mod ops_client;

use std::io::Read;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ops_client::{echo_peer, http, wait_status, Answer, TurnUdp, TOKEN};

const REALM: &str = "ferroturn.test";

/// The server binary as a child; killed (by its PID) if the test ends first.
struct Proc {
    child: Child,
    out: Arc<Mutex<String>>,
    udp: SocketAddr,
    admin: SocketAddr,
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Proc {
    /// Relay ports `min..=min+49` (halves of block 16: 62600-62699).
    fn start(min_port: u16, extra: &[&str]) -> Proc {
        for _ in 0..10 {
            // A port free for both UDP and TCP, and one for the admin listener.
            let u = UdpSocket::bind("127.0.0.1:0").unwrap();
            let port = u.local_addr().unwrap().port();
            if TcpListener::bind(("127.0.0.1", port)).is_err() {
                continue;
            }
            let admin = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap();
            drop(u);
            let (min, max) = (min_port.to_string(), (min_port + 49).to_string());
            let (p, a) = (port.to_string(), admin.to_string());
            let mut args = vec![
                "--listening-ip",
                "127.0.0.1",
                "--listening-port",
                &p,
                "--relay-ip",
                "127.0.0.1",
                "--min-port",
                &min,
                "--max-port",
                &max,
                "--realm",
                REALM,
                "--user",
                "alice:alice-pass",
                "--allow-loopback-peers",
                "--relay-threads",
                "2",
                "--admin-listen",
                &a,
                "--admin-token",
                TOKEN,
                "--log-level",
                "info",
            ];
            args.extend_from_slice(extra);
            let mut child = Command::new(env!("CARGO_BIN_EXE_ferroturn"))
                .args(&args)
                .env_remove("FERROTURN_CONFIG")
                .env_remove("RUST_LOG")
                .env_remove("NOTIFY_SOCKET")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start ferroturn");
            let out = Arc::new(Mutex::new(String::new()));
            let mut stdout = child.stdout.take().unwrap();
            let o = out.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stdout.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    o.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
            let udp = SocketAddr::from(([127, 0, 0, 1], port));
            let mut proc = Proc {
                child,
                out,
                udp,
                admin,
            };
            if wait_status(admin, "/ready", 200, Duration::from_secs(10)) {
                return proc;
            }
            // Lost a port race (exit 2) or did not come up: try again with new ports.
            let _ = proc.child.kill();
            let _ = proc.child.wait();
        }
        panic!("ferroturn did not start");
    }

    fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn log(&self) -> String {
        // The reader thread may still be draining the pipe after exit.
        std::thread::sleep(Duration::from_millis(100));
        self.out.lock().unwrap().clone()
    }
}

#[test]
fn sigusr1_drain_redirects_new_allocations_and_exits_when_the_last_one_ends() {
    let mut p = Proc::start(62600, &["--alternate-server", "192.0.2.20:3478"]);
    let (peer, _) = echo_peer();
    let mut a = TurnUdp::new(p.udp, "alice", "alice-pass", REALM);
    a.allocate_ok();
    a.permit(peer);
    assert_eq!(a.echo_round(peer, 5, 64), 5);

    let started = Instant::now();
    // SAFETY: plain kill(2) on our own child's PID.
    assert_eq!(unsafe { libc::kill(p.child.id() as i32, libc::SIGUSR1) }, 0);
    assert!(
        wait_status(p.admin, "/ready", 503, Duration::from_secs(5)),
        "/ready → 503"
    );

    // New allocations: 300 Try Alternate with the alternate of the client's family.
    let mut b = TurnUdp::new(p.udp, "alice", "alice-pass", REALM);
    assert_eq!(
        b.allocate(),
        Answer::Err(300, Some("192.0.2.20:3478".parse().unwrap()))
    );
    // The existing allocation goes on: relays, refreshes.
    assert_eq!(a.echo_round(peer, 5, 64), 5);
    assert!(matches!(a.refresh(600), Answer::Ok(_)));
    std::thread::sleep(Duration::from_millis(500));
    assert!(p.running(), "still one allocation: no exit yet");

    // The last allocation goes → the process exits, code 0.
    assert!(matches!(a.refresh(0), Answer::Ok(_)));
    let status = p
        .wait_exit(Duration::from_secs(5))
        .expect("exit after the drain");
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let log = p.log();
    for needle in [
        "event=\"drain_started\"",
        "event=\"drain_complete\"",
        "event=\"session_start\"",
        "event=\"session_end\"",
        "reason=\"refresh0\"",
        "to_peer_packets=10",
        "to_peer_bytes=640",
        "to_client_packets=10",
        "to_client_bytes=640",
        "user=alice",
        "realm=\"ferroturn.test\"",
        "transport=\"udp\"",
        &format!("client={}", a.local()),
        &format!("server={}", p.udp),
        "relay=127.0.0.1:626",
        "duration_ms=",
    ] {
        assert!(log.contains(needle), "{needle} not in the log:\n{log}");
    }
}

#[test]
fn admin_drain_without_alternate_refuses_with_508_and_exits_at_drain_timeout() {
    let mut p = Proc::start(62650, &["--drain-timeout", "2"]);
    let mut a = TurnUdp::new(p.udp, "alice", "alice-pass", REALM);
    a.allocate_ok();

    let r = http(p.admin, "POST", "/api/v1/drain", Some(TOKEN), "");
    assert_eq!(r.status, 202, "{}", r.body);
    let drained = Instant::now();
    assert_eq!(http(p.admin, "GET", "/ready", None, "").status, 503);
    let mut b = TurnUdp::new(p.udp, "alice", "alice-pass", REALM);
    assert_eq!(b.allocate(), Answer::Err(508, None));
    assert!(matches!(a.refresh(600), Answer::Ok(_)));

    // The allocation is still there; drain-timeout (2 s) ends the process anyway, code 0.
    let status = p
        .wait_exit(Duration::from_secs(8))
        .expect("exit at drain-timeout");
    assert!(status.success(), "{status:?}");
    let waited = drained.elapsed();
    assert!(
        waited >= Duration::from_millis(1800),
        "exited after {waited:?}"
    );
    let log = p.log();
    assert!(log.contains("event=\"drain_timeout\""), "{log}");
    // Shutdown closes the remaining allocation with a usage record.
    assert!(log.contains("reason=\"shutdown\""), "{log}");
}

#[test]
fn metrics_port_in_use_is_a_one_line_startup_error() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let listen = udp.local_addr().unwrap().port().to_string();
    drop(udp);
    let out = Command::new(env!("CARGO_BIN_EXE_ferroturn"))
        .args([
            "--listening-ip",
            "127.0.0.1",
            "--listening-port",
            &listen,
            "--relay-ip",
            "127.0.0.1",
            "--min-port",
            "62600",
            "--max-port",
            "62609",
            "--realm",
            REALM,
            "--user",
            "alice:alice-pass",
            "--no-tcp",
            "--prometheus",
            "--prometheus-port",
            &port,
        ])
        .env_remove("FERROTURN_CONFIG")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .output()
        .expect("run ferroturn");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("ferroturn: key 'prometheus-port': cannot listen on 127.0.0.1:")
            && err.contains("in use"),
        "{err}"
    );
}
