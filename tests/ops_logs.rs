//! `--log-format json` end to end: the binary as a child process, a real allocation and an
//! authentication failure driven through it over UDP, and EVERY stdout line parsed as JSON with
//! the documented schema (README, "Logs").
#[path = "support/child.rs"]
mod child;
#[path = "support/turn_udp.rs"]
mod turn_udp;

use std::time::Duration;

use child::Ferroturn;
use serde_json::Value;
use turn_udp::TurnUdp;

const REALM: &str = "logs.test";

/// Relay ports: the first half of block 17 (62700-62799, see tests/common).
const RELAY: [&str; 4] = ["--min-port", "62700", "--max-port", "62749"];

fn is_rfc3339_utc(s: &str) -> bool {
    // 2026-11-24T05:52:28.751726Z
    let b = s.as_bytes();
    b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && s.ends_with('Z')
        && s[..4].parse::<u32>().is_ok_and(|y| y >= 2024)
}

#[test]
fn json_log_lines_parse_and_carry_the_documented_fields() {
    let mut args = vec![
        "--log-format",
        "json",
        "--log-level",
        "info",
        "-r",
        REALM,
        "-u",
        "alice:alice-pass",
        "--relay-threads",
        "1",
    ];
    args.extend(RELAY);
    let srv = Ferroturn::start(&args, "started");

    let mut good = TurnUdp::new(srv.addr, "alice", "alice-pass", REALM);
    let relayed = good.allocate().expect("alice allocates");
    let client_addr = good.sock.local_addr().unwrap();
    let mut bad = TurnUdp::new(srv.addr, "alice", "wrong-pass", REALM);
    assert_eq!(bad.allocate(), Err(401), "wrong password gets 401");
    let bad_addr = bad.sock.local_addr().unwrap();
    assert!(
        srv.wait_line(Duration::from_secs(5), |l| l.contains("auth_failure"))
            .is_some(),
        "auth failure logged"
    );
    let stdout = srv.stdout.clone();
    assert_eq!(srv.stop(), Some(0), "clean exit on SIGTERM");
    let lines = stdout.lock().unwrap().clone();
    assert!(
        lines.len() >= 4,
        "start, allocation, auth failure, stop: {lines:?}"
    );

    let mut objects = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("stdout line {} is not JSON ({e}): {line}", i + 1));
        let o = v
            .as_object()
            .unwrap_or_else(|| panic!("not an object: {line}"));
        let ts = o["timestamp"].as_str().expect("timestamp is a string");
        assert!(is_rfc3339_utc(ts), "timestamp {ts:?} is RFC 3339 UTC");
        let level = o["level"].as_str().expect("level");
        assert!(
            ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&level),
            "level {level}"
        );
        assert!(
            o["target"]
                .as_str()
                .is_some_and(|t| t.starts_with("ferroturn")),
            "target: {line}"
        );
        assert!(o["message"].is_string(), "message: {line}");
        // Flattened: no nested "fields" / "span" objects.
        assert!(
            !o.contains_key("fields") && !o.contains_key("span"),
            "flat: {line}"
        );
        objects.push(o.clone());
    }
    let find = |event: &str| {
        objects
            .iter()
            .filter(|o| o.get("event").and_then(Value::as_str) == Some(event))
            .cloned()
            .collect::<Vec<_>>()
    };
    // The INFO record of an allocation is session_start (allocation_created is DEBUG).
    let started = find("session_start");
    assert_eq!(started.len(), 1, "one session_start: {lines:?}");
    assert!(find("allocation_created").is_empty(), "DEBUG lines at info");
    let c = &started[0];
    assert_eq!(c["level"], "INFO");
    assert_eq!(c["user"], "alice");
    assert_eq!(c["client"], client_addr.to_string());
    assert_eq!(c["transport"], "udp");
    assert!(
        c["relay"].as_str().unwrap().contains(&relayed.to_string()),
        "relay {} names {relayed}",
        c["relay"]
    );
    assert!(c["session"].as_str().is_some_and(|s| s.len() == 16));

    let failures = find("auth_failure");
    assert!(!failures.is_empty(), "auth_failure logged: {lines:?}");
    for f in &failures {
        assert_eq!(f["client"], bad_addr.to_string());
        assert_eq!(f["level"], "INFO");
        assert!(
            f["reason"].as_str().is_some_and(|r| !r.is_empty()),
            "reason: {f:?}"
        );
    }
    assert!(
        failures
            .iter()
            .any(|f| f.get("user").and_then(Value::as_str) == Some("alice")),
        "the signed attempt names the user: {failures:?}"
    );
    // Start and stop lines are there too, as JSON, and the open-file limit after the start.
    assert!(objects[0]["message"].as_str().unwrap().contains("started"));
    let fd = find("fd_limit");
    assert!(
        fd.len() == 1 && fd[0]["to"].as_u64().is_some_and(|n| n > 0),
        "{fd:?}"
    );
    assert_eq!(objects.last().unwrap()["message"], "stopped");
}

#[test]
fn json_to_a_log_file_and_bad_format_rejected() {
    let dir = std::env::temp_dir().join(format!("ferroturn-logs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("ferroturn.log");
    let file_s = file.to_str().unwrap().to_owned();
    let mut args = vec![
        "--log-format",
        "json",
        "--log-file",
        &file_s,
        "-r",
        REALM,
        "-u",
        "alice:alice-pass",
        "--relay-threads",
        "1",
    ];
    args.extend(RELAY);
    // Nothing goes to stdout: wait for the start line in the file instead.
    let srv = Ferroturn::start_with(&args, || {
        std::fs::read_to_string(&file).is_ok_and(|s| s.contains("started"))
    });
    assert_eq!(srv.stop(), Some(0));
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 3, "{text}");
    for l in lines {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(v["timestamp"].as_str().is_some_and(is_rfc3339_utc), "{l}");
        assert!(!l.contains("\u{1b}["), "no ANSI colours in the file: {l}");
    }
    let _ = std::fs::remove_dir_all(&dir);

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferroturn"))
        .args([
            "check-config",
            "-L",
            "127.0.0.1",
            "--log-format",
            "xml",
            "-u",
            "a:b",
        ])
        .env_remove("FERROTURN_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim(),
        "ferroturn: command line: option '--log-format': \"xml\" is not text or json"
    );
}
