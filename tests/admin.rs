//! The admin HTTP/JSON API on a real listener: bearer-token auth (401 without it or with a
//! wrong one), session listing with the client's 5-tuple and byte counts from real traffic,
//! kill by id and by user (the client then gets 437 on Refresh and the relay stops), the
//! configuration without secrets, the log level callback, drain.
mod common;
#[path = "support/ops_client.rs"]
mod ops_client;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{start_server, ServerOpts, PASS, REALM, USER};
use ferroturn::engine::UserKey;
use ops_client::{echo_peer, http, start_ops, Answer, TurnUdp, TOKEN};

/// Relay ports: block 15, split in halves so that the two tests that allocate never share a
/// port; the tests that allocate nothing use the first ten ports of block 14.
fn with_bob(half: u16) -> ServerOpts {
    let mut o = ServerOpts::block(15).tweak(|e| {
        e.users
            .insert("bob".into(), UserKey::Password("bob-pass".into()));
    });
    o.min_port += 50 * half;
    o.max_port = o.min_port + 49;
    o
}

fn sessions(admin: SocketAddr) -> Vec<serde_json::Value> {
    let r = http(admin, "GET", "/api/v1/sessions", Some(TOKEN), "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("application/json"));
    r.json()["sessions"].as_array().unwrap().clone()
}

#[test]
fn admin_api_requires_the_bearer_token() {
    let srv = start_server(ServerOpts::block(14).ports(10));
    let (_rt, ops) = start_ops(srv.server(), &[], Arc::new(|_: &str| Ok(())));
    let a = ops.admin_addr().unwrap();
    for (method, path) in [
        ("GET", "/api/v1/sessions"),
        ("GET", "/api/v1/config"),
        ("POST", "/api/v1/drain"),
        ("DELETE", "/api/v1/sessions/0000000000000001"),
        ("POST", "/api/v1/sessions/kill"),
        ("PUT", "/api/v1/log-level"),
        ("GET", "/metrics"),
    ] {
        for token in [
            None,
            Some("wrong"),
            Some(&TOKEN[..TOKEN.len() - 1]),
            Some(""),
        ] {
            let r = http(a, method, path, token, "");
            assert_eq!(r.status, 401, "{method} {path} with {token:?}");
            assert!(r.header("www-authenticate").is_some());
        }
    }
    // Basic auth with the token as password is not a bearer token either.
    let raw = format!("GET /api/v1/sessions HTTP/1.1\r\nAuthorization: Basic {TOKEN}\r\n\r\n");
    assert_eq!(ops_client::http_raw(a, raw.as_bytes()).status, 401);
    assert!(
        !srv.server().handle().is_draining(),
        "no unauthorized drain"
    );
    assert_eq!(
        http(a, "GET", "/api/v1/sessions", Some(TOKEN), "").status,
        200
    );
    assert_eq!(http(a, "GET", "/api/v1/nope", Some(TOKEN), "").status, 404);
    // RFC 9110 §11.1: the scheme is case-insensitive; odd bytes are no token and no panic.
    let raw = format!("GET /api/v1/sessions HTTP/1.1\r\nAuthorization: bEARER {TOKEN}\r\n\r\n");
    assert_eq!(ops_client::http_raw(a, raw.as_bytes()).status, 200);
    for odd in ["bearé x", "bearerébc", "é", "Bearer", "Bearer  "] {
        let raw = format!("GET /api/v1/sessions HTTP/1.1\r\nAuthorization: {odd}\r\n\r\n");
        assert_eq!(ops_client::http_raw(a, raw.as_bytes()).status, 401, "{odd}");
    }
    // The metrics listener has no admin API.
    let m = ops.metrics_addr().unwrap();
    assert_eq!(
        http(m, "GET", "/api/v1/sessions", Some(TOKEN), "").status,
        404
    );
}

#[test]
fn list_sessions_then_kill_by_id() {
    let srv = start_server(with_bob(0));
    let (_rt, ops) = start_ops(srv.server(), &[], Arc::new(|_: &str| Ok(())));
    let a = ops.admin_addr().unwrap();
    assert!(sessions(a).is_empty());

    let (peer, seen) = echo_peer();
    let mut c = TurnUdp::new(srv.addr, USER, PASS, REALM);
    let relayed = c.allocate_ok();
    c.permit(peer);
    assert_eq!(c.echo_round(peer, 10, 50), 10);

    let list = sessions(a);
    assert_eq!(list.len(), 1, "{list:?}");
    let s = &list[0];
    assert_eq!(s["user"], USER);
    assert_eq!(s["transport"], "udp");
    assert_eq!(s["client"], c.local().to_string());
    assert_eq!(s["server"], srv.addr.to_string());
    assert_eq!(s["relay"], serde_json::json!([relayed.to_string()]));
    assert_eq!(s["to_peer_packets"], 10);
    assert_eq!(s["to_peer_bytes"], 500);
    assert_eq!(s["to_client_packets"], 10);
    assert_eq!(s["to_client_bytes"], 500);
    assert_eq!(s["permissions"], 1);
    assert_eq!(s["channels"], 0);
    let id = s["id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 16);

    assert_eq!(
        http(a, "DELETE", "/api/v1/sessions/zz", Some(TOKEN), "").status,
        400
    );
    assert_eq!(
        http(
            a,
            "DELETE",
            "/api/v1/sessions/0123456789abcdef",
            Some(TOKEN),
            ""
        )
        .status,
        if id == "0123456789abcdef" { 200 } else { 404 }
    );
    let r = http(
        a,
        "DELETE",
        &format!("/api/v1/sessions/{id}"),
        Some(TOKEN),
        "",
    );
    assert_eq!((r.status, r.json()["killed"].as_u64()), (200, Some(1)));
    assert!(sessions(a).is_empty());

    // The relay stops: nothing reaches the peer, the relay port is free again, and the
    // client learns it on its next Refresh (RFC 8656 §7.3: 437).
    let before = seen.load(Ordering::SeqCst);
    c.send_indication(peer, b"after the kill");
    assert_eq!(c.recv_data(Duration::from_millis(300)), None);
    assert_eq!(seen.load(Ordering::SeqCst), before);
    assert!(UdpSocket::bind(relayed).is_ok(), "relay socket closed");
    assert_eq!(c.refresh(600), Answer::Err(437, None));
    assert_eq!(
        http(
            a,
            "DELETE",
            &format!("/api/v1/sessions/{id}"),
            Some(TOKEN),
            ""
        )
        .status,
        404
    );
    // The client can start over.
    c.allocate_ok();
}

#[test]
fn kill_by_user_revokes_every_session_of_that_user() {
    let srv = start_server(with_bob(1));
    let (_rt, ops) = start_ops(srv.server(), &[], Arc::new(|_: &str| Ok(())));
    let a = ops.admin_addr().unwrap();
    let (peer, _) = echo_peer();
    let mut alice1 = TurnUdp::new(srv.addr, USER, PASS, REALM);
    let mut alice2 = TurnUdp::new(srv.addr, USER, PASS, REALM);
    let mut bob = TurnUdp::new(srv.addr, "bob", "bob-pass", REALM);
    alice1.allocate_ok();
    alice2.allocate_ok();
    bob.allocate_ok();
    bob.permit(peer);
    assert_eq!(sessions(a).len(), 3);

    assert_eq!(
        http(a, "POST", "/api/v1/sessions/kill", Some(TOKEN), "{}").status,
        400
    );
    assert_eq!(
        http(a, "POST", "/api/v1/sessions/kill", Some(TOKEN), "not json").status,
        400
    );
    let r = http(
        a,
        "POST",
        "/api/v1/sessions/kill",
        Some(TOKEN),
        &format!("{{\"user\":\"{USER}\"}}"),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), serde_json::json!({"user": USER, "killed": 2}));
    let left = sessions(a);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["user"], "bob");
    assert_eq!(alice1.refresh(600), Answer::Err(437, None));
    assert_eq!(alice2.refresh(600), Answer::Err(437, None));
    assert!(matches!(bob.refresh(600), Answer::Ok(_)));
    assert_eq!(bob.echo_round(peer, 3, 20), 3, "bob still relays");
}

#[test]
fn config_log_level_and_drain() {
    let srv = start_server(ServerOpts::block(14).ports(10));
    let levels = Arc::new(Mutex::new(Vec::<String>::new()));
    let l = levels.clone();
    let (_rt, ops) = start_ops(
        srv.server(),
        &[
            "--use-auth-secret",
            "--static-auth-secret",
            "rest-secret-xyz",
        ],
        Arc::new(move |s: &str| {
            if s.contains('!') {
                return Err(format!("bad filter {s:?}"));
            }
            l.lock().unwrap().push(s.to_owned());
            Ok(())
        }),
    );
    let a = ops.admin_addr().unwrap();

    let r = http(a, "GET", "/api/v1/config", Some(TOKEN), "");
    assert_eq!(r.status, 200);
    for secret in [PASS, TOKEN, "rest-secret-xyz"] {
        assert!(!r.body.contains(secret), "{secret} leaked: {}", r.body);
    }
    let c = r.json();
    assert_eq!(c["realm"], REALM);
    assert_eq!(c["users"], serde_json::json!([USER]));
    assert_eq!(c["static_auth_secrets"], 1);
    assert_eq!(c["admin_token"], "<redacted>");

    let r = http(
        a,
        "PUT",
        "/api/v1/log-level",
        Some(TOKEN),
        "debug,ferroturn::engine=trace",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(*levels.lock().unwrap(), ["debug,ferroturn::engine=trace"]);
    let c = http(a, "GET", "/api/v1/config", Some(TOKEN), "").json();
    assert_eq!(c["log_level"], "debug,ferroturn::engine=trace");
    assert_eq!(
        http(a, "PUT", "/api/v1/log-level", Some(TOKEN), "!!").status,
        400
    );
    assert_eq!(
        http(a, "PUT", "/api/v1/log-level", Some(TOKEN), "").status,
        400
    );
    assert_eq!(levels.lock().unwrap().len(), 1);

    let r = http(a, "POST", "/api/v1/drain", Some(TOKEN), "");
    assert_eq!(r.status, 202);
    assert_eq!(r.json()["already"], false);
    assert!(srv.server().handle().is_draining());
    assert_eq!(http(a, "GET", "/ready", None, "").status, 503);
    let r = http(a, "POST", "/api/v1/drain", Some(TOKEN), "");
    assert_eq!(r.json()["already"], true);
    // New allocations are refused (no alternate-server here: 508).
    let mut c = TurnUdp::new(srv.addr, USER, PASS, REALM);
    assert_eq!(c.allocate(), Answer::Err(508, None));
}

/// `static-auth-secret` reloads on SIGHUP; the test page's credentials must be signed with the
/// reloaded secret (the engine checks that one), not the one the server started with.
#[test]
fn test_page_credentials_follow_a_reloaded_secret() {
    use ferroturn::engine::auth::rest_password;
    let srv = start_server(ServerOpts::block(14).ports(10));
    let secret_args = |s: &'static str| ["--use-auth-secret", "--static-auth-secret", s];
    let mut args = vec!["--test-page"];
    args.extend(secret_args("old-secret"));
    let (_rt, ops) = start_ops(srv.server(), &args, Arc::new(|_: &str| Ok(())));
    let a = ops.admin_addr().unwrap();
    let minted = || {
        let r = http(a, "GET", "/api/v1/test-credentials", Some(TOKEN), "");
        assert_eq!(r.status, 200, "{}", r.body);
        let j = r.json();
        (
            j["username"].as_str().unwrap().to_owned(),
            j["credential"].as_str().unwrap().to_owned(),
        )
    };
    let (user, cred) = minted();
    assert_eq!(cred, rest_password("old-secret", &user));
    // What main.rs does on SIGHUP with a file whose secret was rotated.
    let mut args = vec!["--test-page"];
    args.extend(secret_args("new-secret"));
    let cfg = ops_client::ops_config(&args);
    ops.set_config(&cfg);
    let (user, cred) = minted();
    assert_eq!(cred, rest_password("new-secret", &user));
}
