//! The operator's HTTP side: the Prometheus listener (`/metrics`, `/live`, `/ready`), the
//! admin HTTP/JSON API (sessions, kill, config, drain, log level) and the connectivity test
//! page. Runs on the control thread's tokio runtime; talks to the shards only through
//! [`Control`] messages (with a reply channel) and the stats they publish once a second.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mio::Waker;
use serde_json::json;
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use super::config::Config;
use super::http::{self, Request, Response};
use super::metrics;
use super::shard::{Control, ShardStats};
use crate::engine::ops::{transport_label, SessionId, SessionInfo};
use crate::engine::shared::Shared;

/// How long the admin API waits for a shard's answer.
const SHARD_REPLY: Duration = Duration::from_secs(2);
/// Lifetime of the TURN REST credentials minted for the test page.
pub const TEST_PAGE_TTL: u64 = 600;
/// Test-page credentials minted per minute at most (on top of the token).
const TEST_CREDENTIALS_PER_MINUTE: usize = 30;

/// Operations settings from the configuration.
#[derive(Clone, Debug, Default)]
pub struct OpsConfig {
    /// Metrics listener address (`prometheus` on); `None` = off.
    pub prometheus: Option<SocketAddr>,
    /// Admin API; `None` = off.
    pub admin: Option<AdminConfig>,
    /// `drain-timeout`.
    pub drain_timeout: Duration,
    /// `test-page`: serve /test on the admin listener.
    pub test_page: bool,
    /// `test-page-urls`: TURN URLs the page tests; empty = derived from the listeners.
    pub test_page_urls: Vec<String>,
    /// `prometheus-username-labels`: per-user series (high cardinality; off by default).
    pub username_labels: bool,
}

#[derive(Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub token: String,
}

/// Never prints the token.
impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("listen", &self.listen)
            .field("token", &"<hidden>")
            .finish()
    }
}

/// The control side of one shard.
#[derive(Clone)]
pub struct ShardLink {
    pub control: mpsc::Sender<Control>,
    pub waker: Arc<Waker>,
    pub stats: Arc<Mutex<ShardStats>>,
}

impl ShardLink {
    fn send(&self, c: Control) -> bool {
        let ok = self.control.send(c).is_ok();
        if ok {
            let _ = self.waker.wake();
        }
        ok
    }
}

/// A cloneable view of a running [`super::Server`] for the HTTP listeners.
#[derive(Clone)]
pub struct ServerHandle {
    pub shards: Vec<ShardLink>,
    pub shared: Arc<Shared>,
    pub draining: Arc<AtomicBool>,
}

impl ServerHandle {
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Start draining (idempotent). Returns false if it was already draining.
    pub fn drain(&self) -> bool {
        if self.draining.swap(true, Ordering::Relaxed) {
            return false;
        }
        for s in &self.shards {
            s.send(Control::Drain(true));
        }
        true
    }

    pub fn allocation_count(&self) -> u32 {
        self.shared.total_allocations()
    }

    pub fn stats(&self) -> Vec<ShardStats> {
        self.shards
            .iter()
            .map(|s| s.stats.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect()
    }

    /// Every shard's sessions (a shard that does not answer in time is left out). A TCP
    /// allocation's bytes include its RFC 6062 data connections, ended and live; the live ones
    /// may be spliced on any shard, so they are added here. (The shards answer one after the
    /// other: a connection ending in between can be missed or counted twice in one listing.)
    pub async fn sessions(&self) -> Vec<SessionInfo> {
        let mut all = Vec::new();
        let mut live = Vec::new();
        for s in &self.shards {
            let (tx, rx) = tokio::sync::oneshot::channel();
            if s.send(Control::Sessions(tx)) {
                if let Ok(Ok(r)) = tokio::time::timeout(SHARD_REPLY, rx).await {
                    all.extend(r.sessions);
                    live.extend(r.live_splices);
                }
            }
        }
        if !live.is_empty() {
            let by_id: HashMap<u64, usize> =
                all.iter().enumerate().map(|(i, s)| (s.id, i)).collect();
            for (session, to_peer, to_client) in live {
                if let Some(&i) = by_id.get(&session) {
                    all[i].to_peer_bytes += to_peer;
                    all[i].to_client_bytes += to_client;
                }
            }
        }
        all.sort_by_key(|s| std::cmp::Reverse(s.age));
        all
    }

    /// Delete session `id` wherever it is.
    pub async fn kill_session(&self, id: u64) -> bool {
        let mut found = false;
        for s in &self.shards {
            let (tx, rx) = tokio::sync::oneshot::channel();
            if s.send(Control::Kill(id, tx)) {
                found |= matches!(tokio::time::timeout(SHARD_REPLY, rx).await, Ok(Ok(true)));
            }
        }
        found
    }

    /// Delete every session of `user`; returns how many.
    pub async fn kill_user(&self, user: &str) -> usize {
        let mut n = 0;
        for s in &self.shards {
            let (tx, rx) = tokio::sync::oneshot::channel();
            if s.send(Control::KillUser(user.to_owned(), tx)) {
                if let Ok(Ok(k)) = tokio::time::timeout(SHARD_REPLY, rx).await {
                    n += k;
                }
            }
        }
        n
    }
}

/// Sets the log filter (wired by main.rs to a `tracing_subscriber::reload` handle).
pub type LogLevelSetter = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// What the HTTP handlers share.
struct State {
    server: ServerHandle,
    token_hash: Option<[u8; 32]>,
    config: Mutex<serde_json::Value>,
    log_level: LogLevelSetter,
    test_page: Option<TestPage>,
    username_labels: bool,
    /// Test-credential mints in the last minute (rate limit).
    minted: Mutex<Vec<Instant>>,
}

struct TestPage {
    /// The first `static-auth-secret`, as of the last reload (`None`: no secret any more).
    secret: Mutex<Option<String>>,
    urls: Vec<String>,
}

/// The bound HTTP listeners; [`Ops::serve`] starts them on the current tokio runtime.
pub struct Ops {
    metrics: Option<std::net::TcpListener>,
    admin: Option<std::net::TcpListener>,
    /// Bound addresses (port 0 resolved).
    addrs: (Option<SocketAddr>, Option<SocketAddr>),
    state: Arc<State>,
}

impl Ops {
    /// Bind the configured listeners now, so a bad address is a startup error.
    pub fn bind(
        cfg: &Config,
        server: ServerHandle,
        udp: &[SocketAddr],
        tcp: &[SocketAddr],
        tls: &[SocketAddr],
        log_level: LogLevelSetter,
    ) -> Result<Ops, String> {
        if let Some(a) = cfg.ops.prometheus.filter(|a| !a.ip().is_loopback()) {
            // The metrics listener has no authentication: per-user series name the users.
            if cfg.ops.username_labels {
                warn!(
                    event = "metrics_exposed",
                    listen = %a,
                    "prometheus-username-labels is on and the metrics listener is not on loopback: \
                     anyone who can reach {a} can read the user names; firewall it or use a \
                     loopback prometheus-address"
                );
            }
        }
        let metrics = match cfg.ops.prometheus {
            Some(a) => Some(
                http::bind(a)
                    .map_err(|e| format!("key 'prometheus-port': cannot listen on {a}: {e}"))?,
            ),
            None => None,
        };
        let admin =
            match &cfg.ops.admin {
                Some(a) => Some(http::bind(a.listen).map_err(|e| {
                    format!("key 'admin-listen': cannot listen on {}: {e}", a.listen)
                })?),
                None => None,
            };
        let test_page = if cfg.ops.test_page {
            let urls = if cfg.ops.test_page_urls.is_empty() {
                derived_urls(udp, tcp, tls)
            } else {
                cfg.ops.test_page_urls.clone()
            };
            cfg.engine.auth_secrets.first().map(|s| TestPage {
                secret: Mutex::new(Some(s.clone())),
                urls,
            })
        } else {
            None
        };
        let addrs = (
            metrics.as_ref().and_then(|l| l.local_addr().ok()),
            admin.as_ref().and_then(|l| l.local_addr().ok()),
        );
        Ok(Ops {
            metrics,
            admin,
            addrs,
            state: Arc::new(State {
                server,
                token_hash: cfg.ops.admin.as_ref().map(|a| sha256(a.token.as_bytes())),
                config: Mutex::new(config_json(cfg)),
                log_level,
                test_page,
                username_labels: cfg.ops.username_labels,
                minted: Mutex::new(Vec::new()),
            }),
        })
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.addrs.0
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.addrs.1
    }

    /// After a reload: what `GET /api/v1/config` shows. SIGHUP applies the file's
    /// `log-level` to the live filter too (main.rs), so the reloaded value is the live one.
    pub fn set_config(&self, cfg: &Config) {
        let mut c = self.state.config.lock().unwrap_or_else(|e| e.into_inner());
        *c = config_json(cfg);
        // `static-auth-secret` reloads: the test page signs with the secret the engine checks.
        if let Some(tp) = &self.state.test_page {
            *tp.secret.lock().unwrap_or_else(|e| e.into_inner()) =
                cfg.engine.auth_secrets.first().cloned();
        }
    }

    /// Spawn the listeners on the current tokio runtime.
    pub fn serve(&mut self) -> std::io::Result<()> {
        if let Some(l) = self.metrics.take() {
            let l = tokio::net::TcpListener::from_std(l)?;
            let st = self.state.clone();
            info!(event = "metrics_listening", addr = %l.local_addr()?, "metrics listener up");
            tokio::spawn(http::serve(l, "metrics", move |req| {
                let st = st.clone();
                async move { metrics_route(&st, req).await }
            }));
        }
        if let Some(l) = self.admin.take() {
            let l = tokio::net::TcpListener::from_std(l)?;
            let st = self.state.clone();
            info!(event = "admin_listening", addr = %l.local_addr()?, "admin API listener up");
            tokio::spawn(http::serve(l, "admin", move |req| {
                let st = st.clone();
                async move { admin_route(&st, req).await }
            }));
        }
        Ok(())
    }
}

fn sha256(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

/// Constant-time comparison of the presented token with the configured one: both are hashed
/// first (so neither the length nor a prefix leaks through timing), then compared without an
/// early exit.
fn token_ok(st: &State, req: &Request) -> bool {
    let Some(want) = st.token_hash else {
        return false;
    };
    // RFC 9110 §11.1: the scheme name is case-insensitive.
    let Some(given) = req
        .header("authorization")
        .filter(|v| {
            v.get(..7)
                .is_some_and(|p| p.eq_ignore_ascii_case("bearer "))
        })
        .and_then(|v| v.get(7..))
    else {
        return false;
    };
    let got = sha256(given.trim().as_bytes());
    got.iter()
        .zip(want.iter())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

fn health(st: &State, req: &Request) -> Option<Response> {
    match req.path.as_str() {
        "/live" => Some(Response::text(200, "live")),
        // Ready = listening (we are: the listeners are bound before this one) and not draining.
        "/ready" if st.server.is_draining() => Some(Response::text(503, "draining")),
        "/ready" => Some(Response::text(200, "ready")),
        _ => None,
    }
}

async fn metrics_response(st: &State) -> Response {
    let mut body = metrics::render(&st.server.stats(), st.server.is_draining());
    if st.username_labels {
        metrics::render_users(&mut body, &st.server.sessions().await);
    }
    Response::new(200, metrics::CONTENT_TYPE, body)
}

async fn metrics_route(st: &State, req: Request) -> Response {
    if req.method != "GET" && req.method != "HEAD" {
        return Response::text(405, "GET only").with_header("Allow", "GET, HEAD");
    }
    if let Some(r) = health(st, &req) {
        return r;
    }
    match req.path.as_str() {
        "/metrics" => metrics_response(st).await,
        _ => Response::text(404, "not found"),
    }
}

fn unauthorized() -> Response {
    Response::json(401, &json!({"error": "missing or wrong bearer token"}))
        .with_header("WWW-Authenticate", "Bearer realm=\"ferroturn-admin\"")
}

async fn admin_route(st: &State, req: Request) -> Response {
    let m = req.method.as_str();
    if m == "GET" || m == "HEAD" {
        if let Some(r) = health(st, &req) {
            return r;
        }
        if req.path == "/test" || req.path == "/test/" {
            return match &st.test_page {
                Some(_) => Response::new(200, "text/html; charset=utf-8", TEST_PAGE_HTML)
                    .with_header(
                        "Content-Security-Policy",
                        "default-src 'none'; script-src 'unsafe-inline'; style-src \
                         'unsafe-inline'; connect-src 'self'",
                    )
                    .with_header("Referrer-Policy", "no-referrer"),
                None => Response::text(404, "test page disabled (test-page = false)"),
            };
        }
    }
    if !token_ok(st, &req) {
        return unauthorized();
    }
    let path = req.path.as_str();
    match (m, path) {
        ("GET", "/metrics") => metrics_response(st).await,
        ("GET", "/api/v1/sessions") => {
            let list: Vec<serde_json::Value> = st
                .server
                .sessions()
                .await
                .iter()
                .map(session_json)
                .collect();
            Response::json(200, &json!({"sessions": list}))
        }
        ("DELETE", p) if p.starts_with("/api/v1/sessions/") => {
            let id = &p["/api/v1/sessions/".len()..];
            let Ok(id) = u64::from_str_radix(id, 16) else {
                return Response::json(400, &json!({"error": "session id: 16 hex digits"}));
            };
            if st.server.kill_session(id).await {
                info!(event = "admin_kill", session = %SessionId(id), peer = %req.peer, "session killed by the admin API");
                Response::json(200, &json!({"killed": 1}))
            } else {
                Response::json(404, &json!({"error": "no such session"}))
            }
        }
        ("POST", "/api/v1/sessions/kill") => {
            let user = serde_json::from_slice::<serde_json::Value>(&req.body)
                .ok()
                .and_then(|v| v.get("user").and_then(|u| u.as_str()).map(str::to_owned));
            let Some(user) = user.filter(|u| !u.is_empty()) else {
                return Response::json(400, &json!({"error": "body: {\"user\": \"name\"}"}));
            };
            let n = st.server.kill_user(&user).await;
            info!(event = "admin_kill_user", user = %user, killed = n, peer = %req.peer, "sessions of a user killed by the admin API");
            Response::json(200, &json!({"user": user, "killed": n}))
        }
        ("GET", "/api/v1/config") => {
            let c = st.config.lock().unwrap_or_else(|e| e.into_inner()).clone();
            Response::json(200, &c)
        }
        ("POST", "/api/v1/drain") => {
            let started = st.server.drain();
            if started {
                info!(event = "drain_requested", peer = %req.peer, "drain requested by the admin API");
            }
            Response::json(
                202,
                &json!({"draining": true, "already": !started,
                        "allocations": st.server.allocation_count()}),
            )
        }
        ("PUT", "/api/v1/log-level") => {
            let Ok(filter) = std::str::from_utf8(&req.body) else {
                return Response::json(400, &json!({"error": "body: a filter string"}));
            };
            let filter = filter.trim();
            if filter.is_empty() {
                return Response::json(400, &json!({"error": "body: a filter string"}));
            }
            match (st.log_level)(filter) {
                Ok(()) => {
                    info!(event = "log_level_set", filter, peer = %req.peer, "log level changed by the admin API");
                    st.config.lock().unwrap_or_else(|e| e.into_inner())["log_level"] =
                        json!(filter);
                    Response::json(200, &json!({"log_level": filter}))
                }
                Err(e) => Response::json(400, &json!({"error": e})),
            }
        }
        ("GET", "/api/v1/test-credentials") => test_credentials(st),
        (_, p) if p.starts_with("/api/") => {
            Response::json(404, &json!({"error": "no such endpoint"}))
        }
        _ => Response::text(404, "not found"),
    }
}

/// Short-lived TURN REST credentials for the test page. Behind the admin token (the page asks
/// the operator for it) and rate-limited, so neither an outsider nor a leaked token can mint
/// an unbounded supply of relay credentials.
fn test_credentials(st: &State) -> Response {
    let Some(tp) = &st.test_page else {
        return Response::json(404, &json!({"error": "test page disabled"}));
    };
    {
        let mut minted = st.minted.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        minted.retain(|t| now.duration_since(*t) < Duration::from_secs(60));
        if minted.len() >= TEST_CREDENTIALS_PER_MINUTE {
            return Response::json(429, &json!({"error": "rate limited"}))
                .with_header("Retry-After", "60");
        }
        minted.push(now);
    }
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let username = format!("{}:ferroturn-test-page", unix + TEST_PAGE_TTL);
    let Some(secret) = tp.secret.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
        return Response::json(
            404,
            &json!({"error": "no static-auth-secret since the last reload"}),
        );
    };
    let credential = crate::engine::auth::rest_password(&secret, &username);
    Response::json(
        200,
        &json!({"urls": tp.urls, "username": username, "credential": credential,
                "ttl": TEST_PAGE_TTL}),
    )
}

/// turn:udp, turn:tcp and turns: URLs for the listeners (wildcards can not be dialled: the
/// operator sets `test-page-urls` then).
fn derived_urls(udp: &[SocketAddr], tcp: &[SocketAddr], tls: &[SocketAddr]) -> Vec<String> {
    let host = |a: &SocketAddr| match a {
        SocketAddr::V4(v) => v.ip().to_string(),
        SocketAddr::V6(v) => format!("[{}]", v.ip()),
    };
    let mut v = Vec::new();
    for a in udp.iter().filter(|a| !a.ip().is_unspecified()) {
        v.push(format!("turn:{}:{}?transport=udp", host(a), a.port()));
    }
    for a in tcp.iter().filter(|a| !a.ip().is_unspecified()) {
        v.push(format!("turn:{}:{}?transport=tcp", host(a), a.port()));
    }
    for a in tls.iter().filter(|a| !a.ip().is_unspecified()) {
        v.push(format!("turns:{}:{}?transport=tcp", host(a), a.port()));
    }
    v
}

fn session_json(s: &SessionInfo) -> serde_json::Value {
    json!({
        "id": SessionId(s.id).to_string(),
        "user": s.user,
        "transport": transport_label(s.transport),
        "client": s.client.to_string(),
        "server": s.server.to_string(),
        "relay": s.relays.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "relay_transport": if s.tcp_relay { "tcp" } else { "udp" },
        "age_s": s.age.as_secs(),
        "to_peer_packets": s.to_peer_packets,
        "to_peer_bytes": s.to_peer_bytes,
        "to_client_packets": s.to_client_packets,
        "to_client_bytes": s.to_client_bytes,
        "permissions": s.permissions,
        "channels": s.channels,
    })
}

/// The running configuration without secrets: user names but no passwords, the number of REST
/// secrets, no admin token.
pub fn config_json(c: &Config) -> serde_json::Value {
    let e = &c.engine;
    let addrs = |v: &[SocketAddr]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
    let mut users: Vec<&String> = e.users.keys().collect();
    users.sort();
    json!({
        "source": c.source.as_ref().map(|p| p.display().to_string()),
        "listen_udp": addrs(&c.listen),
        "listen_tcp": addrs(&c.tcp_listen),
        "listen_tls": addrs(&c.tls_listen),
        "realm": e.realm,
        "users": users,
        "user_passwords": "<redacted>",
        "static_auth_secrets": e.auth_secrets.len(),
        "relay_ip_v4": e.relay_ip_v4.map(|i| i.to_string()),
        "relay_ip_v6": e.relay_ip_v6.map(|i| i.to_string()),
        "external_ip_v4": e.external_ip_v4.map(|i| i.to_string()),
        "external_ip_v6": e.external_ip_v6.map(|i| i.to_string()),
        "min_port": e.min_port,
        "max_port": e.max_port,
        "default_allocate_lifetime": e.default_lifetime.as_secs(),
        "max_allocate_lifetime": e.max_lifetime.as_secs(),
        "stale_nonce": e.nonce_lifetime.as_secs(),
        "user_quota": e.user_quota,
        "total_quota": e.total_quota,
        "alternate_server": addrs(&e.alternate_servers),
        "relay_threads": c.relay_threads,
        "log_level": c.log_level,
        "prometheus": c.ops.prometheus.map(|a| a.to_string()),
        "admin_listen": c.ops.admin.as_ref().map(|a| a.listen.to_string()),
        "admin_token": c.ops.admin.as_ref().map(|_| "<redacted>"),
        "drain_timeout": c.ops.drain_timeout.as_secs(),
        "test_page": c.ops.test_page,
    })
}

/// Log a warning when a drain is asked for twice (for the control loop).
pub fn log_drain_start(reason: &str, allocations: u32, timeout: Duration) {
    warn!(
        event = "drain_started",
        trigger = reason,
        allocations,
        timeout_s = timeout.as_secs(),
        "draining: new allocations refused or redirected; exiting when none is left"
    );
}

const TEST_PAGE_HTML: &str = include_str!("test_page.html");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_urls_skip_wildcards_and_bracket_ipv6() {
        let u: Vec<SocketAddr> = vec![
            "127.0.0.1:3478".parse().unwrap(),
            "[::1]:3478".parse().unwrap(),
        ];
        let w: Vec<SocketAddr> = vec!["0.0.0.0:3478".parse().unwrap()];
        let t: Vec<SocketAddr> = vec!["127.0.0.1:5349".parse().unwrap()];
        assert_eq!(
            derived_urls(&u, &w, &t),
            [
                "turn:127.0.0.1:3478?transport=udp",
                "turn:[::1]:3478?transport=udp",
                "turns:127.0.0.1:5349?transport=tcp"
            ]
        );
    }
}
