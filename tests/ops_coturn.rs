//! coturn migration through the binary: `ferroturn convert` on a realistic coturn
//! turnserver.conf (tests/fixtures/turnserver.conf), its output accepted by `check-config`,
//! ignored lines reported with their numbers, and a server run with `--coturn-config` that
//! answers a TURN Allocate.
#[path = "support/child.rs"]
mod child;
#[path = "support/turn_udp.rs"]
mod turn_udp;

use std::process::{Command, Stdio};

use child::Ferroturn;
use turn_udp::TurnUdp;

const FIXTURE: &str = "tests/fixtures/turnserver.conf";

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ferroturn"))
        .args(args)
        .env_remove("FERROTURN_CONFIG")
        .stdin(Stdio::null())
        .output()
        .expect("run ferroturn");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn convert_output_passes_check_config_and_reports_ignored_lines() {
    let (code, toml_text, err) = run(&["convert", FIXTURE]);
    assert_eq!(code, 0, "{err}");
    let t: toml::Table = toml::from_str(&toml_text).expect("convert prints TOML");
    assert_eq!(t["realm"].as_str(), Some("turn.example.org"));
    assert_eq!(t["min-port"].as_integer(), Some(62750));
    assert_eq!(t["user"].as_array().map(Vec::len), Some(2));
    assert_eq!(t["denied-peer-ip"].as_array().map(Vec::len), Some(3));
    assert_eq!(t["log-level"].as_str(), Some("debug"), "verbose");
    assert_eq!(t["no-tls"].as_bool(), Some(true));
    assert_eq!(
        t["max-bps"].as_integer(),
        Some(3000000),
        "max-bps carries over"
    );

    // Every ignored line, with its number, in file order (numbers from the fixture).
    let ignored: Vec<&str> = err.lines().collect();
    let expect = [
        (24, "channel-lifetime"),
        (25, "permission-lifetime"),
        (27, "bps-capacity"),
        (31, "cipher-list"),
        (46, "pidfile"),
        (47, "proc-user"),
        (48, "proc-group"),
        (49, "alternate-server"),
        (51, "cli-password"),
        (52, "mobility"),
    ];
    assert_eq!(ignored.len(), expect.len(), "{err}");
    for (l, (n, opt)) in ignored.iter().zip(expect) {
        assert!(
            l.starts_with(&format!("line {n}: '{opt}' ignored: ")) && l.len() > 30,
            "{l}"
        );
    }
    let fixture = std::fs::read_to_string(FIXTURE).unwrap();
    for (n, opt) in expect {
        let line = fixture.lines().nth(n - 1).unwrap();
        assert!(
            line.starts_with(opt),
            "fixture line {n} is {line:?}, not {opt}"
        );
    }

    let dir = std::env::temp_dir().join(format!("ferroturn-convert-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("turnserver.toml");
    std::fs::write(&path, &toml_text).unwrap();
    let (code, out, err) = run(&["check-config", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "check-config rejects the converted file: {err}");
    assert!(
        out.contains("turn.example.org") && out.contains("62750-62799"),
        "{out}"
    );
    assert!(
        out.contains("bind 127.0.0.1, advertise 203.0.113.10"),
        "{out}"
    );
    assert!(!out.contains("alice-pass"), "no secrets in the summary");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn convert_reads_stdin_and_refuses_bad_values() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferroturn"))
        .arg("convert")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"realm=x\nmin-port=lots\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 2: 'min-port': \"lots\" is not a number"),
        "{err}"
    );
}

#[test]
fn coturn_config_runs_the_server() {
    // -L/-p from the helper override the fixture's listening-ip/port (a free loopback port).
    let srv = Ferroturn::start(
        &["--coturn-config", FIXTURE, "--log-level", "info"],
        "started",
    );
    let stderr = srv.stderr.lock().unwrap().join("\n");
    assert!(
        stderr.contains("line 27: 'bps-capacity' ignored: not converted"),
        "ignored lines reported at start: {stderr}"
    );
    let mut c = TurnUdp::new(srv.addr, "alice", "alice-pass", "turn.example.org");
    let relayed = c
        .allocate()
        .expect("Allocate with a user from the coturn file");
    assert_eq!(
        relayed.ip().to_string(),
        "203.0.113.10",
        "external-ip advertised"
    );
    assert!((62750..=62799).contains(&relayed.port()), "{relayed}");
    let mut wrong = TurnUdp::new(srv.addr, "alice", "nope", "turn.example.org");
    assert_eq!(wrong.allocate(), Err(401));
    assert_eq!(srv.stop(), Some(0));

    let (code, _, err) = run(&["--coturn-config", FIXTURE, "--config", "x.toml"]);
    assert_eq!(code, 2);
    assert!(err.contains("either --config or --coturn-config"), "{err}");
}
