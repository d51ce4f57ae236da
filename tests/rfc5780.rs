//! RFC 5780 NAT behaviour discovery on loopback (127.0.0.1 + 127.0.0.2): the binary with
//! `--rfc5780`, probed with `stun-probe`'s library function: every CHANGE-REQUEST combination
//! is answered from the right socket with RESPONSE-ORIGIN and OTHER-ADDRESS; configuration
//! errors are one clear line.
#[path = "support/child.rs"]
mod child;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use child::Ferroturn;
use ferroturn::runtime::stun_probe::{probe, ProbeOptions};

/// Relay ports: block 19 (62900-62999, see tests/common); Binding does not use them.
const RELAY: [&str; 6] = ["--min-port", "62900", "--max-port", "62999", "-u", "u:p"];

fn check(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ferroturn"))
        .arg("check-config")
        .args(args)
        .args(RELAY)
        .env_remove("FERROTURN_CONFIG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn config_errors_are_clear() {
    let (code, out) = check(&["-L", "127.0.0.1", "--rfc5780"]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("'--rfc5780': needs two specific listening-ip"),
        "{out}"
    );
    let (code, out) = check(&["-L", "0.0.0.0", "--rfc5780"]);
    assert_eq!(code, 2, "{out}");
    let (code, out) = check(&[
        "-L",
        "127.0.0.1",
        "-L",
        "127.0.0.2",
        "--rfc5780",
        "--no-udp",
    ]);
    assert_eq!(code, 2);
    assert!(out.contains("no-udp"), "{out}");
    let (code, out) = check(&[
        "-L",
        "127.0.0.1",
        "-L",
        "127.0.0.2",
        "--rfc5780",
        "-p",
        "3478",
        "--alt-listening-port",
        "3478",
    ]);
    assert_eq!(code, 2);
    assert!(out.contains("'--alt-listening-port'"), "{out}");
    // Alternate port inside the relay range.
    let (code, out) = check(&[
        "-L",
        "127.0.0.1",
        "-L",
        "127.0.0.2",
        "--rfc5780",
        "--alt-listening-port",
        "62950",
    ]);
    assert_eq!(code, 2);
    assert!(out.contains("relay port range"), "{out}");
    let (code, out) = check(&[
        "-L",
        "127.0.0.1",
        "-L",
        "127.0.0.2",
        "--rfc5780",
        "-p",
        "4000",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("127.0.0.1:4001") && out.contains("127.0.0.2:4001"),
        "alternate UDP listeners on listening-port + 1: {out}"
    );
}

#[test]
fn change_requests_are_answered_from_the_other_ip_and_port() {
    let mut args = vec!["-L", "127.0.0.2", "--rfc5780", "--log-level", "info"];
    args.extend(RELAY);
    let srv = Ferroturn::start(&args, "started");
    let p = srv.addr.port();
    let at = |ip: &str, port: u16| SocketAddr::new(ip.parse().unwrap(), port);
    let primary = at("127.0.0.1", p);
    for (change_ip, change_port, from) in [
        (false, false, primary),
        (false, true, at("127.0.0.1", p + 1)),
        (true, false, at("127.0.0.2", p)),
        (true, true, at("127.0.0.2", p + 1)),
    ] {
        let r = probe(&ProbeOptions {
            server: primary,
            tcp: false,
            change_ip,
            change_port,
            rto: Duration::from_millis(100),
            transmissions: 3,
        })
        .unwrap_or_else(|e| panic!("change ip {change_ip} port {change_port}: {e}"));
        assert_eq!(r.source, from, "sent from the requested address");
        assert_eq!(
            r.response_origin,
            Some(from),
            "RESPONSE-ORIGIN (RFC 5780 §7.3)"
        );
        assert_eq!(
            r.other_address,
            Some(at("127.0.0.2", p + 1)),
            "OTHER-ADDRESS (RFC 5780 §7.4)"
        );
        assert_eq!(r.mapped, Some(r.local));
    }
    // Over TCP: plain Binding, no RFC 5780 attributes.
    let mut o = ProbeOptions {
        server: primary,
        tcp: true,
        change_ip: false,
        change_port: false,
        rto: Duration::from_millis(100),
        transmissions: 3,
    };
    let r = probe(&o).expect("TCP Binding");
    assert_eq!(r.other_address, None);
    // The alternate address answers too, and names the primary as its other address.
    o.tcp = false;
    o.server = at("127.0.0.2", p + 1);
    let r = probe(&o).expect("Binding on the alternate address");
    assert_eq!(r.other_address, Some(primary));
    assert_eq!(srv.stop(), Some(0));
}
