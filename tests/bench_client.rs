//! ferroturn-bench end to end: an in-process ferroturn on loopback, the bench binary against it
//! in channel, send and client-to-client modes at a low paced rate, and --allocate-only.
use std::net::UdpSocket;
use std::process::Command;
use std::time::{Duration, Instant};

use clap::Parser;
use ferroturn::runtime::cli::Cli;
use ferroturn::runtime::config;
use ferroturn::runtime::Server;
use serde_json::Value;

const BENCH: &str = env!("CARGO_BIN_EXE_ferroturn-bench");

/// A free UDP port on 127.0.0.1 (the config refuses port 0).
fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Relay ports come from `ports` (outside the kernel's ephemeral range, where the client
/// sockets live).
fn start_server(ports: (&str, &str), extra: &[&str]) -> (Server, String) {
    for _ in 0..10 {
        let port = free_port();
        let port_s = port.to_string();
        let mut args = vec![
            "ferroturn",
            "--listening-ip",
            "127.0.0.1",
            "--listening-port",
            &port_s,
            "--relay-ip",
            "127.0.0.1",
            "--min-port",
            ports.0,
            "--max-port",
            ports.1,
            "--realm",
            "bench.test",
            "--user",
            "bench:benchpass",
            "--allow-loopback-peers",
            "--relay-threads",
            "1",
            "--log-level",
            "off",
        ];
        args.extend_from_slice(extra);
        let cli = Cli::try_parse_from(args).unwrap();
        let cfg = config::load(&cli).unwrap();
        if let Ok(s) = Server::start(&cfg) {
            return (s, format!("127.0.0.1:{port}"));
        }
    }
    panic!("could not start a server");
}

fn bench(args: &[&str]) -> (Value, std::process::Output) {
    bench_within(args, Duration::from_secs(15))
}

fn bench_within(args: &[&str], limit: Duration) -> (Value, std::process::Output) {
    let t = Instant::now();
    let out = Command::new(BENCH)
        .args(args)
        .args(["--json", "--quiet"])
        .output()
        .expect("run ferroturn-bench");
    assert!(t.elapsed() < limit, "bench took too long");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (v, out)
}

fn check_data(v: &Value, kind: &str) {
    assert!(v["delivered"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["loss_pct"].as_f64().unwrap(), 0.0, "{v}");
    assert_eq!(v["misdelivered"], 0, "{v}");
    assert_eq!(v["client_rx_drops"], 0, "{v}");
    assert!(v["latency_us"]["p50"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["latency_kind"], kind, "{v}");
    assert_eq!(v["teardown"]["deleted"], v["allocations_ok"], "{v}");
}

#[test]
fn bench_against_ferroturn() {
    let (server, addr) = start_server(("61000", "61999"), &[]);
    let common = [
        "--server",
        &addr,
        "--user",
        "bench",
        "--password",
        "benchpass",
        "--rate",
        "2000",
        "--duration",
        "2",
        "--warmup",
        "0.2",
    ];
    // ChannelData through the built-in echo peer
    let mut a = common.to_vec();
    a.extend(["--allocations", "4", "--mode", "channel"]);
    let (v, out) = bench(&a);
    assert!(out.status.success(), "{v}");
    check_data(&v, "rtt");
    assert_eq!(v["allocations_ok"], 4);
    let sent = v["sent"].as_u64().unwrap();
    assert!((3600..=4400).contains(&sent), "paced 2000/s for 2 s: {v}");

    // Send/Data indications
    let mut a = common.to_vec();
    a.extend(["--allocations", "4", "--mode", "send"]);
    let (v, out) = bench(&a);
    assert!(out.status.success(), "{v}");
    check_data(&v, "rtt");

    // client to client
    let mut a = common.to_vec();
    a.extend(["--allocations", "4", "--c2c", "--threads", "2"]);
    let (v, out) = bench(&a);
    assert!(out.status.success(), "{v}");
    check_data(&v, "one-way");

    // video-like runs: 8 packets of 1200 B back to back per client (GSO on the server's
    // sends where the kernel has it), all delivered and echoed, the pacing still holds
    let mut a = common.to_vec();
    a.extend(["--allocations", "4", "--burst", "8", "--size", "1200"]);
    let (v, out) = bench(&a);
    assert!(out.status.success(), "{v}");
    check_data(&v, "rtt");
    assert_eq!(v["burst"], 8, "{v}");
    let sent = v["sent"].as_u64().unwrap();
    assert!((3600..=4400).contains(&sent), "paced 2000/s for 2 s: {v}");
    assert_eq!(v["delivered"].as_u64(), Some(sent), "{v}");

    // authenticated allocations per second
    let (v, out) = bench(&[
        "--server",
        &addr,
        "--user",
        "bench",
        "--password",
        "benchpass",
        "--allocate-only",
        "--allocations",
        "200",
    ]);
    assert!(out.status.success(), "{v}");
    assert_eq!(v["allocations_ok"], 200, "{v}");
    assert_eq!(v["allocations_failed"], 0, "{v}");
    assert!(v["allocs_per_s"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["teardown"]["deleted"], 200, "{v}");

    // wrong password: one clear line, exit 1
    let out = Command::new(BENCH)
        .args(["--server", &addr, "--user", "bench", "--password", "nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("authentication failed (401)"), "{err}");

    // everything was deleted
    let t = Instant::now();
    while server.allocation_count() != 0 && t.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(server.allocation_count(), 0);
    server.shutdown();
}

#[test]
fn bench_with_rest_secret() {
    let (server, addr) = start_server(("62000", "62999"), &["--static-auth-secret", "s3cret"]);
    let (v, out) = bench(&[
        "--server",
        &addr,
        "--secret",
        "s3cret",
        "--allocations",
        "2",
        "--rate",
        "500",
        "--duration",
        "1",
        "--warmup",
        "0",
        "--drain",
        "0.5",
    ]);
    assert!(out.status.success(), "{v}");
    assert!(v["delivered"].as_u64().unwrap() > 0, "{v}");
    server.shutdown();
}

/// `--transport tls`: the bench's TLS client against the server's TLS listener, trusting the
/// server's certificate by `--tls-ca`; a CA that did not sign it fails the handshake with a
/// clear message and exit code 1.
#[test]
fn bench_over_tls() {
    let dir = std::env::temp_dir().join(format!("ferroturn-bench-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let c =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert, key, wrong) = (
        dir.join("cert.pem"),
        dir.join("key.pem"),
        dir.join("other.pem"),
    );
    std::fs::write(&cert, c.cert.pem()).unwrap();
    std::fs::write(&key, c.key_pair.serialize_pem()).unwrap();
    std::fs::write(&wrong, other.cert.pem()).unwrap();
    let tls_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let (cert_s, key_s) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let (server, _) = start_server(
        ("63000", "63499"),
        &[
            "--cert",
            cert_s,
            "--pkey",
            key_s,
            "--tls-listening-port",
            &tls_port,
        ],
    );
    let addr = format!("127.0.0.1:{tls_port}");
    let common = [
        "--server",
        &addr,
        "--user",
        "bench",
        "--password",
        "benchpass",
        "--transport",
        "tls",
    ];
    let mut a = common.to_vec();
    a.extend(["--tls-ca", cert.to_str().unwrap()]);
    a.extend([
        "--allocations",
        "4",
        "--rate",
        "1000",
        "--duration",
        "1",
        "--warmup",
        "0.2",
    ]);
    let (v, out) = bench(&a);
    assert!(out.status.success(), "{v}");
    check_data(&v, "rtt");
    assert_eq!(v["transport"], "tls", "{v}");

    let mut a = common.to_vec();
    a.extend([
        "--tls-ca",
        cert.to_str().unwrap(),
        "--allocate-only",
        "--allocations",
        "50",
    ]);
    let (v, out) = bench(&a);
    assert!(out.status.success(), "{v}");
    assert_eq!(v["allocations_ok"], 50, "{v}");
    assert_eq!(v["teardown"]["deleted"], 50, "{v}");

    let out = Command::new(BENCH)
        .args(common)
        .args(["--tls-ca", wrong.to_str().unwrap(), "--timeout", "2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("TLS handshake with") && err.contains("invalid peer certificate"),
        "{err}"
    );

    let t = Instant::now();
    while server.allocation_count() != 0 && t.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(server.allocation_count(), 0);
    server.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--saturate`: the geometric search, then `--refine` bisection steps between the last pass
/// and the first loss. The server's `--max-bps` makes the capacity known: 2 allocations x
/// 50 000 B/s of 100 B datagrams each way = 1000 pps (plus a 1 s burst).
#[test]
fn saturation_search_bisects_after_the_first_loss() {
    let (server, addr) = start_server(("63500", "63599"), &["--max-bps", "50000"]);
    let (v, _) = bench_within(
        &[
            "--server",
            &addr,
            "--user",
            "bench",
            "--password",
            "benchpass",
            "--allocations",
            "2",
            "-l",
            "100",
            "--saturate",
            "--rate",
            "500",
            "--step-factor",
            "2",
            "--step-secs",
            "1.5",
            "--step-retries",
            "0",
            "--refine",
            "3",
            "--drain",
            "0.3",
            "--warmup",
            "0",
            "--duration",
            "25",
        ],
        Duration::from_secs(30),
    );
    let sat = &v["saturation"];
    let steps: Vec<(f64, bool)> = sat["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["offered_pps"].as_f64().unwrap(),
                s["pass"].as_bool().unwrap(),
            )
        })
        .collect();
    // 500 and 1000 pass, 2000 loses (the geometric part), then exactly three bisection steps.
    assert_eq!(
        &steps[..3],
        &[(500.0, true), (1000.0, true), (2000.0, false)],
        "{v}"
    );
    assert_eq!(steps.len(), 6, "{v}");
    let (mut lo, mut hi) = (1000.0, 2000.0);
    for &(rate, pass) in &steps[3..] {
        assert!(rate > lo && rate < hi, "{rate} outside ({lo}, {hi}): {v}");
        assert_eq!(rate, ((lo + hi) / 2.0_f64).round(), "halfway: {v}");
        if pass {
            lo = rate;
        } else {
            hi = rate;
        }
    }
    assert_eq!(sat["max_pass_pps"].as_f64().unwrap(), lo, "{v}");
    assert!((1000.0..2000.0).contains(&lo), "{v}");
    server.shutdown();
}
