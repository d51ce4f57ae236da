//! The binary as an operator meets it: exit codes and one-line errors for bad configuration and
//! a port in use, `check-config`, `credentials`, and the shipped example config.
use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ferroturn"))
}

/// Run to completion (bounded): (exit code, stdout, stderr).
fn run(cmd: &mut Command) -> (i32, String, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ferroturn");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(_status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            return (
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("ferroturn did not exit within 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn example_config_checks_out() {
    let (code, out, _) = run(bin().args(["check-config", "--config", "turnserver.toml.example"]));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("realm:") && out.contains("example.org"));
    assert!(!out.contains("demo-password"), "no secrets in the summary");
}

#[test]
fn bad_config_is_one_line_and_exit_2() {
    for (args, needle) in [
        (
            vec!["--config", "/nonexistent/ferroturn.toml"],
            "cannot read",
        ),
        (
            vec!["--config", "turnserver.toml.example", "--min-port", "70000"],
            "'--min-port'",
        ),
        (
            vec!["--config", "turnserver.toml.example", "--user", "nocolon"],
            "user",
        ),
    ] {
        let (code, _, err) = run(bin().args(&args));
        assert_eq!(code, 2, "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn unknown_key_in_file_names_it() {
    let dir = std::env::temp_dir().join(format!("ferroturn-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("bad.toml");
    std::fs::write(
        &f,
        "realm = \"x\"\nuser = [\"a:b\"]\nlistening_port = 3478\n",
    )
    .unwrap();
    let (code, _, err) = run(bin().args(["--config", f.to_str().unwrap()]));
    assert_eq!(code, 2);
    assert!(
        err.contains("listening_port") && err.contains("listening-port"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn port_in_use_is_exit_2() {
    let holder = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port().to_string();
    let (code, _, err) = run(bin().args([
        "--listening-ip",
        "127.0.0.1",
        "--listening-port",
        &port,
        "--no-tcp",
        "--relay-ip",
        "127.0.0.1",
        "--user",
        "a:b",
        "--min-port",
        "62000",
        "--max-port",
        "62100",
    ]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("already in use"), "{err}");
    drop(holder);
}

#[test]
fn credentials_match_the_rest_api_recipe() {
    let (code, out, err) = run(bin().args([
        "credentials",
        "--secret",
        "s3cret",
        "--user",
        "alice",
        "--ttl",
        "3600",
        "--uri",
        "turn:127.0.0.1:3478?transport=udp",
    ]));
    assert_eq!(code, 0, "{err}");
    let v = out.trim();
    let user = v
        .split("\"username\":\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let cred = v
        .split("\"credential\":\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let (expiry, id) = user.split_once(':').unwrap();
    assert_eq!(id, "alice");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expiry: u64 = expiry.parse().unwrap();
    assert!((now + 3590..=now + 3610).contains(&expiry));
    assert_eq!(cred, ferroturn::engine::auth::rest_password("s3cret", user));
    assert!(v.contains("\"urls\":[\"turn:127.0.0.1:3478?transport=udp\"]"));
}

#[test]
fn systemd_notify_ready_status_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let dir = std::env::temp_dir().join(format!("ferroturn-sdn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&path);
    let rx = UnixDatagram::bind(&path).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let mut child = bin()
        .args([
            "--listening-ip",
            "127.0.0.1",
            "--listening-port",
            &port,
            "--no-tcp",
            "--relay-ip",
            "127.0.0.1",
            "--user",
            "a:b",
            "--min-port",
            "62200",
            "--max-port",
            "62300",
            "--log-level",
            "warn",
        ])
        .env("NOTIFY_SOCKET", &path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut b = [0u8; 256];
    let n = rx.recv(&mut b).expect("READY=1 within 10 s");
    let first = String::from_utf8_lossy(&b[..n]).into_owned();
    // SIGTERM → STOPPING=1 (after any STATUS= lines).
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut seen = vec![first.clone()];
    while let Ok(n) = rx.recv(&mut b) {
        let m = String::from_utf8_lossy(&b[..n]).into_owned();
        let stop = m.contains("STOPPING=1");
        seen.push(m);
        if stop {
            break;
        }
    }
    let status = child.wait().unwrap();
    assert!(first.starts_with("READY=1"), "{seen:?}");
    assert!(seen.iter().any(|m| m.contains("STOPPING=1")), "{seen:?}");
    assert!(status.success());
    let _ = std::fs::remove_dir_all(&dir);
}
