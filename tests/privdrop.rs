//! proc-user / proc-group: after binding, the server runs as the given user with no
//! supplementary groups, and still relays (relay sockets are bound after the drop).
#[path = "support/child_server.rs"]
mod child_server;

use child_server::{Client, EchoPeer, Server};

fn ids(line: &str) -> Vec<u32> {
    line.split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap())
        .collect()
}

#[test]
fn proc_user_drops_root_after_binding() {
    // SAFETY: no arguments.
    if unsafe { libc::geteuid() } != 0 {
        // Not root: the drop must fail loudly (exit 2), not be skipped silently.
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferroturn"))
            .args([
                "--listening-ip",
                "127.0.0.1",
                "--listening-port",
                &child_server::free_port().to_string(),
                "--relay-ip",
                "127.0.0.1",
                "--min-port",
                "63900",
                "--max-port",
                "63999",
                "--user",
                "a:b",
                "--proc-user",
                "nobody",
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("privilege drop failed"), "{err}");
        return;
    }
    let srv = Server::start(29, &["--proc-user", "nobody", "--proc-group", "nogroup"]);
    let uid = ids(&srv.status_line("Uid:"));
    let gid = ids(&srv.status_line("Gid:"));
    let groups = srv.status_line("Groups:");
    println!("after drop: Uid {uid:?} Gid {gid:?} {groups:?}");
    assert_eq!(uid, vec![65534; 4], "real, effective, saved, fs uid");
    assert_eq!(gid, vec![65534; 4]);
    assert_eq!(groups.trim(), "Groups:");
    // Still relays: the relay socket of this allocation is bound as nobody.
    let peer = EchoPeer::start("127.0.0.9");
    let mut c = Client::new("127.0.0.1", srv.addr);
    c.allocate(peer.addr);
    let r = c.relay_paced(20, 200);
    assert_eq!((r.sent, r.echoed), (20, 20));
    c.delete();
}

#[test]
fn unknown_proc_user_is_exit_2() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferroturn"))
        .args([
            "--listening-ip",
            "127.0.0.1",
            "--listening-port",
            &child_server::free_port().to_string(),
            "--relay-ip",
            "127.0.0.1",
            "--min-port",
            "63900",
            "--max-port",
            "63999",
            "--user",
            "a:b",
            "--proc-user",
            "no-such-user-ferroturn",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no such user"), "{err}");
}
