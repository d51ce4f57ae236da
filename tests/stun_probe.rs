//! `ferroturn stun-probe` against a ferroturn started in-process: UDP and TCP Binding, the
//! mapped address, text and JSON output, the bounded RFC 8489 §6.2.1 retransmission schedule
//! and the exit code on timeout.
mod common;

use std::net::UdpSocket;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{start_server, ServerOpts};
use ferroturn::runtime::stun_probe::{probe, ProbeError, ProbeOptions};

fn opts(server: std::net::SocketAddr, tcp: bool) -> ProbeOptions {
    ProbeOptions {
        server,
        tcp,
        change_ip: false,
        change_port: false,
        rto: Duration::from_millis(100),
        transmissions: 3,
    }
}

fn bin(args: &[&str]) -> (i32, String, String, Duration) {
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_ferroturn"))
        .arg("stun-probe")
        .args(args)
        .output()
        .expect("run stun-probe");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        start.elapsed(),
    )
}

#[test]
fn udp_and_tcp_binding_report_the_mapped_address() {
    // Block 19's ports are not used: Binding needs no relay.
    let srv = start_server(ServerOpts::block(19).ports(4));
    for tcp in [false, true] {
        let r = probe(&opts(srv.addr, tcp)).expect("Binding answered");
        assert_eq!(r.transport, if tcp { "tcp" } else { "udp" });
        assert_eq!(r.mapped, Some(r.local), "loopback: mapped = local ({tcp})");
        assert_eq!(r.source, srv.addr);
        assert_eq!(r.transmissions, 1);
        assert!(r.rtt < Duration::from_secs(1));
        // RFC 5780 is off by default: neither attribute is sent.
        assert_eq!(r.other_address, None);
        assert_eq!(r.response_origin, None);
    }

    let target = srv.addr.to_string();
    let (code, out, err, _) = bin(&[&target]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("mapped address:  127.0.0.1:"), "{out}");
    assert!(out.contains("rtt:"), "{out}");

    let (code, out, err, _) = bin(&[&target, "--tcp", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
    assert_eq!(v["transport"], "tcp");
    assert_eq!(v["server"], target);
    assert_eq!(v["mapped_address"], v["local"]);
    assert!(v["rtt_ms"].as_f64().is_some_and(|ms| ms >= 0.0));
    assert!(v["other_address"].is_null());
}

#[test]
fn change_request_without_rfc5780_is_an_error_response() {
    let srv = start_server(ServerOpts::block(19).ports(4));
    let mut o = opts(srv.addr, false);
    o.change_port = true;
    match probe(&o) {
        // RFC 5780 §7.2 / RFC 8489: a server that does not do RFC 5780 does not understand
        // CHANGE-REQUEST (comprehension-required) and answers 420.
        Err(ProbeError::ErrorResponse { code, .. }) => assert_eq!(code, 420),
        other => panic!("expected 420, got {other:?}"),
    }
    let (code, _, err, _) = bin(&[&srv.addr.to_string(), "--change-ip"]);
    assert_eq!(code, 1);
    assert!(err.contains("420"), "{err}");
}

#[test]
fn silence_times_out_on_the_rfc_schedule_with_exit_1() {
    // A socket that never answers.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let o = opts(addr, false);
    let start = Instant::now();
    match probe(&o) {
        Err(ProbeError::Timeout { transmissions, .. }) => assert_eq!(transmissions, 3),
        other => panic!("expected a timeout, got {other:?}"),
    }
    // 100 + 200 ms gaps, then 16 x 100 ms: 1.9 s.
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(1850) && took < Duration::from_secs(5),
        "{took:?}"
    );
    let mut got = 0;
    silent.set_nonblocking(true).unwrap();
    let mut b = [0u8; 600];
    while silent.recv_from(&mut b).is_ok() {
        got += 1;
    }
    assert_eq!(got, 3, "exactly Rc transmissions");

    let (code, out, err, took) = bin(&[
        &addr.to_string(),
        "--rto",
        "50",
        "--transmissions",
        "2",
        "--json",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("no response after 2 transmission(s)"), "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(v["error"].as_str().unwrap().contains("no response"));
    assert!(took < Duration::from_secs(5), "{took:?}");

    let (code, _, err, _) = bin(&["no-such-host.invalid"]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot resolve"), "{err}");
}
