//! ferroturn-bench's control-path driver (setup, --allocate-only, teardown) against a scripted
//! TURN server on loopback that misbehaves on purpose: it drops the first request of every
//! client (RFC 8489 §6.2.1 retransmission), sends every 401 twice (a late duplicate must not
//! stall the transaction it no longer belongs to), answers 437 to some Allocates (the client
//! retries on a fresh socket), or never answers. UDP and TCP. No relay ports are used.
use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ferroturn::codec::long_term_key_md5;
use ferroturn::codec::stun::{attr, decode_u32, method, Class, IntegrityKind, Message, Writer};
use serde_json::Value;

const BENCH: &str = env!("CARGO_BIN_EXE_ferroturn-bench");
const REALM: &str = "fake.test";

#[derive(Clone, Copy, Default)]
struct Script {
    /// Drop the first datagram from every new source address (UDP).
    drop_first: bool,
    /// Send every 401 twice.
    dup_401: bool,
    /// Answer 437 to this many authenticated Allocates (the first ones to arrive).
    reject_437: u64,
}

#[derive(Default)]
struct Counts {
    dropped: AtomicU64,
    answered_437: AtomicU64,
    allocated: AtomicU64,
    deleted: AtomicU64,
    refreshed: AtomicU64,
    bad_integrity: AtomicU64,
}

struct Fake {
    addr: SocketAddr,
    counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The scripted server's answers to one request (none when it is not a request).
fn answer(
    req: &[u8],
    src: SocketAddr,
    script: &Script,
    left_437: &AtomicU64,
    n: &Counts,
) -> Vec<Vec<u8>> {
    let Ok(m) = Message::parse(req) else {
        return vec![];
    };
    if m.class != Class::Request {
        return vec![];
    }
    let tid = m.transaction_id();
    let mut b = Vec::new();
    if !m.has_integrity() {
        Writer::new(&mut b, m.method, Class::Error, &tid)
            .error_code(401, "Unauthorized")
            .attr(attr::REALM, REALM.as_bytes())
            .attr(attr::NONCE, b"0123456789abcdef")
            .fingerprint();
        return if script.dup_401 {
            vec![b.clone(), b]
        } else {
            vec![b]
        };
    }
    let key = long_term_key_md5("bench", REALM, "benchpass");
    if !m.verify_integrity(&key) {
        n.bad_integrity.fetch_add(1, Ordering::Relaxed);
        Writer::new(&mut b, m.method, Class::Error, &tid)
            .error_code(401, "Unauthorized")
            .attr(attr::REALM, REALM.as_bytes())
            .attr(attr::NONCE, b"0123456789abcdef")
            .fingerprint();
        return vec![b];
    }
    if m.method == method::ALLOCATE
        && left_437
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |k| k.checked_sub(1))
            .is_ok()
    {
        n.answered_437.fetch_add(1, Ordering::Relaxed);
        Writer::new(&mut b, m.method, Class::Error, &tid)
            .error_code(437, "Allocation Mismatch")
            .integrity(IntegrityKind::Sha1, &key)
            .fingerprint();
        return vec![b];
    }
    let mut w = Writer::new(&mut b, m.method, Class::Success, &tid);
    match m.method {
        method::ALLOCATE => {
            n.allocated.fetch_add(1, Ordering::Relaxed);
            w.xor_addr(attr::XOR_RELAYED_ADDRESS, "127.0.0.1:9".parse().unwrap())
                .xor_addr(attr::XOR_MAPPED_ADDRESS, src)
                .u32(attr::LIFETIME, 600);
        }
        method::REFRESH => {
            let lifetime = m.get(attr::LIFETIME).and_then(decode_u32).unwrap_or(600);
            if lifetime == 0 {
                n.deleted.fetch_add(1, Ordering::Relaxed);
            } else {
                n.refreshed.fetch_add(1, Ordering::Relaxed);
            }
            w.u32(attr::LIFETIME, lifetime);
        }
        _ => {}
    }
    w.integrity(IntegrityKind::Sha1, &key).fingerprint();
    vec![b]
}

/// A scripted server on 127.0.0.1, UDP or TCP, on an ephemeral port. `silent`: never answer.
fn fake(tcp: bool, script: Script, silent: bool) -> Fake {
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let left_437 = Arc::new(AtomicU64::new(script.reject_437));
    let (c, s) = (counts.clone(), stop.clone());
    if !tcp {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let mut seen = HashSet::new();
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                let Ok((len, src)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                if silent {
                    continue;
                }
                if script.drop_first && seen.insert(src) {
                    c.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                for r in answer(&buf[..len], src, &script, &left_437, &c) {
                    let _ = sock.send_to(&r, src);
                }
            }
        });
        return Fake {
            addr,
            counts,
            stop,
            threads: vec![t],
        };
    }
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let addr = l.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        let mut conns = Vec::new();
        while !s.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((st, src)) => {
                    let (c, s, left) = (c.clone(), s.clone(), left_437.clone());
                    conns.push(std::thread::spawn(move || {
                        serve_tcp(st, src, &script, &left, &c, &s)
                    }));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        for t in conns {
            let _ = t.join();
        }
    });
    Fake {
        addr,
        counts,
        stop,
        threads: vec![t],
    }
}

fn serve_tcp(
    mut st: TcpStream,
    src: SocketAddr,
    script: &Script,
    left_437: &AtomicU64,
    c: &Counts,
    stop: &AtomicBool,
) {
    st.set_nonblocking(false).unwrap();
    st.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        match st.read(&mut chunk) {
            Ok(0) => return,
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
            Err(_) => continue,
        }
        // STUN framing over a stream: 20-byte header, then the length it states
        while buf.len() >= 20 {
            let total = 20 + u16::from_be_bytes([buf[2], buf[3]]) as usize;
            if buf.len() < total {
                break;
            }
            let req: Vec<u8> = buf.drain(..total).collect();
            for r in answer(&req, src, script, left_437, c) {
                if st.write_all(&r).is_err() {
                    return;
                }
            }
        }
    }
}

/// Run ferroturn-bench --allocate-only against `addr`; its JSON report and the process output.
fn bench(addr: SocketAddr, extra: &[&str]) -> (Value, std::process::Output) {
    let t = Instant::now();
    let out = Command::new(BENCH)
        .args([
            "--server",
            &addr.to_string(),
            "--user",
            "bench",
            "--password",
            "benchpass",
        ])
        .args(["--allocate-only", "--json", "--quiet"])
        .args(extra)
        .output()
        .expect("run ferroturn-bench");
    assert!(t.elapsed() < Duration::from_secs(20), "bench took too long");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v = serde_json::from_str(stdout.trim()).unwrap_or(Value::Null);
    (v, out)
}

fn report(out: &std::process::Output) -> String {
    format!(
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn udp_retransmits_when_the_first_request_is_dropped() {
    let f = fake(
        false,
        Script {
            drop_first: true,
            ..Script::default()
        },
        false,
    );
    let (v, out) = bench(f.addr, &["-m", "20", "--concurrency", "8"]);
    assert!(out.status.success(), "{}", report(&out));
    assert_eq!(v["allocations_ok"], 20, "{v}");
    assert_eq!(v["allocations_failed"], 0, "{v}");
    assert_eq!(v["teardown"]["deleted"], 20, "{v}");
    assert_eq!(f.counts.dropped.load(Ordering::Relaxed), 20);
    assert_eq!(f.counts.allocated.load(Ordering::Relaxed), 20);
    assert_eq!(f.counts.deleted.load(Ordering::Relaxed), 20);
    // every allocation waited for the first retransmission timeout (500 ms)
    let min = v["alloc_latency_us"]["min"].as_u64().unwrap();
    assert!(min >= 480_000, "no retransmission wait: {v}");
}

#[test]
fn udp_late_duplicate_answers_do_not_stall() {
    let f = fake(
        false,
        Script {
            dup_401: true,
            ..Script::default()
        },
        false,
    );
    // sleeping in epoll, and busy-polling (--spin)
    for spin in [None, Some("--spin")] {
        let mut args = vec!["-m", "50", "--concurrency", "16"];
        args.extend(spin);
        let (v, out) = bench(f.addr, &args);
        assert!(out.status.success(), "{}", report(&out));
        assert_eq!(v["allocations_ok"], 50, "{v}");
        assert_eq!(v["allocations_failed"], 0, "{v}");
        assert_eq!(v["teardown"]["deleted"], 50, "{v}");
        // the duplicate 401 waits in the socket ahead of the success: it must be read past
        // at once, not left until the 500 ms retransmission timer brings another answer
        let max = v["alloc_latency_us"]["max"].as_u64().unwrap();
        assert!(
            max < 450_000,
            "an allocation waited for a retransmission: {v}"
        );
    }
    assert_eq!(f.counts.allocated.load(Ordering::Relaxed), 100);
}

#[test]
fn udp_437_retries_on_a_fresh_socket() {
    let f = fake(
        false,
        Script {
            reject_437: 3,
            ..Script::default()
        },
        false,
    );
    let (v, out) = bench(f.addr, &["-m", "20", "--concurrency", "8"]);
    assert!(out.status.success(), "{}", report(&out));
    assert_eq!(v["allocations_ok"], 20, "{v}");
    assert_eq!(v["allocations_failed"], 0, "{v}");
    assert_eq!(v["alloc_retried_437"], 3, "{v}");
    assert_eq!(v["teardown"]["deleted"], 20, "{v}");
    assert_eq!(f.counts.answered_437.load(Ordering::Relaxed), 3);
    assert_eq!(f.counts.allocated.load(Ordering::Relaxed), 20);
    assert_eq!(f.counts.bad_integrity.load(Ordering::Relaxed), 0);
}

#[test]
fn tcp_control_connections_with_437_and_duplicates() {
    let script = Script {
        dup_401: true,
        reject_437: 2,
        ..Script::default()
    };
    let f = fake(true, script, false);
    let (v, out) = bench(
        f.addr,
        &["-m", "20", "--concurrency", "8", "--transport", "tcp"],
    );
    assert!(out.status.success(), "{}", report(&out));
    assert_eq!(v["transport"], "tcp", "{v}");
    assert_eq!(v["allocations_ok"], 20, "{v}");
    assert_eq!(v["allocations_failed"], 0, "{v}");
    assert_eq!(v["alloc_retried_437"], 2, "{v}");
    assert_eq!(v["teardown"]["deleted"], 20, "{v}");
    assert_eq!(f.counts.allocated.load(Ordering::Relaxed), 20);
    assert_eq!(f.counts.deleted.load(Ordering::Relaxed), 20);
}

#[test]
fn udp_refreshes_while_holding() {
    let f = fake(
        false,
        Script {
            dup_401: true,
            ..Script::default()
        },
        false,
    );
    let (v, out) = bench(
        f.addr,
        &[
            "-m",
            "20",
            "--concurrency",
            "8",
            "--hold",
            "1.3",
            "--refresh-secs",
            "0.5",
        ],
    );
    assert!(out.status.success(), "{}", report(&out));
    assert_eq!(v["allocations_ok"], 20, "{v}");
    assert_eq!(v["teardown"]["deleted"], 20, "{v}");
    // one or two rounds (0.5 s apart, within 1.3 s), each one Refresh per allocation
    let r = f.counts.refreshed.load(Ordering::Relaxed);
    assert!(r >= 20 && r % 20 == 0, "{r} refreshes");
    assert!(
        String::from_utf8_lossy(&out.stderr).is_empty(),
        "{}",
        report(&out)
    );
}

#[test]
fn udp_server_that_never_answers_is_reported() {
    let f = fake(false, Script::default(), true);
    let t = Instant::now();
    let (_, out) = bench(f.addr, &["-m", "4", "--timeout", "1.2"]);
    assert_eq!(out.status.code(), Some(1), "{}", report(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no response from the TURN server"), "{err}");
    // the deadline, with retransmissions at 0.5 s and 1.5 s cut short by it
    assert!(
        t.elapsed() >= Duration::from_millis(1200),
        "{:?}",
        t.elapsed()
    );
}
